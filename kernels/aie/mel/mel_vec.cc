// Whisper's log-mel front end on the AIE-ML matrix unit, fp32 throughout (bf16 audio would cost the
// quiet bins their precision). The vectorised variant of mel.cc (the scalar reference it is checked
// against), in the tiles of the whole-array design (mel/design.py), which keep a core's operands
// within its 64 KiB: A and C 64 x 32 fp32 (8 KiB), B three 32 x 32 bf16 pieces (6 KiB). For one
// 30 s window (3000 frames, 3072 with padding, 64 a tile):
//   1. spectrum = frames x W: the periodic Hann window folded into the DFT matrix W (bins past 200
//      zero), K = 400 zero-padded to 416; per group of 32 bins two 64 x 32 C tiles, each holding
//      16 bins' hann*cos (columns 0..15), then their hann*(-sin) (16..31), over 13 K chunks of 32
//      (mmf_f32_64x32x32); the frames come straight from the reflect-padded samples (400 every 160:
//      the DMA's pattern)
//   2. power = re*re + im*im per bin (melv_power_64x32): 3072 x 224
//   3. energies = power x F, F the mel filters transposed (224 x n_mels, zero-padded to 32 mels)
//   4. log10(max(e, 1e-10)) and the running maximum over the 3000 real frames and n_mels
//      (melv_log10_max_64x32); the window's maximum from every core's (melv_global_max)
//   5. bf16((max(x, max - 8) + 4) * 0.25) (melv_finish_64x32)
// fp32 products on the bf16 matrix unit: each operand is split exactly into three bf16 pieces
// (vmath.h's split3) and six of the nine piece products are accumulated per 8-wide K step, the
// smallest first (hi*lo, lo*hi, mid*mid, hi*mid, mid*hi, hi*hi; the other three are below 2^-24 of
// the result). W and F are split once, on the host; the frames and the power are split here.
//
// Layouts (common/blocked.h): A fp32 in the A layout (16 x 4 blocks of 4 x 8); B three bf16 pieces
// (hi, mid, lo) in the B layout (4 x 8 blocks of 8 x 4); C fp32 in the C layout (16 x 8 blocks of
// 4 x 4).
//
// Cycle estimate per call (an emulated fp32 multiply ~15 instructions):
//   melv_zero_64x32        the C tile: 128 stores, ~130 cycles.
//   mmf_f32_64x32x32       C += A x B: 6 x 64 x 32 x 32 / 128 = 3072 mmul instructions, plus the
//                          split of A (per 4 x 4 register block: 4 blocks x 2 vectors x ~8
//                          instructions per 8-wide step, partly under the mmuls): ~3700 cycles.
//   melv_power_64x32       a C tile of 16 bins to their power, as columns 16 half .. 16 half + 15
//                          of a 64 x 32 C tile: 64 blocks x (2 fp32 multiplies + 1 add) = ~2000.
//   melv_log10_max_64x32   log10 of a 64 x 32 C tile (per 16 values ~13 fp32 multiplies and ~25
//                          others, ~220 cycles), and the running maximum of its first `rows` rows
//                          and `cols` columns: 128 x ~220 = ~28500 cycles.
//   melv_max_init, melv_max_out_64x32, melv_global_max: a core's running maximum (16 lanes) set
//                          to -inf, written as a whole 64 x 32 tile, and the maximum of such a tile
//                          gathered from every core: ~150 cycles each.
//   melv_finish_64x32      a 64 x 32 tile in the A layout, each value rounded to bf16 and kept as
//                          fp32, written in the C layout (the blocks of 4 x 8 split into 4 x 4 by
//                          filter_even / filter_odd): ~25 per 16 values, ~3500 cycles.
#include "../common/blocked.h"

using namespace amanuensis::vec;
using namespace amanuensis::blocked;

namespace {
constexpr int kProducts[6][2] = {{0, 2}, {2, 0}, {1, 1}, {0, 1}, {1, 0}, {0, 0}};   // (A piece, B piece)

// The three bf16 pieces of an fp32 4 x 8 block.
inline void split_block(const float* block, v32bf (&piece)[3]) {
  v16bf lo_half[3], hi_half[3];
  split3(aie::load_v<16>(block), lo_half[0], lo_half[1], lo_half[2]);
  split3(aie::load_v<16>(block + 16), hi_half[0], hi_half[1], hi_half[2]);
  for (int p = 0; p < 3; ++p) piece[p] = aie::concat(lo_half[p], hi_half[p]);
}
}  // namespace

constexpr int kSide32 = 32 * 32;    // a 32 x 32 B piece
constexpr int kTile32 = 64 * 32;    // a 64 x 32 A or C tile

extern "C" {

void melv_zero_64x32(float* c) {
  for (int i = 0; i < kTile32; i += 16) aie::store_v(c + i, bcast(0.0f));
}

void mmf_f32_64x32x32(const float* a, const bfloat16* b3, float* c) {
  constexpr int NB = 8, KS = 4;
  accumulate_tile<NB, KS>(c, [&](MMUL (&acc)[kRows][kCols], int i0, int j0, int k) {
    v32bf av[kRows][3], bv[kCols][3];
    for (int r = 0; r < kRows; ++r) split_block(a + a_block<KS>(i0 + r, k), av[r]);
    for (int s = 0; s < kCols; ++s)
      for (int p = 0; p < 3; ++p) bv[s][p] = aie::load_v<32>(b3 + p * kSide32 + b_block<NB>(k, j0 + s));
    for (const auto& product : kProducts)
      for (int r = 0; r < kRows; ++r)
        for (int s = 0; s < kCols; ++s) acc[r][s].mac(av[r][product[0]], bv[s][product[1]]);
  });
}

void melv_power_64x32(const float* spec, int32_t half, float* power) {
  for (int i = 0; i < kBlocks; ++i)
    for (int j = 0; j < 4; ++j) {
      v16f re = aie::load_v<16>(spec + c_block<8>(i, j)), im = aie::load_v<16>(spec + c_block<8>(i, j + 4));
      aie::store_v(power + c_block<8>(i, 4 * half + j), fadd(fmul(re, re), fmul(im, im)));
    }
}

void melv_log10_max_64x32(const float* energies, int32_t rows, int32_t cols, float* running, float* out) {
  v16f m = aie::load_v<16>(running);
  for (int i = 0; i < kBlocks; ++i)
    for (int j = 0; j < 8; ++j) {
      v16f y = log10(aie::max(aie::load_v<16>(energies + c_block<8>(i, j)), bcast(1e-10f)));
      aie::store_v(out + c_block<8>(i, j), y);
      if (4 * i < rows && 4 * j < cols) m = aie::max(m, y);
    }
  aie::store_v(running, m);
}

void melv_max_init(float* running) { aie::store_v(running, bcast(-__builtin_inff())); }

void melv_max_out_64x32(const float* running, float* out) {
  v16f m = bcast(aie::reduce_max(aie::load_v<16>(running)));
  for (int i = 0; i < kTile32; i += 16) aie::store_v(out + i, m);
}

void melv_global_max(const float* maxima, float* maximum) {
  v16f m = aie::load_v<16>(maxima);
  for (int i = 16; i < kTile32; i += 16) m = aie::max(m, aie::load_v<16>(maxima + i));
  aie::store_v(maximum, bcast(aie::reduce_max(m)));
}

void melv_finish_64x32(const float* x, const float* maximum, float* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  v16f floor = fsub(aie::load_v<16>(maximum), bcast(8.0f));
  for (int i = 0; i < kBlocks; ++i)
    for (int k = 0; k < 4; ++k) {                     // A block (i, k): 4 rows x 8 columns
      const float* block = x + a_block<4>(i, k);
      v16f y[2];
      for (int h = 0; h < 2; ++h) {
        v16f v = aie::max(aie::load_v<16>(block + 16 * h), floor);
        y[h] = widen(narrow(fmul(fadd(v, bcast(4.0f)), bcast(0.25f))));
      }
      aie::vector<float, 32> both = aie::concat(y[0], y[1]);            // the block's 4 rows of 8, row-major
      aie::store_v(out + c_block<8>(i, 2 * k), aie::filter_even(both, 4));
      aie::store_v(out + c_block<8>(i, 2 * k + 1), aie::filter_odd(both, 4));
    }
}

}  // extern "C"
