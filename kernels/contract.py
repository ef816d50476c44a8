"""The numeric contract of the NPU kernels, written once: what the vectorised kernels of kernels/aie
compute, operation for operation, in numpy. The `emu` backend is built from these functions, and
the kernels, built for the host through kernels/aie/common/aie_host.h, equal them bit for bit
(tests/test_aie_host.py). kernels/CONTRACT.md is the prose version.

- Tiles are 64 x 64. Weights and activations are bf16 (round to nearest even); kernels read bf16,
  compute in fp32 and write bf16. No subnormals: a result below the smallest normal float is zero.
- Matmul (the mmul<4,8,4> unit): bf16 x bf16 products are exact; for every output, each 8-wide K
  step adds the exact sum of its 8 products to the fp32 accumulator with one rounding, in K order.
- fp32 multiplies, adds and subtracts round to nearest even, one operation at a time (no fused
  multiply-add); reductions over 16 lanes: the vectors of a row added in order, then the halving
  tree x[i] + x[i + 8], + 4, + 2, + 1 (aie_api's reduce_add on aie2).
- Division, square root and exp are not operations of the vector unit: 1/q and 1/sqrt(x) are Newton
  iterations from a bit-pattern start, GELU a piecewise polynomial picked per lane (no erf);
  e^x is 2^k p(r) with k rounded by adding 1.5 * 2^23 and 2^k added to the exponent bits, computed
  from bf16 products (exact, each added into fp32 with one rounding), not emulated fp32 multiplies.
"""
from __future__ import annotations

import numpy as np

from kernels import exact_sum
from kernels.frontend import N_FFT

TILE = 64
LANES = 16
STEP = 8                                     # K per mmul instruction
_F = np.float32
_MIN_NORMAL = np.finfo(np.float32).tiny


def flush(x: np.ndarray) -> np.ndarray:
    """Zero for results below the smallest normal float (the hardware has no subnormals)."""
    x = np.asarray(x, _F)
    small = np.abs(x) < _MIN_NORMAL
    return np.where(small, np.copysign(_F(0), x), x) if small.any() else x


def bf16(x) -> np.ndarray:
    """Round to bf16 (nearest even) after the flush and return as float32, so numpy arithmetic stays
    fp32: on the bits, b + 0x7FFF + (bit 16 of b), its low 16 bits cleared; a NaN becomes the quiet
    NaN of its sign. (ml_dtypes' bfloat16 cast rounds the same: a test; it costs 0.5 s to import.)"""
    x = flush(x)
    b = np.ascontiguousarray(x, _F).reshape(-1).view(np.uint32)             # 1-D: no scalar arithmetic
    rounded = (b + np.uint32(0x7FFF) + ((b >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    nan = (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded = np.where(nan, (b & np.uint32(0x80000000)) | np.uint32(0x7FC00000), rounded)
    return rounded.view(_F).reshape(x.shape)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, _F).view(np.int32)


def _float(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits, np.int32).view(_F)


# ---- the matrix unit ---------------------------------------------------------------------------------

def matmul(a: np.ndarray, b: np.ndarray, acc: np.ndarray | None = None) -> np.ndarray:
    """fp32 acc + A·B of bf16-valued A (..., M, K) and B (..., K, N), as mmul<4,8,4> computes it: each
    8-wide K step adds its exact sum to the fp32 accumulator with one rounding (K is zero-padded).
    Here the step's sum is taken in float64, which is exact unless its terms span more than 2^53 of
    their least unit (products of activations near zero with large ones); then, if the sum also lies
    within float64's error of an fp32 rounding midpoint, the accumulator may round the other way than
    the kernel's (one fp32 step). The test on real speech finds no such element in tiny.en."""
    k = a.shape[-1]
    pad = (-k) % STEP
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
        b = np.concatenate([b, np.zeros(b.shape[:-2] + (pad, b.shape[-1]), b.dtype)], axis=-2)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-2] + (1,))[:-1] + (a.shape[-2], b.shape[-1])
    out = np.zeros(shape, _F) if acc is None else np.array(np.broadcast_to(acc, shape), _F)
    for s in range(0, a.shape[-1], STEP):
        s64 = np.matmul(a64[..., s:s + STEP], b64[..., s:s + STEP, :])
        s64 += out
        np.copyto(out, s64, casting="same_kind")                 # one rounding to fp32 (nearest even)
    return flush(out)


def _accumulate_exactly(out: np.ndarray, a64: np.ndarray, b64: np.ndarray) -> None:
    """out (fp32) ← fl32(out + Σₖ a64·b64), the exact sum rounded once, in place. The sum is taken in
    float64 (BLAS, any order); where that may round to the other side of an fp32 midpoint than the
    exact sum, the element is rounded from its terms exactly (kernels/exact_sum.py): the fp32 matmul's
    cancellation (the spectrum's quiet bins) makes that common. The kernel also
    flushes a subnormal partial sum to zero; here only the result is flushed (matmul): the two differ
    only where a partial sum is below 1.2e-38, which takes operands far below any activation's."""
    s = np.matmul(a64, b64)                                      # (..., M, N) float64
    s += out
    magnitude = np.matmul(np.abs(a64), np.abs(b64))              # Σ|products|
    near = np.nonzero(exact_sum.near_midpoint(s, magnitude, a64.shape[-1]))
    acc = out[near]
    np.copyto(out, s, casting="same_kind")                       # one rounding to fp32 (nearest even)
    if not acc.size:
        return
    # terms are multiples of the least product unit (bf16 x bf16) and of the accumulator's (fp32)
    unit_a = np.broadcast_to(exact_sum.quantum(a64, 8, axis=-1), out.shape[:-1])[near[:-1]]
    unit_b = np.broadcast_to(exact_sum.quantum(b64, 8, axis=-2), out.shape[:-2] + out.shape[-1:])
    unit = np.minimum(unit_a * unit_b[near[:-2] + near[-1:]], exact_sum.quantum(acc.astype(np.float64), 24))
    doubtful = ~exact_sum.exact_in_float64(magnitude[near] + np.abs(acc), unit)
    if doubtful.any():
        where = tuple(w[doubtful] for w in near)
        out[where] = exact_sum.round_sums(_terms(acc[doubtful], a64, b64, where, out.shape))


def _terms(acc: np.ndarray, a64: np.ndarray, b64: np.ndarray, where: tuple, shape: tuple) -> np.ndarray:
    """The accumulator and the K products (exact in float64) of the outputs `where` (of shape), (n, 1 + K)."""
    rows = np.broadcast_to(a64, shape[:-1] + a64.shape[-1:])[where[:-1]]                   # (n, K)
    b_t = np.swapaxes(np.broadcast_to(b64, shape[:-2] + b64.shape[-2:]), -1, -2)            # (..., N, K)
    return np.concatenate([acc[:, None].astype(np.float64), rows * b_t[where[:-2] + where[-1:]]], axis=1)


# The three bf16 pieces of an fp32 matmul operand, and the order their products are accumulated in:
# the smallest first (hi·lo, lo·hi, mid·mid, hi·mid, mid·hi, hi·hi; lo·mid, mid·lo and lo·lo, below
# 2^-24 of the result, are left out).
SPLIT_PRODUCTS = ((0, 2), (2, 0), (1, 1), (0, 1), (1, 0), (0, 0))


def split3(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fp32 x as hi + mid + lo, each bf16-valued, exactly: the top 8 significant bits (the word's low 16
    bits cleared), the top 8 of what remains, and the rest."""
    keep = np.int32(-65536)                                      # 0xFFFF0000
    hi = _float(_bits(x) & keep)
    rest = flush(np.asarray(x, _F) - hi)
    mid = _float(_bits(rest) & keep)
    return hi, mid, flush(rest - mid)


def matmul_f32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 A·B on the bf16 matrix unit: both operands split in three (split3), the products of
    SPLIT_PRODUCTS accumulated 8-wide K step by step, in that order within each step."""
    k = a.shape[-1]
    pad = (-k) % STEP
    if pad:
        a = np.concatenate([a, np.zeros(a.shape[:-1] + (pad,), _F)], axis=-1)
        b = np.concatenate([b, np.zeros((pad, b.shape[-1]), _F)], axis=0)
    pa = [p.astype(np.float64) for p in split3(a)]
    pb = [p.astype(np.float64) for p in split3(b)]
    out = np.zeros(a.shape[:-1] + (b.shape[-1],), _F)
    for s in range(0, a.shape[-1], STEP):
        for i, j in SPLIT_PRODUCTS:
            _accumulate_exactly(out, pa[i][..., s:s + STEP], pb[j][s:s + STEP, :])
    return flush(out)


# ---- reductions --------------------------------------------------------------------------------------

def lane_sum(x: np.ndarray) -> np.ndarray:
    """fp32 sum over the last axis (a multiple of 16) as the kernels take it: the 16-lane vectors added in
    order, then reduce_add's halving tree."""
    x = np.asarray(x, _F)
    chunks = x.reshape(x.shape[:-1] + (-1, LANES))
    acc = chunks[..., 0, :]
    for c in range(1, chunks.shape[-2]):
        acc = acc + chunks[..., c, :]
    width = LANES // 2
    while width:
        acc = acc[..., :width] + acc[..., width:2 * width]
        width //= 2
    return acc[..., 0]


# ---- elementwise functions (kernels/aie/common/vmath.h) -------------------------------------------------
# The kernels flush every result below the smallest normal float; these functions need not: on normal
# (or zero) inputs their intermediate results stay normal, or a subnormal one is absorbed by the next
# addition of a normal constant (Horner's p * x + c), which gives the same float either way.

def _horner(x: np.ndarray, coeffs: tuple) -> np.ndarray:
    p = np.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        p = p * x + c
    return p


def recip(q: np.ndarray) -> np.ndarray:
    """1/q for positive normal q: y0 from the bits 0x7EF311C3 − bits(q), three Newton steps y·(2 − q·y)."""
    q = np.asarray(q, _F)
    y = _float(np.int32(0x7EF311C3) - _bits(q))
    for _ in range(3):
        y = y * (_F(2.0) - q * y)
    return y


def rsqrt(x: np.ndarray) -> np.ndarray:
    """1/√x for positive normal x: y0 from 0x5F3759DF − bits(x)/2, three Newton steps y·(1.5 − (x/2)·y·y)."""
    x = np.asarray(x, _F)
    half_x = x * _F(0.5)
    y = _float(np.int32(0x5F3759DF) - (_bits(x) >> 1))
    for _ in range(3):
        y = y * (_F(1.5) - half_x * (y * y))
    return y


_ROUND = _F(12582912.0)                                       # 1.5 * 2^23
EXP_LO, EXP_HI = _F(-80.0), _F(88.0)
_LOG2E = (_F(1.4453125), _F(-0.00262451171875))                 # log2 e and ln 2 as sums of bf16 pieces
_LN2 = (_F(0.69140625), _F(0.001739501953125), _F(1.430511474609375e-06))
_EXP_Q = (_F(0.5037), _F(0.166015625))                         # fitted for this project; the second a bf16 value
EXP_ACCURACY = 6.5e-4                                          # exp's relative error bound (tests measure it)


def _pieces(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x as its bf16 rounding and the bf16 rounding of the rest (x − hi is exact in fp32)."""
    hi = bf16(x)
    return hi, bf16(x - hi)


def exp(x: np.ndarray) -> np.ndarray:
    """e^x = 2^k · p(r) from bf16 products, the vector unit's native multiply (exact, added into fp32
    with one rounding each): k = rint(x·log2 e) (x and log2 e as pairs of bf16 pieces, rounded by + and
    − 1.5·2^23), r = x − k·ln2 (ln 2 in three bf16 pieces), p(r) = (1 + r) + bf16(rh²)·bf16(q₀ + q₁·rh)
    with rh = bf16(r) (q fitted for this project), 2^k added to p's exponent bits; x < −80 gives 0, x
    is clamped at 88. Within EXP_ACCURACY of e^x, relative: attention rounds P to bf16 (3.9e-3 steps)."""
    x = np.asarray(x, _F)
    xc = np.minimum(np.maximum(x, EXP_LO), EXP_HI)
    xh, xl = _pieces(xc)
    t = ((xh * _LOG2E[0] + xh * _LOG2E[1]) + xl * _LOG2E[0]) + _ROUND
    k = t - _ROUND
    r = ((xc - k * _LN2[0]) - k * _LN2[1]) - k * _LN2[2]
    rh = bf16(r)
    p = (_F(1.0) + r) + bf16(rh * rh) * bf16(_EXP_Q[0] + _EXP_Q[1] * rh)
    return np.where(x < EXP_LO, _F(0.0), _float(_bits(p) + ((_bits(t) - _bits(_ROUND)) << 23)))


# GELU's pieces: k(t) = t·Φ(−t) on [0, 5.5), a degree-6 polynomial in t − centre on each of four
# pieces (Chebyshev least squares weighted by 1/(1 + t), fitted for this project). The first piece is
# centred on 0 with no constant term, so that GELU(x) stays accurate relative to x near 0.
GELU_BREAKS = (_F(0.625), _F(1.75), _F(3.25))                  # where pieces 1, 2 and 3 begin
GELU_END = _F(5.5)                                             # k(5.5) = 1e-7: k is 0 from here
GELU_CENTRES = np.array([0.0, 1.1875, 2.5, 4.375], _F)
GELU_COEFFS = np.array([                                        # [piece, power of (t − centre)]
    [0.0, 0.4999999403953552, -0.3989352881908417, -0.00012574113497976214, 0.06730131059885025,
     -0.0022484140936285257, -0.0075361053459346294],
    [0.1395494043827057, -0.11654740571975708, -0.058137036859989166, 0.10103075206279755,
     -0.031787481158971786, -0.008738781325519085, 0.006318766623735428],
    [0.015524033457040787, -0.03760971873998642, 0.03725554049015045, -0.016454417258501053,
     -0.0005753095028921962, 0.004360613878816366, -0.0017360963393002748],
    [2.640748607518617e-05, -0.00012023127783322707, 0.00024092948297038674, -0.0002777948684524745,
     0.00026804933440871537, -0.0002253771381219849, 8.739483746467158e-05]], _F)


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU(x) = x·Φ(x), Whisper's exact-erf GELU, as (x < 0 ? 0 : |x|) − k(|x|) with k(t) = t·Φ(−t):
    k a piecewise polynomial (GELU_BREAKS, GELU_END), Horner in fp32 on t − centre, the piece's
    coefficients picked per lane; k = 0 from GELU_END on. No division and no erf."""
    x = np.asarray(x, _F)
    t = np.abs(x)
    piece = (t >= GELU_BREAKS[0]).astype(np.uint8) + (t >= GELU_BREAKS[1]) + (t >= GELU_BREAKS[2])
    s = t - GELU_CENTRES[piece]
    k = GELU_COEFFS[piece, -1]
    for j in range(GELU_COEFFS.shape[1] - 2, 0, -1):
        k = k * s + GELU_COEFFS[piece, j]      # a subnormal product is absorbed by a normal coefficient
    k = flush(k * s) + GELU_COEFFS[piece, 0]  # the first piece's constant is 0: nothing absorbs it there
    k = np.where(t < GELU_END, k, _F(0.0))
    return flush(np.where(x < 0, _F(0.0), t) - k)


def log10(x: np.ndarray) -> np.ndarray:
    """log10 of positive normal x: x = m·2^e, m in [√½, √2), ln m = 2·atanh(t), t = (m − 1)·(1/(m + 1)),
    atanh by its series to t⁹."""
    b = _bits(x)
    e = (b >> 23) - 126
    m = _float((b & 0x007FFFFF) | 0x3F000000)                    # [0.5, 1)
    low = m < _F(0.7071067811865476)
    m = np.where(low, m + m, m)
    e = np.where(low, e - 1, e)
    t = (m - _F(1.0)) * recip(m + _F(1.0))
    atanh = (_F(1.0), _F(1.0 / 3.0), _F(1.0 / 5.0), _F(1.0 / 7.0), _F(1.0 / 9.0))
    ln_m = (t + t) * _horner(t * t, atanh)
    e_float = _float(e + _bits(_ROUND)) - _ROUND                  # exact for small integers
    return ln_m * _F(0.43429448190325176) + e_float * _F(0.30102999566398120)


# ---- the mel front end ------------------------------------------------------------------------------------

BINS = N_FFT // 2 + 1                         # 201 frequency bins
BIN_TILE = 32                                 # bins per 64-column tile of the DFT: 32 cos, then 32 −sin
BINS_PADDED = -(-BINS // BIN_TILE) * BIN_TILE   # 224


def dft_matrix(hann: np.ndarray) -> np.ndarray:
    """(N_FFT, 2 · BINS_PADDED) fp32: the periodic Hann window folded into the real DFT, computed in
    float64 and rounded once; each 64-column tile t holds hann·cos of bins 32t…32t+31, then hann·(−sin)."""
    n = np.arange(N_FFT)[:, None]
    k = np.arange(BINS_PADDED)[None, :]
    angle = 2 * np.pi * n * k / N_FFT
    valid = k < BINS
    w = np.asarray(hann, np.float64)[:, None]
    cos, sin = np.where(valid, w * np.cos(angle), 0.0), np.where(valid, -w * np.sin(angle), 0.0)
    tiles = BINS_PADDED // BIN_TILE
    out = np.stack([cos.reshape(N_FFT, tiles, BIN_TILE), sin.reshape(N_FFT, tiles, BIN_TILE)], axis=2)
    return out.reshape(N_FFT, 2 * BINS_PADDED).astype(_F)


def mel_power(frames: np.ndarray, dft: np.ndarray, matmul=matmul_f32) -> np.ndarray:
    """|DFT|² of frames (F, N_FFT): the windowed DFT as an fp32 matmul, then re·re + im·im, (F, BINS_PADDED).
    matmul: matmul_f32 or an implementation of it (the emulator's native one)."""
    spec = matmul(np.asarray(frames, _F), dft).reshape(len(frames), -1, 2, BIN_TILE)
    re, im = spec[:, :, 0], spec[:, :, 1]
    return flush(flush(re * re) + flush(im * im)).reshape(len(frames), BINS_PADDED)


def mel_log(power: np.ndarray, filters_t: np.ndarray, matmul=matmul_f32) -> np.ndarray:
    """log10 of the mel energies: power (F, BINS_PADDED) · filters (BINS_PADDED, n_mels) as an fp32
    matmul (matmul_f32 or an implementation of it), floored at 1e-10."""
    return log10(np.maximum(matmul(power, filters_t), _F(1e-10)))


def mel_finish(log_mel: np.ndarray, maximum) -> np.ndarray:
    """Whisper's dynamic range and scaling: bf16((max(x, max − 8) + 4) · 0.25)."""
    y = np.maximum(log_mel, flush(_F(maximum) - _F(8.0)))
    return bf16(flush(flush(y + _F(4.0)) * _F(0.25)))


def filters_padded(filters: np.ndarray) -> np.ndarray:
    """The mel filters (n_mels, BINS) as the mel matmul's B: transposed, rows zero-padded to BINS_PADDED, fp32."""
    out = np.zeros((BINS_PADDED, filters.shape[0]), _F)
    out[:BINS] = np.asarray(filters, np.float64).T
    return out

