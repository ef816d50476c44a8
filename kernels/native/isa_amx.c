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
 * on x86-64; elsewhere only amx_usable exists, and says no. */
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC target("arch=sapphirerapids,prefer-vector-width=512")
#define ISA _amx
#include "cpu_kernels.h"
#include "bf16_common.h"
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define AM 32          /* rows of a pass: two tiles of 16 */
_Static_assert(AM == PASS_ROWS, "a pass of bf16_common.h is one pass of the tiles: the products ignore its rows");
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

/* A linear's pass (bf16_common.h) in 32-column passes on the four C tiles: a full pass straight into
 * c; a short last one through a block, its real rows copied. */
static void amx_linear_pass(const uint16_t *a16, long k_pad, const uint16_t *w, long n, float *c, long ldc, long mr) {
    float block[AM * AN] __attribute__((aligned(64)));
    for (long n0 = 0; n0 < n; n0 += AN) {
        const uint16_t *w0 = w + (n0 / 16) * k_pad * 16, *w1 = w0 + k_pad * 16;
        if (mr == AM) {
            tile_product(a16, k_pad, w0, w1, k_pad / AK, c + n0, ldc);
        } else {
            tile_product(a16, k_pad, w0, w1, k_pad / AK, block, AN);
            for (long r = 0; r < mr; r++) memcpy(c + r * ldc + n0, block + r * AN, AN * sizeof(float));
        }
    }
}

/* bf16_common.h's linear_passes on AMX tiles. Returns 0, -1 when its scratch cannot be allocated, -2
 * when the tiles are not usable. */
int linear_bf16(const float *a, long lda, const uint16_t *w, long k, long k_pad, long n, const float *bias,
                const float *coeffs, const float *res, long ld_res, float *c, long ldc, long rows) {
    if (!amx_usable()) return -2;
    load_tile_config();
    int status = linear_passes(a, lda, w, k, k_pad, n, bias, coeffs, res, ld_res, c, ldc, rows, amx_linear_pass);
    _tile_release();
    return status;
}

/* The two products of an attention pass (bf16_common.h), 32 rows at a time on the four C tiles. */
static void amx_scores(const uint16_t *q16, const uint16_t *kp, long t_pad, float *s, long rows) {
    (void)rows;                                               /* always the pass's 32 */
    for (long j0 = 0; j0 < t_pad; j0 += 32)
        tile_product(q16, 64, kp + j0 * 64, kp + (j0 + 16) * 64, 64 / AK, s + j0, t_pad);
}

static void amx_values(const uint16_t *p16, const uint16_t *vp, long t_pad, float *o, long rows) {
    (void)rows;
    for (int c0 = 0; c0 < 64; c0 += 32)
        tile_product(p16, t_pad, vp + c0 * t_pad, vp + (c0 + 16) * t_pad, t_pad / AK, o + c0, 64);
}

/* bf16_common.h's attention_passes on AMX tiles. Returns 0, -1 when its scratch cannot be
 * allocated, -2 when the tiles are not usable. */
int attention_bf16(const float *q, const float *k, const float *v, long ld, float scale, long t, float *out,
                   long ld_out, long rows) {
    if (!amx_usable()) return -2;
    load_tile_config();
    int status = attention_passes(q, k, v, ld, scale, t, out, ld_out, rows, amx_scores, amx_values, PASS_ROWS);
    _tile_release();
    return status;
}

#else

int amx_usable(void) { return 0; }   /* and the bindings then look for nothing else */

#endif
