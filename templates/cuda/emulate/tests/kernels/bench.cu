/* Cost of the emulation per CUDA thread: barrier-free, one __syncthreads, a 5-step warp
 * shuffle reduction, and a 256x768 layernorm (llm.c-like). Prints "BENCH name value unit". */
#include "emulate.h"
#include "testio.h"
#include <chrono>

__global__ void plain_kernel(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (float)i;
}
__global__ void barrier_kernel(float* out, int n) {
    __shared__ float s[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = (float)i;
    __syncthreads();
    if (i < n) out[i] = s[255 - threadIdx.x];
}
__global__ void shuffle_kernel(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = (float)i;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (i < n) out[i] = v;
}
__global__ void layernorm_kernel(float* out, const float* inp, int C) {
    __shared__ float buf[256];
    const float* x = inp + (size_t)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
    buf[threadIdx.x] = s;
    __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if ((int)threadIdx.x < st) buf[threadIdx.x] += buf[threadIdx.x + st];
        __syncthreads();
    }
    const float m = buf[0] / C;
    __syncthreads();
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (x[i] - m) * (x[i] - m);
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int st = blockDim.x / 2; st > 0; st >>= 1) {
        if ((int)threadIdx.x < st) buf[threadIdx.x] += buf[threadIdx.x + st];
        __syncthreads();
    }
    const float rs = rsqrtf(buf[0] / C + 1e-5f);
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[(size_t)blockIdx.x * C + i] = (x[i] - m) * rs;
}

template <class F>
static double seconds(F f, int reps) {
    f(); /* warm up: fibers and stacks are created once per OS thread */
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

int main() {
    const int n = 1 << 20;
    float* out;
    CHECK_CUDA(cudaMalloc(&out, n * sizeof(float)));
    double t = seconds([&] { LLMGEN_LAUNCH(plain_kernel, n / 256, 256, 0, 0, out, n); }, 5);
    printf("BENCH plain_ns_per_thread %.2f ns\n", t * 1e9 / n);
    t = seconds([&] { LLMGEN_LAUNCH(barrier_kernel, n / 256, 256, 0, 0, out, n); }, 3);
    printf("BENCH barrier_ns_per_thread %.2f ns\n", t * 1e9 / n);
    t = seconds([&] { LLMGEN_LAUNCH(shuffle_kernel, n / 256, 256, 0, 0, out, n); }, 3);
    printf("BENCH shuffle5_ns_per_thread %.2f ns\n", t * 1e9 / n);
    const int rows = 256, C = 768;
    float* x;
    CHECK_CUDA(cudaMalloc(&x, rows * C * sizeof(float)));
    CHECK_CUDA(cudaMemset(x, 0, rows * C * sizeof(float)));
    t = seconds([&] { LLMGEN_LAUNCH(layernorm_kernel, rows, 256, 0, 0, out, x, C); }, 5);
    printf("BENCH layernorm_256x768_ms %.3f ms\n", t * 1e3);
    CHECK_CUDA(cudaGetLastError());
    return 0;
}
