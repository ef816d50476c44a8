/* The `emu` backend's matrix unit: the NPU's mmul as kernels/contract.py's `matmul` specifies it,
 * natively, for kernels/emu.py. Included by isa_*.c after cpu_kernels.h (its EXPORT and INLINE), so
 * it is built once per x86-64 level like the cpu backend's kernels.
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
    double *ad = (double *)(raw + (64 - (size_t)raw % 64) % 64), *bd = ad + EMU_CHUNK * k;
    for (long i0 = 0; i0 < m; i0 += EMU_CHUNK) {
        long rows = m - i0 < EMU_CHUNK ? m - i0 : EMU_CHUNK, full_rows = rows / EMU_MR * EMU_MR;
        for (long r = 0; r < rows; r++)
            for (long kk = 0; kk < k; kk++) ad[r * k + kk] = a[(i0 + r) * lda + kk];
        float *cc = c + i0 * ldc;
        for (long j = 0; j < full_n; j += EMU_NR) {
            for (long kk = 0; kk < k; kk++)
                for (int l = 0; l < EMU_NR; l++) bd[kk * EMU_NR + l] = b[kk * ldb + j + l];
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
