"""The `emu` backend: the NPU kernels' exact numerics (kernels/contract.py) in vectorised numpy.

Slow next to `cpu` (float64 chunk sums, bf16 rounding at every kernel boundary), but
it computes what the AIE kernels compute: bf16 in and out, fp32 accumulation in
64-wide chunks, the contract's exp and GELU, and attention as the attention kernel
runs it — for each 64-query tile a running max and sum over the 64-key tiles of the
whole (padded) sequence — vectorised over heads and query tiles.
"""
from __future__ import annotations

import math
import threading

import numpy as np

from kernels import contract as C
from kernels.frontend import frames, hann_window, mel_filters
from kernels.interface import Backend
from kernels.reference import im2col_k3

ROW_BLOCK = 256     # rows per block of the chunked matmul (bounds its float64 temporaries)


class EmuBackend(Backend):
    """Bit-level emulation of the NPU kernels on the host CPU."""

    name = "emu"

    def __init__(self):
        self._weights: dict[int, tuple] = {}     # id(array) -> (array, its bf16 copy)
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "emu (NPU kernel numerics: bf16 in/out, fp32 accumulate, emulated on the CPU)"

    def _bf16_weight(self, w: np.ndarray) -> np.ndarray:
        """Weights are stored bf16 on the device: round once and keep."""
        with self._lock:
            hit = self._weights.get(id(w))
            if hit is None or hit[0] is not w:
                hit = (w, C.bf16(w))
                self._weights[id(w)] = hit
            return hit[1]

    def linear(self, x, w, b, gelu=False, residual=None):
        xb, wb, bb = C.bf16(x), self._bf16_weight(w), self._bf16_weight(b)
        rb = C.bf16(residual) if residual is not None else None
        out = np.empty((x.shape[0], w.shape[1]), np.float32)                 # (T, N)
        for start in range(0, x.shape[0], ROW_BLOCK):
            rows = slice(start, start + ROW_BLOCK)
            y = C.matmul(xb[rows], wb) + bb
            if gelu:
                y = C.gelu(y)
            if rb is not None:
                y = y + rb[rows]
            out[rows] = C.bf16(y)
        return out

    def conv1d_k3(self, x, w, b, stride=1, gelu=True):
        return self.linear(im2col_k3(C.bf16(x), stride), w, b, gelu=gelu)

    def layernorm(self, x, gamma, beta, eps=1e-5):
        xb = C.bf16(x)
        n = np.float32(x.shape[-1])
        mean = C.lane_sum(xb) / n
        d = xb - mean[:, None]
        var = C.lane_sum(d * d) / n
        rstd = np.float32(1.0) / np.sqrt(var + np.float32(eps))
        return C.bf16((d * rstd[:, None]) * self._bf16_weight(gamma) + self._bf16_weight(beta))

    def attention(self, qkv, n_head):
        t, three_d = qkv.shape
        d_model = three_d // 3
        d = d_model // n_head
        tiles = -(-t // C.TILE)
        padded = tiles * C.TILE                                              # 1500 -> 1536
        x = np.zeros((padded, three_d), np.float32)
        x[:t] = C.bf16(qkv)
        # (3, H, tiles, 64, d): Q, K, V per head and 64-row tile
        q, k, v = x.reshape(tiles, C.TILE, 3, n_head, d).transpose(2, 3, 0, 1, 4)
        q = C.bf16(q * np.float32(1.0 / math.sqrt(d)))                       # 1/8: exact for d = 64
        m = np.full((n_head, tiles, C.TILE), -np.inf, np.float32)
        row_sum = np.zeros((n_head, tiles, C.TILE), np.float32)
        o = np.zeros((n_head, tiles, C.TILE, d), np.float32)
        key_valid = np.arange(padded).reshape(tiles, C.TILE) < t
        for j in range(tiles):                                              # key tiles, in order
            s = C.matmul(q, k[:, j:j + 1].transpose(0, 1, 3, 2))            # (H, tiles, 64, 64)
            s = np.where(key_valid[j], s, np.float32(-np.inf))
            m_new = np.maximum(m, s.max(axis=-1))
            alpha = np.where(np.isneginf(m_new), np.float32(0.0), C.exp(m - m_new))
            p = np.where(np.isneginf(m_new)[..., None], np.float32(0.0), C.exp(s - m_new[..., None]))
            row_sum = row_sum * alpha + C.lane_sum(p)
            o = o * alpha[..., None] + C.matmul(C.bf16(p), v[:, j:j + 1])
            m = m_new
        out = C.bf16(o / row_sum[..., None])                                      # (H, tiles, 64, d)
        return np.ascontiguousarray(out.transpose(1, 2, 0, 3).reshape(padded, d_model)[:t])

    def add(self, x, y):
        return C.bf16(C.bf16(x) + C.bf16(y))


def log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """The mel front-end kernel's log-mel of one window, (n_mels, 3000) bf16 values (CONTRACT.md)."""
    logm = C.mel_frames(frames(samples, np.float32), hann_window().astype(np.float32), C.dft_matrix(),
                        np.ascontiguousarray(mel_filters(n_mels).T.astype(np.float32)))
    return np.ascontiguousarray(C.mel_finish(logm, logm.max()).T)
