"""The numeric contract of the NPU kernels, written once.

Every function here is the exact arithmetic an AIE kernel performs, in numpy:
the `emu` backend is built from them and the kernel sources in kernels/aie/
implement them (their host-compiled scalar paths are tested against these).
See kernels/CONTRACT.md for the prose version.

- Tiles are 64 x 64. Weights and activations are bf16 (round to nearest even);
  every kernel reads bf16, computes in fp32 and writes bf16.
- Matmul: products of bf16 values are exact in fp32; each 64-wide K chunk is
  summed and rounded once to fp32, and the chunks accumulate in fp32 in K order.
- Reductions (softmax sums, layernorm statistics): 16 lanes, lane i takes the
  elements i, i+16, ... in order (fp32), then the lanes are added pairwise.
- exp: range reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial,
  fp32 (max error 1.3 ulp, measured). GELU: the exact-erf form with the fp32
  rational erf below (max abs error 3.4e-7): no tanh on the cores, and a
  division costs the same as a multiply there. (The cpu backend evaluates
  erf in a tanh form instead, which is cheaper in numpy.)
- No fused multiply-add: every multiply and add rounds to fp32.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.frontend import N_FFT

TILE = 64
LANES = 16

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)                      # 16 significant bits: k * LN2_HI is exact
_LN2_LO = np.float32(math.log(2.0) - 0.693145751953125)
_EXP_MAX, _EXP_MIN = np.float32(88.7), np.float32(-103.0)   # above overflows, below is 0
# e^r on [-ln2/2, ln2/2], fitted for this project (relative error 1.9e-9 before fp32 rounding).
_EXP_POLY = tuple(np.float32(c) for c in (
    1.0000000005542613, 1.0000000363227308, 0.49999992078339245, 0.1666642017141224,
    0.04166822590235366, 0.008374815699891782, 0.0013836827356279889))
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


def bf16(x) -> np.ndarray:
    """Round to bf16 (nearest even) and return as float32 (so numpy arithmetic stays fp32)."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def exp(x: np.ndarray) -> np.ndarray:
    """fp32 e^x as the core computes it: e^x = 2^k · p(r), k = rint(x·log2 e), r = x − k·ln2."""
    x = np.asarray(x, np.float32)
    xc = np.clip(x, _EXP_MIN, _EXP_MAX)
    k = np.rint(xc * _LOG2E)
    r = (xc - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_POLY[-1])
    for c in _EXP_POLY[-2::-1]:
        p = p * r + c
    out = np.ldexp(p, k.astype(np.int32)).astype(np.float32)
    return np.where(x < _EXP_MIN, np.float32(0.0), out)


def _horner(z: np.ndarray, coeffs: tuple) -> np.ndarray:
    out = np.full_like(z, coeffs[-1])
    for c in coeffs[-2::-1]:
        out = out * z + c
    return out


def erf(x: np.ndarray) -> np.ndarray:
    """fp32 erf(x) = x · P(x²) / Q(x²) with x clamped to [-4, 4] (max abs error 3.4e-7)."""
    x = np.clip(np.asarray(x, np.float32), -_ERF_CLAMP, _ERF_CLAMP)
    z = x * x
    return x * _horner(z, _ERF_P) / _horner(z, _ERF_Q)


def gelu(x: np.ndarray) -> np.ndarray:
    """fp32 GELU(x) = ½ · x · (1 + erf(x/√2)) with the rational erf above, in this order."""
    x = np.asarray(x, np.float32)
    e = erf(x * _INV_SQRT2)
    return x * ((e + np.float32(1.0)) * np.float32(0.5))


def lane_sum(x: np.ndarray) -> np.ndarray:
    """fp32 sum over the last axis in the lane order above (zero-padded to a multiple of 16)."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    pad = (-n) % LANES
    if pad:
        x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), np.float32)], axis=-1)
    lanes = x.reshape(x.shape[:-1] + (-1, LANES))
    acc = np.cumsum(lanes, axis=-2, dtype=np.float32)[..., -1, :]       # sequential per lane, fp32
    while acc.shape[-1] > 1:
        acc = acc[..., 0::2] + acc[..., 1::2]                              # pairwise tree
    return acc[..., 0]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 A·B of bf16-valued A (..., M, K) and B (..., K, N): exact 64-wide chunks, fp32 across chunks."""
    k = a.shape[-1]
    pad = (-k) % TILE
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
        b = np.concatenate([b, np.zeros(b.shape[:-2] + (pad, b.shape[-1]), b.dtype)], axis=-2)
    chunks = a.shape[-1] // TILE
    acc = None
    for c in range(chunks):
        sl = slice(c * TILE, (c + 1) * TILE)
        part = np.matmul(a[..., sl].astype(np.float64), b[..., sl, :].astype(np.float64)).astype(np.float32)
        acc = part if acc is None else acc + part
    return acc


# ---- the mel front end (fp32 throughout: bf16 audio would cost the quiet bins their precision) ----

_LOG10_2 = np.float32(0.30102999566398120)
_LOG10_E = np.float32(0.43429448190325176)
_SQRT_HALF = np.float32(0.7071067811865476)


def log10(x: np.ndarray) -> np.ndarray:
    """fp32 log10 of positive x: x = m·2^e with m in [√½, √2), ln m = 2·atanh(t), t = (m−1)/(m+1),
    atanh by its series to t⁹ (|t| ≤ 0.172, truncation < 1e-9)."""
    m, e = np.frexp(np.asarray(x, np.float32))                    # m in [0.5, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * np.float32(2.0), m).astype(np.float32)
    e = np.where(low, e - 1, e).astype(np.float32)
    t = (m - np.float32(1.0)) / (m + np.float32(1.0))
    s = t * t
    p = np.float32(1.0 / 9.0)
    for c in (1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0):
        p = p * s + np.float32(c)
    ln_m = (np.float32(2.0) * t) * p
    return ln_m * _LOG10_E + e * _LOG10_2


def dft_matrix() -> np.ndarray:
    """(N_FFT, 2·(N_FFT/2+1)) fp32: [cos | −sin] of the real DFT, computed in float64, rounded once."""
    n = np.arange(N_FFT)[:, None]
    k = np.arange(N_FFT // 2 + 1)[None, :]
    angle = 2 * np.pi * n * k / N_FFT
    return np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)


def mel_frames(frames: np.ndarray, hann: np.ndarray, dft: np.ndarray, filters_t: np.ndarray) -> np.ndarray:
    """log10 mel energies of frames (F, N_FFT): windowed, DFT and mel filters as chunked fp32
    matmuls, power re² + im², floor 1e-10. filters_t: (N_FFT/2+1, n_mels) fp32."""
    windowed = frames.astype(np.float32) * hann
    spec = matmul(windowed, dft)                                   # (F, 2·bins)
    bins = dft.shape[1] // 2
    power = spec[:, :bins] * spec[:, :bins] + spec[:, bins:] * spec[:, bins:]
    return log10(np.maximum(matmul(power, filters_t), np.float32(1e-10)))


def mel_finish(log_mel: np.ndarray, maximum: np.float32) -> np.ndarray:
    """Whisper's dynamic range and scaling: bf16((max(x, max − 8) + 4) / 4)."""
    y = np.maximum(log_mel, np.float32(maximum) - np.float32(8.0))
    return bf16((y + np.float32(4.0)) / np.float32(4.0))
