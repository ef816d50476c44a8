/* What the two bf16 products of the `cpu-bf16` backend share: the rounding of fp32 rows to bf16,
 * the layout of one attention head's K and V as the products' B operand, and the softmax whose
 * numerators the product with V takes in bf16. Included after cpu_kernels.h (INLINE, exp_row, pick)
 * by isa_amx.c (AMX tiles) and isa_avx512bf16.c (AVX512-BF16 dot products), each under its own
 * target, so each compiles its own copy. Both products read B in the same layout: for each block of
 * 16 columns, pairs of consecutive inputs, b[block][i / 2][column % 16][i % 2], 64 bytes per pair. */
#include <stdint.h>
#include <immintrin.h>

#define PASS_ROWS 32   /* rows of a pass, in a linear and in attention: rounded to bf16 once, then multiplied */

/* dst[0 : k_pad] ← bf16(src[0 : k]), zero past k: round to nearest, ties to even (VCVTNE2PS2BF16). */
INLINE void row_to_bf16(const float *src, long k, long k_pad, uint16_t *dst) {
    for (long j = 0; j < k_pad; j += 32) {
        long left = k - j;
        __mmask16 lo = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        __mmask16 hi = left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
        __m512 x0 = _mm512_maskz_loadu_ps(lo, src + j), x1 = _mm512_maskz_loadu_ps(hi, src + j + 16);
        _mm512_storeu_si512((void *)(dst + j), (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
    }
}

/* A pass's rows as its products read them: dst row r (r < PASS_ROWS, width_pad apart) ← bf16(src
 * row r, `width` of them, zero past it) for r < mr, and zero for the rows past mr, which the
 * products compute and drop. */
INLINE void pass_to_bf16(const float *src, long ld, long width, long width_pad, long mr, uint16_t *dst) {
    for (long r = 0; r < PASS_ROWS; r++)
        row_to_bf16(src + (r < mr ? r : 0) * ld, r < mr ? width : 0, width_pad, dst + r * width_pad);
}

/* One pass of a linear, by the file that includes this one: c[0:mr, 0:n] = a16 · W, a16 PASS_ROWS
 * rows of k_pad bf16 (the rows past mr zero), W packed as kernels.native.pack_bf16 lays it out. */
typedef void (*LinearProduct)(const uint16_t *a16, long k_pad, const uint16_t *w, long n, float *c, long ldc,
                              long mr);

/* c[r, :] = act(bf16(a[r, :]) · W + bias) (+ res[r, :]) for r < rows; act = GELU when coeffs is not
 * NULL (cpu_kernels.h's gelu_one). a: (rows, k) fp32, row stride lda (rows may overlap); w: W (k, n)
 * in bf16, packed as (n / 16, k_pad / 2, 16, 2): column block j's pairs of consecutive inputs
 * (kernels.native.pack_bf16), k_pad = k rounded up to 32, W's rows past k zero; n a multiple of 32.
 * Passes of PASS_ROWS rows, each rounded to bf16 as it is read, multiplied by `product`, then the
 * fp32 epilogue on its rows while they are in L2 (PASS_ROWS x n), in whole rows: it vectorises better
 * than on column blocks (fc1 with GELU 3.3 -> 2.7 ms on one thread, AMX). Returns 0, or -1 when
 * its scratch cannot be allocated. */
INLINE int linear_passes(const float *a, long lda, const uint16_t *w, long k, long k_pad, long n, const float *bias,
                         const float *coeffs, const float *res, long ld_res, float *c, long ldc, long rows,
                         LinearProduct product) {
    uint16_t *a16 = aligned_alloc(64, (size_t)PASS_ROWS * k_pad * sizeof(uint16_t));
    if (!a16) return -1;
    for (long m0 = 0; m0 < rows; m0 += PASS_ROWS) {
        long mr = rows - m0 < PASS_ROWS ? rows - m0 : PASS_ROWS;
        pass_to_bf16(a + m0 * lda, lda, k, k_pad, mr, a16);
        product(a16, k_pad, w, n, c + m0 * ldc, ldc, mr);
        epilogue(c + m0 * ldc, ldc, bias, coeffs, res ? res + m0 * ld_res : NULL, ld_res, mr, n);
    }
    free(a16);
    return 0;
}

/* max_j<t p[j], in 16 lanes (one running maximum is a chain of dependent instructions: it took
 * two thirds of the AMX attention's time). */
INLINE float row_max(const float *p, long t) {
    float lanes[16], max = -__builtin_inff();
    for (int l = 0; l < 16; l++) lanes[l] = -__builtin_inff();
    long j;
    for (j = 0; j + 16 <= t; j += 16)
        for (int l = 0; l < 16; l++) lanes[l] = pick(p[j + l] > lanes[l], p[j + l], lanes[l]);
    for (; j < t; j++) max = pick(p[j] > max, p[j], max);
    for (int l = 0; l < 16; l++) max = pick(lanes[l] > max, lanes[l], max);
    return max;
}

/* K (t x 64) times scale as the B operand of Q · Kᵀ: kp[j / 16][d / 2][j % 16][d % 2] = bf16(k[j][d] · scale),
 * zero for t <= j < t_pad; V (t x 64) as the B operand of P · V: vp[c / 16][j / 2][c % 16][j % 2] = bf16(v[j][c]).
 * t_pad a multiple of 32. */
INLINE void pack_head_bf16(const float *k, const float *v, long ld, float scale, long t, long t_pad, uint16_t *kp,
                           uint16_t *vp) {
    float row[64] __attribute__((aligned(64)));
    uint16_t bits[64] __attribute__((aligned(64)));
    memset(kp, 0, (size_t)t_pad * 64 * sizeof(uint16_t));
    memset(vp, 0, (size_t)t_pad * 64 * sizeof(uint16_t));
    for (long j = 0; j < t; j++) {
        for (int d = 0; d < 64; d++) row[d] = k[j * ld + d] * scale;
        row_to_bf16(row, 64, 64, bits);
        uint16_t *kb = kp + (j / 16) * 64 * 16 + (j % 16) * 2;
        for (int d = 0; d < 64; d++) kb[(d / 2) * 32 + d % 2] = bits[d];
        row_to_bf16(v + j * ld, 64, 64, bits);
        uint16_t *vb = vp + (j / 2) * 32 + j % 2;
        for (int c = 0; c < 64; c++) vb[(c / 16) * t_pad * 16 + (c % 16) * 2] = bits[c];
    }
}

/* One row of scores s[0 : t] (fp32) → p[0 : t_pad] = bf16(e^(s − max s)), zero past t (s is
 * overwritten); returns Σ p as rounded, so that the normalisation matches what the product with V
 * uses. */
INLINE float probabilities_bf16(float *s, long t, long t_pad, uint16_t *p) {
    float max = row_max(s, t);
    for (long j = 0; j < t; j++) s[j] -= max;
    exp_row(s, t, t_pad);
    row_to_bf16(s, t_pad, t_pad, p);
    __m512 acc = _mm512_setzero_ps();
    for (long j = 0; j < t_pad; j += 16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)(p + j));
        acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    return _mm512_reduce_add_ps(acc);
}

/* The two products of one pass of attention, by the file that includes this one:
 * scores: s (rows x t_pad, fp32) = q16 (rows x 64) · kp's Kᵀ; values: o (rows x 64) = p16 (rows x
 * t_pad) · vp's V; q16, p16 and rows as attention_passes gives them. */
typedef void (*ScoresProduct)(const uint16_t *q16, const uint16_t *kp, long t_pad, float *s, long rows);
typedef void (*ValuesProduct)(const uint16_t *p16, const uint16_t *vp, long t_pad, float *o, long rows);

/* out[i, :] = Σ_j P[i, j] · bf16(v[j, :]) / Σ_j P[i, j], P[i, j] = bf16(e^(s_ij − max_j s_ij)),
 * s_ij = bf16(q[i, :]) · bf16(k[j, :] · scale), for the query rows i < rows of one head of 64: the
 * NPU kernels' numerics for attention (bf16 products, fp32 sums; the row sums add the bf16 P the
 * products use). q, k, v: (rows or t, 64) with row stride ld (columns of one QKV matrix); out: (rows,
 * 64), stride ld_out. Passes of 32 query rows: their scores in fp32, then P in bf16; a pass's
 * products take its rows rounded up to `row_step` (the rows past the real ones are zero, computed
 * and dropped). Returns 0, or -1 when its scratch cannot be allocated. */
INLINE int attention_passes(const float *q, const float *k, const float *v, long ld, float scale, long t, float *out,
                            long ld_out, long rows, ScoresProduct scores, ValuesProduct values, long row_step) {
    long t_pad = (t + 31) / 32 * 32;
    size_t halves = (size_t)t_pad * 64 * 2 + (size_t)PASS_ROWS * t_pad + PASS_ROWS * 64;
    size_t floats = (size_t)PASS_ROWS * t_pad + PASS_ROWS * 64;
    uint16_t *kp = aligned_alloc(64, (halves * sizeof(uint16_t) + floats * sizeof(float) + 63) / 64 * 64);
    if (!kp) return -1;
    uint16_t *vp = kp + t_pad * 64, *p16 = vp + t_pad * 64, *q16 = p16 + PASS_ROWS * t_pad;
    float *s = (float *)(q16 + PASS_ROWS * 64), *o = s + PASS_ROWS * t_pad;
    pack_head_bf16(k, v, ld, scale, t, t_pad, kp, vp);
    for (long r0 = 0; r0 < rows; r0 += PASS_ROWS) {
        long mr = rows - r0 < PASS_ROWS ? rows - r0 : PASS_ROWS, n = (mr + row_step - 1) / row_step * row_step;
        pass_to_bf16(q + r0 * ld, ld, 64, 64, mr, q16);
        scores(q16, kp, t_pad, s, n);
        float sums[PASS_ROWS];
        for (long r = 0; r < n; r++)                          /* P in bf16, and the sums of what it holds */
            sums[r] = probabilities_bf16(s + r * t_pad, t, t_pad, p16 + r * t_pad);
        values(p16, vp, t_pad, o, n);
        for (long r = 0; r < mr; r++) {
            float inv = 1.0f / sums[r];
            for (int c = 0; c < 64; c++) out[(r0 + r) * ld_out + c] = o[r * 64 + c] * inv;
        }
    }
    free(kp);
    return 0;
}
