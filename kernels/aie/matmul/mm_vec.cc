// Matmul tiles on the AIE-ML matrix unit: 64 x 64 x 64, bf16 in, fp32 accumulator, fused epilogue.
// The vectorised variant of mm.cc (the scalar reference it is checked against).
//
// For each 64 x 64 output tile the design runs mmv_zero_64x64 once, mmv_bf16_64x64x64 once per
// 64-wide K chunk (C += A B, accumulated into C in fp32), then mmv_epilogue_64x64 once:
// out = bf16(act(C + bias) + residual), act = GELU or identity: one rounding to bf16, after the
// whole K.
//
// Layouts: A, B and C in the blocked layouts of common/blocked.h; residual and out bf16 in C's
// layout; bias: 64 bf16, the tile's columns in order.
//
// Cycle estimate per call (one mmul<4,8,4> bf16 = 128 MACs per cycle; two 256-bit loads and one
// store per cycle):
//   mmv_bf16_64x64x64   64^3 / 128 = 2048 mmul instructions; 4 x 4 register blocking loads 8
//                       512-bit operands per 16 mmuls (8 cycles of loads under 16 of compute) and
//                       loads/stores each C block once (256 + 256 accesses): ~2300 cycles.
//   mmv_epilogue_64x64  256 blocks of 16 values: bias add and residual add (2 fp32 adds), two bf16
//                       widenings, one narrowing: ~6 instructions a block, ~1500 cycles; with GELU
//                       (vmath.h: 6 fp32 multiplies of 15 instructions each, emulated, and ~40
//                       selects, compares and adds) ~130 more a block: ~35000 cycles, 15 times the
//                       matmul of one K chunk.
//   mmv_zero_64x64      256 stores of 512 bits: ~260 cycles.
//
// The whole-array design (design.py) gives each core 64 x 32 output tiles, so that a core's
// buffers fit its 64 KB with double buffering: mmv_zero_64x32, mmv_bf16_64x64x32 (B 64 x 32), and
// the epilogue in two calls, because the bias and the residual reach the core one after the other
// on one stream: mmv_bias_act_64x32 (C = act(C + bias), fp32, in place), then mmv_round_64x32
// (out = bf16(C)) or mmv_add_round_64x32 (out = bf16(C + residual)). The same fp32 operations in
// the same order as mmv_epilogue_64x64, so the same bits. Per call (kernels/aie/cycles.py reads
// these):
//   mmv_bf16_64x64x32    1024 mmul instructions, loads as above: ~1150 cycles.
//   mmv_zero_64x32       128 stores: ~130 cycles.
//   mmv_bias_act_64x32   128 blocks of load, add, store: ~400 cycles; with GELU ~17000.
//   mmv_round_64x32      128 blocks of load, narrow, store: ~400 cycles.
//   mmv_add_round_64x32  with the residual's load, widening and add: ~650 cycles.
#include "../common/blocked.h"

using namespace amanuensis::vec;
using namespace amanuensis::blocked;

namespace {

// Column block j's 4 bias values on each of its 4 rows.
inline v16f bias_block(const bfloat16* bias, int j) {
  auto b4 = widen(aie::load_v<16>(bias + (j / 4) * 16)).extract<4>(j % 4);
  return aie::concat(b4, b4, b4, b4);
}

inline v16f bias_act(v16f c, v16f bias, int32_t gelu) {
  v16f y = fadd(c, bias);
  return gelu ? amanuensis::vec::gelu(y) : y;
}

template <int NB>
void zero(float* c) {
  for (int b = 0; b < kBlocks * NB; ++b) aie::store_v(c + b * 16, aie::zeros<float, 16>());
}

template <int NB>
void matmul(const bfloat16* a, const bfloat16* b, float* c) {
  accumulate_tile<NB>(c, [&](MMUL (&acc)[kRows][kCols], int i0, int j0, int k) {
    v32bf av[kRows], bv[kCols];
    for (int r = 0; r < kRows; ++r) av[r] = aie::load_v<32>(a + a_block(i0 + r, k));
    for (int s = 0; s < kCols; ++s) bv[s] = aie::load_v<32>(b + b_block<NB>(k, j0 + s));
    for (int r = 0; r < kRows; ++r)
      for (int s = 0; s < kCols; ++s) acc[r][s].mac(av[r], bv[s]);
  });
}

// out = bf16(c + residual), residual null for none; c fp32, out bf16, both in the C layout.
template <int NB>
void round_out(const float* c, const bfloat16* residual, bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int b = 0; b < kBlocks * NB; ++b) {
    v16f y = aie::load_v<16>(c + b * 16);
    if (residual) y = fadd(y, widen(aie::load_v<16>(residual + b * 16)));
    aie::store_v(out + b * 16, narrow(y));
  }
}

}  // namespace

extern "C" {

void mmv_zero_64x64(float* c) { zero<kBlocks>(c); }
void mmv_zero_64x32(float* c) { zero<8>(c); }

void mmv_bf16_64x64x64(const bfloat16* a, const bfloat16* b, float* c) { matmul<kBlocks>(a, b, c); }
void mmv_bf16_64x64x32(const bfloat16* a, const bfloat16* b, float* c) { matmul<8>(a, b, c); }

// gelu: 0 or 1; residual: null for none.
void mmv_epilogue_64x64(const float* c, const bfloat16* bias, const bfloat16* residual, int32_t gelu,
                        bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int j = 0; j < kBlocks; ++j) {
    v16f bias4 = bias_block(bias, j);
    for (int i = 0; i < kBlocks; ++i) {
      v16f y = bias_act(aie::load_v<16>(c + c_block(i, j)), bias4, gelu);
      if (residual) y = fadd(y, widen(aie::load_v<16>(residual + c_block(i, j))));
      aie::store_v(out + c_block(i, j), narrow(y));
    }
  }
}

// c = act(c + bias) in place, fp32: the first half of the epilogue (bias: the tile's 32 columns).
void mmv_bias_act_64x32(float* c, const bfloat16* bias, int32_t gelu) {
  for (int j = 0; j < 8; ++j) {
    v16f bias4 = bias_block(bias, j);
    for (int i = 0; i < kBlocks; ++i)
      aie::store_v(c + c_block<8>(i, j), bias_act(aie::load_v<16>(c + c_block<8>(i, j)), bias4, gelu));
  }
}

void mmv_round_64x32(const float* c, bfloat16* out) { round_out<8>(c, nullptr, out); }
void mmv_add_round_64x32(const float* c, const bfloat16* residual, bfloat16* out) { round_out<8>(c, residual, out); }

}  // extern "C"

// ---- the layernorm phase of the whole-array design (design.py) ---------------------------------
// A layernorm run on the matmul's own streams, so that one dispatch normalises x and multiplies it:
// a core receives the 64 rows of its block as their 64 x 64 tiles in K order, in the A layout, twice
// for the statistics and once more to normalise the K chunks it owns; gamma and beta come per K
// chunk on the W stream (64 gamma, 64 beta, padding: one W object); each normalised chunk leaves
// as two 64 x 32 tiles in the C layout, the matmul's output tiles. The operations and their order
// are layernormv_bf16's (layernorm/layernorm_vec.cc), so the output is the same bits:
//   lane l of a row's sum adds x[16 t + l] for t = 0, 1, ... in order, then reduce_add;
//   mean = sum * (1/n), var = sum((x - mean)^2) * (1/n), rstd = rsqrt(var + eps),
//   y = bf16(((x - mean) * rstd) * gamma + beta).
// state (fp32, 1152 values): 64 rows x 16 lane sums, then 64 means, then 64 rstd.
// Per call (kernels/aie/cycles.py reads these):
//   lnv_sum_64x64       256 vectors of two 8-value loads, widening and an fp32 add: ~1300 cycles.
//   lnv_sqdev_64x64     the same with a subtract and an fp32 multiply: ~5400 cycles.
//   lnv_mean_64         64 halving-tree reductions and multiplies: ~2000 cycles; lnv_rstd_64 with
//                       the Newton rsqrt: ~4000 cycles.
//   lnv_norm_64x32      128 vectors: subtract, 2 fp32 multiplies, add, narrowing, 4 stores of 4
//                       values: ~5000 cycles.

namespace {

constexpr int kLnSums = 0, kLnMean = 64 * 16, kLnRstd = kLnMean + 64;

// Values 16 g .. 16 g + 15 of row i of a 64 x 64 tile in the A layout: 8 from each of two blocks.
inline v16bf a_row16(const bfloat16* a, int i, int g) {
  const bfloat16* p = a + a_block(i / 4, 2 * g) + (i % 4) * 8;
  return aie::concat(aie::load_v<8>(p), aie::load_v<8>(p + 32));
}

}  // namespace

extern "C" {

// first: 1 for the tile of K chunk 0 (it starts the sums), else 0.
void lnv_sum_64x64(const bfloat16* a, float* state, int32_t first) {
  for (int i = 0; i < 64; ++i) {
    float* lanes = state + kLnSums + i * 16;
    v16f s = first ? widen(a_row16(a, i, 0)) : fadd(aie::load_v<16>(lanes), widen(a_row16(a, i, 0)));
    for (int g = 1; g < 4; ++g) s = fadd(s, widen(a_row16(a, i, g)));
    aie::store_v(lanes, s);
  }
}

void lnv_mean_64(float* state, int32_t n) {
  const v16f inv_n = bcast(1.0f / float(n));
  for (int i = 0; i < 64; ++i)
    state[kLnMean + i] = fmul(bcast(sum(aie::load_v<16>(state + kLnSums + i * 16))), inv_n)[0];
}

void lnv_sqdev_64x64(const bfloat16* a, float* state, int32_t first) {
  for (int i = 0; i < 64; ++i) {
    float* lanes = state + kLnSums + i * 16;
    const v16f mean = bcast(state[kLnMean + i]);
    v16f d = fsub(widen(a_row16(a, i, 0)), mean);
    v16f sq = first ? fmul(d, d) : fadd(aie::load_v<16>(lanes), fmul(d, d));
    for (int g = 1; g < 4; ++g) {
      d = fsub(widen(a_row16(a, i, g)), mean);
      sq = fadd(sq, fmul(d, d));
    }
    aie::store_v(lanes, sq);
  }
}

void lnv_rstd_64(float* state, int32_t n, float eps) {
  const v16f inv_n = bcast(1.0f / float(n));
  for (int i = 0; i < 64; ++i)
    state[kLnRstd + i] = rsqrt(fadd(fmul(bcast(sum(aie::load_v<16>(state + kLnSums + i * 16))), inv_n), bcast(eps)))[0];
}

// out: columns 32 half .. 32 half + 31 of the normalised tile, 64 x 32 in the C layout.
void lnv_norm_64x32(const bfloat16* a, const bfloat16* gamma_beta, const float* state, int32_t half, bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int i = 0; i < 64; ++i) {
    const v16f mean = bcast(state[kLnMean + i]), rstd = bcast(state[kLnRstd + i]);
    for (int q = 0; q < 2; ++q) {
      const int g = 2 * half + q;
      v16f d = fsub(widen(a_row16(a, i, g)), mean);
      v16bf y = narrow(fadd(fmul(fmul(d, rstd), widen(aie::load_v<16>(gamma_beta + 16 * g))),
                            widen(aie::load_v<16>(gamma_beta + 64 + 16 * g))));
      for (int j = 0; j < 4; ++j) aie::store_v(out + c_block<8>(i / 4, 4 * q + j) + (i % 4) * 4, y.extract<4>(j));
    }
  }
}

}  // extern "C"
