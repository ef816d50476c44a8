// Attention over one 64-query tile of one head, walking every 64-key tile of the sequence with a
// running max, running sum and rescale (flash style), on the AIE-ML matrix unit. The vectorised
// variant of attention.cc (the scalar reference it is checked against).
//
//   attnv_init      m = -inf, l = 0, O = 0
//   attnv_step_64   one key tile: S = Q K^T on the matrix unit (K^T in the B layout, from
//                   attnv_k_layout); keys >= valid_keys set to -inf; per query row m' = max(m, max S),
//                   alpha = exp(m - m'), P = exp(S - m'), l = l alpha + sum P; O = O alpha + bf16(P) V
//                   (the rescaled O is the accumulator the P V products are added into)
//   attnv_finish    out = bf16(O * (1 / l))
//   attnv_v_layout  V from the A layout to the B layout, in place: the whole-array design (design.py)
//                   sends K and V on one stream, which the DMA blocks one way: 8 groups of 16
//                   block loads, 32 filters, 16 stores: ~600 cycles a tile
//   attnv_k_layout  K^T in the B layout from K in the A layout, in place, once per key tile instead
//                   of a transpose per K block and query band: 128 block loads, transposes and
//                   stores along the permutation's cycles: ~500 cycles a tile
// Q is pre-scaled by 1/sqrt(64) (exact in bf16). Query rows are processed 4 at a time, so only one
// 4 x 64 band of scores exists at once.
//
// Layouts (common/blocked.h): Q and K (rows x dims) in the A layout, V (keys x dims) in the B
// layout, O (fp32) and out (bf16) in the C layout; m, l: 64 fp32 each, one per query row.
// State (m, l, O: 16.5 KB) stays in the core's data memory across steps.
//
// Cycle estimate per attnv_step_64 (fp32 multiply = ~15 instructions, emulated; see vmath.h):
//   Q K^T and P V: 2 x 64^3 / 128 = 4096 mmul instructions.
//   exp in bf16 products (vmath.h) of the 64 x 64 scores: 256 vectors x ~41 instructions = ~10500;
//   maxima, row sums, the bf16 narrowing: ~1000. ~15600 cycles a key tile, the exp ~67% of it.
//   A band of 4 query rows whose running maxima change also rescales: its alphas' exp (one vector),
//   l's 4 and O's 16 fp32 multiplies: ~340 cycles a band, ~5400 a tile when all 16 bands rescale (as
//   on the first key tile). A band whose maxima stay skips that work (alpha = exp(0) = 1 exactly, so
//   the bits are the same); how many do depends on the scores (kernels/aie/cycles.py).
// attnv_finish: 64 reciprocals (~50 instructions each, per row) and 256 block multiplies: ~7000.
// attnv_init: 8 + 256 stores: ~300.
#include "../common/blocked.h"

using namespace amanuensis::vec;
using namespace amanuensis::blocked;

namespace {
constexpr int kTile = 64;

// A 4 x 4 block whose row r holds value[r] in all 4 lanes.
inline v16f per_row(const float (&value)[4]) {
  return aie::concat(aie::broadcast<float, 4>(value[0]), aie::broadcast<float, 4>(value[1]),
                     aie::broadcast<float, 4>(value[2]), aie::broadcast<float, 4>(value[3]));
}

// The 4 x 64 band of scores of query rows 4i..4i+3: 16 blocks of S, each over 8 dim steps (K as
// Kᵀ in the B layout, attnv_k_layout's).
void scores(const bfloat16* q, const bfloat16* k, int i, float (&band)[4][kTile]) {
  for (int j = 0; j < kBlocks; ++j) {
    MMUL s;
    for (int step = 0; step < kSteps; ++step)
      s.mac(aie::load_v<32>(q + a_block(i, step)), aie::load_v<32>(k + b_block(step, j)));
    v16f block = s.to_vector<float>();
    for (int r = 0; r < 4; ++r) aie::store_v(&band[r][4 * j], block.extract<4>(r));
  }
}

// The band's rows 4i..4i+3: mask the keys past valid_keys and update the running maxima (one exp
// gives the 4 rows' alphas), then per row P = exp(S - m'), left as bf16(P) in p, and the running sum.
// Returns whether any of the 4 maxima changed. If none did, every alpha is exp(0) = 1 exactly, so
// l * alpha = l and O * alpha = O: the alphas' exp and the multiplies are skipped, and the bits are
// the same as with them.
bool softmax_band(float (&band)[4][kTile], int valid_keys, float* m, float* l, bfloat16 (&p)[4][kTile],
                  float (&alpha)[4]) {
  alignas(32) float m_old[16] = {}, m_new[16] = {};
  bool rescale = false;
  for (int r = 0; r < 4; ++r) {
    v16f top = bcast(-INFINITY);
    for (int c = 0; c < 4; ++c) {
      v16f chunk = aie::load_v<16>(&band[r][16 * c]);
      int valid = valid_keys - 16 * c;
      if (valid < 16) {
        auto keep = aie::mask<16>::from_uint32(valid <= 0 ? 0u : (1u << valid) - 1u);
        chunk = aie::select(bcast(-INFINITY), chunk, keep);
        aie::store_v(&band[r][16 * c], chunk);
      }
      top = aie::max(top, chunk);
    }
    float row_max = aie::reduce_max(top);
    m_old[r] = m[r];
    m_new[r] = m[r] > row_max ? m[r] : row_max;
    rescale = rescale || m_new[r] != m_old[r];
  }
  v16f alphas = rescale ? exp(fsub(aie::load_v<16>(m_old), aie::load_v<16>(m_new))) : bcast(1.0f);   // lanes 0..3
  for (int r = 0; r < 4; ++r) {
    v16f sum = bcast(0.0f);
    for (int c = 0; c < 4; ++c) {
      v16f e = exp(fsub(aie::load_v<16>(&band[r][16 * c]), bcast(m_new[r])));
      sum = c == 0 ? e : fadd(sum, e);
      aie::store_v(&p[r][16 * c], narrow(e));
    }
    alpha[r] = alphas.get(r);
    v16f kept = rescale ? fmul(bcast(l[r]), bcast(alpha[r])) : bcast(l[r]);
    l[r] = fadd(kept, bcast(aie::reduce_add(sum))).get(0);
    m[r] = m_new[r];
  }
  return rescale;
}
}  // namespace

extern "C" {

void attnv_init(float* m, float* l, float* o) {
  for (int r = 0; r < kTile; r += 16) {
    aie::store_v(m + r, bcast(-INFINITY));
    aie::store_v(l + r, bcast(0.0f));
  }
  for (int b = 0; b < kBlocks * kBlocks; ++b) aie::store_v(o + b * 16, bcast(0.0f));
}

void attnv_step_64(const bfloat16* q, const bfloat16* k, const bfloat16* v, int32_t valid_keys, float* m,
                   float* l, float* o) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int i = 0; i < kBlocks; ++i) {                   // query rows 4i .. 4i+3
    alignas(32) float band[4][kTile];
    alignas(32) bfloat16 p[4][kTile];
    float alpha[4];
    scores(q, k, i, band);
    bool rescale = softmax_band(band, valid_keys, m + 4 * i, l + 4 * i, p, alpha);
    v16f alphas = per_row(alpha);
    for (int j = 0; j < kBlocks; ++j) {                 // O's dim blocks
      v16f o_block = aie::load_v<16>(o + c_block(i, j));
      MMUL acc(acc16(rescale ? fmul(o_block, alphas) : o_block));
      for (int step = 0; step < kSteps; ++step) {      // keys 8 at a time
        v32bf p_block = aie::concat(aie::load_v<8>(&p[0][8 * step]), aie::load_v<8>(&p[1][8 * step]),
                                    aie::load_v<8>(&p[2][8 * step]), aie::load_v<8>(&p[3][8 * step]));
        acc.mac(p_block, aie::load_v<32>(v + b_block(step, j)));
      }
      aie::store_v(o + c_block(i, j), acc.to_vector<float>());
    }
  }
}

// Keys 8s .. 8s+7 are A blocks (2s, t) and (2s+1, t), t < 8, and B blocks (s, j), j < 16: the same 16
// blocks of memory either way, so each group is loaded whole and stored back rearranged.
void attnv_v_layout(bfloat16* v) {
  for (int s = 0; s < kSteps; ++s) {
    v32bf top[8], bottom[8];
    for (int t = 0; t < 8; ++t) {
      top[t] = aie::load_v<32>(v + a_block(2 * s, t));
      bottom[t] = aie::load_v<32>(v + a_block(2 * s + 1, t));
    }
    for (int t = 0; t < 8; ++t) {               // B block (s, 2t): dims 8t .. 8t+3; (s, 2t+1): 8t+4 .. 8t+7
      aie::store_v(v + b_block(s, 2 * t), aie::concat(aie::filter_even(top[t], 4), aie::filter_even(bottom[t], 4)));
      aie::store_v(v + b_block(s, 2 * t + 1), aie::concat(aie::filter_odd(top[t], 4), aie::filter_odd(bottom[t], 4)));
    }
  }
}

// Kᵀ in the B layout from K in the A layout, in place: A block (j, s) (4 keys x 8 dims) is B block
// (s, j) transposed; the blocks move along the cycles of that permutation, one held in registers.
void attnv_k_layout(bfloat16* k) {
  bool moved[kBlocks * kSteps] = {};
  for (int start = 0; start < kBlocks * kSteps; ++start) {
    if (moved[start]) continue;
    v32bf carry = aie::transpose(aie::load_v<32>(k + 32 * start), 4, 8);
    for (int p = start;;) {                       // block p = 8 j + s goes to 16 s + j
      int to = kBlocks * (p % kSteps) + p / kSteps;
      moved[p] = true;
      if (to == start) {
        aie::store_v(k + 32 * to, carry);
        break;
      }
      v32bf next = aie::transpose(aie::load_v<32>(k + 32 * to), 4, 8);
      aie::store_v(k + 32 * to, carry);
      carry = next;
      p = to;
    }
  }
}

void attnv_finish(const float* o, const float* l, bfloat16* out) {
  aie::set_rounding(aie::rounding_mode::conv_even);
  for (int i = 0; i < kBlocks; ++i) {
    float inv[4];
    for (int r = 0; r < 4; ++r) inv[r] = recip(bcast(l[4 * i + r])).get(0);
    v16f scale = per_row(inv);
    for (int j = 0; j < kBlocks; ++j)
      aie::store_v(out + c_block(i, j), narrow(fmul(aie::load_v<16>(o + c_block(i, j)), scale)));
  }
}

}  // extern "C"
