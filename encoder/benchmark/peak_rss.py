"""A process's own peak resident memory, measured so that its parent's does not leak into it.

Linux starts the peak of a process exec'd from a vfork (as `subprocess` spawns) at its parent's
peak: a `true` spawned beside 500 MB of arrays reports 503 MB through wait4 and through its own
RUSAGE_SELF (measured on kernel 6.18), so neither says what the child used. Two figures do:
- VmHWM, the high-water mark of the process's own address space, which starts afresh at exec
  (`own_mb`, read by a process about itself);
- wait4's figure for a command spawned by a small launcher (`launched`), which starts it from the
  launcher's own ~10 MB, not the parent's; the launcher writes that figure to a file (`read_mb`).
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

# argv: report path, then the command; exits with the command's status (or 128 + its signal)
_LAUNCHER = """import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def own_mb() -> float:
    """This process's peak RSS in MB: VmHWM where /proc has it, else getrusage (which may include
    the parent's, as above)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def launched(argv: list[str], report: Path) -> list[str]:
    """`argv` run under the launcher, which writes the command's peak RSS (KiB) to `report`."""
    return [sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv]


def read_mb(report: Path) -> float:
    """The peak RSS in MB that the launcher wrote to `report`."""
    return int(report.read_text()) / 1024
