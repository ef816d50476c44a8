"""Reference kernels: the specification every backend is checked against.

Plain numpy, computed in float64 and returned as float32, one formula each.
Shapes: activations are time-major (T, C); weights are in the kernel layout of
weights_tools/layout.py (a linear layer is x @ W with W of shape (K, N)).
"""
from __future__ import annotations

import math

import numpy as np

from kernels.frontend import log_mel_spectrogram

_erf = np.frompyfunc(math.erf, 1, 1)


def log_mel(samples: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's log-mel of one 30 s window, time-major (3000, n_mels): frames of 400 samples every
    160 under a periodic Hann window, |rfft|², Slaney mel filters, log10 (floor 1e-10), clamped to
    max − 8, (x + 4) / 4; float64 (kernels.frontend.log_mel_spectrogram)."""
    return np.ascontiguousarray(log_mel_spectrogram(samples, n_mels).T)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU(x) = x · Φ(x) = ½ · x · (1 + erf(x / √2)), Whisper's exact (erf) form."""
    x = np.asarray(x, np.float64)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(np.float32)


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """y = (x − mean(x)) / √(var(x) + eps) · gamma + beta, statistics over the last axis (biased var)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)


def linear(x, w, b, gelu: bool = False, residual=None) -> np.ndarray:
    """y = act(x · W + b) + residual, act = GELU or identity; x (T, K), W (K, N), b (N,)."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + b
    if gelu:
        y = globals()["gelu"](y).astype(np.float64)
    if residual is not None:
        y = y + residual
    return y.astype(np.float32)


def im2col_k3(x: np.ndarray, stride: int) -> np.ndarray:
    """Patches of a k=3, padding-1 conv: row t = concat(x[s·t − 1], x[s·t], x[s·t + 1]), zeros outside.

    x (T, C) -> (T_out, 3C) with T_out = (T − 1) // s + 1.
    """
    t, c = x.shape
    xp = np.concatenate([np.zeros((1, c), x.dtype), x, np.zeros((1, c), x.dtype)])
    t_out = (t - 1) // stride + 1
    return np.stack([xp[stride * i:stride * i + 3].reshape(-1) for i in range(t_out)])


def conv1d_k3(x, w, b, residual=None, stride: int = 1, gelu: bool = True) -> np.ndarray:
    """y[t] = act(b + Σ_k Σ_c x[s·t + k − 1, c] · W[k·C + c]) + residual[t]: Whisper's conv (k=3, pad 1) as
    im2col + matmul (the residual: the positional embedding after conv2)."""
    return linear(im2col_k3(np.asarray(x, np.float64), stride), w, b, gelu=gelu, residual=residual)


def attention(qkv: np.ndarray, n_head: int) -> np.ndarray:
    """Per head h over the whole sequence: softmax(Q_h · K_hᵀ / √d) · V_h, heads concatenated.

    qkv (T, 3D) with columns [Q | K | V], each split into n_head heads of d = D / n_head.
    """
    qkv = np.asarray(qkv, np.float64)
    t, three_d = qkv.shape
    d_model = three_d // 3
    d = d_model // n_head
    q, k, v = (qkv[:, i * d_model:(i + 1) * d_model].reshape(t, n_head, d).transpose(1, 0, 2) for i in range(3))
    s = q @ k.transpose(0, 2, 1) / math.sqrt(d)           # (H, T, T)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(1, 0, 2).reshape(t, d_model).astype(np.float32)
