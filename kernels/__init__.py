"""Kernels of the Whisper encoder: the interface, the numpy reference, and the backends.

`get_backend(name)` returns a backend instance; `BACKENDS` lists what this
build provides: `cpu` (fp32: native kernels, or numpy kernels on BLAS), `emu` (the NPU kernels' bf16 numerics,
emulated) and `npu` (pyxrt; an error that says why when no NPU or no working
kernel is present — never a silent CPU run).
"""
from __future__ import annotations

from encoder.errors import AmanuensisError

BACKENDS = ("cpu", "emu", "npu")
_instances: dict = {}


def get_backend(name: str):
    """A shared instance of backend `name`."""
    if name not in BACKENDS:
        raise AmanuensisError(f"unknown device {name!r} (choose from: auto, {', '.join(BACKENDS)})")
    if name not in _instances:
        if name == "npu":
            from kernels.npu import open_npu

            try:
                _instances[name] = open_npu()
            except AmanuensisError as e:
                raise AmanuensisError(f"device npu: {e}") from None
        elif name == "cpu":
            from kernels.cpu import CpuBackend

            _instances[name] = CpuBackend()
        else:
            from kernels.emu import EmuBackend

            _instances[name] = EmuBackend()
    return _instances[name]
