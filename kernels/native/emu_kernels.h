/* The `emu` backend's kernels, natively, for kernels/emu.py: its matrix unit (the NPU's mmul as
 * kernels/contract.py's `matmul` specifies it, first below), the front end's fp32 products
 * (contract.matmul_f32), the attention kernel (emu.py's _attention_tiles), and the linears'
 * epilogue (bias, GELU, residual), layernorm and bf16 rounding, each with its own comment. Included
 * by isa_*.c after cpu_kernels.h (its EXPORT and INLINE), so it is built once per x86-64 level like
 * the cpu backend's kernels.
 *
 * For every output, from its accumulator's value, each 8-wide step of K in order adds the sum of
 * its products: s = Σ a[i, κ]·b[κ, j] in float64, then c ← fl32(fl64(s + c)). The products of bf16
 * values are exact in float64 and so is their sum unless its terms span more than 2^53 of its
 * least unit: contract.matmul takes the same float64 sum (in BLAS's order, the same value wherever
 * the sum is exact) and the same two roundings, so the two agree bit for bit there (a test), the
 * sign of zero included: the sum starts from +0.0, as BLAS's does (a step of only zero products is
 * +0.0, and +0.0 + -0.0 is +0.0). Where NaNs of different signs or payloads meet, which one comes out
 * may differ; that it is a NaN does not. Subnormal results are the caller's to flush
 * (contract.flush), as contract.matmul flushes only its result.
 *
 * The work is 4-row output blocks of 2 float64 vectors a row (4 x 16 on AVX-512, 4 x 8 on AVX2),
 * from A's rows and B's column strips widened to float64 in scratch (mmul_steps).
 */

#include <float.h>
#include <math.h>
#include <stdint.h>

#define EMU_MR 4     /* rows of an output block */
#define EMU_NV 2     /* double vectors per row of an output block */
#define EMU_STEP 8   /* K per mmul step (contract.STEP) */
#define EMU_CHUNK 64 /* rows that share a strip of B while it is in L1 */
#define DVEC (VEC / 2)
#define EMU_NR (EMU_NV * DVEC)   /* columns of an output block: 16 on AVX-512, 8 on AVX2, 4 baseline */
typedef double dvec __attribute__((vector_size(VEC * 4), aligned(8), may_alias));
typedef float hvec __attribute__((vector_size(VEC * 2), aligned(4), may_alias));   /* DVEC floats */

/* One full EMU_MR x EMU_NR block of c from A's rows and B's strip widened to doubles (ad: rows of k,
 * bd: k rows of EMU_NR). The accumulators stay in registers as doubles holding fp32 values: each
 * step's fl32 is a round trip through hvec. */
INLINE void mmul_block(const double *ad, const double *bd, float *c, long ldc, long k) {
    dvec acc[EMU_MR][EMU_NV];
    for (int r = 0; r < EMU_MR; r++)
        for (int q = 0; q < EMU_NV; q++) acc[r][q] = __builtin_convertvector(*(const hvec *)(c + r * ldc + q * DVEC), dvec);
    for (long s = 0; s < k; s += EMU_STEP) {
        long end = s + EMU_STEP < k ? s + EMU_STEP : k;
        dvec d[EMU_MR][EMU_NV];
        for (int r = 0; r < EMU_MR; r++)
            for (int q = 0; q < EMU_NV; q++) d[r][q] = (dvec){0};
        for (long kk = s; kk < end; kk++) {
            dvec bv[EMU_NV];
            for (int q = 0; q < EMU_NV; q++) bv[q] = *(const dvec *)(bd + kk * EMU_NR + q * DVEC);
            for (int r = 0; r < EMU_MR; r++) {
                double x = ad[r * k + kk];
                for (int q = 0; q < EMU_NV; q++) d[r][q] += x * bv[q];   /* the product is exact: no rounding but the sum's */
            }
        }
        for (int r = 0; r < EMU_MR; r++)
            for (int q = 0; q < EMU_NV; q++)
                acc[r][q] = __builtin_convertvector(__builtin_convertvector(d[r][q] + acc[r][q], hvec), dvec);
    }
    for (int r = 0; r < EMU_MR; r++)
        for (int q = 0; q < EMU_NV; q++) *(hvec *)(c + r * ldc + q * DVEC) = __builtin_convertvector(acc[r][q], hvec);
}

/* The same for a block at the edge, rows x cols smaller than a full one: one output at a time. */
INLINE void mmul_edge(const float *a, long lda, const float *b, long ldb, float *c, long ldc, long k, long rows,
                      long cols) {
    for (long r = 0; r < rows; r++)
        for (long l = 0; l < cols; l++) {
            float acc = c[r * ldc + l];
            for (long s = 0; s < k; s += EMU_STEP) {
                long end = s + EMU_STEP < k ? s + EMU_STEP : k;
                double d = 0.0;
                for (long kk = s; kk < end; kk++) d += (double)a[r * lda + kk] * (double)b[kk * ldb + l];
                acc = (float)(d + (double)acc);
            }
            c[r * ldc + l] = acc;
        }
}

/* The first 64-byte line of scratch from malloc (which allocates 64 bytes more than it needs). */
INLINE double *emu_line(char *raw) { return (double *)(raw + (64 - (size_t)raw % 64) % 64); }

/* dst's strips of EMU_NR columns, as mmul_block reads B, from an fp32 matrix b (k, n) given by its
 * element strides: strip j holds b[0:k, j·EMU_NR : (j + 1)·EMU_NR] widened, k rows of EMU_NR. */
INLINE void emu_strips(const float *b, long row_stride, long col_stride, long k, long n, double *dst) {
    for (long j = 0; j < n; j += EMU_NR)
        for (long kk = 0; kk < k; kk++)
            for (int l = 0; l < EMU_NR; l++) dst[j * k + kk * EMU_NR + l] = b[kk * row_stride + (j + l) * col_stride];
}

/* c (m, n) ← contract.matmul(a, b, acc=c) before its flush: a (m, k) with row stride lda, b (k, n)
 * with row stride ldb, c (m, n) with row stride ldc holding the accumulators (zeros for none).
 * Rows go in chunks of EMU_CHUNK, widened to doubles once, and each EMU_NR-column strip of B,
 * widened once per chunk, serves all of the chunk's rows: the inner loop then only loads and
 * multiplies (converting each value where it was used held it to ~20 GFLOP/s on AVX-512).
 * Returns 0, or -1 when its scratch cannot be allocated. */
int EXPORT(mmul_steps)(const float *a, long lda, const float *b, long ldb, float *c, long ldc, long m, long k,
                       long n) {
    if (m <= 0 || n <= 0 || k <= 0) return 0;      /* no step: c keeps its accumulators */
    long full_n = n / EMU_NR * EMU_NR;
    /* on 64-byte lines: loads straddling two lines cost this loop ~10% (31-32 against 35-37 GFLOP/s) */
    char *raw = malloc((size_t)(EMU_CHUNK + EMU_NR) * k * sizeof(double) + 64);
    if (!raw) return -1;
    double *ad = emu_line(raw), *bd = ad + EMU_CHUNK * k;
    for (long i0 = 0; i0 < m; i0 += EMU_CHUNK) {
        long rows = m - i0 < EMU_CHUNK ? m - i0 : EMU_CHUNK, full_rows = rows / EMU_MR * EMU_MR;
        for (long r = 0; r < rows; r++)
            for (long kk = 0; kk < k; kk++) ad[r * k + kk] = a[(i0 + r) * lda + kk];
        float *cc = c + i0 * ldc;
        for (long j = 0; j < full_n; j += EMU_NR) {
            emu_strips(b + j, ldb, 1, k, EMU_NR, bd);
            for (long i = 0; i < full_rows; i += EMU_MR)
                mmul_block(ad + i * k, bd, cc + i * ldc + j, ldc, k);
            if (full_rows < rows)
                mmul_edge(a + (i0 + full_rows) * lda, lda, b + j, ldb, cc + full_rows * ldc + j, ldc, k,
                          rows - full_rows, EMU_NR);
        }
        if (full_n < n)
            mmul_edge(a + i0 * lda, lda, b + full_n, ldb, cc + full_n, ldc, k, rows, n - full_n);
    }
    free(raw);
    return 0;
}

/* ---- attention: kernels/emu.py's _attention_tiles for one head ---------------------------------- */

/* Every fp32 operation of the contract's softmax, GELU and layernorm is its own rounding: no multiply
 * may fuse with an add in the functions from here to pop_options (GCC contracts them by default where
 * the target has FMA; the matrix products want that: products of bf16 values are exact in float64,
 * and fused they ran 30% faster). */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

INLINE uint32_t emu_bits(float x) { uint32_t b; memcpy(&b, &x, sizeof b); return b; }
INLINE float emu_float(uint32_t b) { float x; memcpy(&x, &b, sizeof x); return x; }

/* contract.flush: zero (of x's sign) below the smallest normal float. */
INLINE float emu_flush(float x) { return fabsf(x) < 0x1p-126f ? copysignf(0.0f, x) : x; }

/* contract.bf16: flushed, then rounded to bf16, nearest even (a NaN stays a quiet NaN of its sign). */
INLINE float emu_bf16(float x) {
    uint32_t b = emu_bits(emu_flush(x));
    if ((b & 0x7fffffffu) > 0x7f800000u) return emu_float((b & 0x80000000u) | 0x7fc00000u);
    return emu_float((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u);
}

/* contract.exp, operation for operation (its docstring has the formula). */
INLINE float emu_exp(float x) {
    float xc = x < -80.0f ? -80.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    float xh = emu_bf16(xc), xl = emu_bf16(xc - xh);
    float t = ((xh * 1.4453125f + xh * -0.00262451171875f) + xl * 1.4453125f) + 12582912.0f;
    float k = t - 12582912.0f;
    float r = ((xc - k * 0.69140625f) - k * 0.001739501953125f) - k * 1.430511474609375e-06f;
    float rh = emu_bf16(r);
    float p = (1.0f + r) + emu_bf16(rh * rh) * emu_bf16(0.5037f + 0.166015625f * rh);
    uint32_t scaled = emu_bits(p) + ((emu_bits(t) - emu_bits(12582912.0f)) << 23);
    return x < -80.0f ? 0.0f : emu_float(scaled);
}

/* contract.recip: three Newton steps from the bits 0x7EF311C3 − bits(q). */
INLINE float emu_recip(float q) {
    float y = emu_float(0x7ef311c3u - emu_bits(q));
    for (int i = 0; i < 3; i++) y = y * (2.0f - q * y);
    return y;
}

/* contract.gelu, operation for operation (its docstring has the formula): g holds its constants as
 * emu.py's GELU_TABLE lays them out: the 3 breaks, the end, the 4 centres, then 4 pieces of 7
 * coefficients, constant first. A NaN stays a NaN, as in numpy (k is 0 where t < end fails). */
INLINE float emu_gelu(float x, const float *g) {
    float t = fabsf(x);
    int piece = (t >= g[0]) + (t >= g[1]) + (t >= g[2]);
    const float *c = g + 8 + 7 * piece;
    float s = t - g[4 + piece];
    float k = c[6];
    for (int j = 5; j > 0; j--) k = k * s + c[j];
    k = emu_flush(k * s) + c[0];
    k = t < g[3] ? k : 0.0f;
    return emu_flush((x < 0.0f ? 0.0f : t) - k);
}

/* contract.rsqrt: three Newton steps from the bits 0x5F3759DF − bits(x)/2. */
INLINE float emu_rsqrt(float x) {
    float half_x = x * 0.5f, y = emu_float(0x5f3759dfu - (emu_bits(x) >> 1));
    for (int i = 0; i < 3; i++) y = y * (1.5f - half_x * (y * y));
    return y;
}

/* contract.lane_sum of n values (a multiple of 16): the 16-lane vectors added in order, then the
 * halving tree. */
INLINE float emu_lane_sum(const float *p, long n) {
    float acc[16];
    for (int l = 0; l < 16; l++) acc[l] = p[l];
    for (long i = 16; i < n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] = acc[l] + p[i + l];
    for (int width = 8; width; width /= 2)
        for (int l = 0; l < width; l++) acc[l] = acc[l] + acc[l + width];
    return acc[0];
}

/* One query row's step over a 64-key tile that begins at key `first` (emu.py's _softmax_step): row
 * holds its scores S before the flush, keys from t on masked; updates its max *m and sum *sum, turns
 * row into bf16(P) and scales its O by α (the accumulators the product with V adds to). */
__attribute__((noinline)) static void emu_softmax_row(float *row, long first, long t, float *m, float *sum, float *o,
                                                       long d) {
    float top = *m;
    for (long c = 0; c < 64; c++) {
        row[c] = first + c < t ? emu_flush(row[c]) : -INFINITY;
        top = row[c] > top ? row[c] : top;
    }
    float alpha = emu_exp(*m - top);                          /* 0 on the first tile (m = -inf) */
    for (long c = 0; c < 64; c++) row[c] = emu_exp(row[c] - top);
    *sum = emu_flush(*sum * alpha + emu_lane_sum(row, 64));
    for (long c = 0; c < 64; c++) row[c] = emu_bf16(row[c]);
    for (long c = 0; c < d; c++) o[c] = emu_flush(o[c] * alpha);
    *m = top;
}

/* out ← bf16(flush(O · recip(ℓ))) for one query row (emu.py's _normalise). */
__attribute__((noinline)) static void emu_normalise_row(const float *o, float sum, long d, float *out) {
    float inv = emu_recip(sum);
    for (long c = 0; c < d; c++) out[c] = emu_bf16(emu_flush(o[c] * inv));
}

/* The pieces of emu_attention_head on their own, for the tests: y ← contract.exp(x) of n values;
 * emu_softmax_row on `rows` rows (s: rows x 64, o: rows x d); emu_normalise_row on `rows` rows. */
void EXPORT(emu_exp_n)(const float *x, float *y, long n) {
    for (long i = 0; i < n; i++) y[i] = emu_exp(x[i]);
}

void EXPORT(emu_softmax_rows)(float *s, long rows, long first, long t, float *m, float *sum, float *o, long d) {
    for (long r = 0; r < rows; r++) emu_softmax_row(s + r * 64, first, t, m + r, sum + r, o + r * d, d);
}

void EXPORT(emu_normalise_rows)(const float *o, const float *sum, long rows, long d, float *out) {
    for (long r = 0; r < rows; r++) emu_normalise_row(o + r * d, sum[r], d, out + r * d);
}

/* ---- the linears' epilogue, layernorm and bf16 rounding (emu.py) ------------------------------- */

/* y ← contract.gelu(x) of n values (y may be x), g as emu_gelu takes it: the emu backend's GELU in
 * the epilogue of its linears and convolutions. */
void EXPORT(emu_gelu_n)(const float *x, float *y, long n, const float *g) {
    for (long i = 0; i < n; i++) y[i] = emu_gelu(x[i], g);
}

/* y ← contract.bf16(x) of n values (y may be x). */
void EXPORT(emu_bf16_n)(const float *x, float *y, long n) {
    for (long i = 0; i < n; i++) y[i] = emu_bf16(x[i]);
}

/* Where two NaNs meet in these, which one comes out (its sign, its payload) may differ from numpy's
 * choice, which itself depends on a value's place in numpy's vector loop; that it is a NaN does not.
 *
 * emu.py's _epilogue, the matmul kernel's after the matrix unit: out[r, j] ← bf16(act(flush(c[r, j] +
 * bias[j])) (+ res[r, j], flushed)) for r < rows, j < n; act = emu_gelu where g is not NULL (its
 * table), else none; res may be NULL. Rows ldc, ldr and ldo floats apart; out may be c. */
void EXPORT(emu_epilogue)(const float *c, long ldc, const float *bias, const float *g, const float *res, long ldr,
                          float *out, long ldo, long rows, long n) {
    for (long r = 0; r < rows; r++)
        for (long j = 0; j < n; j++) {
            float y = emu_flush(c[r * ldc + j] + bias[j]);
            if (g) y = emu_gelu(y, g);
            if (res) y = emu_flush(y + res[r * ldr + j]);
            out[r * ldo + j] = emu_bf16(y);
        }
}

/* emu.py's layernorm of each row of x (rows, n), n a multiple of 16, with bf16-valued gamma and beta:
 * xb = bf16(x), mean = flush(lane_sum(xb)·(1/n)), d = flush(xb − mean), var = flush(lane_sum(flush(d²))
 * ·(1/n)), out = bf16(flush(flush(flush(d·rsqrt(flush(var + eps)))·gamma) + beta)). Rows ldx and ldo
 * floats apart. Returns 0, -1 when its scratch cannot be allocated, -2 for an n it does not take. */
int EXPORT(emu_layernorm)(const float *x, long ldx, const float *gamma, const float *beta, float eps, float *out,
                          long ldo, long rows, long n) {
    if (n <= 0 || n % 16) return -2;
    float *d = malloc(2 * (size_t)n * sizeof(float));
    if (!d) return -1;
    float *sq = d + n;
    float inv_n = 1.0f / (float)n;
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * ldx;
        for (long j = 0; j < n; j++) d[j] = emu_bf16(row[j]);
        float mean = emu_flush(emu_lane_sum(d, n) * inv_n);
        for (long j = 0; j < n; j++) {
            d[j] = emu_flush(d[j] - mean);
            sq[j] = emu_flush(d[j] * d[j]);
        }
        float rstd = emu_rsqrt(emu_flush(emu_flush(emu_lane_sum(sq, n) * inv_n) + eps));
        for (long j = 0; j < n; j++)
            out[r * ldo + j] = emu_bf16(emu_flush(emu_flush(emu_flush(d[j] * rstd) * gamma[j]) + beta[j]));
    }
    free(d);
    return 0;
}

#pragma GCC pop_options

/* c (64, n) ← acc + a·B (before the contract's flush) from a: 64 rows of k doubles, B: n / EMU_NR strips. */
INLINE void emu_tile_product(const double *a, const double *strips, long k, long n, float *c) {
    for (long j = 0; j < n; j += EMU_NR)
        for (long i = 0; i < 64; i += EMU_MR) mmul_block(a + i * k, strips + j * k, c + i * n + j, n, k);
}

/* out ← emu.py's _attention_tiles for one head: q, k, v (tiles·64, d) bf16 values, q pre-scaled,
 * rows lq, lk, lv and lo floats apart, keys from t on masked; out (tiles·64, d) bf16 values. For
 * every 64-query tile, for each 64-key tile in order: S = flush(Q·Kᵀ) on the matrix unit, its
 * running max m and sum ℓ (ℓ ← flush(ℓ·α + lane_sum(P)), α = exp(m − m_new), P = exp(S − m_new)),
 * O ← flush(bf16(P)·V + flush(O·α)); then out = bf16(flush(O · recip(ℓ))). d a multiple of 16.
 * Returns 0, -1 when its scratch cannot be allocated, -2 for a d it does not take. */
int EXPORT(emu_attention_head)(const float *q, long lq, const float *k, long lk, const float *v, long lv, long tiles,
                               long t, long d, float *out, long lo) {
    if (d <= 0 || d % 16) return -2;
    long padded = tiles * 64;
    char *raw = malloc((2 * (size_t)padded * d + 64 * (size_t)d + 64 * 64) * sizeof(double) +
                       (64 * 64 + 64 * (size_t)d + 64 * 2) * sizeof(float) + 64);
    if (!raw) return -1;
    double *kd = emu_line(raw);   /* Kᵀ: per key tile, d rows of 64 */
    double *vd = kd + padded * d, *qd = vd + padded * d, *pd = qd + 64 * d;
    float *s = (float *)(pd + 64 * 64), *o = s + 64 * 64, *m = o + 64 * d, *sum = m + 64;
    for (long j = 0; j < tiles; j++) {
        emu_strips(k + j * 64 * lk, 1, lk, d, 64, kd + j * 64 * d);      /* B = K_jᵀ (d, 64) */
        emu_strips(v + j * 64 * lv, lv, 1, 64, d, vd + j * 64 * d);      /* B = V_j (64, d) */
    }
    for (long i = 0; i < tiles; i++) {
        for (long r = 0; r < 64; r++) {
            for (long c = 0; c < d; c++) qd[r * d + c] = q[(i * 64 + r) * lq + c];
            m[r] = -INFINITY;
            sum[r] = 0.0f;
        }
        memset(o, 0, 64 * (size_t)d * sizeof(float));
        for (long j = 0; j < tiles; j++) {
            memset(s, 0, 64 * 64 * sizeof(float));
            emu_tile_product(qd, kd + j * 64 * d, d, 64, s);
            for (long r = 0; r < 64; r++) emu_softmax_row(s + r * 64, 64 * j, t, m + r, sum + r, o + r * d, d);
            for (long c = 0; c < 64 * 64; c++) pd[c] = s[c];                /* bf16(P), widened */
            emu_tile_product(pd, vd + j * 64 * d, 64, d, o);
            for (long c = 0; c < 64 * d; c++) o[c] = emu_flush(o[c]);
        }
        for (long r = 0; r < 64; r++) emu_normalise_row(o + r * d, sum[r], d, out + (i * 64 + r) * lo);
    }
    free(raw);
    return 0;
}


/* ---- the fp32 matmul of the mel front end: contract.matmul_f32 ---------------------------------- */

/* contract.split3: x as hi + mid + lo, each bf16-valued, exactly. */
INLINE void emu_split3(float x, float piece[3]) {
    float hi = emu_float(emu_bits(x) & 0xffff0000u);
    float rest = emu_flush(x - hi);
    float mid = emu_float(emu_bits(rest) & 0xffff0000u);
    piece[0] = hi;
    piece[1] = mid;
    piece[2] = emu_flush(rest - mid);
}

/* contract.SPLIT_PRODUCTS: which pieces of A and B each product of a step takes, in order. */
static const int EMU_SPLIT[6][2] = {{0, 2}, {2, 0}, {1, 1}, {0, 1}, {1, 0}, {0, 0}};
#define EMU_TERMS (EMU_STEP + 1)

/* e ← the exact sum of e (n nonoverlapping components, increasing in magnitude) and x, as Shewchuk's
 * GROW-EXPANSION builds it (each TwoSum's error kept, zeros dropped); returns the new length. */
INLINE int emu_grow(double *e, int n, double x) {
    int out = 0;
    for (int i = 0; i < n; i++) {
        double s = x + e[i], v = s - x, err = (x - (s - v)) + (e[i] - v);
        if (err != 0.0) e[out++] = err;
        x = s;
    }
    if (x != 0.0) e[out++] = x;
    return out;
}

/* The sign (-1, 0, 1) of the exact value of the expansion e[0:n] − mid. */
INLINE int emu_side(const double *e, int n, double mid) {
    double copy[EMU_TERMS + 1];
    memcpy(copy, e, (size_t)n * sizeof(double));
    n = emu_grow(copy, n, -mid);
    return n == 0 ? 0 : copy[n - 1] > 0 ? 1 : -1;              /* the largest component's sign */
}

/* The midpoint between neighbouring floats r and other, exact in float64; past ±FLT_MAX, the overflow
 * threshold (FLT_MAX plus half its spacing), where rounding to nearest turns to infinity. */
INLINE double emu_midpoint(float r, float other) {
    if (isinf(other)) return (double)r + ((double)r - (double)nextafterf(r, 0.0f)) * 0.5;
    return ((double)r + (double)other) * 0.5;
}

/* fl32 of the exact sum of terms[0:n] (nearest even; beyond the overflow threshold, infinity). Where
 * the float64 sum is exact (no addition rounds: its fp32 rounding is the answer) or not finite (an
 * infinite accumulator), that; else decided as exact_sum._round_sum decides it: the sum as an
 * expansion (exact), its float64 value (its components added from the smallest: within an ulp of the
 * exact sum, so its fp32 rounding r is the answer or next to it), then the exact side of the midpoints
 * between r and its neighbours. */
__attribute__((noinline)) static float emu_round_exactly(const double *terms, int n) {
    double e[EMU_TERMS + 1], s = 0.0;
    int len = 0, exact = 1;
    for (int i = 0; i < n; i++) {                       /* most sums here are exact in float64: ties */
        double t = s + terms[i], v = t - s;
        exact &= (s - (t - v)) + (terms[i] - v) == 0.0;   /* TwoSum's error */
        s = t;
    }
    if (exact || !isfinite(s)) return (float)s;
    s = 0.0;
    for (int i = 0; i < n; i++) len = emu_grow(e, len, terms[i]);
    for (int i = 0; i < len; i++) s += e[i];
    float r = (float)s;
    if (isinf(r)) r = copysignf(FLT_MAX, r);          /* decided against the overflow threshold below */
    for (int direction = 1; direction >= -1; direction -= 2) {
        float other = nextafterf(r, direction * INFINITY);
        int side = emu_side(e, len, emu_midpoint(r, other));
        if (side == 0) return emu_bits(r) & 1u ? other : r;              /* a tie: the even one */
        if (side == direction) return other;
    }
    return r;
}

/* One output of contract.matmul_f32 from the pieces of its row of A (piece p at ap + p·a_piece) and
 * column of B (piece p at bp + p·b_piece, `stride` apart): each K step's six products of pieces, each
 * step's sum added to the accumulator exactly and rounded once. The reference for the blocks below. */
INLINE float emu_f32_output(const double *ap, long a_piece, const double *bp, long b_piece, long stride, long k) {
    float acc = 0.0f;
    for (long s = 0; s < k; s += EMU_STEP)
        for (int p = 0; p < 6; p++) {
            double terms[EMU_TERMS];
            terms[0] = acc;
            for (int kk = 0; kk < EMU_STEP; kk++)
                terms[1 + kk] = ap[EMU_SPLIT[p][0] * a_piece + s + kk] * bp[EMU_SPLIT[p][1] * b_piece + (s + kk) * stride];
            acc = emu_round_exactly(terms, EMU_TERMS);
        }
    return acc;
}

typedef long long lvec __attribute__((vector_size(VEC * 4), aligned(8), may_alias));
typedef int ihvec __attribute__((vector_size(VEC * 2), aligned(4), may_alias));

/* An EMU_MR x EMU_NR block of outputs: ad (3 pieces, each EMU_MR rows of k) and bd (3 pieces, each k
 * rows of EMU_NR) widened. Each step's sum s = acc + Σ products is taken in float64 with TwoSum's
 * exact error of every addition, E = Σ errors: the exact sum is s + E, and s + E as computed errs by
 * less than Σ|errors|·2^-49 (twice the bound of E's 8 additions). Where that places the exact sum
 * between the two fp32 midpoints around s's rounding r, the answer is r; where it places it past one
 * midpoint but within half r's spacing on that side of it (|E| and its error below the smaller half
 * spacing: under cancellation E may span many fp32 steps), r's neighbour there. Ties, sums near
 * ±FLT_MAX, infinite ones and the rest are rounded exactly from their terms (emu_round_exactly). In
 * a 30 s window's DFT and mel products (~230M step sums), 140k (tests/data/hello.wav) to 520k (the
 * bench's speech) take a neighbour, 2 to 4 the exact rounding. */
INLINE void emu_f32_block(const double *ad, const double *bd, float *c, long ldc, long k) {
    dvec acc[EMU_MR][EMU_NV];
    for (int r = 0; r < EMU_MR; r++)
        for (int q = 0; q < EMU_NV; q++) acc[r][q] = (dvec){0};
    const lvec magnitude_bits = (lvec){0} + 0x7fffffffffffffffLL, sign_bit = ~magnitude_bits;
    for (long s = 0; s < k; s += EMU_STEP)
        for (int p = 0; p < 6; p++) {
            const double *a = ad + EMU_SPLIT[p][0] * EMU_MR * k, *b = bd + EMU_SPLIT[p][1] * k * EMU_NR;
            dvec sum[EMU_MR][EMU_NV], error[EMU_MR][EMU_NV], spread[EMU_MR][EMU_NV];   /* Σ err, Σ|err| */
            for (int r = 0; r < EMU_MR; r++)
                for (int q = 0; q < EMU_NV; q++) sum[r][q] = error[r][q] = spread[r][q] = (dvec){0};
            for (long kk = s; kk < s + EMU_STEP; kk++) {
                dvec bv[EMU_NV];
                for (int q = 0; q < EMU_NV; q++) bv[q] = *(const dvec *)(b + kk * EMU_NR + q * DVEC);
                for (int r = 0; r < EMU_MR; r++) {
                    double x = a[r * k + kk];
                    for (int q = 0; q < EMU_NV; q++) {
                        dvec product = x * bv[q];                           /* exact */
                        dvec t = sum[r][q] + product, v = t - sum[r][q];
                        dvec err = (sum[r][q] - (t - v)) + (product - v);   /* TwoSum: t + err = sum + product */
                        sum[r][q] = t;
                        error[r][q] += err;
                        spread[r][q] += (dvec)((lvec)err & magnitude_bits);
                    }
                }
            }
            for (int r = 0; r < EMU_MR; r++)
                for (int q = 0; q < EMU_NV; q++) {
                    dvec before = acc[r][q], total = sum[r][q] + before, v = total - before;
                    dvec err = (before - (total - v)) + (sum[r][q] - v);
                    dvec rest = error[r][q] + err, bound = (spread[r][q] + (dvec)((lvec)err & magnitude_bits)) * 0x1p-49;
                    hvec rounded = __builtin_convertvector(total, hvec);
                    dvec back = __builtin_convertvector(rounded, dvec);
                    hvec above = (hvec)((ihvec)rounded & 0x7fffffff);        /* |r| and its neighbours */
                    hvec up = (hvec)((ihvec)above + 1), down = (hvec)((ihvec)above - 1);
                    dvec away = __builtin_convertvector(up - above, dvec) * 0.5;     /* to the midpoints */
                    dvec toward = __builtin_convertvector(above - down, dvec) * 0.5;
                    /* in magnitudes: |s| − |r| (exact) and E with the sign it has against s */
                    dvec delta = (dvec)((lvec)total & magnitude_bits) - (dvec)((lvec)back & magnitude_bits);
                    dvec rest_m = (dvec)((lvec)rest ^ ((lvec)total & sign_bit));
                    dvec past_away = (delta - away) + rest_m, past_toward = (delta + toward) + rest_m;
                    dvec reach = (dvec)((lvec)rest_m & magnitude_bits) + bound;
                    lvec inside = __builtin_convertvector(above, dvec) < (double)FLT_MAX;   /* finite, below ±FLT_MAX */
                    lvec sure = inside & ((bound == 0.0) | ((past_away < -bound) & (past_toward > bound)));
                    lvec near = inside & (reach <= away) & (reach <= toward);   /* within one step of r */
                    acc[r][q] = back;
                    lvec unsure = ~sure;
                    long any = 0;
                    for (int l = 0; l < DVEC; l++) any |= unsure[l];
                    if (!any) continue;                                     /* the common case: one test */
                    for (int l = 0; l < DVEC; l++) {
                        if (sure[l]) continue;
                        float r32 = rounded[l];
                        if (near[l] && r32 != 0.0f && past_away[l] > bound[l]) {
                            acc[r][q][l] = nextafterf(r32, copysignf(INFINITY, r32));
                        } else if (near[l] && r32 != 0.0f && past_toward[l] < -bound[l]) {
                            acc[r][q][l] = nextafterf(r32, 0.0f);
                        } else {
                            double terms[EMU_TERMS];
                            terms[0] = before[l];
                            for (int kk = 0; kk < EMU_STEP; kk++)
                                terms[1 + kk] = a[r * k + s + kk] * b[(s + kk) * EMU_NR + q * DVEC + l];
                            acc[r][q][l] = emu_round_exactly(terms, EMU_TERMS);
                        }
                    }
                }
        }
    for (int r = 0; r < EMU_MR; r++)
        for (int q = 0; q < EMU_NV; q++) *(hvec *)(c + r * ldc + q * DVEC) = __builtin_convertvector(acc[r][q], hvec);
}

/* dst[p·piece + kk·step] ← piece p of x[kk·stride] widened, for kk < kp (zero from k on): a row of A
 * (stride 1) or a column of B (stride ldb). */
INLINE void emu_pieces(const float *x, long stride, long k, long kp, double *dst, long step, long piece) {
    for (long kk = 0; kk < kp; kk++) {
        float pieces[3] = {0.0f, 0.0f, 0.0f};
        if (kk < k) emu_split3(x[kk * stride], pieces);
        for (int p = 0; p < 3; p++) dst[p * piece + kk * step] = pieces[p];
    }
}

/* c (m, n) ← contract.matmul_f32(a, b) before its flush: a (m, k), b (k, n), rows lda, ldb and ldc
 * floats apart. B's pieces are widened once, row-major and as EMU_NR-column strips; A's, 4 rows at a
 * time. Returns 0, or -1 when its scratch cannot be allocated. */
int EXPORT(emu_matmul_f32)(const float *a, long lda, const float *b, long ldb, float *c, long ldc, long m, long k,
                           long n) {
    if (m <= 0 || n <= 0) return 0;
    long kp = (k + EMU_STEP - 1) / EMU_STEP * EMU_STEP, full_n = n / EMU_NR * EMU_NR;
    size_t b_size = 3 * (size_t)kp * n, strips_size = 3 * (size_t)kp * full_n;
    char *raw = malloc((b_size + strips_size + 3 * EMU_MR * (size_t)kp) * sizeof(double) + 64);
    if (!raw) return -1;
    double *bw = emu_line(raw);   /* [piece][kk][j] */
    double *strips = bw + b_size, *ad = strips + strips_size;        /* [strip][piece][kk][l]; [piece][r][kk] */
    for (long j = 0; j < n; j++) emu_pieces(b + j, ldb, k, kp, bw + j, n, kp * n);
    for (long j = 0; j < full_n; j += EMU_NR)
        for (int p = 0; p < 3; p++)
            for (long kk = 0; kk < kp; kk++)
                for (int l = 0; l < EMU_NR; l++)
                    strips[((j / EMU_NR * 3 + p) * kp + kk) * EMU_NR + l] = bw[(p * kp + kk) * n + j + l];
    for (long i = 0; i < m; i += EMU_MR) {
        long rows = m - i < EMU_MR ? m - i : EMU_MR;
        for (long r = 0; r < rows; r++) emu_pieces(a + (i + r) * lda, 1, k, kp, ad + r * kp, 1, EMU_MR * kp);
        if (rows == EMU_MR)
            for (long j = 0; j < full_n; j += EMU_NR)
                emu_f32_block(ad, strips + j / EMU_NR * 3 * kp * EMU_NR, c + i * ldc + j, ldc, kp);
        for (long r = 0; r < rows; r++)
            for (long j = rows == EMU_MR ? full_n : 0; j < n; j++)
                c[(i + r) * ldc + j] = emu_f32_output(ad + r * kp, EMU_MR * kp, bw + j, kp * n, n, kp);
    }
    free(raw);
    return 0;
}
