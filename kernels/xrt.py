"""The NPU through pyxrt: device detection, an xclbin in its hardware context, and its kernels.

Call sequence (kept in ../shared/notes/npu.md's order): device(0) → xclbin(path) →
device.register_xclbin → hw_context(device, uuid), once per xclbin → kernel(ctx, name) for each
kernel it holds; the instruction
stream goes to a cacheable bo in group_id(1), data to host_only bos in group_id(3 + i)
in the design's argument order; inputs are synced to the device, the run is
kernel(3, instr_bo, n_insts, *bos), its state must be COMPLETED, and outputs are
synced back before they are read. Buffers are allocated once and reused.
"""
from __future__ import annotations

import glob
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels import settings

GENERATIONS = {"phoenix": ("npu1", "Phoenix", "Hawk"), "strix": ("npu4", "npu5", "npu6", "Strix", "Krackan")}
CONTEXT_LIMIT = {"phoenix": 6, "strix": 16}
TIMEOUT_MS = 10_000


class NpuFault(Exception):
    """A kernel run that did not produce a trustworthy result (error, timeout, bad output)."""


@dataclass
class DeviceInfo:
    pyxrt: object
    device: object
    name: str
    generation: str          # "phoenix" (XDNA, npu1) or "strix" (XDNA2)

    @property
    def context_limit(self) -> int:
        return CONTEXT_LIMIT[self.generation]


def detect() -> tuple[DeviceInfo | None, str]:
    """(device, "") when an NPU is usable through pyxrt, else (None, why not)."""
    pattern = settings.accel_glob()
    if not glob.glob(pattern):
        return None, f"no NPU device node ({pattern})"
    try:
        import pyxrt
    except ImportError:
        return None, "pyxrt (XRT's Python binding) is not installed"
    try:
        device = pyxrt.device(0)
        name = str(device.get_info(pyxrt.xrt_info_device.name))
    except Exception as e:  # pyxrt raises RuntimeError and others
        return None, f"XRT could not open the NPU ({type(e).__name__}: {e})"
    for generation, markers in GENERATIONS.items():
        if any(m in name for m in markers):
            return DeviceInfo(pyxrt, device, name, generation), ""
    return None, f"unrecognised NPU {name!r} (known: Phoenix/Hawk Point npu1, Strix/Krackan npu4-6)"


class XrtContext:
    """One xclbin registered and opened in one hardware context; the kernels it holds (one per design
    and shape when built by encoder.npu_build) share the context."""

    def __init__(self, dev: DeviceInfo, xclbin: Path):
        x = dev.pyxrt
        self.path = xclbin
        image = x.xclbin(str(xclbin))
        self.kernel_names = [k.get_name() for k in image.get_kernels()]
        dev.device.register_xclbin(image)
        self.context = x.hw_context(dev.device, image.get_uuid())


class XrtKernel:
    """One manifest entry: a kernel of an open context, its instruction stream and its buffers."""

    def __init__(self, dev: DeviceInfo, context: XrtContext, insts: Path, kernel_name: str,
                 arg_bytes: list[int], insts_count: str = "words"):
        x = dev.pyxrt
        self.pyxrt, self.device = x, dev.device
        self.lock = threading.Lock()
        if kernel_name not in context.kernel_names:
            raise NpuFault(f"{context.path.name} has no kernel {kernel_name!r} (it has {context.kernel_names})")
        self.kernel = x.kernel(context.context, kernel_name)
        words = np.fromfile(insts, dtype=np.uint32)
        self.n_insts = int(words.size if insts_count == "words" else words.nbytes)
        self.instr_bo = x.bo(dev.device, words.nbytes, x.bo.cacheable, self.kernel.group_id(1))
        self.instr_bo.write(words.view(np.uint8), 0)
        self.instr_bo.sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        self.arg_bytes = list(arg_bytes)
        self.bos = [x.bo(dev.device, n, x.bo.host_only, self.kernel.group_id(3 + i)) for i, n in enumerate(arg_bytes)]

    def run(self, inputs: dict[int, np.ndarray], outputs: dict[int, np.dtype]) -> dict[int, np.ndarray]:
        """Write `inputs` (argument index → array), run, and read `outputs` (index → dtype)."""
        with self.lock:
            try:
                return self._run(inputs, outputs)
            except NpuFault:
                raise
            except Exception as e:  # whatever XRT raises mid-run is a fault of this kernel
                raise NpuFault(f"{type(e).__name__}: {e}") from None

    def _run(self, inputs, outputs):
        x = self.pyxrt
        for i, array in inputs.items():
            raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
            if raw.nbytes != self.arg_bytes[i]:
                raise NpuFault(f"argument {i} has {raw.nbytes} bytes, the design expects {self.arg_bytes[i]}")
            self.bos[i].write(raw, 0)
            self.bos[i].sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        state = self.kernel(3, self.instr_bo, self.n_insts, *self.bos).wait(TIMEOUT_MS)
        if state != x.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise NpuFault(f"run ended in {getattr(state, 'name', state)}")
        out = {}
        for i, dtype in outputs.items():
            self.bos[i].sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
            out[i] = np.frombuffer(bytes(self.bos[i].read(self.arg_bytes[i], 0)), dtype=dtype).copy()
        return out
