/* Warp-level emulation tests: warp-shuffle softmax, shuffles with width < 32, ballot/any/all with
 * lanes that exited early, __syncwarp, __reduce_*_sync, 8-byte and bf16 shuffles, partial warps.
 * This file uses the one-line prologue: emulate.h picks real CUDA or the emulation itself. */
#include "emulate.h"
#include "testio.h"

/* ---- softmax over rows, one warp per row (templated: launched in parentheses) ---- */
template <typename T>
__global__ void softmax_kernel(T* out, const T* inp, int N, int C) {
    const int warps_per_block = blockDim.x / 32;
    const int row = blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= N) return;
    const T* x = inp + (size_t)row * C;
    float mx = -INFINITY;
    for (int i = lane; i < C; i += 32) mx = fmaxf(mx, (float)x[i]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float s = 0.0f;
    for (int i = lane; i < C; i += 32) s += expf((float)x[i] - mx);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    for (int i = lane; i < C; i += 32) out[(size_t)row * C + i] = (T)(expf((float)x[i] - mx) / s);
}

/* ---- every shuffle flavour at one width; each thread records 4 results ---- */
__global__ void shfl_kernel(int* out, int width, int src, int delta, int lanemask) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int v = 1000 + t;
    int* o = out + 4 * t;
    o[0] = __shfl_sync(0xffffffffu, v, src, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, delta, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, delta, width);
    o[3] = __shfl_xor_sync(0xffffffffu, v, lanemask, width);
}

/* ---- votes after some lanes returned (exited lanes count as 0 / absent) ---- */
__global__ void vote_kernel(unsigned* out, int exit_mod) {
    const int t = threadIdx.x, lane = t % 32;
    unsigned* o = out + 5 * (blockIdx.x * blockDim.x + t);
    o[0] = o[1] = o[2] = o[3] = o[4] = 0xdeadbeefu;
    if (lane % exit_mod == 0) return;
    o[0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
    o[1] = __any_sync(0xffffffffu, lane == 7);
    o[2] = __all_sync(0xffffffffu, lane % exit_mod != 0);
    o[3] = __all_sync(0xffffffffu, lane < 20);
    o[4] = __activemask();
}

/* ---- __syncwarp orders shared-memory traffic inside a warp; __reduce_*_sync ---- */
__global__ void syncwarp_kernel(int* out) {
    __shared__ int s[64];
    const int t = threadIdx.x, lane = t % 32;
    s[t] = t * t;
    __syncwarp();
    const int nb = s[(t & ~31) + (lane + 1) % 32];
    __syncwarp();
    int* o = out + 4 * t;
    o[0] = nb;
    o[1] = (int)__reduce_add_sync(0xffffffffu, (unsigned)lane);
    o[2] = __reduce_min_sync(0xffffffffu, 50 - lane);
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u; /* two independent groups */
    o[3] = __reduce_max_sync(half, lane * 3 - 100);
}

/* ---- 8-byte and bf16 shuffles, and a butterfly reduction in double ---- */
__global__ void wide_shfl_kernel(double* outd, long long* outl, float* outb) {
    const int lane = threadIdx.x;
    double d = 1.0 / (lane + 1);
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    outd[lane] = d;
    const long long big = (1LL << 40) + lane;
    outl[lane] = __shfl_down_sync(0xffffffffu, big, 1);
    const __nv_bfloat16 h = __float2bfloat16((float)lane * 0.5f);
    const __nv_bfloat162 h2 = __floats2bfloat162_rn((float)lane, -(float)lane);
    const __nv_bfloat16 g = __shfl_sync(0xffffffffu, h, 31 - lane);
    const __nv_bfloat162 g2 = __shfl_xor_sync(0xffffffffu, h2, 1);
    outb[3 * lane + 0] = __bfloat162float(g);
    outb[3 * lane + 1] = __low2float(g2);
    outb[3 * lane + 2] = __high2float(g2);
}

/* ---- a 48-thread block: the second warp has 16 lanes and uses a 16-lane mask ---- */
__global__ void partial_warp_kernel(int* out) {
    const int t = threadIdx.x;
    const unsigned mask = t < 32 ? 0xffffffffu : 0x0000ffffu;
    int v = t;
    for (int o = t < 32 ? 16 : 8; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
    out[2 * t] = v;
    out[2 * t + 1] = (int)__ballot_sync(mask, t % 2);
}

/* ---- half of a warp at __activemask, the other half at a full-mask shuffle: reported ---- */
__global__ void divergent_kernel(int* out) {
    const int lane = threadIdx.x % 32;
    int v = lane;
    if (lane < 16) v = (int)__activemask();
    else v = __shfl_sync(0xffffffffu, v, 0);
    out[threadIdx.x] = v;
}

/* launchers are often templates too: the kernel goes in parentheses */
template <typename T>
void softmax_forward(T* out, const T* inp, int N, int C, cudaStream_t stream) {
    const int block = 128, rows_per_block = block / 32;
    LLMGEN_LAUNCH((softmax_kernel<T>), (N + rows_per_block - 1) / rows_per_block, block, 0, stream, out, inp, N, C);
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c == "softmax") {
        std::vector<int> shape = read_input<int>("shape"); /* N, C */
        const int N = shape[0], C = shape[1];
        float* x = to_device(read_input<float>("x"));
        float* out;
        CHECK_CUDA(cudaMalloc(&out, (size_t)N * C * sizeof(float)));
        softmax_forward(out, x, N, C, 0);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, (size_t)N * C);
    } else if (c == "shfl") {
        std::vector<int> p = read_input<int>("params"); /* width, src, delta, lanemask, threads */
        const int threads = p[4];
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 4 * threads * sizeof(int)));
        LLMGEN_LAUNCH(shfl_kernel, 1, threads, 0, 0, out, p[0], p[1], p[2], p[3]);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 4 * threads);
    } else if (c == "vote") {
        std::vector<int> p = read_input<int>("params"); /* exit_mod, threads */
        unsigned* out;
        CHECK_CUDA(cudaMalloc(&out, 5 * 2 * p[1] * sizeof(unsigned)));
        LLMGEN_LAUNCH(vote_kernel, 2, p[1], 0, 0, out, p[0]);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 5 * 2 * p[1]);
    } else if (c == "syncwarp") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 4 * 64 * sizeof(int)));
        LLMGEN_LAUNCH(syncwarp_kernel, 1, 64, 0, 0, out);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 4 * 64);
    } else if (c == "wide") {
        double* d;
        long long* l;
        float* b;
        CHECK_CUDA(cudaMalloc(&d, 32 * sizeof(double)));
        CHECK_CUDA(cudaMalloc(&l, 32 * sizeof(long long)));
        CHECK_CUDA(cudaMalloc(&b, 96 * sizeof(float)));
        LLMGEN_LAUNCH(wide_shfl_kernel, 1, 32, 0, 0, d, l, b);
        CHECK_CUDA(cudaGetLastError());
        save_device("d", d, 32);
        save_device("l", l, 32);
        save_device("b", b, 96);
    } else if (c == "partial") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 2 * 48 * sizeof(int)));
        LLMGEN_LAUNCH(partial_warp_kernel, 1, 48, 0, 0, out);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 2 * 48);
    } else if (c == "divergent") {
        int* out;
        CHECK_CUDA(cudaMalloc(&out, 32 * sizeof(int)));
        LLMGEN_LAUNCH(divergent_kernel, 1, 32, 0, 0, out);
        cudaDeviceSynchronize();
        printf("returned\n");
    } else {
        fprintf(stderr, "unknown case %s\n", c.c_str());
        return 2;
    }
    return 0;
}
