"""A fake `pyxrt` for tests: the documented API surface, computing with the emulator.

A fake xclbin is a JSON file {"kernels": [name, ...], "designs": {name: {"op", "shape",
"insts_count"}}}: one design per kernel it holds, as encoder.npu_build appends them. The
fake checks what real hardware would punish — instruction bo cacheable in group_id(1),
data bos host_only in group_id(3 + i) with the design's sizes, inputs synced to the
device after their last write, outputs synced back before they are read, opcode 3,
the instruction count in the unit the design expects, no extra arguments — and
records every violation in `violations` (raising RuntimeError like XRT does).
Faults can be injected per xclbin file name (or "file:kernel"): "ert_error", "timeout", "zeros",
"garbage" (finite, unrelated numbers), "bitnoise" (random bits), "context_fail",
"zeros_after:N" (good for N runs, then zeros).
"""
from __future__ import annotations

import enum
import hashlib
import itertools
import json
import types

import ml_dtypes
import numpy as np

from kernels.aie import iron_host, tiles
from kernels.emu import EmuBackend
from kernels.frontend import N_FFT, N_FRAMES, N_SAMPLES
from kernels.npu import arg_bytes, chain_reference
from kernels.npu_manifest import Entry


class xclBOSyncDirection(enum.Enum):   # noqa: N801 (pyxrt's names)
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class ert_cmd_state(enum.Enum):        # noqa: N801
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5
    ERT_CMD_STATE_TIMEOUT = 11


class xrt_info_device(enum.Enum):      # noqa: N801
    name = 1


def _f(bits):
    return np.frombuffer(bits, np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)


def _bits(x):
    return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)).tobytes()


class FakeXRT:
    def __init__(self, device_name="NPU Strix", faults=None, context_limit=16):
        self.device_name, self.faults, self.context_limit = device_name, dict(faults or {}), context_limit
        self.violations, self.contexts, self.runs = [], 0, {}
        self.written = self.read = 0              # bytes the host wrote to, and read from, data buffers
        self.data_groups = set()                  # a kernel's output buffer may be another's input (same memory)
        self.emu = EmuBackend()
        self._ids = itertools.count(100)

    def fail(self, message):
        self.violations.append(message)
        raise RuntimeError(message)

    # ---- the module ----
    def module(self):
        fake = self
        m = types.ModuleType("pyxrt")
        m.xclBOSyncDirection, m.ert_cmd_state, m.xrt_info_device = xclBOSyncDirection, ert_cmd_state, xrt_info_device

        class device:
            def __init__(self, index):
                self.index, self.registered = index, []

            def get_info(self, key):
                assert key is xrt_info_device.name
                return fake.device_name

            def register_xclbin(self, image):
                self.registered.append(image)

        class _KernelInfo:
            def __init__(self, name):
                self._name = name

            def get_name(self):
                return self._name

        class xclbin:
            def __init__(self, path):
                self.path = str(path)
                try:
                    self.spec = json.loads(open(path).read())
                except (OSError, ValueError) as e:
                    raise RuntimeError(f"failed to load xclbin {path}: {e}") from None
                self.file = path.rsplit("/", 1)[-1]

            def get_uuid(self):
                return f"uuid-{self.file}"

            def get_kernels(self):
                return [_KernelInfo(n) for n in self.spec["kernels"]]

        class hw_context:
            def __init__(self, dev, uuid):
                file = uuid.removeprefix("uuid-")
                image = next((x for x in dev.registered if x.file == file), None)
                if image is None:
                    fake.fail(f"hw_context for {file}: xclbin not registered first")
                if fake.faults.get(file) == "context_fail":
                    raise RuntimeError("DRM_IOCTL_AMDXDNA_CREATE_HWCTX failed")
                fake.contexts += 1
                if fake.contexts > fake.context_limit:
                    fake.fail(f"context {fake.contexts} exceeds the device limit {fake.context_limit}")
                self.image = image

        class bo:
            """A buffer object, or (bo(parent, size, offset)) a sub-buffer sharing its parent's memory."""

            cacheable, host_only, normal = 1, 2, 0

            def __init__(self, dev, nbytes, flags, group=None):
                if isinstance(dev, bo):                  # a sub-buffer: (parent, size, offset)
                    parent, offset = dev, flags
                    if offset + nbytes > parent.nbytes:
                        fake.fail(f"sub-buffer of {nbytes} bytes at {offset} overflows a {parent.nbytes}-byte bo")
                    self.store, self.offset = parent.store, parent.offset + offset
                    self.flags, self.group = parent.flags, parent.group
                else:
                    self.store, self.offset = _Store(nbytes), 0
                    self.flags, self.group = flags, group
                self.nbytes = nbytes

            @property
            def _span(self):
                return slice(self.offset, self.offset + self.nbytes)

            @property
            def host(self):
                return memoryview(self.store.host)[self._span]

            @property
            def device(self):
                return bytes(self.store.device[self._span])

            @device.setter
            def device(self, data):
                self.store.device[self._span] = data

            @property
            def dirty(self):
                return self.store.dirty

            def write(self, data, offset):
                raw = np.asarray(data).view(np.uint8).tobytes() if not isinstance(data, bytes) else data
                if offset + len(raw) > self.nbytes:
                    fake.fail(f"write of {len(raw)} bytes at {offset} overflows a {self.nbytes}-byte bo")
                self.store.host[self.offset + offset:self.offset + offset + len(raw)] = raw
                self.store.dirty = True
                if self.flags == 2:
                    fake.written += len(raw)

            def sync(self, direction):
                if direction is xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
                    self.store.device[self._span] = self.store.host[self._span]
                    self.store.dirty = False
                else:
                    self.store.host[self._span] = self.store.device[self._span]

            def read(self, nbytes, offset):
                fake.read += nbytes
                start = self.offset + offset
                return np.frombuffer(bytes(self.store.host[start:start + nbytes]), np.int8)

        class kernel:
            def __init__(self, ctx, name):
                self.image, self.name = ctx.image, name
                if name not in ctx.image.spec["designs"]:
                    fake.fail(f"kernel {name!r} is not in {ctx.image.file}")
                self.spec = ctx.image.spec["designs"][name]
                self.groups = {i: next(fake._ids) for i in range(8)}
                fake.data_groups.update(self.groups[i] for i in range(3, 8))

            def group_id(self, i):
                return self.groups[i]

            def __call__(self, opcode, instr_bo, n_insts, *bos):
                return fake._run(self, opcode, instr_bo, n_insts, bos)

        m.device, m.xclbin, m.hw_context, m.bo, m.kernel = device, xclbin, hw_context, bo, kernel
        return m

    # ---- a run ----
    def _run(self, k, opcode, instr_bo, n_insts, bos):
        spec = k.spec
        entry = Entry(spec["op"], spec["shape"], None, None)
        sizes = arg_bytes(entry)
        if opcode != 3:
            self.fail(f"opcode {opcode}, expected 3 (transaction)")
        if instr_bo.group != k.group_id(1) or instr_bo.flags != 1 or instr_bo.dirty:
            self.fail("instruction bo must be cacheable, in group_id(1), and synced to the device")
        words = instr_bo.nbytes // 4
        expected = words if spec.get("insts_count", "words") == "words" else instr_bo.nbytes
        if n_insts != expected:
            self.fail(f"instruction count {n_insts}, the design expects {expected}")
        if len(bos) != len(sizes):
            self.fail(f"{len(bos)} buffer arguments, the design has {len(sizes)}")
        for i, (b, size) in enumerate(zip(bos, sizes)):
            if b.flags != 2 or b.group not in self.data_groups:
                self.fail(f"argument {i}: bo must be host_only, in a data group_id (3 + i) of a kernel")
            if b.nbytes != size:
                self.fail(f"argument {i}: {b.nbytes} bytes, the design needs {size}")
            if b.dirty:
                self.fail(f"argument {i}: written but not synced to the device before the run")
        file = k.image.file
        self.runs[file] = self.runs.get(file, 0) + 1
        fault = self.faults.get(f"{file}:{k.name}", self.faults.get(file, ""))
        out = bos[-1]
        if fault == "ert_error":
            return _Run(ert_cmd_state.ERT_CMD_STATE_ERROR)
        if fault == "timeout":
            return _Run(ert_cmd_state.ERT_CMD_STATE_TIMEOUT)
        if fault == "zeros" or (fault.startswith("zeros_after:") and self.runs[file] > int(fault.split(":")[1])):
            out.device = bytes(out.nbytes)
        elif fault == "garbage":             # plausible finite numbers, unrelated to the inputs
            out.device = _bits(np.random.default_rng(self.runs[file]).standard_normal(out.nbytes // 2))
        elif fault == "bitnoise":            # raw random bits: NaNs and infinities among them
            out.device = np.random.default_rng(self.runs[file]).integers(0, 2**16, out.nbytes // 2, np.uint16).tobytes()
        elif spec["op"] == "chain":
            bos[3].device, out.device = self._compute(spec, [b.device for b in bos])
        else:
            out.device = self._compute(spec, [b.device for b in bos])
        return _Run(ert_cmd_state.ERT_CMD_STATE_COMPLETED)

    def _compute(self, spec, bufs):
        s, op = spec["shape"], spec["op"]
        if op == "log_mel":                  # the window inside the reflect-padded samples, finished, fp32
            mel, n_mels = iron_host.design("mel"), s["M"]
            if not np.array_equal(np.frombuffer(bufs[1], np.uint16), tiles.pack_mel(n_mels)):
                raise AssertionError("the mel design's params are not the DFT and filters of tiles.pack_mel")
            window = np.frombuffer(bufs[0], np.float32)[N_FFT // 2:N_FFT // 2 + N_SAMPLES]
            out = np.zeros((mel.FRAMES_PADDED, mel.mel_columns(n_mels)), np.float32)
            out[:N_FRAMES, :n_mels] = self.emu.log_mel(window, n_mels)
            return out.tobytes()
        if op == "linear":                   # the whole-array matmul: A, W packed with its bias, residual
            m, k, n = s["M"], s["K"], s["N"]
            w, b = (_f(x.tobytes()) for x in tiles.unpack_linear(np.frombuffer(bufs[1], np.uint16), k, n))
            res = _f(bufs[2]).reshape(m, n) if s["residual"] else None
            return _bits(self.emu.linear(_f(bufs[0]).reshape(m, k), w.reshape(k, n), b, gelu=s["gelu"], residual=res))
        if op == "attention":                # the QKV projection's output, rows in bands, Q scaled by 1/8
            h, t = s["H"], s["T"]
            qkv = _f(bufs[0]).reshape(tiles.band_rows(t), 3 * h * 64)
            qkv[:, :h * 64] *= 8
            out = np.zeros((qkv.shape[0], h * 64), np.float32)
            out[:t] = self.emu.attention(qkv[:t], h)
            return _bits(out)
        if op == "chain":
            return self._chain(s, bufs)
        x, gamma_beta = _f(bufs[0]).reshape(s["R"], s["D"]), _f(bufs[1])
        return _bits(self.emu.layernorm(x, gamma_beta[:s["D"]], gamma_beta[s["D"]:]))

    def _chain(self, s, bufs):
        """A chain's phases one after another with the emulator: (scratch, out) bytes, as chain_layout
        places them."""
        module = iron_host.design("matmul")
        m, phases = s["M"], module.parse_phases(s["phases"])
        param_at, scratch_at, _, _ = module.chain_layout(m, phases)
        params, scratch = np.frombuffer(bufs[2], np.uint16), bytearray(bufs[3])
        io = module.chain_io(m, phases)
        operands = []
        for ph, at in zip(phases, param_at):
            blob = params[at:at + ph.packed]
            if isinstance(ph, module.Norm):
                gb = blob.reshape(ph.d // 64, -1)[:, :128].reshape(-1, 2, 64)
                operands.append((_f(gb[:, 0].tobytes()), _f(gb[:, 1].tobytes())))
            else:
                w, b = (_f(t.tobytes()) for t in tiles.unpack_linear(blob, ph.k, ph.n))
                operands.append((w.reshape(ph.k, ph.n)[:ph.w_rows], b))
        inp = _f(bufs[0])[io.inp_at:io.inp_at + io.rows * io.width].reshape(io.rows, io.width)
        outputs = chain_reference(self.emu, phases, inp,
                                  _f(bufs[1]).reshape(-1, io.side_width) if io.side else None, operands)
        for y, where in zip(outputs[:-1], scratch_at):
            scratch[2 * where:2 * (where + y.size)] = _bits(y)
        return bytes(scratch), _bits(outputs[-1])


class _Store:
    """The memory of a buffer object and its sub-buffers: the host's view and the device's, not zeros
    when made (XRT does not promise zeros)."""

    def __init__(self, nbytes):
        self.host, self.device, self.dirty = bytearray(b"\xa5" * nbytes), bytearray(b"\xa5" * nbytes), False


class _Run:
    def __init__(self, state):
        self.state = state

    def wait(self, timeout_ms=None):
        return self.state


def write_kernel_dir(directory, entries, insts_count="words", fake_insts_count=None, shared=False):
    """A manifest with fake xclbins and instruction files for `entries` [(op, shape), ...]: an xclbin
    each, or (shared) one xclbin holding them all as kernels AMN_0, AMN_1, ... (as encoder.npu_build
    builds it)."""
    directory.mkdir(parents=True, exist_ok=True)
    kernels, designs = [], {}
    for n, (op, shape) in enumerate(entries):
        stem = f"{op}_{n}_" + ("_".join(f"{k}{v}" for k, v in shape.items()) if op != "chain" else
                               hashlib.sha1(shape["phases"].encode()).hexdigest()[:10])
        name = f"AMN_{n}" if shared else "MLIR_AIE"
        design = {"op": op, "shape": shape, "insts_count": fake_insts_count or insts_count}
        xclbin = "encoder.xclbin" if shared else f"{stem}.xclbin"
        if shared:
            designs[name] = design
        else:
            (directory / xclbin).write_text(json.dumps({"kernels": [name], "designs": {name: design}}))
        np.arange(300 + n, dtype=np.uint32).tofile(directory / f"{stem}.insts.bin")
        kernels.append({"op": op, "shape": shape, "xclbin": xclbin, "insts": f"{stem}.insts.bin",
                        "kernel_name": name, "insts_count": insts_count})
    if shared:
        (directory / "encoder.xclbin").write_text(json.dumps({"kernels": list(designs), "designs": designs}))
    (directory / "manifest.json").write_text(json.dumps({"format": "amanuensis-npu-kernels", "version": 2,
                                                         "kernels": kernels}))
    return directory


def tiny_en_op_entries():
    """A kernel per op for every shape tiny.en's graph (with the decoder's cross K/V) asks for: a manifest
    without chains, whose layernorms and linears run one dispatch each."""
    def lin(k, n, gelu=False, residual=False, m=1536):
        return ("linear", {"M": m, "K": k, "N": n, "gelu": gelu, "residual": residual})
    return [("layernorm", {"R": 1536, "D": 384}), ("attention", {"T": 1500, "H": 6}),
            lin(384, 1152), lin(384, 384, residual=True), lin(384, 1536, gelu=True), lin(1536, 384, residual=True),
            lin(256, 384, True, m=3072), lin(1152, 384, True, True), lin(384, 768),   # conv1: 3000 frames
            ("log_mel", {"M": 80})]


MIDDLE = ("linear 384 384 residual=side; norm 384 1e-05; linear 384 1536 gelu; linear 1536 384 residual=p0; "
          "norm 384 1e-05")


def tiny_en_entries(cols=4):
    """The kernels encoder.npu_build builds for tiny.en on an array of `cols` columns (4: Phoenix, 8:
    Strix): the mel front end, attention and four chains (the convolutions (conv2 adding the
    positions), layernorm and QKV; out-projection .. next QKV; the last layer's out-projection .. the
    final layernorm, and .. the decoder's cross K/V)."""
    def chain(phases):
        return ("chain", {"M": 1536, "cols": cols, "phases": phases})
    return [("log_mel", {"M": 80}),
            chain("linear 256 384 gelu window=80x1 rows=3072; linear 1152 384 gelu residual=side window=384x2; "
                  "norm 384 1e-05; linear 384 1152"), ("attention", {"T": 1500, "H": 6}),
            chain(MIDDLE + "; linear 384 1152"),
            chain(MIDDLE + "; linear 384 768" + "; linear 384 768 source=p4" * 3), chain(MIDDLE)]
