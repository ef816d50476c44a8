"""Block-wise 8-bit weights for the decoder's int8 graph.

The decoder is memory bound: a greedy step multiplies one row by every weight, so its time is the
time to read the weights. 8 bits read a quarter of fp32's bytes. One scale per block of BLOCK
inputs (not per row) keeps an outlier weight from coarsening its whole row.
"""
from __future__ import annotations

import numpy as np

INT8_MAX = 127
ZERO_POINT = 128          # ONNX Runtime's MatMulNBits stores 8-bit weights unsigned around 2^(bits-1)
BLOCK = 128               # inputs per scale; divides every Whisper width (384 ... 1280) and 4·width


def quantize_blocks(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a linear weight W (out, in) for y = x · Wᵀ, in blocks of `block` inputs (W padded
    with zero columns to whole blocks, as MatMulNBits pads K):

        scale[n, b]   = max_{j<block} |W[n, b·block + j]| / 127          (1 where a block is all zeros)
        q[n, b, j]    = round(W[n, b·block + j] / scale[n, b]) + 128      in [1, 255]

    so that W[n, b·block + j] ≈ (q[n, b, j] - 128) · scale[n, b], off by at most scale / 2.
    Returns q (out, ⌈in / block⌉, block) uint8 and scale (out, ⌈in / block⌉) fp32: the layout of ONNX
    Runtime's MatMulNBits (bits 8, no zero-point input) for B and its scales."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_blocks wants a 2-D weight (out, in), got shape {w.shape}")
    padded = np.pad(w, ((0, 0), (0, -w.shape[1] % block)))
    blocks = padded.reshape(w.shape[0], -1, block)                            # (out, ⌈in / block⌉, block)
    amax = np.abs(blocks).max(axis=2)                                         # (out, in / block)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(blocks / scale[..., None]), -INT8_MAX, INT8_MAX) + ZERO_POINT
    return q.astype(np.uint8), scale


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, width: int) -> np.ndarray:
    """The fp32 weight (out, width) that quantize_blocks's (q, scale) stands for."""
    w = (q.astype(np.float32) - ZERO_POINT) * scale[..., None]
    return w.reshape(q.shape[0], -1)[:, :width]
