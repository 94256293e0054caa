/* One linear layer's three GEMMs in FP8, as a trainer will run them (driven by test_fp8.py): the current-amax
 * recipe in fp8.cuh for x, W (E4M3) and dY (E5M2), each cast once into its row-major and transposed copies,
 * then cuBLASLt's TN-only FP8 GEMM with the scale inverses as A/B scale pointers:
 *     y  (N, M) = x W^T + b       A = W   (M, K),  B = x    (N, K)   E4M3 x E4M3 -> bf16, BIAS epilogue
 *     dX (N, K) = dY W            A = W^T (K, M),  B = dY   (N, M)   E4M3 x E5M2 -> bf16
 *     dW (M, K) += dY^T x         A = x^T (K, N),  B = dY^T (M, N)   E4M3 x E5M2 -> fp32, beta = 1
 * (row-major shapes; each is cuBLASLt's column-major D (cols, rows) = op(A)^T-free TN product).
 *   `prog run DIR`: params.bin int32 {N, K, M, margin}; x.bin, w.bin, dy.bin, b.bin (bf16 bits), dw.bin (fp32,
 *   the accumulator's initial value) -> y.bin, dx.bin (bf16), dw.bin (fp32), metas.bin (x, W, dY Fp8Meta).
 * Builds through the emulation (g++) and with nvcc -lcublasLt. */
#include "emulate.h"
#ifndef LLMGEN_EMULATE
#include <cublasLt.h>
#endif
#include "ptx.cuh"
#include "fp8.cuh"
#include "testio.h"

using namespace llmgen_fp8;

#define CHECK_OK(call)                                                                                   \
    do {                                                                                                 \
        cudaError_t e_ = (call);                                                                         \
        if (e_ != cudaSuccess) { fprintf(stderr, "%s -> %s\n", #call, cudaGetErrorString(e_)); exit(3); } \
    } while (0)
#define CHECK_LT(call)                                                                   \
    do {                                                                                 \
        cublasStatus_t s_ = (call);                                                      \
        if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "%s -> %d\n", #call, (int)s_); exit(4); } \
    } while (0)

/* D (m x n, column-major, ldd m) = alpha sA sB op(A) op(B) + beta D, TN; A stored k x m (lda k), B k x n */
static void gemm_tn(cublasLtHandle_t h, void* D, cudaDataType dtype, const fp8* A, cudaDataType atype, const float* sa,
                    const fp8* B, cudaDataType btype, const float* sb, int m, int n, int k, float beta,
                    const bf16* bias) {
    cublasLtMatmulDesc_t desc;
    CHECK_LT(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t T = CUBLAS_OP_T, N = CUBLAS_OP_N;
    CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof(T)));
    CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &N, sizeof(N)));
    CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)));
    CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb)));
    if (bias) {
        const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
        CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
        CHECK_LT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    cublasLtMatrixLayout_t la, lb, ld;
    CHECK_LT(cublasLtMatrixLayoutCreate(&la, atype, k, m, k));
    CHECK_LT(cublasLtMatrixLayoutCreate(&lb, btype, k, n, k));
    CHECK_LT(cublasLtMatrixLayoutCreate(&ld, dtype, m, n, m));
    const float alpha = 1.0f;
    CHECK_LT(cublasLtMatmul(h, desc, &alpha, A, la, B, lb, &beta, D, ld, D, ld, nullptr, nullptr, 0, 0));
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
}

template <Format F>
static void quantize(Fp8Meta* meta, fp8* rows, fp8* cols, float* partials, const bf16* x, int r, int c, int margin) {
    const long n = (long)r * c;
    CHECK_OK(amax(partials, x, n, 0)); /* in a trainer: the partials of the kernel that produced x */
    CHECK_OK(scale_update<F>(meta, nullptr, 0, partials, amax_partials(n), Recipe{margin, 0, 0, 0}, 0));
    CHECK_OK(cast_transpose<F>(rows, cols, nullptr, x, &meta->scale, r, c, 0));
}

int main(int argc, char** argv) {
    if (argc < 3 || std::string(argv[1]) != "run") { fprintf(stderr, "usage: %s run DIR\n", argv[0]); return 2; }
    g_dir = argv[2];
    const std::vector<int> p = read_input<int>("params");
    const int N = p[0], K = p[1], M = p[2], margin = p[3];
    bf16 *x = to_device(read_input<bf16>("x")), *w = to_device(read_input<bf16>("w"));
    bf16 *dy = to_device(read_input<bf16>("dy")), *b = to_device(read_input<bf16>("b"));
    float* dw = to_device(read_input<float>("dw"));
    fp8 *x8, *x8t, *w8, *w8t, *dy8, *dy8t;
    for (fp8** q : {&x8, &x8t}) CHECK_CUDA(cudaMalloc((void**)q, (size_t)N * K));
    for (fp8** q : {&w8, &w8t}) CHECK_CUDA(cudaMalloc((void**)q, (size_t)M * K));
    for (fp8** q : {&dy8, &dy8t}) CHECK_CUDA(cudaMalloc((void**)q, (size_t)N * M));
    Fp8Meta* meta;
    CHECK_CUDA(cudaMalloc((void**)&meta, 3 * sizeof(Fp8Meta)));
    CHECK_OK(meta_init(meta, 3, nullptr, 0, 0));
    float* partials;
    CHECK_CUDA(cudaMalloc((void**)&partials, MAX_FLAT_BLOCKS * sizeof(float)));
    bf16 *y, *dx;
    CHECK_CUDA(cudaMalloc((void**)&y, (size_t)N * M * sizeof(bf16)));
    CHECK_CUDA(cudaMalloc((void**)&dx, (size_t)N * K * sizeof(bf16)));

    quantize<Format::E4M3>(meta + 0, x8, x8t, partials, x, N, K, margin);
    quantize<Format::E4M3>(meta + 1, w8, w8t, partials, w, M, K, margin);
    quantize<Format::E5M2>(meta + 2, dy8, dy8t, partials, dy, N, M, margin);
    cublasLtHandle_t h;
    CHECK_LT(cublasLtCreate(&h));
    const float *sx = &meta[0].scale_inv, *sw = &meta[1].scale_inv, *sdy = &meta[2].scale_inv;
    gemm_tn(h, y, CUDA_R_16BF, w8, CUDA_R_8F_E4M3, sw, x8, CUDA_R_8F_E4M3, sx, M, N, K, 0.0f, b);        /* y */
    gemm_tn(h, dx, CUDA_R_16BF, w8t, CUDA_R_8F_E4M3, sw, dy8, CUDA_R_8F_E5M2, sdy, K, N, M, 0.0f, nullptr); /* dX */
    gemm_tn(h, dw, CUDA_R_32F, x8t, CUDA_R_8F_E4M3, sx, dy8t, CUDA_R_8F_E5M2, sdy, K, M, N, 1.0f, nullptr); /* dW */
    CHECK_CUDA(cudaDeviceSynchronize());
    save_device("y", y, (size_t)N * M);
    save_device("dx", dx, (size_t)N * K);
    save_device("dw", dw, (size_t)M * K);
    save_device("metas", meta, 3);
    cublasLtDestroy(h);
    return 0;
}
