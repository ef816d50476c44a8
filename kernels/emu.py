"""The `emu` backend: the NPU kernels' exact numerics (kernels/contract.py) on the CPU.

Slow next to `cpu` (every 8-wide K step of every matmul is its own rounding, bf16 at every kernel
boundary), but it computes what the vectorised AIE kernels compute, bit for bit: bf16 in and out,
the matrix unit's fp32 accumulation, the contract's exp, reciprocal and GELU, and attention as the
attention kernel runs it (for each 64-query tile a running max and sum over the 64-key tiles of the
whole padded sequence), vectorised over heads and query tiles.

The matrix unit (contract.matmul and the front end's matmul_f32), attention, the matmul epilogue
(bias, GELU, residual), layernorm and the bf16 rounding of inputs run on the native kernels where
they are built (kernels/native/emu_kernels.h, the same bits but for which NaN comes out where two
meet, 3-30x faster), else in numpy; `describe` says which.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kernels import contract as C
from kernels import native, settings
from kernels.frontend import frames, hann_window, mel_filters
from kernels.interface import Backend
from kernels.reference import im2col_k3

ROW_BLOCK = 256     # rows per block of the matmul (bounds its float64 temporaries)
# contract.gelu's constants as the native emu_gelu reads them: breaks, end, centres, coefficients
GELU_TABLE = np.concatenate([C.GELU_BREAKS, [C.GELU_END], C.GELU_CENTRES, C.GELU_COEFFS.ravel()]).astype(np.float32)


class EmuBackend(Backend):
    """Bit-level emulation of the NPU kernels on the host CPU."""

    name = "emu"

    def __init__(self):
        self._weights: dict = {}                 # id(array) -> (array, its bf16 copy); mel constants
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.threads(), thread_name_prefix="amanuensis-emu")

    def _each(self, fn, items) -> None:
        """fn(item) for every item, on the pool's threads (numpy releases the GIL in the large ops)."""
        for future in [self._pool.submit(fn, item) for item in items]:
            future.result()

    def describe(self) -> str:
        unit = "native kernels" if native.LIBRARY else f"numpy (native kernels {native.UNAVAILABLE})"
        return ("emu (NPU kernel numerics: bf16 in/out, fp32 accumulate, emulated on the CPU; "
                f"matrix unit, attention, GELU and layernorm in {unit})")

    def _bf16_weight(self, w: np.ndarray) -> np.ndarray:
        """Weights are stored bf16 on the device: round once and keep."""
        with self._lock:
            hit = self._weights.get(id(w))
            if hit is None or hit[0] is not w:
                hit = (w, C.bf16(w))
                self._weights[id(w)] = hit
            return hit[1]

    def linear(self, x, w, b, gelu=False, residual=None):
        xb, wb, bb = bf16_unit(x), self._bf16_weight(w), self._bf16_weight(b)
        rb = bf16_unit(residual) if residual is not None else None
        out = np.empty((x.shape[0], w.shape[1]), np.float32)                 # (T, N)

        def block(rows):
            epilogue_unit(matrix_unit(xb[rows], wb), bb, gelu, None if rb is None else rb[rows], out[rows])

        self._each(block, [slice(start, start + ROW_BLOCK) for start in range(0, x.shape[0], ROW_BLOCK)])
        return out

    def conv1d_k3(self, x, w, b, residual=None, stride=1, gelu=True):
        return self.linear(im2col_k3(bf16_unit(x), stride), w, b, gelu=gelu, residual=residual)

    def layernorm(self, x, gamma, beta, eps=1e-5):
        gamma, beta = self._bf16_weight(gamma), self._bf16_weight(beta)
        if native.LIBRARY is not None and x.shape[-1] % C.LANES == 0:
            return native.emu_layernorm(_rows(x), gamma, beta, eps)
        xb = C.bf16(x)
        inv_n = np.float32(1.0) / np.float32(x.shape[-1])
        mean = C.flush(C.lane_sum(xb) * inv_n)[:, None]
        d = C.flush(xb - mean)
        var = C.flush(C.lane_sum(C.flush(d * d)) * inv_n)
        rstd = C.rsqrt(C.flush(var + np.float32(eps)))[:, None]
        return C.bf16(C.flush(C.flush(C.flush(d * rstd) * gamma) + beta))

    def attention(self, qkv, n_head):
        t, three_d = qkv.shape
        d_model = three_d // 3
        d = d_model // n_head
        tiles = -(-t // C.TILE)
        padded = tiles * C.TILE                                              # 1500 -> 1536
        x = np.zeros((padded, three_d), np.float32)                          # (padded, 3·d_model): Q, K, V
        x[:t] = bf16_unit(qkv)
        q = bf16_unit(x[:, :d_model] * np.float32(1.0 / math.sqrt(d)))      # 1/8: exact for d = 64
        if native.LIBRARY is not None and d % 16 == 0 and t > 0:
            return self._attention_native(q, x, t, n_head)[:t]
        # (H, tiles, 64, d): Q, K, V per head and 64-row tile
        q = q.reshape(tiles, C.TILE, n_head, d).transpose(2, 0, 1, 3)
        k, v = x[:, d_model:].reshape(tiles, C.TILE, 2, n_head, d).transpose(2, 3, 0, 1, 4)
        key_valid = np.arange(padded).reshape(tiles, C.TILE) < t
        out = np.empty((n_head, tiles, C.TILE, d), np.float32)

        def heads(h):
            out[h] = _attention_tiles(q[h], k[h], v[h], key_valid)

        self._each(heads, [slice(h, h + 1) for h in range(n_head)])
        return np.ascontiguousarray(out.transpose(1, 2, 0, 3).reshape(padded, d_model)[:t])

    def _attention_native(self, q: np.ndarray, x: np.ndarray, t: int, n_head: int) -> np.ndarray:
        """_attention_tiles of every head on the native kernels (the same bits: tests/test_native.py)."""
        padded, d_model = q.shape
        d = d_model // n_head
        out = np.empty((padded, d_model), np.float32)

        def head(h):
            cols = slice(h * d, (h + 1) * d)
            k, v = x[:, d_model + h * d:d_model + (h + 1) * d], x[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d]
            native.emu_attention_head(q[:, cols], k, v, t, out[:, cols])

        self._each(head, range(n_head))
        return out

    def log_mel(self, samples, n_mels):
        """The mel kernels' log-mel of one window, (3000, n_mels) bf16 values (CONTRACT.md)."""
        dft, filters = self._mel_constants(n_mels)
        window = frames(samples, np.float32)                                  # (3000, 400)
        log_mel = np.empty((len(window), n_mels), np.float32)

        def block(rows):
            log_mel[rows] = C.mel_log(C.mel_power(window[rows], dft, float_unit), filters, float_unit)

        self._each(block, [slice(start, start + ROW_BLOCK) for start in range(0, len(window), ROW_BLOCK)])
        return C.mel_finish(log_mel, log_mel.max())

    def _mel_constants(self, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
        """(the windowed DFT matrix, the padded mel filters), made once per n_mels."""
        key = ("mel", n_mels)
        with self._lock:
            if key not in self._weights:
                self._weights[key] = (C.dft_matrix(hann_window()), C.filters_padded(mel_filters(n_mels)))
            return self._weights[key]


def matrix_unit(a: np.ndarray, b: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """contract.matmul(a, b, acc) of fp32 a (M, K) and b (K, N), bf16 values as the emulator's are, and
    acc broadcastable to (M, N): on the native kernels where they are built (bit for bit the same:
    tests/test_native.py), else contract.matmul itself."""
    if native.LIBRARY is None:
        return C.matmul(a, b, acc)
    shape = (a.shape[0], b.shape[1])
    c = np.zeros(shape, np.float32) if acc is None else np.array(np.broadcast_to(acc, shape), np.float32, order="C")
    native.mmul_steps(_rows(a), _rows(b), c)
    return C.flush(c)


def bf16_unit(x: np.ndarray) -> np.ndarray:
    """contract.bf16(x): on the native kernels where they are built (bit for bit the same:
    tests/test_native.py), else contract.bf16 itself."""
    return C.bf16(x) if native.LIBRARY is None else native.emu_bf16(x)


def _epilogue(y: np.ndarray, b: np.ndarray, gelu: bool, r: np.ndarray | None) -> np.ndarray:
    """The matmul kernel's epilogue after the matrix unit: bf16(act(flush(y + b)) (+ r, flushed)), act =
    contract.gelu when gelu is set; r (a residual, bf16 values) may be None."""
    y = C.flush(y + b)
    if gelu:
        y = C.gelu(y)
    if r is not None:
        y = C.flush(y + r)
    return C.bf16(y)


def epilogue_unit(y: np.ndarray, b: np.ndarray, gelu: bool, r: np.ndarray | None, out: np.ndarray) -> None:
    """out ← _epilogue(y, b, gelu, r): on the native kernels where they are built (bit for bit the same:
    tests/test_native.py), else in numpy."""
    if native.LIBRARY is None:
        out[...] = _epilogue(y, b, gelu, r)
    else:
        native.emu_epilogue(y, b, GELU_TABLE if gelu else None, r, out)


def float_unit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """contract.matmul_f32(a, b), fp32 products on the bf16 matrix unit: on the native kernels where they
    are built (bit for bit the same: tests/test_native.py), else contract.matmul_f32 itself."""
    if native.LIBRARY is None:
        return C.matmul_f32(a, b)
    return C.flush(native.emu_matmul_f32(_rows(a), _rows(b)))


def _rows(x: np.ndarray) -> np.ndarray:
    """x as the native kernels read a matrix: fp32, each row contiguous (a transposed column is not)."""
    if x.dtype == np.float32 and x.strides[-1] == 4:
        return x
    return np.array(x, np.float32, order="C")


def _per_head(a: np.ndarray, b: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """contract.matmul(a, b, acc) of a (H, tiles, M, K), b (H, 1, K, N) and acc (H, tiles, M, N): each
    head's tiles as one product of (tiles·M, K) rows."""
    h, tiles, m, k = a.shape
    n = b.shape[-1]
    assert b.shape == (h, 1, k, n), f"one B per head, not {b.shape}"
    out = np.empty((h, tiles, m, n), np.float32)
    for i in range(h):
        own = None if acc is None else acc[i].reshape(tiles * m, n)
        out[i] = matrix_unit(a[i].reshape(tiles * m, k), b[i, 0], own).reshape(tiles, m, n)
    return out


def _attention_tiles(q: np.ndarray, k: np.ndarray, v: np.ndarray, key_valid: np.ndarray) -> np.ndarray:
    """The attention kernel on every query tile of some heads at once: q, k, v (H, tiles, 64, d) bf16
    values, q pre-scaled; for each key tile in order, the running max, sum and rescale; (H, tiles, 64, d)."""
    shape = q.shape[:-1]
    m = np.full(shape, -np.inf, np.float32)
    row_sum = np.zeros(shape, np.float32)
    o = np.zeros(q.shape, np.float32)
    for j in range(k.shape[1]):                                         # key tiles, in order
        s = _per_head(q, k[:, j:j + 1].transpose(0, 1, 3, 2))           # (H, tiles, 64, 64)
        p, m, row_sum, scaled = _softmax_step(s, key_valid[j], m, row_sum, o)
        o = _per_head(p, v[:, j:j + 1], acc=scaled)
    return _normalise(o, row_sum)


def _softmax_step(s, valid, m, row_sum, o):
    """One key tile's step for each query row: scores s (..., 64), valid (64,) its keys not masked, the
    running max m (...), sum ℓ (...) and output O (..., d). m_new = max(m, max S), α = exp(m − m_new),
    P = exp(S − m_new), ℓ ← flush(ℓ·α + lane_sum(P)); returns (bf16(P), m_new, ℓ, flush(O·α))."""
    s = np.where(valid, s, np.float32(-np.inf))
    m_new = np.maximum(m, s.max(axis=-1))
    alpha = C.exp(m - m_new)                                            # 0 on the first tile (m = -inf)
    p = C.exp(s - m_new[..., None])
    row_sum = C.flush(row_sum * alpha + C.lane_sum(p))
    return C.bf16(p), m_new, row_sum, C.flush(o * alpha[..., None])


def _normalise(o, row_sum):
    """The kernel's output: bf16(flush(O · recip(ℓ)))."""
    return C.bf16(C.flush(o * C.recip(row_sum)[..., None]))
