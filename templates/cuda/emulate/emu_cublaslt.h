/* emu_cublaslt.h -- the cuBLASLt subset the generated programs call, as a CPU GEMM.
 *
 * CONTRACT
 *   The types, enums and functions are declared with NVIDIA's names and values (cublasLt.h,
 *   cublas_api.h; cudaDataType_t comes from library_types.h; a test compares the values with
 *   NVIDIA's header). cublasLtMatmul runs a blocked, OpenMP-parallel GEMM accumulating in fp32 in k
 *   order per output element, with the epilogues DEFAULT, BIAS, GELU, GELU_BIAS, GELU_AUX,
 *   GELU_AUX_BIAS, DGELU, DGELU_BGRAD, BGRADA, BGRADB:
 *     D = act(alpha*op(A)op(B) + beta*C + bias); C is not read when beta == 0; GELU is the tanh
 *     approximation; GELU_AUX stores the pre-activation (bias included); DGELU multiplies the
 *     result by gelu'(aux); the bias gradient of DGELU_BGRAD is the row sum of the final fp32
 *     values (before rounding to D's type); BGRADA / BGRADB are the sums of op(A) over k / of
 *     op(B) over k, without alpha. Bias gradients overwrite the bias buffer, in BIAS_DATA_TYPE
 *     (default: D's type). COMPUTE_32F_FAST_TF32 rounds inputs to tf32 (to nearest, ties away from
 *     zero); other FAST modes compute in plain fp32.
 *   These follow cuBLASLt's documentation; they could not be compared with a GPU here.
 *
 *   Algorithms: cublasLtMatmulAlgoGetHeuristic returns up to 3 candidates (as many as requested), all
 *   computing the same (only their ids differ: timing them here means nothing, so a program keeps the
 *   first). Each candidate remembers the preference's CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES
 *   (256 each when not set, cuBLASLt's default): an algorithm chosen for that alignment may rely on it,
 *   so cublasLtMatmul with that algorithm refuses a matrix pointer less aligned than its preference said
 *   (CUBLAS_STATUS_NOT_SUPPORTED, the emulation's reading of "the configured operation is not supported";
 *   a GPU may instead fault or answer INVALID_VALUE). An algorithm the heuristic did not return (zeroed
 *   memory) carries no requirement.
 *   Stream capture (emu_runtime.h): a cublasLtMatmul on a stream being captured is recorded with copies of
 *   its descriptor, layouts, algorithm and (host pointer mode) alpha and beta, and runs at cudaGraphLaunch;
 *   a descriptor changed or destroyed after the capture does not change the graph, as on a GPU. A call queued by
 *   LLMGEN_EMU_DEFER_STREAMS (emu_launch.h) is kept the same way.
 *
 *   FP8 (A and B of CUDA_R_8F_E4M3 / CUDA_R_8F_E5M2), as cublasLtMatmul()'s documentation states
 *   its requirements ("To use ... FP8 kernels") and its table of types for sm_89 / sm_90:
 *     D = scale_D * epilogue(alpha * scale_A * scale_B * (A^T B) + beta * scale_C * C + bias)
 *   with the products of FP8 values exact and summed in fp32 in k order (the tensor cores' own
 *   accumulation order and internal precision, and FAST_ACCUM, are not modelled: FAST_ACCUM is
 *   accepted and changes nothing); alpha * scale_A * scale_B and beta * scale_C are formed first, in
 *   fp32, left to right. scale_X is read from the float at CUBLASLT_MATMUL_DESC_X_SCALE_POINTER
 *   (device memory; 1 when unset); scale_D only with an FP8 D (set with another D: INVALID_VALUE,
 *   the documented answer to an unsupported combination). CUBLASLT_MATMUL_DESC_AMAX_D_POINTER, when
 *   set, receives max |value| over D before scale_D and the conversion (fmaxf: NaN is ignored), for
 *   any D type. An FP8 D is rounded to nearest even and saturated to its finite maximum (NaN stays
 *   NaN), as cvt.rn.satfinite does.
 *   Accepted, else CUBLAS_STATUS_NOT_SUPPORTED (from cublasLtMatmulAlgoGetHeuristic with no
 *   algorithm too, as the library refuses what it cannot run, so a program's fallback runs here):
 *     - both A and B FP8, not both E5M2; CUBLAS_COMPUTE_32F; scale type CUDA_R_32F;
 *     - TRANSA = CUBLAS_OP_T and TRANSB = CUBLAS_OP_N (the "TN" format of sm_89 / sm_90), every
 *       matrix CUBLASLT_ORDER_COL;
 *     - (C, D) types: (bf16, bf16), (bf16, E4M3), (fp16, fp16), (fp16, E4M3), (fp32, fp32), and for
 *       E4M3 x E5M2 / E5M2 x E4M3 also (bf16, E5M2), (fp16, E5M2); the bias type is fp16 with an
 *       fp16 C and bf16 otherwise (a different BIAS_DATA_TYPE is refused);
 *     - epilogues DEFAULT, BIAS, GELU, GELU_BIAS, and with a 16/32-bit D also GELU_AUX(_BIAS),
 *       DGELU, DGELU_BGRAD (aux in D's type); BGRADA / BGRADB, FP8 aux outputs and the aux scale /
 *       amax pointers are not emulated;
 *     - 16-byte alignment as documented for FP8 (Tensor Core Usage): k, lda, ldb multiples of 16;
 *       rows and leading dimension of C and D times their element size multiples of 16; batch
 *       strides likewise; the pointers A, B, C, D 16-byte aligned (checked by cublasLtMatmul).
 *   Without FP8 A/B, a scale or amax pointer is refused with INVALID_VALUE and an FP8 C or D with
 *   NOT_SUPPORTED; everything else behaves exactly as before these were added.
 *   -DLLMGEN_EMU_NO_CUBLASLT leaves all of it out (a program that includes NVIDIA's cublasLt.h).
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_CUBLASLT_H
#define LLMGEN_EMU_CUBLASLT_H
#ifndef LLMGEN_EMULATE_H
#error "emu_cublaslt.h is a part of emulate.h: include emulate.h"
#endif

#ifndef LLMGEN_EMU_NO_CUBLASLT

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;

typedef enum {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2,
    CUBLAS_OP_HERMITAN = 2,
    CUBLAS_OP_CONJG = 3
} cublasOperation_t;

typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;

typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
    CUBLAS_COMPUTE_32F_EMULATED_16BFX9 = 78,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_64F_PEDANTIC = 71,
    CUBLAS_COMPUTE_32I = 72,
    CUBLAS_COMPUTE_32I_PEDANTIC = 73
} cublasComputeType_t;

typedef enum {
    CUBLASLT_POINTER_MODE_HOST = CUBLAS_POINTER_MODE_HOST,
    CUBLASLT_POINTER_MODE_DEVICE = CUBLAS_POINTER_MODE_DEVICE,
    CUBLASLT_POINTER_MODE_DEVICE_VECTOR = 2,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO = 3,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST = 4
} cublasLtPointerMode_t;

typedef enum {
    CUBLASLT_ORDER_COL = 0,
    CUBLASLT_ORDER_ROW = 1,
    CUBLASLT_ORDER_COL32 = 2,
    CUBLASLT_ORDER_COL4_4R2_8C = 3,
    CUBLASLT_ORDER_COL32_2R_4R4 = 4
} cublasLtOrder_t;

typedef enum {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,
    CUBLASLT_MATRIX_LAYOUT_LD = 4,
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
    CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET = 7,
    CUBLASLT_MATRIX_LAYOUT_BATCH_MODE = 8
} cublasLtMatrixLayoutAttribute_t;

typedef enum {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_TRANSC = 5,
    CUBLASLT_MATMUL_DESC_FILL_MODE = 6,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE = 13,
    CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE = 14,
    CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET = 15,
    CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17,
    CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18,
    CUBLASLT_MATMUL_DESC_C_SCALE_POINTER = 19,
    CUBLASLT_MATMUL_DESC_D_SCALE_POINTER = 20,
    CUBLASLT_MATMUL_DESC_AMAX_D_POINTER = 21,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE = 22,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER = 23,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER = 24,
    CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25,
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26
} cublasLtMatmulDescAttributes_t;

typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_RELU = 2,
    CUBLASLT_EPILOGUE_RELU_AUX = (CUBLASLT_EPILOGUE_RELU | 128),
    CUBLASLT_EPILOGUE_BIAS = 4,
    CUBLASLT_EPILOGUE_RELU_BIAS = (CUBLASLT_EPILOGUE_RELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_RELU_AUX_BIAS = (CUBLASLT_EPILOGUE_RELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DRELU = 8 | 128,
    CUBLASLT_EPILOGUE_DRELU_BGRAD = CUBLASLT_EPILOGUE_DRELU | 16,
    CUBLASLT_EPILOGUE_GELU = 32,
    CUBLASLT_EPILOGUE_GELU_AUX = (CUBLASLT_EPILOGUE_GELU | 128),
    CUBLASLT_EPILOGUE_GELU_BIAS = (CUBLASLT_EPILOGUE_GELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_GELU_AUX_BIAS = (CUBLASLT_EPILOGUE_GELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DGELU = 64 | 128,
    CUBLASLT_EPILOGUE_DGELU_BGRAD = CUBLASLT_EPILOGUE_DGELU | 16,
    CUBLASLT_EPILOGUE_BGRADA = 256,
    CUBLASLT_EPILOGUE_BGRADB = 512
} cublasLtEpilogue_t;

typedef enum {
    CUBLASLT_SEARCH_BEST_FIT = 0,
    CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID = 1,
    CUBLASLT_SEARCH_RESERVED_02 = 2,
    CUBLASLT_SEARCH_RESERVED_03 = 3,
    CUBLASLT_SEARCH_RESERVED_04 = 4,
    CUBLASLT_SEARCH_RESERVED_05 = 5,
    CUBLASLT_SEARCH_RESERVED_06 = 6,
    CUBLASLT_SEARCH_RESERVED_07 = 7,
    CUBLASLT_SEARCH_RESERVED_08 = 8,
    CUBLASLT_SEARCH_RESERVED_09 = 9
} cublasLtMatmulSearch_t;

typedef enum {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
    CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT = 9,
    CUBLASLT_MATMUL_PREF_IMPL_MASK = 12
} cublasLtMatmulPreferenceAttributes_t;

struct cublasLtContext { int unused; };
typedef struct cublasLtContext* cublasLtHandle_t;
typedef struct { uint64_t data[8]; } cublasLtMatrixLayoutOpaque_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct { uint64_t data[32]; } cublasLtMatmulDescOpaque_t;
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulPreferenceOpaque_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

namespace llmgen_emu {
namespace lt {

struct Desc { /* lives inside cublasLtMatmulDescOpaque_t */
    int32_t compute, scale_type, pointer_mode, transa, transb, transc, fill_mode;
    uint32_t epilogue;
    const void* bias;
    int64_t bias_batch_stride;
    void* aux;
    int64_t aux_ld, aux_batch_stride;
    int32_t aux_type, bias_type;
    int8_t fast_accum;
    int32_t sm_count_target;
    const void *a_scale, *b_scale, *c_scale, *d_scale; /* FP8: device floats, nullptr = 1 */
    void* amax_d;                                      /* FP8: max |D| before scale_D */
    void *aux_scale, *aux_amax;                        /* FP8 aux outputs: not emulated */
};
struct Layout { /* lives inside cublasLtMatrixLayoutOpaque_t */
    uint32_t type;
    int32_t order;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch;
    int64_t batch_stride;
};
struct Pref {
    uint32_t search_mode = 0;
    uint64_t max_workspace = 0;
    uint32_t min_align[4] = {256, 256, 256, 256}; /* PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES */
};
/* the emulation's algorithms: data[0] = kAlgoTag + candidate index, data[1..4] = the alignments (A, B, C,
 * D) of the preference it was chosen with */
constexpr uint64_t kAlgoTag = 0x6c6c6d67656e0000ull;
constexpr int kCandidates = 3;
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "Desc must fit NVIDIA's opaque size");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "Layout must fit NVIDIA's opaque size");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "Pref must fit NVIDIA's opaque size");
inline Desc* desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d->data); }
inline Layout* layout(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l->data); }
inline Pref* pref(cublasLtMatmulPreference_t p) { return reinterpret_cast<Pref*>(p->data); }

inline cublasStatus_t bad(const char* why) {
    fprintf(stderr, "llmgen emulate: cublasLt: %s\n", why);
    return CUBLAS_STATUS_INVALID_VALUE;
}
inline cublasStatus_t unsupported(const char* why) {
    fprintf(stderr, "llmgen emulate: cublasLt: not emulated: %s\n", why);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}
/* what cuBLASLt's documentation says it does not run (the library's own NOT_SUPPORTED) */
inline cublasStatus_t refused(const char* why) {
    fprintf(stderr, "llmgen emulate: cublasLt: not supported (as documented): %s\n", why);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}
/* copy an attribute value of exactly `want` bytes, as cuBLASLt checks sizeInBytes */
template <class T>
inline bool take(T& dst, const void* buf, size_t size) {
    if (!buf || size != sizeof(T)) return false;
    memcpy(&dst, buf, sizeof(T));
    return true;
}
template <class T>
inline cublasStatus_t give(const T& src, void* buf, size_t size, size_t* written) {
    if (written) *written = sizeof(T);
    if (!buf && size == 0) return CUBLAS_STATUS_SUCCESS; /* size query */
    if (!buf || size < sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(buf, &src, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

inline bool is_fp8(int t) { return t == CUDA_R_8F_E4M3 || t == CUDA_R_8F_E5M2; }
inline size_t type_bytes(int t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    case CUDA_R_16F: return 2;
    case CUDA_R_8F_E4M3: return 1;
    case CUDA_R_8F_E5M2: return 1;
    default: return 0;
    }
}
inline __nv_fp8_interpretation_t fp8_kind(int t) { return t == CUDA_R_8F_E4M3 ? __NV_E4M3 : __NV_E5M2; }
inline float load(int type, const char* base, int64_t i) {
    switch (type) {
    case CUDA_R_32F: { float f; memcpy(&f, base + 4 * i, 4); return f; }
    case CUDA_R_16BF: { __nv_bfloat16 h; memcpy((void*)&h, base + 2 * i, 2); return __bfloat162float(h); }
    case CUDA_R_8F_E4M3: case CUDA_R_8F_E5M2: /* exact: every FP8 value is a half */
        return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)base[i], fp8_kind(type))));
    default: { __half h; memcpy((void*)&h, base + 2 * i, 2); return __half2float(h); }
    }
}
inline void store(int type, char* base, int64_t i, float v) {
    switch (type) {
    case CUDA_R_32F: memcpy(base + 4 * i, &v, 4); break;
    case CUDA_R_16BF: { __nv_bfloat16 h = __float2bfloat16_rn(v); memcpy(base + 2 * i, (const void*)&h, 2); break; }
    case CUDA_R_8F_E4M3: case CUDA_R_8F_E5M2: /* cvt.rn.satfinite */
        base[i] = (char)__nv_cvt_float_to_fp8(v, __NV_SATFINITE, fp8_kind(type));
        break;
    default: { __half h = __float2half_rn(v); memcpy(base + 2 * i, (const void*)&h, 2); break; }
    }
}
inline float tf32_rna(float x) { /* cvt.rna.tf32.f32 */
    uint32_t u = f2u(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return u2f(u);
}

constexpr float kGeluS = 0.7978845608028654f; /* sqrt(2/pi) */
constexpr float kGeluC = 0.044715f;
inline float gelu(float x) { /* tanh approximation, as cuBLASLt's GELU epilogues */
    return 0.5f * x * (1.0f + tanhf(kGeluS * (x + kGeluC * x * x * x)));
}
inline float dgelu(float x) { /* derivative of the tanh approximation */
    const float t = tanhf(kGeluS * (x + kGeluC * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluS * (1.0f + 3.0f * kGeluC * x * x);
}

/* A strided matrix view: element (r, c) at base[r*rs + c*cs] of `type` */
struct View {
    const char* base;
    int type;
    int64_t rs, cs;
};

enum { MR = 8, NR = 4, MC = 64, NC = 128 };
typedef float v8f __attribute__((vector_size(32)));

/* op(A) (m x k) -> panels of MR rows: panel ip holds (p, r) at [p*MR + r], zero-padded */
inline void pack_rows(const View& a, int64_t m, int64_t k, float* out, bool tf32) {
    const int64_t np = (m + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (m * k > 32768)
    for (int64_t ip = 0; ip < np; ++ip) {
        float* dst = out + ip * MR * k;
        for (int64_t p = 0; p < k; ++p)
            for (int r = 0; r < MR; ++r) {
                const int64_t i = ip * MR + r;
                float v = i < m ? load(a.type, a.base, i * a.rs + p * a.cs) : 0.0f;
                dst[p * MR + r] = tf32 ? tf32_rna(v) : v;
            }
    }
}
/* op(B) (k x n) -> panels of NR columns: panel jp holds (p, c) at [p*NR + c], zero-padded */
inline void pack_cols(const View& b, int64_t k, int64_t n, float* out, bool tf32) {
    const int64_t np = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static) if (n * k > 32768)
    for (int64_t jp = 0; jp < np; ++jp) {
        float* dst = out + jp * NR * k;
        for (int64_t p = 0; p < k; ++p)
            for (int c = 0; c < NR; ++c) {
                const int64_t j = jp * NR + c;
                float v = j < n ? load(b.type, b.base, p * b.rs + j * b.cs) : 0.0f;
                dst[p * NR + c] = tf32 ? tf32_rna(v) : v;
            }
    }
}

/* acc (MR x NR, column-major) = A panel (k x MR) . B panel (k x NR), summed over p in order */
inline void micro_kernel(int64_t k, const float* a, const float* b, float* acc) {
    v8f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    for (int64_t p = 0; p < k; ++p) {
        v8f av;
        memcpy(&av, a + p * MR, sizeof(av));
        const float* bp = b + p * NR;
        c0 += av * bp[0];
        c1 += av * bp[1];
        c2 += av * bp[2];
        c3 += av * bp[3];
    }
    memcpy(acc + 0 * MR, &c0, sizeof(c0));
    memcpy(acc + 1 * MR, &c1, sizeof(c1));
    memcpy(acc + 2 * MR, &c2, sizeof(c2));
    memcpy(acc + 3 * MR, &c3, sizeof(c3));
}

struct Epi {
    bool bias_add, gelu, aux_out, dgelu, bgrad_rows, bgrad_a, bgrad_b;
    int bias_type, aux_type;
    const char* bias;   /* BIAS: input */
    char* bgrad;        /* *_BGRAD*: output */
    char* aux;          /* GELU_AUX: output, DGELU: input */
    int64_t aux_ld;
    bool amax, d_scaled; /* FP8: track max |D| (before scale_D); multiply D by d_scale before storing */
    float d_scale;
};

/* D = epilogue(alpha * op(A) op(B) + beta * C) for one batch entry; returns max |D| before d_scale
 * when e.amax (else 0) */
inline float gemm(int64_t m, int64_t n, int64_t k, const View& a, const View& b, float alpha, float beta,
                  const View& c, const View& d, const Epi& e, bool tf32) {
    static thread_local std::vector<float> abuf, bbuf, rowsum, tile_amax;
    const int64_t mpan = (m + MR - 1) / MR, npan = (n + NR - 1) / NR;
    abuf.resize((size_t)(mpan * MR * k + 16));
    bbuf.resize((size_t)(npan * NR * k + 16));
    float* ap = abuf.data();
    float* bp = bbuf.data();
    pack_rows(a, m, k, ap, tf32);
    pack_cols(b, k, n, bp, tf32);

    if (e.bgrad_a) /* bias gradient from A: sum over k of op(A)(i, :) */
        for (int64_t i = 0; i < m; ++i) {
            const float* pan = ap + (i / MR) * MR * k;
            float s = 0.0f;
            for (int64_t p = 0; p < k; ++p) s += pan[p * MR + i % MR];
            store(e.bias_type, e.bgrad, i, s);
        }
    if (e.bgrad_b) /* bias gradient from B: sum over k of op(B)(:, j) */
        for (int64_t j = 0; j < n; ++j) {
            const float* pan = bp + (j / NR) * NR * k;
            float s = 0.0f;
            for (int64_t p = 0; p < k; ++p) s += pan[p * NR + j % NR];
            store(e.bias_type, e.bgrad, j, s);
        }

    const int64_t tm = (m + MC - 1) / MC, tn = (n + NC - 1) / NC;
    if (e.bgrad_rows) rowsum.assign((size_t)(tn * m), 0.0f);
    float* rs = rowsum.data();
    if (e.amax) tile_amax.assign((size_t)(tm * tn), 0.0f);
    float* ta = tile_amax.data();
#pragma omp parallel for schedule(dynamic, 1) if (m * n * k > 65536)
    for (int64_t t = 0; t < tm * tn; ++t) {
        const int64_t ic = t % tm, jc = t / tm;
        const int64_t i_end = std::min(m, (ic + 1) * MC), j_end = std::min(n, (jc + 1) * NC);
        float acc[MR * NR];
        float amax = 0.0f;
        for (int64_t j0 = jc * NC; j0 < j_end; j0 += NR) {
            for (int64_t i0 = ic * MC; i0 < i_end; i0 += MR) {
                micro_kernel(k, ap + (i0 / MR) * MR * k, bp + (j0 / NR) * NR * k, acc);
                for (int cj = 0; cj < NR && j0 + cj < n; ++cj) {
                    const int64_t j = j0 + cj;
                    for (int ri = 0; ri < MR && i0 + ri < m; ++ri) {
                        const int64_t i = i0 + ri;
                        float v = alpha * acc[cj * MR + ri];
                        if (beta != 0.0f) v += beta * load(c.type, c.base, i * c.rs + j * c.cs);
                        if (e.bias_add) v += load(e.bias_type, e.bias, i);
                        if (e.aux_out) store(e.aux_type, e.aux, i + j * e.aux_ld, v);
                        if (e.gelu) v = gelu(v);
                        if (e.dgelu) v *= dgelu(load(e.aux_type, e.aux, i + j * e.aux_ld));
                        if (e.amax) amax = fmaxf(amax, fabsf(v));
                        if (e.bgrad_rows) rs[jc * m + i] += v;
                        if (e.d_scaled) v *= e.d_scale;
                        store(d.type, const_cast<char*>(d.base), i * d.rs + j * d.cs, v);
                    }
                }
            }
        }
        if (e.amax) ta[t] = amax;
    }
    if (e.bgrad_rows) /* bias gradient of the result: sum over columns, in column-tile order */
        for (int64_t i = 0; i < m; ++i) {
            float s = 0.0f;
            for (int64_t jc = 0; jc < tn; ++jc) s += rs[jc * m + i];
            store(e.bias_type, e.bgrad, i, s);
        }
    float amax = 0.0f;
    if (e.amax)
        for (int64_t t = 0; t < tm * tn; ++t) amax = fmaxf(amax, ta[t]);
    return amax;
}

/* An FP8 matmul's shape and types against cuBLASLt's documented requirements (the CONTRACT above);
 * SUCCESS, or the status cuBLASLt answers (after one line on stderr). *bias_type gets the bias type. */
inline cublasStatus_t check_fp8(const Desc& op, const Layout& la, const Layout& lb, const Layout& lc,
                                const Layout& ld, int* bias_type) {
    const int ta = (int)la.type, tb = (int)lb.type, tc = (int)lc.type, td = (int)ld.type;
    if (!is_fp8(ta) || !is_fp8(tb))
        return refused("an FP8 matrix times a non-FP8 one (cuBLASLt's FP8 table pairs two FP8 inputs)");
    if (ta == CUDA_R_8F_E5M2 && tb == CUDA_R_8F_E5M2) return refused("E5M2 x E5M2 (not in cuBLASLt's FP8 table)");
    if (op.compute != CUBLAS_COMPUTE_32F) return refused("FP8 with a compute type other than CUBLAS_COMPUTE_32F");
    if (op.scale_type != CUDA_R_32F) return refused("FP8 with a scale type other than CUDA_R_32F");
    if (op.transa != CUBLAS_OP_T || op.transb != CUBLAS_OP_N)
        return refused("FP8 takes only the TN layout on sm_89/sm_90: TRANSA = CUBLAS_OP_T, TRANSB = CUBLAS_OP_N");
    const Layout* lays[4] = {&la, &lb, &lc, &ld};
    for (const Layout* l : lays)
        if (l->order != CUBLASLT_ORDER_COL) return refused("FP8 with a matrix order other than CUBLASLT_ORDER_COL");
    const bool mixed = ta != tb;
    const bool fp8_d = td == CUDA_R_8F_E4M3 || (mixed && td == CUDA_R_8F_E5M2); /* E5M2 D: mixed inputs only */
    const bool cd_ok = (tc == CUDA_R_16BF && (td == CUDA_R_16BF || fp8_d)) ||
                       (tc == CUDA_R_16F && (td == CUDA_R_16F || fp8_d)) || (tc == CUDA_R_32F && td == CUDA_R_32F);
    if (!cd_ok) return refused("this (C, D) type pair with FP8 inputs (not in cuBLASLt's FP8 table)");
    *bias_type = tc == CUDA_R_16F ? CUDA_R_16F : CUDA_R_16BF;
    if (op.bias_type >= 0 && op.bias_type != *bias_type)
        return refused("this BIAS_DATA_TYPE with FP8 (the table: fp16 with an fp16 C, else bf16)");
    switch (op.epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT: case CUBLASLT_EPILOGUE_BIAS: case CUBLASLT_EPILOGUE_GELU:
    case CUBLASLT_EPILOGUE_GELU_BIAS: break;
    case CUBLASLT_EPILOGUE_GELU_AUX: case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: case CUBLASLT_EPILOGUE_DGELU:
    case CUBLASLT_EPILOGUE_DGELU_BGRAD:
        if (is_fp8(td) || (op.aux_type >= 0 && op.aux_type != td))
            return unsupported("FP8 aux data (GELU_AUX / DGELU with an FP8 D or aux type)");
        break;
    default: return unsupported("this epilogue with FP8 inputs (BGRADA / BGRADB, RELU family)");
    }
    if (op.aux_scale || op.aux_amax) return unsupported("EPILOGUE_AUX_SCALE_POINTER / EPILOGUE_AUX_AMAX_POINTER");
    if (op.d_scale && !is_fp8(td)) return bad("D_SCALE_POINTER with a non-FP8 D (an unsupported combination)");
    /* Tensor Core Usage's 16-byte conditions, required for FP8: (op_A == N ? m : k) * size(A), lda * size(A),
     * likewise for B, m * size(C), ldc * size(C), and the same for D and every batch stride */
    const int64_t k = (int64_t)la.rows, m = (int64_t)ld.rows;
    const int64_t sc = (int64_t)type_bytes(tc), sd = (int64_t)type_bytes(td);
    if (k % 16 || la.ld % 16 || lb.ld % 16 || (m * sc) % 16 || (lc.ld * sc) % 16 || (m * sd) % 16 ||
        (ld.ld * sd) % 16 || la.batch_stride % 16 || lb.batch_stride % 16 || (lc.batch_stride * sc) % 16 ||
        (ld.batch_stride * sd) % 16)
        return refused("FP8 shapes: k, lda, ldb and the rows, leading dimensions and batch strides of C and D "
                           "(in bytes) must be multiples of 16");
    return CUBLAS_STATUS_SUCCESS;
}

} /* namespace lt */
} /* namespace llmgen_emu */

extern "C" {
inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = new cublasLtContext{0};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}
inline size_t cublasLtGetVersion(void) { return 130000; }
inline const char* cublasLtGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}
inline const char* cublasLtGetStatusString(cublasStatus_t s) { return cublasLtGetStatusName(s); }

inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                               cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulDescOpaque_t* o = new cublasLtMatmulDescOpaque_t();
    llmgen_emu::lt::Desc* d = new (o->data) llmgen_emu::lt::Desc();
    d->compute = computeType;
    d->scale_type = scaleType;
    d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->transa = d->transb = d->transc = CUBLAS_OP_N;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->aux_type = -1;
    d->bias_type = -1;
    *matmulDesc = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    delete matmulDesc;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                     cublasLtMatmulDescAttributes_t attr, const void* buf,
                                                     size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!matmulDesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    Desc* d = desc(matmulDesc);
    bool ok;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: ok = take(d->compute, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: ok = take(d->scale_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: ok = take(d->pointer_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = take(d->transa, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = take(d->transb, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSC: ok = take(d->transc, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_FILL_MODE: ok = take(d->fill_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: ok = take(d->epilogue, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = take(d->bias, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: ok = take(d->bias_batch_stride, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: ok = take(d->aux, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: ok = take(d->aux_ld, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: ok = take(d->aux_batch_stride, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: ok = take(d->aux_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: ok = take(d->bias_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: ok = take(d->fast_accum, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: ok = take(d->sm_count_target, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: ok = take(d->a_scale, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: ok = take(d->b_scale, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER: ok = take(d->c_scale, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: ok = take(d->d_scale, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER: ok = take(d->amax_d, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER: ok = take(d->aux_scale, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER: ok = take(d->aux_amax, buf, sizeInBytes); break;
    default: return unsupported("this cublasLtMatmulDescAttributes_t value");
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatmulDescSetAttribute: null buffer or wrong sizeInBytes");
}
inline cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                     cublasLtMatmulDescAttributes_t attr, void* buf,
                                                     size_t sizeInBytes, size_t* sizeWritten) {
    using namespace llmgen_emu::lt;
    if (!matmulDesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    const Desc* d = desc(matmulDesc);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return give(d->compute, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return give(d->scale_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return give(d->pointer_mode, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSA: return give(d->transa, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSB: return give(d->transb, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return give(d->epilogue, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return give(d->bias, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return give(d->aux, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return give(d->aux_ld, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: return give(d->aux_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return give(d->bias_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: return give(d->fast_accum, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER: return give(d->a_scale, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER: return give(d->b_scale, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_C_SCALE_POINTER: return give(d->c_scale, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER: return give(d->d_scale, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_AMAX_D_POINTER: return give(d->amax_d, buf, sizeInBytes, sizeWritten);
    default: return unsupported("this cublasLtMatmulDescAttributes_t value");
    }
}

inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                 uint64_t rows, uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatrixLayoutOpaque_t* o = new cublasLtMatrixLayoutOpaque_t();
    llmgen_emu::lt::Layout* l = new (o->data) llmgen_emu::lt::Layout();
    l->type = (uint32_t)type;
    l->order = CUBLASLT_ORDER_COL;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    l->batch = 1;
    l->batch_stride = 0;
    *matLayout = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    delete matLayout;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                       cublasLtMatrixLayoutAttribute_t attr, const void* buf,
                                                       size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!matLayout) return CUBLAS_STATUS_NOT_INITIALIZED;
    Layout* l = layout(matLayout);
    bool ok;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: ok = take(l->type, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_ORDER: ok = take(l->order, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_ROWS: ok = take(l->rows, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_COLS: ok = take(l->cols, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_LD: ok = take(l->ld, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: ok = take(l->batch, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: ok = take(l->batch_stride, buf, sizeInBytes); break;
    default: return unsupported("this cublasLtMatrixLayoutAttribute_t value");
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatrixLayoutSetAttribute: null buffer or wrong sizeInBytes");
}

inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulPreferenceOpaque_t* o = new cublasLtMatmulPreferenceOpaque_t();
    new (o->data) llmgen_emu::lt::Pref();
    *p = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                           cublasLtMatmulPreferenceAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!p) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool ok = true;
    uint32_t u32;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: ok = take(pref(p)->search_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = take(pref(p)->max_workspace, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK: ok = take(u32, buf, sizeInBytes); break; /* no effect */
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        ok = take(pref(p)->min_align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeInBytes);
        break;
    default: ok = buf != nullptr; break;                                                        /* no effect */
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatmulPreferenceSetAttribute: null buffer or wrong sizeInBytes");
}
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                                     cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                                     cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                                     cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                                     cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                     int* returnAlgoCount) {
    if (!lightHandle || !operationDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc || !preference)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount) return CUBLAS_STATUS_INVALID_VALUE;
    {
        using namespace llmgen_emu::lt;
        if (is_fp8((int)layout(Adesc)->type) || is_fp8((int)layout(Bdesc)->type)) { /* no FP8 algorithm for it */
            int bias_type;
            const cublasStatus_t st = check_fp8(*desc(operationDesc), *layout(Adesc), *layout(Bdesc), *layout(Cdesc),
                                                *layout(Ddesc), &bias_type);
            if (st != CUBLAS_STATUS_SUCCESS) {
                *returnAlgoCount = 0;
                return st;
            }
        }
    }
    const int count = std::min(requestedAlgoCount, llmgen_emu::lt::kCandidates);
    const uint32_t* align = llmgen_emu::lt::pref(preference)->min_align;
    for (int i = 0; i < count; ++i) {
        cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[i];
        memset(&r, 0, sizeof(r));
        r.algo.data[0] = llmgen_emu::lt::kAlgoTag + (uint64_t)i;
        for (int j = 0; j < 4; ++j) r.algo.data[1 + j] = align[j];
        r.workspaceSize = 0;
        r.state = CUBLAS_STATUS_SUCCESS;
        r.wavesCount = 1.0f;
    }
    *returnAlgoCount = count;
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */

namespace llmgen_emu {
namespace lt {
/* D = epilogue(alpha * op(A) op(B) + beta * C), column-major (or ROW order) layouts, strided batches: now */
inline cublasStatus_t matmul_now(const Desc& op, const void* alpha, const void* A, const Layout& la, const void* B,
                                 const Layout& lb, const void* beta, const void* C, const Layout& lc, void* D,
                                 const Layout& ld, const cublasLtMatmulAlgo_t* algo) {
    if (!alpha || !beta || !A || !B || !D) return bad("cublasLtMatmul: null alpha/beta/A/B/D");
    if (algo && algo->data[0] - kAlgoTag < (uint64_t)kCandidates) { /* the heuristic's: its alignments */
        const void* ptrs[4] = {A, B, C ? C : D, D};
        for (int j = 0; j < 4; ++j)
            if (algo->data[1 + j] && (uintptr_t)ptrs[j] % algo->data[1 + j]) {
                fprintf(stderr, "llmgen emulate: cublasLt: matrix %c at %p is less aligned than the %llu bytes "
                        "(PREF_MIN_ALIGNMENT_%c_BYTES) its algorithm was chosen for: CUBLAS_STATUS_NOT_SUPPORTED\n",
                        "ABCD"[j], ptrs[j], (unsigned long long)algo->data[1 + j], "ABCD"[j]);
                return CUBLAS_STATUS_NOT_SUPPORTED;
            }
    }

    /* what is emulated */
    switch (op.compute) {
    case CUBLAS_COMPUTE_32F: case CUBLAS_COMPUTE_32F_PEDANTIC: case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF: case CUBLAS_COMPUTE_32F_FAST_TF32: break;
    default: return unsupported("compute type other than CUBLAS_COMPUTE_32F*");
    }
    if (op.scale_type != CUDA_R_32F) return unsupported("scale type other than CUDA_R_32F");
    if (op.pointer_mode != CUBLASLT_POINTER_MODE_HOST && op.pointer_mode != CUBLASLT_POINTER_MODE_DEVICE)
        return unsupported("vector pointer modes");
    if ((op.transa != CUBLAS_OP_N && op.transa != CUBLAS_OP_T) || (op.transb != CUBLAS_OP_N && op.transb != CUBLAS_OP_T))
        return bad("TRANSA/TRANSB must be CUBLAS_OP_N or CUBLAS_OP_T");
    if (op.transc != CUBLAS_OP_N) return bad("TRANSC must be CUBLAS_OP_N");
    const bool fp8 = is_fp8((int)la.type) || is_fp8((int)lb.type);
    int fp8_bias_type = -1;
    if (fp8) {
        const cublasStatus_t st = check_fp8(op, la, lb, lc, ld, &fp8_bias_type);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
        const void* ptrs[4] = {A, B, C ? C : D, D};
        for (const void* q : ptrs)
            if ((uintptr_t)q % 16) return refused("FP8 with a matrix pointer not 16-byte aligned");
    } else if (op.a_scale || op.b_scale || op.c_scale || op.d_scale || op.amax_d) {
        return bad("scale / amax pointers without FP8 inputs (an unsupported combination)");
    }
    const Layout* lays[4] = {&la, &lb, &lc, &ld};
    for (const Layout* l : lays) {
        if (!type_bytes((int)l->type) || (!fp8 && is_fp8((int)l->type)))
            return unsupported("matrix type other than CUDA_R_32F / CUDA_R_16BF / CUDA_R_16F");
        if (l->order != CUBLASLT_ORDER_COL && l->order != CUBLASLT_ORDER_ROW) return unsupported("matrix order other than COL/ROW");
        const int64_t need = l->order == CUBLASLT_ORDER_COL ? (int64_t)l->rows : (int64_t)l->cols;
        if (l->ld < std::max<int64_t>(1, need)) return bad("leading dimension smaller than the matrix");
    }

    /* shapes: op(A) m x k, op(B) k x n, C and D m x n */
    const int64_t m = (int64_t)ld.rows, n = (int64_t)ld.cols;
    const int64_t am = op.transa == CUBLAS_OP_N ? (int64_t)la.rows : (int64_t)la.cols;
    const int64_t k = op.transa == CUBLAS_OP_N ? (int64_t)la.cols : (int64_t)la.rows;
    const int64_t bk = op.transb == CUBLAS_OP_N ? (int64_t)lb.rows : (int64_t)lb.cols;
    const int64_t bn = op.transb == CUBLAS_OP_N ? (int64_t)lb.cols : (int64_t)lb.rows;
    if (am != m || bn != n || bk != k) return bad("cublasLtMatmul: op(A), op(B), D shapes do not agree");
    if ((int64_t)lc.rows != m || (int64_t)lc.cols != n) return bad("cublasLtMatmul: C and D shapes differ");
    if (lc.type != ld.type && !fp8) return unsupported("C and D of different types");

    /* epilogue */
    const uint32_t ep = op.epilogue;
    Epi e;
    memset(&e, 0, sizeof(e));
    switch (ep) {
    case CUBLASLT_EPILOGUE_DEFAULT: break;
    case CUBLASLT_EPILOGUE_BIAS: e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_GELU: e.gelu = true; break;
    case CUBLASLT_EPILOGUE_GELU_BIAS: e.gelu = e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_GELU_AUX: e.gelu = e.aux_out = true; break;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: e.gelu = e.aux_out = e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_DGELU: e.dgelu = true; break;
    case CUBLASLT_EPILOGUE_DGELU_BGRAD: e.dgelu = e.bgrad_rows = true; break;
    case CUBLASLT_EPILOGUE_BGRADA: e.bgrad_a = true; break;
    case CUBLASLT_EPILOGUE_BGRADB: e.bgrad_b = true; break;
    default: return unsupported("this epilogue (RELU family)");
    }
    e.bias_type = fp8 ? fp8_bias_type : op.bias_type >= 0 ? op.bias_type : (int)ld.type;
    e.aux_type = op.aux_type >= 0 ? op.aux_type : (int)ld.type;
    if (!type_bytes(e.bias_type) || !type_bytes(e.aux_type)) return unsupported("bias/aux data type");
    if ((e.bias_add || e.bgrad_rows || e.bgrad_a || e.bgrad_b) && !op.bias)
        return bad("the epilogue needs CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    if (e.aux_out || e.dgelu) {
        if (!op.aux) return bad("the epilogue needs CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");
        if (op.aux_ld < m || op.aux_ld % 8 != 0)
            return bad("EPILOGUE_AUX_LD must be >= rows of D and a multiple of 8");
    }
    e.aux_ld = op.aux_ld;

    float al, be;
    memcpy(&al, alpha, 4);
    memcpy(&be, beta, 4);
    if (fp8) { /* the scales: floats in device memory (host memory here), 1 when unset */
        auto scale = [](const void* p) { float f = 1.0f; if (p) memcpy(&f, p, 4); return f; };
        al = al * scale(op.a_scale) * scale(op.b_scale);
        be = be * scale(op.c_scale);
        e.amax = op.amax_d != nullptr;
        e.d_scaled = op.d_scale != nullptr;
        e.d_scale = scale(op.d_scale);
    }
    const bool tf32 = op.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const int batches = std::max(1, ld.batch);
    auto view = [](const Layout& l, const void* base, bool trans, int64_t b) {
        View v;
        const int64_t rs = l.order == CUBLASLT_ORDER_COL ? 1 : l.ld;
        const int64_t cs = l.order == CUBLASLT_ORDER_COL ? l.ld : 1;
        v.base = (const char*)base + (size_t)(b * l.batch_stride) * type_bytes((int)l.type);
        v.type = (int)l.type;
        v.rs = trans ? cs : rs;
        v.cs = trans ? rs : cs;
        return v;
    };
    float amax = 0.0f;
    for (int b = 0; b < batches; ++b) {
        const int64_t ba = la.batch > 1 ? b : 0, bb = lb.batch > 1 ? b : 0, bc = lc.batch > 1 ? b : 0;
        Epi eb = e;
        eb.bias = (const char*)op.bias + (size_t)(b * op.bias_batch_stride) * type_bytes(e.bias_type);
        eb.bgrad = (char*)op.bias + (size_t)(b * op.bias_batch_stride) * type_bytes(e.bias_type);
        eb.aux = (char*)op.aux + (size_t)(b * op.aux_batch_stride) * type_bytes(e.aux_type);
        const View va = view(la, A, op.transa == CUBLAS_OP_T, ba);
        const View vb = view(lb, B, op.transb == CUBLAS_OP_T, bb);
        const View vc = view(lc, C ? C : D, false, bc);
        const View vd = view(ld, D, false, b);
        amax = fmaxf(amax, gemm(m, n, k, va, vb, al, C ? be : 0.0f, vc, vd, eb, tf32));
    }
    if (e.amax) memcpy(op.amax_d, &amax, 4);
    return CUBLAS_STATUS_SUCCESS;
}
/* what a captured cublasLtMatmul keeps until cudaGraphLaunch */
struct Recorded {
    Desc op;
    Layout la, lb, lc, ld;
    cublasLtMatmulAlgo_t algo;
    bool has_algo;
    float alpha, beta;               /* host pointer mode: the values at capture */
    const void *alpha_p, *beta_p;    /* device pointer mode: the pointers */
    const void *A, *B, *C;
    void* D;
};
} /* namespace lt */
} /* namespace llmgen_emu */

extern "C" {
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                     const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc, const void* B,
                                     cublasLtMatrixLayout_t Bdesc, const void* beta, const void* C,
                                     cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                                     const cublasLtMatmulAlgo_t* algo, void* workspace,
                                     size_t workspaceSizeInBytes, cudaStream_t stream) {
    using namespace llmgen_emu::lt;
    (void)workspace;
    (void)workspaceSizeInBytes;
    if (!lightHandle || !computeDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!llmgen_emu::kept(stream))
        return matmul_now(*desc(computeDesc), alpha, A, *layout(Adesc), B, *layout(Bdesc), beta, C, *layout(Cdesc),
                          D, *layout(Ddesc), algo);
    if (!alpha || !beta || !A || !B || !D) return bad("cublasLtMatmul: null alpha/beta/A/B/D");
    auto r = std::make_shared<Recorded>();
    r->op = *desc(computeDesc);
    r->la = *layout(Adesc), r->lb = *layout(Bdesc), r->lc = *layout(Cdesc), r->ld = *layout(Ddesc);
    r->has_algo = algo != nullptr;
    if (algo) r->algo = *algo;
    const bool host = r->op.pointer_mode == CUBLASLT_POINTER_MODE_HOST;
    if (host) memcpy(&r->alpha, alpha, 4), memcpy(&r->beta, beta, 4);
    r->alpha_p = host ? &r->alpha : alpha;
    r->beta_p = host ? &r->beta : beta;
    r->A = A, r->B = B, r->C = C, r->D = D;
    llmgen_emu::on_stream(stream, [r]() {
        const Recorded& q = *r;
        if (matmul_now(q.op, q.alpha_p, q.A, q.la, q.B, q.lb, q.beta_p, q.C, q.lc, q.D, q.ld,
                       q.has_algo ? &q.algo : nullptr) != CUBLAS_STATUS_SUCCESS)
            llmgen_emu::fatal("a cublasLtMatmul recorded by a stream capture (or queued) failed when run");
    });
    return CUBLAS_STATUS_SUCCESS;
}
} /* extern "C" */

#endif /* LLMGEN_EMU_NO_CUBLASLT */

#endif /* LLMGEN_EMU_CUBLASLT_H */
