"""The NPU kernel manifest: which xclbin and instruction file serves which kernel and shape.

manifest.json, in $AMANUENSIS_NPU_KERNELS (else <cache>/npu-kernels):
    {"format": "amanuensis-npu-kernels", "version": 2,
     "kernels": [{"op": "linear", "shape": {"M": 1536, "K": 384, "N": 1536, "gelu": true, "residual": false},
                  "xclbin": "mm_64x64x32_M1536_K384_N1536_npu.xclbin",
                  "insts": "mm_64x64x32_M1536_K384_N1536_npu.insts.bin",
                  "kernel_name": "MLIR_AIE", "insts_count": "words"}, ...]}
ops and shape keys, for the whole-array designs of kernels/aie (version 2; version 1 described the
single-core designs): linear (M rows in whole 256-row bands, K a multiple of 64, N of 32 x columns,
gelu, residual), attention (T, H; 64-wide heads), layernorm (R rows in whole bands; D), log_mel
(M mel bins), chain (M rows in whole bands, cols, phases: convolutions, layernorms and linears run as one dispatch,
as kernels/aie/matmul/design.py's phases_spec writes them). Paths are relative to the manifest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kernels import settings
from kernels.errors import AmanuensisError

FORMAT = "amanuensis-npu-kernels"
VERSION = 2
SHAPE_KEYS = {"linear": ("M", "K", "N", "gelu", "residual"), "attention": ("T", "H"), "layernorm": ("R", "D"),
              "log_mel": ("M",), "chain": ("M", "cols", "phases")}


@dataclass
class Entry:
    op: str
    shape: dict
    xclbin: Path
    insts: Path
    kernel_name: str = "MLIR_AIE"
    insts_count: str = "words"
    state: str = "not loaded"       # "ready", "disabled"
    reason: str = ""
    calls: int = 0
    failures: int = field(default=0)

    @property
    def key(self) -> tuple:
        return key(self.op, self.shape)

    def label(self) -> str:
        return f"{self.op}[" + ",".join(f"{k}={self.shape[k]}" for k in SHAPE_KEYS[self.op]) + "]"


def key(op: str, shape: dict) -> tuple:
    return (op,) + tuple(shape[k] for k in SHAPE_KEYS[op])


def load_manifest(directory: Path | None = None) -> list[Entry]:
    """The entries of manifest.json, checked; AmanuensisError names what is wrong."""
    directory = Path(directory or settings.npu_kernels_dir())
    path = directory / "manifest.json"
    if not path.is_file():
        raise AmanuensisError(f"no NPU kernel manifest at {path} (build the kernels: kernels/aie/README.md)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}: this release's designs need version {VERSION} "
                             "(rebuild the kernels)")
        entries = []
        for n, item in enumerate(data["kernels"]):
            op = item["op"]
            if op not in SHAPE_KEYS:
                raise ValueError(f"kernel {n}: unknown op {op!r}")
            shape = {k: item["shape"][k] for k in SHAPE_KEYS[op]}
            entries.append(Entry(op, shape, directory / item["xclbin"], directory / item["insts"],
                                 item.get("kernel_name", "MLIR_AIE"), item.get("insts_count", "words")))
    except (ValueError, KeyError, TypeError) as e:
        raise AmanuensisError(f"{path}: invalid manifest ({e})") from None
    return entries


def write_manifest(directory: Path, built: list[tuple[str, dict, str, str, str]]) -> Path:
    """manifest.json in `directory` for built kernels [(op, shape, xclbin file, insts file, kernel name)],
    written whole or not at all."""
    kernels = [{"op": op, "shape": shape, "xclbin": xclbin, "insts": insts, "kernel_name": name,
                "insts_count": "words"} for op, shape, xclbin, insts, name in built]
    path = Path(directory) / "manifest.json"
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, "kernels": kernels}, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path
