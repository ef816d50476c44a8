/* The bf16 matrix products of the `cpu-bf16` backend, on AMX tiles (Intel Xeon 4th generation,
 * "Sapphire Rapids", and later): linear_bf16 and attention_bf16, with cpu_kernels.h compiled once
 * more for that CPU (its epilogue, exponentials and GELU are reused here; its exported copies carry
 * the suffix _amx and go unused).
 *
 * linear_bf16: c = act(bf16(a) · W + bias) (+ res), W rounded to bf16 once when packed
 * (kernels.native.pack_bf16), each row of a rounded to bf16 (nearest, ties to even) as it is read,
 * the products summed in fp32 by the tiles (TDPBF16PS: pairs of bf16 products into fp32), then the
 * fp32 epilogue. Those are the NPU kernels' numerics for a product (bf16 in, fp32 sums); the
 * output stays fp32. One tile product is 16 x 16 outputs over 32 inputs; a pass holds 32 x 32
 * outputs in four tiles, two tiles of A (32 rows) and two of W (32 columns), over the whole K.
 *
 * amx_usable: 1 when this CPU has AMX-BF16 and AVX512-BF16 and Linux granted this process the tile
 * state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16 and later), else 0. Built only by GCC 11 and later
 * on x86-64; elsewhere all three functions exist and say no. */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC target("arch=sapphirerapids,prefer-vector-width=512")
#define ISA _amx
#include "cpu_kernels.h"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AM 32          /* rows of a pass */
#define AN 32          /* columns of a pass */
#define AK 32          /* inputs per tile product (pairs of bf16 in 64-byte tile rows) */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) TileConfig;

static int usable = -1;

/* Every tile 16 rows of 64 bytes: 16 x 32 bf16 (A), 16 pairs x 16 columns (B), 16 x 16 fp32 (C). */
INLINE void load_tile_config(void) {
    TileConfig cfg = {0};
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
}

int amx_usable(void) {
    if (usable < 0) {
        unsigned a, b, c, d, a1, b1, c1, d1;
        int cpu = __get_cpuid_count(7, 0, &a, &b, &c, &d) && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)
                  && (d & (1u << 22)) && (d & (1u << 24)) && (a1 & (1u << 5));    /* AMX-BF16, AMX-TILE, AVX512-BF16 */
        usable = cpu && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    }
    return usable;
}

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

/* c[0:32, 0:32] = A · B over 32·steps inputs, on the four C tiles: A bf16 (32 rows, `lda` elements
 * apart), B as two blocks of 16 columns (b0, b1) in pairs of consecutive inputs (64-byte tile rows);
 * each step takes 32 inputs. Stored to c, rows ldc floats apart. */
INLINE void tile_product(const uint16_t *a, long lda, const uint16_t *b0, const uint16_t *b1, long steps, float *c,
                         long ldc) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (long i = 0; i < steps; i++) {
        _tile_loadd(4, a + i * AK, lda * sizeof(uint16_t));
        _tile_loadd(5, a + 16 * lda + i * AK, lda * sizeof(uint16_t));
        _tile_loadd(6, b0 + i * AK * 16, 64);
        _tile_loadd(7, b1 + i * AK * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ldc * sizeof(float));
    _tile_stored(1, c + 16, ldc * sizeof(float));
    _tile_stored(2, c + 16 * ldc, ldc * sizeof(float));
    _tile_stored(3, c + 16 * ldc + 16, ldc * sizeof(float));
}

/* c[r, :] = act(bf16(a[r, :]) · W + bias) (+ res[r, :]) for r < rows; act = GELU when coeffs is not
 * NULL (cpu_kernels.h's gelu_one). a: (rows, k) fp32, row stride lda (rows may overlap); w: W (k, n)
 * in bf16, packed as (n / 16, k_pad / 2, 16, 2): column block j's pairs of consecutive inputs
 * (kernels.native.pack_bf16), k_pad = k rounded up to 32, W's rows past k zero; n a multiple of 32.
 * Returns 0, -1 when its scratch cannot be allocated, -2 when the tiles are not usable. */
int linear_bf16(const float *a, long lda, const uint16_t *w, long k, long k_pad, long n, const float *bias,
                const float *coeffs, const float *res, long ld_res, float *c, long ldc, long rows) {
    if (!amx_usable()) return -2;
    uint16_t *a16 = aligned_alloc(64, (size_t)AM * k_pad * sizeof(uint16_t));
    if (!a16) return -1;
    float block[AM * AN] __attribute__((aligned(64)));
    load_tile_config();
    for (long m0 = 0; m0 < rows; m0 += AM) {
        long mr = rows - m0 < AM ? rows - m0 : AM;
        for (long r = 0; r < AM; r++)   /* a short last block gets zero rows, computed and dropped */
            row_to_bf16(a + (m0 + (r < mr ? r : 0)) * lda, r < mr ? k : 0, k_pad, a16 + r * k_pad);
        for (long n0 = 0; n0 < n; n0 += AN) {
            const uint16_t *w0 = w + (n0 / 16) * k_pad * 16, *w1 = w0 + k_pad * 16;
            /* a full pass straight into c; a short last one through `block`, its real rows copied */
            if (mr == AM) {
                tile_product(a16, k_pad, w0, w1, k_pad / AK, c + m0 * ldc + n0, ldc);
            } else {
                tile_product(a16, k_pad, w0, w1, k_pad / AK, block, AN);
                for (long r = 0; r < mr; r++) memcpy(c + (m0 + r) * ldc + n0, block + r * AN, AN * sizeof(float));
            }
        }
        /* the epilogue on the pass's rows while they are in L2 (32 x n), in whole rows: it vectorises
         * better than on 32-column blocks (fc1 with GELU 3.3 -> 2.7 ms on one thread) */
        epilogue(c + m0 * ldc, ldc, bias, coeffs, res ? res + m0 * ld_res : NULL, ld_res, mr, n);
    }
    _tile_release();
    free(a16);
    return 0;
}


/* max_j<t p[j], in 16 lanes (one running maximum is a chain of dependent instructions: it took
 * two thirds of this attention's time). */
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
 * zero for t <= j < t_pad; V (t x 64) as the B operand of P · V: vp[c / 16][j / 2][c % 16][j % 2] = bf16(v[j][c]). */
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

/* out[i, :] = Σ_j P[i, j] · bf16(v[j, :]) / Σ_j P[i, j], P[i, j] = bf16(e^(s_ij − max_j s_ij)),
 * s_ij = bf16(q[i, :]) · bf16(k[j, :] · scale), for the query rows i < rows of one head of 64: the
 * NPU kernels' numerics for attention (bf16 products, fp32 sums; the row sums add the bf16 P the
 * products use). q, k, v: (rows or t, 64) with row stride ld (columns of one QKV matrix); out: (rows,
 * 64), stride ld_out. Passes of 32 query rows: their scores (32 x t) in fp32, then P in bf16.
 * Returns 0, -1 when its scratch cannot be allocated, -2 when the tiles are not usable. */
int attention_bf16(const float *q, const float *k, const float *v, long ld, float scale, long t, float *out,
                   long ld_out, long rows) {
    if (!amx_usable()) return -2;
    long t_pad = (t + 31) / 32 * 32;
    size_t halves = (size_t)t_pad * 64 * 2 + (size_t)AM * t_pad + AM * 64, floats = (size_t)AM * t_pad + AM * 64;
    uint16_t *kp = aligned_alloc(64, (halves * sizeof(uint16_t) + floats * sizeof(float) + 63) / 64 * 64);
    if (!kp) return -1;
    uint16_t *vp = kp + t_pad * 64, *p16 = vp + t_pad * 64, *q16 = p16 + AM * t_pad;
    float *s = (float *)(q16 + AM * 64), *o = s + AM * t_pad;
    pack_head_bf16(k, v, ld, scale, t, t_pad, kp, vp);
    load_tile_config();
    for (long r0 = 0; r0 < rows; r0 += AM) {
        long mr = rows - r0 < AM ? rows - r0 : AM;
        for (long r = 0; r < AM; r++)
            row_to_bf16(q + (r0 + (r < mr ? r : 0)) * ld, r < mr ? 64 : 0, 64, q16 + r * 64);
        for (long j0 = 0; j0 < t_pad; j0 += 32)               /* scores: 32 rows x 32 keys a pass */
            tile_product(q16, 64, kp + j0 * 64, kp + (j0 + 16) * 64, 64 / AK, s + j0, t_pad);
        float sums[AM];
        for (long r = 0; r < AM; r++) {                       /* P in bf16, and the sums of what it holds */
            float *sr = s + r * t_pad, max = row_max(sr, t);
            for (long j = 0; j < t; j++) sr[j] -= max;
            exp_row(sr, t, t_pad);
            row_to_bf16(sr, t_pad, t_pad, p16 + r * t_pad);
            __m512 acc = _mm512_setzero_ps();
            for (long j = 0; j < t_pad; j += 16) {
                __m256i h = _mm256_loadu_si256((const __m256i *)(p16 + r * t_pad + j));
                acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
            }
            sums[r] = _mm512_reduce_add_ps(acc);
        }
        for (int c0 = 0; c0 < 64; c0 += 32)                   /* P · V: 32 rows x 32 of the 64 outputs a pass */
            tile_product(p16, t_pad, vp + c0 * t_pad, vp + (c0 + 16) * t_pad, t_pad / AK, o + c0, 64);
        for (long r = 0; r < mr; r++) {
            float inv = 1.0f / sums[r];
            for (int c = 0; c < 64; c++) out[(r0 + r) * ld_out + c] = o[r * 64 + c] * inv;
        }
    }
    _tile_release();
    free(kp);
    return 0;
}

#else

int amx_usable(void) { return 0; }

int linear_bf16(const float *a, long lda, const uint16_t *w, long k, long k_pad, long n, const float *bias,
                const float *coeffs, const float *res, long ld_res, float *c, long ldc, long rows) {
    (void)a, (void)lda, (void)w, (void)k, (void)k_pad, (void)n, (void)bias, (void)coeffs, (void)res;
    (void)ld_res, (void)c, (void)ldc, (void)rows;
    return -2;
}

int attention_bf16(const float *q, const float *k, const float *v, long ld, float scale, long t, float *out,
                   long ld_out, long rows) {
    (void)q, (void)k, (void)v, (void)ld, (void)scale, (void)t, (void)out, (void)ld_out, (void)rows;
    return -2;
}

#endif
