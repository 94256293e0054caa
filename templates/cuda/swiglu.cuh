/* swiglu.cuh -- the SwiGLU gate of Llama's MLP as templates over the hidden size F: h = silu(gate) * up,
 * silu(g) = g * sigmoid(g) = g / (1 + exp(-g)). One thread per element of the (N, F) tensors, fp32 math,
 * floatX storage; the same expressions as templates/c/swiglu.h.
 *
 * Needs from the program before it: floatX, to_float / to_floatX, cdiv, LAUNCH_CHECK and LLMGEN_LAUNCH.
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

/* host launchers: N rows of F */
template <int F>
static void swiglu_fwd(floatX *out, const floatX *gate, const floatX *up, int N) {
    LLMGEN_LAUNCH((swiglu_kernel<F>), dim3(cdiv((long)N * F, 256)), dim3(256), 0, 0, out, gate, up, N);
    LAUNCH_CHECK("swiglu_kernel");
}

template <int F>
static void swiglu_bwd(floatX *dgate, floatX *dup, const floatX *dh, const floatX *gate, const floatX *up, int N) {
    LLMGEN_LAUNCH((swiglu_bwd_kernel<F>), dim3(cdiv((long)N * F, 256)), dim3(256), 0, 0, dgate, dup, dh, gate, up, N);
    LAUNCH_CHECK("swiglu_bwd_kernel");
}
