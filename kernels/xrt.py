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
import weakref
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


class DeviceBuffer:
    """Bytes the NPU holds in a buffer object: an output a kernel left there for the next kernel, or a
    weight uploaded once. Read back only when the host needs them; a kernel about to overwrite its
    output buffer first detaches the previous output to host memory, so a DeviceBuffer always reads
    what it was given."""

    def __init__(self, pyxrt, bo, nbytes: int):
        self.pyxrt, self.bo, self.nbytes = pyxrt, bo, nbytes
        self._host: bytes | None = None

    def part(self, offset: int, nbytes: int) -> DeviceBuffer:
        """Bytes offset .. offset + nbytes of this buffer as a buffer of their own (an XRT sub-buffer:
        no copy), which a kernel can take as an argument where it stands."""
        return DeviceBuffer(self.pyxrt, self.pyxrt.bo(self.bo, nbytes, offset), nbytes)

    @property
    def on_device(self) -> bool:
        return self._host is None

    def read(self, nbytes: int | None = None) -> bytes:
        """The first `nbytes` (default: all)."""
        nbytes = self.nbytes if nbytes is None else nbytes
        if self._host is not None:
            return self._host[:nbytes]
        self.bo.sync(self.pyxrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
        return bytes(self.bo.read(nbytes, 0))

    def detach(self) -> None:
        """Keep a host copy: the buffer object is about to be reused."""
        if self._host is None:
            self._host = self.read()
            self.bo = None


class XrtKernel:
    """One manifest entry: a kernel of an open context, its instruction stream and its buffers. Not
    thread-safe: the npu backend runs one dispatch at a time (the NPU does too)."""

    def __init__(self, dev: DeviceInfo, context: XrtContext, insts: Path, kernel_name: str,
                 arg_bytes: list[int], insts_count: str = "words", zeroed: tuple[int, ...] = ()):
        """zeroed: the arguments whose buffers must start as zeros (a chain's scratch: rows no design
        writes, the zero row before an output a convolution reads)."""
        x = dev.pyxrt
        self.pyxrt, self.device = x, dev.device
        if kernel_name not in context.kernel_names:
            raise NpuFault(f"{context.path.name} has no kernel {kernel_name!r} (it has {context.kernel_names})")
        self.kernel = x.kernel(context.context, kernel_name)
        words = np.fromfile(insts, dtype=np.uint32)
        self.n_insts = int(words.size if insts_count == "words" else words.nbytes)
        self.instr_bo = x.bo(dev.device, words.nbytes, x.bo.cacheable, self.kernel.group_id(1))
        self.instr_bo.write(words.view(np.uint8), 0)
        self.instr_bo.sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        self.arg_bytes, self.zeroed = list(arg_bytes), zeroed
        self._sets: list[dict[int, object]] = [{}, {}]   # buffer objects per argument, made on first use
        self._runs = 0
        self._left: list[list] = [[], []]      # per buffer set: weakrefs to the outputs runs left on the device

    def upload(self, index: int, array: np.ndarray) -> DeviceBuffer:
        """`array` in a buffer object of its own for argument `index`, written once (a weight)."""
        x = self.pyxrt
        raw = self._raw(index, array)
        bo = x.bo(self.device, raw.nbytes, x.bo.host_only, self.kernel.group_id(3 + index))
        bo.write(raw, 0)
        bo.sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        return DeviceBuffer(x, bo, raw.nbytes)

    def run(self, inputs: dict, outputs: dict[int, np.dtype], leave: int | tuple = ()) -> dict:
        """Run with `inputs` (argument index → an array to write, or a DeviceBuffer already there); read
        `outputs` (index → dtype); the outputs in `leave` (an index or several) stay on the device:
        DeviceBuffers. Runs alternate between two sets of buffers, so that a run can read what the one
        before it left (a chain reads the previous chain's output) without a copy."""
        try:
            return self._run(inputs, outputs, leave)
        except NpuFault:
            raise
        except Exception as e:  # whatever XRT raises mid-run is a fault of this kernel
            raise NpuFault(f"{type(e).__name__}: {e}") from None

    def _raw(self, index: int, array: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        if raw.nbytes != self.arg_bytes[index]:
            raise NpuFault(f"argument {index} has {raw.nbytes} bytes, the design expects {self.arg_bytes[index]}")
        return raw

    def _bo(self, i: int):
        """Argument i's buffer object in this run's set (zeros when made, if it is to be: XRT does not
        promise zeros)."""
        bos = self._sets[(self._runs - 1) % 2]
        if i not in bos:
            x = self.pyxrt
            bos[i] = x.bo(self.device, self.arg_bytes[i], x.bo.host_only, self.kernel.group_id(3 + i))
            if i in self.zeroed:
                bos[i].write(np.zeros(self.arg_bytes[i], np.uint8), 0)
                bos[i].sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        return bos[i]

    def keep(self, buffer: DeviceBuffer) -> DeviceBuffer:
        """`buffer` (a part of an output this kernel's last run left) detached to the host before its
        buffer set is reused, like the outputs themselves."""
        self._left[(self._runs - 1) % 2].append(weakref.ref(buffer))
        return buffer

    def _run(self, inputs, outputs, leave):
        x = self.pyxrt
        leave = (leave,) if isinstance(leave, int) else tuple(leave)
        for ref in self._left[self._runs % 2]:     # still in use, and their buffers are about to be rewritten
            left = ref()
            if left is not None:
                left.detach()
        self._left[self._runs % 2] = []
        self._runs += 1
        bos = [None] * len(self.arg_bytes)
        for i, value in inputs.items():
            if isinstance(value, DeviceBuffer):
                if value.nbytes != self.arg_bytes[i]:
                    raise NpuFault(f"argument {i} is a {value.nbytes}-byte device buffer, the design expects "
                                   f"{self.arg_bytes[i]}")
                if value.on_device:
                    bos[i] = value.bo
                    continue
                value = np.frombuffer(value.read(), np.uint8)
            bos[i] = self._bo(i)
            bos[i].write(self._raw(i, value), 0)
            bos[i].sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
        bos = [bo if bo is not None else self._bo(i) for i, bo in enumerate(bos)]
        state = self.kernel(3, self.instr_bo, self.n_insts, *bos).wait(TIMEOUT_MS)
        if state != x.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise NpuFault(f"run ended in {getattr(state, 'name', state)}")
        out = {}
        for i, dtype in outputs.items():
            bos[i].sync(x.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
            out[i] = np.frombuffer(bytes(bos[i].read(self.arg_bytes[i], 0)), dtype=dtype).copy()
        for i in leave:
            out[i] = self.keep(DeviceBuffer(x, bos[i], self.arg_bytes[i]))
        return out
