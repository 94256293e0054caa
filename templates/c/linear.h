/* Linear layers over M = B*T rows, weights (N, K) row-major like llm.c: each is one call of the GEMM engine
 * (templates/c/gemm.h) on the calling thread's share of C, so the schedule calls these (templates/c/linear.c.j2)
 * in a parallel region with literal sizes, operand layouts, epilogue and cache blocks (kc, mc, nc:
 * codegen/c.py's gemm_blocks). */

/* out[m,n] = sum_k x[m,k] * w[n,k] (+ b[n] unless b is NULL); with gelu, pre gets that and out = gelu(pre).
 * GEMM: C = out or pre (M x N), A = x, B = w^T (packed from w's rows); bias and GELU in the epilogue. */
ALWAYS_INLINE void linear_forward(float *pre, float *out, const float *x, const float *w, const float *b, int M, int K,
                                  int N, int gelu, int kc, int mc, int nc) {
    gemm_thread(&(Gemm){ .m = M, .n = N, .k = K, .a = x, .lda = K, .b = w, .ldb = K, .b_t = 1,
                         .c = gelu ? pre : out, .ldc = N, .bias = b, .epi = gelu ? EPI_GELU : EPI_NONE, .out = out,
                         .kc = kc, .mc = mc, .nc = nc });
}

/* dx[m,k] = sum_n dy[m,n] * w[n,k], times gelu'(pre[m,k]) with dgelu.
 * GEMM: C = dx (M x K), A = dy, B = w, reduction over N; dGELU in the epilogue. */
ALWAYS_INLINE void linear_backward_dx(float *dx, const float *dy, const float *w, const float *pre, int M, int K, int N,
                                      int dgelu, int kc, int mc, int nc) {
    gemm_thread(&(Gemm){ .m = M, .n = K, .k = N, .a = dy, .lda = N, .b = w, .ldb = K, .c = dx, .ldc = K,
                         .epi = dgelu ? EPI_DGELU : EPI_NONE, .pre = pre, .kc = kc, .mc = mc, .nc = nc });
}

/* dw[n,k] (+)= sum_m dy[m,n] * x[m,k]; unless db is NULL, db[n] (+)= sum_m dy[m,n] (acc_w, acc_b: accumulate).
 * GEMM: C = dw (N x K), A = dy^T (read in place: dy's rows are A's columns), B = x, reduction over the M rows;
 * then the bias grad, threads owning 64-column chunks. */
ALWAYS_INLINE void linear_backward_dw(float *dw, float *db, const float *dy, const float *x, int M, int K, int N,
                                      int acc_w, int acc_b, int kc, int mc, int nc) {
    gemm_thread(&(Gemm){ .m = N, .n = K, .k = M, .a = dy, .lda = N, .a_t = 1, .b = x, .ldb = K, .c = dw, .ldc = K,
                         .accumulate = acc_w, .kc = kc, .mc = mc, .nc = nc });
    if (!db) return;
    #pragma omp for schedule(static)
    for (int n0 = 0; n0 < N; n0 += 64) {
        const int nn = N - n0 < 64 ? N - n0 : 64;
        float s[64] = {0};
        for (int m = 0; m < M; m++) {
            const float *g = dy + (size_t)m * N + n0;
            #pragma omp simd
            for (int j = 0; j < nn; j++) s[j] += g[j];
        }
        for (int j = 0; j < nn; j++) db[n0 + j] = acc_b ? db[n0 + j] + s[j] : s[j];
    }
}
