// LayerNorm with affine over rows of n values (n = d_model, a multiple of 16), fp32 statistics.
//   mean = sum/n, d = x - mean, var = sum(d d)/n, y = bf16((d * rstd) * gamma + beta),
//   rstd = 1 / sqrt(var + eps), sums in the contract's lane order.
// The scratch buffer holds two rows of fp32 (2 n floats): x - mean, and its squares.
#include "../common/contract.h"

using namespace amanuensis;

extern "C" {

void layernorm_bf16(const uint16_t* x, const uint16_t* gamma, const uint16_t* beta, uint16_t* y, int32_t rows,
                    int32_t n, float eps, float* scratch) {
  for (int r = 0; r < rows; ++r) {
    const uint16_t* xr = x + (long)r * n;
    for (int i = 0; i < n; ++i) scratch[i] = bf16_to_f32(xr[i]);
    float mean = lane_sum(scratch, n) / (float)n;
    for (int i = 0; i < n; ++i) {
      scratch[i] = scratch[i] - mean;
      scratch[n + i] = scratch[i] * scratch[i];
    }
    float var = lane_sum(scratch + n, n) / (float)n;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < n; ++i)
      y[(long)r * n + i] = f32_to_bf16((scratch[i] * rstd) * bf16_to_f32(gamma[i]) + bf16_to_f32(beta[i]));
  }
}

}  // extern "C"
