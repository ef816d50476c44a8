// Elementwise GELU, Whisper's exact-erf form: y = bf16(x * ((1 + erf(x / sqrt 2)) * 0.5)).
// (In the encoder graph GELU is fused into the matmul epilogue; this kernel serves standalone use.)
#include "../common/contract.h"

using namespace amanuensis;

extern "C" {

void gelu_bf16(const uint16_t* x, uint16_t* y, int32_t n) {
  for (int i = 0; i < n; ++i) y[i] = f32_to_bf16(gelu_f32(bf16_to_f32(x[i])));
}

// The contract's scalar functions, exported for the host tests.
void contract_exp_f32(const float* x, float* y, int32_t n) {
  for (int i = 0; i < n; ++i) y[i] = exp_f32(x[i]);
}

void contract_gelu_f32(const float* x, float* y, int32_t n) {
  for (int i = 0; i < n; ++i) y[i] = gelu_f32(x[i]);
}

void contract_lane_sum(const float* x, int32_t rows, int32_t n, float* out) {
  for (int r = 0; r < rows; ++r) out[r] = lane_sum(x + (long)r * n, n);
}

void contract_round_bf16(const float* x, uint16_t* y, int32_t n) {
  for (int i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}

}  // extern "C"
