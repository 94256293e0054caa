/* swiglu.cuh -- the SwiGLU gate of Llama's MLP as templates over the hidden size F: h = silu(gate) * up,
 * silu(g) = g * sigmoid(g) = g / (1 + exp(-g)). One thread per element of the (N, F) tensors, fp32 math,
 * floatX storage; the same expressions as templates/c/swiglu.h.
 *
 * Needs from the program before it: floatX, to_float / to_floatX, cdiv, LAUNCH_CHECK and LLMGEN_LAUNCH.
 * FP8 builds: swiglu_fwd_amax / swiglu_bwd_amax also write out's / dup's and dgate's amax partials
 * (kernels/fp8.cuh's USE IN A TRAINER).
 */

/* out = gate / (1 + exp(-gate)) * up */
template <int F>
__global__ void swiglu_kernel(floatX *out, const floatX *gate, const floatX *up, int N) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * F) return;
    const float g = to_float(gate[i]);
    out[i] = to_floatX(g / (1.0f + expf(-g)) * to_float(up[i]));
}

/* dgate = dh * up * silu'(g), silu'(g) = sig * (1 + g * (1 - sig));  dup = dh * silu(g).
 * dgate/dup may be gate/up (in place): a thread reads its element of each input before it writes the
 * outputs, and no other thread touches that element. */
template <int F>
__global__ void swiglu_bwd_kernel(floatX *dgate, floatX *dup, const floatX *dh, const floatX *gate, const floatX *up,
                                  int N) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * F) return;
    const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dh[i]);
    const float sig = 1.0f / (1.0f + expf(-g));
    dgate[i] = to_floatX(d * u * (sig * (1.0f + g * (1.0f - sig))));
    dup[i] = to_floatX(d * (g * sig));
}

/* FP8 builds (codegen/cuda.py fp8_fuse_amax: the down projection's input): out as swiglu_kernel writes it (the
 * same expression), grid-stride over at most `capacity` blocks of 256 threads, each block also writing the max |out|
 * (out as stored) of its elements to amax[blockIdx.x] (a max: the same bits in any order) */
template <int F>
__global__ void swiglu_amax_kernel(floatX *out, const floatX *gate, const floatX *up, int N, float *amax) {
    __shared__ float red[256];
    float m = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (long)N * F; i += (long)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]);
        const floatX o = to_floatX(g / (1.0f + expf(-g)) * to_float(up[i]));
        out[i] = o;
        m = fmaxf(m, fabsf(to_float(o)));
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) amax[blockIdx.x] = red[0];
}

/* FP8 builds: dgate and dup as swiglu_bwd_kernel writes them (the same expressions, in place allowed likewise),
 * grid-stride over at most `capacity` blocks of 256 threads, each block also writing the max |dup| (as stored) of
 * its elements to amax[blockIdx.x] and the max |dgate| to amax2[blockIdx.x]: dup is the dY of Llama's up
 * projection, cast right after, dgate the gate projection's, cast after up's GEMMs */
template <int F>
__global__ void swiglu_bwd_amax_kernel(floatX *dgate, floatX *dup, const floatX *dh, const floatX *gate,
                                       const floatX *up, int N, float *amax, float *amax2) {
    __shared__ float red[256], red2[256];
    float m = 0.0f, m2 = 0.0f;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (long)N * F; i += (long)gridDim.x * blockDim.x) {
        const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dh[i]);
        const float sig = 1.0f / (1.0f + expf(-g));
        const floatX og = to_floatX(d * u * (sig * (1.0f + g * (1.0f - sig))));
        const floatX o = to_floatX(d * (g * sig));
        dgate[i] = og;
        dup[i] = o;
        m = fmaxf(m, fabsf(to_float(o)));
        m2 = fmaxf(m2, fabsf(to_float(og)));
    }
    red[threadIdx.x] = m;
    red2[threadIdx.x] = m2;
    __syncthreads();
    for (int s = 128; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
            red2[threadIdx.x] = fmaxf(red2[threadIdx.x], red2[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        amax[blockIdx.x] = red[0];
        amax2[blockIdx.x] = red2[0];
    }
}

/* host launchers: N rows of F */
template <int F>
static void swiglu_fwd(floatX *out, const floatX *gate, const floatX *up, int N) {
    LLMGEN_LAUNCH((swiglu_kernel<F>), dim3(cdiv((long)N * F, 256)), dim3(256), 0, 0, out, gate, up, N);
    LAUNCH_CHECK("swiglu_kernel");
}

/* returns the number of amax partials written (the grid) */
template <int F>
static int swiglu_fwd_amax(floatX *out, const floatX *gate, const floatX *up, int N, float *amax, int capacity) {
    long blocks = cdiv((long)N * F, 256);
    if (blocks > capacity) blocks = capacity;
    if (blocks < 1) blocks = 1;
    LLMGEN_LAUNCH((swiglu_amax_kernel<F>), dim3((unsigned)blocks), dim3(256), 0, 0, out, gate, up, N, amax);
    LAUNCH_CHECK("swiglu_amax_kernel");
    return (int)blocks;
}

template <int F>
static void swiglu_bwd(floatX *dgate, floatX *dup, const floatX *dh, const floatX *gate, const floatX *up, int N) {
    LLMGEN_LAUNCH((swiglu_bwd_kernel<F>), dim3(cdiv((long)N * F, 256)), dim3(256), 0, 0, dgate, dup, dh, gate, up, N);
    LAUNCH_CHECK("swiglu_bwd_kernel");
}

/* returns the number of amax partials written (the grid), of dup to amax and of dgate to amax2 */
template <int F>
static int swiglu_bwd_amax(floatX *dgate, floatX *dup, const floatX *dh, const floatX *gate, const floatX *up, int N,
                           float *amax, float *amax2, int capacity) {
    long blocks = cdiv((long)N * F, 256);
    if (blocks > capacity) blocks = capacity;
    if (blocks < 1) blocks = 1;
    LLMGEN_LAUNCH((swiglu_bwd_amax_kernel<F>), dim3((unsigned)blocks), dim3(256), 0, 0, dgate, dup, dh, gate, up, N,
                  amax, amax2);
    LAUNCH_CHECK("swiglu_bwd_amax_kernel");
    return (int)blocks;
}
