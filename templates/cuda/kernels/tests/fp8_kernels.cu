/* Test program for ../fp8.cuh (driven by test_fp8.py): `prog CASE DIR`, DIR/params.bin int32 values.
 *   cast      {fmt, n, amax}: x.bin (bf16 bits), scale.bin (float) -> out.bin (codes), partials.bin
 *   cast_t    {fmt, rows, cols, amax, write_rows}: x.bin, scale.bin -> out.bin (when write_rows), out_t.bin,
 *             partials.bin, smem.bin (the emulation's bank-conflict counts, JSON; emulated builds only)
 *   amax      {n}: x.bin -> partials.bin
 *   scale     {fmt, H, margin, delayed, most_recent, pow2, steps, n_partials}: partials.bin (steps x
 *             n_partials floats) -> metas.bin (steps x Fp8Meta, after each update), history.bin (the last)
 *   pipeline  {fmt, rows, cols, margin, pow2}: x.bin -> the current-amax recipe end to end: amax partials,
 *             scale_update, cast_transpose -> meta.bin, out.bin, out_t.bin
 *   bad       {which}: one launcher called with one bad argument; exits with its return code
 * Under nvcc the same file compiles (a GPU binary, or -cubin for ptxas -v). */
#include "emulate.h"
#include "ptx.cuh"
#include "fp8.cuh"
#include "testio.h"

using namespace llmgen_fp8;

#define CHECK_OK(call)                                                                      \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(3);                                                                        \
        }                                                                                   \
    } while (0)

template <class T>
static T* dev_alloc(size_t n) {
    T* p = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&p, n * sizeof(T) + 16));
    return p;
}

static void save_smem() {
#if LLMGEN_EMULATED
    const std::string j = llmgen_emu::smem_report_json();
    write_output("smem", j.data(), j.size());
#endif
}

template <Format F>
static int run(const std::string& c, const std::vector<int>& p) {
    if (c == "cast") {
        const long n = p[1];
        bf16* x = to_device(read_input<bf16>("x"));
        float* scale = to_device(read_input<float>("scale"));
        fp8* out = dev_alloc<fp8>((size_t)n);
        const int np = amax_partials(n);
        float* partials = p[2] ? dev_alloc<float>((size_t)np) : nullptr;
        CHECK_OK(cast<F>(out, partials, x, scale, n, 0));
        CHECK_CUDA(cudaDeviceSynchronize());
        save_device("out", out, (size_t)n);
        if (partials) save_device("partials", partials, (size_t)np);
        return 0;
    }
    if (c == "cast_t") {
        const int rows = p[1], cols = p[2];
        bf16* x = to_device(read_input<bf16>("x"));
        float* scale = to_device(read_input<float>("scale"));
        fp8* out = p[4] ? dev_alloc<fp8>((size_t)rows * cols) : nullptr;
        fp8* out_t = dev_alloc<fp8>((size_t)rows * cols);
        const int np = cast_transpose_partials(rows, cols);
        float* partials = p[3] ? dev_alloc<float>((size_t)np) : nullptr;
        CHECK_OK(cast_transpose<F>(out, out_t, partials, x, scale, rows, cols, 0));
        CHECK_CUDA(cudaDeviceSynchronize());
        if (out) save_device("out", out, (size_t)rows * cols);
        save_device("out_t", out_t, (size_t)rows * cols);
        if (partials) save_device("partials", partials, (size_t)np);
        save_smem();
        return 0;
    }
    if (c == "scale") {
        const int H = p[1], steps = p[6], n_partials = p[7];
        const Recipe rc{p[2], p[3], p[4], p[5]};
        std::vector<float> hp = read_input<float>("partials");
        float* partials = to_device(hp);
        Fp8Meta* meta = dev_alloc<Fp8Meta>(1);
        float* history = dev_alloc<float>((size_t)H);
        CHECK_OK(meta_init(meta, 1, history, H, 0));
        std::vector<Fp8Meta> metas;
        for (int s = 0; s < steps; ++s) {
            CHECK_OK(scale_update<F>(meta, history, H, partials + (size_t)s * n_partials, n_partials, rc, 0));
            metas.push_back(to_host(meta, 1)[0]);
        }
        write_output("metas", metas);
        save_device("history", history, (size_t)H);
        return 0;
    }
    if (c == "pipeline") {
        const int rows = p[1], cols = p[2];
        const Recipe rc{p[3], 0, 0, p[4]};
        bf16* x = to_device(read_input<bf16>("x"));
        const long n = (long)rows * cols;
        const int np = amax_partials(n);
        float* partials = dev_alloc<float>((size_t)np);
        Fp8Meta* meta = dev_alloc<Fp8Meta>(1);
        fp8* out = dev_alloc<fp8>((size_t)n);
        fp8* out_t = dev_alloc<fp8>((size_t)n);
        CHECK_OK(meta_init(meta, 1, nullptr, 0, 0));
        CHECK_OK(amax(partials, x, n, 0));               /* stands for the producer's fused partials */
        CHECK_OK(scale_update<F>(meta, nullptr, 0, partials, np, rc, 0));
        CHECK_OK(cast_transpose<F>(out, out_t, nullptr, x, &meta->scale, rows, cols, 0));
        CHECK_CUDA(cudaDeviceSynchronize());
        save_device("meta", meta, 1);
        save_device("out", out, (size_t)n);
        save_device("out_t", out_t, (size_t)n);
        return 0;
    }
    fprintf(stderr, "unknown case %s\n", c.c_str());
    return 2;
}

static int bad(int which) {
    bf16* x = dev_alloc<bf16>(4096);
    fp8* out = dev_alloc<fp8>(4096);
    float* partials = dev_alloc<float>(64);
    float* scale = dev_alloc<float>(1);
    Fp8Meta* meta = dev_alloc<Fp8Meta>(1);
    const Recipe current{0, 0, 0, 0}, delayed{0, 1, 0, 0}, negative{-1, 0, 0, 0};
    cudaError_t e = cudaSuccess;
    switch (which) {
    case 0: e = cast<Format::E4M3>(out, nullptr, x, scale, 40, 0); break;                 /* n % 16 */
    case 1: e = cast<Format::E4M3>(out, nullptr, x + 1, scale, 64, 0); break;             /* misaligned x */
    case 2: e = cast_transpose<Format::E5M2>(out, out, nullptr, x, scale, 24, 32, 0); break;   /* rows % 16 */
    case 3: e = cast_transpose<Format::E5M2>(out + 8, out, nullptr, x, scale, 32, 32, 0); break;  /* misaligned out */
    case 4: e = scale_update<Format::E4M3>(meta, nullptr, 16, partials, 4, delayed, 0); break;     /* no history */
    case 5: e = scale_update<Format::E4M3>(meta, nullptr, 0, partials, 0, current, 0); break;      /* no partials */
    case 6: e = scale_update<Format::E4M3>(meta, nullptr, 0, partials, 4, negative, 0); break;     /* margin < 0 */
    case 7: e = amax(partials, x, 0, 0); break;                                                   /* n == 0 */
    default: fprintf(stderr, "unknown bad case %d\n", which); return 2;
    }
    return (int)e;
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    const std::vector<int> p = read_input<int>("params");
    if (c == "bad") return bad(p[0]);
    if (c == "amax") {
        const long n = p[0];
        bf16* x = to_device(read_input<bf16>("x"));
        const int np = amax_partials(n);
        float* partials = dev_alloc<float>((size_t)np);
        CHECK_OK(amax(partials, x, n, 0));
        CHECK_CUDA(cudaDeviceSynchronize());
        save_device("partials", partials, (size_t)np);
        return 0;
    }
    return p[0] == 0 ? run<Format::E4M3>(c, p) : run<Format::E5M2>(c, p);
}
