/* Elementwise ops and small reductions over n elements (R rows of C for the row ops), called inside the
 * parallel region the schedule opens (PARALLEL, templates/c/elementwise.c.j2; mean and mean_bwd: outside, on
 * one thread). acc: the output accumulates (a parameter gradient). */

ALWAYS_INLINE void add_forward(float *out, const float *a, const float *b, long n, int acc) {
    #pragma omp for simd
    for (long i = 0; i < n; i++) out[i] = acc ? out[i] + (a[i] + b[i]) : a[i] + b[i];
}

ALWAYS_INLINE void bias_add_forward(float *out, const float *x, const float *b, int R, int C) {
    #pragma omp for
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) out[(size_t)r * C + c] = x[(size_t)r * C + c] + b[c];
}

/* db[c] (+)= sum over the R rows of dy[r, c] */
ALWAYS_INLINE void bias_add_backward(float *db, const float *dy, int R, int C, int acc) {
    #pragma omp for
    for (int c = 0; c < C; c++) {
        float s = 0.0f;
        for (int r = 0; r < R; r++) s += dy[(size_t)r * C + c];
        db[c] = acc ? db[c] + s : s;
    }
}

ALWAYS_INLINE void gelu_forward(float *out, const float *x, long n) {
    #pragma omp for simd
    for (long i = 0; i < n; i++) out[i] = gelu_fwd(x[i]);
}

ALWAYS_INLINE void gelu_backward(float *dx, const float *dy, const float *x, long n) {
    #pragma omp for simd
    for (long i = 0; i < n; i++) dx[i] = dy[i] * gelu_grad(x[i]);
}

/* the mean of n values, summed in double in order */
ALWAYS_INLINE void mean_forward(float *out, const float *x, long n) {
    double s = 0.0;
    for (long i = 0; i < n; i++) s += x[i];
    *out = (float)(s / (double)n);
}

ALWAYS_INLINE void mean_backward(float *dx, const float *dout, long n) {
    float v = *dout / (float)n;
    for (long i = 0; i < n; i++) dx[i] = v;
}
