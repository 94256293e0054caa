/* Atomics across many blocks (which run on several OS threads at once under emulation):
 * integer histogram through shared and global atomics, float/double/bf16 sums whose every order
 * gives the same exact result, min/max/CAS/exchange, and the last-block pattern with
 * __threadfence + atomicInc. */
#include "emulate.h"
#include "testio.h"

__global__ void histogram_kernel(unsigned* hist, const int* data, int n) {
    __shared__ unsigned local[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) local[i] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&local[data[i]], 1u);
    __syncthreads();
    for (int i = threadIdx.x; i < 256; i += blockDim.x) atomicAdd(&hist[i], local[i]);
}

/* global-only: every thread hits one of 16 counters */
__global__ void global_counts_kernel(int* counts, unsigned long long* total, const int* data, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&counts[data[i] % 16], 1);
    atomicAdd(total, (unsigned long long)data[i]);
}

/* values are small integers times powers of two: every summation order is exact */
__global__ void float_sums_kernel(float* fs, double* ds, __nv_bfloat162* bs, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(&fs[0], x[i]);
    atomicAdd(&ds[0], (double)x[i] * 0.25);
    atomicAdd(&bs[i % 4], __floats2bfloat162_rn(1.0f, -2.0f));
}

__global__ void minmax_kernel(int* out, unsigned* uout, const int* data, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicMax(&out[0], data[i]);
    atomicMin(&out[1], data[i]);
    atomicMax(&uout[0], (unsigned)data[i] * 3u);
    /* a CAS loop that adds: must not lose updates */
    int old = out[2], assumed;
    do {
        assumed = old;
        old = atomicCAS(&out[2], assumed, assumed + 1);
    } while (old != assumed);
    atomicSub(&out[3], 2);
    atomicOr(&uout[1], 1u << (data[i] % 32));
    atomicExch(&out[4], 7);
}

/* each block writes a partial sum; the last block to finish adds them up */
__global__ void last_block_kernel(float* partial, unsigned* ticket, float* result, const float* x, int n) {
    __shared__ float s[128];
    __shared__ bool last;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int st = 64; st > 0; st >>= 1) {
        if ((int)threadIdx.x < st) s[threadIdx.x] += s[threadIdx.x + st];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = s[0];
        __threadfence();
        last = atomicInc(ticket, gridDim.x) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && threadIdx.x == 0) {
        float acc = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) acc += partial[b];
        *result = acc;
    }
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    std::vector<int> data = read_input<int>("data");
    const int n = (int)data.size();
    int* d_data = to_device(data);
    if (c == "histogram") {
        unsigned* hist;
        CHECK_CUDA(cudaMalloc(&hist, 256 * sizeof(unsigned)));
        CHECK_CUDA(cudaMemset(hist, 0, 256 * sizeof(unsigned)));
        LLMGEN_LAUNCH(histogram_kernel, 97, 128, 0, 0, hist, d_data, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("hist", hist, 256);
        int* counts;
        unsigned long long* total;
        CHECK_CUDA(cudaMalloc(&counts, 16 * sizeof(int)));
        CHECK_CUDA(cudaMalloc(&total, sizeof(unsigned long long)));
        CHECK_CUDA(cudaMemset(counts, 0, 16 * sizeof(int)));
        CHECK_CUDA(cudaMemset(total, 0, sizeof(unsigned long long)));
        LLMGEN_LAUNCH(global_counts_kernel, (n + 63) / 64, 64, 0, 0, counts, total, d_data, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("counts", counts, 16);
        save_device("total", total, 1);
    } else if (c == "float_sums") {
        std::vector<float> hx = read_input<float>("x");
        const int m = (int)hx.size();
        float* x = to_device(hx);
        float* fs;
        double* ds;
        __nv_bfloat162* bs;
        CHECK_CUDA(cudaMalloc(&fs, sizeof(float)));
        CHECK_CUDA(cudaMalloc(&ds, sizeof(double)));
        CHECK_CUDA(cudaMalloc(&bs, 4 * sizeof(__nv_bfloat162)));
        CHECK_CUDA(cudaMemset(fs, 0, sizeof(float)));
        CHECK_CUDA(cudaMemset(ds, 0, sizeof(double)));
        CHECK_CUDA(cudaMemset(bs, 0, 4 * sizeof(__nv_bfloat162)));
        LLMGEN_LAUNCH(float_sums_kernel, (m + 127) / 128, 128, 0, 0, fs, ds, bs, x, m);
        CHECK_CUDA(cudaGetLastError());
        save_device("fs", fs, 1);
        save_device("ds", ds, 1);
        std::vector<__nv_bfloat162> hb = to_host(bs, 4);
        std::vector<float> bf;
        for (auto& v : hb) { bf.push_back(__low2float(v)); bf.push_back(__high2float(v)); }
        write_output("bs", bf);
    } else if (c == "minmax") {
        int* out;
        unsigned* uout;
        std::vector<int> init = {-2147483647 - 1, 2147483647, 0, 0, 0};
        out = to_device(init);
        std::vector<unsigned> uinit = {0u, 0u};
        uout = to_device(uinit);
        LLMGEN_LAUNCH(minmax_kernel, (n + 255) / 256, 256, 0, 0, out, uout, d_data, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 5);
        save_device("uout", uout, 2);
    } else if (c == "last_block") {
        std::vector<float> hx = read_input<float>("x");
        const int m = (int)hx.size(), blocks = (m + 127) / 128;
        float* x = to_device(hx);
        float *partial, *result;
        unsigned* ticket;
        CHECK_CUDA(cudaMalloc(&partial, blocks * sizeof(float)));
        CHECK_CUDA(cudaMalloc(&result, sizeof(float)));
        CHECK_CUDA(cudaMalloc(&ticket, sizeof(unsigned)));
        CHECK_CUDA(cudaMemset(ticket, 0, sizeof(unsigned)));
        LLMGEN_LAUNCH(last_block_kernel, blocks, 128, 0, 0, partial, ticket, result, x, m);
        CHECK_CUDA(cudaGetLastError());
        save_device("result", result, 1);
        save_device("partial", partial, blocks);
        save_device("ticket", ticket, 1);
    } else {
        fprintf(stderr, "unknown case %s\n", c.c_str());
        return 2;
    }
    return 0;
}
