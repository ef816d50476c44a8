// Attention over one 64-query tile of one head, streaming every 64-key tile of the sequence.
//
//   attn_init      m = -inf, l = 0, O = 0
//   attn_step_64   for one key tile: S = Q K^T; keys >= valid_keys masked; running max m,
//                  running sum l, O rescaled and accumulated with bf16(P) V (CONTRACT.md)
//   attn_finish    out = bf16(O / l)
// Q must already be scaled by 1/sqrt(64) (exact in bf16). All tiles row-major 64 x 64.
// State (m, l: 64 floats; O: 64 x 64 floats) stays in the core's data memory across steps.
#include "../common/contract.h"

using namespace amanuensis;

extern "C" {

void attn_init(float* m, float* l, float* o) {
  for (int i = 0; i < TILE; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  for (int i = 0; i < TILE * TILE; ++i) o[i] = 0.0f;
}

void attn_step_64(const uint16_t* q, const uint16_t* k, const uint16_t* v, int32_t valid_keys, float* m,
                  float* l, float* o) {
  float s[TILE];
  uint16_t p16[TILE];
  for (int i = 0; i < TILE; ++i) {
    float row_max = -INFINITY;
    for (int j = 0; j < TILE; ++j) {
      s[j] = j < valid_keys ? dot_chunk(q + i * TILE, 1, k + j * TILE, 1) : -INFINITY;
      row_max = s[j] > row_max ? s[j] : row_max;
    }
    float m_new = m[i] > row_max ? m[i] : row_max;
    float alpha = 0.0f;
    if (m_new != -INFINITY) {
      alpha = exp_f32(m[i] - m_new);
      for (int j = 0; j < TILE; ++j) s[j] = exp_f32(s[j] - m_new);
    } else {
      for (int j = 0; j < TILE; ++j) s[j] = 0.0f;
    }
    l[i] = l[i] * alpha + lane_sum(s, TILE);
    for (int j = 0; j < TILE; ++j) p16[j] = f32_to_bf16(s[j]);
    for (int c = 0; c < TILE; ++c) o[i * TILE + c] = o[i * TILE + c] * alpha + dot_chunk(p16, 1, v + c, TILE);
    m[i] = m_new;
  }
}

void attn_finish(const float* o, const float* l, uint16_t* out) {
  for (int i = 0; i < TILE; ++i)
    for (int c = 0; c < TILE; ++c) out[i * TILE + c] = f32_to_bf16(o[i * TILE + c] / l[i]);
}

}  // extern "C"
