// LayerNorm with affine, rows of n values (n = d_model, a multiple of 16), fp32 statistics, bf16 out,
// on 16-lane vectors. The vectorised variant of layernorm.cc (the scalar reference it is checked
// against).
//   mean = sum(x) * (1/n), d = x - mean, var = sum(d d) * (1/n), rstd = rsqrt(var + eps),
//   y = bf16((d * rstd) * gamma + beta)
// Sums: the row's 16-lane vectors added in order, then reduce_add's halving tree. 1/n is one scalar
// division per call; rsqrt is vmath.h's Newton iteration. Three passes over each row, no scratch.
//
// Cycle estimate per row of n values (fp32 multiply = ~15 instructions, emulated; see vmath.h):
//   n/16 vectors x (3 widenings, 2 + 3 fp32 adds/subtracts, 3 fp32 multiplies, 1 narrowing): about
//   n/16 x 55 instructions, plus ~150 for the two reductions and the rsqrt: d = 384 -> ~1500 cycles,
//   d = 1280 -> ~4550.
#include "../common/vmath.h"

using namespace amanuensis::vec;

extern "C" {

void layernormv_bf16(const bfloat16* x, const bfloat16* gamma, const bfloat16* beta, bfloat16* y, int32_t rows,
                     int32_t n, float eps) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  const v16f inv_n = bcast(1.0f / float(n));
  for (int r = 0; r < rows; ++r) {
    const bfloat16* xr = x + long(r) * n;
    v16f acc = widen(aie::load_v<16>(xr));
    for (int i = 16; i < n; i += 16) acc = fadd(acc, widen(aie::load_v<16>(xr + i)));
    v16f mean = fmul(bcast(sum(acc)), inv_n);
    v16f d = fsub(widen(aie::load_v<16>(xr)), mean);
    v16f sq = fmul(d, d);
    for (int i = 16; i < n; i += 16) {
      d = fsub(widen(aie::load_v<16>(xr + i)), mean);
      sq = fadd(sq, fmul(d, d));
    }
    v16f rstd = rsqrt(fadd(fmul(bcast(sum(sq)), inv_n), bcast(eps)));
    for (int i = 0; i < n; i += 16) {
      d = fsub(widen(aie::load_v<16>(xr + i)), mean);
      v16f out = fadd(fmul(fmul(d, rstd), widen(aie::load_v<16>(gamma + i))), widen(aie::load_v<16>(beta + i)));
      aie::store_v(y + long(r) * n + i, narrow(out));
    }
  }
}

// The same with gamma and beta in one buffer (gamma, then beta), as the whole-array design streams
// them: one DMA channel for both.
void layernormv_affine_bf16(const bfloat16* x, const bfloat16* gamma_beta, bfloat16* y, int32_t rows, int32_t n,
                            float eps) {
  layernormv_bf16(x, gamma_beta, gamma_beta + n, y, rows, n, eps);
}

}  // extern "C"
