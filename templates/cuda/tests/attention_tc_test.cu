/* attention_tc_test.cu -- attention_tc.cuh alone: `prog CASE DIR` reads q, k, v, dy (bf16 bits) from
 * DIR, runs the tensor-core forward and backward and writes y, lse, dq, dk, dv back.
 *   gqa: NH 4 query heads over KV 2, HD 32, separate q (QS 128), k and v (KS 64), B 2, T 128
 *   mha: NH 2, KV 2, HD 16 from a packed qkv (QS = KS = 96, k at +32, v at +64), B 1, T 64 */
#include "prelude.cuh"
#include "attention_tc.cuh"

template <int NH, int KV, int HD, int QS, int KS>
static void run(const char *dir, int B_, int T_, bool packed) {
    const size_t rows = (size_t)B_ * T_, nq = rows * QS, nk = rows * KS, ny = rows * NH * HD;
    floatX *q = load_device<floatX>(dir, "q", nq);
    floatX *kk = packed ? q + NH * HD : load_device<floatX>(dir, "k", nk);
    floatX *v = packed ? q + 2 * NH * HD : load_device<floatX>(dir, "v", nk);
    floatX *dy = load_device<floatX>(dir, "dy", ny);
    floatX *y = (floatX *)device_alloc(sizeof(floatX) * ny);
    float *lse = (float *)device_alloc(sizeof(float) * B_ * NH * T_);
    floatX *dq = (floatX *)device_alloc(sizeof(floatX) * nq);
    floatX *dk = packed ? dq + NH * HD : (floatX *)device_alloc(sizeof(floatX) * nk);
    floatX *dv = packed ? dq + 2 * NH * HD : (floatX *)device_alloc(sizeof(floatX) * nk);
    const float scale = 1.0f / sqrtf((float)HD);
    attention_tc_fwd<NH, KV, HD, QS, KS>(y, lse, q, kk, v, scale, B_, T_);
    attention_tc_bwd<NH, KV, HD, QS, KS>(dq, dk, dv, dy, q, kk, v, y, lse, scale, B_, T_);
    CUDA_CHECK(cudaDeviceSynchronize());
    save_device(dir, "y", y, ny);
    save_device(dir, "lse", lse, (size_t)B_ * NH * T_);
    save_device(dir, "dq", dq, nq);
    if (!packed) {
        save_device(dir, "dk", dk, nk);
        save_device(dir, "dv", dv, nk);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) llmgen_fail("usage: %s gqa|mha DIR", argv[0]);
    if (!strcmp(argv[1], "gqa")) run<4, 2, 32, 128, 64>(argv[2], 2, 128, false);
    else if (!strcmp(argv[1], "mha")) run<2, 2, 16, 96, 96>(argv[2], 1, 64, true);
    else llmgen_fail("unknown case %s", argv[1]);
    return 0;
}
