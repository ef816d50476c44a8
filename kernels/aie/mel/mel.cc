// Whisper's log-mel front end, 64 frames per call, fp32 throughout (CONTRACT.md):
//   mel_frames_64  windowed frames -> real DFT as a matmul ([cos | -sin], 400 x 402) -> power
//                  -> mel filters as a matmul (201 x n_mels) -> log10 (floor 1e-10)
//   mel_finish     bf16((max(x, max - 8) + 4) / 4) once the window's maximum is known
// Framing (400 samples every 160, reflect-padded) is the DMA's strided access pattern.
#include "../common/contract.h"

using namespace amanuensis;

constexpr int N_FFT = 400;
constexpr int BINS = N_FFT / 2 + 1;   // 201

extern "C" {

void mel_frames_64(const float* frames, const float* hann, const float* dft, const float* filters_t,
                   int32_t n_mels, float* out) {
  float windowed[N_FFT];
  float power[BINS];
  for (int f = 0; f < TILE; ++f) {
    for (int i = 0; i < N_FFT; ++i) windowed[i] = frames[f * N_FFT + i] * hann[i];
    for (int b = 0; b < BINS; ++b) {
      float re = dot_f32_chunks(windowed, 1, dft + b, 2 * BINS, N_FFT);
      float im = dot_f32_chunks(windowed, 1, dft + BINS + b, 2 * BINS, N_FFT);
      power[b] = re * re + im * im;
    }
    for (int m = 0; m < n_mels; ++m) {
      float e = dot_f32_chunks(power, 1, filters_t + m, n_mels, BINS);
      out[f * n_mels + m] = log10_f32(e > 1e-10f ? e : 1e-10f);
    }
  }
}

void mel_finish(const float* log_mel, int32_t n, float maximum, uint16_t* out) {
  float floor = maximum - 8.0f;
  for (int i = 0; i < n; ++i) {
    float y = log_mel[i] > floor ? log_mel[i] : floor;
    out[i] = f32_to_bf16((y + 4.0f) / 4.0f);
  }
}

void contract_log10_f32(const float* x, float* y, int32_t n) {
  for (int i = 0; i < n; ++i) y[i] = log10_f32(x[i]);
}

}  // extern "C"
