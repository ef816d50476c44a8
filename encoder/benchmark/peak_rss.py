"""A process's own peak resident memory, measured so that its parent's does not leak into it.

Linux starts the peak of a process exec'd from a vfork (as `subprocess` spawns) at its parent's
peak: a `true` spawned beside 500 MB of arrays reports 503 MB through wait4 and through its own
RUSAGE_SELF (measured on kernel 6.18), so neither says what the child used. Two figures do:
- VmHWM, the high-water mark of the process's own address space, which starts afresh at exec
  (`own_mb`, read by a process about itself);
- wait4's figure for a command spawned by a small launcher (`launched`), which starts it from the
  launcher's own ~10 MB, not the parent's; the launcher writes that figure to a file with the
  command's wall time, its own start-up (~20 ms) left out (`read`).
"""
from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

# argv: report path, then the command. SIGTERM and SIGINT are passed on to the command, so that it
# does not outlive the launcher; exits with the command's status (or 128 + its signal).
_LAUNCHER = """import json, os, signal, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda number, frame: proc.send_signal(number))
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as report:
    json.dump({"peak_rss_kib": usage.ru_maxrss, "wall_s": wall}, report)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass(frozen=True)
class Usage:
    peak_rss_mb: float
    wall_s: float


def own_mb() -> float:
    """This process's peak RSS in MB: VmHWM where /proc has it, else getrusage (which may include
    the parent's, as above)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def launched(argv: list[str], report: Path) -> list[str]:
    """`argv` run under the launcher, which writes the command's Usage to `report`."""
    return [sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv]


def read(report: Path) -> Usage:
    """The command's peak RSS and wall time, as the launcher wrote them to `report`."""
    figures = json.loads(report.read_text())
    return Usage(figures["peak_rss_kib"] / 1024, figures["wall_s"])
