// Vector math for the vectorised kernels: 16-lane fp32 on the aie_api subset of aie.h only (no
// divide, exp or sqrt: AIE2's vector unit has none of them for fp32). kernels/contract.py computes
// exactly the same, operation for operation; kernels/CONTRACT.md states it.
//
// Cost: on AIE2 an fp32 vector multiply is emulated with bf16 products (aie_api, 9 in Peano's
// "safe" mode), about 15 vector instructions; an fp32 add is one accumulator instruction. The
// cycle estimates beside the kernels count in those units.
#pragma once
#include "aie.h"

namespace amanuensis::vec {

using v16f = aie::vector<float, 16>;
using v16i = aie::vector<int32_t, 16>;
using v16bf = aie::vector<bfloat16, 16>;
using v32bf = aie::vector<bfloat16, 32>;
using acc16 = aie::accum<accfloat, 16>;

inline v16f bcast(float x) { return aie::broadcast<float, 16>(x); }
inline v16i bcast_i(int32_t x) { return aie::broadcast<int32_t, 16>(x); }
inline v16f fmul(const v16f& a, const v16f& b) { return aie::mul(a, b).template to_vector<float>(); }
inline v16f fadd(const v16f& a, const v16f& b) { return aie::add(a, b); }
inline v16f fsub(const v16f& a, const v16f& b) { return aie::sub(a, b); }
inline v16i bits(const v16f& x) { return aie::vector_cast<int32_t>(x); }
inline v16f from_bits(const v16i& x) { return aie::vector_cast<float>(x); }
inline v16f widen(const v16bf& x) { return acc16(x).template to_vector<float>(); }           // exact
inline v16bf narrow(const v16f& x) { return acc16(x).template to_vector<bfloat16>(); }       // by the rounding mode

// p(x) = c[0] + c[1] x + ... + c[N-1] x^(N-1), Horner from the top: p = p * x + c[i].
template <int N>
inline v16f horner(const v16f& x, const float (&c)[N]) {
  v16f p = bcast(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) p = fadd(fmul(p, x), bcast(c[i]));
  return p;
}

// 1/q for positive normal q: start from the bit pattern 0x7EF311C3 - bits(q) (within 12.5%),
// three Newton steps y = y * (2 - q * y).
inline v16f recip(const v16f& q) {
  v16f y = from_bits(aie::sub(bcast_i(0x7EF311C3), bits(q)));
  for (int i = 0; i < 3; ++i) y = fmul(y, fsub(bcast(2.0f), fmul(q, y)));
  return y;
}

// 1/sqrt(x) for positive normal x: start from 0x5F3759DF - bits(x)/2 (within 0.2%), three Newton
// steps y = y * (1.5 - (x/2) * y * y).
inline v16f rsqrt(const v16f& x) {
  v16f half_x = fmul(x, bcast(0.5f));
  v16f y = from_bits(aie::sub(bcast_i(0x5F3759DF), aie::downshift(bits(x), 1)));
  for (int i = 0; i < 3; ++i) y = fmul(y, fsub(bcast(1.5f), fmul(half_x, fmul(y, y))));
  return y;
}

// e^x = 2^k p(r): k = rint(x log2 e) by adding and removing 1.5 * 2^23 (round to nearest even),
// r = (x - k ln2_hi) - k ln2_lo, p of degree 6 (fitted for this project), 2^k built in the
// exponent bits. x < -87 gives 0 (e^x would be near or below the smallest normal float, and the
// hardware has no subnormals); x is clamped at 88 (e^88.7 overflows).
constexpr float kExpLo = -87.0f, kExpHi = 88.0f;
constexpr float kRound = 12582912.0f;   // 1.5 * 2^23
constexpr float kExpPoly[7] = {1.0000000005542613f, 1.0000000363227308f, 0.49999992078339245f,
                               0.1666642017141224f, 0.04166822590235366f, 0.008374815699891782f,
                               0.0013836827356279889f};

inline v16f exp(const v16f& x) {
  v16f xc = aie::min(aie::max(x, bcast(kExpLo)), bcast(kExpHi));
  v16f t = fadd(fmul(xc, bcast(1.4426950408889634f)), bcast(kRound));    // 1.5 * 2^23 + k
  v16f k = fsub(t, bcast(kRound));
  v16f r = fsub(fsub(xc, fmul(k, bcast(0.693145751953125f))), fmul(k, bcast(1.4286068203094172e-06f)));
  v16f p = horner(r, kExpPoly);
  v16i ki = aie::sub(bits(t), bits(bcast(kRound)));                        // k as an integer
  v16f scale = from_bits(aie::upshift(aie::add(ki, bcast_i(127)), 23));    // 2^k
  return aie::select(fmul(p, scale), bcast(0.0f), aie::lt(x, bcast(kExpLo)));
}

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (fitted for this project), the division as a reciprocal.
constexpr float kErfP[6] = {1.128378947110758f, 0.19797619977799844f, 0.053686567157058676f,
                            0.004074493892425168f, 0.00028910305714117436f, 1.955181944738132e-06f};
constexpr float kErfQ[6] = {1.0f, 0.5087826770976088f, 0.11718184066732072f,
                            0.015587526004807313f, 0.0012324912167420044f, 3.733127555938595e-05f};

inline v16f erf(const v16f& x) {
  v16f xc = aie::min(aie::max(x, bcast(-4.0f)), bcast(4.0f));
  v16f z = fmul(xc, xc);
  return fmul(fmul(horner(z, kErfP), xc), recip(horner(z, kErfQ)));
}

// GELU(x) = x * ((erf(x / sqrt 2) + 1) * 0.5), Whisper's exact form, in this order.
inline v16f gelu(const v16f& x) {
  v16f e = erf(fmul(x, bcast(0.7071067811865476f)));
  return fmul(x, fmul(fadd(e, bcast(1.0f)), bcast(0.5f)));
}

// A small integer vector as floats, exactly (|e| < 2^22): bits of 1.5 * 2^23 + e, less 1.5 * 2^23.
inline v16f int_to_float(const v16i& e) { return fsub(from_bits(aie::add(e, bits(bcast(kRound)))), bcast(kRound)); }

// log10 of positive normal x: x = m 2^e with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(t),
// t = (m - 1) / (m + 1), the atanh series to t^9.
constexpr float kAtanh[5] = {1.0f, 1.0f / 3.0f, 1.0f / 5.0f, 1.0f / 7.0f, 1.0f / 9.0f};

inline v16f log10(const v16f& x) {
  v16i b = bits(x);
  v16i e = aie::sub(aie::downshift(b, 23), bcast_i(126));                               // m in [0.5, 1)
  v16f m = from_bits(aie::bit_or(aie::bit_and(b, bcast_i(0x007FFFFF)), bcast_i(0x3F000000)));
  auto low = aie::lt(m, bcast(0.7071067811865476f));
  m = aie::select(m, fadd(m, m), low);
  e = aie::select(e, aie::sub(e, bcast_i(1)), low);
  v16f t = fmul(fsub(m, bcast(1.0f)), recip(fadd(m, bcast(1.0f))));
  v16f ln_m = fmul(fadd(t, t), horner(fmul(t, t), kAtanh));
  return fadd(fmul(ln_m, bcast(0.43429448190325176f)), fmul(int_to_float(e), bcast(0.30102999566398120f)));
}

// An fp32 vector as the sum of three bf16 vectors, exactly: the top 8 significant bits (the low 16
// bits of the word cleared), then the top 8 of what remains, then the rest (at most 8 bits).
inline void split3(const v16f& x, v16bf& hi, v16bf& mid, v16bf& lo) {
  v16i keep = bcast_i(int32_t(0xFFFF0000u));
  v16f h = from_bits(aie::bit_and(bits(x), keep));
  v16f r = fsub(x, h);
  v16f m = from_bits(aie::bit_and(bits(r), keep));
  hi = narrow(h);
  mid = narrow(m);
  lo = narrow(fsub(r, m));
}

// A sum of 16-lane vectors reduced to one float: aie::reduce_add's halving tree.
inline float sum(const v16f& x) { return aie::reduce_add(x); }

}  // namespace amanuensis::vec
