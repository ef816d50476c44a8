"""The backends by name, and the choice `--device auto` makes.

`cpu` is fp32 (native kernels, or numpy kernels on BLAS), `cpu-bf16` the same with its matrix
products in bf16 on AMX tiles or AVX512-BF16 (an error that says why where neither is usable),
`emu` the NPU kernels' bf16 numerics emulated on the CPU, `npu` the NPU through pyxrt: an error that
says why when no NPU or no working kernel is present, never a silent CPU run.
"""
from __future__ import annotations

from kernels.cpu import CpuBackend
from kernels.emu import EmuBackend
from kernels.errors import AmanuensisError, BadOption
from kernels.npu import open_npu

BACKENDS = ("cpu", "cpu-bf16", "emu", "npu")
DEVICES = ("auto",) + BACKENDS
_instances: dict = {}


def get_backend(name: str):
    """A shared instance of backend `name`."""
    if name not in BACKENDS:
        raise BadOption("device", f"unknown device {name!r} (choose from: {', '.join(DEVICES)})")
    if name not in _instances:
        if name == "npu":
            try:
                _instances[name] = open_npu(fallback=get_backend("cpu"))
            except AmanuensisError as e:
                raise AmanuensisError(f"device npu: {e}") from None
        elif name == "cpu-bf16":
            try:
                _instances[name] = CpuBackend(bf16=True)
            except AmanuensisError as e:
                raise AmanuensisError(f"device cpu-bf16: {e}") from None
        else:
            _instances[name] = CpuBackend() if name == "cpu" else EmuBackend()
    return _instances[name]


def select_backend(device: str):
    """(backend, note) for a --device value. `auto` picks the NPU when a device and its kernels
    work, else the CPU, and the note says why."""
    if device not in DEVICES:
        raise BadOption("device", f"unknown device {device!r} (choose from: {', '.join(DEVICES)})")
    if device == "auto":
        try:
            return get_backend("npu"), "auto: NPU found"
        except AmanuensisError as e:
            return get_backend("cpu"), f"auto: {e}; running on cpu"
    return get_backend(device), f"{device}: requested"
