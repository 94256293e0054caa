/* Cross-entropy over the first V of Vp logit columns (padded columns never enter the softmax). Rows are
 * independent: threads split them (`omp for`, in the parallel region the schedule opens). Each row
 * is a few vectorised passes (exp_fast, omp simd reductions with a fixed vector width: the same bits every run). */

/* losses[r] = logsumexp(z) - z[target];  dlogits = (softmax(z) - onehot(target)) * dloss / (B*T), written over
 * the logits (in place is safe: each element is read before it is written). Three passes per row: max;
 * e = exp(z - max) stored into dlogits while summing; scale by 1/sum. */
ALWAYS_INLINE void softmax_xent_forward(float *losses, float *dlogits, const float *logits, const int *targets,
                                        const float *dloss, int V, int Vp) {
    const float dscale = *dloss / (float)BT;
    #pragma omp for schedule(static)
    for (int r = 0; r < BT; r++) {
        const float *z = logits + (size_t)r * Vp;
        float *d = dlogits + (size_t)r * Vp;
        float mx = -INFINITY;
        #pragma omp simd reduction(max:mx)
        for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        const int tgt = targets[r];
        const float zt = z[tgt];
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int v = 0; v < V; v++) {
            float e = exp_fast(z[v] - mx);
            d[v] = e;
            sum += e;
        }
        losses[r] = logf(sum) + mx - zt;
        const float scale = dscale / sum;
        #pragma omp simd
        for (int v = 0; v < V; v++) d[v] *= scale;
        d[tgt] -= dscale;
        for (int v = V; v < Vp; v++) d[v] = 0.0f;
    }
}

/* losses[r] = logsumexp(z) - z[target] */
ALWAYS_INLINE void xent_forward(float *losses, const float *logits, const int *targets, int V, int Vp) {
    #pragma omp for schedule(static)
    for (int r = 0; r < BT; r++) {
        const float *z = logits + (size_t)r * Vp;
        float mx = -INFINITY;
        #pragma omp simd reduction(max:mx)
        for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int v = 0; v < V; v++) sum += exp_fast(z[v] - mx);
        losses[r] = logf(sum) + mx - z[targets[r]];
    }
}

/* dlogits = (softmax(z) - onehot(target)) * dlosses[r] */
ALWAYS_INLINE void xent_backward(float *dlogits, const float *dlosses, const float *logits, const int *targets, int V,
                                 int Vp) {
    #pragma omp for schedule(static)
    for (int r = 0; r < BT; r++) {
        const float *z = logits + (size_t)r * Vp;
        float *d = dlogits + (size_t)r * Vp;
        float mx = -INFINITY;
        #pragma omp simd reduction(max:mx)
        for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        const int tgt = targets[r];
        float sum = 0.0f;
        #pragma omp simd reduction(+:sum)
        for (int v = 0; v < V; v++) {
            float e = exp_fast(z[v] - mx);
            d[v] = e;
            sum += e;
        }
        const float scale = dlosses[r] / sum;
        #pragma omp simd
        for (int v = 0; v < V; v++) d[v] *= scale;
        d[tgt] -= dlosses[r];
        for (int v = V; v < Vp; v++) d[v] = 0.0f;
    }
}
