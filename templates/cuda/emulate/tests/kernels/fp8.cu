/* FP8 tests: cuda_fp8.h's conversions as a kernel uses them (run on the CPU through the emulation, where
 * they are NVIDIA's host code; on a GPU they are cvt.rn.satfinite.{e4m3,e5m2}x2.f32), compared with
 * torch's float8 dtypes by test_emu_fp8.py; and __byte_perm (prmt.b32).
 *   cvt        x.bin (float32, even count) -> e4m3 / e5m2 (__nv_cvt_float_to_fp8, __NV_SATFINITE),
 *              e4m3x2 / e5m2x2 (__nv_cvt_float2_to_fp8x2 on consecutive pairs), cls_e4m3 / cls_e5m2
 *              (the __nv_fp8_e4m3 / __nv_fp8_e5m2 constructors from float), nosat_e4m3 / nosat_e5m2
 *              (__NV_NOSAT), host_e4m3 / host_e5m2 (the same function called from host code)
 *   bf16       xb.bin (bf16 bits) -> e4m3 / e5m2 (__nv_cvt_bfloat16raw_to_fp8, __NV_SATFINITE)
 *   decode     the 256 codes -> e4m3 / e5m2 (float32, through the classes' float conversion) and
 *              half_e4m3 / half_e5m2 (__nv_cvt_fp8_to_halfraw, as half bits)
 *   byte_perm  x.bin, y.bin, s.bin (uint32) -> r.bin = __byte_perm(x, y, s) */
#include "emulate.h"
#include "testio.h"

__global__ void cvt_kernel(uint8_t* e4, uint8_t* e5, uint8_t* e4x2, uint8_t* e5x2, uint8_t* c4, uint8_t* c5,
                           uint8_t* n4, uint8_t* n5, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * i >= n) return;
    for (int j = 2 * i; j < 2 * i + 2; ++j) {
        e4[j] = __nv_cvt_float_to_fp8(x[j], __NV_SATFINITE, __NV_E4M3);
        e5[j] = __nv_cvt_float_to_fp8(x[j], __NV_SATFINITE, __NV_E5M2);
        c4[j] = __nv_fp8_e4m3(x[j]).__x;
        c5[j] = __nv_fp8_e5m2(x[j]).__x;
        n4[j] = __nv_cvt_float_to_fp8(x[j], __NV_NOSAT, __NV_E4M3);
        n5[j] = __nv_cvt_float_to_fp8(x[j], __NV_NOSAT, __NV_E5M2);
    }
    const float2 pair = make_float2(x[2 * i], x[2 * i + 1]);
    const __nv_fp8x2_storage_t p4 = __nv_cvt_float2_to_fp8x2(pair, __NV_SATFINITE, __NV_E4M3);
    const __nv_fp8x2_storage_t p5 = __nv_cvt_float2_to_fp8x2(pair, __NV_SATFINITE, __NV_E5M2);
    e4x2[2 * i] = (uint8_t)(p4 & 0xff);  /* .x in the low byte */
    e4x2[2 * i + 1] = (uint8_t)(p4 >> 8);
    e5x2[2 * i] = (uint8_t)(p5 & 0xff);
    e5x2[2 * i + 1] = (uint8_t)(p5 >> 8);
}

__global__ void bf16_kernel(uint8_t* e4, uint8_t* e5, const __nv_bfloat16* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const __nv_bfloat16_raw raw = x[i];
    e4[i] = __nv_cvt_bfloat16raw_to_fp8(raw, __NV_SATFINITE, __NV_E4M3);
    e5[i] = __nv_cvt_bfloat16raw_to_fp8(raw, __NV_SATFINITE, __NV_E5M2);
}

__global__ void decode_kernel(float* f4, float* f5, uint16_t* h4, uint16_t* h5) {
    const int i = threadIdx.x; /* one block of 256 threads: the codes */
    __nv_fp8_e4m3 a;
    __nv_fp8_e5m2 b;
    a.__x = (__nv_fp8_storage_t)i;
    b.__x = (__nv_fp8_storage_t)i;
    f4[i] = (float)a;
    f5[i] = (float)b;
    h4[i] = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)i, __NV_E4M3).x;
    h5[i] = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)i, __NV_E5M2).x;
}

__global__ void byte_perm_kernel(unsigned* r, const unsigned* x, const unsigned* y, const unsigned* s, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) r[i] = __byte_perm(x[i], y[i], s[i]);
}

static void save_bytes(const char* name, const uint8_t* d, size_t n) { save_device(name, d, n); }

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c == "cvt") {
        std::vector<float> hx = read_input<float>("x");
        const int n = (int)hx.size();
        if (n % 2) { fprintf(stderr, "cvt: x needs an even count\n"); return 2; }
        float* x = to_device(hx);
        uint8_t* o[8];
        for (uint8_t*& p : o) CHECK_CUDA(cudaMalloc((void**)&p, (size_t)n + 16));
        LLMGEN_LAUNCH(cvt_kernel, (n / 2 + 255) / 256, 256, 0, 0, o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7], x, n);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        const char* names[8] = {"e4m3", "e5m2", "e4m3x2", "e5m2x2", "cls_e4m3", "cls_e5m2", "nosat_e4m3", "nosat_e5m2"};
        for (int k = 0; k < 8; ++k) save_bytes(names[k], o[k], (size_t)n);
        std::vector<uint8_t> h4((size_t)n), h5((size_t)n); /* the host-side call of the same function */
        for (int j = 0; j < n; ++j) {
            h4[(size_t)j] = __nv_cvt_float_to_fp8(hx[(size_t)j], __NV_SATFINITE, __NV_E4M3);
            h5[(size_t)j] = __nv_cvt_float_to_fp8(hx[(size_t)j], __NV_SATFINITE, __NV_E5M2);
        }
        write_output("host_e4m3", h4);
        write_output("host_e5m2", h5);
        return 0;
    }
    if (c == "bf16") {
        std::vector<__nv_bfloat16> hx = read_input<__nv_bfloat16>("xb");
        const int n = (int)hx.size();
        __nv_bfloat16* x = to_device(hx);
        uint8_t *e4, *e5;
        CHECK_CUDA(cudaMalloc((void**)&e4, (size_t)n + 16));
        CHECK_CUDA(cudaMalloc((void**)&e5, (size_t)n + 16));
        LLMGEN_LAUNCH(bf16_kernel, (n + 255) / 256, 256, 0, 0, e4, e5, x, n);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        save_bytes("e4m3", e4, (size_t)n);
        save_bytes("e5m2", e5, (size_t)n);
        return 0;
    }
    if (c == "decode") {
        float *f4, *f5;
        uint16_t *h4, *h5;
        CHECK_CUDA(cudaMalloc((void**)&f4, 256 * sizeof(float)));
        CHECK_CUDA(cudaMalloc((void**)&f5, 256 * sizeof(float)));
        CHECK_CUDA(cudaMalloc((void**)&h4, 256 * sizeof(uint16_t)));
        CHECK_CUDA(cudaMalloc((void**)&h5, 256 * sizeof(uint16_t)));
        LLMGEN_LAUNCH(decode_kernel, 1, 256, 0, 0, f4, f5, h4, h5);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        save_device("e4m3", f4, 256);
        save_device("e5m2", f5, 256);
        save_device("half_e4m3", h4, 256);
        save_device("half_e5m2", h5, 256);
        return 0;
    }
    if (c == "byte_perm") {
        std::vector<unsigned> hx = read_input<unsigned>("x"), hy = read_input<unsigned>("y");
        std::vector<unsigned> hs = read_input<unsigned>("s");
        const int n = (int)hx.size();
        unsigned* r;
        CHECK_CUDA(cudaMalloc((void**)&r, (size_t)n * 4 + 16));
        LLMGEN_LAUNCH(byte_perm_kernel, (n + 255) / 256, 256, 0, 0, r, to_device(hx), to_device(hy), to_device(hs), n);
        CHECK_CUDA(cudaGetLastError());
        CHECK_CUDA(cudaDeviceSynchronize());
        save_device("r", r, (size_t)n);
        return 0;
    }
    fprintf(stderr, "unknown case %s\n", c.c_str());
    return 2;
}
