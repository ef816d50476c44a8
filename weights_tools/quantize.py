"""Symmetric per-channel int8 weights for the decoder's int8 graph.

The decoder is memory bound: a greedy step multiplies one row by every weight, so
its time is the time to read the weights. int8 reads a quarter of fp32's bytes.
"""
from __future__ import annotations

import numpy as np

INT8_MAX = 127


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a linear weight W (out, in) for y = x · Wᵀ.

        scale[n] = max_k |W[n, k]| / 127          (1 where a row is all zeros)
        q[k, n]  = round(W[n, k] / scale[n])      in [-127, 127]

    Returns q transposed to (in, out) int8, as ONNX MatMulInteger wants its B, and scale
    (out,) fp32, so that W ≈ (q · diag(scale))ᵀ and each element is off by at most scale / 2.
    """
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8 wants a 2-D weight (out, in), got shape {w.shape}")
    amax = np.abs(w).max(axis=1)                                       # (out,)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return np.ascontiguousarray(q.T), scale                            # (in, out), (out,)


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The fp32 weight (out, in) that quantize_int8's (q, scale) stands for."""
    return (q.astype(np.float32) * scale[None, :]).T
