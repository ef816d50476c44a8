// The blocked 64 x 64 tile layouts of the matrix unit's operands (mmul<4, 8, 4>), which the DMA
// of a whole-array design produces so that every load is one contiguous vector (row-major within
// a block, blocks row-major):
//   A  bf16 (or fp32) as 16 x 8 blocks of 4 x 8 (rows x K)   block (i, k) at (i * 8 + k) * 32
//   B  bf16 as 8 x 16 blocks of 8 x 4 (K x columns)           block (k, j) at (k * 16 + j) * 32
//   C  fp32 (or bf16) as 16 x 16 blocks of 4 x 4              block (i, j) at (i * 16 + j) * 16
// A tile 32 columns wide (the whole-array matmul's output tile per core: 64 x 32) keeps the same
// blocks, 8 of them along its columns: B 8 x 8 blocks of 8 x 4, C 16 x 8 blocks of 4 x 4; a K side
// of 32 (the mel design's fp32 tiles) has 4 K steps: A 16 x 4 blocks, B 4 x 8 blocks.
#pragma once
#include "vmath.h"

namespace amanuensis::blocked {

using MMUL = aie::mmul<4, 8, 4, bfloat16, bfloat16, accfloat>;

constexpr int kBlocks = 16;     // 4-row (or 4-column) blocks along a 64 side
constexpr int kSteps = 8;       // 8-wide K steps along a 64 side
constexpr int kRows = 4;        // register blocking: kRows x kCols C blocks held in accumulators
constexpr int kCols = 4;

template <int KS = kSteps> inline int a_block(int i, int k) { return (i * KS + k) * 32; }
// NB: blocks along the tile's columns (kBlocks for 64 columns, 8 for 32).
template <int NB = kBlocks> inline int b_block(int k, int j) { return (k * NB + j) * 32; }
template <int NB = kBlocks> inline int c_block(int i, int j) { return (i * NB + j) * 16; }

// C += the products that step(acc, i0, j0, k) adds at K step k, for the 64 x (4 NB) fp32 tile c: each
// group of kRows x kCols C blocks (rows from block i0, columns from block j0) stays in accumulators
// over the KS steps (8 for a K side of 64), so C is loaded and stored once per call.
template <int NB = kBlocks, int KS = kSteps, typename Step>
inline void accumulate_tile(float* c, Step&& step) {
  for (int i0 = 0; i0 < kBlocks; i0 += kRows)
    for (int j0 = 0; j0 < NB; j0 += kCols) {
      MMUL acc[kRows][kCols];
      for (int r = 0; r < kRows; ++r)
        for (int s = 0; s < kCols; ++s)
          acc[r][s] = MMUL(vec::acc16(aie::load_v<16>(c + c_block<NB>(i0 + r, j0 + s))));
      for (int k = 0; k < KS; ++k) step(acc, i0, j0, k);
      for (int r = 0; r < kRows; ++r)
        for (int s = 0; s < kCols; ++s) aie::store_v(c + c_block<NB>(i0 + r, j0 + s), acc[r][s].to_vector<float>());
    }
}

}  // namespace amanuensis::blocked
