/* Native kernels of the `cpu` backend: the parts numpy cannot do without many passes or the GIL,
 * and the encoder's matrix products.
 *
 * The numpy kernels in kernels/cpu.py and kernels/reference.py are the specification; tests check
 * every function here against them. Everything is fp32 in, fp32 accumulate, row-major.
 *
 *  - linear: act(A·W + b) + residual with W packed in 64-column panels (kernels.native.pack), as
 *    6x64 register tiles, the epilogue run on each block of rows while it is in L1. A's rows may
 *    overlap, so a convolution's patches are read in place, with no im2col copy.
 *  - bias_epilogue (bias, GELU, residual), layernorm: one pass over each row instead of numpy's 5-18, and
 *    no GIL, so two threads really run two row blocks at once (GELU did not scale at all in numpy:
 *    each of its ~18 ufunc calls per 64k-element chunk handed the GIL over).
 *  - attention_head: softmax(Q·Kᵀ)·V for a span of one head's query rows, head size 64, fused: the
 *    scores of a group of 48 query rows (48 x T floats, 290 KiB at T = 1500) stay in L2 between
 *    the two products, and both products run as 6x64 register tiles.
 *
 * Plain C with GCC vector extensions. This file is compiled once per x86-64 level by isa_v4.c,
 * isa_v3.c and isa_base.c, each with its target in force and ISA set to its name suffix, and the
 * loader binds the copy this CPU can run (dispatch.c's native_isa). A separate copy per level, and
 * not one source for all of them, because the vector width must follow the registers: 64-byte
 * vectors compiled for AVX2 spill, and ran attention 34x slower than the AVX-512 copy.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define EXPORT(name) CAT(name, ISA)   /* exported names carry the level: linear_v4, ... */

/* Every helper is static and forced inline, so each copy is compiled for its own level. */
#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define VEC 16        /* floats per vector register */
#define TILE_VECS 4   /* vectors per row of a register tile: 6 x 4 accumulators of 32 registers */
#elif defined(__AVX__)
#define VEC 8
#define TILE_VECS 2   /* 6 x 2 accumulators of 16 registers; a 64-column tile takes 4 passes */
#else
#define VEC 4
#define TILE_VECS 2
#endif
typedef float vec __attribute__((vector_size(VEC * 4), aligned(4), may_alias));
INLINE vec loadv(const float *p) { return *(const vec *)p; }
INLINE void storev(float *p, vec v) { *(vec *)p = v; }

/* c ? a : b, in a form each copy vectorises: with AVX-512's mask registers GCC vectorises the plain
 * select; elsewhere it turned it into a branch, which kept every loop over e^x scalar in the AVX2
 * copy (a third of attention's time there), so there it is a bitwise blend (attention 61 -> 37 ms
 * for six heads, GELU 2.8x faster). On AVX-512 the blend measured 3% slower in attention. */
INLINE float pick(int c, float a, float b) {
#if defined(__AVX512F__)
    return c ? a : b;
#else
    unsigned mask = c ? ~0u : 0u, ab, bb;
    memcpy(&ab, &a, sizeof ab);
    memcpy(&bb, &b, sizeof bb);
    ab = (ab & mask) | (bb & ~mask);
    memcpy(&a, &ab, sizeof a);
    return a;
#endif
}

/* e^x = 2^n · e^r, n = round(x·log2 e), r = x − n·ln2 with ln2 in two parts (Cody and Waite: r
 * stays exact to fp32 for every |x| < 128), e^r by its Taylor series to r^7 (relative error < 1e-8
 * before rounding; within 1e-7 of libm's expf over [-60, 60]). Below e^-69 (1e-30) the result
 * is 0: such values only ever meet larger ones in sums, and a denormal-sized product in the next
 * matmul costs the CPU a microcode assist. Above 88.3 it stays ~2e38 instead of inf; callers check
 * their sums. Branch-free, so loops over it vectorise. */
INLINE float exp_clamped(float x) {
    float zero = x < -69.0f ? 0.0f : 1.0f;
    x = pick(x < -69.0f, -69.0f, x);   /* a NaN compares false and stays */
    x = pick(x > 88.3f, 88.3f, x);
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
    return pick(e > 1e30f, 0.0f, y) / (1.0f + e);
}

/* y[r, :] ← act(y[r, :] + b) (+ res[r, :] when res is not NULL) for rows x cols, row strides ld
 * and ld_res; act is GELU when coeffs is not NULL (gelu_one's coefficients), else the identity. */
INLINE void epilogue(float *y, long ld, const float *b, const float *coeffs, const float *res, long ld_res,
                     long rows, long cols) {
    float c[7];
    if (coeffs) memcpy(c, coeffs, sizeof c);
    for (long r = 0; r < rows; r++) {
        float *row = y + r * ld;
        if (coeffs)
            for (long j = 0; j < cols; j++) row[j] = gelu_one(row[j] + b[j], c);
        else
            for (long j = 0; j < cols; j++) row[j] += b[j];
        if (res)
            for (long j = 0; j < cols; j++) row[j] += res[r * ld_res + j];
    }
}

/* The epilogue on its own, for rows whose product BLAS made. */
void EXPORT(bias_epilogue)(float *y, long ld, const float *b, const float *coeffs, const float *res, long ld_res,
                           long rows, long cols) {
    epilogue(y, ld, b, coeffs, res, ld_res, rows, cols);
}

/* y = (x − mean) / √(var + eps) · gamma + beta per row (biased variance). The row statistics are
 * summed in double, 8 lanes wide, in two passes: every element of a row shares them, so their
 * rounding is an error the next matmul adds up coherently across the row (in fp32 they cost 13x
 * at tiny.en's output on one real clip, against float64). */
void EXPORT(layernorm)(const float *x, float *y, const float *gamma, const float *beta, long rows, long cols,
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

#define MR 6   /* rows of a register tile */
#define NR 64  /* columns of a register tile, and of a packed weight panel */

/* c[0:MR, 0:NR] (+)= a[0:MR, 0:kc] · b[0:kc, 0:NR], row strides lda, ldb, ldc; with accumulate the
 * product is summed on its own and then added to c, so a long sum done in kc-sized calls is blocked
 * (one FMA chain over T = 1500 keys was 3x less accurate than BLAS, which blocks its sums too).
 * TILE_VECS x VEC columns per pass: one pass with AVX-512, four with AVX2. */
INLINE void gemm_tile(const float *a, long lda, const float *b, long ldb, long kc, float *c, long ldc,
                      int accumulate) {
    for (int c0 = 0; c0 < NR; c0 += TILE_VECS * VEC) {
        vec acc[MR][TILE_VECS] = {{{0}}};
        for (long k = 0; k < kc; k++) {
            const float *bk = b + k * ldb + c0;
            vec bv[TILE_VECS];
            for (int q = 0; q < TILE_VECS; q++) bv[q] = loadv(bk + q * VEC);
            __builtin_prefetch(bk + 8 * ldb);   /* the panel streams from L2; 8 rows ahead measured well */
            for (int r = 0; r < MR; r++) {
                float x = a[r * lda + k];
                for (int q = 0; q < TILE_VECS; q++) acc[r][q] += x * bv[q];
            }
        }
        for (int r = 0; r < MR; r++)
            for (int q = 0; q < TILE_VECS; q++) {
                float *cq = c + r * ldc + c0 + q * VEC;
                if (accumulate) acc[r][q] += loadv(cq);
                storev(cq, acc[r][q]);
            }
    }
}

#define KC 384  /* k per pass: a tile's 6 x 384 slice of A (9 KiB) stays in L1 while it sweeps the panels */
#define NC 512  /* columns per pass: a 384 x 512 block of W (768 KiB) stays in L2 for every row tile */

/* What linear does to each finished block of rows: see epilogue. */
typedef struct {
    const float *bias, *coeffs, *res;
    long ld_res;
} Epilogue;

/* c = a · w for rows (a multiple of MR) x n, w packed (see linear); each MR x NC block gets its
 * epilogue, when ep is not NULL, as soon as its last k pass is done. */
INLINE void product(const float *a, long lda, const float *w, long k, long n, float *c, long ldc, long rows,
                    const Epilogue *ep) {
    for (long pc = 0; pc < k; pc += KC) {
        long kc = k - pc < KC ? k - pc : KC;
        for (long jc = 0; jc < n; jc += NC) {
            long nc = n - jc < NC ? n - jc : NC;
            for (long i = 0; i < rows; i += MR) {
                for (long j = jc; j < jc + nc; j += NR)
                    gemm_tile(a + i * lda + pc, lda, w + j * k + pc * NR, NR, kc, c + i * ldc + j, ldc, pc > 0);
                if (ep && pc + kc == k)
                    epilogue(c + i * ldc + jc, ldc, ep->bias + jc, ep->coeffs,
                             ep->res ? ep->res + i * ep->ld_res + jc : NULL, ep->ld_res, MR, nc);
            }
        }
    }
}

/* c[r, :] = act(a[r, :] · W + bias) (+ res[r, :]) for r < rows, act = GELU when coeffs is not NULL.
 * a: (rows, k), row stride lda; its rows may overlap (a convolution's patches, read in place).
 * w: W (k, n) packed as n / NR panels, panel p holding W[:, p·NR : (p+1)·NR] row-major (k x NR);
 * n must be a multiple of NR. c: (rows, n), stride ldc; res: (rows, n), stride ld_res, or NULL.
 * Returns 0, or -1 when the scratch for a last partial tile cannot be allocated. */
int EXPORT(linear)(const float *a, long lda, const float *w, long k, long n, const float *bias, const float *coeffs,
                   const float *res, long ld_res, float *c, long ldc, long rows) {
    Epilogue ep = {bias, coeffs, res, ld_res};
    long full = rows / MR * MR, rest = rows - full;
    product(a, lda, w, k, n, c, ldc, full, &ep);
    if (rest == 0) return 0;
    /* the last rows < MR: through a zero-padded tile, then copied out and finished */
    float *pad_a = calloc((size_t)MR * (k + n), sizeof(float)), *pad_c = pad_a + MR * k;
    if (!pad_a) return -1;
    for (long r = 0; r < rest; r++) memcpy(pad_a + r * k, a + (full + r) * lda, k * sizeof(float));
    product(pad_a, k, w, k, n, pad_c, n, MR, NULL);
    for (long r = 0; r < rest; r++) memcpy(c + (full + r) * ldc, pad_c + r * n, n * sizeof(float));
    free(pad_a);
    epilogue(c + full * ldc, ldc, bias, coeffs, res ? res + full * ld_res : NULL, ld_res, rest, n);
    return 0;
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
long EXPORT(attention_scratch)(long t) {
    long t_pad = (t + NR - 1) / NR * NR;
    return (2 * HEAD + GROUP_ROWS) * t_pad;
}

/* out[i, :] = Σ_j softmax_j(q[i, :] · k[j, :] · scale) · v[j, :] for rows i < rows of one head.
 * q: (rows, HEAD), k and v: (t, HEAD), all with row stride ld (columns of one QKV matrix);
 * out: (rows, HEAD) with row stride ld_out; scratch: attention_scratch(t) floats.
 * A group of GROUP tiles shares every 64-key panel of K and of V while it is in L1: one tile at a
 * time streamed all of K and V from L2 for every 6 rows. */
void EXPORT(attention_head)(const float *q, const float *k, const float *v, long ld, float scale, long t,
                           float *out, long ld_out, long rows, float *scratch) {
    long t_pad = (t + NR - 1) / NR * NR;
    float *kp = scratch, *vp = kp + t_pad * HEAD, *p = vp + t_pad * HEAD;
    float o[GROUP_ROWS * HEAD] __attribute__((aligned(64))), qt[GROUP_ROWS * HEAD] __attribute__((aligned(64)));
    float sums[GROUP_ROWS];
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
