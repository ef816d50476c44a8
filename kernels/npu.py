"""The `npu` backend: the graph's kernels on the AMD Ryzen AI NPU through pyxrt.

At start-up every manifest entry is loaded (the entries of one xclbin share its hardware context;
distinct xclbins within the device's context limit) and self-tested against the emulator on random
inputs: a kernel that errors, times out, returns zeros or returns garbage is disabled, with the
reason kept for `status()`. At run time each run of convolutions, layernorms and linears that a chain kernel
serves (kernels.aie.design_runner.plan_dispatches) is one dispatch (dispatch_groups, run_group),
and every other op is padded to tile multiples and sent to the kernel serving its shape; a chain
or op without a ready kernel, or whose output fails the sanity check, runs op by op (on the CPU
where no NPU kernel serves the op) — and the runner records that fallback (and `--strict` turns
it into an error).
"""
from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np

from kernels import contract as C
from kernels.aie import iron_host, tiles
from kernels.aie.design_runner import Dispatch, chain_input, chain_shape, plan_dispatches
from kernels.contract import TILE
from kernels.emu import EmuBackend
from kernels.errors import AmanuensisError
from kernels.frontend import N_FRAMES, N_SAMPLES
from kernels.interface import Backend
from kernels.npu_manifest import Entry, key, load_manifest
from kernels.reference import im2col_k3
from kernels.xrt import DeviceBuffer, DeviceInfo, NpuFault, XrtContext, XrtKernel, detect

MIN_SELF_TEST_CORRELATION = 0.999


def _pad_to(n: int) -> int:
    return -(-n // TILE) * TILE


def _bits(x) -> np.ndarray:
    import ml_dtypes

    return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))


def _float(bits: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return bits.view(ml_dtypes.bfloat16).astype(np.float32)


def _chain_design():
    return iron_host.design("matmul")


def _mel_design():
    return iron_host.design("mel")


def arg_bytes(entry: Entry) -> list[int]:
    """Buffer sizes of an entry's runtime-sequence arguments, in order: the whole-array designs'
    (kernels/aie/*/design.py), rows in whole bands; bf16, but the mel design's samples, scratch and
    output (fp32)."""
    s = entry.shape
    if entry.op == "chain":                  # inp, side, params, scratch, out (a buffer of 1 value for none)
        design = _chain_design()
        m, phases = s["M"], design.parse_phases(s["phases"])
        _, _, params, scratch = design.chain_layout(m, phases)
        io = design.chain_io(m, phases)
        return [2 * io.inp, 2 * (io.side or 1), 2 * params, 2 * (scratch or 1), 2 * m * phases[-1].width]
    if entry.op == "log_mel":                # samples, params, scratch, out
        mel = _mel_design()
        return [4 * mel.SAMPLES, 2 * mel.params_size(s["M"]), 4 * mel.scratch_layout(s["M"])[2],
                4 * mel.FRAMES_PADDED * mel.mel_columns(s["M"])]
    if entry.op == "linear":
        m, k, n = s["M"], s["K"], s["N"]
        packed = n // tiles.PACK_COLUMNS * (k // TILE + 1) * TILE * tiles.PACK_COLUMNS
        return [2 * m * k, 2 * packed, 2 * m * n, 2 * m * n]
    if entry.op == "attention":
        rows, d = tiles.band_rows(s["T"]), s["H"] * TILE
        return [2 * rows * 3 * d, 2 * rows * d]
    return [2 * s["R"] * s["D"], 2 * 2 * s["D"], 2 * s["R"] * s["D"]]


def chain_reference(backend, phases, x, side, operands) -> list[np.ndarray]:
    """Each phase's output of a chain (kernels/aie/matmul/design.py's phases), computed op by op on
    `backend` and rounded to bf16 as the device keeps it; x, side: the chain's inputs; operands: per
    phase (W, bias) or (gamma, beta)."""
    design = _chain_design()
    values, previous, outputs = {"inp": x, "side": side}, "inp", []
    for i, (ph, (a, b)) in enumerate(zip(phases, operands)):
        source = values[ph.source or previous]
        if isinstance(ph, design.Norm):
            y = backend.layernorm(source, a, b, ph.eps)
        elif ph.window:
            y = backend.conv1d_k3(source, a, b, values.get(ph.residual), stride=ph.window[1], gelu=ph.gelu)
        else:
            y = backend.linear(source, a, b, gelu=ph.gelu, residual=values.get(ph.residual))
        values[previous := f"p{i}"] = C.bf16(y)
        outputs.append(values[previous])
    return outputs


# ---- packing: numpy arguments <-> the designs' buffers ---------------------------------------------

class NpuWeight:
    """A linear's W (K, N) for the NPU: packed with its bias into the layout the matmul design streams
    (kernels.aie.tiles.pack_linear) once per bias, instead of on every call (NpuBackend uploads it once
    per kernel); for a projection that feeds attention (q_head_dim set by prepare_graph) the query
    columns are scaled by 1/sqrt(head_dim) there, as the attention design takes them. The fp32
    original stays for the CPU fallback and the self-tests."""

    def __init__(self, w: np.ndarray):
        self.dense = w
        self.shape = w.shape
        self.q_head_dim: int | None = None
        self._packed: dict[int, tuple[np.ndarray, np.ndarray]] = {}          # id(bias) -> (bias, packed)
        self._lock = threading.Lock()

    @property
    def q_cols(self) -> int:
        return self.shape[1] // 3 if self.q_head_dim else 0

    def packed(self, b: np.ndarray) -> np.ndarray:
        with self._lock:
            hit = self._packed.get(id(b))
            if hit is None or hit[0] is not b:
                hit = (b, tiles.pack_projection(self.dense, b, self.q_head_dim))
                self._packed[id(b)] = hit
            return hit[1]


class DeviceTensor:
    """An activation an NPU kernel left on the device, where the next kernel reads it: bf16, rows padded
    to whole bands, the query columns of a projection feeding attention scaled by 1/8. Read back (the
    real rows, fp32, Q unscaled) only when something off the NPU needs it: np.asarray(tensor)."""

    def __init__(self, buffer: DeviceBuffer, rows: int, cols: int, lock, q_cols: int = 0, q_head_dim: int = 64):
        self.buffer, self.rows, self.q_cols, self._lock = buffer, rows, q_cols, lock
        self.q_scale = math.sqrt(q_head_dim)
        self.shape, self.ndim, self.dtype = (rows, cols), 2, np.dtype(np.float32)

    def values(self, rows: int | None = None) -> np.ndarray:
        """The first `rows` (default: all real rows) as fp32, only they read back."""
        rows = self.rows if rows is None else min(rows, self.rows)
        with self._lock:
            raw = self.buffer.read(2 * rows * self.shape[1])
        bits = np.frombuffer(raw, np.uint16).reshape(rows, self.shape[1])
        out = _float(bits)
        if self.q_cols:
            out[:, :self.q_cols] *= np.float32(self.q_scale)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.values()
        return out if dtype is None else out.astype(dtype)


def _host(value):
    """An argument as the host's kernels take it: fp32 for a device tensor, the fp32 original of a weight."""
    if isinstance(value, DeviceTensor):
        return np.asarray(value)
    return value.dense if isinstance(value, NpuWeight) else value


def _resident(value, nbytes: int, q_cols: int = 0):
    """The device buffer holding `value` where a kernel's argument of `nbytes` can read it as it stands
    (the same size and Q scaling), else None."""
    if isinstance(value, DeviceTensor) and value.q_cols == q_cols and value.buffer.on_device \
            and value.buffer.nbytes == nbytes:
        return value.buffer
    return None


def _padded(x: np.ndarray, shape: tuple) -> np.ndarray:
    """x with zero rows and columns added up to `shape` (x itself when it is that shape already)."""
    if x.shape == shape:
        return x
    out = np.zeros(shape, np.float32)
    out[:x.shape[0], :x.shape[1]] = x
    return out


def pack_attention(qkv, n_head):
    """The attention design's input: the QKV projection's output row-major, rows in whole bands, Q scaled
    by 1/sqrt(64) = 1/8 (exact) as the design takes it."""
    t, three_d = qkv.shape
    x = np.zeros((tiles.band_rows(t), three_d), np.float32)
    x[:t] = C.bf16(_host(qkv))
    x[:, :three_d // 3] *= np.float32(1.0 / math.sqrt(three_d // 3 // n_head))
    return {0: _bits(x)}


class NpuBackend(Backend):
    """Kernels on the NPU, with self-tests and visible per-op fallback to the CPU."""

    name = "npu"

    def __init__(self, device: DeviceInfo, entries: list[Entry], fallback: Backend, reference=None):
        """fallback: the backend that runs an op no NPU kernel can (the cpu backend);
        reference: what the self-tests compare with (default: the emulator)."""
        self.device = device
        self.entries = {e.key: e for e in entries}
        self.fallback = fallback
        self.reference = reference or EmuBackend()
        self.kernels: dict[tuple, XrtKernel] = {}
        self.contexts: dict = {}                      # xclbin path -> XrtContext
        self._constants: dict = {}                    # arguments uploaded once (_constant)
        self.fallbacks: Counter = Counter()
        self._groups: dict[tuple, tuple] = {}        # node names -> (chain Dispatch, its Entry)
        self._lock = threading.RLock()               # one dispatch at a time; device tensors read under it
        for entry in entries:
            self._load(entry)

    def describe(self) -> str:
        ready = sum(e.state == "ready" for e in self.entries.values())
        return f"npu ({self.device.name}, {self.device.generation}; {ready}/{len(self.entries)} kernels ready)"

    # ---- start-up ----------------------------------------------------------------------------
    def _disable(self, entry: Entry, reason: str) -> None:
        entry.state, entry.reason = "disabled", reason
        self.kernels.pop(entry.key, None)

    def _load(self, entry: Entry) -> None:
        """Open the entry's xclbin in a hardware context (once, shared by the kernels it holds), load
        its kernel and self-test it."""
        for path in (entry.xclbin, entry.insts):
            if not path.is_file():
                return self._disable(entry, f"missing file {path}")
        if entry.xclbin not in self.contexts and len(self.contexts) >= self.device.context_limit:
            return self._disable(entry, f"hardware context limit ({self.device.context_limit}) reached")
        try:
            if entry.xclbin not in self.contexts:
                self.contexts[entry.xclbin] = XrtContext(self.device, entry.xclbin)
            self.kernels[entry.key] = XrtKernel(self.device, self.contexts[entry.xclbin], entry.insts,
                                                entry.kernel_name, arg_bytes(entry), entry.insts_count,
                                                zeroed=(3,) if entry.op == "chain" else ())   # its scratch
        except NpuFault as e:
            return self._disable(entry, f"load failed: {e}")
        except Exception as e:  # pyxrt raises RuntimeError and friends; all mean "not usable"
            return self._disable(entry, f"load failed: {type(e).__name__}: {e}")
        entry.state = "self-test"
        why = self._self_test(entry)
        if why:
            self._disable(entry, f"self-test failed: {why}")
        else:
            entry.state = "ready"

    def _self_test(self, entry: Entry) -> str:
        """'' when the kernel's output on random inputs matches the emulator, else why not."""
        rng = np.random.default_rng(1234)
        s = entry.shape
        if entry.op == "linear":
            x = rng.standard_normal((s["M"], s["K"])).astype(np.float32)
            w = (rng.standard_normal((s["K"], s["N"])) / math.sqrt(s["K"])).astype(np.float32)
            b = rng.standard_normal(s["N"]).astype(np.float32)
            args, kwargs = (x, w, b), {"gelu": s["gelu"]}
        elif entry.op == "attention":
            args, kwargs = (rng.standard_normal((s["T"], 3 * s["H"] * TILE)).astype(np.float32), s["H"]), {}
        elif entry.op == "chain":
            return self._self_test_chain(entry, rng)
        elif entry.op == "log_mel":
            args, kwargs = ((0.1 * rng.standard_normal(N_SAMPLES)).astype(np.float32),), {"n_mels": s["M"]}
        else:
            args = (rng.standard_normal((s["R"], s["D"])).astype(np.float32) * 3,
                    rng.standard_normal(s["D"]).astype(np.float32), rng.standard_normal(s["D"]).astype(np.float32))
            kwargs = {}
        try:
            got = self._on_device(entry, args, kwargs)
        except NpuFault as e:
            return str(e)
        expected = getattr(self.reference, entry.op)(*args, **kwargs)
        return check_output(_host(got), expected)

    def _self_test_chain(self, entry: Entry, rng) -> str:
        """A chain on random inputs and weights against the reference run phase by phase."""
        design = _chain_design()
        m, phases = entry.shape["M"], design.parse_phases(entry.shape["phases"])
        io = design.chain_io(m, phases)
        x = rng.standard_normal((io.rows, io.width)).astype(np.float32) * 2
        residual = rng.standard_normal((io.side_rows, io.side_width)).astype(np.float32) if io.side else None
        operands, packed = [], []
        for ph in phases:
            if isinstance(ph, design.Norm):
                g = (1 + 0.1 * rng.standard_normal(ph.d)).astype(np.float32)
                b = rng.standard_normal(ph.d).astype(np.float32)
                operands.append((g, b))
                packed.append(tiles.pack_norm(g, b))
            else:
                w = (rng.standard_normal((ph.w_rows, ph.n)) / math.sqrt(ph.w_rows)).astype(np.float32)
                b = rng.standard_normal(ph.n).astype(np.float32)
                operands.append((w, b))
                packed.append(tiles.pack_linear(w, b))
        params = np.concatenate([p.reshape(-1) for p in packed])
        try:
            with self._lock:
                _, out = self._dispatch_chain(self.kernels[entry.key], io, x, residual, params)
                got = _float(np.frombuffer(out.read(), np.uint16)).reshape(m, -1)
        except NpuFault as e:
            return str(e)
        return check_output(got, chain_reference(self.reference, phases, x, residual, operands)[-1])

    def _dispatch_chain(self, kernel: XrtKernel, io, x, side, params):
        """One chain run: (scratch, out) left on the device. io: the design's chain_io; x, side: device
        tensors or arrays (side None for a chain without one; a DeviceBuffer for a weight uploaded once);
        params: the packed operands (bits) or their device buffer."""
        size = kernel.arg_bytes
        if side is None:
            side = self._constant(kernel, 1, (), lambda: np.zeros(1, np.uint16))
        elif not isinstance(side, DeviceBuffer):
            side = _resident(side, size[1]) or _bits(_padded(_host(side), (io.side_rows, side.shape[1])))
        inputs = {0: _resident(x, size[0]) or chain_input(io, _bits(_padded(_host(x), (io.rows, io.width)))),
                  1: side, 2: params}
        out = kernel.run(inputs, {}, leave=(3, 4))
        return out[3], out[4]

    # ---- run time ----------------------------------------------------------------------------
    def dispatch_groups(self, graph) -> list[tuple[str, ...]]:
        """The runs of nodes a chain kernel of the manifest computes in one dispatch (the runner hands them
        to run_group; a disabled one reports why there): plan_dispatches' chains for this device's
        columns."""
        cols = 8 if self.device.generation == "strix" else 4
        seq = next((n.shape[0] for n in graph.nodes if n.kernel == "attention"), graph.nodes[0].shape[0])
        groups = []
        for step in plan_dispatches(graph.nodes, graph.shapes, seq, cols):
            if isinstance(step, Dispatch) and step.kernel == "chain":
                entry = self.entries.get(key("chain", chain_shape(step)))
                if entry is not None:
                    names = tuple(n.name for n in step.nodes)
                    self._groups[names] = (step, entry)
                    groups.append(names)
        return groups

    def run_group(self, calls):
        """({node name: output}, "npu", None) for a group dispatch_groups gave, calls: [(node, args,
        kwargs)]; (None, "npu", why) when its kernel is disabled or fails (it is then disabled: the
        runner runs the nodes one by one)."""
        step, entry = self._groups[tuple(node.name for node, _, _ in calls)]
        why = f"{entry.label()} disabled ({entry.reason})"
        if entry.state == "ready":
            outs, why = self._checked(entry, lambda: self._on_device_chain(entry, step, calls), dict.values)
            if outs is not None:
                return outs, "npu", None
        with self._lock:
            self.fallbacks[why] += 1
        return None, "npu", why

    def _checked(self, entry: Entry, work, outputs) -> tuple[object, str]:
        """(work()'s result, '') when the kernel runs and every output (outputs(result)) passes the sanity
        check; else (None, why), the kernel disabled."""
        try:
            result = work()
            problem = next(filter(None, (check_output(_sample(o), None) for o in outputs(result))), "")
            if not problem:
                entry.calls += 1
                return result, ""
            why = f"{entry.label()} returned {problem}; disabled"
        except NpuFault as e:
            why = f"{entry.label()} failed: {e}; disabled"
        with self._lock:
            entry.failures += 1
            self._disable(entry, why)
        return None, why

    def _on_device_chain(self, entry: Entry, step, calls) -> dict:
        """A chain's nodes in one dispatch: each node's output a device tensor (the last in the out
        buffer, the others in parts of the scratch buffer); the packed operands written once."""
        kernel = self.kernels[entry.key]
        rows, phases, _ = step.shape
        design = _chain_design()
        io = design.chain_io(rows, phases)
        operands = [args[1:3] for _, args, _ in calls]                 # (W, bias) or (gamma, beta)
        with self._lock:
            params = self._constant(kernel, 2, tuple(a for pair in operands for a in pair),
                                    lambda: np.concatenate([self._pack(node, *ops).reshape(-1)
                                                            for (node, _, _), ops in zip(calls, operands)]))
            scratch, out = self._dispatch_chain(kernel, io, calls[0][1][0], self._side(kernel, io, step, calls), params)
            _, scratch_at, _, _ = design.chain_layout(rows, phases)
            outs = {}
            for (node, args, _), ph, at in zip(calls, phases, scratch_at):
                m = ph.rows or rows
                buffer = out if at is None else kernel.keep(scratch.part(2 * at, 2 * m * ph.width))
                w = args[1]
                q_cols, head_dim = (w.q_cols, w.q_head_dim) if isinstance(w, NpuWeight) else (0, None)
                outs[node.name] = DeviceTensor(buffer, node.shape[0], ph.width, self._lock, q_cols, head_dim or 64)
            return outs

    def _side(self, kernel: XrtKernel, io, step, calls):
        """A chain's side input: the residual a node takes from outside the chain, an activation (as
        given), or a convolution's positions (a weight: uploaded once)."""
        found = next(((node, args, kwargs) for node, args, kwargs in calls
                      if step.side and step.side in (node.residual, *node.weights)), None)
        if found is None:
            return None
        node, args, kwargs = found
        if step.side == node.residual:
            return kwargs["residual"]
        weight = args[1 + node.weights.index(step.side)]
        return self._constant(kernel, 1, (weight,),
                              lambda: _bits(_padded(weight, (io.side_rows, weight.shape[1]))))

    @staticmethod
    def _pack(node, a, b) -> np.ndarray:
        if node.kernel == "layernorm":
            return tiles.pack_norm(a, b)
        return a.packed(b) if isinstance(a, NpuWeight) else tiles.pack_linear(a, b)

    def prepare_graph(self, graph, weights) -> None:
        """Mark the projections whose output feeds attention: their query columns are packed scaled, so
        that the attention design reads their output where it stands."""
        for node, after in zip(graph.nodes, graph.nodes[1:]):
            w = weights.get(node.weights[0]) if node.weights else None
            if node.kernel == "linear" and after.kernel == "attention" and isinstance(w, NpuWeight):
                w.q_head_dim = w.shape[1] // 3 // dict(after.params)["n_head"]

    def prepare_weight(self, kernel, w):
        """Matrices of linear and conv1d_k3 packed for the matmul design once per graph (a window of
        tiny.en spent 7.5 ms converting them on every call), where an NPU linear can take them."""
        if kernel in ("linear", "conv1d_k3") and isinstance(w, np.ndarray) and w.ndim == 2 \
                and w.shape[1] % tiles.PACK_WIDTH == 0:
            return NpuWeight(w)
        return w

    def _entry_for(self, op: str, args, kwargs) -> tuple[Entry | None, str]:
        if op == "linear":
            x, w = args[0], args[1]
            if w.shape[1] % tiles.PACK_WIDTH:
                return None, f"N={w.shape[1]} is not a multiple of {tiles.PACK_WIDTH}"
            shape = {"M": tiles.band_rows(x.shape[0]), "K": _pad_to(x.shape[1]), "N": w.shape[1],
                     "gelu": bool(kwargs.get("gelu", False)), "residual": kwargs.get("residual") is not None}
        elif op == "attention":
            qkv, n_head = args
            if qkv.shape[1] // 3 // n_head != TILE:
                return None, "heads are not 64 wide"
            shape = {"T": qkv.shape[0], "H": n_head}
        elif op == "log_mel":
            shape = {"M": kwargs["n_mels"]}
        else:
            shape = {"R": tiles.band_rows(args[0].shape[0]), "D": args[0].shape[1]}
        entry = self.entries.get(key(op, shape))
        if entry is None:
            return None, f"no NPU kernel for {op} {shape}"
        if entry.state != "ready":
            return None, f"{entry.label()} disabled ({entry.reason})"
        return entry, ""

    def _on_device(self, entry: Entry, args, kwargs):
        """One op on the NPU: inputs the device holds already are passed as they stand, the rest packed
        and written; the output stays on the device (a DeviceTensor), but log_mel's."""
        kernel = self.kernels[entry.key]
        s, size = entry.shape, kernel.arg_bytes
        with self._lock:
            if entry.op == "linear":
                x, w, b = args
                residual, (m, k, n) = kwargs.get("residual"), (s["M"], s["K"], s["N"])
                inputs = {0: _resident(x, size[0]) or _bits(_padded(_host(x), (m, k))),
                          1: self._constant(kernel, 1, (w, b), lambda: w.packed(b)) if isinstance(w, NpuWeight)
                          else tiles.pack_linear(w, b),
                          2: self._residual(kernel, residual, (m, n))}
                q_cols, head_dim = (w.q_cols, w.q_head_dim) if isinstance(w, NpuWeight) else (0, None)
                out = kernel.run(inputs, {}, leave=3)
                return DeviceTensor(out[3], x.shape[0], n, self._lock, q_cols, head_dim or 64)
            if entry.op == "attention":
                qkv, n_head = args
                d = qkv.shape[1] // 3
                buffer = _resident(qkv, size[0], q_cols=d)
                out = kernel.run({0: buffer or pack_attention(qkv, n_head)[0]}, {}, leave=1)
                return DeviceTensor(out[1], qkv.shape[0], d, self._lock)
            if entry.op == "log_mel":        # fp32, read back: the host writes it in bf16 for conv1's chain
                mel = _mel_design()
                out = kernel.run({0: tiles.mel_samples(args[0], mel.SAMPLES),
                                  1: self._constant(kernel, 1, (), lambda: tiles.pack_mel(s["M"]))}, {3: np.float32})
                return out[3].reshape(mel.FRAMES_PADDED, -1)[:N_FRAMES, :s["M"]]
            x, gamma, beta = args
            inputs = {0: _resident(x, size[0]) or _bits(_padded(_host(x), (s["R"], s["D"]))),
                      1: self._constant(kernel, 1, (gamma, beta), lambda: _bits(np.concatenate([gamma, beta])))}
            out = kernel.run(inputs, {}, leave=2)
            return DeviceTensor(out[2], x.shape[0], s["D"], self._lock)

    def _residual(self, kernel: XrtKernel, residual, shape: tuple):
        """The matmul's residual argument: where the device holds it, written from the host, or zeros
        (uploaded once) for a linear without one."""
        if residual is None:
            return self._constant(kernel, 2, (), lambda: np.zeros(shape, np.uint16))
        return _resident(residual, kernel.arg_bytes[2]) or _bits(_padded(_host(residual), shape))

    def _constant(self, kernel: XrtKernel, index: int, of: tuple, make) -> DeviceBuffer:
        """A kernel argument that does not change between calls (a packed weight, zeros for no residual, a
        layernorm's gamma and beta), uploaded once; `of`: the arrays it is made from (held, so that ids stay theirs)."""
        key = (id(kernel), index, *map(id, of))
        hit = self._constants.get(key)
        if hit is None:
            hit = self._constants[key] = (of, kernel.upload(index, make()))
        return hit[1]

    def run(self, kernel: str, args: tuple, kwargs: dict):
        """(output, where it ran, fallback reason or None) for one graph op."""
        if kernel == "attention" and "n_head" in kwargs:
            kwargs = dict(kwargs)
            args = (args[0], kwargs.pop("n_head"))
        if kernel == "conv1d_k3":
            x, w, b, residual = (*args, None)[:4]   # the residual (the positions) comes as a 4th weight
            patches = im2col_k3(C.bf16(_host(x)), kwargs.get("stride", 1))
            return self.run("linear", (patches, w, b), {"gelu": kwargs.get("gelu", True), "residual": residual})
        entry, why = self._entry_for(kernel, args, kwargs)
        if entry is not None:
            out, why = self._checked(entry, lambda: self._on_device(entry, args, kwargs), lambda o: [o])
            if out is not None:
                return out, "npu", None
        with self._lock:
            self.fallbacks[why] += 1
        args = tuple(_host(a) for a in args)
        kwargs = {k: _host(v) for k, v in kwargs.items()}
        return getattr(self.fallback, kernel)(*args, **kwargs), self.fallback.name, why

    def status(self) -> dict:
        """Device, each kernel's state (ready / disabled and why), calls and fallbacks."""
        return {"device": self.device.name, "generation": self.device.generation,
                "context_limit": self.device.context_limit, "contexts": len(self.contexts),
                "kernels": [{"kernel": e.label(), "state": e.state, "reason": e.reason, "calls": e.calls,
                             "failures": e.failures} for e in self.entries.values()],
                "fallbacks": dict(self.fallbacks)}

    # The graph calls kernels through run(); direct calls get the same dispatch.
    def log_mel(self, samples, n_mels):
        return _host(self.run("log_mel", (samples,), {"n_mels": n_mels})[0])

    def linear(self, x, w, b, gelu=False, residual=None):
        return _host(self.run("linear", (x, w, b), {"gelu": gelu, "residual": residual})[0])

    def conv1d_k3(self, x, w, b, residual=None, stride=1, gelu=True):
        return _host(self.run("conv1d_k3", (x, w, b, residual), {"stride": stride, "gelu": gelu})[0])

    def attention(self, qkv, n_head):
        return _host(self.run("attention", (qkv, n_head), {})[0])

    def layernorm(self, x, gamma, beta, eps=1e-5):
        return _host(self.run("layernorm", (x, gamma, beta), {"eps": eps})[0])


def _sample(out) -> np.ndarray:
    """What the sanity check reads of an output: a device tensor's first 64 rows (reading it all back
    would undo keeping it on the device), the whole of a host array."""
    return out.values(TILE) if isinstance(out, DeviceTensor) else out


def check_output(got: np.ndarray, expected: np.ndarray | None) -> str:
    """'' if `got` looks like a real result (and tracks `expected`, when given), else what is wrong."""
    if not np.all(np.isfinite(got)):
        return "non-finite values"
    if not np.any(got):
        return "all zeros"
    if expected is not None:
        a, b = got.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
        corr = float(np.corrcoef(a, b)[0, 1]) if a.std() and b.std() else 0.0
        if corr < MIN_SELF_TEST_CORRELATION:
            return f"garbage (correlation {corr:.4f} with the emulator)"
    return ""


def open_npu(fallback: Backend) -> NpuBackend:
    """The NPU backend if a device and at least one working kernel are present; AmanuensisError otherwise.
    fallback: the backend that runs what no NPU kernel can."""
    device, why = detect()
    if device is None:
        raise AmanuensisError(why)
    backend = NpuBackend(device, load_manifest(), fallback)
    if not any(e.state == "ready" for e in backend.entries.values()):
        reasons = "; ".join(f"{e.label()}: {e.reason}" for e in backend.entries.values()) or "manifest is empty"
        raise AmanuensisError(f"no NPU kernel passed its self-test ({reasons})")
    return backend
