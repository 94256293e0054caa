/* RMSNorm over the last axis (C channels) of N rows (Llama): y = w * x / sqrt(mean(x^2) + eps). The residual
 * variant adds two streams first and keeps the sum (the next residual stream). Called inside the
 * parallel region the schedule opens (PARALLEL, templates/c/rmsnorm.c.j2), with literal sizes. */

/* one row: out = w * x * rstd, rstd[r] = 1 / sqrt(mean_c x[c]^2 + eps) (kept for the backward) */
ALWAYS_INLINE void rmsnorm_row(float *out, float *rstd, const float *x, const float *w, int r, int C, float eps) {
    float ss = 0.0f;
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    float s = 1.0f / sqrtf(ss / C + eps);
    float *o = out + (size_t)r * C;
    for (int c = 0; c < C; c++) o[c] = w[c] * (x[c] * s);
    rstd[r] = s;
}

ALWAYS_INLINE void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    #pragma omp for
    for (int r = 0; r < N; r++) rmsnorm_row(out, rstd, inp + (size_t)r * C, w, r, C, eps);
}

/* sum = a + bb (the residual stream, kept), then out = rmsnorm(sum): one pass over each row */
ALWAYS_INLINE void residual_rmsnorm_forward(float *sum, float *out, float *rstd, const float *a, const float *bb,
                                            const float *w, int N, int C, float eps) {
    #pragma omp for
    for (int r = 0; r < N; r++) {
        float *x = sum + (size_t)r * C;
        const float *xa = a + (size_t)r * C, *xb = bb + (size_t)r * C;
        for (int c = 0; c < C; c++) x[c] = xa[c] + xb[c];
        rmsnorm_row(out, rstd, x, w, r, C, eps);
    }
}

/* dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) (+ dres unless NULL), xhat = x * rstd;
 * dw (+)= sum_rows dy*xhat (acc_w: accumulate; threads own 16-channel column blocks) */
ALWAYS_INLINE void rmsnorm_backward(float *dx, float *dw, const float *dy, const float *inp, const float *w,
                                    const float *rstd, const float *dres, int N, int C, int acc_w) {
    #pragma omp for
    for (int r = 0; r < N; r++) {
        const float *g = dy + (size_t)r * C, *x = inp + (size_t)r * C;
        float s = rstd[r], m = 0.0f;
        for (int c = 0; c < C; c++) m += g[c] * w[c] * x[c];
        m *= s / C;    /* mean(dy*w*xhat) */
        float *o = dx + (size_t)r * C;
        if (dres) {
            const float *res = dres + (size_t)r * C;
            for (int c = 0; c < C; c++) o[c] = res[c] + s * (g[c] * w[c] - x[c] * s * m);
        } else {
            for (int c = 0; c < C; c++) o[c] = s * (g[c] * w[c] - x[c] * s * m);
        }
    }
    #pragma omp for
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        float accw[16] = {0};
        for (int r = 0; r < N; r++) {
            const float *g = dy + (size_t)r * C, *x = inp + (size_t)r * C;
            float s = rstd[r];
            for (int c = c0; c < c1; c++) accw[c - c0] += g[c] * (x[c] * s);
        }
        for (int c = c0; c < c1; c++) dw[c] = acc_w ? dw[c] + accw[c - c0] : accw[c - c0];
    }
}
