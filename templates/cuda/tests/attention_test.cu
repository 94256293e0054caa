/* attention_test.cu -- attention.cuh alone (CUDA-core kernels, fp32: built with -DLLMGEN_BF16=0):
 * `prog CASE DIR` reads q, k, v, dy from DIR, runs the forward and backward, writes y, lse, dq, dk, dv.
 *   gqa: NH 4 over KV 2, HD 18 split over TPR 4 threads (ragged: 5 slots, the last half empty),
 *        separate q (QS 72), k and v (KS 36), B 2, T 40 (not a multiple of any tile)
 *   mha: NH 2, KV 2, HD 16, one thread per row (TPR 1), packed qkv (QS = KS = 96), B 1, T 33 */
#include "prelude.cuh"
#include "attention.cuh"

template <class S>
static void run(const char *dir, int B_, int T_, bool packed) {
    const size_t rows = (size_t)B_ * T_, nq = rows * S::QS, nk = rows * S::KS, ny = rows * S::YS;
    floatX *q = load_device<floatX>(dir, "q", nq);
    floatX *kk = packed ? q + S::YS : load_device<floatX>(dir, "k", nk);
    floatX *v = packed ? q + S::YS + S::KV * S::HD : load_device<floatX>(dir, "v", nk);
    floatX *dy = load_device<floatX>(dir, "dy", ny);
    floatX *y = (floatX *)device_alloc(sizeof(floatX) * ny);
    float *lse = (float *)device_alloc(sizeof(float) * B_ * S::NH * T_);
    floatX *dq = (floatX *)device_alloc(sizeof(floatX) * nq);
    floatX *dk = packed ? dq + S::YS : (floatX *)device_alloc(sizeof(floatX) * nk);
    floatX *dv = packed ? dq + S::YS + S::KV * S::HD : (floatX *)device_alloc(sizeof(floatX) * nk);
    const float scale = 1.0f / sqrtf((float)S::HD);
    attention_fwd<S>(y, lse, q, kk, v, scale, B_, T_);
    attention_bwd<S>(dq, dk, dv, dy, q, kk, v, y, lse, scale, B_, T_);
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "y", y, ny);
    save_device(dir, "lse", lse, (size_t)B_ * S::NH * T_);
    save_device(dir, "dq", dq, nq);
    if (!packed) {
        save_device(dir, "dk", dk, nk);
        save_device(dir, "dv", dv, nk);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) llmgen_fail("usage: %s gqa|mha DIR", argv[0]);
    if (!strcmp(argv[1], "gqa")) run<AttentionShape<4, 2, 18, 72, 36, 4, 1, 8, 16, 8>>(argv[2], 2, 40, false);
    else if (!strcmp(argv[1], "mha")) run<AttentionShape<2, 2, 16, 96, 96, 1, 1, 32, 32, 32>>(argv[2], 1, 33, true);
    else llmgen_fail("unknown case %s", argv[1]);
    return 0;
}
