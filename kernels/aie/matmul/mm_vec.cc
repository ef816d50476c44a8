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
//                       ~17 fp32 multiplies (15 instructions each, emulated) and ~16 adds a block:
//                       ~70000 cycles, 30 times the matmul of one K chunk.
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
//   mmv_bias_act_64x32   128 blocks of load, add, store: ~400 cycles; with GELU ~35000.
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
