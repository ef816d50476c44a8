// The scalar reference numerics, shared by the scalar kernels (mm.cc, attention.cc, layernorm.cc,
// gelu.cc, mel.cc): plain loops, written to be read. The vectorised kernels (*_vec.cc) follow
// kernels/CONTRACT.md exactly; these differ in the details the vector unit fixes (the matmul sums
// 64-wide K chunks, the reductions run lane by lane, division and square root are the C library's,
// exp is an fp32 polynomial, GELU goes through a rational erf), so the two agree within one bf16
// step; an output that nearly cancels (attention, GELU of negative x), within a small absolute
// amount (tests/test_aie_host.py).
//
// bf16 values travel as raw uint16_t bits, so the same code builds for the AIE
// (Peano, __AIENGINE__ defined) and for the host (g++, used by the tests).
// No fused multiply-add: build with -ffp-contract=off.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

namespace amanuensis {

constexpr int TILE = 64;
constexpr int LANES = 16;

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// e^x = 2^k * p(r), k = rint(x log2 e), r = (x - k ln2_hi) - k ln2_lo; p: degree 6, fitted for this project.
inline float exp_f32(float x) {
  const float kLog2e = (float)1.4426950408889634;
  const float kLn2Hi = (float)0.693145751953125;
  const float kLn2Lo = (float)(0.6931471805599453 - 0.693145751953125);
  const float kMax = 88.7f, kMin = -103.0f;
  const float c[7] = {(float)1.0000000005542613, (float)1.0000000363227308, (float)0.49999992078339245,
                      (float)0.1666642017141224, (float)0.04166822590235366, (float)0.008374815699891782,
                      (float)0.0013836827356279889};
  if (x < kMin) return 0.0f;
  float xc = x > kMax ? kMax : x;
  float k = rintf(xc * kLog2e);
  float r = (xc - k * kLn2Hi) - k * kLn2Lo;
  float p = c[6];
  for (int i = 5; i >= 0; --i) p = p * r + c[i];
  return ldexpf(p, (int)k);
}

// erf(x) = x P(x^2) / Q(x^2) on [-4, 4]; coefficients fitted for this project. (The vectorised
// kernels compute GELU without erf: a piecewise polynomial, common/vmath.h.)
inline float erf_f32(float x) {
  const float P[6] = {(float)1.128378947110758, (float)0.19797619977799844, (float)0.053686567157058676,
                      (float)0.004074493892425168, (float)0.00028910305714117436, (float)1.955181944738132e-06};
  const float Q[6] = {1.0f, (float)0.5087826770976088, (float)0.11718184066732072,
                      (float)0.015587526004807313, (float)0.0012324912167420044, (float)3.733127555938595e-05};
  float xc = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);
  float z = xc * xc;
  float p = P[5], q = Q[5];
  for (int i = 4; i >= 0; --i) {
    p = p * z + P[i];
    q = q * z + Q[i];
  }
  p = p * xc;
  return p / q;
}

// GELU(x) = x * ((1 + erf(x / sqrt 2)) * 0.5), in this order.
inline float gelu_f32(float x) {
  const float kInvSqrt2 = (float)0.7071067811865476;
  float e = erf_f32(x * kInvSqrt2);
  return x * ((e + 1.0f) * 0.5f);
}

// Sum of n floats: 16 lanes (lane i takes i, i+16, ...), then lanes added pairwise.
inline float lane_sum(const float* x, int n) {
  float lane[LANES] = {0};
  for (int i = 0; i < n; ++i) lane[i % LANES] += x[i];
  for (int width = LANES / 2; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) lane[i] = lane[2 * i] + lane[2 * i + 1];
  return lane[0];
}

// One 64-wide K chunk of a dot product, summed exactly (double) and rounded once to fp32.
// On the AIE the mmul unit accumulates the chunk in fp32; results then agree within one bf16 ulp.
inline float dot_chunk(const uint16_t* a, int a_step, const uint16_t* b, int b_step) {
  double s = 0.0;
  for (int k = 0; k < TILE; ++k) s += (double)bf16_to_f32(a[k * a_step]) * (double)bf16_to_f32(b[k * b_step]);
  return (float)s;
}

// A dot product of fp32 vectors over k values: 64-wide chunks summed exactly (double) and
// rounded once, chunks accumulated in fp32 in order (the first chunk starts the sum).
inline float dot_f32_chunks(const float* a, int a_step, const float* b, int b_step, int k) {
  float acc = 0.0f;
  for (int start = 0; start < k; start += TILE) {
    double s = 0.0;
    int end = start + TILE < k ? start + TILE : k;
    for (int i = start; i < end; ++i) s += (double)a[i * a_step] * (double)b[i * b_step];
    acc = start == 0 ? (float)s : acc + (float)s;
  }
  return acc;
}

// log10 of positive x: x = m 2^e, m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(t), t = (m-1)/(m+1),
// the atanh series to t^9.
inline float log10_f32(float x) {
  int e;
  float m = frexpf(x, &e);
  if (m < (float)0.7071067811865476) {
    m = m * 2.0f;
    e -= 1;
  }
  float t = (m - 1.0f) / (m + 1.0f);
  float s = t * t;
  float p = (float)(1.0 / 9.0);
  p = p * s + (float)(1.0 / 7.0);
  p = p * s + (float)(1.0 / 5.0);
  p = p * s + (float)(1.0 / 3.0);
  p = p * s + 1.0f;
  float ln_m = (2.0f * t) * p;
  return ln_m * (float)0.43429448190325176 + (float)e * (float)0.30102999566398120;
}

}  // namespace amanuensis
