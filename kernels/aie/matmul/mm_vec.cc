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
#include "../common/blocked.h"

using namespace amanuensis::vec;
using namespace amanuensis::blocked;

extern "C" {

void mmv_zero_64x64(float* c) {
  for (int b = 0; b < kBlocks * kBlocks; ++b) aie::store_v(c + b * 16, aie::zeros<float, 16>());
}

void mmv_bf16_64x64x64(const bfloat16* a, const bfloat16* b, float* c) {
  accumulate_tile(c, [&](MMUL (&acc)[kRows][kCols], int i0, int j0, int k) {
    v32bf av[kRows], bv[kCols];
    for (int r = 0; r < kRows; ++r) av[r] = aie::load_v<32>(a + a_block(i0 + r, k));
    for (int s = 0; s < kCols; ++s) bv[s] = aie::load_v<32>(b + b_block(k, j0 + s));
    for (int r = 0; r < kRows; ++r)
      for (int s = 0; s < kCols; ++s) acc[r][s].mac(av[r], bv[s]);
  });
}

// gelu: 0 or 1; residual: null for none.
void mmv_epilogue_64x64(const float* c, const bfloat16* bias, const bfloat16* residual, int32_t gelu,
                        bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int q = 0; q < 4; ++q) {                          // 16 columns of bias at a time: 4 column blocks
    v16f bias16 = widen(aie::load_v<16>(bias + q * 16));
    for (int part = 0; part < 4; ++part) {
      auto b4 = bias16.extract<4>(part);
      v16f bias_block = aie::concat(b4, b4, b4, b4);      // the block's 4 columns, on each of its 4 rows
      int j = q * 4 + part;
      for (int i = 0; i < kBlocks; ++i) {
        v16f y = fadd(aie::load_v<16>(c + c_block(i, j)), bias_block);
        if (gelu) y = amanuensis::vec::gelu(y);
        if (residual) y = fadd(y, widen(aie::load_v<16>(residual + c_block(i, j))));
        aie::store_v(out + c_block(i, j), narrow(y));
      }
    }
  }
}

}  // extern "C"
