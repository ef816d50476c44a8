"""Kernels of the Whisper encoder: the interface, the numpy reference, and the backends.

`get_backend(name)` returns a backend instance; `BACKENDS` lists what this
build provides: `cpu` (fp32 numpy) and `emu` (the NPU kernels' bf16 numerics,
emulated). The NPU backend itself comes with the pyxrt runtime; until then
asking for it is an error that says so, never a silent CPU run.
"""
from __future__ import annotations

from encoder.errors import AmanuensisError

BACKENDS = ("cpu", "emu")
_PLANNED = {"npu": "the NPU backend (pyxrt) is not built yet"}
_instances: dict = {}


def get_backend(name: str):
    """A shared instance of backend `name`."""
    if name in _PLANNED:
        raise AmanuensisError(f"device {name!r}: {_PLANNED[name]}; use --device cpu")
    if name not in BACKENDS:
        raise AmanuensisError(f"unknown device {name!r} (choose from: auto, {', '.join(BACKENDS)})")
    if name not in _instances:
        if name == "cpu":
            from kernels.cpu import CpuBackend

            _instances[name] = CpuBackend()
        else:
            from kernels.emu import EmuBackend

            _instances[name] = EmuBackend()
    return _instances[name]
