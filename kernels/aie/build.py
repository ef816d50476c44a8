"""Build the designs a model needs with the mlir-aie toolchain (make in each kernel folder) and list
the results in the npu backend's manifest. Needs aiecc.py and the IRON Python package (the mlir-aie
wheels), Peano (PEANO_INSTALL_DIR) and the aie_api headers (MLIR_AIE_INCLUDE): none of them is on
PyPI, and none is on the project's own machines; kernels/aie/run_on_npu.sh installs them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kernels.aie.design_runner import BuildEntry
from kernels.aie.host import HERE
from kernels.errors import AmanuensisError
from kernels.npu_manifest import write_manifest

DEVICES = {"npu": 4, "npu2": 8}            # make's DEVICE: columns of the array (Phoenix/Hawk Point, Strix)


@dataclass(frozen=True)
class BuildResult:
    entry: BuildEntry
    ok: bool
    log: str                                # the end of make's output


def missing_toolchain() -> str:
    """'' when the toolchain the Makefiles call is present, else what is missing."""
    missing = []
    if not shutil.which("aiecc.py"):
        missing.append("aiecc.py (the mlir_aie wheel) on PATH")
    peano = os.environ.get("PEANO_INSTALL_DIR", "")
    if not (peano and Path(peano, "bin", "clang++").is_file()):
        missing.append("PEANO_INSTALL_DIR with bin/clang++ (the llvm-aie wheel)")
    if not os.environ.get("MLIR_AIE_INCLUDE"):
        missing.append("MLIR_AIE_INCLUDE (the directory holding aie_api/)")
    return "; ".join(missing)


def make_command(entry: BuildEntry, device: str) -> list[str]:
    variables = [f"{k}={v}" for k, v in entry.variables.items()]
    return ["make", "-C", str(HERE / entry.folder), "all", f"DEVICE={device}",
            f"ARTIFACT={entry.artifact}_{device}", *variables]


def build(entries: list[BuildEntry], device: str, out: Path) -> list[BuildResult]:
    """Each entry built and copied to `out`; manifest.json there lists the ones that built."""
    why = missing_toolchain()
    if why:
        raise AmanuensisError(f"cannot build the NPU kernels: missing {why} (kernels/aie/run_on_npu.sh installs them)")
    out.mkdir(parents=True, exist_ok=True)
    results, built = [], []
    for entry in entries:
        run = subprocess.run(make_command(entry, device), capture_output=True, text=True)
        stem = f"{entry.artifact}_{device}"
        files = [HERE / entry.folder / "build" / f"{stem}{ext}" for ext in (".xclbin", ".insts.bin")]
        ok = run.returncode == 0 and all(f.is_file() for f in files)
        if ok:
            for f in files:
                shutil.copy2(f, out / f.name)
            built.append((entry.op, entry.shape, files[0].name, files[1].name))
        results.append(BuildResult(entry, ok, (run.stdout + run.stderr)[-4000:]))
    write_manifest(out, built)
    return results
