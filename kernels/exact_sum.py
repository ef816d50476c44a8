"""fp32 rounding of exact sums, fast: the matrix unit's accumulation (kernels/contract.py) adds each
step's products to the accumulator exactly and rounds once, and numpy's float64 sums are exact only
while the terms span fewer than ~53 bits. A float64 sum is trusted where its error bound keeps it on
one side of every fp32 rounding midpoint, or where it is certainly exact; the rest are settled from
a double-double sum, and the few that stay undecided from math.fsum.

Everything here works on (n, T) float64 arrays of terms, each row one sum (n sums of T terms)."""
from __future__ import annotations

import math
import sys

import numpy as np

assert sys.byteorder == "little", "near_midpoint reads the low word of float64 values"

U = 2.0 ** -53                               # float64's unit roundoff
_BELOW_FP32 = (1 << 29) - 1                  # float64 significand bits below fp32 precision
_MIDPOINT = 1 << 28
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def near_midpoint(s: np.ndarray, magnitude: np.ndarray, terms: int) -> np.ndarray:
    """Where float64 s = acc + Σ products (any shape; magnitude = Σ|products|, `terms` products summed
    in any order, then acc added) may lie on the other side of an fp32 rounding midpoint than the exact
    sum. The sum errs by < (terms - 1)·u·magnitude, adding acc by ≤ u·|s|; s's 29 bits below fp32
    precision (in the low word) count its float64 steps, each ≥ |s|·u, from the midpoint at 2^28
    (exact for normal fp32 magnitudes; s = 0 of terms all 0 is exact). Sums below the smallest normal
    fp32, where fp32's steps are wider than that count assumes, are all taken as near."""
    steps = s.view(np.int32)[..., ::2] & np.int32(_BELOW_FP32)             # little-endian low words
    steps -= np.int32(_MIDPOINT)
    np.abs(steps, out=steps)
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = np.divide(magnitude, s)
    np.abs(limit, out=limit)
    limit *= terms + 1
    limit += 2
    return (steps < limit) | (np.abs(s) < _SMALLEST_NORMAL)


def quantum(x: np.ndarray, bits: int, axis: int | None = None) -> np.ndarray:
    """The unit of x's last significant bit (x with `bits` significant bits: 2^(e - bits) for
    2^(e-1) <= |x| < 2^e), inf for 0; with axis, the least along it."""
    q = np.where(x != 0, np.ldexp(1.0, np.frexp(x)[1] - bits), np.inf)
    return q if axis is None else q.min(axis=axis)


def exact_in_float64(total: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Whether a float64 sum is exact in any order: its terms are multiples of `unit` and their
    absolute sum `total` stays below 2^52 units (a margin of one bit for total's own rounding)."""
    return total < np.ldexp(unit, 52)


def round_sums(terms: np.ndarray) -> np.ndarray:
    """fl32(Σ row), each row's exact sum rounded to fp32 (nearest even): a double-double sum (hi, lo)
    decides on which side of the two midpoints around its rounding r the exact sum lies; rows it leaves
    undecided (within its error bound of a midpoint, or past one with an error bound too wide to say
    the answer is the neighbour there) are summed by math.fsum."""
    hi, lo = _double_double(terms)
    r = (hi + lo).astype(np.float32)
    error = terms.shape[1] ** 2 * U * U * np.abs(terms).sum(axis=1)
    r = np.where(np.isinf(r), np.copysign(np.float32(np.finfo(np.float32).max), r), r)   # decided below
    up, down = np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))
    above, sure_up = _side(hi, lo, _midpoint(r, up), error)
    below, sure_down = _side(hi, lo, _midpoint(r, down), error)
    # a neighbour only where hi + lo is within a step of the exact sum (under cancellation it may not be)
    r64 = r.astype(np.float64)
    with np.errstate(invalid="ignore"):
        close = error < np.minimum(np.abs(up - r64), np.abs(r64 - down)) / 2
    to_up, to_down = close & sure_up & (above > 0), close & sure_down & (below < 0)
    out = np.where(to_up, up, np.where(to_down, down, r))
    for n in np.nonzero(~(to_up | to_down | (sure_up & sure_down)))[0]:
        out[n] = _round_sum(list(terms[n]))
    return out


def _midpoint(r: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The midpoints between neighbouring fp32 values r and other, exact in float64; past ±FLT_MAX the
    overflow threshold (FLT_MAX plus half its spacing), where rounding to nearest turns to infinity."""
    r64 = r.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        half_step = (r64 - np.nextafter(r, np.float32(0)).astype(np.float64)) / 2
        return np.where(np.isinf(other), r64 + half_step, (r64 + other.astype(np.float64)) / 2)


def _side(hi: np.ndarray, lo: np.ndarray, mid: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi + lo − mid, whether its sign is the exact sum's): the sum's error, and hi − mid's rounding
    where hi and mid are far apart, are below |side|."""
    gap = hi - mid
    side = gap + lo
    return side, np.abs(side) > error + 2 * U * np.abs(gap)


def _double_double(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hi + lo ≈ Σ row: the sum in order with each addition's exact error (TwoSum) collected in lo."""
    hi = terms[:, 0].copy()
    lo = np.zeros_like(hi)
    for x in terms[:, 1:].T:
        s = hi + x
        v = s - hi
        lo += (hi - (s - v)) + (x - v)
        hi = s
    return hi, lo


def _round_sum(terms: list[float]) -> np.float32:
    """fl32(Σ terms) exactly: math.fsum is correctly rounded, so the sign of Σ terms − midpoint is exact."""
    with np.errstate(over="ignore"):
        r = np.float32(math.fsum(terms))
    if np.isinf(r):
        r = np.copysign(np.float32(np.finfo(np.float32).max), r)        # decided against the threshold
    for direction in (1, -1):
        other = np.nextafter(r, np.float32(direction * np.inf))
        side = math.fsum(terms + [-float(_midpoint(np.array([r]), np.array([other]))[0])])
        if side == 0:
            return r if not int(np.float32(r).view(np.int32)) & 1 else other
        if (side > 0) == (direction > 0):
            return other
    return r
