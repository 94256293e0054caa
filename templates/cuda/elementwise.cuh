/* elementwise.cuh -- elementwise ops and the mean reduction over n elements (a run-time count: these kernels
 * have no compile-time sizes; the block size NT and the flags are template arguments, so a program compiles
 * only the kernels it uses). The fused graph only needs `mean` (and `gelu` when recomputing); the rest serve
 * unfused builds. One thread per element, NT = 256 a block unless the launcher is told otherwise.
 *
 * Needs from the program before it: floatX, to_float / to_floatX, gelu_f, gelu_grad_f, block_sum_d, cdiv,
 * LAUNCH_CHECK and LLMGEN_LAUNCH.
 */

/* out (+)= a + b */
template <int NT, bool ACC>
__global__ void add_kernel(floatX *out, const floatX *a, const floatX *b, long n) {
    const long i = (long)blockIdx.x * NT + threadIdx.x;
    if (i >= n) return;
    const float head = ACC ? to_float(out[i]) + to_float(a[i]) : to_float(a[i]);    /* (out + a) + b, in that order */
    out[i] = to_floatX(head + to_float(b[i]));
}

/* out = gelu(x) */
template <int NT>
__global__ void gelu_kernel(floatX *out, const floatX *x, long n) {
    const long i = (long)blockIdx.x * NT + threadIdx.x;
    if (i < n) out[i] = to_floatX(gelu_f(to_float(x[i])));
}

/* dx = dy * gelu'(x) */
template <int NT>
__global__ void gelu_bwd_kernel(floatX *dx, const floatX *dy, const floatX *x, long n) {
    const long i = (long)blockIdx.x * NT + threadIdx.x;
    if (i < n) dx[i] = to_floatX(to_float(dy[i]) * gelu_grad_f(to_float(x[i])));
}

/* *out = mean of x: one block of NT threads, per-thread sums in double, a fixed reduction tree */
template <int NT>
__global__ void __launch_bounds__(NT) mean_kernel(float *out, const float *x, long n) {
    __shared__ double red[33];
    double s = 0.0;
    for (long i = threadIdx.x; i < n; i += NT) s += x[i];
    s = block_sum_d(s, red);
    if (threadIdx.x == 0) *out = (float)(s / (double)n);
}

/* dx = dout / n, every element */
template <int NT>
__global__ void mean_bwd_kernel(float *dx, const float *dout, long n) {
    const long i = (long)blockIdx.x * NT + threadIdx.x;
    if (i < n) dx[i] = *dout / (float)n;
}

/* host launchers over n elements */
template <bool ACC, int NT = 256>
static void elementwise_add(floatX *out, const floatX *a, const floatX *b, long n) {
    LLMGEN_LAUNCH((add_kernel<NT, ACC>), dim3(cdiv(n, NT)), dim3(NT), 0, 0, out, a, b, n);
    LAUNCH_CHECK("add_kernel");
}

template <int NT = 256>
static void elementwise_gelu(floatX *out, const floatX *x, long n) {
    LLMGEN_LAUNCH((gelu_kernel<NT>), dim3(cdiv(n, NT)), dim3(NT), 0, 0, out, x, n);
    LAUNCH_CHECK("gelu_kernel");
}

template <int NT = 256>
static void elementwise_gelu_bwd(floatX *dx, const floatX *dy, const floatX *x, long n) {
    LLMGEN_LAUNCH((gelu_bwd_kernel<NT>), dim3(cdiv(n, NT)), dim3(NT), 0, 0, dx, dy, x, n);
    LAUNCH_CHECK("gelu_bwd_kernel");
}

template <int NT>
static void elementwise_mean(float *out, const float *x, long n) {
    LLMGEN_LAUNCH((mean_kernel<NT>), dim3(1), dim3(NT), 0, 0, out, x, n);
    LAUNCH_CHECK("mean_kernel");
}

template <int NT = 256>
static void elementwise_mean_bwd(float *dx, const float *dout, long n) {
    LLMGEN_LAUNCH((mean_bwd_kernel<NT>), dim3(cdiv(n, NT)), dim3(NT), 0, 0, dx, dout, n);
    LAUNCH_CHECK("mean_bwd_kernel");
}
