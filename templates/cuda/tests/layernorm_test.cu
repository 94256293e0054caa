/* layernorm_test.cu -- the LayerNorm of kernels/norms.cuh as train.cu pastes it (after prelude.cuh, with plain
 * shared-memory accesses and llmgen_fail; fp32: built with -DLLMGEN_BF16=0): `prog CASE DIR` reads x, r (a residual
 * input), w, b, dy, dres from DIR (N 37 rows of C 40: 10 fp32 vectors a row, a ragged last one per warp), runs the
 * residual forward and the residual backward (3 blocks of 4 row groups: rows strided over the grid, dw accumulating
 * onto its initial contents, db overwritten) and writes sum, out, mean, rstd, dx, dw, db. */
#include "prelude.cuh"
#define LLMK_PLAIN_SHARED 1
#define LLMK_FAIL(msg) llmgen_fail("%s", (msg))
#include "kernels/common.cuh"
#include "kernels/norms.cuh"

int main(int argc, char **argv) {
    if (argc != 3) llmgen_fail("usage: %s residual DIR", argv[0]);
    const char *dir = argv[2];
    constexpr int N = 37, C = 40, MAXB = 3;
    floatX *x = load_device<floatX>(dir, "x", N * C), *r = load_device<floatX>(dir, "r", N * C);
    floatX *w = load_device<floatX>(dir, "w", C), *b = load_device<floatX>(dir, "b", C);
    floatX *dy = load_device<floatX>(dir, "dy", N * C), *dres = load_device<floatX>(dir, "dres", N * C);
    float *dw = load_device<float>(dir, "dw0", C), *db = (float *)device_alloc(sizeof(float) * C);
    floatX *sum = (floatX *)device_alloc(sizeof(floatX) * N * C), *out = (floatX *)device_alloc(sizeof(floatX) * N * C);
    floatX *dx = (floatX *)device_alloc(sizeof(floatX) * N * C);
    float *mean = (float *)device_alloc(sizeof(float) * N), *rstd = (float *)device_alloc(sizeof(float) * N);
    float *partial = (float *)device_alloc(llmk::layernorm_backward_scratch_bytes<floatX, C>(N, MAXB));
    unsigned *counters = (unsigned *)device_alloc(sizeof(unsigned) * llmk::NORM_COUNTERS);   /* zeroed */
    CUDA_CHECK((llmk::residual_layernorm_forward<floatX, C>(sum, out, mean, rstd, x, r, w, b, N, 1e-5f)));
    CUDA_CHECK((llmk::layernorm_backward<floatX, C>(dx, dw, db, NULL, dy, sum, mean, rstd, dres, w,
                                                    llmk::NormScratch{partial, counters, MAXB}, N, llmk::NORM_ACC_DW)));
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "sum", sum, N * C);
    save_device(dir, "out", out, N * C);
    save_device(dir, "mean", mean, N);
    save_device(dir, "rstd", rstd, N);
    save_device(dir, "dx", dx, N * C);
    save_device(dir, "dw", dw, C);
    save_device(dir, "db", db, C);
    return 0;
}
