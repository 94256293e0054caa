/* cuBLASLt tests: one generic matmul driven by a parameter file, so the Python test can sweep
 * epilogues x data types x transposes x layouts x batches and compare with torch.
 *   params.bin (int64): m n k transa transb epilogue lda ldb ldc ldd batch type_ab type_cd
 *                       aux_ld bias_type aux_type compute order inplace
 *   scalars.bin (float): alpha beta
 *   inputs: A B C bias aux (raw bytes in the matrices' types)
 *   outputs: status (int32), D, aux_out, bgrad */
#include "emulate.h"
#ifndef LLMGEN_EMULATE
#include <cublasLt.h>
#endif
#include "testio.h"

static size_t tbytes(int t) { return t == CUDA_R_32F ? 4 : 2; }

template <class T>
static void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
    cublasStatus_t s = cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v));
    if (s != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "desc attr %d -> %d\n", (int)a, (int)s); exit(3); }
}

static void* upload(const char* name, size_t min_bytes) {
    std::vector<char> h = read_bytes(name);
    void* d = nullptr;
    CHECK_CUDA(cudaMalloc(&d, std::max(h.size(), min_bytes) + 16));
    if (!h.empty()) CHECK_CUDA(cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice));
    return d;
}

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s CASE DIR\n", argv[0]); return 2; }
    const std::string c = argv[1];
    g_dir = argv[2];
    if (c == "attr_size") { /* cuBLASLt checks sizeInBytes: a wrong size is an error */
        cublasLtMatmulDesc_t d;
        cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
        const int64_t wrong = CUBLAS_OP_T;
        std::vector<int> st;
        st.push_back((int)cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &wrong, sizeof(wrong)));
        const int32_t right = CUBLAS_OP_T;
        st.push_back((int)cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &right, sizeof(right)));
        cublasLtMatmulDescDestroy(d);
        write_output("status", st);
        return 0;
    }
    if (c != "matmul") { fprintf(stderr, "unknown case %s\n", c.c_str()); return 2; }

    std::vector<int64_t> p = read_input<int64_t>("params");
    std::vector<float> sc = read_input<float>("scalars");
    const int64_t m = p[0], n = p[1], k = p[2];
    const int32_t transa = (int32_t)p[3], transb = (int32_t)p[4];
    const uint32_t epilogue = (uint32_t)p[5];
    const int64_t lda = p[6], ldb = p[7], ldc = p[8], ldd = p[9];
    const int32_t batch = (int32_t)p[10];
    const int type_ab = (int)p[11], type_cd = (int)p[12];
    const int64_t aux_ld = p[13];
    const int32_t bias_type = (int32_t)p[14], aux_type = (int32_t)p[15];
    const cublasComputeType_t compute = (cublasComputeType_t)p[16];
    const int32_t order = (int32_t)p[17];
    const bool inplace = p[18] != 0;
    const float alpha = sc[0], beta = sc[1];

    const int64_t a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const int64_t b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    auto span = [&](int64_t rows, int64_t cols, int64_t ld) { return order == 0 ? ld * cols : ld * rows; };
    const int64_t sa = span(a_rows, a_cols, lda), sb = span(b_rows, b_cols, ldb);
    const int64_t scs = span(m, n, ldc), sd = span(m, n, ldd);
    const int auxt = aux_type >= 0 ? aux_type : type_cd, biast = bias_type >= 0 ? bias_type : type_cd;

    void* A = upload("A", 0);
    void* B = upload("B", 0);
    void* C = upload("C", 0);
    void* bias = upload("bias", 0);
    void* aux = upload("aux", (size_t)(aux_ld * n * batch) * tbytes(auxt));
    void* D = inplace ? C : nullptr;
    if (!inplace) {
        CHECK_CUDA(cudaMalloc(&D, (size_t)(sd * batch) * tbytes(type_cd)));
        CHECK_CUDA(cudaMemset(D, 0, (size_t)(sd * batch) * tbytes(type_cd)));
    }
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
    set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (bias_type >= 0) set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
    const bool uses_aux = (epilogue & 128) != 0;
    if (uses_aux) {
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld);
        if (aux_type >= 0) set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, aux_type);
    }
    if (batch > 1) {
        const int64_t bias_stride = (epilogue == CUBLASLT_EPILOGUE_BGRADB) ? n : m;
        set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, bias_stride);
        set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, aux_ld * n);
    }
    cublasLtMatrixLayout_t la, lb, lc, ld;
    cublasLtMatrixLayoutCreate(&la, (cudaDataType)type_ab, a_rows, a_cols, lda);
    cublasLtMatrixLayoutCreate(&lb, (cudaDataType)type_ab, b_rows, b_cols, ldb);
    cublasLtMatrixLayoutCreate(&lc, (cudaDataType)type_cd, m, n, ldc);
    cublasLtMatrixLayoutCreate(&ld, (cudaDataType)type_cd, m, n, ldd);
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
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, ld, pref, 1, &heur, &found);
    if (st == CUBLAS_STATUS_SUCCESS && found == 1)
        st = cublasLtMatmul(h, desc, &alpha, A, la, B, lb, &beta, C, lc, D, ld, &heur.algo, workspace, ws_bytes, 0);
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<int> status = {(int)st, found};
    write_output("status", status);
    std::vector<char> hd((size_t)(sd * batch) * tbytes(type_cd));
    CHECK_CUDA(cudaMemcpy(hd.data(), D, hd.size(), cudaMemcpyDeviceToHost));
    write_output("D", hd);
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
