/* xent.cuh -- cross-entropy over the first V of VP logit columns (padded columns never enter the softmax),
 * as templates over V, VP and the threads per row NT: one block of NT threads per row, block reductions in a
 * fixed order (the same bits every run).
 *
 * Needs from the program before it: floatX, to_float / to_floatX, block_max, block_sum, LAUNCH_CHECK and
 * LLMGEN_LAUNCH.
 */

/* the row's maximum mx and sum of exp(z - mx) over its first V columns; red: 33 floats of shared memory */
template <int V, int NT>
__device__ __forceinline__ void xent_row_stats(const floatX *z, float *red, float &mx, float &sum) {
    mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += NT) mx = fmaxf(mx, to_float(z[v]));
    mx = block_max(mx, red);
    sum = 0.0f;
    for (int v = threadIdx.x; v < V; v += NT) sum += expf(to_float(z[v]) - mx);
    sum = block_sum(sum, red);
}

/* d[v] = (softmax(z)[v] - onehot(tgt)[v]) * scale for v < V, 0 in the padding */
template <int V, int VP, int NT>
__device__ __forceinline__ void xent_row_grad(floatX *d, const floatX *z, float mx, float inv, int tgt, float scale) {
    for (int v = threadIdx.x; v < VP; v += NT) {
        float g = 0.0f;
        if (v < V) g = (expf(to_float(z[v]) - mx) * inv - (v == tgt ? 1.0f : 0.0f)) * scale;
        d[v] = to_floatX(g);
    }
}

/* losses[r] = logsumexp(z) - z[target];  dlogits = (softmax(z) - onehot(target)) * dloss / N, written over
 * the logits: every thread reads z[target] before the reductions' barriers, and afterwards writes only the
 * elements it alone reads. */
template <int V, int VP, int NT>
__global__ void __launch_bounds__(NT) softmax_xent_kernel(float *losses, floatX *dlogits, const floatX *logits,
                                                          const int *targets, const float *dloss, int N) {
    __shared__ float red[33];
    const long r = blockIdx.x;
    const floatX *z = logits + r * VP;
    const int tgt = targets[r];
    const float zt = to_float(z[tgt]);
    float mx, sum;
    xent_row_stats<V, NT>(z, red, mx, sum);
    if (threadIdx.x == 0) losses[r] = logf(sum) + mx - zt;
    xent_row_grad<V, VP, NT>(dlogits + r * VP, z, mx, 1.0f / sum, tgt, *dloss / (float)N);
}

/* losses[r] = logsumexp(z) - z[target] */
template <int V, int VP, int NT>
__global__ void __launch_bounds__(NT) xent_kernel(float *losses, const floatX *logits, const int *targets) {
    __shared__ float red[33];
    const long r = blockIdx.x;
    const floatX *z = logits + r * VP;
    float mx, sum;
    xent_row_stats<V, NT>(z, red, mx, sum);
    if (threadIdx.x == 0) losses[r] = logf(sum) + mx - to_float(z[targets[r]]);
}

/* dlogits = (softmax(z) - onehot(target)) * dlosses[r] */
template <int V, int VP, int NT>
__global__ void __launch_bounds__(NT) xent_bwd_kernel(floatX *dlogits, const float *dlosses, const floatX *logits,
                                                      const int *targets) {
    __shared__ float red[33];
    const long r = blockIdx.x;
    const floatX *z = logits + r * VP;
    float mx, sum;
    xent_row_stats<V, NT>(z, red, mx, sum);
    xent_row_grad<V, VP, NT>(dlogits + r * VP, z, mx, 1.0f / sum, targets[r], dlosses[r]);
}

/* host launchers: N rows */
template <int V, int VP, int NT>
static void softmax_xent(float *losses, floatX *dlogits, const floatX *logits, const int *targets, const float *dloss,
                         int N) {
    LLMGEN_LAUNCH((softmax_xent_kernel<V, VP, NT>), dim3(N), dim3(NT), 0, 0, losses, dlogits, logits, targets, dloss,
                  N);
    LAUNCH_CHECK("softmax_xent_kernel");
}

template <int V, int VP, int NT>
static void xent_fwd(float *losses, const floatX *logits, const int *targets, int N) {
    LLMGEN_LAUNCH((xent_kernel<V, VP, NT>), dim3(N), dim3(NT), 0, 0, losses, logits, targets);
    LAUNCH_CHECK("xent_kernel");
}

template <int V, int VP, int NT>
static void xent_bwd(floatX *dlogits, const float *dlosses, const floatX *logits, const int *targets, int N) {
    LLMGEN_LAUNCH((xent_bwd_kernel<V, VP, NT>), dim3(N), dim3(NT), 0, 0, dlogits, dlosses, logits, targets);
    LAUNCH_CHECK("xent_bwd_kernel");
}
