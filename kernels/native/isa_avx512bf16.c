/* The bf16 matrix products of the `cpu-bf16` backend with AVX512-BF16's dot products (VDPBF16PS),
 * for CPUs that have them but no AMX tiles: AMD Zen 4 and later (the Ryzen AI laptops' CPUs among
 * them), Intel Cooper Lake. Same functions and numerics as isa_amx.c, whose formulas they follow:
 * linear_bf16_avx512 and attention_bf16_avx512, with cpu_kernels.h compiled once more for
 * x86-64-v4 with AVX512-BF16 (its epilogue, exponentials and GELU are reused here; its exported
 * copies carry the suffix _v4bf16 and go unused).
 *
 * The register tile: 4 rows x 64 columns in 16 accumulators. Per pair of inputs it loads one
 * 64-byte vector of B for each block of 16 columns (the layout bf16_common.h describes, which is
 * AMX's B operand too, so the packed weights are the same), broadcasts each row's pair of A, and
 * takes 16 dot products, each adding a0·b0 + a1·b1 to fp32 sums.
 *
 * avx512bf16_usable: 1 when this CPU has x86-64-v4 and AVX512-BF16 (and the OS saves the vector
 * state), else 0. Built only by GCC 11 and later on x86-64; elsewhere only avx512bf16_usable exists,
 * and says no. */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC target("arch=x86-64-v4,avx512bf16,prefer-vector-width=512")
#define ISA _v4bf16
#include "cpu_kernels.h"
#include "bf16_common.h"

#define DR 4           /* rows of a register tile */
#define DB 4           /* blocks of 16 columns in a register tile: 64 columns */
_Static_assert(PASS_ROWS % DR == 0, "a tile reads DR rows: a pass's rows past the real ones must be in its buffer");

int avx512bf16_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") && __builtin_cpu_supports("avx512bf16");
}

/* c[0:mr, 0:16·nb] = A · B over 2·pairs inputs (mr <= DR, nb <= DB): A bf16, DR rows lda apart (all
 * DR are read; rows past mr may hold anything); B's blocks of 16 columns bstride elements apart,
 * each `pairs` vectors of 32 bf16. Rows c are ldc floats apart. */
INLINE void dot_tile(const uint16_t *a, long lda, const uint16_t *b, long bstride, long pairs, float *c, long ldc,
                     long mr, int nb) {
    __m512 acc[DR][DB];
#pragma GCC unroll 4
    for (int r = 0; r < DR; r++)
#pragma GCC unroll 4
        for (int i = 0; i < DB; i++) acc[r][i] = _mm512_setzero_ps();
    for (long p = 0; p < pairs; p++) {
        __m512bh bv[DB];
#pragma GCC unroll 4
        for (int i = 0; i < nb; i++) bv[i] = (__m512bh)_mm512_loadu_si512((const void *)(b + i * bstride + p * 32));
#pragma GCC unroll 4
        for (int r = 0; r < DR; r++) {
            int pair;
            memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
            __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
            for (int i = 0; i < nb; i++) acc[r][i] = _mm512_dpbf16_ps(acc[r][i], av, bv[i]);
        }
    }
    for (int r = 0; r < DR; r++)
        if (r < mr)
#pragma GCC unroll 4
            for (int i = 0; i < nb; i++) _mm512_storeu_ps(c + r * ldc + 16 * i, acc[r][i]);
}

/* c[0:rows, 0:n] = A · B for A's bf16 rows (lda apart, rounded up to whole tiles: the rows past
 * `rows` are read and dropped), B in column blocks bstride apart over 2·pairs inputs, n a multiple of 32. */
INLINE void dot_rows(const uint16_t *a, long lda, const uint16_t *b, long bstride, long pairs, long n, float *c,
                     long ldc, long rows) {
    for (long n0 = 0; n0 < n; n0 += 16 * DB) {
        const uint16_t *bn = b + (n0 / 16) * bstride;
        for (long r0 = 0; r0 < rows; r0 += DR) {
            long mr = rows - r0 < DR ? rows - r0 : DR;
            if (n - n0 >= 16 * DB)
                dot_tile(a + r0 * lda, lda, bn, bstride, pairs, c + r0 * ldc + n0, ldc, mr, DB);
            else
                dot_tile(a + r0 * lda, lda, bn, bstride, pairs, c + r0 * ldc + n0, ldc, mr, 2);
        }
    }
}

/* A linear's pass (bf16_common.h) on whole register tiles of rows. */
static void dot_linear_pass(const uint16_t *a16, long k_pad, const uint16_t *w, long n, float *c, long ldc, long mr) {
    dot_rows(a16, k_pad, w, k_pad * 16, k_pad / 2, n, c, ldc, mr);
}

/* bf16_common.h's linear_passes with dot products. Returns 0, -1 when its scratch cannot be allocated,
 * -2 when this CPU lacks AVX512-BF16. */
int linear_bf16_avx512(const float *a, long lda, const uint16_t *w, long k, long k_pad, long n, const float *bias,
                       const float *coeffs, const float *res, long ld_res, float *c, long ldc, long rows) {
    if (!avx512bf16_usable()) return -2;
    return linear_passes(a, lda, w, k, k_pad, n, bias, coeffs, res, ld_res, c, ldc, rows, dot_linear_pass);
}

/* The two products of an attention pass (bf16_common.h), on whole register tiles of rows. */
static void dot_scores(const uint16_t *q16, const uint16_t *kp, long t_pad, float *s, long rows) {
    dot_rows(q16, 64, kp, 64 * 16, 32, t_pad, s, t_pad, rows);
}

static void dot_values(const uint16_t *p16, const uint16_t *vp, long t_pad, float *o, long rows) {
    dot_rows(p16, t_pad, vp, t_pad * 16, t_pad / 2, 64, o, 64, rows);
}

/* bf16_common.h's attention_passes with dot products. Returns 0, -1 when its scratch cannot be
 * allocated, -2 when this CPU lacks AVX512-BF16. */
int attention_bf16_avx512(const float *q, const float *k, const float *v, long ld, float scale, long t, float *out,
                          long ld_out, long rows) {
    if (!avx512bf16_usable()) return -2;
    return attention_passes(q, k, v, ld, scale, t, out, ld_out, rows, dot_scores, dot_values, DR);
}

#else

int avx512bf16_usable(void) { return 0; }   /* and the bindings then look for nothing else */

#endif
