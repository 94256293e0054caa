/* cuBLASLt FP8 tests: one matmul driven by a parameter file, so test_emu_cublaslt_fp8.py can sweep the
 * FP8 type combinations, scales, amax, epilogues, batches and the documented refusals, and compare with
 * numpy. Builds through the emulation (g++) and, unchanged, with nvcc -lcublasLt for a GPU.
 *   params.bin (int64): m n k transa transb epilogue lda ldb ldc ldd batch type_a type_b type_c type_d
 *                       bias_type aux_type aux_ld order compute use_sa use_sb use_sc use_sd use_amax
 *                       misalign_a fast_accum
 *   scalars.bin (float): alpha beta scale_a scale_b scale_c scale_d
 *   inputs: A B C bias aux (raw bytes in the matrices' types; batches one after another)
 *   outputs: status (int32: heuristic status, algorithms found, matmul status), D, amax (float),
 *            aux_out, bgrad
 * The matmul runs even when the heuristic found nothing (algo = NULL: cuBLASLt then searches itself),
 * so both answers to a refused configuration are recorded. */
#include "emulate.h"
#ifndef LLMGEN_EMULATE
#include <cublasLt.h>
#endif
#include "testio.h"

static size_t tbytes(int t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: case CUDA_R_16F: return 2;
    default: return 1;
    }
}

template <class T>
static void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v));
    if (s != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "desc attr %d -> %d\n", (int)a, (int)s); exit(3); }
}

static char* upload(const char* name, size_t min_bytes, size_t offset = 0) {
    std::vector<char> h = read_bytes(name);
    char* d = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, std::max(h.size(), min_bytes) + offset + 16));
    if (!h.empty()) CHECK_CUDA(cudaMemcpy(d + offset, h.data(), h.size(), cudaMemcpyHostToDevice));
    return d + offset;
}

static float* device_float(float v) {
    float* d = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, sizeof(float)));
    CHECK_CUDA(cudaMemcpy(d, &v, sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c != "matmul") { fprintf(stderr, "unknown case %s\n", c.c_str()); return 2; }

    std::vector<int64_t> p = read_input<int64_t>("params");
    std::vector<float> sc = read_input<float>("scalars");
    const int64_t m = p[0], n = p[1], k = p[2];
    const int32_t transa = (int32_t)p[3], transb = (int32_t)p[4];
    const uint32_t epilogue = (uint32_t)p[5];
    const int64_t lda = p[6], ldb = p[7], ldc = p[8], ldd = p[9];
    const int32_t batch = (int32_t)p[10];
    const int type_a = (int)p[11], type_b = (int)p[12], type_c = (int)p[13], type_d = (int)p[14];
    const int32_t bias_type = (int32_t)p[15], aux_type = (int32_t)p[16];
    const int64_t aux_ld = p[17];
    const int32_t order = (int32_t)p[18];
    const cublasComputeType_t compute = (cublasComputeType_t)p[19];
    const bool use_sa = p[20], use_sb = p[21], use_sc = p[22], use_sd = p[23], use_amax = p[24];
    const size_t misalign_a = (size_t)p[25];
    const int8_t fast_accum = (int8_t)p[26];
    const float alpha = sc[0], beta = sc[1];

    const int64_t a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const int64_t b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    auto span = [&](int64_t rows, int64_t cols, int64_t ld) { return order == 0 ? ld * cols : ld * rows; };
    const int64_t sa = span(a_rows, a_cols, lda), sb = span(b_rows, b_cols, ldb);
    const int64_t scs = span(m, n, ldc), sd = span(m, n, ldd);
    const int auxt = aux_type >= 0 ? aux_type : type_d;
    const int biast = bias_type >= 0 ? bias_type : (type_c == CUDA_R_16F ? CUDA_R_16F : CUDA_R_16BF);

    void* A = upload("A", 0, misalign_a);
    void* B = upload("B", 0);
    void* C = upload("C", 0);
    void* bias = upload("bias", 0);
    void* aux = upload("aux", (size_t)(aux_ld * n * batch) * tbytes(auxt));
    void* D;
    CHECK_CUDA(cudaMalloc(&D, (size_t)(sd * batch) * tbytes(type_d) + 16));
    CHECK_CUDA(cudaMemset(D, 0, (size_t)(sd * batch) * tbytes(type_d)));
    float* amax = device_float(-1.0f); /* must be overwritten */
    void* workspace;
    const size_t ws_bytes = 32 << 20;
    CHECK_CUDA(cudaMalloc(&workspace, ws_bytes));

    cublasLtHandle_t h;
    cublasLtCreate(&h);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F);
    set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSA, transa);
    set_desc(desc, CUBLASLT_MATMUL_DESC_TRANSB, transb);
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    if (fast_accum) set_desc(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, fast_accum);
    const bool uses_bias = (epilogue & 4) || (epilogue & 16) || epilogue == 256 || epilogue == 512;
    if (uses_bias) set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (bias_type >= 0) set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
    const bool uses_aux = (epilogue & 128) != 0;
    if (uses_aux) {
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld);
        if (aux_type >= 0) set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, aux_type);
    }
    if (use_sa) set_desc(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, (const void*)device_float(sc[2]));
    if (use_sb) set_desc(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, (const void*)device_float(sc[3]));
    if (use_sc) set_desc(desc, CUBLASLT_MATMUL_DESC_C_SCALE_POINTER, (const void*)device_float(sc[4]));
    if (use_sd) set_desc(desc, CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, (const void*)device_float(sc[5]));
    if (use_amax) set_desc(desc, CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, (void*)amax);
    if (batch > 1) {
        set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, (int64_t)(epilogue == 512 ? n : m));
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, (int64_t)(aux_ld * n));
    }
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatrixLayoutCreate(&la, (cudaDataType)type_a, a_rows, a_cols, lda);
    cublasLtMatrixLayoutCreate(&lb, (cudaDataType)type_b, b_rows, b_cols, ldb);
    cublasLtMatrixLayoutCreate(&lc, (cudaDataType)type_c, m, n, ldc);
    cublasLtMatrixLayoutCreate(&ld, (cudaDataType)type_d, m, n, ldd);
    cublasLtMatrixLayout_t lays[4] = {la, lb, lc, ld};
    const int64_t strides[4] = {sa, sb, scs, sd};
    for (int i = 0; i < 4; ++i) {
        if (order != 0) {
            const int32_t o = CUBLASLT_ORDER_ROW;
            cublasLtMatrixLayoutSetAttribute(lays[i], CUBLASLT_MATRIX_LAYOUT_ORDER, &o, sizeof(o));
        }
        if (batch > 1) {
            cublasLtMatrixLayoutSetAttribute(lays[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch));
            cublasLtMatrixLayoutSetAttribute(lays[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &strides[i],
                                             sizeof(strides[i]));
        }
    }
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    const uint64_t ws = ws_bytes;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, ld, pref, 1, &heur, &found);
    const cublasStatus_t ms = cublasLtMatmul(h, desc, &alpha, A, la, B, lb, &beta, C, lc, D, ld,
                                             found == 1 ? &heur.algo : nullptr, workspace, ws_bytes, 0);
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<int> status = {(int)hs, found, (int)ms};
    write_output("status", status);
    std::vector<char> hd((size_t)(sd * batch) * tbytes(type_d));
    CHECK_CUDA(cudaMemcpy(hd.data(), D, hd.size(), cudaMemcpyDeviceToHost));
    write_output("D", hd);
    save_device("amax", amax, 1);
    if (uses_aux) {
        std::vector<char> ha((size_t)(aux_ld * n * batch) * tbytes(auxt));
        CHECK_CUDA(cudaMemcpy(ha.data(), aux, ha.size(), cudaMemcpyDeviceToHost));
        write_output("aux_out", ha);
    }
    if (epilogue == CUBLASLT_EPILOGUE_DGELU_BGRAD || epilogue == CUBLASLT_EPILOGUE_BGRADA ||
        epilogue == CUBLASLT_EPILOGUE_BGRADB) {
        const int64_t len = (epilogue == CUBLASLT_EPILOGUE_BGRADB ? n : m) * batch;
        std::vector<char> hb((size_t)len * tbytes(biast));
        CHECK_CUDA(cudaMemcpy(hb.data(), bias, hb.size(), cudaMemcpyDeviceToHost));
        write_output("bgrad", hb);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    for (int i = 0; i < 4; ++i) cublasLtMatrixLayoutDestroy(lays[i]);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(h);
    return 0;
}
