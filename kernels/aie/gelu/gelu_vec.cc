// Elementwise GELU, Whisper's exact-erf GELU, on 16-lane vectors: y = bf16(gelu(x)) with vmath.h's
// gelu (a piecewise polynomial picked per lane). The vectorised variant of gelu.cc. (In the encoder
// graph GELU is fused into the matmul epilogue; this kernel serves standalone use.)
//
// Cycle estimate: per 16 values 6 fp32 multiplies (~15 instructions each, emulated) and ~40 other
// instructions: ~130 cycles, n / 16 x 130 a call.
#include "../common/vmath.h"

using namespace amanuensis::vec;

extern "C" {

void geluv_bf16(const bfloat16* x, bfloat16* y, int32_t n) {   // n: a multiple of 16
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int i = 0; i < n; i += 16) aie::store_v(y + i, narrow(gelu(widen(aie::load_v<16>(x + i)))));
}

// vmath.h's functions on fp32 arrays (n a multiple of 16), for the tests.
#define VMATH_ENTRY(name, fn)                                                        \
  void name(const float* x, float* y, int32_t n) {                                   \
    aie::set_rounding(aie::rounding_mode::conv_even);                                \
    for (int i = 0; i < n; i += 16) aie::store_v(y + i, fn(aie::load_v<16>(x + i)));  \
  }
VMATH_ENTRY(vmath_exp, exp)
VMATH_ENTRY(vmath_gelu, gelu)
VMATH_ENTRY(vmath_recip, recip)
VMATH_ENTRY(vmath_rsqrt, rsqrt)
VMATH_ENTRY(vmath_log10, log10)

void vmath_lane_sum(const float* x, int32_t rows, int32_t n, float* out) {   // n: a multiple of 16
  for (int r = 0; r < rows; ++r) {
    v16f acc = aie::load_v<16>(x + long(r) * n);
    for (int i = 16; i < n; i += 16) acc = fadd(acc, aie::load_v<16>(x + long(r) * n + i));
    out[r] = sum(acc);
  }
}

void vmath_round_bf16(const float* x, bfloat16* y, int32_t n) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int i = 0; i < n; i += 16) aie::store_v(y + i, narrow(aie::load_v<16>(x + i)));
}

}  // extern "C"
