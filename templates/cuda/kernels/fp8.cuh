/* fp8.cuh -- the FP8 helper kernels of per-tensor-scaled FP8 training (E4M3 forward, E5M2 gradients):
 * saturating casts from bf16, also writing the transposed copy that sm_89/sm_90's TN-only FP8 GEMM needs;
 * the absolute maximum (amax) of a tensor as deterministic per-block partial maxima; and the scale update
 * of the two recipes, current amax and delayed (amax history), with the inverse scale cuBLASLt takes.
 *
 * CONTRACT
 *   Include it after ptx.cuh (which comes after emulate.h, or after the CUDA headers under nvcc); it holds
 *   no Jinja syntax and includes only <stdio.h>, <float.h> and <cuda_fp8.h>, so the generator may paste it
 *   into train.cu. Everything lives in namespace llmgen_fp8. The same source builds with nvcc (sm_89 or
 *   newer: cvt.rn.satfinite.{e4m3,e5m2}x2.f32) and, unchanged, with g++ -DLLMGEN_EMULATE on the CPU, where
 *   the conversions are cuda_fp8.h's host code (bit-identical: both round to nearest even and saturate).
 *
 *   Numbers. A tensor x (bf16) with per-tensor scale s is stored as q = sat(x * s): x widened to fp32
 *   (exact), one fp32 multiply, rounded to nearest even into the format and saturated to its finite
 *   maximum (E4M3 448, E5M2 57344; NaN stays NaN, +-Inf becomes +-max). It stands for q * s_inv with
 *   s_inv = 1 / s (fp32, correctly rounded), which is what cuBLASLt's CUBLASLT_MATMUL_DESC_A/B_SCALE_POINTER
 *   take. amax = max |x| (fmaxf: NaN is ignored, Inf counts).
 *   Scale from an amax a (margin m >= 0, the power of two kept below the format's maximum, as Transformer
 *   Engine's recipes): s = (MAX / a) * 2^-m, the division in fp32 correctly rounded, the power of two exact;
 *   s = FLT_MAX if that overflows (a tiny a); with pow2, s is then rounded down to a power of two (x * s and
 *   s_inv exact). When a is 0, NaN or Inf there is no scale to take: the current recipe uses 1, the delayed
 *   one keeps the previous scale (Transformer Engine's rule).
 *   Recipes (Recipe::delayed):
 *     current  s comes from this tensor's own amax, so the amax must be known before the cast: the kernel
 *              that produces x writes amax partials (block_amax_partial), scale_update turns them into s,
 *              then the cast reads s. One extra tiny launch, no extra pass over x.
 *     delayed  the cast uses the scale of the previous update and writes x's amax partials as it goes;
 *              scale_update then records that amax in the history (H slots, the last H amaxes) and sets the
 *              scale for the next step from max(history) (or the newest amax with most_recent). The window
 *              is Transformer Engine's amax history (rotated by one each update, the freed slot zeroed) kept
 *              as a ring buffer: slot step % H takes the new amax, nothing moves.
 *
 *   Layouts. cuBLASLt's FP8 GEMM on sm_89/sm_90 takes only TN (TRANSA = T, TRANSB = N, column-major): the
 *   reduction dimension must be contiguous in both inputs. For a linear y = x W^T (x (N, K), W (M, K)
 *   row-major, bf16 y (N, M)): forward A = W, B = x (both as stored); dX = dY W needs A = W^T (K, M) and
 *   B = dY; dW = dY^T x needs A = x^T (K, N) and B = dY^T (M, N). So W, x and dY are each cast twice:
 *   row-major and transposed, which cast_transpose does in one pass.
 *
 *   Host API (each checks its arguments, prints one line naming the bad one and returns
 *   cudaErrorInvalidValue, else returns the launch's error; stream-ordered, no synchronisation):
 *     amax(partials, x, n, stream)
 *         partials[0 .. amax_partials(n)) = per-block max |x| over bf16 x[0 .. n).
 *     cast<F>(out, partials, x, scale, n, stream)
 *         out[i] = sat(x[i] * *scale) for i < n (fp8 bytes); partials (nullable) as amax() writes them.
 *     cast_transpose<F>(out, out_t, partials, x, scale, rows, cols, stream)
 *         x (rows, cols) row-major; out (nullable) the same layout, out_t (cols, rows) row-major = the
 *         transpose; partials (nullable): cast_transpose_partials(rows, cols) of them.
 *     scale_update<F>(meta, history, H, partials, n_partials, recipe, stream)
 *         one block: a = max(partials[0 .. n_partials)); current: meta = {s(a, fallback 1), 1/s, a};
 *         delayed: history[meta.step % H] = a, step += 1, meta = {s(max of history), 1/s, a} (fallback:
 *         the previous scale); with most_recent the scale comes from a alone.
 *     meta_init(meta, count, history, history_floats, stream)
 *         meta[0 .. count) = {1, 1, 0, step 0}; history[0 .. history_floats) = 0 (nullable).
 *   Requirements: n, rows, cols multiples of 16 (sm_90's FP8 GEMM needs its k and its leading dimensions
 *   so anyway); x, out, out_t 16-byte aligned; 1 <= n_partials; delayed needs 1 <= H; margin >= 0.
 *   F is Format::E4M3 or Format::E5M2. amax_partials(n) = min(ceil(n / 4096), 1024);
 *   cast_transpose_partials(rows, cols) = ceil(rows / 64) * ceil(cols / 256).
 *   Device helpers for kernels that produce a tensor (fusing its amax, or writing FP8 directly):
 *     quantize<F>(v, s), quantize4<F>(a, b, c, d, s) (4 codes in a word, a in the low byte),
 *     block_amax_partial<BLOCK>(thread_amax, partials)  every thread of the block calls it; thread 0
 *         writes the block's max to partials[blockIdx.y * gridDim.x + blockIdx.x]. Deterministic (a max
 *         is the same in every order; the partials and their reduction have fixed shapes).
 *     scale_from_amax(a, MAX, margin, pow2, fallback)
 *
 * THE KERNELS
 *   amax_kernel, cast_kernel<F, AMAX>   grid-stride over 16-element chunks: two 16-byte bf16 loads, one
 *       16-byte store of 16 FP8 codes (cvt ...x2 per pair), 256 threads, at most 1024 blocks.
 *   cast_transpose_kernel<F, AMAX>      one block (256 threads) per 64 x 256 tile. Phase 1: each thread
 *       converts 16 consecutive elements of a row per step (4 steps), stores them row-major to out (16 B)
 *       and to a 16 KiB shared tile (16 B). Phase 2: each thread reads a 16-row x 4-column block of the
 *       tile as 16 words, transposes it with 4 x 8 byte permutes (prmt) and writes 4 rows of out_t, 16 B
 *       each. The tile's 16-byte chunks are XOR-swizzled by 2 x (row / 16 % 4) (words by 8 x that), so
 *       both phases are free of bank conflicts (the emulation counts them: tests/test_fp8.py).
 *   scale_update_kernel<F>               one block of 256 threads (the partials and the history read in
 *       parallel, reduced in a fixed shape).
 *   meta_init_kernel                      one thread per meta / history float.
 *
 * USE IN A TRAINER (one block linear y = x W^T + b; x (N, K), W (M, K), y and dY (N, M); tests/fp8_linear.cu
 * runs exactly this through cuBLASLt, and tests/fp8_oracle.py is the recipe's oracle)
 *   Buffers: x8, x8t (N K bytes each) from one cast_transpose<E4M3> of x (an input shared by several linears,
 *   Llama's q/k/v or gate/up, is cast once); x8 lives until the forward GEMM, x8t until the dW GEMM.
 *   W8, W8t (M K each), cast once per optimizer step after the update (AdamW writes the bf16 weights: give it
 *   block_amax_partial for the current recipe). dY8, dY8t (N M each), backward scratch. One Fp8Meta per cast
 *   tensor (+ H floats of history each with the delayed recipe); amax partials are scratch (<= 1024 floats,
 *   or cast_transpose_partials()).
 *   Forward, current recipe: the producer of x (layernorm, attention, GELU / SwiGLU) writes x in bf16 and its
 *   amax partials -> scale_update<E4M3>(meta_x) -> cast_transpose<E4M3>(x8, x8t, -, x, &meta_x.scale) ->
 *   cublasLtMatmul TN: A = W8 (lda K), B = x8 (ldb K), m = M, n = N, k = K, A/B_SCALE_POINTER =
 *   &meta_W.scale_inv / &meta_x.scale_inv, bf16 D, BIAS (bf16) or GELU_AUX_BIAS epilogue. llmgen's trainer:
 *   the LayerNorm / RMSNorm forward before a linear writes the partials (norms.cuh's NormAmax, one per block,
 *   their count on the host), and so does the norm backward whose dx is the dY of the projection before it;
 *   every other x and dY and every weight gets amax() first (an extra read; `llmgen inspect --dtype fp8`
 *   lists which; the SwiGLU before Llama's down projection writes them too). The weights' pass runs once per
 *   optimizer step, after the update. The GEMM's AMAX_D_POINTER is not used for a bf16 D: it is the amax
 *   before the rounding to bf16, not that of the bf16 tensor the cast reads (and cuBLASLt documents it with
 *   FP8 outputs).
 *   Backward: the producer of dY writes its partials -> scale_update<E5M2>(meta_dy) -> cast_transpose<E5M2>
 *   (dY8, dY8t) -> dX: A = W8t (lda M), B = dY8 (ldb M), m = K, n = N, k = M (E4M3 x E5M2, bf16 D; DGELU
 *   epilogue allowed) -> dW: A = x8t (lda N), B = dY8t (ldb N), m = K, n = M, k = N, fp32 D with beta = 1
 *   (the fp32 gradient). The bias gradient comes from the bf16 dY (a column sum): cuBLASLt's BGRAD epilogues
 *   are not FP8 (the emulation refuses them).
 *   Delayed recipe: the cast takes last step's scale and writes partials; scale_update follows it.
 *   Several ranks: reduce each tensor's amax (max over ranks) before scale_update so all ranks share scales.
 *   GEMMs the FP8 path cannot take (k, m, ldc not multiples of 16 bytes, see emulate/emu_cublaslt.h) stay bf16:
 *   cuBLASLt (and the emulation) answer CUBLAS_STATUS_NOT_SUPPORTED, but the compiler should decide it.
 */
#ifndef LLMGEN_FP8_CUH
#define LLMGEN_FP8_CUH

#ifndef LLMGEN_PTX_CUH
#error "fp8.cuh: include ptx.cuh first"
#endif

#include <float.h>
#include <stdio.h>
#include <cuda_fp8.h>

#if LLMGEN_EMULATED
#define LLMGEN_FP8_UNROLL
#else
#define LLMGEN_FP8_UNROLL _Pragma("unroll")
#endif

namespace llmgen_fp8 {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_storage_t; /* one code, an unsigned char */

enum class Format : int { E4M3 = 0, E5M2 = 1 };

template <Format F>
struct Fmt;
template <>
struct Fmt<Format::E4M3> {
    static constexpr float MAX = 448.0f;
    static constexpr __nv_fp8_interpretation_t KIND = __NV_E4M3;
};
template <>
struct Fmt<Format::E5M2> {
    static constexpr float MAX = 57344.0f;
    static constexpr __nv_fp8_interpretation_t KIND = __NV_E5M2;
};

/* One FP8 tensor's scaling state, in device memory (16 bytes). */
struct Fp8Meta {
    float scale;     /* q = sat(x * scale) */
    float scale_inv; /* 1 / scale: the dequantisation factor (cuBLASLt A/B_SCALE_POINTER) */
    float amax;      /* the amax of the tensor at the last update */
    int step;        /* delayed: updates so far (the history slot is step % H) */
};

struct Recipe {
    int margin;      /* scale = MAX / amax / 2^margin */
    int delayed;     /* 0: current amax; 1: delayed, from the amax history */
    int most_recent; /* delayed: 1 = the newest amax only, 0 = the max over the history */
    int pow2;        /* round the scale down to a power of two */
};

constexpr int BLOCK = 256;          /* threads of every kernel here */
constexpr int CHUNK = 16;           /* elements per thread and step of the flat kernels */
constexpr int MAX_FLAT_BLOCKS = 1024;
constexpr int TILE_R = 64, TILE_C = 256; /* cast_transpose's tile */

inline int cdiv_l(long a, long b) { return (int)((a + b - 1) / b); }
inline int amax_partials(long n) {
    const int blocks = n <= 0 ? 0 : cdiv_l(n, (long)BLOCK * CHUNK);
    return blocks < MAX_FLAT_BLOCKS ? blocks : MAX_FLAT_BLOCKS;
}
inline int cast_transpose_partials(int rows, int cols) { return cdiv_l(rows, TILE_R) * cdiv_l(cols, TILE_C); }

/* ---- device helpers --------------------------------------------------------------------------------- */
template <Format F>
__device__ __forceinline__ fp8 quantize(float v, float s) {
    return __nv_cvt_float_to_fp8(__fmul_rn(v, s), __NV_SATFINITE, Fmt<F>::KIND);
}
/* four codes in one word, a in the low byte (memory order) */
template <Format F>
__device__ __forceinline__ uint32_t quantize4(float a, float b, float c, float d, float s) {
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(a, s), __fmul_rn(b, s)), __NV_SATFINITE,
                                                 Fmt<F>::KIND);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(c, s), __fmul_rn(d, s)), __NV_SATFINITE,
                                                 Fmt<F>::KIND);
    return lo | (hi << 16);
}

/* 16 bf16 (two 16-byte loads) widened to fp32 (exact) */
__device__ __forceinline__ void load16(float (&f)[16], const bf16* p) {
    const uint4 a = *reinterpret_cast<const uint4*>(p), b = *reinterpret_cast<const uint4*>(p + 8);
    const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    LLMGEN_FP8_UNROLL
    for (int i = 0; i < 8; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

template <Format F>
__device__ __forceinline__ uint4 quantize16(const float (&f)[16], float s) {
    return make_uint4(quantize4<F>(f[0], f[1], f[2], f[3], s), quantize4<F>(f[4], f[5], f[6], f[7], s),
                      quantize4<F>(f[8], f[9], f[10], f[11], s), quantize4<F>(f[12], f[13], f[14], f[15], s));
}

/* The block's max of v, returned to every thread; every thread of the block must call it. */
template <int NT>
__device__ __forceinline__ float block_max(float v) {
    static_assert(NT % 32 == 0 && NT <= 1024, "block_max: whole warps");
    __shared__ float warp_max[NT / 32];
    LLMGEN_FP8_UNROLL
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = warp_max[0];
    LLMGEN_FP8_UNROLL
    for (int w = 1; w < NT / 32; ++w) r = fmaxf(r, warp_max[w]);
    __syncthreads(); /* warp_max may be reused */
    return r;
}

/* partials[flat block index] = the block's max of thread_amax; every thread of the block calls it */
template <int NT>
__device__ __forceinline__ void block_amax_partial(float thread_amax, float* partials) {
    const float m = block_max<NT>(thread_amax);
    if (threadIdx.x == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = m;
}

__device__ __forceinline__ float scale_from_amax(float amax, float fmax, int margin, int pow2, float fallback) {
    if (!(amax > 0.0f) || !(amax <= FLT_MAX)) return fallback; /* 0, NaN, Inf: no scale to take */
    float s = ldexpf(__fdiv_rn(fmax, amax), -margin);
    if (!(s <= FLT_MAX)) s = FLT_MAX;
    if (pow2) s = ldexpf(1.0f, ilogbf(s));
    return s;
}

/* 4 x 4 bytes: in[i] holds row i (column 0 in the low byte); out[j] gets column j (row 0 low) */
__device__ __forceinline__ void transpose4x4(uint32_t& o0, uint32_t& o1, uint32_t& o2, uint32_t& o3, uint32_t a0,
                                             uint32_t a1, uint32_t a2, uint32_t a3) {
    const uint32_t t0 = __byte_perm(a0, a1, 0x5140), t1 = __byte_perm(a0, a1, 0x7362);
    const uint32_t t2 = __byte_perm(a2, a3, 0x5140), t3 = __byte_perm(a2, a3, 0x7362);
    o0 = __byte_perm(t0, t2, 0x5410);
    o1 = __byte_perm(t0, t2, 0x7632);
    o2 = __byte_perm(t1, t3, 0x5410);
    o3 = __byte_perm(t1, t3, 0x7632);
}

/* ---- kernels ---------------------------------------------------------------------------------------- */
/* partials[block] = max |x| over the block's chunks (x: n bf16, n % 16 == 0) */
__global__ void __launch_bounds__(BLOCK) amax_kernel(float* partials, const bf16* x, long n) {
    float m = 0.0f;
    for (long i = ((long)blockIdx.x * BLOCK + threadIdx.x) * CHUNK; i < n; i += (long)gridDim.x * BLOCK * CHUNK) {
        float f[16];
        load16(f, x + i);
        LLMGEN_FP8_UNROLL
        for (int j = 0; j < 16; ++j) m = fmaxf(m, fabsf(f[j]));
    }
    block_amax_partial<BLOCK>(m, partials);
}

/* out[i] = sat(x[i] * *scale); with AMAX also partials[block] = max |x| */
template <Format F, bool AMAX>
__global__ void __launch_bounds__(BLOCK) cast_kernel(fp8* out, float* partials, const bf16* x, const float* scale,
                                                     long n) {
    const float s = *scale;
    float m = 0.0f;
    for (long i = ((long)blockIdx.x * BLOCK + threadIdx.x) * CHUNK; i < n; i += (long)gridDim.x * BLOCK * CHUNK) {
        float f[16];
        load16(f, x + i);
        if (AMAX) {
            LLMGEN_FP8_UNROLL
            for (int j = 0; j < 16; ++j) m = fmaxf(m, fabsf(f[j]));
        }
        *reinterpret_cast<uint4*>(out + i) = quantize16<F>(f, s);
    }
    if (AMAX) block_amax_partial<BLOCK>(m, partials);
}

/* One 64 x 256 tile of x (rows, cols): out (nullable) and out_t = the transpose, both FP8; AMAX: partials */
template <Format F, bool AMAX>
__global__ void __launch_bounds__(BLOCK) cast_transpose_kernel(fp8* out, fp8* out_t, float* partials, const bf16* x,
                                                               const float* scale, int rows, int cols) {
    /* 64 rows of 256 codes (64 words); 16-byte chunk c of row r at chunk c ^ 2 (r / 16 % 4) */
    __shared__ __align__(16) uint32_t tile[TILE_R][TILE_C / 4];
    const int tid = threadIdx.x;
    const int r0 = blockIdx.y * TILE_R, c0 = blockIdx.x * TILE_C;
    const float s = *scale;
    float m = 0.0f;

    /* phase 1: 4 steps of 16 rows; thread: row 16 step + tid / 16, columns 16 (tid % 16) + 0..15 */
    const int chunk = tid & 15;
    LLMGEN_FP8_UNROLL
    for (int step = 0; step < TILE_R / 16; ++step) {
        const int r = 16 * step + (tid >> 4);
        const int gr = r0 + r, gc = c0 + 16 * chunk;
        uint4 q = make_uint4(0u, 0u, 0u, 0u);
        if (gr < rows && gc < cols) {
            float f[16];
            load16(f, x + (size_t)gr * cols + gc);
            if (AMAX) {
                LLMGEN_FP8_UNROLL
                for (int j = 0; j < 16; ++j) m = fmaxf(m, fabsf(f[j]));
            }
            q = quantize16<F>(f, s);
            if (out) *reinterpret_cast<uint4*>(out + (size_t)gr * cols + gc) = q;
        }
        ptx_st_shared(reinterpret_cast<uint4*>(&tile[r][(4 * chunk) ^ (8 * ((r >> 4) & 3))]), q);
    }
    __syncthreads();

    /* phase 2: thread: rows 16 g .. 16 g + 15 (g = tid % 4) of tile word column wc = tid / 4 (columns 4 wc ..) */
    const int g = tid & 3, wc = tid >> 2;
    uint32_t w[16];
    LLMGEN_FP8_UNROLL
    for (int i = 0; i < 16; ++i) w[i] = ptx_ld_shared(&tile[16 * g + i][wc ^ (8 * g)]);
    const int gr = r0 + 16 * g, gc = c0 + 4 * wc;
    if (gr < rows && gc < cols) {
        uint32_t o[4][4]; /* o[j][b]: column gc + j, rows gr + 4b .. 4b + 3 */
        LLMGEN_FP8_UNROLL
        for (int b = 0; b < 4; ++b)
            transpose4x4(o[0][b], o[1][b], o[2][b], o[3][b], w[4 * b], w[4 * b + 1], w[4 * b + 2], w[4 * b + 3]);
        LLMGEN_FP8_UNROLL
        for (int j = 0; j < 4; ++j)
            *reinterpret_cast<uint4*>(out_t + (size_t)(gc + j) * rows + gr) =
                make_uint4(o[j][0], o[j][1], o[j][2], o[j][3]);
    }
    if (AMAX) block_amax_partial<BLOCK>(m, partials);
}

/* One block: the amax from the partials, then the recipe's scale (see the CONTRACT) */
template <Format F>
__global__ void __launch_bounds__(BLOCK) scale_update_kernel(Fp8Meta* meta, float* history, int H,
                                                             const float* partials, int n_partials, Recipe rc) {
    float m = 0.0f;
    for (int i = threadIdx.x; i < n_partials; i += BLOCK) m = fmaxf(m, partials[i]);
    const float amax = block_max<BLOCK>(m);
    const float prev = meta->scale;
    float s;
    if (!rc.delayed) {
        s = scale_from_amax(amax, Fmt<F>::MAX, rc.margin, rc.pow2, 1.0f);
    } else {
        const int step = meta->step;
        const int slot = step % H;
        float h = 0.0f; /* the window after recording this amax: the other slots and this one */
        for (int i = threadIdx.x; i < H; i += BLOCK)
            if (i != slot) h = fmaxf(h, history[i]);
        h = block_max<BLOCK>(h);
        h = fmaxf(h, amax);
        s = scale_from_amax(rc.most_recent ? amax : h, Fmt<F>::MAX, rc.margin, rc.pow2, prev);
        if (threadIdx.x == 0) {
            history[slot] = amax;
            meta->step = step + 1;
        }
    }
    if (threadIdx.x == 0) {
        meta->scale = s;
        meta->scale_inv = __frcp_rn(s);
        meta->amax = amax;
    }
}

__global__ void meta_init_kernel(Fp8Meta* meta, int count, float* history, long history_floats) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        meta[i].scale = 1.0f;
        meta[i].scale_inv = 1.0f;
        meta[i].amax = 0.0f;
        meta[i].step = 0;
    }
    if (history && i < history_floats) history[i] = 0.0f;
}

/* ---- host launchers --------------------------------------------------------------------------------- */
inline bool aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

inline cudaError_t refuse(const char* what) {
    fprintf(stderr, "%s\n", what);
    return cudaErrorInvalidValue;
}

inline cudaError_t amax(float* partials, const bf16* x, long n, cudaStream_t stream) {
    if (n < 16 || n % 16) return refuse("fp8 amax: n must be a positive multiple of 16");
    if (!partials || !aligned16(x)) return refuse("fp8 amax: x must be 16-byte aligned and partials non-null");
    LLMGEN_LAUNCH(amax_kernel, amax_partials(n), BLOCK, 0, stream, partials, x, n);
    return cudaGetLastError();
}

template <Format F>
cudaError_t cast(fp8* out, float* partials, const bf16* x, const float* scale, long n, cudaStream_t stream) {
    if (n < 16 || n % 16) return refuse("fp8 cast: n must be a positive multiple of 16");
    if (!aligned16(x) || !aligned16(out) || !out || !scale)
        return refuse("fp8 cast: x and out must be 16-byte aligned, out and scale non-null");
    if (partials)
        LLMGEN_LAUNCH((cast_kernel<F, true>), amax_partials(n), BLOCK, 0, stream, out, partials, x, scale, n);
    else
        LLMGEN_LAUNCH((cast_kernel<F, false>), amax_partials(n), BLOCK, 0, stream, out, partials, x, scale, n);
    return cudaGetLastError();
}

template <Format F>
cudaError_t cast_transpose(fp8* out, fp8* out_t, float* partials, const bf16* x, const float* scale, int rows, int cols,
                           cudaStream_t stream) {
    if (rows < 16 || cols < 16 || rows % 16 || cols % 16)
        return refuse("fp8 cast_transpose: rows and cols must be positive multiples of 16");
    if (!aligned16(x) || !aligned16(out) || !aligned16(out_t) || !out_t || !scale)
        return refuse("fp8 cast_transpose: x, out and out_t must be 16-byte aligned, out_t and scale non-null");
    const dim3 grid(cdiv_l(cols, TILE_C), cdiv_l(rows, TILE_R));
    if (partials)
        LLMGEN_LAUNCH((cast_transpose_kernel<F, true>), grid, BLOCK, 0, stream, out, out_t, partials, x, scale, rows,
                      cols);
    else
        LLMGEN_LAUNCH((cast_transpose_kernel<F, false>), grid, BLOCK, 0, stream, out, out_t, partials, x, scale, rows,
                      cols);
    return cudaGetLastError();
}

template <Format F>
cudaError_t scale_update(Fp8Meta* meta, float* history, int H, const float* partials, int n_partials, Recipe rc,
                         cudaStream_t stream) {
    if (!meta || !partials || n_partials < 1) return refuse("fp8 scale_update: needs meta and at least one partial");
    if (rc.margin < 0) return refuse("fp8 scale_update: margin must be >= 0");
    if (rc.delayed && (H < 1 || !history)) return refuse("fp8 scale_update: delayed scaling needs a history of H >= 1");
    LLMGEN_LAUNCH((scale_update_kernel<F>), 1, BLOCK, 0, stream, meta, history, H, partials, n_partials, rc);
    return cudaGetLastError();
}

inline cudaError_t meta_init(Fp8Meta* meta, int count, float* history, long history_floats, cudaStream_t stream) {
    if (!meta || count < 1 || history_floats < 0) return refuse("fp8 meta_init: needs meta and count >= 1");
    const long n = count > history_floats ? count : history_floats;
    LLMGEN_LAUNCH(meta_init_kernel, cdiv_l(n, BLOCK), BLOCK, 0, stream, meta, count, history, history_floats);
    return cudaGetLastError();
}

} /* namespace llmgen_fp8 */

#endif /* LLMGEN_FP8_CUH */
