/* Test program for ../attention_fa2.cuh (driven by test_attention_fa2.py): `prog CASE DIR`.
 *   CASE "run": DIR/params.bin holds int32 {HD, B, T, NH, KV, packed, variant}; the inputs are bf16
 *     bits: packed -> qkv (B, T, (NH + 2 KV) HD) with q, k, v at column offsets 0, NH HD, (NH + KV) HD
 *     (GPT-2's layout when KV == NH), else q (B, T, NH HD), k and v (B, T, KV HD); and dout (B, T, NH HD).
 *     It runs attention_fwd then attention_bwd and writes o, lse, D and the gradients (dqkv in the
 *     packed layout, else dq, dk, dv), plus smem.json: the emulation's shared-memory bank-conflict and
 *     cp.async counts per kernel (emulated builds only).
 *     variant 0: the launchers' tiles (Fa2Tiles<HD>); variant 1: other tile shapes of the same templates.
 *   CASE "bench": params as above, DIR/iters.bin an int32 count: random inputs, the forward and the whole
 *     backward timed with CUDA events over that many launches each (after two warm-up runs); prints and
 *     writes bench.bin {ms forward, ms backward, TFLOP/s forward, backward, both} with the causal FLOPs
 *     4 B NH HD T(T+1)/2 forward and 2.5 times that backward (5 matmuls: the usual count, not the 7 run).
 *   CASE "bad": params as above; calls the launchers with one bad argument each (named by DIR/which.bin:
 *     0 NH % KV != 0, 1 a stride not a multiple of 8, 2 a misaligned pointer) and exits with their
 *     return code, so the test sees the one-line message and the error.
 * Under nvcc the same file compiles (-cubin for ptxas -v, or a GPU binary). */
#include "emulate.h"
#include "ptx.cuh"
#include "attention_fa2.cuh"
#include "testio.h"

using llmgen_fa2::bf16;

struct Params {
    int HD, B, T, NH, KV, packed, variant;
};

/* variant 1: the other code paths of the templates (MT 1 vs 2, fragments in registers or re-read from
 * shared memory, BN != BM, query tiles wider or narrower than the key tile) */
template <int HD>
struct Alt;
template <>
struct Alt<64> {
    static constexpr int FWD_NW = 8, FWD_MT = 1, FWD_BN = 32;
    static constexpr bool FWD_Q_REGS = false;
    static constexpr int DQ_NW = 8, DQ_MT = 1, DQ_BN = 32;
    static constexpr bool DQ_QO_REGS = true;
    static constexpr int DKV_NW = 8, DKV_MT = 1, DKV_BQ = 64;
    static constexpr bool DKV_KV_REGS = true;
};
template <>
struct Alt<128> {
    static constexpr int FWD_NW = 4, FWD_MT = 1, FWD_BN = 64;
    static constexpr bool FWD_Q_REGS = true;
    static constexpr int DQ_NW = 2, DQ_MT = 2, DQ_BN = 64;
    static constexpr bool DQ_QO_REGS = false;
    static constexpr int DKV_NW = 2, DKV_MT = 2, DKV_BQ = 64;
    static constexpr bool DKV_KV_REGS = true;
};

template <int HD, class C>
static cudaError_t fwd(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, const Params& p, int qs,
                       int kvs, int os) {
    return llmgen_fa2::attention_fwd_launch<HD, C>(o, lse, q, k, v, p.B, p.T, p.NH, p.KV, qs, kvs, os, 0);
}
template <int HD, class C>
static cudaError_t bwd(bf16* dq, bf16* dk, bf16* dv, float* D, const bf16* dout, const bf16* q, const bf16* k,
                       const bf16* v, const bf16* o, const float* lse, const Params& p, int qs, int kvs, int os,
                       int dqs, int dkvs) {
    return llmgen_fa2::attention_bwd_launch<HD, C>(dq, dk, dv, D, dout, q, k, v, o, lse, p.B, p.T, p.NH, p.KV, qs, kvs,
                                                   os, dqs, dkvs, 0);
}

static bf16* bf16_input(const char* name, size_t n) {
    std::vector<uint16_t> h = read_input<uint16_t>(name);
    if (h.size() != n) {
        fprintf(stderr, "%s: %zu elements, expected %zu\n", name, h.size(), n);
        exit(2);
    }
    return reinterpret_cast<bf16*>(to_device(h));
}
static bf16* bf16_buffer(size_t n) {
    bf16* d;
    CHECK_CUDA(cudaMalloc((void**)&d, n * 2));
    return d;
}
static float* f32_buffer(size_t n) {
    float* d;
    CHECK_CUDA(cudaMalloc((void**)&d, n * 4));
    return d;
}
static void save_bf16(const char* name, const bf16* d, size_t n) {
    save_device(name, reinterpret_cast<const uint16_t*>(d), n);
}

template <int HD, class C>
static int run(const Params& p) {
    const size_t rows = (size_t)p.B * p.T, C_ = (size_t)p.NH * HD, CK = (size_t)p.KV * HD;
    bf16 *q, *k, *v, *dq, *dk, *dv;
    int qs, kvs;
    if (p.packed) {
        const size_t W = C_ + 2 * CK;
        q = bf16_input("qkv", rows * W);
        k = q + C_;
        v = q + C_ + CK;
        dq = bf16_buffer(rows * W);
        dk = dq + C_;
        dv = dq + C_ + CK;
        qs = kvs = (int)W;
    } else {
        q = bf16_input("q", rows * C_);
        k = bf16_input("k", rows * CK);
        v = bf16_input("v", rows * CK);
        dq = bf16_buffer(rows * C_);
        dk = bf16_buffer(rows * CK);
        dv = bf16_buffer(rows * CK);
        qs = (int)C_;
        kvs = (int)CK;
    }
    const bf16* dout = bf16_input("dout", rows * C_);
    bf16* o = bf16_buffer(rows * C_);
    float* lse = f32_buffer((size_t)p.B * p.NH * p.T);
    float* D = f32_buffer((size_t)p.B * p.NH * p.T);

    cudaError_t e = fwd<HD, C>(o, lse, q, k, v, p, qs, kvs, (int)C_);
    if (e != cudaSuccess) return 1;
    e = bwd<HD, C>(dq, dk, dv, D, dout, q, k, v, o, lse, p, qs, kvs, (int)C_, qs, kvs);
    if (e != cudaSuccess) return 1;
    CHECK_CUDA(cudaDeviceSynchronize());

    save_bf16("o", o, rows * C_);
    save_device("lse", lse, (size_t)p.B * p.NH * p.T);
    save_device("D", D, (size_t)p.B * p.NH * p.T);
    if (p.packed) {
        save_bf16("dqkv", dq, rows * (C_ + 2 * CK));
    } else {
        save_bf16("dq", dq, rows * C_);
        save_bf16("dk", dk, rows * CK);
        save_bf16("dv", dv, rows * CK);
    }
#if LLMGEN_EMULATED
    const std::string j = llmgen_emu::smem_report_json();
    write_output("smem", j.data(), j.size());
#endif
    return 0;
}

template <int HD, class C>
static int bench(const Params& p, int iters) {
    const size_t rows = (size_t)p.B * p.T, C_ = (size_t)p.NH * HD, CK = (size_t)p.KV * HD, W = C_ + 2 * CK;
    std::vector<uint16_t> h(rows * W + rows * C_);
    uint32_t x = 12345u;
    for (auto& e : h) { /* bf16 in [-2, 2): sign, exponent 126..127, random mantissa */
        x = x * 1664525u + 1013904223u;
        e = (uint16_t)((x >> 31) << 15 | (126u + ((x >> 30) & 1u)) << 7 | ((x >> 16) & 127u));
    }
    bf16* all = reinterpret_cast<bf16*>(to_device(h));
    bf16 *q = all, *k = all + C_, *v = all + C_ + CK, *dout = all + rows * W;
    const int qs = (int)W, kvs = (int)W; /* the packed layout (GPT-2's) */
    bf16 *o = bf16_buffer(rows * C_), *dq = bf16_buffer(rows * W);
    float *lse = f32_buffer((size_t)p.B * p.NH * p.T), *D = f32_buffer((size_t)p.B * p.NH * p.T);
    cudaEvent_t e0, e1, e2;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    CHECK_CUDA(cudaEventCreate(&e2));
    for (int i = 0; i < 2; i++) {
        if (fwd<HD, C>(o, lse, q, k, v, p, qs, kvs, (int)C_) != cudaSuccess) return 1;
        if (bwd<HD, C>(dq, dq + C_, dq + C_ + CK, D, dout, q, k, v, o, lse, p, qs, kvs, (int)C_, qs, kvs) !=
            cudaSuccess)
            return 1;
    }
    CHECK_CUDA(cudaEventRecord(e0, 0));
    for (int i = 0; i < iters; i++) fwd<HD, C>(o, lse, q, k, v, p, qs, kvs, (int)C_);
    CHECK_CUDA(cudaEventRecord(e1, 0));
    for (int i = 0; i < iters; i++)
        bwd<HD, C>(dq, dq + C_, dq + C_ + CK, D, dout, q, k, v, o, lse, p, qs, kvs, (int)C_, qs, kvs);
    CHECK_CUDA(cudaEventRecord(e2, 0));
    CHECK_CUDA(cudaEventSynchronize(e2));
    CHECK_CUDA(cudaGetLastError());
    float f_ms = 0, b_ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&f_ms, e0, e1));
    CHECK_CUDA(cudaEventElapsedTime(&b_ms, e1, e2));
    f_ms /= (float)iters;
    b_ms /= (float)iters;
    const double flop = 4.0 * p.B * p.NH * HD * ((double)p.T * (p.T + 1) / 2);
    const double r[5] = {f_ms, b_ms, flop / (f_ms * 1e9), 2.5 * flop / (b_ms * 1e9),
                         3.5 * flop / ((f_ms + b_ms) * 1e9)};
    printf("attention HD %d B %d T %d NH %d KV %d: forward %.3f ms %.1f TFLOP/s, backward %.3f ms %.1f TFLOP/s, "
           "both %.1f TFLOP/s\n", HD, p.B, p.T, p.NH, p.KV, r[0], r[2], r[1], r[3], r[4]);
    write_output("bench", r, sizeof r);
    return 0;
}

/* each launcher refuses one bad argument with a one-line message */
template <int HD>
static int bad(const Params& p, int which) {
    const size_t rows = (size_t)p.B * p.T, C_ = (size_t)p.NH * HD;
    bf16* x = bf16_buffer(rows * C_ + 64);
    float* f = f32_buffer((size_t)p.B * p.NH * p.T);
    int NH = p.NH, KV = p.KV, stride = (int)C_;
    bf16* q = x;
    if (which == 0) KV = NH + 1;
    if (which == 1) stride = (int)C_ + 4;
    if (which == 2) q = x + 1;
    cudaError_t e1 = llmgen_fa2::attention_fwd<HD>(x, f, q, x, x, p.B, p.T, NH, KV, stride, stride, stride, 0);
    cudaError_t e2 = llmgen_fa2::attention_bwd<HD>(x, x, x, f, x, q, x, x, x, f, p.B, p.T, NH, KV, stride, stride,
                                                   stride, stride, stride, 0);
    return (e1 == cudaErrorInvalidValue && e2 == cudaErrorInvalidValue) ? 3 : 0;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s run|bench|bad DIR\n", argv[0]);
        return 2;
    }
    g_dir = argv[2];
    const std::string c = argv[1];
    std::vector<int> v = read_input<int>("params");
    if (v.size() != 7) {
        fprintf(stderr, "params.bin: 7 int32 values expected\n");
        return 2;
    }
    const Params p{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
    if (c == "bad") {
        const int which = read_input<int>("which").at(0);
        return p.HD == 64 ? bad<64>(p, which) : bad<128>(p, which);
    }
    if (c == "bench") {
        const int iters = read_input<int>("iters").at(0);
        if (p.HD == 64) return bench<64, llmgen_fa2::Fa2Tiles<64>>(p, iters);
        if (p.HD == 128) return bench<128, llmgen_fa2::Fa2Tiles<128>>(p, iters);
    }
    if (c != "run") return 2;
    if (p.HD == 64) return p.variant ? run<64, Alt<64>>(p) : run<64, llmgen_fa2::Fa2Tiles<64>>(p);
    if (p.HD == 128) return p.variant ? run<128, Alt<128>>(p) : run<128, llmgen_fa2::Fa2Tiles<128>>(p);
    fprintf(stderr, "HD = %d: the tests instantiate 64 and 128\n", p.HD);
    return 2;
}
