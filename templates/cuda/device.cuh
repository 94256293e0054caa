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
    LLMGEN_LAUNCH(colsum_partial_kernel, dim3(nparts, cdiv(cols, 256)), dim3(256), 0, 0, partial, dy, rows, cols);
    LAUNCH_CHECK("colsum_partial_kernel");
    LLMGEN_LAUNCH(colsum_final_kernel, dim3(cdiv(cols, 256)), dim3(256), 0, 0, db, partial, nparts, cols, accumulate);
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
static cublasLtHandle_t lt_handle;
static void *lt_workspace;
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

/* the algorithm cuBLASLt picked for one launcher's shape; state -1: this epilogue is unsupported */
typedef struct { int m, n, k, state; cublasLtMatmulAlgo_t algo; } LtCache;

/* returns 0 when cuBLASLt has no algorithm for this call (the caller then runs the epilogue itself) */
static int lt_matmul(const LtCall *c, LtCache *cache) {
#ifdef LLMGEN_NO_FUSED_EPILOGUES   /* test switch: take the path of a cuBLASLt without these epilogues */
    if (c->epilogue != CUBLASLT_EPILOGUE_DEFAULT) return 0;
#endif
    if (cache->state != 0 && (cache->m != c->m || cache->n != c->n || cache->k != c->k)) cache->state = 0;
    if (cache->state < 0) return 0;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasOperation_t ta = c->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = c->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescCreate(&desc, LT_COMPUTE, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &c->epilogue, sizeof(c->epilogue)));
    if (c->bias) {
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &c->bias, sizeof(c->bias)));
        int32_t bt = (int32_t)c->bias_type;
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    }
    if (c->aux) {
        int64_t aux_ld = c->aux_ld;
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &c->aux,
                                                sizeof(c->aux)));
        LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)));
    }
    LT_CHECK(cublasLtMatrixLayoutCreate(&la, c->ab_type, c->transa ? c->k : c->m, c->transa ? c->m : c->k, c->lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&lb, c->ab_type, c->transb ? c->n : c->k, c->transb ? c->k : c->n, c->ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&ld, c->d_type, c->m, c->n, c->ldd));
    int ok = 1;
    if (cache->state == 0) {
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulHeuristicResult_t heur;
        int found = 0;
        size_t ws = LT_WORKSPACE_BYTES;
        LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt_handle, desc, la, lb, ld, ld, pref, 1, &heur, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        cache->m = c->m; cache->n = c->n; cache->k = c->k;
        if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
            cache->state = -1;
            ok = 0;
        } else {
            cache->state = 1;
            cache->algo = heur.algo;
        }
    }
    if (ok) {
        const float alpha = 1.0f, beta = c->beta;
        LT_CHECK(cublasLtMatmul(lt_handle, desc, &alpha, c->a, la, c->b, lb, &beta, c->d, ld, c->d, ld,
                                &cache->algo, lt_workspace, LT_WORKSPACE_BYTES, 0));
    }
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(desc);
    return ok;
}
