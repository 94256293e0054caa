/* Causal attention: NH query heads over KV key/value heads (grouped-query attention; multi-head attention is
 * KV == NH), heads of HD channels. Query head h reads K/V head h / (NH/KV) by indexing, so the K/V of a group
 * are never repeated in memory. Operands are addressed by row strides: q[b, t, h] = q + (b*T + t)*QS + h*HD,
 * k and v of K/V head g with KS, y and dy with YS; GPT-2 passes its packed qkv (QS = KS = 3C, k and v at +C
 * and +2C), Llama its separate q, k, v. The gradients dq, dk, dv have the layouts of q, k, v. Softmax
 * statistics are kept as one log-sum-exp per (b, h, t); no (T,T) matrix is stored between forward and
 * backward. B and T are the program's runtime batch shape. Two schedules (codegen/c.py picks by the group
 * size; the schedule calls them in a parallel region (PARALLEL) with literal sizes, from templates/c/attention.c.j2):
 *
 * one K/V head per query head: threads split the (b, h) heads; inside a head every product is a call of the
 * GEMM engine on the calling thread (.serial = 1), reading q, k, v, dy in place through their row strides,
 * one block of rb query rows [r0, r1) at a time so that the masked upper triangle is mostly skipped (only
 * keys t2 < r1 take part; inside the block, p = 0 above the diagonal; each thread keeps T x T scratch):
 *   forward   S = Q K^T;  P = softmax(S * scale) on t2 <= t;  Y = P V
 *   backward  S = Q K^T;  P = exp(S * scale - lse);  dP = dY V^T;  dS = P (dP - D) scale, D = dy.y;
 *             dQ = dS K;  then per block of key rows [c0, c1), over the queries t >= c0: dK = dS^T Q; dV = P^T dY
 * grouped heads (NH > KV): row by row; the backward's threads own a (b, K/V head) and sum its dk, dv over the
 * group's query heads in order.
 * Every element has one fixed summation order: the bits do not depend on the thread count. */

/* one product of the attention on the calling thread: C (m x n) = A (m x k) . B, cache blocks kc, mc, nc */
#define ATT_GEMM(m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, ...) \
    gemm_thread(&(Gemm){ .serial = 1, .m = m_, .n = n_, .k = k_, .a = a_, .lda = lda_, .b = b_, .ldb = ldb_, \
                         .c = c_, .ldc = ldc_, .kc = kc, .mc = mc, .nc = nc, __VA_ARGS__ })

/* y[b,t,h] = sum_{t2<=t} softmax_t2(q_h.k2 * scale) v2;  lse[b,h,t] = log sum_t2 exp(q_h.k2 * scale) */
ALWAYS_INLINE void attention_forward(float *y, float *lse, const float *q, const float *kk, const float *v, int NH,
                                     int HD, int QS, int KS, int YS, float scale, int rb, int kc, int mc, int nc) {
    float *S = (float *)xmalloc(sizeof(float) * T * T);       /* scores, then probabilities */
    #pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *qh = q + (size_t)b * T * QS + h * HD;
            const float *kh = kk + (size_t)b * T * KS + h * HD, *vh = v + (size_t)b * T * KS + h * HD;
            float *o = y + (size_t)b * T * YS + h * HD;
            for (int r0 = 0; r0 < T; r0 += rb) {
                const int r1 = r0 + rb < T ? r0 + rb : T;
                ATT_GEMM(r1 - r0, r1, HD, qh + (size_t)r0 * QS, QS, kh, KS, S + (size_t)r0 * T, T, .b_t = 1);
                for (int t = r0; t < r1; t++) {
                    float *s = S + (size_t)t * T;
                    float mx = -INFINITY;
                    #pragma omp simd reduction(max:mx)
                    for (int t2 = 0; t2 <= t; t2++) {
                        s[t2] *= scale;
                        mx = s[t2] > mx ? s[t2] : mx;
                    }
                    float sum = 0.0f;
                    #pragma omp simd reduction(+:sum)
                    for (int t2 = 0; t2 <= t; t2++) {
                        s[t2] = exp_fast(s[t2] - mx);
                        sum += s[t2];
                    }
                    const float inv = 1.0f / sum;
                    #pragma omp simd
                    for (int t2 = 0; t2 <= t; t2++) s[t2] *= inv;
                    for (int t2 = t + 1; t2 < r1; t2++) s[t2] = 0.0f;
                    lse[((size_t)b * NH + h) * T + t] = mx + logf(sum);
                }
                ATT_GEMM(r1 - r0, HD, r1, S + (size_t)r0 * T, T, vh, KS, o + (size_t)r0 * YS, YS, .a_t = 0);
            }
        }
    }
    free(S);
}

/* Recomputes p = exp(q.k2 * scale - lse); with D = dy.y (= sum_t2 p dp): ds = p (dy.v2 - D),
 * dq = sum ds k2 scale, dk2 = sum ds q scale, dv2 = sum p dy. Each (b, h) owns its columns of dq, dk, dv
 * (all overwritten), so threads never write the same element. */
ALWAYS_INLINE void attention_backward(float *dq, float *dk, float *dv, const float *dy, const float *q, const float *kk,
                                      const float *v, const float *y, const float *lse, int NH, int HD, int QS, int KS,
                                      int YS, float scale, int rb, int kc, int mc, int nc) {
    float *P = (float *)xmalloc(sizeof(float) * T * T);       /* scores, then probabilities */
    float *dS = (float *)xmalloc(sizeof(float) * T * T);      /* dP = dY V^T, then dS */
    #pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float *qh = q + (size_t)b * T * QS + h * HD;
            const float *kh = kk + (size_t)b * T * KS + h * HD, *vh = v + (size_t)b * T * KS + h * HD;
            const float *g = dy + (size_t)b * T * YS + h * HD, *yo = y + (size_t)b * T * YS + h * HD;
            float *dqh = dq + (size_t)b * T * QS + h * HD;
            float *dkh = dk + (size_t)b * T * KS + h * HD, *dvh = dv + (size_t)b * T * KS + h * HD;
            for (int r0 = 0; r0 < T; r0 += rb) {
                const int r1 = r0 + rb < T ? r0 + rb : T;
                ATT_GEMM(r1 - r0, r1, HD, qh + (size_t)r0 * QS, QS, kh, KS, P + (size_t)r0 * T, T, .b_t = 1);
                ATT_GEMM(r1 - r0, r1, HD, g + (size_t)r0 * YS, YS, vh, KS, dS + (size_t)r0 * T, T, .b_t = 1);
                for (int t = r0; t < r1; t++) {
                    float *p = P + (size_t)t * T, *ds = dS + (size_t)t * T;
                    const float *gt = g + (size_t)t * YS, *yt = yo + (size_t)t * YS;
                    float D = 0.0f;
                    #pragma omp simd reduction(+:D)
                    for (int i = 0; i < HD; i++) D += gt[i] * yt[i];
                    const float l = lse[((size_t)b * NH + h) * T + t];
                    #pragma omp simd
                    for (int t2 = 0; t2 <= t; t2++) {
                        p[t2] = exp_fast(p[t2] * scale - l);
                        ds[t2] = p[t2] * (ds[t2] - D) * scale;
                    }
                    for (int t2 = t + 1; t2 < r1; t2++) p[t2] = ds[t2] = 0.0f;
                }
                ATT_GEMM(r1 - r0, HD, r1, dS + (size_t)r0 * T, T, kh, KS, dqh + (size_t)r0 * QS, QS, .a_t = 0);
            }
            /* key rows [c0, c1) gather from the queries t >= c0: rows t of P and dS hold every t2 < c1
             * (the blocks are the same as above), zeros above the diagonal */
            for (int c0 = 0; c0 < T; c0 += rb) {
                const int c1 = c0 + rb < T ? c0 + rb : T;
                ATT_GEMM(c1 - c0, HD, T - c0, dS + (size_t)c0 * T + c0, T, qh + (size_t)c0 * QS, QS,
                         dkh + (size_t)c0 * KS, KS, .a_t = 1);
                ATT_GEMM(c1 - c0, HD, T - c0, P + (size_t)c0 * T + c0, T, g + (size_t)c0 * YS, YS,
                         dvh + (size_t)c0 * KS, KS, .a_t = 1);
            }
        }
    }
    free(P);
    free(dS);
}

/* the grouped forward: y and lse as attention_forward's, with k, v of K/V head h / (NH/KV), row by row */
ALWAYS_INLINE void attention_forward_grouped(float *y, float *lse, const float *q, const float *kk, const float *v,
                                             int NH, int KV, int HD, int QS, int KS, int YS, float scale) {
    #pragma omp for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const int g = h / (NH / KV);     /* this query head's K/V head */
            float *att = (float *)xmalloc(sizeof(float) * T);
            for (int t = 0; t < T; t++) {
                const float *qt = q + ((size_t)b * T + t) * QS + h * HD;
                float mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k2 = kk + ((size_t)b * T + t2) * KS + g * HD;
                    float s = 0.0f;
                    for (int i = 0; i < HD; i++) s += qt[i] * k2[i];
                    s *= scale;
                    att[t2] = s;
                    if (s > mx) mx = s;
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { att[t2] = expf(att[t2] - mx); sum += att[t2]; }
                float inv = 1.0f / sum;
                float *o = y + ((size_t)b * T + t) * YS + h * HD;
                for (int i = 0; i < HD; i++) o[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v2 = v + ((size_t)b * T + t2) * KS + g * HD;
                    float p = att[t2] * inv;
                    for (int i = 0; i < HD; i++) o[i] += p * v2[i];
                }
                lse[((size_t)b * NH + h) * T + t] = mx + logf(sum);
            }
            free(att);
        }
    }
}

/* the grouped backward: dk2 and dv2 sum over the NH/KV query heads of a group. Each (b, K/V head) owns its
 * dk, dv columns and the dq columns of its group: no two threads write one element. */
ALWAYS_INLINE void attention_backward_grouped(float *dq, float *dk, float *dv, const float *dy, const float *q,
                                              const float *kk, const float *v, const float *y, const float *lse, int NH,
                                              int KV, int HD, int QS, int KS, int YS, float scale) {
    const int R = NH / KV;               /* query heads per K/V head */
    #pragma omp for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++) {
        for (int g = 0; g < KV; g++) {
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t;
                float *dk2 = dk + row * KS + g * HD;
                float *dv2 = dv + row * KS + g * HD;
                float *dqt = dq + row * QS + g * (R * HD);
                for (int i = 0; i < HD; i++) dk2[i] = dv2[i] = 0.0f;
                for (int i = 0; i < R * HD; i++) dqt[i] = 0.0f;
            }
            for (int h = g * R; h < (g + 1) * R; h++) {
                for (int t = 0; t < T; t++) {
                    size_t row = (size_t)b * T + t;
                    const float *qt = q + row * QS + h * HD;
                    const float *gy = dy + row * YS + h * HD;
                    const float *yt = y + row * YS + h * HD;
                    float *dqt = dq + row * QS + h * HD;
                    float D = 0.0f;
                    for (int i = 0; i < HD; i++) D += gy[i] * yt[i];
                    float l = lse[((size_t)b * NH + h) * T + t];
                    for (int t2 = 0; t2 <= t; t2++) {
                        size_t row2 = (size_t)b * T + t2;
                        const float *k2 = kk + row2 * KS + g * HD;
                        const float *v2 = v + row2 * KS + g * HD;
                        float *dk2 = dk + row2 * KS + g * HD;
                        float *dv2 = dv + row2 * KS + g * HD;
                        float s = 0.0f, dp = 0.0f;
                        for (int i = 0; i < HD; i++) { s += qt[i] * k2[i]; dp += gy[i] * v2[i]; }
                        float p = expf(s * scale - l);
                        float ds = p * (dp - D) * scale;
                        for (int i = 0; i < HD; i++) {
                            dqt[i] += ds * k2[i];
                            dk2[i] += ds * qt[i];
                            dv2[i] += p * gy[i];
                        }
                    }
                }
            }
        }
    }
}
