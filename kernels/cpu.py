"""The `cpu` backend: fp32 kernels, row-blocked and spread over all cores; and `cpu-bf16`, the same
with its matrix products in bf16 (AMX tiles, else AVX512-BF16).

Each kernel splits its output rows into blocks and hands them to a thread pool
(numpy, BLAS and the native kernels release the GIL). BLAS is pinned to one thread
for the length of a graph run (`session`), so the blocks do not fight BLAS's own
threads, and each block's epilogue (bias, GELU, residual) runs right after its
matmul, while the rows are still warm.

Two variants: the native kernels of kernels/native (C, one call per block: epilogues,
layernorm, fused attention, and on AVX-512 CPUs the matrix products themselves, on
weights packed once per graph), used when they are built, and the numpy kernels on
numpy's BLAS below, which are their fallback. The description names the variant in
use, so the fallback is never silent.

`cpu-bf16` runs the linear layers, the convolutions and attention's two products as the NPU
kernels compute a product: inputs rounded to bf16, sums in fp32 (kernels/native/isa_amx.c on
Intel's AMX tiles: fc1's shape 5x the native fp32 product's speed, one thread; where there are none,
isa_avx512bf16.c on AVX512-BF16's dot products, AMD Zen 4 and later); the softmax, layernorm and
every epilogue stay fp32 as in `cpu`. It exists only where one of them does: elsewhere asking for it
is an error, and so is a shape its kernels do not take (no silent fp32 op).
"""
from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

from kernels import native, reference, settings
from kernels.errors import AmanuensisError
from kernels.interface import Backend

# erf(u) ≈ tanh(u · P(u²)): P fitted by us (iteratively reweighted least squares against
# atanh(erf), weighted by tanh's slope, on [0, 4]). tanh saturates to ±1 exactly where erf rounds
# to ±1 in fp32 and P's leading coefficient is positive, so no clamp is needed at any |u|.
# Evaluated in fp32 the max abs error is 1.3e-7, measured on a 2M-point grid over [-21, 21].
# One tanh (vectorised in numpy) and a degree-6 Horner: 18 array passes per GELU against ~30
# for the rational form it replaced, which made GELU a third of fc1's time.
_ERF_P = (1.128379705499412, 0.10276548114784073, -0.00018438291279451174, -0.000625720310036089,
          8.971288714181166e-05, -5.985743101270098e-06, 1.589634021231064e-07)
# GELU needs erf(x/√2): fold the 1/√2 into the coefficients, x · Σ P_k/(√2·2^k) · (x²)^k.
_GELU_P64 = tuple(c / (math.sqrt(2.0) * 2.0**k) for k, c in enumerate(_ERF_P))
_GELU_P = tuple(np.float32(c) for c in _GELU_P64)
_ERF_P = tuple(np.float32(c) for c in _ERF_P)
_GELU_NATIVE = native.gelu_coefficients(_GELU_P64)  # the same fit, in the native GELU's form
ATTENTION_QUERY_ROWS = 256
EPILOGUE_CHUNK = 1 << 16  # elements per epilogue chunk: its 3 scratch-sized arrays (768 KiB) stay in L2; measured best
_HALF = np.float32(0.5)


def _tanh_poly(x: np.ndarray, coeffs: tuple, out: np.ndarray, z: np.ndarray) -> np.ndarray:
    """out ← tanh(x · P(x²)), Horner in place; z is scratch of x's shape."""
    with np.errstate(over="ignore"):          # |x| > 1e19: x² is inf, and tanh(±inf) = ±1 is right
        np.multiply(x, x, out=z)
        np.multiply(z, coeffs[-1], out=out)
        out += coeffs[-2]
        for c in coeffs[-3::-1]:
            out *= z
            out += c
        out *= x
    return np.tanh(out, out=out)


def erf(x: np.ndarray) -> np.ndarray:
    """fp32 erf by the tanh form above (max abs error 1.3e-7)."""
    x = np.asarray(x, np.float32)
    return _tanh_poly(x, _ERF_P, np.empty_like(x), np.empty_like(x))


def gelu_inplace(y: np.ndarray) -> None:
    """y ← ½ · y · (1 + erf(y/√2)), chunk by chunk so every pass stays in cache."""
    flat = y.reshape(-1)
    n = min(flat.size, EPILOGUE_CHUNK)
    phi, z = np.empty(n, np.float32), np.empty(n, np.float32)
    for start in range(0, flat.size, EPILOGUE_CHUNK):
        chunk = flat[start:start + EPILOGUE_CHUNK]
        e = _tanh_poly(chunk, _GELU_P, phi[:chunk.size], z[:chunk.size])
        e *= _HALF
        e += _HALF
        chunk *= e


# Softmax without the max shift when it is safe: e^s neither overflows nor loses the row's mass
# when the row sum lands in [_SUM_LOW, _SUM_HIGH]; the shift cancels in the division, so the
# result is the same softmax. Rows outside (or NaN) are redone with the max subtracted. This
# drops two of the four passes over the (rows, T) scores, which dominated attention.
_SUM_LOW, _SUM_HIGH = 1e-20, 1e30


def _softmax_times_v(q: np.ndarray, k_t: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """softmax(q · k_t) · v for one block of query rows (q already scaled); s: (rows, T) scratch."""
    np.matmul(q, k_t, out=s)                                            # scores against the whole sequence
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # such rows are redone below
        np.exp(s, out=s)
        denom = s @ np.ones((s.shape[1], 1), np.float32)                # row sums as a GEMV: 4x a sum()
        o = s @ v                                                       # (rows, d)
    bad = ~((denom > _SUM_LOW) & (denom < _SUM_HIGH))[:, 0]
    if bad.any():
        s = q[bad] @ k_t
        s -= s.max(-1, keepdims=True)
        np.exp(s, out=s)
        denom[bad] = s.sum(-1, keepdims=True)
        o[bad] = s @ v
    o /= denom
    return o


def _blocks(n: int, workers: int, min_rows: int = 32, align: int = 1) -> list[slice]:
    """Split n rows into one block per worker, none below min_rows, edges on multiples of align:
    one large GEMM per thread runs ~10% faster than two half-size ones (measured on every encoder shape)."""
    count = max(1, min(workers, n // min_rows))
    edges = [round(n * i / count / align) * align for i in range(count)] + [n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class PackedWeight:
    """A matrix product's W (K, N) in the native linear's layout (kernels.native.pack)."""

    ROW_ALIGN = native.TILE_ROWS         # row blocks on multiples of the kernel's register tile

    def __init__(self, w: np.ndarray):
        self.panels = native.pack(w)                                    # (N/64, K, 64)
        self.shape = w.shape

    def product(self, a, b, out, coeffs, residual) -> None:
        """out ← act(a · W + b) (+ residual) for one row block (kernels.native.linear)."""
        native.linear(a, self.panels, b, out, coeffs, residual)


class PackedBf16Weight:
    """A matrix product's W (K, N) rounded to bf16 in the bf16 linear's layout (kernels.native.pack_bf16)."""

    ROW_ALIGN = 32                       # row blocks on multiples of the kernels' 32-row pass

    def __init__(self, w: np.ndarray):
        self.packed = native.pack_bf16(w)                               # (N/16, K_pad/2, 16, 2)
        self.shape = w.shape

    def product(self, a, b, out, coeffs, residual) -> None:
        """out ← act(bf16(a) · W + b) (+ residual) for one row block (kernels.native.linear_bf16)."""
        native.linear_bf16(a, self.packed, self.shape[0], b, out, coeffs, residual)


class CpuBackend(Backend):
    """fp32 on the host CPU: the native kernels (their own matmuls on AVX-512, BLAS's elsewhere), or the
    numpy kernels on numpy's BLAS; with bf16, the matrix products in bf16 (native.BF16's kind)."""

    name = "cpu"

    def __init__(self, threads: int | None = None, native_kernels: bool | None = None, bf16: bool = False):
        """threads: the pool's size (default AMANUENSIS_THREADS, else every core); native_kernels:
        None uses them when built, False forces the numpy kernels, True insists on them; bf16: the
        `cpu-bf16` backend (AmanuensisError where neither AMX nor AVX512-BF16 is usable)."""
        self.threads = threads or settings.threads()
        if native_kernels and native.LIBRARY is None:
            raise RuntimeError(f"the cpu backend's native kernels are {native.UNAVAILABLE}")
        if bf16 and (native.BF16 is None or native_kernels is False):
            raise AmanuensisError(f"bf16 matrix products: {native.BF16_UNAVAILABLE or 'native kernels off'}")
        self.bf16 = bf16
        self.name = "cpu-bf16" if bf16 else "cpu"
        self.native = native.LIBRARY is not None if native_kernels is None else native_kernels
        # The native linear beats numpy's OpenBLAS with AVX-512 (linear nodes 76 -> 63 ms per window); the
        # AVX2 copy only matched OpenBLAS's Haswell kernels (encoder 200 ms either way, on this machine
        # running AVX2 code), so there BLAS keeps the matrix products.
        self.native_linear = self.native and native.LIBRARY.level == 4
        self._pool = ThreadPoolExecutor(max(1, self.threads - 1), thread_name_prefix="amanuensis-cpu")
        self._blas_lock = threading.Lock()
        self._blas_users = 0
        self._blas_limit = None
        self._local = threading.local()

    def _scratch(self, name: str, size: int) -> np.ndarray:
        """A per-thread fp32 buffer of at least `size` elements, kept between calls (a fresh
        megabyte-sized array per block costs its page faults every time: attention measured 9% faster),
        on a 64-byte line for the vector loads of the native kernels."""
        buf = getattr(self._local, name, None)
        if buf is None or buf.size < size:
            buf = native.empty_aligned((size,))
            setattr(self._local, name, buf)
        return buf[:size]

    def describe(self) -> str:
        threads = f"{self.threads} thread{'' if self.threads == 1 else 's'}"
        if self.bf16:
            return (f"cpu-bf16 (matrix products, attention's too, in bf16 on {native.BF16.name} with fp32 sums; "
                    f"softmax, norms and epilogues fp32 in native kernels {native.isa()}; {threads})")
        if self.native_linear:
            return f"cpu (fp32, native kernels {native.isa()} with their own matmuls, {threads})"
        if self.native:
            return f"cpu (fp32, BLAS + native kernels {native.isa()}, {threads})"
        why = native.UNAVAILABLE if native.LIBRARY is None else "not used"
        return f"cpu (fp32, BLAS + numpy kernels: native kernels {why}, {threads})"

    @contextmanager
    def session(self):
        """Pin BLAS to one thread while any graph run is active (re-entrant across threads)."""
        with self._blas_lock:
            if self._blas_users == 0:
                self._blas_limit = threadpool_limits(1, user_api="blas")
            self._blas_users += 1
        try:
            yield
        finally:
            with self._blas_lock:
                self._blas_users -= 1
                if self._blas_users == 0:
                    self._blas_limit.restore_original_limits()

    def _run(self, fn, tasks) -> None:
        """fn(task) for every task, on all threads. The calling thread works too, taking tasks from
        the same counter as the helpers: a node waits for one wake-up fewer (a pool round trip was
        ~90 µs per node, 3 ms per tiny.en window), and no thread idles while tasks remain."""
        tasks = list(tasks)
        claim = itertools.count()

        def drain():
            while (i := next(claim)) < len(tasks):      # next() on a count is atomic under the GIL
                fn(tasks[i])

        helpers = [self._pool.submit(drain) for _ in range(min(self.threads, len(tasks)) - 1)]
        try:
            drain()
        finally:
            for helper in helpers:                      # before any error propagates: they write our arrays
                helper.result()

    def prepare_weight(self, kernel, w):
        """Matrices of linear and conv1d_k3 packed for the native linear (or rounded to bf16 and packed
        for the bf16 one), where it runs them."""
        if kernel not in ("linear", "conv1d_k3") or not isinstance(w, np.ndarray):
            return w
        if self.bf16:
            if w.shape[1] % 32:
                raise AmanuensisError(f"cpu-bf16 runs matrices whose width is a multiple of 32 (every Whisper "
                                      f"layer's is), not {w.shape[1]}")
            return PackedBf16Weight(w)
        if self.native_linear and w.shape[1] % native.PANEL == 0:
            return PackedWeight(w)
        return w

    def log_mel(self, samples, n_mels):
        """The front end on the host in float64 (the reference: its cost, ~10 ms a window, is small)."""
        return reference.log_mel(samples, n_mels)

    def linear(self, x, w, b, gelu=False, residual=None):
        if isinstance(w, (PackedWeight, PackedBf16Weight)):
            if not (self.bf16 if isinstance(w, PackedBf16Weight) else self.native_linear):
                raise ValueError(f"a {type(w).__name__} given to a backend that does not run it ({self.describe()}): "
                                 "weights belong to the backend that prepared them")
            out = native.empty_aligned((x.shape[0], w.shape[1]))       # (T, N)
            coeffs = _GELU_NATIVE if gelu else None

            def packed_block(rows):
                w.product(x[rows], b, out[rows], coeffs, None if residual is None else residual[rows])

            self._run(packed_block, _blocks(x.shape[0], self.threads, align=w.ROW_ALIGN))
            return out
        out = np.empty((x.shape[0], w.shape[1]), np.float32)          # (T, N)

        def block(rows):
            y = out[rows]
            np.matmul(x[rows], w, out=y)
            self._epilogue(y, b, gelu, None if residual is None else residual[rows])

        self._run(block, _blocks(x.shape[0], self.threads))
        return out

    def _epilogue(self, y, b, gelu, residual) -> None:
        """y ← act(y + b) + residual in place (act = GELU or identity), on the variant in use."""
        if self.native:
            native.bias_epilogue(y, b, _GELU_NATIVE if gelu else None, residual)
            return
        y += b
        if gelu:
            gelu_inplace(y)
        if residual is not None:
            y += residual

    def conv1d_k3(self, x, w, b, residual=None, stride=1, gelu=True):
        t, c = x.shape
        xp = np.zeros((t + 2, c), np.float32)                           # zero padding of 1 each side
        xp[1:-1] = x
        t_out = (t - 1) // stride + 1
        # im2col without a copy: patch row i is the 3 consecutive rows xp[s·i : s·i + 3].
        patches = np.lib.stride_tricks.as_strided(xp, (t_out, 3 * c), (stride * c * 4, 4), writeable=False)
        # the native linear reads the overlapping rows in place; BLAS needs each block copied
        in_place = isinstance(w, (PackedWeight, PackedBf16Weight))
        return self.linear(patches if in_place else _Contiguous(patches), w, b, gelu=gelu,
                           residual=residual)

    def layernorm(self, x, gamma, beta, eps=1e-5):
        out = np.empty_like(x)
        inv_d = np.full((x.shape[1], 1), 1.0 / x.shape[1], np.float32)    # row means as a GEMV

        def block(rows):
            y = out[rows]
            if self.native:
                native.layernorm(x[rows], y, gamma, beta, eps)
                return
            np.subtract(x[rows], x[rows] @ inv_d, out=y)
            var = np.einsum("ij,ij->i", y, y)[:, None]                     # Σ y² without a temporary
            var *= inv_d[0, 0]
            var += np.float32(eps)
            y *= 1.0 / np.sqrt(var)
            y *= gamma
            y += beta

        self._run(block, _blocks(x.shape[0], self.threads))
        return out

    def attention(self, qkv, n_head):
        t, d_model = qkv.shape[0], qkv.shape[1] // 3
        d = d_model // n_head
        out = np.empty((t, d_model), np.float32)                        # (T, D)
        # Each task takes a span of one head's query rows. Spans per head: the fewest that make the
        # task count a multiple of the threads, so no thread idles at the end. One task per 256-row
        # block measured 18.2 ms per layer against 16.6 (numpy kernels, tiny.en, 2 threads).
        spans = _blocks(t, self.threads // math.gcd(n_head, self.threads), min_rows=1)
        tasks = [(h, rows) for h in range(n_head) for rows in spans]
        columns = [[slice(i * d_model + h * d, i * d_model + (h + 1) * d) for i in range(3)] for h in range(n_head)]
        if self.bf16:
            if d != native.HEAD:
                raise AmanuensisError(f"cpu-bf16 runs attention heads of {native.HEAD}, not {d}")

            def bf16_span(task):
                h, rows = task
                q, k, v = columns[h]
                native.attention_bf16(qkv[rows, q], qkv[:, k], qkv[:, v], 1.0 / math.sqrt(d), out[rows, q])

            self._run(bf16_span, tasks)
        elif self.native and d == native.HEAD:
            def span(task):
                h, rows = task
                q, k, v = columns[h]
                native.attention_head(qkv[rows, q], qkv[:, k], qkv[:, v], 1.0 / math.sqrt(d), out[rows, q],
                                      self._scratch("attention", native.attention_scratch(t)))

            self._run(span, tasks)
        else:
            self._attention_numpy(qkv, columns, tasks, out)
        return out

    def _attention_numpy(self, qkv, columns, tasks, out) -> None:
        """The numpy variant: per head a contiguous Kᵀ·scale and V, then 256-query-row blocks."""
        t, d = qkv.shape[0], columns[0][0].stop - columns[0][0].start
        heads = [None] * len(columns)

        def prepare(h):
            # Kᵀ·scale and V contiguous per head (BLAS runs ~25% faster than on strided views); Q stays
            # a strided view (no loss measured) and the scale rides on the Kᵀ copy.
            q, k, v = columns[h]
            k_t = np.multiply(qkv[:, k].T, np.float32(1.0 / math.sqrt(d)), out=np.empty((d, t), np.float32))
            heads[h] = (qkv[:, q], k_t, np.ascontiguousarray(qkv[:, v]))   # (T, d), (d, T), (T, d)

        def span(task):
            h, rows = task
            q, k_t, v = heads[h]
            scores = self._scratch("scores", ATTENTION_QUERY_ROWS * t)
            # 256-row blocks: a (256, T) score block, 1.5 MiB at T=1500, is about L2-sized (measured
            # fastest of 64..384 rows)
            for r in range(rows.start, rows.stop, ATTENTION_QUERY_ROWS):
                block = slice(r, min(r + ATTENTION_QUERY_ROWS, rows.stop))
                s = scores[:(block.stop - block.start) * t].reshape(-1, t)
                out[block, columns[h][0]] = _softmax_times_v(q[block], k_t, v, s)

        self._run(prepare, range(len(columns)))
        self._run(span, tasks)


class _Contiguous:
    """Row-sliceable wrapper that makes each requested row block contiguous (for BLAS)."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape

    def __getitem__(self, rows):
        return np.ascontiguousarray(self.array[rows])
