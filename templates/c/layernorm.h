/* LayerNorm over the last axis (C channels) of N rows, and its backward (the schedule calls these with literal
 * sizes in a parallel region, from templates/c/layernorm.c.j2; the bodies share the rows with `omp for`). */

/* one row: mean and rstd of x, out = (x - mean) * rstd * w + b; keeps mean[r], rstd[r] for the backward */
ALWAYS_INLINE void layernorm_row(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                 int r, int C, float eps) {
    float m = 0.0f, var = 0.0f;
    #pragma omp simd reduction(+:m)
    for (int c = 0; c < C; c++) m += x[c];
    m /= C;
    #pragma omp simd reduction(+:var)
    for (int c = 0; c < C; c++) { float d = x[c] - m; var += d * d; }
    var /= C;
    float s = 1.0f / sqrtf(var + eps);
    #pragma omp simd
    for (int c = 0; c < C; c++) out[(size_t)r * C + c] = (x[c] - m) * s * w[c] + b[c];
    mean[r] = m;
    rstd[r] = s;
}

ALWAYS_INLINE void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                     const float *b, int N, int C, float eps) {
    #pragma omp for
    for (int r = 0; r < N; r++) layernorm_row(out, mean, rstd, inp + (size_t)r * C, w, b, r, C, eps);
}

/* sum = a + bb (the residual stream, kept), then out = layernorm(sum) */
ALWAYS_INLINE void residual_layernorm_forward(float *sum, float *out, float *mean, float *rstd, const float *a,
                                              const float *bb, const float *w, const float *b, int N, int C,
                                              float eps) {
    #pragma omp for
    for (int r = 0; r < N; r++) {
        float *x = sum + (size_t)r * C;
        #pragma omp simd
        for (int c = 0; c < C; c++) x[c] = a[(size_t)r * C + c] + bb[(size_t)r * C + c];
        layernorm_row(out, mean, rstd, x, w, b, r, C, eps);
    }
}

/* dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) (+ dres unless NULL); dw (+)= sum_rows dy*xhat, db (+)=
 * sum_rows dy (acc_w, acc_b), dbias += sum_rows dx unless NULL (the fused projection's bias grad) by column block */
ALWAYS_INLINE void layernorm_backward(float *dx, float *dw, float *db, float *dbias, const float *dy,
                                      const float *inp, const float *w, const float *mean, const float *rstd,
                                      const float *dres, int N, int C, int acc_w, int acc_b) {
    #pragma omp for
    for (int r = 0; r < N; r++) {
        const float *g = dy + (size_t)r * C, *x = inp + (size_t)r * C, *res = dres ? dres + (size_t)r * C : NULL;
        float m = mean[r], s = rstd[r], a = 0.0f, bsum = 0.0f;
        #pragma omp simd reduction(+:a, bsum)
        for (int c = 0; c < C; c++) {
            float gw = g[c] * w[c];
            a += gw;
            bsum += gw * (x[c] - m) * s;
        }
        a /= C;
        bsum /= C;
        float *o = dx + (size_t)r * C;
        if (res) {
            #pragma omp simd
            for (int c = 0; c < C; c++) o[c] = res[c] + s * (g[c] * w[c] - a - (x[c] - m) * s * bsum);
        } else {
            #pragma omp simd
            for (int c = 0; c < C; c++) o[c] = s * (g[c] * w[c] - a - (x[c] - m) * s * bsum);
        }
    }
    #pragma omp for
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        float accw[16] = {0}, accb[16] = {0}, accd[16] = {0};
        for (int r = 0; r < N; r++) {
            const float *g = dy + (size_t)r * C, *x = inp + (size_t)r * C, *d = dx + (size_t)r * C;
            float m = mean[r], s = rstd[r];
            #pragma omp simd
            for (int c = c0; c < c1; c++) {
                accw[c - c0] += g[c] * (x[c] - m) * s;
                accb[c - c0] += g[c];
                accd[c - c0] += d[c];
            }
        }
        for (int c = c0; c < c1; c++) {
            dw[c] = acc_w ? dw[c] + accw[c - c0] : accw[c - c0];
            db[c] = acc_b ? db[c] + accb[c - c0] : accb[c - c0];
            if (dbias) dbias[c] += accd[c - c0];
        }
    }
}
