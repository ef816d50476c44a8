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

// e^x = 2^k p(r) from bf16 products, the vector unit's native multiply (exact; mac adds one into an
// fp32 accumulator with one rounding), so no emulated fp32 multiply:
//   k = rint(x log2 e): x and log2 e as pairs of bf16 pieces, rounded by adding and removing 1.5 * 2^23;
//   r = x - k ln2, ln 2 in three bf16 pieces (k is an integer below 2^8, exact in bf16);
//   p(r) = (1 + r) + bf16(rh^2) bf16(q0 + q1 rh), rh = bf16(r) (q fitted for this project);
//   2^k added to p's exponent bits.
// Within 6.5e-4 of e^x, relative (measured over [-80, 88]), and exp(0) = 1 exactly: attention rounds
// P to bf16 (steps of 3.9e-3) and divides by the sum of the same P, so a finer exp changes nothing
// measurable there (docs/npu.md). x < -80 gives 0 (e^x < 2e-35, below any term an fp32 sum of
// attention weights can keep); x is clamped at 88 (e^88.7 overflows).
// Cost per 16 lanes: 9 products, 6 bf16 narrowings (2 instructions each), 1 widening, 4 fp32 adds and
// subtracts, 8 moves between vector and accumulator registers, 7 integer, compare and select
// instructions: ~41 instructions, against ~160 for a degree-6 polynomial in emulated fp32 multiplies.
constexpr float kExpLo = -80.0f, kExpHi = 88.0f;
constexpr float kRound = 12582912.0f;   // 1.5 * 2^23
constexpr float kLog2e[2] = {1.4453125f, -0.00262451171875f};
constexpr float kLn2[3] = {0.69140625f, 0.001739501953125f, 1.430511474609375e-06f};
constexpr float kExpQ[2] = {0.5037f, 0.166015625f};    // q1 is a bf16 value

inline v16bf bcast_bf(float x) { return narrow(bcast(x)); }                       // x is a bf16 value
inline v16bf rest(const v16f& x, const v16bf& hi) { return narrow(fsub(x, widen(hi))); }   // x - hi, exact, rounded
inline v16f value(const acc16& acc) { return acc.template to_vector<float>(); }

inline v16f exp(const v16f& x) {
  v16f xc = aie::min(aie::max(x, bcast(kExpLo)), bcast(kExpHi));
  v16bf xh = narrow(xc), xl = rest(xc, xh);
  acc16 xlog2e = aie::mac(aie::mac(aie::mul(xh, bcast_bf(kLog2e[0])), xh, bcast_bf(kLog2e[1])), xl, bcast_bf(kLog2e[0]));
  v16f t = fadd(value(xlog2e), bcast(kRound));                             // 1.5 * 2^23 + k
  v16bf k = narrow(fsub(t, bcast(kRound)));
  acc16 racc = aie::msc(aie::msc(aie::msc(acc16(xc), k, bcast_bf(kLn2[0])), k, bcast_bf(kLn2[1])), k, bcast_bf(kLn2[2]));
  v16f r = value(racc);
  v16bf rh = narrow(r);
  v16bf r2 = narrow(value(aie::mul(rh, rh)));
  v16bf q = narrow(value(aie::mac(acc16(bcast(kExpQ[0])), bcast_bf(kExpQ[1]), rh)));
  v16f p = value(aie::mac(acc16(fadd(bcast(1.0f), r)), r2, q));
  v16i ki = aie::sub(bits(t), bits(bcast(kRound)));                        // k as an integer
  v16f e = from_bits(aie::add(bits(p), aie::upshift(ki, 23)));            // p 2^k
  return aie::select(e, bcast(0.0f), aie::lt(x, bcast(kExpLo)));
}

// GELU(x) = x Phi(x), Whisper's exact-erf GELU, as (x < 0 ? 0 : |x|) - k(|x|), k(t) = t Phi(-t): on
// [0, 5.5) a degree-6 polynomial in t - centre on each of four pieces, the piece's coefficients
// picked per lane with selects (fitted for this project; the first piece is centred on 0 with no
// constant term, so GELU stays accurate relative to x near 0); k = 0 from 5.5 on (k(5.5) = 1e-7).
// Within 1.9e-7 (1 + |x|) of GELU: the error is absolute, since |x| - k rounds at the scale of |x|
// (as x (1 + erf) does in an erf-based evaluation). No division, no erf.
// Cost per 16 lanes: 6 fp32 multiplies (~15 instructions each, emulated), 8 adds and subtracts,
// 5 compares, 26 selects, 1 and: ~130 instructions, against ~270 for a rational erf's 17 multiplies.
constexpr float kGeluBreak[3] = {0.625f, 1.75f, 3.25f};
constexpr float kGeluEnd = 5.5f;
constexpr float kGeluCentre[4] = {0.0f, 1.1875f, 2.5f, 4.375f};
constexpr float kGeluK[4][7] = {
    {0.0f, 0.4999999403953552f, -0.3989352881908417f, -0.00012574113497976214f, 0.06730131059885025f,
     -0.0022484140936285257f, -0.0075361053459346294f},
    {0.1395494043827057f, -0.11654740571975708f, -0.058137036859989166f, 0.10103075206279755f,
     -0.031787481158971786f, -0.008738781325519085f, 0.006318766623735428f},
    {0.015524033457040787f, -0.03760971873998642f, 0.03725554049015045f, -0.016454417258501053f,
     -0.0005753095028921962f, 0.004360613878816366f, -0.0017360963393002748f},
    {2.640748607518617e-05f, -0.00012023127783322707f, 0.00024092948297038674f, -0.0002777948684524745f,
     0.00026804933440871537f, -0.0002253771381219849f, 8.739483746467158e-05f}};

inline v16f gelu(const v16f& x) {
  v16f t = from_bits(aie::bit_and(bits(x), bcast_i(0x7FFFFFFF)));
  auto in1 = aie::lt(t, bcast(kGeluBreak[0])), in2 = aie::lt(t, bcast(kGeluBreak[1])),
       in3 = aie::lt(t, bcast(kGeluBreak[2]));
  auto pick = [&](const float (&c)[4]) {                  // c[piece] for each lane
    v16f v = aie::select(bcast(c[3]), bcast(c[2]), in3);
    v = aie::select(v, bcast(c[1]), in2);
    return aie::select(v, bcast(c[0]), in1);
  };
  auto coefficient = [&](int j) {
    const float c[4] = {kGeluK[0][j], kGeluK[1][j], kGeluK[2][j], kGeluK[3][j]};
    return pick(c);
  };
  v16f s = fsub(t, pick(kGeluCentre));
  v16f k = coefficient(6);
  for (int j = 5; j >= 0; --j) k = fadd(fmul(k, s), coefficient(j));
  k = aie::select(bcast(0.0f), k, aie::lt(t, bcast(kGeluEnd)));
  return fsub(aie::select(t, bcast(0.0f), aie::lt(x, bcast(0.0f))), k);
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
