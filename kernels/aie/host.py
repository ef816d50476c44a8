"""Build the AIE kernel sources for the host (g++) and load them with ctypes.

The scalar reference kernels build as they are; the vectorised ones through the project's aie_api
shim (common/aie_host.h). The library is what ties the emulator to the code that would run on the
NPU: the tests feed the same tiles to both. It is built on first use into the cache
($AMANUENSIS_CACHE/host-kernels/<hash of the sources>).
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

from kernels.errors import AmanuensisError
from kernels.settings import cache_dir

HERE = Path(__file__).resolve().parent
SOURCES = sorted(HERE.glob("*/*.cc"))
HEADERS = sorted(HERE.glob("common/*.h"))
FLAGS = ["-O2", "-std=c++20", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared"]


def build(out_dir: Path | None = None) -> Path:
    """Compile every kernel source into one shared library; returns its path."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise AmanuensisError("building the host kernels needs g++ (apt-get install g++)")
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in SOURCES + HEADERS)
                          + " ".join(FLAGS).encode()).hexdigest()[:12]
    out_dir = out_dir or cache_dir() / "host-kernels" / digest
    lib = out_dir / "libamanuensis_aie_host.so"
    if not lib.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(".partial.so")
        result = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode:
            raise AmanuensisError(f"g++ failed to build the host kernels:\n{result.stderr}")
        tmp.replace(lib)
    return lib


def load() -> ctypes.CDLL:
    """The host build of the kernels, with argument types declared."""
    lib = ctypes.CDLL(str(build()))
    f32, u16, i32 = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint16), ctypes.c_int32
    signatures = {
        "mm_zero_64x64": [f32],
        "mm_bf16_64x64x64": [u16, u16, f32],
        "mm_epilogue_64x64": [f32, u16, u16, i32, u16],
        "attn_init": [f32, f32, f32],
        "attn_step_64": [u16, u16, u16, i32, f32, f32, f32],
        "attn_finish": [f32, f32, u16],
        "layernorm_bf16": [u16, u16, u16, u16, i32, i32, ctypes.c_float, f32],
        "gelu_bf16": [u16, u16, i32],
        "contract_exp_f32": [f32, f32, i32],
        "contract_gelu_f32": [f32, f32, i32],
        "contract_lane_sum": [f32, i32, i32, f32],
        "contract_round_bf16": [f32, u16, i32],
        "mel_frames_64": [f32, f32, f32, f32, i32, f32],
        "mel_finish": [f32, i32, ctypes.c_float, u16],
        "contract_log10_f32": [f32, f32, i32],
        # the vectorised kernels (bf16 as uint16 bits)
        "mmv_zero_64x64": [f32],
        "mmv_bf16_64x64x64": [u16, u16, f32],
        "mmv_epilogue_64x64": [f32, u16, u16, i32, u16],
        "mmv_zero_64x32": [f32],
        "mmv_bf16_64x64x32": [u16, u16, f32],
        "mmv_bias_act_64x32": [f32, u16, i32],
        "mmv_round_64x32": [f32, u16],
        "mmv_add_round_64x32": [f32, u16, u16],
        "lnv_sum_64x64": [u16, f32, i32],
        "lnv_mean_64": [f32, i32],
        "lnv_sqdev_64x64": [u16, f32, i32],
        "lnv_rstd_64": [f32, i32, ctypes.c_float],
        "lnv_norm_64x32": [u16, u16, f32, i32, u16],
        "attnv_init": [f32, f32, f32],
        "attnv_step_64": [u16, u16, u16, i32, f32, f32, f32],
        "attnv_finish": [f32, f32, u16],
        "attnv_v_layout": [u16],
        "attnv_k_layout": [u16],
        "layernormv_bf16": [u16, u16, u16, u16, i32, i32, ctypes.c_float],
        "layernormv_affine_bf16": [u16, u16, u16, i32, i32, ctypes.c_float],
        "geluv_bf16": [u16, u16, i32],
        "melv_zero_64x32": [f32],
        "mmf_f32_64x32x32": [f32, u16, f32],
        "melv_power_64x32": [f32, i32, f32],
        "melv_log10_max_64x32": [f32, i32, i32, f32, f32],
        "melv_max_init": [f32],
        "melv_max_out_64x32": [f32, f32],
        "melv_global_max": [f32, f32],
        "melv_finish_64x32": [f32, f32, f32],
        **{f"vmath_{name}": [f32, f32, i32] for name in ("exp", "gelu", "recip", "rsqrt", "log10")},
        "vmath_lane_sum": [f32, i32, i32, f32],
        "vmath_round_bf16": [f32, u16, i32],
    }
    for name, args in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib
