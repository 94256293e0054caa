/* Block-level emulation tests: shared memory + __syncthreads, 2-D/3-D indices, dynamic shared
 * memory, __syncthreads_count/and/or, early exit before a barrier, 1024-thread blocks, and the
 * two failure reports (deadlock, fiber-stack overflow).
 * This file uses the two-branch prologue (emulate.h only under LLMGEN_EMULATE). */
#ifdef LLMGEN_EMULATE
#include "emulate.h"
#else
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#define LLMGEN_EMULATED 0
#define LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, ...) \
    kernel<<<(grid), (block), (shmem_bytes), (stream)>>>(__VA_ARGS__)
#define LLMGEN_DYNAMIC_SMEM(type, name)                                  \
    extern __shared__ __align__(16) unsigned char llmgen_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(llmgen_dynamic_smem_)
#endif
#include "testio.h"

/* ---- layernorm forward: one block per row, block reductions through shared memory ---- */
__device__ float block_sum(float v) {
    __shared__ float buf[1024];
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    const float r = buf[0];
    __syncthreads(); /* buf is reused by the next call */
    return r;
}

__global__ void layernorm_fwd_kernel(float* out, float* mean, float* rstd, const float* inp,
                                     const float* weight, const float* bias, int C) {
    const float* x = inp + (size_t)blockIdx.x * C;
    float s = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += x[i];
    const float m = block_sum(s) / C;
    float v = 0.0f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) v += (x[i] - m) * (x[i] - m);
    const float rs = rsqrtf(block_sum(v) / C + 1e-5f);
    float* o = out + (size_t)blockIdx.x * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = (x[i] - m) * rs * weight[i] + bias[i];
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = m;
        rstd[blockIdx.x] = rs;
    }
}

/* ---- 2-D blocks: tiled transpose (32x8 threads move a 32x32 tile) ---- */
__global__ void transpose_kernel(float* out, const float* in, int H, int W) {
    __shared__ float tile[32][33];
    int x = blockIdx.x * 32 + threadIdx.x, y = blockIdx.y * 32 + threadIdx.y;
    for (int j = 0; j < 32; j += 8)
        if (x < W && y + j < H) tile[threadIdx.y + j][threadIdx.x] = in[(size_t)(y + j) * W + x];
    __syncthreads();
    x = blockIdx.y * 32 + threadIdx.x;
    y = blockIdx.x * 32 + threadIdx.y;
    for (int j = 0; j < 32; j += 8)
        if (x < H && y + j < W) out[(size_t)(y + j) * H + x] = tile[threadIdx.x][threadIdx.y + j];
}

/* ---- 3-D blocks and grids: every thread reports its indices, after a barrier ---- */
__global__ void dims_kernel(unsigned* out) {
    __shared__ unsigned seen;
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) seen = 0;
    __syncthreads();
    atomicAdd(&seen, 1u);
    __syncthreads();
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const unsigned nthr = blockDim.x * blockDim.y * blockDim.z;
    unsigned* o = out + 2 * (block * nthr + thread);
    o[0] = threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 | blockIdx.z << 20;
    o[1] = seen;
}

/* ---- dynamic shared memory ---- */
__global__ void dynsmem_kernel(float* out, int* out2, const float* in) {
    LLMGEN_DYNAMIC_SMEM(float, buf);
    int* ibuf = reinterpret_cast<int*>(buf + blockDim.x);
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    buf[t] = in[base + t];
    ibuf[t] = base + 2 * t;
    __syncthreads();
    out[base + t] = buf[blockDim.x - 1 - t];
    out2[base + t] = ibuf[(t + 1) % blockDim.x];
}

template <typename T>
__global__ void dynsmem_sum_kernel(T* out, int n) {
    LLMGEN_DYNAMIC_SMEM(T, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = (T)(i % 10);
    __syncthreads();
    if (threadIdx.x == 0) {
        T acc = 0;
        for (int i = 0; i < n; ++i) acc += s[i];
        out[blockIdx.x] = acc;
    }
}

/* ---- __syncthreads_count / _and / _or ---- */
__global__ void sync_count_kernel(int* out) {
    const int t = threadIdx.x;
    const int c = __syncthreads_count(t % 3 == 0);
    const int a1 = __syncthreads_and(t < 1000);
    const int a0 = __syncthreads_and(t != 17);
    const int o1 = __syncthreads_or(t == 200);
    const int o0 = __syncthreads_or(0);
    if (t == 5) {
        out[0] = c; out[1] = a1 != 0; out[2] = a0 != 0; out[3] = o1 != 0; out[4] = o0 != 0;
    }
}

/* ---- threads that return before a barrier do not block it ---- */
__global__ void early_exit_kernel(float* out, const float* in, int n) {
    __shared__ float s[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = in[i];
    __syncthreads();
    if (threadIdx.x == 0) {
        const int live = min((int)blockDim.x, n - (int)(blockIdx.x * blockDim.x));
        float acc = 0.0f;
        for (int j = 0; j < live; ++j) acc += s[j];
        out[blockIdx.x] = acc;
    }
}

/* ---- 1024 threads, each with a 2 KiB local array that lives across barriers ---- */
__global__ void big_block_kernel(float* out) {
    __shared__ float s[1024];
    float loc[512];
    const int t = threadIdx.x;
    for (int j = 0; j < 512; ++j) loc[j] = (float)((t + j) % 7);
    __syncthreads();
    float acc = 0.0f;
    for (int j = 0; j < 512; ++j) acc += loc[j];
    s[t] = acc;
    __syncthreads();
    out[blockIdx.x * 1024 + t] = s[1023 - t];
}

/* ---- failure reports ---- */
__global__ void deadlock_kernel(int* out) {
    if (threadIdx.x < 16) __syncwarp(); /* lanes 16..31 never get there ... */
    else __syncthreads();               /* ... and lanes 0..15 never get here */
    out[threadIdx.x] = 1;
}

__device__ int deep(int d) {
    volatile char pad[512];
    pad[0] = (char)d;
    pad[511] = (char)d;
    return d == 0 ? pad[0] : deep(d - 1) + pad[511];
}
__global__ void overflow_kernel(int* out, int depth) { out[threadIdx.x] = deep(depth); }

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c == "layernorm") {
        std::vector<int> shape = read_input<int>("shape"); /* N, C, block */
        const int N = shape[0], C = shape[1], block = shape[2];
        float* x = to_device(read_input<float>("x"));
        float* w = to_device(read_input<float>("w"));
        float* b = to_device(read_input<float>("b"));
        float *out, *mean, *rstd;
        CHECK_CUDA(cudaMalloc(&out, (size_t)N * C * sizeof(float)));
        CHECK_CUDA(cudaMalloc(&mean, N * sizeof(float)));
        CHECK_CUDA(cudaMalloc(&rstd, N * sizeof(float)));
        LLMGEN_LAUNCH(layernorm_fwd_kernel, N, block, 0, 0, out, mean, rstd, x, w, b, C);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, (size_t)N * C);
        save_device("mean", mean, N);
        save_device("rstd", rstd, N);
    } else if (c == "transpose") {
        std::vector<int> shape = read_input<int>("shape"); /* H, W */
        const int H = shape[0], W = shape[1];
        float* in = to_device(read_input<float>("x"));
        float* out;
        CHECK_CUDA(cudaMalloc(&out, (size_t)H * W * sizeof(float)));
        LLMGEN_LAUNCH(transpose_kernel, dim3((W + 31) / 32, (H + 31) / 32), dim3(32, 8), 0, 0, out, in, H, W);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, (size_t)H * W);
    } else if (c == "dims") {
        const dim3 grid(3, 2, 2), block(8, 4, 2);
        const size_t n = 2 * 12 * 64;
        unsigned* out;
        CHECK_CUDA(cudaMalloc(&out, n * sizeof(unsigned)));
        LLMGEN_LAUNCH(dims_kernel, grid, block, 0, 0, out);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, n);
    } else if (c == "dynsmem") {
        const int blocks = 5, threads = 96;
        float* in = to_device(read_input<float>("x"));
        float* out;
        int* out2;
        CHECK_CUDA(cudaMalloc(&out, blocks * threads * sizeof(float)));
        CHECK_CUDA(cudaMalloc(&out2, blocks * threads * sizeof(int)));
        LLMGEN_LAUNCH(dynsmem_kernel, blocks, threads, threads * (sizeof(float) + sizeof(int)), 0, out, out2, in);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, blocks * threads);
        save_device("out2", out2, blocks * threads);
        /* more than 48 KiB needs the attribute, as on the GPU */
        const int n = 16384; /* 64 KiB of floats */
        float* sums;
        int* isums;
        CHECK_CUDA(cudaMalloc(&sums, 3 * sizeof(float)));
        CHECK_CUDA(cudaMalloc(&isums, 3 * sizeof(int)));
        std::vector<int> codes;
        LLMGEN_LAUNCH((dynsmem_sum_kernel<float>), 3, 128, n * sizeof(float), 0, sums, n);
        codes.push_back((int)cudaGetLastError());
        CHECK_CUDA(cudaFuncSetAttribute(dynsmem_sum_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        n * (int)sizeof(float)));
        LLMGEN_LAUNCH((dynsmem_sum_kernel<float>), 3, 128, n * sizeof(float), 0, sums, n);
        codes.push_back((int)cudaGetLastError());
        LLMGEN_LAUNCH((dynsmem_sum_kernel<int>), 3, 128, 1000 * sizeof(int), 0, isums, 1000);
        codes.push_back((int)cudaGetLastError());
        write_output("codes", codes);
        save_device("sums", sums, 3);
        save_device("isums", isums, 3);
    } else if (c == "sync_count") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 5 * sizeof(int)));
        LLMGEN_LAUNCH(sync_count_kernel, 2, 256, 0, 0, out);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 5);
    } else if (c == "early_exit") {
        std::vector<float> x = read_input<float>("x");
        const int n = (int)x.size();
        float* in = to_device(x);
        float* out;
        const int blocks = (n + 255) / 256;
        CHECK_CUDA(cudaMalloc(&out, blocks * sizeof(float)));
        LLMGEN_LAUNCH(early_exit_kernel, blocks, 256, 0, 0, out, in, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, blocks);
    } else if (c == "big_block") {
        float* out;
        CHECK_CUDA(cudaMalloc(&out, 2 * 1024 * sizeof(float)));
        LLMGEN_LAUNCH(big_block_kernel, 2, 1024, 0, 0, out);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 2 * 1024);
    } else if (c == "deadlock") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 64 * sizeof(int)));
        LLMGEN_LAUNCH(deadlock_kernel, 1, 64, 0, 0, out);
        cudaDeviceSynchronize();
        printf("returned\n");
    } else if (c == "overflow") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 64 * sizeof(int)));
        LLMGEN_LAUNCH(overflow_kernel, 1, 2, 0, 0, out, 100000);
        cudaDeviceSynchronize();
        printf("returned\n");
    } else {
        fprintf(stderr, "unknown case %s\n", c.c_str());
        return 2;
    }
    return 0;
}
