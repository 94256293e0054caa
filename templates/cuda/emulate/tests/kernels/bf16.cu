/* bf16 tests: conversions, the _rn arithmetic intrinsics (bit-exact with torch), __hfma (one
 * rounding), bf16 math helpers that cuda_bf16.h keeps device-only, and llm.c-style 128-bit packed
 * loads of 8 bf16 (float4/int4 reinterpret casts: needs -fno-strict-aliasing under g++). */
#include "emulate.h"
#include "testio.h"

__global__ void convert_kernel(__nv_bfloat16* out, float* back, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __float2bfloat16_rn(x[i]);
    back[i] = __bfloat162float(out[i]);
}

__global__ void axpy_rn_kernel(__nv_bfloat16* y, const __nv_bfloat16* x, __nv_bfloat16 a, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __hadd_rn(__hmul_rn(a, x[i]), y[i]);
}

__global__ void hfma_kernel(__nv_bfloat16* out, const __nv_bfloat16* a, const __nv_bfloat16* b,
                            const __nv_bfloat16* c, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __hfma(a[i], b[i], c[i]);
}

__global__ void math_kernel(__nv_bfloat16* out, int* ints, const __nv_bfloat16* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16 v = x[i];
    const __nv_bfloat16 pos = __habs(v);
    __nv_bfloat16* o = out + 8 * i;
    o[0] = hexp(v);
    o[1] = hsqrt(pos);
    o[2] = hrsqrt(pos);
    o[3] = htanh(v);
    o[4] = hlog(pos);
    o[5] = hrcp(v);
    o[6] = __hmax(v, __float2bfloat16(0.0f));
    o[7] = __hneg(v);
    ints[i] = __bfloat162int_rn(__hmul(v, __float2bfloat16(37.0f)));
}

/* llm.c's Packed128 idea: 8 bf16 moved as one 16-byte value */
struct alignas(16) Bf16x8 {
    __nv_bfloat16 v[8];
};
__device__ Bf16x8 load8(const __nv_bfloat16* p) {
    Bf16x8 r;
    *reinterpret_cast<int4*>(&r) = *reinterpret_cast<const int4*>(p);
    return r;
}
__device__ void store8(__nv_bfloat16* p, const Bf16x8& r) {
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&r);
}
__global__ void packed_kernel(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* y, int n) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const Bf16x8 a = load8(x + i), b = load8(y + i);
    Bf16x8 r;
    for (int k = 0; k < 8; k += 2) {
        const __nv_bfloat162 pa = __halves2bfloat162(a.v[k], a.v[k + 1]);
        const __nv_bfloat162 pb = __halves2bfloat162(b.v[k], b.v[k + 1]);
        const __nv_bfloat162 pr = __hfma2(pa, pb, __hadd2(pa, pb));
        r.v[k] = pr.x;
        r.v[k + 1] = pr.y;
    }
    store8(out + i, r);
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c == "convert") {
        std::vector<float> x = read_input<float>("x");
        const int n = (int)x.size();
        float* dx = to_device(x);
        __nv_bfloat16* out;
        float* back;
        CHECK_CUDA(cudaMalloc(&out, n * sizeof(__nv_bfloat16)));
        CHECK_CUDA(cudaMalloc(&back, n * sizeof(float)));
        LLMGEN_LAUNCH(convert_kernel, (n + 255) / 256, 256, 0, 0, out, back, dx, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, n);
        save_device("back", back, n);
    } else if (c == "axpy") {
        std::vector<__nv_bfloat16> x = read_input<__nv_bfloat16>("x"), y = read_input<__nv_bfloat16>("y");
        const __nv_bfloat16 a = read_input<__nv_bfloat16>("a")[0];
        const int n = (int)x.size();
        __nv_bfloat16 *dx = to_device(x), *dy = to_device(y);
        LLMGEN_LAUNCH(axpy_rn_kernel, (n + 255) / 256, 256, 0, 0, dy, dx, a, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("y", dy, n);
    } else if (c == "hfma") {
        std::vector<__nv_bfloat16> a = read_input<__nv_bfloat16>("a");
        const int n = (int)a.size();
        __nv_bfloat16 *da = to_device(a), *db = to_device(read_input<__nv_bfloat16>("b")),
                      *dc = to_device(read_input<__nv_bfloat16>("c")), *out;
        CHECK_CUDA(cudaMalloc(&out, n * sizeof(__nv_bfloat16)));
        LLMGEN_LAUNCH(hfma_kernel, (n + 255) / 256, 256, 0, 0, out, da, db, dc, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, n);
    } else if (c == "math") {
        std::vector<__nv_bfloat16> x = read_input<__nv_bfloat16>("x");
        const int n = (int)x.size();
        __nv_bfloat16 *dx = to_device(x), *out;
        int* ints;
        CHECK_CUDA(cudaMalloc(&out, 8 * n * sizeof(__nv_bfloat16)));
        CHECK_CUDA(cudaMalloc(&ints, n * sizeof(int)));
        LLMGEN_LAUNCH(math_kernel, (n + 127) / 128, 128, 0, 0, out, ints, dx, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 8 * n);
        save_device("ints", ints, n);
    } else if (c == "packed") {
        std::vector<__nv_bfloat16> x = read_input<__nv_bfloat16>("x");
        const int n = (int)x.size();
        __nv_bfloat16 *dx = to_device(x), *dy = to_device(read_input<__nv_bfloat16>("y")), *out;
        CHECK_CUDA(cudaMalloc(&out, n * sizeof(__nv_bfloat16)));
        LLMGEN_LAUNCH(packed_kernel, (n / 8 + 63) / 64, 64, 0, 0, out, dx, dy, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, n);
    } else {
        fprintf(stderr, "unknown case %s\n", c.c_str());
        return 2;
    }
    return 0;
}
