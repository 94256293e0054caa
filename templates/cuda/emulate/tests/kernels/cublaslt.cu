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

/* The heuristic's candidates, the alignment preferences and stream capture, on one fp32 GEMM (D = A B, all
 * 8 x 8, column-major). status.bin: found, the three candidates' statuses, their D equal (1/0), A one float
 * past a 256-byte boundary with the default preference, the same with MIN_ALIGNMENT_A_BYTES = 4, B one float
 * off with that preference, a zeroed algorithm with both off, captured D untouched before the launch (1/0),
 * captured D equal after it (1/0). */
static int algos_case() {
    const int n = 8;
    float *A, *B, *D0, *D1;
    CHECK_CUDA(cudaMalloc((void**)&A, sizeof(float) * (n * n + 64)));
    CHECK_CUDA(cudaMalloc((void**)&B, sizeof(float) * (n * n + 64)));
    CHECK_CUDA(cudaMalloc((void**)&D0, sizeof(float) * n * n * 4));
    CHECK_CUDA(cudaMalloc((void**)&D1, sizeof(float) * n * n));
    std::vector<float> h(n * n + 64);
    for (size_t i = 0; i < h.size(); i++) h[i] = (float)((i * 7) % 11) - 5.0f;
    CHECK_CUDA(cudaMemcpy(A, h.data(), sizeof(float) * h.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(B, h.data(), sizeof(float) * h.size(), cudaMemcpyHostToDevice));
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatrixLayout_t l;
    cublasLtMatrixLayoutCreate(&l, CUDA_R_32F, n, n, n);
    const float alpha0 = 1.0f, beta = 0.0f;
    std::vector<int> st;
    auto heuristic = [&](uint32_t align_a, cublasLtMatmulHeuristicResult_t* out, int want) {
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        if (align_a)
            cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                 sizeof(align_a));
        int found = 0;
        cublasLtMatmulAlgoGetHeuristic(lt, desc, l, l, l, l, pref, want, out, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        return found;
    };
    cublasLtMatmulHeuristicResult_t heur[8];
    const int found = heuristic(0, heur, 8);
    st.push_back(found);
    for (int i = 0; i < 3; i++)
        st.push_back((int)cublasLtMatmul(lt, desc, &alpha0, A, l, B, l, &beta, D0 + i * n * n, l, D0 + i * n * n, l,
                                         &heur[i].algo, nullptr, 0, 0));
    std::vector<float> d(n * n * 3);
    CHECK_CUDA(cudaMemcpy(d.data(), D0, sizeof(float) * d.size(), cudaMemcpyDeviceToHost));
    st.push_back(memcmp(d.data(), d.data() + n * n, sizeof(float) * n * n) == 0 &&
                 memcmp(d.data(), d.data() + 2 * n * n, sizeof(float) * n * n) == 0);
    st.push_back((int)cublasLtMatmul(lt, desc, &alpha0, A + 1, l, B, l, &beta, D1, l, D1, l, &heur[0].algo, nullptr, 0,
                                     0));
    cublasLtMatmulHeuristicResult_t h4;
    heuristic(4, &h4, 1);
    st.push_back((int)cublasLtMatmul(lt, desc, &alpha0, A + 1, l, B, l, &beta, D1, l, D1, l, &h4.algo, nullptr, 0, 0));
    st.push_back((int)cublasLtMatmul(lt, desc, &alpha0, A + 1, l, B + 1, l, &beta, D1, l, D1, l, &h4.algo, nullptr, 0,
                                     0));
    cublasLtMatmulAlgo_t zero;
    memset(&zero, 0, sizeof zero);
    st.push_back((int)cublasLtMatmul(lt, desc, &alpha0, A + 1, l, B + 1, l, &beta, D1, l, D1, l, &zero, nullptr, 0, 0));
    /* capture: the GEMM of candidate 0 into D1 (zeroed first); alpha and the descriptor change after the capture */
    CHECK_CUDA(cudaMemset(D1, 0, sizeof(float) * n * n));
    float alpha = 1.0f;
    CHECK_CUDA(cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeGlobal));
    const cublasStatus_t cs = cublasLtMatmul(lt, desc, &alpha, A, l, B, l, &beta, D1, l, D1, l, &heur[0].algo,
                                             nullptr, 0, cudaStreamPerThread);
    cudaGraph_t graph;
    CHECK_CUDA(cudaStreamEndCapture(cudaStreamPerThread, &graph));
    alpha = 3.0f;
    const int32_t t = CUBLAS_OP_T;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t);
    std::vector<float> got(n * n);
    CHECK_CUDA(cudaMemcpy(got.data(), D1, sizeof(float) * n * n, cudaMemcpyDeviceToHost));
    bool untouched = cs == CUBLAS_STATUS_SUCCESS;
    for (float v : got) untouched = untouched && v == 0.0f;
    st.push_back(untouched);
    cudaGraphExec_t exec;
    CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    CHECK_CUDA(cudaGraphLaunch(exec, cudaStreamPerThread));
    CHECK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
    CHECK_CUDA(cudaMemcpy(got.data(), D1, sizeof(float) * n * n, cudaMemcpyDeviceToHost));
    st.push_back(memcmp(got.data(), d.data(), sizeof(float) * n * n) == 0);
    CHECK_CUDA(cudaGraphExecDestroy(exec));
    CHECK_CUDA(cudaGraphDestroy(graph));
    cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(desc);
    cublasLtDestroy(lt);
    write_output("status", st);
    return 0;
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
    if (c == "algos") return algos_case();
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
