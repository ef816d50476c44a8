"""The `cpu` backend: fp32 numpy kernels, row-blocked and spread over all cores.

Each kernel splits its output rows into blocks and hands them to a thread pool
(numpy and BLAS release the GIL). BLAS is pinned to one thread for the length
of a graph run (`session`), so the blocks do not fight BLAS's own threads, and
each block's epilogue (bias, GELU, residual) runs in cache-sized chunks right
after its matmul, while the rows are still warm.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from kernels.interface import Backend

# erf(x) ≈ x · P(x²) / Q(x²) on [-4, 4] (|erf| rounds to 1 in fp32 beyond), coefficients
# fitted by us (weighted least squares on Chebyshev nodes). The fit's own error is 2.5e-8;
# evaluated in fp32 the max abs error is 3.4e-7 (a few ulps of 1), measured on a 1.2M-point grid.
_ERF_P = tuple(np.float32(c) for c in (
    1.128378947110758, 0.19797619977799844, 0.053686567157058676,
    0.004074493892425168, 0.00028910305714117436, 1.955181944738132e-06))
_ERF_Q = tuple(np.float32(c) for c in (
    1.0, 0.5087826770976088, 0.11718184066732072,
    0.015587526004807313, 0.0012324912167420044, 3.733127555938595e-05))
_ERF_CLAMP = np.float32(4.0)
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
ATTENTION_QUERY_ROWS = 256
EPILOGUE_CHUNK = 1 << 18  # elements per epilogue chunk (1 MiB): larger chunks amortise numpy call overhead, measured best


def _horner(z: np.ndarray, coeffs: tuple, out: np.ndarray) -> np.ndarray:
    out.fill(coeffs[-1])
    for c in coeffs[-2::-1]:
        out *= z
        out += c
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """fp32 erf by the rational approximation above (max abs error 3.4e-7)."""
    x = np.clip(np.asarray(x, np.float32), -_ERF_CLAMP, _ERF_CLAMP)
    z = x * x
    p = _horner(z, _ERF_P, np.empty_like(z))
    q = _horner(z, _ERF_Q, np.empty_like(z))
    p *= x
    p /= q
    return p


def gelu_inplace(y: np.ndarray) -> None:
    """y ← ½ · y · (1 + erf(y/√2)), chunk by chunk so every pass stays in cache."""
    flat = y.reshape(-1)
    for start in range(0, flat.size, EPILOGUE_CHUNK):
        chunk = flat[start:start + EPILOGUE_CHUNK]
        e = erf(chunk * _INV_SQRT2)
        e += 1.0
        e *= 0.5
        chunk *= e


def _blocks(n: int, workers: int, min_rows: int = 32) -> list[slice]:
    """Split n rows into about 2 blocks per worker (balance) but not below min_rows."""
    count = max(1, min(workers * 2, n // min_rows))
    edges = np.linspace(0, n, count + 1).astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class CpuBackend(Backend):
    """fp32 numpy on the host CPU."""

    name = "cpu"

    def __init__(self, threads: int | None = None):
        self.threads = threads or int(os.environ.get("AMANUENSIS_THREADS", 0)) or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="amanuensis-cpu")
        self._blas_lock = threading.Lock()
        self._blas_users = 0
        self._blas_limit = None

    def describe(self) -> str:
        return f"cpu (fp32 numpy, {self.threads} threads)"

    @contextmanager
    def session(self):
        """Pin BLAS to one thread while any graph run is active (re-entrant across threads)."""
        from threadpoolctl import threadpool_limits

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
        for future in [self._pool.submit(fn, t) for t in tasks]:
            future.result()

    def linear(self, x, w, b, gelu=False, residual=None):
        out = np.empty((x.shape[0], w.shape[1]), np.float32)          # (T, N)

        def block(rows):
            y = out[rows]
            np.matmul(x[rows], w, out=y)
            y += b
            if gelu:
                gelu_inplace(y)
            if residual is not None:
                y += residual[rows]

        self._run(block, _blocks(x.shape[0], self.threads))
        return out

    def conv1d_k3(self, x, w, b, stride=1, gelu=True):
        t, c = x.shape
        xp = np.zeros((t + 2, c), np.float32)                           # zero padding of 1 each side
        xp[1:-1] = x
        t_out = (t - 1) // stride + 1
        # im2col without a copy: patch row i is the 3 consecutive rows xp[s·i : s·i + 3].
        patches = np.lib.stride_tricks.as_strided(xp, (t_out, 3 * c), (stride * c * 4, 4), writeable=False)
        return self.linear(_Contiguous(patches), w, b, gelu=gelu)

    def layernorm(self, x, gamma, beta, eps=1e-5):
        out = np.empty_like(x)

        def block(rows):
            y = out[rows]
            np.subtract(x[rows], x[rows].mean(-1, keepdims=True), out=y)
            inv = 1.0 / np.sqrt(np.mean(y * y, -1, keepdims=True) + np.float32(eps))
            y *= inv
            y *= gamma
            y += beta

        self._run(block, _blocks(x.shape[0], self.threads))
        return out

    def attention(self, qkv, n_head):
        t = qkv.shape[0]
        d_model = qkv.shape[1] // 3
        d = d_model // n_head
        scale = np.float32(1.0 / math.sqrt(d))
        out = np.empty((t, d_model), np.float32)                        # (T, D)
        heads = [None] * n_head

        def prepare(h):
            # Contiguous Kᵀ and V per head: BLAS runs ~25% faster than on strided views.
            k = qkv[:, d_model + h * d:d_model + (h + 1) * d]
            v = qkv[:, 2 * d_model + h * d:2 * d_model + (h + 1) * d]
            heads[h] = (np.ascontiguousarray(k.T), np.ascontiguousarray(v))   # (d, T), (T, d)

        def block(task):
            h, rows = task
            k_t, v = heads[h]
            q = qkv[rows, h * d:(h + 1) * d] * scale                   # (Bq, d)
            s = q @ k_t                                                 # (Bq, T): the whole sequence
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            denom = s.sum(-1, keepdims=True)
            o = s @ v                                                   # (Bq, d)
            o /= denom
            out[rows, h * d:(h + 1) * d] = o

        self._run(prepare, range(n_head))
        # 256 query rows per task: a (256, T) score block (1.5 MiB at T=1500) is about L2-sized;
        # measured fastest of 64..384 rows here (skinny GEMMs lose more to small blocks than to cache).
        rows = ATTENTION_QUERY_ROWS
        self._run(block, [(h, slice(r, min(r + rows, t))) for h in range(n_head) for r in range(0, t, rows)])
        return out

    def add(self, x, y):
        out = np.empty_like(x)

        def block(rows):
            np.add(x[rows], y[rows], out=out[rows])

        self._run(block, _blocks(x.shape[0], self.threads))
        return out


class _Contiguous:
    """Row-sliceable wrapper that makes each requested row block contiguous (for BLAS)."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape

    def __getitem__(self, rows):
        return np.ascontiguousarray(self.array[rows])
