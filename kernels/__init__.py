"""Kernels of the Whisper encoder: the interface, the numpy reference, and the backends.

`get_backend(name)` returns a backend instance; `BACKENDS` lists what this
build provides. The NPU backend and its bf16 emulator come with the NPU issue;
until then asking for them is an error that says so, never a silent CPU run.
"""
from __future__ import annotations

from encoder.errors import AmanuensisError

BACKENDS = ("cpu",)
_PLANNED = {"npu": "the NPU backend (pyxrt) is not built yet",
            "emu": "the bf16 NPU emulator is not built yet"}
_instances: dict = {}


def get_backend(name: str):
    """A shared instance of backend `name`."""
    if name in _PLANNED:
        raise AmanuensisError(f"device {name!r}: {_PLANNED[name]}; use --device cpu")
    if name not in BACKENDS:
        raise AmanuensisError(f"unknown device {name!r} (choose from: auto, {', '.join(BACKENDS)})")
    if name not in _instances:
        from kernels.cpu import CpuBackend

        _instances[name] = CpuBackend()
    return _instances[name]
