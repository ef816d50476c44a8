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


def kernel_name(index: int) -> str:
    return f"AMN_{index}"


def make_command(entry: BuildEntry, device: str, index: int, xclbin_input: Path | None) -> list[str]:
    """make for one design and shape, appended as kernel `index` to xclbin_input (the first: a new one)."""
    variables = [f"{k}={v}" for k, v in entry.variables.items()]
    chain = [f"XCLBIN_INPUT={xclbin_input}"] if xclbin_input else []
    return ["make", "-C", str(HERE / entry.folder), "all", f"DEVICE={device}", f"ARTIFACT={entry.artifact}_{device}",
            f"KERNEL_NAME={kernel_name(index)}", f"KERNEL_ID={0x901 + index:#x}", *chain, *variables]


def artifact_path(entry: BuildEntry, device: str, ext: str) -> Path:
    return HERE / entry.folder / "build" / f"{entry.artifact}_{device}{ext}"


def plan(entries: list[BuildEntry], device: str) -> list[list[str]]:
    """The make commands of a build in which every design builds (what --dry-run prints)."""
    return [make_command(e, device, i, artifact_path(entries[i - 1], device, ".xclbin") if i else None)
            for i, e in enumerate(entries)]


def build(entries: list[BuildEntry], device: str, out: Path) -> list[BuildResult]:
    """Every entry built and appended to one xclbin (each design a kernel of it, so that the npu backend
    runs the whole encoder in one hardware context), copied to `out` as encoder_<device>.xclbin with
    each design's instruction stream; manifest.json there lists the ones that built."""
    why = missing_toolchain()
    if why:
        raise AmanuensisError(f"cannot build the NPU kernels: missing {why} (kernels/aie/run_on_npu.sh installs them)")
    out.mkdir(parents=True, exist_ok=True)
    results, built, xclbin = [], [], None
    for index, entry in enumerate(entries):
        run = subprocess.run(make_command(entry, device, index, xclbin), capture_output=True, text=True)
        files = [artifact_path(entry, device, ext) for ext in (".xclbin", ".insts.bin")]
        ok = run.returncode == 0 and all(f.is_file() for f in files)
        if ok:
            xclbin = files[0]                        # holds this design and every one built before it
            shutil.copy2(files[1], out / files[1].name)
            built.append((entry.op, entry.shape, f"encoder_{device}.xclbin", files[1].name, kernel_name(index)))
        results.append(BuildResult(entry, ok, (run.stdout + run.stderr)[-4000:]))
    if xclbin is not None:
        shutil.copy2(xclbin, out / f"encoder_{device}.xclbin")
    write_manifest(out, built)
    return results
