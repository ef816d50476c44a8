// Whisper's log-mel front end on the AIE-ML matrix unit, fp32 throughout (bf16 audio would cost the
// quiet bins their precision). The vectorised variant of mel.cc (the scalar reference it is checked
// against). For one 30 s window (3000 frames, 3008 with padding, 64 a tile):
//   1. spectrum = frames x W: the periodic Hann window folded into the DFT matrix W (400 x 448:
//      each 64-column tile t holds hann*cos of bins 32t..32t+31, then hann*(-sin) of the same; bins
//      past 200 are zero), with mmf_f32_64x64x64 over 64-wide K chunks (K = 400, zero-padded to 448);
//      the frames come straight from the reflect-padded samples (400 every 160: the DMA's pattern)
//   2. power = re*re + im*im per bin (melv_power_64x64): 3008 x 224
//   3. energies = power x F, F the mel filters transposed (224 x n_mels, zero-padded), again with
//      mmf_f32_64x64x64
//   4. melv_log10: log10(max(e, 1e-10)); the window's maximum over its 3000 real frames (melv_max)
//   5. melv_finish: bf16((max(x, max - 8) + 4) * 0.25)
// fp32 products on the bf16 matrix unit: each operand is split exactly into three bf16 pieces
// (vmath.h's split3) and six of the nine piece products are accumulated per 8-wide K step, the
// smallest first (hi*lo, lo*hi, mid*mid, hi*mid, mid*hi, hi*hi; the other three are below 2^-24 of
// the result). W and F are split once, on the host; the frames and the power are split here.
//
// Layouts (common/blocked.h): A fp32 in the A layout; B three bf16 tiles (hi, mid, lo) in the B
// layout; C fp32 in the C layout. melv_power_64x64 writes 64 x 32 fp32, row-major.
//
// Cycle estimate per call:
//   mmf_f32_64x64x64   6 x 64^3 / 128 = 12288 mmul instructions, plus the split of A (per 4 x 4
//                      register block: 4 blocks x 2 vectors x ~8 instructions per 8-wide step):
//                      ~14500 cycles.
//   melv_power_64x64   128 blocks x (2 fp32 multiplies + 1 add) = ~4000 cycles.
//   melv_log10         per 16 values ~13 fp32 multiplies (~15 instructions each) and ~25 others:
//                      ~220 cycles; melv_finish ~25, melv_max ~2 per 16 values.
#include "../common/blocked.h"

using namespace amanuensis::vec;
using namespace amanuensis::blocked;

namespace {
constexpr int kTileElems = 64 * 64;
constexpr int kProducts[6][2] = {{0, 2}, {2, 0}, {1, 1}, {0, 1}, {1, 0}, {0, 0}};   // (A piece, B piece)

// The three bf16 pieces of an fp32 4 x 8 block.
inline void split_block(const float* block, v32bf (&piece)[3]) {
  v16bf lo_half[3], hi_half[3];
  split3(aie::load_v<16>(block), lo_half[0], lo_half[1], lo_half[2]);
  split3(aie::load_v<16>(block + 16), hi_half[0], hi_half[1], hi_half[2]);
  for (int p = 0; p < 3; ++p) piece[p] = aie::concat(lo_half[p], hi_half[p]);
}
}  // namespace

extern "C" {

void mmf_f32_64x64x64(const float* a, const bfloat16* b3, float* c) {
  accumulate_tile(c, [&](MMUL (&acc)[kRows][kCols], int i0, int j0, int k) {
    v32bf av[kRows][3], bv[kCols][3];
    for (int r = 0; r < kRows; ++r) split_block(a + a_block(i0 + r, k), av[r]);
    for (int s = 0; s < kCols; ++s)
      for (int p = 0; p < 3; ++p) bv[s][p] = aie::load_v<32>(b3 + p * kTileElems + b_block(k, j0 + s));
    for (const auto& product : kProducts)
      for (int r = 0; r < kRows; ++r)
        for (int s = 0; s < kCols; ++s) acc[r][s].mac(av[r][product[0]], bv[s][product[1]]);
  });
}

// spec: a C tile whose columns 0..31 are the real parts of 32 bins and 32..63 their imaginary parts.
void melv_power_64x64(const float* spec, float* power) {
  for (int i = 0; i < kBlocks; ++i)
    for (int j = 0; j < 8; ++j) {
      v16f re = aie::load_v<16>(spec + c_block(i, j)), im = aie::load_v<16>(spec + c_block(i, j + 8));
      v16f p = fadd(fmul(re, re), fmul(im, im));
      for (int r = 0; r < 4; ++r) aie::store_v(power + (4 * i + r) * 32 + 4 * j, p.extract<4>(r));
    }
}

void melv_log10(const float* x, int32_t n, float* y) {   // n: a multiple of 16
  for (int i = 0; i < n; i += 16) aie::store_v(y + i, log10(aie::max(aie::load_v<16>(x + i), bcast(1e-10f))));
}

float melv_max(const float* x, int32_t n) {
  v16f m = aie::load_v<16>(x);
  for (int i = 16; i < n; i += 16) m = aie::max(m, aie::load_v<16>(x + i));
  return aie::reduce_max(m);
}

void melv_finish(const float* log_mel, int32_t n, float maximum, bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  v16f floor = fsub(bcast(maximum), bcast(8.0f));
  for (int i = 0; i < n; i += 16) {
    v16f y = aie::max(aie::load_v<16>(log_mel + i), floor);
    aie::store_v(out + i, narrow(fmul(fadd(y, bcast(4.0f)), bcast(0.25f))));
  }
}

}  // extern "C"
