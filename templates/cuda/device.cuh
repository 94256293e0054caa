/* device.cuh -- the CUDA target's device helpers, pasted into every generated train.cu after the memory
 * layout and before the kernels (templates/cuda/program.cu.j2): error checks, device allocation, GELU,
 * warp and block reductions in a fixed order (deterministic), small generic kernels (bias + GELU,
 * dGELU, column sums for bias gradients, fp32 -> bf16 parameters by stochastic rounding) and the
 * cuBLASLt wrapper the linear kernels call.
 *
 * Needs from the program before it: floatX, to_float / to_floatX and LLMGEN_BF16 (the precision
 * section), llmgen_fail (the runtime) and LLMGEN_LAUNCH (emulate.h or the nvcc prelude).
 */
static char *scratch_mem;           /* partial sums of the deterministic reductions (SCRATCH_BYTES) */
/* the stream of every kernel, copy and GEMM: stream 0 means it in a `--default-stream per-thread` build (the CUDA
 * Graph captures it); named where a library takes a stream (cuBLASLt) or a copy must be asynchronous */
static const cudaStream_t main_stream = cudaStreamPerThread;
/* the stream the op being issued runs on: main_stream, or the weight-gradient stream while a block's dW GEMM is
 * issued (the program's dw_fork / dw_done switch it, with lt_workspace and scratch_mem, to that stream's own) */
static cudaStream_t work_stream = cudaStreamPerThread;
static size_t device_bytes, device_peak_bytes;

#define CUDA_CHECK(call)                                                                              \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) llmgen_fail("CUDA: %s failed at line %d: %s", #call, __LINE__, cudaGetErrorString(e_)); \
    } while (0)
/* after every launch: a bad configuration shows up here, a fault at the next synchronising call */
#define LAUNCH_CHECK(name)                                                                            \
    do {                                                                                              \
        cudaError_t e_ = cudaGetLastError();                                                          \
        if (e_ != cudaSuccess) llmgen_fail("CUDA: launch of %s failed: %s", name, cudaGetErrorString(e_)); \
    } while (0)

static void *device_alloc(size_t bytes) {
    void *p = NULL;
    bytes = (bytes + 255) / 256 * 256;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    CUDA_CHECK(cudaMemset(p, 0, bytes));
    device_bytes += bytes;
    if (device_bytes > device_peak_bytes) device_peak_bytes = device_bytes;
    return p;
}

static inline unsigned cdiv(long a, long b) { return (unsigned)((a + b - 1) / b); }

/* GPT-2's tanh GELU and its derivative, the same expressions as cuBLASLt's GELU epilogues */
#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_C 0.044715f
__device__ __forceinline__ float gelu_f(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_S * (x + GELU_C * x * x * x)));
}
__device__ __forceinline__ float gelu_grad_f(float x) {
    const float t = tanhf(GELU_S * (x + GELU_C * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_S * (1.0f + 3.0f * GELU_C * x * x);
}

/* warp reductions: a butterfly, so every lane ends with the same bits */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* block reductions (blockDim.x a multiple of 32, at most 1024): warps, then warp 0 over the
 * warp results, in a fixed order; every thread gets the result. `buf` holds 33 values. */
__device__ float block_sum(float v, float *buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();                /* buf may still be read from a previous call */
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? buf[lane] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) buf[32] = s;
    }
    __syncthreads();
    return buf[32];
}
__device__ float block_max(float v, float *buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = lane < nw ? buf[lane] : -INFINITY;
        s = warp_max(s);
        if (lane == 0) buf[32] = s;
    }
    __syncthreads();
    return buf[32];
}
__device__ double block_sum_d(double v, double *buf) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double s = lane < nw ? buf[lane] : 0.0;
        s = warp_sum_d(s);
        if (lane == 0) buf[32] = s;
    }
    __syncthreads();
    return buf[32];
}

/* ---- small generic kernels: epilogues cuBLASLt may lack, bias gradients, conversions ---- */

/* pre += bias (per column); out = gelu(pre) when out is given */
__global__ void bias_gelu_kernel(floatX *pre, floatX *out, const floatX *bias, long rows, int cols) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * cols) return;
    float v = to_float(pre[i]) + to_float(bias[i % cols]);
    pre[i] = to_floatX(v);
    if (out) out[i] = to_floatX(gelu_f(to_float(pre[i])));
}

/* d *= gelu'(pre) */
__global__ void dgelu_kernel(floatX *d, const floatX *pre, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d[i] = to_floatX(to_float(d[i]) * gelu_grad_f(to_float(pre[i])));
}

/* column sums of a (rows, cols) matrix, stage 1: block (x, y) sums rows x, x + gridDim.x, ...
 * of columns y*blockDim.x + threadIdx.x into partial[x * cols + col] */
__global__ void colsum_partial_kernel(float *partial, const floatX *m, long rows, int cols) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (long r = blockIdx.x; r < rows; r += gridDim.x) s += to_float(m[r * cols + c]);
    partial[(long)blockIdx.x * cols + c] = s;
}
/* stage 2: out[c] (+)= sum over the nparts partials, in order */
__global__ void colsum_final_kernel(float *out, const float *partial, int nparts, int cols, int accumulate) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int k = 0; k < nparts; k++) s += partial[(long)k * cols + c];
    out[c] = accumulate ? out[c] + s : s;
}

/* deterministic bias gradient: db (+)= column sums of dy (rows, cols), two launches */
static void colsum(float *db, const floatX *dy, long rows, int cols, int accumulate, int max_blocks) {
    float *partial = (float *)scratch_mem;
    int nparts = rows < max_blocks ? (int)rows : max_blocks;
    if (nparts < 1) nparts = 1;
    LLMGEN_LAUNCH(colsum_partial_kernel, dim3(nparts, cdiv(cols, 256)), dim3(256), 0, work_stream, partial, dy, rows,
                  cols);
    LAUNCH_CHECK("colsum_partial_kernel");
    LLMGEN_LAUNCH(colsum_final_kernel, dim3(cdiv(cols, 256)), dim3(256), 0, work_stream, db, partial, nparts, cols,
                  accumulate);
    LAUNCH_CHECK("colsum_final_kernel");
}

/* out[i] (+)= in[i] */
__global__ void vec_acc_kernel(float *out, const float *in, int n, int accumulate) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = accumulate ? out[i] + in[i] : in[i];
}

/* The bf16 parameters from the fp32 master weights: stochastic rounding, whose random bits
 * come from a hash of the index and the value, so the rounding of a given master weight is
 * reproducible (a resumed run writes the same bf16 parameters as an uninterrupted one). */
__device__ __forceinline__ unsigned mix32(unsigned h) {
    h ^= h >> 16; h *= 0x7feb352du;
    h ^= h >> 15; h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}
__device__ __forceinline__ floatX round_param(float x, unsigned long i) {
#if LLMGEN_BF16
    const unsigned bits = __float_as_uint(x);
    const unsigned r = mix32((unsigned)i * 0x9e3779b9u ^ mix32(bits ^ (unsigned)(i >> 32))) & 0xffffu;
    const unsigned up = (bits & 0x7f800000u) == 0x7f800000u ? bits : bits + r;   /* inf and NaN stay */
    __nv_bfloat16_raw raw;
    raw.x = (unsigned short)(up >> 16);                  /* rounds up with probability low16 / 2^16 */
    return __nv_bfloat16(raw);
#else
    (void)i;
    return x;
#endif
}
__global__ void master_to_params_kernel(floatX *params, const float *master, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) params[i] = round_param(master[i], (unsigned long)i);
}

/* ---- cuBLASLt: D = alpha op(A) op(B) + beta C (C = D), column-major, with an epilogue ---- */
/* Every call site (a launcher) keeps its plans: descriptors, layouts and the algorithm, made once per shape and
 * pointer alignment at the first call (start-up) and reused, so a step only sets the bias / aux pointers and runs
 * cublasLtMatmul. The preference carries the alignments of the actual pointers (PREF_MIN_ALIGNMENT_*_BYTES; cuBLASLt
 * assumes 256 otherwise and may pick an algorithm a less aligned pointer then fails); a later call whose pointers are
 * less aligned than a plan's gets a plan of its own. Of the heuristic's candidates (up to LT_CANDIDATES) a GPU keeps
 * the fastest, each timed LT_TIMING_REPS times between two events where running the call again is harmless (beta 0,
 * or the warm-up micro-step, lt_tuning); a later candidate must beat the kept one by 3%, so near-ties keep the
 * heuristic's order. LLMGEN_GEMM_TUNE=0 keeps the heuristic's first everywhere (the same algorithms in every run).
 * The emulation's candidates all compute the same, so it keeps the first (no timing: there is nothing to time). */
static cublasLtHandle_t lt_handle;
static void *lt_workspace;         /* work_stream's (each stream has its own) */
static const size_t LT_WORKSPACE_BYTES = 32u << 20;
#ifdef LLMGEN_TF32
static const cublasComputeType_t LT_COMPUTE = LLMGEN_BF16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
#else
static const cublasComputeType_t LT_COMPUTE = CUBLAS_COMPUTE_32F;
#endif
#define LT_CHECK(call)                                                                                \
    do {                                                                                              \
        cublasStatus_t s_ = (call);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                              \
            llmgen_fail("cuBLASLt: %s failed at line %d: status %d", #call, __LINE__, (int)s_);      \
    } while (0)
typedef struct {
    void *d; cudaDataType_t d_type; long ldd;
    const void *a; long lda; int transa;
    const void *b; long ldb; int transb;
    cudaDataType_t ab_type;
    int m, n, k;
    float beta;                      /* 1: accumulate into D */
    cublasLtEpilogue_t epilogue;
    const void *bias; cudaDataType_t bias_type;
    void *aux; long aux_ld;
} LtCall;
enum { LT_CANDIDATES = 8, LT_PLANS = 8, LT_TIMING_REPS = 3 };
/* one GEMM configuration, made once and kept */
typedef struct {
    int m, n, k;
    cublasLtEpilogue_t epilogue;
    unsigned align[3];               /* the pointer alignments (A, B, C = D) it was chosen for */
    int ok;                          /* 0: cuBLASLt has no algorithm for it (the caller runs the epilogue itself) */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
} LtPlan;
/* the plans of one call site, in the order they were made */
typedef struct { int n; LtPlan plan[LT_PLANS]; } LtCache;
/* lt_tuning: 1 in the warm-up micro-step, whose results are discarded: any call may be timed. lt_capturing: 1 while a
 * CUDA Graph capture is under way: nothing is timed (no event may be waited for). Marked unused: a program without
 * GEMMs (a kernel test) never reads them. */
static int lt_tuning __attribute__((unused)), lt_capturing __attribute__((unused));

/* the largest power of two, at most 256, dividing the address */
static unsigned lt_align(const void *p) {
    unsigned a = 256;
    while (a > 1 && (uintptr_t)p % a) a /= 2;
    return a;
}
/* the per-call attributes: where the bias and the aux matrix are */
static void lt_set_pointers(cublasLtMatmulDesc_t desc, const LtCall *c) {
    if (c->bias)
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c->bias, sizeof(c->bias)));
    if (c->aux)
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &c->aux,
                                                sizeof(c->aux)));
}
static cublasStatus_t lt_run(const LtPlan *pl, const LtCall *c, const cublasLtMatmulAlgo_t *algo) {
    const float alpha = 1.0f, beta = c->beta;
    return cublasLtMatmul(lt_handle, pl->desc, &alpha, c->a, pl->la, c->b, pl->lb, &beta, c->d, pl->ld, c->d, pl->ld,
                          algo, lt_workspace, LT_WORKSPACE_BYTES, work_stream);
}
#if !LLMGEN_EMULATED
/* index of the fastest of the found candidates on this call (which is run 1 + LT_TIMING_REPS times each) */
static int lt_fastest(const LtPlan *pl, const LtCall *c, const cublasLtMatmulHeuristicResult_t *heur, int found) {
    cudaEvent_t t0, t1;
    CUDA_CHECK(cudaEventCreate(&t0));
    CUDA_CHECK(cudaEventCreate(&t1));
    int best = 0;
    float best_ms = INFINITY;
    for (int i = 0; i < found; i++) {
        if (lt_run(pl, c, &heur[i].algo) != CUBLAS_STATUS_SUCCESS) continue;   /* warm-up; a refusal is skipped */
        CUDA_CHECK(cudaEventRecord(t0, work_stream));
        for (int r = 0; r < LT_TIMING_REPS; r++) LT_CHECK(lt_run(pl, c, &heur[i].algo));
        CUDA_CHECK(cudaEventRecord(t1, work_stream));
        CUDA_CHECK(cudaEventSynchronize(t1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (ms < best_ms * 0.97f) { best_ms = ms; best = i; }
    }
    CUDA_CHECK(cudaEventDestroy(t0));
    CUDA_CHECK(cudaEventDestroy(t1));
    return best;
}
#endif
/* a plan for this call's shape, epilogue and alignments: descriptors, layouts, the heuristic's candidates, the one
 * kept */
static void lt_plan(LtPlan *pl, const LtCall *c, const unsigned align[3]) {
    memset(pl, 0, sizeof *pl);
    pl->m = c->m; pl->n = c->n; pl->k = c->k; pl->epilogue = c->epilogue;
    memcpy(pl->align, align, sizeof pl->align);
    cublasOperation_t ta = c->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = c->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescCreate(&pl->desc, LT_COMPUTE, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &c->epilogue,
                                            sizeof(c->epilogue)));
    if (c->bias) {
        int32_t bt = (int32_t)c->bias_type;
        LT_CHECK(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    if (c->aux) {
        int64_t aux_ld = c->aux_ld;
        LT_CHECK(cublasLtMatmulDescSetAttribute(pl->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld,
                                                sizeof(aux_ld)));
    }
    lt_set_pointers(pl->desc, c);
    LT_CHECK(cublasLtMatrixLayoutCreate(&pl->la, c->ab_type, c->transa ? c->k : c->m, c->transa ? c->m : c->k,
                                        c->lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&pl->lb, c->ab_type, c->transb ? c->n : c->k, c->transb ? c->k : c->n,
                                        c->ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&pl->ld, c->d_type, c->m, c->n, c->ldd));
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulHeuristicResult_t heur[LT_CANDIDATES];
    int found = 0;
    size_t ws = LT_WORKSPACE_BYTES;
    const uint32_t al[4] = {align[0], align[1], align[2], align[2]};   /* A, B, C, D (C is D) */
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4));
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle, pl->desc, pl->la, pl->lb, pl->ld, pl->ld, pref,
                                                             LT_CANDIDATES, heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) return;   /* ok = 0 */
    int pick = 0;
#if !LLMGEN_EMULATED
    const char *tune = getenv("LLMGEN_GEMM_TUNE");
    if (found > 1 && !lt_capturing && (c->beta == 0.0f || lt_tuning) && !(tune && strcmp(tune, "0") == 0))
        pick = lt_fastest(pl, c, heur, found);
#endif
    pl->algo = heur[pick].algo;
    pl->ok = 1;
}
/* returns 0 when cuBLASLt has no algorithm for this call (the caller then runs the epilogue itself) */
static int lt_matmul(const LtCall *c, LtCache *cache) {
#ifdef LLMGEN_NO_FUSED_EPILOGUES   /* test switch: take the path of a cuBLASLt without these epilogues */
    if (c->epilogue != CUBLASLT_EPILOGUE_DEFAULT) return 0;
#endif
    const unsigned align[3] = {lt_align(c->a), lt_align(c->b), lt_align(c->d)};
    LtPlan *pl = NULL;
    for (int i = 0; i < cache->n && !pl; i++) {   /* the first plan this call's shape and pointers satisfy */
        LtPlan *q = &cache->plan[i];
        if (q->m == c->m && q->n == c->n && q->k == c->k && q->epilogue == c->epilogue && q->align[0] <= align[0] &&
            q->align[1] <= align[1] && q->align[2] <= align[2])
            pl = q;
    }
    if (!pl) {
        if (cache->n == LT_PLANS) llmgen_fail("cuBLASLt: more than %d plans for one GEMM call site", (int)LT_PLANS);
        pl = &cache->plan[cache->n++];
        lt_plan(pl, c, align);
    }
    if (!pl->ok) return 0;
    lt_set_pointers(pl->desc, c);
    LT_CHECK(lt_run(pl, c, &pl->algo));
    return 1;
}

/* ---- a bias gradient db = the column sums of dY: from the dW GEMM's BGRADB epilogue (into scratch, then vec_acc)
 * or from the plain dW GEMM and colsum's two kernels, whichever is measured faster. A GPU times both at each call
 * site's first call in the warm-up micro-step (lt_tuning: its gradients are discarded, so running a path again is
 * harmless), each once untimed then LT_TIMING_REPS times between two events, and keeps the epilogue unless the
 * kernels beat it by 3%. LLMGEN_BGRAD=epilogue | kernel forces one path everywhere; without a warm-up (the
 * emulation, LLMGEN_GEMM_TUNE=0) the epilogue is kept. The emulation with LLMGEN_GEMM_TUNE=1 runs the timing as a
 * GPU does but keeps the epilogue (its clock measures the CPU), so the warm-up changes no number. ---- */
enum { BGRAD_UNSET = -1, BGRAD_KERNELS = 0, BGRAD_EPILOGUE = 1 };
/* call sites that timing sent to each path (the warm-up's report line) */
static int bgrad_timed[2] __attribute__((unused));
/* run(): one run of a path on `stream`; ms per run over LT_TIMING_REPS runs after an untimed one */
template <typename Run>
static float bgrad_ms(Run run, cudaStream_t stream) {
    cudaEvent_t t0, t1;
    float ms = 0.0f;
    run();
    CUDA_CHECK(cudaEventCreate(&t0));
    CUDA_CHECK(cudaEventCreate(&t1));
    CUDA_CHECK(cudaEventRecord(t0, stream));
    for (int r = 0; r < LT_TIMING_REPS; r++) run();
    CUDA_CHECK(cudaEventRecord(t1, stream));
    CUDA_CHECK(cudaEventSynchronize(t1));
    CUDA_CHECK(cudaEventElapsedTime(&ms, t0, t1));
    CUDA_CHECK(cudaEventDestroy(t0));
    CUDA_CHECK(cudaEventDestroy(t1));
    return ms / LT_TIMING_REPS;
}
/* epilogue(): the dW GEMM with BGRADB, then vec_acc; returns 0 where cuBLASLt has no such algorithm.
 * kernels(): the plain dW GEMM, then colsum. Both on `stream`. Returns the path this call site keeps. */
template <typename Epilogue, typename Kernels>
static int bgrad_choose(Epilogue epilogue, Kernels kernels, cudaStream_t stream) {
    const char *force = getenv("LLMGEN_BGRAD");
    if (force && *force) {
        if (strcmp(force, "epilogue") == 0) return BGRAD_EPILOGUE;
        if (strcmp(force, "kernel") == 0) return BGRAD_KERNELS;
        llmgen_fail("LLMGEN_BGRAD=%s: expected epilogue or kernel", force);
    }
    if (!lt_tuning || lt_capturing) return BGRAD_EPILOGUE;
    if (!epilogue()) return BGRAD_KERNELS;   /* no BGRADB algorithm for this shape: nothing to time */
    const float epi_ms = bgrad_ms([&] { epilogue(); }, stream), own_ms = bgrad_ms(kernels, stream);
    const int pick = own_ms < epi_ms * 0.97f && !LLMGEN_EMULATED ? BGRAD_KERNELS : BGRAD_EPILOGUE;
    bgrad_timed[pick]++;
    return pick;
}
