/* Native kernels of the `cpu` backend: the parts numpy cannot do without many passes or the GIL.
 *
 * The numpy kernels in kernels/cpu.py and kernels/reference.py are the specification; tests check
 * every function here against them. Everything is fp32 in, fp32 accumulate, row-major.
 *
 *  - bias_gelu, bias_residual, layernorm: one pass over each row instead of numpy's 5-18, and
 *    no GIL, so two threads really run two row blocks at once (GELU did not scale at all in numpy:
 *    each of its ~18 ufunc calls per 64k-element chunk handed the GIL over).
 *  - attention_head: softmax(Q·Kᵀ)·V for a span of one head's query rows, head size 64, fused: the
 *    scores of a group of 48 query rows (48 x T floats, 290 KiB at T = 1500) stay in L2 between
 *    the two products, and both products run as 6x64 register tiles.
 *
 * Plain C with GCC vector extensions; each exported function is built for x86-64-v4 (AVX-512),
 * x86-64-v3 (AVX2+FMA) and the baseline, and the loader picks one at run time (target_clones).
 */
#include <stddef.h>
#include <string.h>

/* AMANUENSIS_ONE_ISA builds for the compiler's target only: tests build each ISA level that way,
 * since a CPU only ever runs the one clone its features select. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AMANUENSIS_ONE_ISA)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* Helpers are forced inline so each build of an exported function gets its own copy for its ISA;
 * an out-of-line helper would be compiled once, for the baseline, and run 30x slower. */
#define INLINE static inline __attribute__((always_inline))

typedef float v16 __attribute__((vector_size(64), aligned(4), may_alias));
INLINE v16 load16(const float *p) { return *(const v16 *)p; }
INLINE void store16(float *p, v16 v) { *(v16 *)p = v; }

/* e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln2 with ln2 in two parts (Cody and Waite: r
 * stays exact to fp32 for every |x| < 128), e^r by its Taylor series to r^7 (relative error < 1e-8
 * before rounding; within 1e-7 of libm's expf over [-60, 60]). Below e^-69 (1e-30) the result
 * is 0: such values only ever meet larger ones in sums, and a denormal-sized product in the next
 * matmul costs the CPU a microcode assist. Above 88.3 it stays ~2e38 instead of inf; callers check
 * their sums. Branch-free, so loops over it vectorise. */
INLINE float exp_clamped(float x) {
    float zero = x < -69.0f ? 0.0f : 1.0f;
    x = x < -69.0f ? -69.0f : x;
    x = x > 88.3f ? 88.3f : x;
    const float shifter = 12582912.0f; /* 1.5 · 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693145751953125f - n * 1.42860682030941723212e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int bits = ((int)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * zero;
}

/* GELU(y) = ½·y·(1 + erf(y/√2)) with erf(u) = tanh(u·P(u²)) (kernels/cpu.py fits P and passes its
 * 7 coefficients times −2, with the 1/√2 folded in): ½(1 + tanh(a)) = 1 / (1 + e^(−2a)).
 * |y| so large that y² overflows gives an infinite exponent, and the limits y and 0 come out right. */
INLINE float gelu_one(float y, const float *c) {
    float z = y * y;
    float p = c[6];
    for (int k = 5; k >= 0; k--) p = p * z + c[k];
    float e = exp_clamped(y * p);
    /* where GELU(y) < |y|·1e-30 it is 0, as fp32 tanh gives: no denormals for the next matmul */
    return (e > 1e30f ? 0.0f : y) / (1.0f + e);
}

/* y[r, :] ← GELU(y[r, :] + b) for rows x cols, row stride ld. */
CLONES void bias_gelu(float *y, const float *b, long rows, long cols, long ld, const float *coeffs) {
    float c[7];
    memcpy(c, coeffs, sizeof c);
    for (long r = 0; r < rows; r++) {
        float *row = y + r * ld;
        for (long j = 0; j < cols; j++) row[j] = gelu_one(row[j] + b[j], c);
    }
}

/* y[r, :] ← y[r, :] + b (+ res[r, :] when res is not NULL). */
CLONES void bias_residual(float *y, const float *b, const float *res, long rows, long cols, long ld, long ld_res) {
    for (long r = 0; r < rows; r++) {
        float *row = y + r * ld;
        if (res) {
            const float *rr = res + r * ld_res;
            for (long j = 0; j < cols; j++) row[j] = row[j] + b[j] + rr[j];
        } else {
            for (long j = 0; j < cols; j++) row[j] += b[j];
        }
    }
}

/* y = (x − mean) / √(var + eps) · gamma + beta per row (biased variance). The row statistics are
 * summed in double, 8 lanes wide, in two passes: every element of a row shares them, so their
 * rounding is an error the next matmul adds up coherently across the row (in fp32 they cost 13x
 * at tiny.en's output on one real clip, against float64). */
CLONES void layernorm(const float *x, float *y, const float *gamma, const float *beta, long rows, long cols,
                      long ld_x, long ld_y, float eps) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * ld_x;
        float *yr = y + r * ld_y;
        double lanes[8] = {0}, sum = 0.0, ss = 0.0;
        long j;
        for (j = 0; j + 8 <= cols; j += 8)
            for (int l = 0; l < 8; l++) lanes[l] += xr[j + l];
        for (int l = 0; l < 8; l++) sum += lanes[l];
        for (; j < cols; j++) sum += xr[j];
        double mean = sum / (double)cols;
        memset(lanes, 0, sizeof lanes);
        for (j = 0; j + 8 <= cols; j += 8)
            for (int l = 0; l < 8; l++) {
                double d = xr[j + l] - mean;
                lanes[l] += d * d;
            }
        for (int l = 0; l < 8; l++) ss += lanes[l];
        for (; j < cols; j++) ss += (xr[j] - mean) * (xr[j] - mean);
        float m = (float)mean, inv = (float)(1.0 / __builtin_sqrt(ss / (double)cols + eps));
        for (j = 0; j < cols; j++) yr[j] = (xr[j] - m) * inv * gamma[j] + beta[j];
    }
}

#define MR 6   /* rows of a register tile: 6 x 64 floats = 24 AVX-512 accumulators */
#define NR 64  /* columns of a register tile */

/* c[0:MR, 0:NR] (+)= a[0:MR, 0:kc] · b[0:kc, 0:NR], row strides lda, ldb, ldc; with accumulate the
 * product is summed on its own and then added to c, so a long sum done in kc-sized calls is blocked
 * (one FMA chain over T = 1500 keys was 3x less accurate than BLAS, which blocks its sums too). */
INLINE void gemm_tile(const float *a, long lda, const float *b, long ldb, long kc, float *c, long ldc,
                      int accumulate) {
    v16 acc[MR][4] = {{{0}}};
    for (long k = 0; k < kc; k++) {
        const float *bk = b + k * ldb;
        v16 b0 = load16(bk), b1 = load16(bk + 16), b2 = load16(bk + 32), b3 = load16(bk + 48);
        for (int r = 0; r < MR; r++) {
            float x = a[r * lda + k];
            acc[r][0] += x * b0;
            acc[r][1] += x * b1;
            acc[r][2] += x * b2;
            acc[r][3] += x * b3;
        }
    }
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) {
            if (accumulate) acc[r][q] += load16(c + r * ldc + 16 * q);
            store16(c + r * ldc + 16 * q, acc[r][q]);
        }
}

#define HEAD NR   /* head size: every Whisper model has 64, one register tile wide */
#define TILE_R MR /* query rows per register tile */
#define GROUP 8   /* tiles that share each panel of K and V (4..16 measured alike) */
#define GROUP_ROWS (GROUP * TILE_R)
#define VALUE_KEYS 128  /* keys per partial sum of P·V (see gemm_tile); 64..256 measured alike */

/* p[j] ← e^p[j] for j < t, 0 for t <= j < t_pad; returns Σ_j<t. */
INLINE float exp_row(float *p, long t, long t_pad) {
    float lanes[16] = {0};
    long j;
    for (j = 0; j + 16 <= t; j += 16)
        for (int l = 0; l < 16; l++) {
            float e = exp_clamped(p[j + l]);
            p[j + l] = e;
            lanes[l] += e;
        }
    float sum = 0.0f;
    for (int l = 0; l < 16; l++) sum += lanes[l];
    for (; j < t; j++) {
        p[j] = exp_clamped(p[j]);
        sum += p[j];
    }
    for (; j < t_pad; j++) p[j] = 0.0f;
    return sum;
}

/* A row whose plain e^s sum left [1e-20, 1e30] (every score below −46, one above 69, or a NaN):
 * redo it with the row maximum subtracted, the textbook softmax, from the unpacked keys. Rare, so
 * scalar. */
INLINE void stable_row(const float *q, const float *k, long ld, float scale, const float *vp, long t, long t_pad,
                       float *p, float *o) {
    float max = -__builtin_inff();
    for (long j = 0; j < t; j++) {
        float s = 0.0f;
        for (int d = 0; d < HEAD; d++) s += q[d] * k[j * ld + d];
        p[j] = s * scale;
        max = p[j] > max ? p[j] : max;
    }
    for (long j = 0; j < t; j++) p[j] -= max;
    float sum = exp_row(p, t, t_pad);
    for (int c = 0; c < HEAD; c++) o[c] = 0.0f;
    for (long j = 0; j < t; j++)
        for (int c = 0; c < HEAD; c++) o[c] += p[j] * vp[j * HEAD + c];
    for (int c = 0; c < HEAD; c++) o[c] /= sum;
}

/* kp ← the keys times scale, transposed into one contiguous 64 x 64 panel per 64 keys
 * (kp[c][d][i] = k[64c + i][d]·scale, zero past t): read in place, Kᵀ's rows t floats apart fell
 * into a few L1 sets. vp ← the values, contiguous (t_pad, HEAD), zero past t. */
INLINE void pack_head(const float *k, const float *v, long ld, float scale, long t, long t_pad, float *kp,
                      float *vp) {
    for (long j = 0; j < t_pad; j++) {
        float *panel = kp + (j / NR) * HEAD * NR + j % NR;
        for (int d = 0; d < HEAD; d++) panel[d * NR] = j < t ? k[j * ld + d] * scale : 0.0f;
        if (j < t)
            memcpy(vp + j * HEAD, v + j * ld, HEAD * sizeof(float));
        else
            memset(vp + j * HEAD, 0, HEAD * sizeof(float));
    }
}

/* Floats of scratch attention_head needs for a sequence of t: packed keys and values, and the
 * probabilities of one group of rows. */
long attention_scratch(long t) {
    long t_pad = (t + NR - 1) / NR * NR;
    return (2 * HEAD + GROUP_ROWS) * t_pad;
}

/* out[i, :] = Σ_j softmax_j(q[i, :] · k[j, :] · scale) · v[j, :] for rows i < rows of one head.
 * q: (rows, HEAD), k and v: (t, HEAD), all with row stride ld (columns of one QKV matrix);
 * out: (rows, HEAD) with row stride ld_out; scratch: attention_scratch(t) floats.
 * A group of GROUP tiles shares every 64-key panel of K and of V while it is in L1: one tile at a
 * time streamed all of K and V from L2 for every 6 rows. */
CLONES void attention_head(const float *q, const float *k, const float *v, long ld, float scale, long t,
                           float *out, long ld_out, long rows, float *scratch) {
    long t_pad = (t + NR - 1) / NR * NR;
    float *kp = scratch, *vp = kp + t_pad * HEAD, *p = vp + t_pad * HEAD;
    float o[GROUP_ROWS * HEAD], qt[GROUP_ROWS * HEAD], sums[GROUP_ROWS];
    pack_head(k, v, ld, scale, t, t_pad, kp, vp);
    for (long g0 = 0; g0 < rows; g0 += GROUP_ROWS) {
        long n = rows - g0 < GROUP_ROWS ? rows - g0 : GROUP_ROWS;
        int tiles = (int)((n + TILE_R - 1) / TILE_R);
        /* the group's rows, contiguous; a short last tile gets zero rows, computed and dropped */
        memset(qt, 0, sizeof qt);
        for (long r = 0; r < n; r++) memcpy(qt + r * HEAD, q + (g0 + r) * ld, HEAD * sizeof(float));
        for (long j0 = 0; j0 < t_pad; j0 += NR)
            for (int i = 0; i < tiles; i++)
                gemm_tile(qt + i * TILE_R * HEAD, HEAD, kp + j0 * HEAD, NR, HEAD, p + i * TILE_R * t_pad + j0, t_pad, 0);
        for (long r = 0; r < tiles * TILE_R; r++) sums[r] = exp_row(p + r * t_pad, t, t_pad);
        memset(o, 0, sizeof o);
        for (long j0 = 0; j0 < t_pad; j0 += VALUE_KEYS) {
            long kc = t_pad - j0 < VALUE_KEYS ? t_pad - j0 : VALUE_KEYS;
            for (int i = 0; i < tiles; i++)
                gemm_tile(p + i * TILE_R * t_pad + j0, t_pad, vp + j0 * HEAD, HEAD, kc, o + i * TILE_R * HEAD, HEAD, 1);
        }
        for (long r = 0; r < n; r++) {
            float *orow = o + r * HEAD;
            if (!(sums[r] > 1e-20f && sums[r] < 1e30f))
                stable_row(qt + r * HEAD, k, ld, scale, vp, t, t_pad, p + r * t_pad, orow);
            else
                for (int c = 0; c < HEAD; c++) orow[c] /= sums[r];
            memcpy(out + (g0 + r) * ld_out, orow, HEAD * sizeof(float));
        }
    }
}

/* Which build target_clones picked on this CPU: 4 = x86-64-v4 (AVX-512), 3 = x86-64-v3 (AVX2+FMA),
 * 0 = the baseline build (or not x86-64). Same tests as the ifunc resolver. */
int native_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AMANUENSIS_ONE_ISA)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
}
