/* rows_test.cu -- swiglu.cuh, rope.cuh and the RMSNorm and cross-entropy of kernels/norms.cuh and kernels/xent.cuh
 * as train.cu pastes them (plain shared-memory accesses, llmgen_fail), alone (fp32: built with -DLLMGEN_BF16=0):
 * `prog CASE DIR` reads its inputs from DIR and writes its outputs there.
 *   rmsnorm: x, r, w, dy, dres, dw0 (N 37 rows of C 40: 10 fp32 vectors, a ragged last one per warp);
 *            residual forward, residual backward over 3 blocks (dw accumulating) -> sum, out, rstd, dx, dw
 *   swiglu:  g, u, dh (N 5 rows of F 24) -> h, dg, du
 *   rope:    x, freq (N 6 rows = 2 sequences of T 3, NH 3 heads of HD 8) -> y (forward), dx (backward of x)
 *   xent:    z, t, dl (N 7 rows of VP 72, V 70 real columns) -> loss, dz (from dl), loss2, dz2 (fused, in place) */
#include "prelude.cuh"
#define LLMK_PLAIN_SHARED 1
#define LLMK_FAIL(msg) llmgen_fail("%s", (msg))
#include "kernels/common.cuh"
#include "kernels/norms.cuh"
#include "kernels/xent.cuh"
#include "swiglu.cuh"
#include "rope.cuh"

template <class T>
static T *device_out(size_t n) { return (T *)device_alloc(sizeof(T) * n); }

static void run_rmsnorm(const char *dir) {
    constexpr int N = 37, C = 40, MAXB = 3;
    floatX *x = load_device<floatX>(dir, "x", N * C), *r = load_device<floatX>(dir, "r", N * C);
    floatX *w = load_device<floatX>(dir, "w", C), *dy = load_device<floatX>(dir, "dy", N * C);
    floatX *dres = load_device<floatX>(dir, "dres", N * C);
    float *dw = load_device<float>(dir, "dw0", C), *rstd = device_out<float>(N);
    floatX *sum = device_out<floatX>(N * C), *out = device_out<floatX>(N * C), *dx = device_out<floatX>(N * C);
    float *partial = (float *)device_alloc(llmk::rmsnorm_backward_scratch_bytes<floatX, C>(N, MAXB));
    unsigned *counters = device_out<unsigned>(llmk::NORM_COUNTERS);   /* zeroed */
    CUDA_CHECK((llmk::residual_rmsnorm_forward<floatX, C>(sum, out, rstd, x, r, w, N, 1e-5f)));
    CUDA_CHECK((llmk::rmsnorm_backward<floatX, C>(dx, dw, NULL, dy, sum, rstd, dres, w,
                                                  llmk::NormScratch{partial, counters, MAXB}, N, llmk::NORM_ACC_DW)));
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "sum", sum, N * C);
    save_device(dir, "out", out, N * C);
    save_device(dir, "rstd", rstd, N);
    save_device(dir, "dx", dx, N * C);
    save_device(dir, "dw", dw, C);
}

static void run_swiglu(const char *dir) {
    constexpr int N = 5, F = 24;
    floatX *g = load_device<floatX>(dir, "g", N * F), *u = load_device<floatX>(dir, "u", N * F);
    floatX *dh = load_device<floatX>(dir, "dh", N * F), *h = device_out<floatX>(N * F);
    floatX *dg = device_out<floatX>(N * F), *du = device_out<floatX>(N * F);
    swiglu_fwd<F>(h, g, u, N);
    swiglu_bwd<F>(dg, du, dh, g, u, N);
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "h", h, N * F);
    save_device(dir, "dg", dg, N * F);
    save_device(dir, "du", du, N * F);
}

__device__ float test_inv_freq[4];
struct TestFreq {
    static __device__ __forceinline__ float at(int i) { return test_inv_freq[i]; }
};

static void run_rope(const char *dir) {
    constexpr int N = 6, T = 3, NH = 3, HD = 8;
    float freq[HD / 2];
    char path[1024];
    snprintf(path, sizeof path, "%s/freq.bin", dir);
    FILE *f = fopen(path, "rb");
    if (!f || fread(freq, sizeof(float), HD / 2, f) != HD / 2) llmgen_fail("cannot read freq.bin");
    fclose(f);
    CUDA_CHECK(cudaMemcpyToSymbol(test_inv_freq, freq, sizeof freq));
    floatX *x = load_device<floatX>(dir, "x", N * NH * HD);
    floatX *y = device_out<floatX>(N * NH * HD), *dx = device_out<floatX>(N * NH * HD);
    rope<NH, HD, false, TestFreq>(y, x, N, T);
    rope<NH, HD, true, TestFreq>(dx, x, N, T);
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "y", y, N * NH * HD);
    save_device(dir, "dx", dx, N * NH * HD);
}

static void run_xent(const char *dir) {
    constexpr int N = 7, V = 70, VP = 72;
    floatX *z = load_device<floatX>(dir, "z", N * VP), *z2 = load_device<floatX>(dir, "z", N * VP);
    int *t = load_device<int>(dir, "t", N);
    float *dl = load_device<float>(dir, "dl", N), *dloss = load_device<float>(dir, "dloss", 1);
    float *loss = device_out<float>(N), *loss2 = device_out<float>(N);
    floatX *dz = device_out<floatX>(N * VP);
    CUDA_CHECK((llmk::xent_forward<floatX, V, VP>(loss, z, t, N)));
    CUDA_CHECK((llmk::softmax_xent_backward<floatX, V, VP>(NULL, dz, z, t, NULL, dl, N, N)));
    /* the gradient written over the logits */
    CUDA_CHECK((llmk::softmax_xent_backward<floatX, V, VP>(loss2, z2, z2, t, dloss, NULL, N, N)));
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "loss", loss, N);
    save_device(dir, "loss2", loss2, N);
    save_device(dir, "dz", dz, N * VP);
    save_device(dir, "dz2", z2, N * VP);
}

int main(int argc, char **argv) {
    if (argc != 3) llmgen_fail("usage: %s rmsnorm|swiglu|rope|xent DIR", argv[0]);
    if (!strcmp(argv[1], "rmsnorm")) run_rmsnorm(argv[2]);
    else if (!strcmp(argv[1], "swiglu")) run_swiglu(argv[2]);
    else if (!strcmp(argv[1], "rope")) run_rope(argv[2]);
    else if (!strcmp(argv[1], "xent")) run_xent(argv[2]);
    else llmgen_fail("unknown case %s", argv[1]);
    return 0;
}
