"""The `npu` backend: the graph's kernels on the AMD Ryzen AI NPU through pyxrt.

At start-up every manifest entry is loaded (the entries of one xclbin share its hardware context;
distinct xclbins within the device's context limit) and self-tested against the emulator on random
inputs: a kernel that errors, times out, returns zeros or returns garbage is disabled, with the
reason kept for `status()`. At run time each op is padded to tile multiples and sent to the
kernel serving its shape; an op without a ready kernel, or whose output fails the
sanity check, runs on the CPU instead — and the runner records that fallback (and
`--strict` turns it into an error). Elementwise adds run on the host in the kernels'
numerics (recorded as "host").
"""
from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np

from kernels import contract as C
from kernels.aie import tiles
from kernels.contract import TILE
from kernels.emu import EmuBackend
from kernels.errors import AmanuensisError
from kernels.frontend import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, hann_window, mel_filters
from kernels.interface import Backend
from kernels.npu_manifest import Entry, key, load_manifest
from kernels.reference import im2col_k3
from kernels.xrt import DeviceInfo, NpuFault, XrtContext, XrtKernel, detect

MIN_SELF_TEST_CORRELATION = 0.999


def _pad_to(n: int) -> int:
    return -(-n // TILE) * TILE


def _bits(x) -> np.ndarray:
    import ml_dtypes

    return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))


def _float(bits: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return bits.view(ml_dtypes.bfloat16).astype(np.float32)


MEL_FRAMES = _pad_to(N_FRAMES)                          # 3008: the mel kernels run 64 frames a tile
MEL_SAMPLES = (MEL_FRAMES - 1) * HOP_LENGTH + N_FFT     # the reflect-padded window, zero-extended
DFT_SHAPE = (_pad_to(N_FFT), 2 * C.BINS_PADDED)          # (448, 448): K zero-padded to a tile


def arg_bytes(entry: Entry) -> list[int]:
    """Buffer sizes of an entry's runtime-sequence arguments, in order (bf16; the mel design's fp32): the
    whole-array designs' (kernels/aie/*/design.py), rows in whole bands."""
    s = entry.shape
    if entry.op == "log_mel":
        filters = _pad_to(C.BINS_PADDED) * _pad_to(s["M"])
        return [4 * MEL_SAMPLES, 3 * 2 * math.prod(DFT_SHAPE), 3 * 2 * filters, 4 * MEL_FRAMES * s["M"]]
    if entry.op == "linear":
        m, k, n = s["M"], s["K"], s["N"]
        packed = n // tiles.PACK_COLUMNS * (k // TILE + 1) * TILE * tiles.PACK_COLUMNS
        return [2 * m * k, 2 * packed, 2 * m * n, 2 * m * n]
    if entry.op == "attention":
        rows, d = tiles.band_rows(s["T"]), s["H"] * TILE
        return [2 * rows * 3 * d, 2 * rows * d]
    return [2 * s["R"] * s["D"], 2 * 2 * s["D"], 2 * s["R"] * s["D"]]


# ---- packing: numpy arguments <-> the designs' buffers ---------------------------------------------

class NpuWeight:
    """A linear's W (K, N) for the NPU: packed with its bias into the layout the matmul design streams
    (kernels.aie.tiles.pack_linear), once per graph and bias instead of on every call; the fp32 original
    for the CPU fallback and the self-tests."""

    def __init__(self, w: np.ndarray):
        self.dense = w
        self.shape = w.shape
        self._packed: dict[int, tuple[np.ndarray, np.ndarray]] = {}          # id(bias) -> (bias, packed)
        self._lock = threading.Lock()

    def packed(self, b: np.ndarray) -> np.ndarray:
        with self._lock:
            hit = self._packed.get(id(b))
            if hit is None or hit[0] is not b:
                hit = (b, tiles.pack_linear(self.dense, b))
                self._packed[id(b)] = hit
            return hit[1]


def _padded(x: np.ndarray, shape: tuple) -> np.ndarray:
    """x with zero rows and columns added up to `shape` (x itself when it is that shape already)."""
    if x.shape == shape:
        return x
    out = np.zeros(shape, np.float32)
    out[:x.shape[0], :x.shape[1]] = x
    return out


_ZEROS: dict[tuple, np.ndarray] = {}


def _zero_bits(shape: tuple) -> np.ndarray:
    """bf16 zeros of `shape`, shared: the residual buffer of a linear without one (read-only)."""
    if shape not in _ZEROS:
        _ZEROS[shape] = np.zeros(shape, np.uint16)
        _ZEROS[shape].flags.writeable = False
    return _ZEROS[shape]


def pack_linear(x, w, b, residual, m, k):
    """The matmul design's inputs: x (m, k) row-major, W with its bias packed (an NpuWeight's, made once),
    the residual (m, N) (zeros without one); bf16."""
    n = w.shape[1]
    packed = w.packed(b) if isinstance(w, NpuWeight) else tiles.pack_linear(w, b)
    res = _zero_bits((m, n)) if residual is None else _bits(_padded(residual, (m, n)))
    return {0: _bits(_padded(x, (m, k))), 1: packed, 2: res}


def pack_attention(qkv, n_head):
    """The attention design's input: the QKV projection's output row-major, rows in whole bands, Q scaled
    by 1/sqrt(64) = 1/8 (exact) as the design takes it."""
    t, three_d = qkv.shape
    x = np.zeros((tiles.band_rows(t), three_d), np.float32)
    x[:t] = C.bf16(qkv)
    x[:, :three_d // 3] *= np.float32(1.0 / math.sqrt(three_d // 3 // n_head))
    return {0: _bits(x)}


def _pieces(matrix: np.ndarray, shape: tuple) -> np.ndarray:
    """A matrix zero-padded to `shape` as its three bf16 pieces (contract.split3), stacked: (3, *shape) bits."""
    return np.stack([_bits(_padded(p, shape)) for p in C.split3(matrix)])


def pack_log_mel(samples: np.ndarray, n_mels: int) -> dict[int, np.ndarray]:
    """The mel design's inputs: the window reflect-padded by N_FFT/2 (the DMA frames it) and zero-extended
    to MEL_SAMPLES (fp32), the windowed DFT matrix and the padded mel filters as bf16 pieces."""
    x = np.zeros(MEL_SAMPLES, np.float32)
    padded = np.pad(samples.astype(np.float32), N_FFT // 2, mode="reflect")
    x[:padded.size] = padded
    filters = C.filters_padded(mel_filters(n_mels))
    return {0: x, 1: _pieces(C.dft_matrix(hann_window()), DFT_SHAPE),
            2: _pieces(filters, (_pad_to(filters.shape[0]), _pad_to(n_mels)))}


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
        self.fallbacks: Counter = Counter()
        self._lock = threading.Lock()
        for entry in entries:
            self._load(entry)

    def describe(self) -> str:
        ready = sum(e.state == "ready" for e in self.entries.values())
        return f"npu ({self.device.name}, {self.device.generation}; {ready}/{len(self.entries)} kernels ready)"

    # ---- start-up ----------------------------------------------------------------------------
    def _disable(self, entry: Entry, reason: str) -> None:
        entry.state, entry.reason = "disabled", reason
        self.kernels.pop(entry.key, None)

    def _context(self, entry: Entry) -> XrtContext:
        """The hardware context of the entry's xclbin: opened once, shared by the kernels it holds."""
        if entry.xclbin not in self.contexts:
            if len(self.contexts) >= self.device.context_limit:
                raise NpuFault(f"hardware context limit ({self.device.context_limit}) reached")
            self.contexts[entry.xclbin] = XrtContext(self.device, entry.xclbin)
        return self.contexts[entry.xclbin]

    def _load(self, entry: Entry) -> None:
        for path in (entry.xclbin, entry.insts):
            if not path.is_file():
                return self._disable(entry, f"missing file {path}")
        try:
            context = self._context(entry)
            self.kernels[entry.key] = XrtKernel(self.device, context, entry.insts, entry.kernel_name,
                                                arg_bytes(entry), entry.insts_count)
        except NpuFault as e:
            return self._disable(entry, str(e) if "context limit" in str(e) else f"load failed: {e}")
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
        return check_output(got, expected)

    # ---- run time ----------------------------------------------------------------------------
    def prepare_weight(self, kernel, w):
        """Matrices of linear and conv1d_k3 packed for the matmul design once per graph (a window of
        tiny.en spent 7.5 ms converting them on every call), where an NPU linear can take them."""
        if kernel in ("linear", "conv1d_k3") and isinstance(w, np.ndarray) and w.ndim == 2 \
                and w.shape[1] % tiles.PACK_COLUMNS == 0:
            return NpuWeight(w)
        return w

    def _entry_for(self, op: str, args, kwargs) -> tuple[Entry | None, str]:
        if op == "linear":
            x, w = args[0], args[1]
            if w.shape[1] % tiles.PACK_COLUMNS:
                return None, f"N={w.shape[1]} is not a multiple of {tiles.PACK_COLUMNS}"
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

    def _on_device(self, entry: Entry, args, kwargs) -> np.ndarray:
        kernel = self.kernels[entry.key]
        s = entry.shape
        if entry.op == "linear":
            x, w, b = args
            t = x.shape[0]
            out = kernel.run(pack_linear(x, w, b, kwargs.get("residual"), s["M"], s["K"]), {3: np.uint16})
            return _float(out[3]).reshape(s["M"], s["N"])[:t]
        if entry.op == "attention":
            qkv, n_head = args
            out = kernel.run(pack_attention(qkv, n_head), {1: np.uint16})
            return _float(out[1]).reshape(-1, qkv.shape[1] // 3)[:qkv.shape[0]]
        if entry.op == "log_mel":
            out = kernel.run(pack_log_mel(args[0], s["M"]), {3: np.float32})
            log_mel = out[3].reshape(MEL_FRAMES, s["M"])[:N_FRAMES]
            # the window's maximum, the clamp and the scaling: on the host, in the kernel's numerics
            return C.mel_finish(log_mel, log_mel.max())
        x, gamma, beta = args
        out = kernel.run({0: _bits(_padded(x, (s["R"], s["D"]))), 1: _bits(np.concatenate([gamma, beta]))},
                         {2: np.uint16})
        return _float(out[2]).reshape(s["R"], s["D"])[:x.shape[0]]

    def run(self, kernel: str, args: tuple, kwargs: dict):
        """(output, where it ran, fallback reason or None) for one graph op."""
        if kernel == "attention" and "n_head" in kwargs:
            kwargs = dict(kwargs)
            args = (args[0], kwargs.pop("n_head"))
        if kernel == "add":
            return C.bf16(C.bf16(args[0]) + C.bf16(args[1])), "host", None
        if kernel == "conv1d_k3":
            x, w, b = args
            patches = im2col_k3(C.bf16(x), kwargs.get("stride", 1))
            return self.run("linear", (patches, w, b), {"gelu": kwargs.get("gelu", True)})
        entry, why = self._entry_for(kernel, args, kwargs)
        if entry is not None:
            try:
                out = self._on_device(entry, args, kwargs)
                problem = check_output(out, None)
                if not problem:
                    entry.calls += 1
                    return out, "npu", None
                why = f"{entry.label()} returned {problem}; disabled"
            except NpuFault as e:
                why = f"{entry.label()} failed: {e}; disabled"
            with self._lock:
                entry.failures += 1
                self._disable(entry, why)
        with self._lock:
            self.fallbacks[why] += 1
        args = tuple(a.dense if isinstance(a, NpuWeight) else a for a in args)
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
        return self.run("log_mel", (samples,), {"n_mels": n_mels})[0]

    def linear(self, x, w, b, gelu=False, residual=None):
        return self.run("linear", (x, w, b), {"gelu": gelu, "residual": residual})[0]

    def conv1d_k3(self, x, w, b, stride=1, gelu=True):
        return self.run("conv1d_k3", (x, w, b), {"stride": stride, "gelu": gelu})[0]

    def attention(self, qkv, n_head):
        return self.run("attention", (qkv, n_head), {})[0]

    def layernorm(self, x, gamma, beta, eps=1e-5):
        return self.run("layernorm", (x, gamma, beta), {"eps": eps})[0]

    def add(self, x, y):
        return self.run("add", (x, y), {})[0]


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
