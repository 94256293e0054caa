/* adamw.cuh -- the optimizer as templates: the global gradient norm (over N elements, NB blocks), then AdamW
 * (torch.optim.AdamW's single-tensor formula) after clip_grad_norm_'s rescale. Parameters, grads and both
 * moments share one layout; gradients, moments and the master weights are fp32.
 *
 * The optimizer's constants come from the instance as a type K with static constexpr members: beta1, beta2
 * (double), beta2f (float), max_norm and eps (float), so they stay compile-time literals in the kernels.
 *
 * Needs from the program before it: floatX, round_param, block_sum_d, cdiv, LAUNCH_CHECK and LLMGEN_LAUNCH.
 */

/* the norm: NB blocks of 256 threads each sum a fixed stride of the N gradients in double, one block adds
 * their partials in order: the same bits on every run */
template <long N, int NB>
__global__ void __launch_bounds__(256) grad_norm_kernel(double *partial, const float *grads) {
    __shared__ double red[33];
    double s = 0.0;
    for (long i = (long)blockIdx.x * 256 + threadIdx.x; i < N; i += (long)NB * 256) s += (double)grads[i] * grads[i];
    s = block_sum_d(s, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
template <int NB>
__global__ void __launch_bounds__(256) grad_norm_final_kernel(float *out, const double *partial) {
    __shared__ double red[33];
    double s = 0.0;
    for (int j = threadIdx.x; j < NB; j += 256) s += partial[j];
    s = block_sum_d(s, red);
    if (threadIdx.x == 0) *out = (float)sqrt(s);
}

/* element i: clip the gradient, decay (decay = keep or 1) the master weight, update the moments, take the
 * bias-corrected step (and, in bf16 programs, the parameter from the master by stochastic rounding). params and
 * grads hold the whole arena; master holds it from element master_lo on, m and v from moment_lo on (a data-parallel
 * rank's shard: its pointers stay inside their allocations) */
template <class K>
__device__ __forceinline__ void adamw_element(floatX *params, float *master, const float *grads, float *m, float *v,
                                              const float *normp, float step_size, float bc2_sqrt, float decay,
                                              long i, long master_lo = 0, long moment_lo = 0) {
    const float norm = *normp;
    float clip = K::max_norm / (norm + 1e-6f);
    if (clip > 1.0f) clip = 1.0f;
    const long im = i - master_lo, io = i - moment_lo;
    const float g = grads[i] * clip;
    const float p = master[im] * decay;
    const float mi = m[io] + (float)(1.0 - K::beta1) * (g - m[io]);
    const float vi = v[io] * K::beta2f + (float)(1.0 - K::beta2) * g * g;
    m[io] = mi;
    v[io] = vi;
    const float np = p - step_size * (mi / (sqrtf(vi) / bc2_sqrt + K::eps));
    master[im] = np;
#if LLMGEN_BF16
    params[i] = round_param(np, (unsigned long)i);
#else
    (void)params;
#endif
}

/* one pass over all n elements of NSEG parameters: weight decay for the segments whose seg_decay is set
 * (segment starts in seg_start, searched per element). Alignment gaps hold zeros everywhere and stay zero. */
template <class K, int NSEG>
__global__ void adamw_all_kernel(floatX *params, float *master, const float *grads, float *m, float *v,
                                 const float *normp, float step_size, float bc2_sqrt, float keep,
                                 const long *seg_start, const unsigned char *seg_decay, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int lo = 0, hi = NSEG - 1;          /* the last segment starting at or before i */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (seg_start[mid] <= i) lo = mid; else hi = mid - 1;
    }
    adamw_element<K>(params, master, grads, m, v, normp, step_size, bc2_sqrt, seg_decay[lo] ? keep : 1.0f, i);
}

/* one parameter of N elements (unfused builds), decayed when DECAY */
template <class K, long N, bool DECAY>
__global__ void adamw_kernel(floatX *params, float *master, const float *grads, float *m, float *v,
                             const float *normp, float step_size, float bc2_sqrt, float keep) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    adamw_element<K>(params, master, grads, m, v, normp, step_size, bc2_sqrt, DECAY ? keep : 1.0f, i);
}

/* the step's scalars: lr over the first bias correction, sqrt of the second, the decay factor */
template <class K>
struct AdamwScalars {
    float step_size, bc2_sqrt, keep;
    AdamwScalars(double lr, int t, double weight_decay)
        : step_size((float)(lr / (1.0 - pow(K::beta1, t)))), bc2_sqrt((float)sqrt(1.0 - pow(K::beta2, t))),
          keep((float)(1.0 - lr * weight_decay)) {}
};

/* host launchers; the partial sums of the norm go to `partial` (NB doubles) */
template <long N, int NB>
static void grad_norm(float *out, double *partial, const float *grads) {
    LLMGEN_LAUNCH((grad_norm_kernel<N, NB>), dim3(NB), dim3(256), 0, 0, partial, grads);
    LAUNCH_CHECK("grad_norm_kernel");
    LLMGEN_LAUNCH((grad_norm_final_kernel<NB>), dim3(1), dim3(256), 0, 0, out, partial);
    LAUNCH_CHECK("grad_norm_final_kernel");
}

template <class K, int NSEG>
static void adamw_all_update(floatX *params, float *master, const float *grads, float *m, float *v, const float *normp,
                             const long *seg_start, const unsigned char *seg_decay, long n, double lr, int t,
                             double weight_decay) {
    const AdamwScalars<K> s(lr, t, weight_decay);
    LLMGEN_LAUNCH((adamw_all_kernel<K, NSEG>), dim3(cdiv(n, 256)), dim3(256), 0, 0, params, master, grads, m, v, normp,
                  s.step_size, s.bc2_sqrt, s.keep, seg_start, seg_decay, n);
    LAUNCH_CHECK("adamw_all_kernel");
}

template <class K, long N, bool DECAY>
static void adamw_update(floatX *params, float *master, const float *grads, float *m, float *v, const float *normp,
                         double lr, int t, double weight_decay) {
    const AdamwScalars<K> s(lr, t, weight_decay);
    LLMGEN_LAUNCH((adamw_kernel<K, N, DECAY>), dim3(cdiv(N, 256)), dim3(256), 0, 0, params, master, grads, m, v, normp,
                  s.step_size, s.bc2_sqrt, s.keep);
    LAUNCH_CHECK("adamw_kernel");
}
