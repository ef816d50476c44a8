// Matmul tiles, 64 x 64 x 64, bf16 in, fp32 accumulator, with a fused epilogue.
//
// The design streams, for each 64 x 64 output tile, the K/64 pairs of A and B tiles
// through mm_bf16_64x64x64 (acc += A B), then runs mm_epilogue_64x64 once:
// out = bf16(act(acc + bias) + residual), act = GELU or identity.
// Layouts: row-major tiles; A (64 x 64) rows are output rows, B (64 x 64) is K x N.
#include "../common/contract.h"

using namespace amanuensis;

extern "C" {

void mm_zero_64x64(float* acc) {
  for (int i = 0; i < TILE * TILE; ++i) acc[i] = 0.0f;
}

void mm_bf16_64x64x64(const uint16_t* a, const uint16_t* b, float* acc) {
  for (int i = 0; i < TILE; ++i)
    for (int j = 0; j < TILE; ++j) acc[i * TILE + j] += dot_chunk(a + i * TILE, 1, b + j, TILE);
}

// bias: 64 values for this tile's columns; residual: 64 x 64 tile or null; gelu: 0 or 1.
void mm_epilogue_64x64(const float* acc, const uint16_t* bias, const uint16_t* residual, int32_t gelu,
                       uint16_t* out) {
  for (int i = 0; i < TILE; ++i)
    for (int j = 0; j < TILE; ++j) {
      float y = acc[i * TILE + j] + bf16_to_f32(bias[j]);
      if (gelu) y = gelu_f32(y);
      if (residual) y = y + bf16_to_f32(residual[i * TILE + j]);
      out[i * TILE + j] = f32_to_bf16(y);
    }
}

}  // extern "C"
