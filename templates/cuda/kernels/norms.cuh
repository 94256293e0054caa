/* norms.cuh -- LayerNorm (GPT-2) and RMSNorm (Llama) over the last axis C of N rows, forward and
 * backward, at memory bandwidth.
 *
 * CONTRACT
 *   Templates over the storage type T (float or __nv_bfloat16) and the row length C (any C >= 1;
 *   rows are read as C / VEC vectors, VEC = vec_width<T>(C): 16 bytes when C is a multiple of 8
 *   (bf16) or 4 (fp32), narrower otherwise). All arithmetic is fp32; mean and rstd are fp32.
 *
 *   Forward      out = (x - mean) * rstd * w + b           LayerNorm
 *                out = w * (x * rstd)                      RMSNorm
 *                rstd = 1 / sqrtf(var + eps) (var = mean of squares for RMSNorm), mean/rstd per row
 *   Residual     resid = T(a + b) first (rounded to T: the residual stream as stored), then the norm
 *   variants     of the rounded values, so a recompute from resid gives the same bits. resid may
 *                be a (in place).
 *   Backward     ONE kernel: dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) [+ dres]
 *                (RMSNorm: without the mean(dy*w) term), written as T (dx may be dres: in place);
 *                dw (+)= sum_rows dy*xhat, db (+)= sum_rows dy (LayerNorm), and optionally
 *                dbias_prev (+)= sum_rows dx (dx as stored in T): the bias gradient of the projection
 *                whose output entered the residual stream x, which receives exactly dx.
 *                The column sums are deterministic: each row group keeps its own fp32 column
 *                accumulators in shared memory (threads own columns: no atomics), a block adds
 *                its row groups in order into partial[block]; the last block of each group of
 *                NORM_GROUP blocks (found with an integer counter) adds its group's partials in
 *                block order, and the last group adds the group sums in group order and writes
 *                the gradients. The same bits for every run, whatever the order blocks finish in.
 *
 *   Layout: a row is handled by a row group of RT = 32 * WARPS threads (WARPS the power of two
 *   that keeps a thread at <= 32 row values: VPT vectors); a block of NT = max(RT, 128) threads
 *   holds G = NT / RT row groups and walks rows blockIdx.x * G, + gridDim.x * G, ... (as many
 *   blocks as fit on the GPU at once: the weights are staged in shared memory once per block).
 *   GPT-2 124M (C = 768): bf16 VEC 8, one warp per row with 3 vectors per lane; fp32 VEC 4,
 *   6 vectors per lane. Llama-3 8B (C = 4096) bf16: four warps per row, 4 vectors per lane.
 *
 *   Scratch of the backward (the caller owns it, one set per stream):
 *     scratch.partial   norm_backward_scratch_bytes<T, C, RMS>(max_blocks) bytes, 16-byte aligned
 *     scratch.counters  NORM_COUNTERS unsigned ints, ZERO before the first launch; every launch
 *                       leaves them zero again (kernels running at the same time need their own)
 *   The backward grid is min(ceil(N / G), max_blocks), max_blocks = NORM_BWD_BLOCKS (512) unless
 *   scratch.max_blocks says otherwise: a function of N only, so the gradients have the same bits on
 *   every GPU. Pass the same max_blocks to the scratch-size function and the launcher.
 *
 *   Launchers (outputs, inputs, weights, scratch, sizes, flags, stream) return cudaGetLastError()
 *   after the launch; misaligned pointers (each T array to VEC * sizeof(T) bytes, fp32 gradients
 *   to 16 bytes) or a negative N stop the program with one line naming the launcher (LLMK_REQUIRE).
 *
 *   acc_flags (backward): NORM_ACC_DW | NORM_ACC_DB | NORM_ACC_DBIAS: add to the gradient already
 *   there instead of overwriting it (micro-batch accumulation; the first micro-batch overwrites).
 */
#ifndef LLMK_NORMS_CUH
#define LLMK_NORMS_CUH

#ifndef LLMK_COMMON_CUH   /* pasted after common.cuh (llmgen's train.cu): already there */
#include "common.cuh"
#endif

namespace llmk {

enum { NORM_ACC_DW = 1, NORM_ACC_DB = 2, NORM_ACC_DBIAS = 4 };
/* blocks per first-level sum; counters (at most 63 groups); the backward's default grid */
enum { NORM_GROUP = 16, NORM_COUNTERS = 64, NORM_BWD_BLOCKS = 512 };

constexpr int pow2_at_least(int x) { return x <= 1 ? 1 : 2 * pow2_at_least((x + 1) / 2); }

/* the compile-time layout of a row of C elements of T (see the contract) */
template <class T, int C>
struct NormShape {
    static_assert(C >= 1 && C <= 32768, "norm: C out of range (at most 32 values per thread x 1024 threads)");
    static constexpr int VEC = vec_width<T>(C);          /* elements per access */
    static constexpr int NVEC = C / VEC;                  /* vectors per row */
    static constexpr int VPT_MAX = 32 / VEC;              /* <= 32 row values per thread */
    static constexpr int WARPS = pow2_at_least((NVEC + 32 * VPT_MAX - 1) / (32 * VPT_MAX));
    static constexpr int RT = 32 * WARPS;                 /* threads per row */
    static constexpr int VPT = (NVEC + RT - 1) / RT;      /* vectors per thread */
    static constexpr int NT = RT > 128 ? RT : 128;        /* threads per block */
    static constexpr int G = NT / RT;                     /* rows in flight per block */
    static constexpr int ACCW = VEC < 4 ? VEC : 4;        /* floats per accumulator access (<= 16 bytes) */
    static constexpr int NCH = VEC / ACCW;                /* accumulator chunks per vector */
    static constexpr int NSLOT = NVEC + 1;                /* shared arrays: one spare slot for idle lanes */
    static_assert(RT <= 1024, "norm: row too long");
};

/* sum over the RT threads of a row group, the same bits in each; block-uniform call when WARPS > 1.
 * red: 32 floats per value (one per warp of the block). */
template <class S, int K>
__device__ __forceinline__ void row_sum(float (&v)[K], float* red) {
    LLMK_UNROLL
    for (int k = 0; k < K; k++) v[k] = warp_sum(v[k]);
    if constexpr (S::WARPS > 1) {
        const int w = threadIdx.x / 32, first = (threadIdx.x / S::RT) * S::WARPS;
        __syncthreads();                      /* earlier readers of red are done */
        if (threadIdx.x % 32 == 0) {
            LLMK_UNROLL
            for (int k = 0; k < K; k++) red[32 * k + w] = v[k];
        }
        __syncthreads();
        LLMK_UNROLL
        for (int k = 0; k < K; k++) {
            float s = red[32 * k + first];
            for (int j = 1; j < S::WARPS; j++) s += red[32 * k + first + j];   /* warp order */
            v[k] = s;
        }
    }
}

template <class T, int N>
__device__ __forceinline__ Vec<T, N> vec_zero() {
    Vec<T, N> z;
    LLMK_UNROLL
    for (int i = 0; i < N; i++) z.v[i] = from_f32<T>(0.0f);
    return z;
}

/* ============================================================================================ */
/* forward                                                                                      */
/* ============================================================================================ */
/* FP8 builds: the block's max |out| (out as stored, every row the block wrote) into partials[blockIdx.x]; every thread
 * of the block calls it. A max is the same in any order: the partials have the same bits whatever the schedule. */
template <int NT>
__device__ __forceinline__ void norm_amax_partial(float v, float* partials) {
    __shared__ float wmax[NT / 32];
    v = warp_max(v);
    if (threadIdx.x % 32 == 0) wmax[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = wmax[0];
        for (int i = 1; i < NT / 32; i++) m = fmaxf(m, wmax[i]);
        partials[blockIdx.x] = m;
    }
}

/* grid: as many blocks as fit (<= ceil(N / G)); block NT threads; dynamic smem (RMS ? 1 : 2) * NSLOT vectors.
 * AMAX: also amax[blockIdx.x] = the block's max |out| (norm_amax_partial) */
template <class T, int C, bool RMS, bool ADD, bool AMAX>
__global__ void __launch_bounds__(NormShape<T, C>::NT)
    norm_forward_kernel(T* out, float* mean, float* rstd, T* resid, const T* a, const T* b, const T* w,
                        const T* bias, int N, float eps, float* amax) {
    typedef NormShape<T, C> S;
    typedef Vec<T, S::VEC> V;
    LLMGEN_DYNAMIC_SMEM(V, s_w);             /* [NSLOT] weight vectors, then [NSLOT] bias vectors */
    V* s_b = s_w + S::NSLOT;
    __shared__ float red[32];
    for (int base = 0; base < S::NVEC; base += S::NT) {     /* stage the weights once per block */
        const int v = base + (int)threadIdx.x, k = v < S::NVEC ? v : S::NVEC;
        sst(&s_w[k], v < S::NVEC ? load_vec<S::VEC>(w + (long long)v * S::VEC) : vec_zero<T, S::VEC>());
        if (!RMS) sst(&s_b[k], v < S::NVEC ? load_vec<S::VEC>(bias + (long long)v * S::VEC) : vec_zero<T, S::VEC>());
    }
    __syncthreads();
    const int g = threadIdx.x / S::RT, t = threadIdx.x % S::RT;
    float amax_t = 0.0f;   /* AMAX: this thread's max |out| */
    for (int r0 = blockIdx.x * S::G; r0 < N; r0 += gridDim.x * S::G) {
        const int row = r0 + g;
        if (S::WARPS == 1 && row >= N) break;   /* a lone warp: no block barrier in this loop */
        const bool live = row < N;
        float x[S::VPT][S::VEC];
        LLMK_UNROLL
        for (int s = 0; s < S::VPT; s++) {
            const int v = t + s * S::RT;
            const long long off = (long long)row * C + (long long)v * S::VEC;
            if (live && v < S::NVEC) {
                if (ADD) {
                    const V va = load_vec<S::VEC>(a + off), vb = load_vec<S::VEC>(b + off);
                    V sum;
                    LLMK_UNROLL
                    for (int i = 0; i < S::VEC; i++) {
                        sum.v[i] = from_f32<T>(va.f(i) + vb.f(i));
                        x[s][i] = to_f32(sum.v[i]);
                    }
                    store_vec<S::VEC>(resid + off, sum);
                } else {
                    const V vx = load_vec<S::VEC>(a + off);
                    LLMK_UNROLL
                    for (int i = 0; i < S::VEC; i++) x[s][i] = vx.f(i);
                }
            } else {
                LLMK_UNROLL
                for (int i = 0; i < S::VEC; i++) x[s][i] = 0.0f;
            }
        }
        float m = 0.0f;
        if (!RMS) {
            float sum[1] = {0.0f};
            LLMK_UNROLL
            for (int s = 0; s < S::VPT; s++)
                LLMK_UNROLL
                for (int i = 0; i < S::VEC; i++) sum[0] += x[s][i];
            row_sum<S>(sum, red);
            m = sum[0] / C;
        }
        float q[1] = {0.0f};
        LLMK_UNROLL
        for (int s = 0; s < S::VPT; s++) {
            if (t + s * S::RT < S::NVEC) {
                LLMK_UNROLL
                for (int i = 0; i < S::VEC; i++) {
                    const float d = x[s][i] - m;
                    q[0] += d * d;
                }
            }
        }
        row_sum<S>(q, red);
        const float r = 1.0f / sqrtf(q[0] / C + eps);
        LLMK_UNROLL
        for (int s = 0; s < S::VPT && live; s++) {   /* a dead row: the whole row group (whole warps) */
            const int v = t + s * S::RT, k = v < S::NVEC ? v : S::NVEC;
            const V wv = sld(&s_w[k]);
            V o;
            if (RMS) {
                LLMK_UNROLL
                for (int i = 0; i < S::VEC; i++) o.v[i] = from_f32<T>(wv.f(i) * (x[s][i] * r));
            } else {
                const V bv = sld(&s_b[k]);
                LLMK_UNROLL
                for (int i = 0; i < S::VEC; i++) o.v[i] = from_f32<T>((x[s][i] - m) * r * wv.f(i) + bv.f(i));
            }
            if (v < S::NVEC) {
                store_vec<S::VEC>(out + (long long)row * C + (long long)v * S::VEC, o);
                if (AMAX) {
                    LLMK_UNROLL
                    for (int i = 0; i < S::VEC; i++) amax_t = fmaxf(amax_t, fabsf(o.f(i)));
                }
            }
        }
        if (live && t == 0) {
            if (!RMS && mean) mean[row] = m;
            if (rstd) rstd[row] = r;
        }
    }
    if (AMAX) norm_amax_partial<S::NT>(amax_t, amax);
}

/* FP8 builds (kernels/fp8.cuh's USE IN A TRAINER): a norm whose output is the input of an FP8 GEMM also writes
 * that output's amax partials, so the GEMM's cast needs no amax pass over it. partials[0 .. *count) = per-block
 * max |out| (out as stored); the grid is capped at `capacity` blocks (the rows are walked grid-stride, so any grid
 * gives the same out, mean and rstd), *count receives it. The launchers take it with their template flag AMAX. */
struct NormAmax {
    float* partials;
    int capacity;
    int* count;
};

template <class T, int C, bool RMS, bool ADD, bool AMAX>
static cudaError_t norm_forward(const char* who, T* out, float* mean, float* rstd, T* resid, const T* a, const T* b,
                                const T* w, const T* bias, int N, float eps, cudaStream_t stream, NormAmax amax) {
    typedef NormShape<T, C> S;
    const size_t va = sizeof(T) * S::VEC;
    LLMK_REQUIRE(N >= 0, who, "N (rows) is negative");
    LLMK_REQUIRE(out && a && w && (RMS || bias) && (!ADD || (b && resid)), who, "a required pointer is NULL");
    LLMK_REQUIRE(aligned_to(out, va) && aligned_to(a, va) && aligned_to(w, va) && (RMS || aligned_to(bias, va))
                     && (!ADD || (aligned_to(b, va) && aligned_to(resid, va))),
                 who, "a T array is not aligned to the vector width (VEC * sizeof(T) bytes)");
    LLMK_REQUIRE(!AMAX || (amax.partials && amax.count && amax.capacity >= 1), who,
                 "the amax partials need a buffer, a count and a capacity >= 1");
    if (N == 0) {
        if (AMAX) *amax.count = 0;
        return cudaSuccess;
    }
    const size_t smem = (RMS ? 1 : 2) * S::NSLOT * sizeof(Vec<T, S::VEC>);
    /* once per instantiation: the shared-memory limit, and how many blocks fit on the device at once */
    static const long long fit = [smem]() {
        auto kernel = norm_forward_kernel<T, C, RMS, ADD, AMAX>;
        allow_smem(kernel, smem);
        return (long long)sm_count() * blocks_per_sm(kernel, S::NT, smem);
    }();
    long long grid = ceil_div(N, S::G);
    if (grid > fit) grid = fit;
    if (AMAX && grid > amax.capacity) grid = amax.capacity;
    if (AMAX) *amax.count = (int)grid;
    LLMGEN_LAUNCH((norm_forward_kernel<T, C, RMS, ADD, AMAX>), dim3((unsigned)grid), dim3(S::NT), smem, stream, out,
                  mean, rstd, resid, a, b, w, bias, N, eps, amax.partials);
    return cudaGetLastError();
}

/* (N, C) x -> out; mean, rstd (N) fp32 (either may be NULL); AMAX: also out's amax partials (NormAmax) */
template <class T, int C, bool AMAX = false>
cudaError_t layernorm_forward(T* out, float* mean, float* rstd, const T* x, const T* w, const T* b, int N, float eps,
                              cudaStream_t stream = 0, NormAmax amax = NormAmax{}) {
    return norm_forward<T, C, false, false, AMAX>("layernorm_forward", out, mean, rstd, (T*)nullptr, x,
                                                  (const T*)nullptr, w, b, N, eps, stream, amax);
}
/* resid = T(a + b), then out = layernorm(resid) */
template <class T, int C, bool AMAX = false>
cudaError_t residual_layernorm_forward(T* resid, T* out, float* mean, float* rstd, const T* a, const T* b, const T* w,
                                       const T* bias, int N, float eps, cudaStream_t stream = 0,
                                       NormAmax amax = NormAmax{}) {
    return norm_forward<T, C, false, true, AMAX>("residual_layernorm_forward", out, mean, rstd, resid, a, b, w, bias,
                                                 N, eps, stream, amax);
}
template <class T, int C, bool AMAX = false>
cudaError_t rmsnorm_forward(T* out, float* rstd, const T* x, const T* w, int N, float eps, cudaStream_t stream = 0,
                            NormAmax amax = NormAmax{}) {
    return norm_forward<T, C, true, false, AMAX>("rmsnorm_forward", out, (float*)nullptr, rstd, (T*)nullptr, x,
                                                 (const T*)nullptr, w, (const T*)nullptr, N, eps, stream, amax);
}
template <class T, int C, bool AMAX = false>
cudaError_t residual_rmsnorm_forward(T* resid, T* out, float* rstd, const T* a, const T* b, const T* w, int N,
                                     float eps, cudaStream_t stream = 0, NormAmax amax = NormAmax{}) {
    return norm_forward<T, C, true, true, AMAX>("residual_rmsnorm_forward", out, (float*)nullptr, rstd, resid, a, b,
                                                w, (const T*)nullptr, N, eps, stream, amax);
}

/* ============================================================================================ */
/* backward                                                                                     */
/* ============================================================================================ */
/* Dynamic shared memory: acc[G][nacc][NCH][NSLOT] of FVec<ACCW> (the column sums of each row group,
 * chunk-major so that consecutive lanes touch consecutive 16-byte words), then w[NSLOT] vectors.
 * nacc = 1 (dw) + 1 (db, LayerNorm) + 1 (dbias_prev, when given). */
template <class T, int C>
static size_t norm_backward_smem(int nacc) {
    typedef NormShape<T, C> S;
    return (size_t)S::G * nacc * S::NCH * S::NSLOT * sizeof(FVec<S::ACCW>) + S::NSLOT * sizeof(Vec<T, S::VEC>);
}

/* AMAX (FP8 builds): also amax[blockIdx.x] = the block's max |dx| (dx as stored), as the forward's */
template <class T, int C, bool RMS, bool AMAX>
__global__ void __launch_bounds__(NormShape<T, C>::NT)
    norm_backward_kernel(T* dx, float* dw, float* db, float* dbias, float* partial, unsigned* counters, const T* dy,
                         const T* x, const float* mean, const float* rstd, const T* dres, const T* w, int N,
                         unsigned acc_flags, float* amax) {
    typedef NormShape<T, C> S;
    typedef Vec<T, S::VEC> V;
    typedef FVec<S::ACCW> A;
    const int nacc = (RMS ? 1 : 2) + (dbias ? 1 : 0);
    const int k_db = 1, k_dbias = nacc - 1;    /* accumulator 0 is dw */
    LLMGEN_DYNAMIC_SMEM(A, s_acc);
    V* s_w = reinterpret_cast<V*>(s_acc + (size_t)S::G * nacc * S::NCH * S::NSLOT);
    __shared__ float red[64];
    __shared__ unsigned s_last;
    const int g = threadIdx.x / S::RT, t = threadIdx.x % S::RT;
    A* acc = s_acc + (size_t)g * nacc * S::NCH * S::NSLOT;    /* this row group's accumulators */
    float amax_t = 0.0f;                                      /* AMAX: this thread's max |dx| */

    for (int base = 0; base < S::NVEC; base += S::NT) {       /* weights in, accumulators zeroed */
        const int v = base + (int)threadIdx.x, k = v < S::NVEC ? v : S::NVEC;
        sst(&s_w[k], v < S::NVEC ? load_vec<S::VEC>(w + (long long)v * S::VEC) : vec_zero<T, S::VEC>());
    }
    for (int i = threadIdx.x; i < S::G * nacc * S::NCH * S::NSLOT; i += S::NT) s_acc[i] = fvec_zero<S::ACCW>();
    __syncthreads();

    for (int r0 = blockIdx.x * S::G; r0 < N; r0 += gridDim.x * S::G) {
        const int row = r0 + g;
        if (S::WARPS == 1 && row >= N) break;
        const bool live = row < N;
        const float m = (!RMS && live) ? mean[row] : 0.0f, r = live ? rstd[row] : 0.0f;
        float gv[S::VPT][S::VEC], xv[S::VPT][S::VEC];    /* dy; xhat (LayerNorm) or x (RMSNorm) */
        V rres[S::VPT];                                   /* dres, loaded with the others */
        float sums[2] = {0.0f, 0.0f};
        LLMK_UNROLL
        for (int s = 0; s < S::VPT; s++) {
            const int v = t + s * S::RT, k = v < S::NVEC ? v : S::NVEC;
            const long long off = (long long)row * C + (long long)v * S::VEC;
            const V wv = sld(&s_w[k]);
            const bool ok = live && v < S::NVEC;
            const V dyv = ok ? load_vec_cs<S::VEC>(dy + off) : vec_zero<T, S::VEC>();
            const V xx = ok ? load_vec<S::VEC>(x + off) : vec_zero<T, S::VEC>();
            rres[s] = (ok && dres) ? load_vec_cs<S::VEC>(dres + off) : vec_zero<T, S::VEC>();
            LLMK_UNROLL
            for (int i = 0; i < S::VEC; i++) {
                gv[s][i] = dyv.f(i);
                const float gw = gv[s][i] * wv.f(i);
                if (RMS) {
                    xv[s][i] = xx.f(i);
                    sums[0] += gw * xv[s][i];
                } else {
                    xv[s][i] = ok ? (xx.f(i) - m) * r : 0.0f;
                    sums[0] += gw;
                    sums[1] += gw * xv[s][i];
                }
            }
        }
        float sa = 0.0f, sb = 0.0f;
        if (RMS) {
            float v1[1] = {sums[0]};
            row_sum<S>(v1, red);
            sb = v1[0] * (r / C);               /* mean(dy * w * xhat) */
        } else {
            row_sum<S>(sums, red);
            sa = sums[0] / C;                   /* mean(dy * w) */
            sb = sums[1] / C;                   /* mean(dy * w * xhat) */
        }
        LLMK_UNROLL
        for (int s = 0; s < S::VPT; s++) {
            if (!live) break;                   /* the whole row group */
            const int v = t + s * S::RT, k = v < S::NVEC ? v : S::NVEC;
            const long long off = (long long)row * C + (long long)v * S::VEC;
            const bool ok = v < S::NVEC;
            const V wv = sld(&s_w[k]);
            const V rv = rres[s];
            V o;
            float c0[S::VEC], c1[S::VEC], c2[S::VEC];     /* dw, db, dbias contributions */
            LLMK_UNROLL
            for (int i = 0; i < S::VEC; i++) {
                float d;
                if (RMS) {
                    d = r * (gv[s][i] * wv.f(i) - xv[s][i] * r * sb);
                    c0[i] = gv[s][i] * (xv[s][i] * r);
                } else {
                    d = r * (gv[s][i] * wv.f(i) - sa - xv[s][i] * sb);
                    c0[i] = gv[s][i] * xv[s][i];
                }
                if (dres) d += rv.f(i);
                o.v[i] = from_f32<T>(d);
                c1[i] = gv[s][i];
                c2[i] = to_f32(o.v[i]);
            }
            if (ok) {
                store_vec<S::VEC>(dx + off, o);
                if (AMAX) {
                    LLMK_UNROLL
                    for (int i = 0; i < S::VEC; i++) amax_t = fmaxf(amax_t, fabsf(c2[i]));
                }
            }
            LLMK_UNROLL
            for (int ch = 0; ch < S::NCH; ch++) {
                A* p = acc + (size_t)ch * S::NSLOT + k;            /* accumulator 0 */
                A a0 = sld(p);
                LLMK_UNROLL
                for (int j = 0; j < S::ACCW; j++) a0.v[j] += c0[ch * S::ACCW + j];
                sst(p, a0);
                if (!RMS) {
                    A* p1 = p + (size_t)k_db * S::NCH * S::NSLOT;
                    A a1 = sld(p1);
                    LLMK_UNROLL
                    for (int j = 0; j < S::ACCW; j++) a1.v[j] += c1[ch * S::ACCW + j];
                    sst(p1, a1);
                }
                if (dbias) {
                    A* p2 = p + (size_t)k_dbias * S::NCH * S::NSLOT;
                    A a2 = sld(p2);
                    LLMK_UNROLL
                    for (int j = 0; j < S::ACCW; j++) a2.v[j] += c2[ch * S::ACCW + j];
                    sst(p2, a2);
                }
            }
        }
    }
    __syncthreads();
    if (AMAX) norm_amax_partial<S::NT>(amax_t, amax);

    /* the block's column sums: its row groups in order -> partial[block] ([nacc][NCH][NVEC] of A) */
    const int nA = nacc * S::NCH * S::NVEC;                 /* A-vectors of one partial */
    const size_t part_floats = (size_t)nacc * C;
    for (int i = threadIdx.x; i < nA; i += S::NT) {
        const int kc = i / S::NVEC, v = i % S::NVEC;
        A sum = s_acc[(size_t)kc * S::NSLOT + v];
        for (int gg = 1; gg < S::G; gg++) {
            const A o = s_acc[((size_t)gg * nacc * S::NCH + kc) * S::NSLOT + v];
            LLMK_UNROLL
            for (int j = 0; j < S::ACCW; j++) sum.v[j] += o.v[j];
        }
        store_f<S::ACCW>(partial + blockIdx.x * part_floats + (size_t)i * S::ACCW, sum);
    }

    /* first level: the last block of each group of NORM_GROUP adds the group's partials in block order */
    const int ngroups = (int)((gridDim.x + NORM_GROUP - 1) / NORM_GROUP), grp = blockIdx.x / NORM_GROUP;
    const unsigned members = min((unsigned)NORM_GROUP, gridDim.x - grp * NORM_GROUP);
    __threadfence();                            /* the partial is visible before the count says so */
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&counters[grp], 1u) == members - 1;
    __syncthreads();
    if (!s_last) return;
    if (threadIdx.x == 0) counters[grp] = 0;    /* every member has counted: zero for the next launch */
    __threadfence();
    float* gpart = partial + (size_t)gridDim.x * part_floats;   /* group sums follow the block partials */
    for (int i = threadIdx.x; i < nA; i += S::NT) {
        const float* p = partial + (size_t)grp * NORM_GROUP * part_floats + (size_t)i * S::ACCW;
        A sum = load_f_cg<S::ACCW>(p);
        for (unsigned b = 1; b < members; b++) {
            const A o = load_f_cg<S::ACCW>(p + b * part_floats);
            LLMK_UNROLL
            for (int j = 0; j < S::ACCW; j++) sum.v[j] += o.v[j];
        }
        store_f<S::ACCW>(gpart + grp * part_floats + (size_t)i * S::ACCW, sum);
    }

    /* second level: the last group adds the group sums in group order and writes the gradients */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(&counters[ngroups], 1u) == (unsigned)ngroups - 1;
    __syncthreads();
    if (!s_last) return;
    if (threadIdx.x == 0) counters[ngroups] = 0;
    __threadfence();
    for (int i = threadIdx.x; i < nA; i += S::NT) {
        const int kc = i / S::NVEC, v = i % S::NVEC, k = kc / S::NCH, ch = kc % S::NCH;
        const float* p = gpart + (size_t)i * S::ACCW;
        A sum = load_f_cg<S::ACCW>(p);
        for (int q = 1; q < ngroups; q++) {
            const A o = load_f_cg<S::ACCW>(p + q * part_floats);
            LLMK_UNROLL
            for (int j = 0; j < S::ACCW; j++) sum.v[j] += o.v[j];
        }
        float* outp = k == 0 ? dw : (k == k_dbias && dbias) ? dbias : db;
        const unsigned flag = k == 0 ? NORM_ACC_DW : (k == k_dbias && dbias) ? NORM_ACC_DBIAS : NORM_ACC_DB;
        float* dst = outp + (size_t)v * S::VEC + ch * S::ACCW;
        if (acc_flags & flag) {
            const A old = load_f<S::ACCW>(dst);
            LLMK_UNROLL
            for (int j = 0; j < S::ACCW; j++) sum.v[j] = old.v[j] + sum.v[j];
        }
        store_f<S::ACCW>(dst, sum);
    }
}

/* The backward grid: min(ceil(N / G), max_blocks or NORM_BWD_BLOCKS). A function of N alone, not of
 * the device, so the partition of the rows (and so every bit of the gradients) is the same on
 * every GPU; 512 blocks fill an H100/H200 (132 SMs: about four 4-warp blocks each). */
template <class T, int C, bool RMS>
static int norm_backward_grid(int N, int max_blocks) {
    typedef NormShape<T, C> S;
    long long grid = max_blocks > 0 ? max_blocks : NORM_BWD_BLOCKS;
    if (grid > (long long)NORM_GROUP * (NORM_COUNTERS - 1)) grid = (long long)NORM_GROUP * (NORM_COUNTERS - 1);
    const long long need = ceil_div(N, S::G);
    if (grid > need) grid = need;
    return grid < 1 ? 1 : (int)grid;   /* N = 0 still runs one block: it writes the zero gradients */
}

/* bytes of scratch.partial the backward needs for N rows (the largest case: with dbias_prev) */
template <class T, int C, bool RMS>
size_t norm_backward_scratch_bytes(int N, int max_blocks = 0) {
    const int grid = norm_backward_grid<T, C, RMS>(N, max_blocks), nacc = RMS ? 2 : 3;
    return ((size_t)grid + (size_t)ceil_div(grid, NORM_GROUP)) * nacc * C * sizeof(float);
}

struct NormScratch {
    float* partial;       /* norm_backward_scratch_bytes(N, max_blocks) bytes */
    unsigned* counters;   /* NORM_COUNTERS, zero at the first launch, left zero */
    int max_blocks;       /* 0: NORM_BWD_BLOCKS */
};

template <class T, int C, bool RMS, bool AMAX>
static cudaError_t norm_backward(const char* who, T* dx, float* dw, float* db, float* dbias, const T* dy, const T* x,
                                 const float* mean, const float* rstd, const T* dres, const T* w, NormScratch scratch,
                                 int N, unsigned acc_flags, cudaStream_t stream, NormAmax amax) {
    typedef NormShape<T, C> S;
    const size_t va = sizeof(T) * S::VEC, fa = sizeof(float) * S::ACCW;
    LLMK_REQUIRE(N >= 0, who, "N (rows) is negative");
    LLMK_REQUIRE(dx && dw && (RMS || db) && dy && x && (RMS || mean) && rstd && w, who, "a required pointer is NULL");
    LLMK_REQUIRE(scratch.partial && scratch.counters, who, "scratch.partial or scratch.counters is NULL");
    LLMK_REQUIRE(aligned_to(dx, va) && aligned_to(dy, va) && aligned_to(x, va) && aligned_to(w, va)
                     && (!dres || aligned_to(dres, va)),
                 who, "a T array is not aligned to the vector width (VEC * sizeof(T) bytes)");
    LLMK_REQUIRE(aligned_to(dw, fa) && (RMS || aligned_to(db, fa)) && (!dbias || aligned_to(dbias, fa))
                     && aligned_to(scratch.partial, 16),
                 who, "a gradient or scratch.partial is not aligned to 16 bytes (to 4 * ACCW for narrow rows)");
    const int nacc = (RMS ? 1 : 2) + (dbias ? 1 : 0);
    const int grid = norm_backward_grid<T, C, RMS>(N, scratch.max_blocks);
    /* the grid decides the gradients' bits: it is never capped for the amax partials, they must have room */
    LLMK_REQUIRE(!AMAX || (amax.partials && amax.count && amax.capacity >= grid), who,
                 "the amax partials need a buffer, a count and room for one per block");
    const size_t smem = norm_backward_smem<T, C>(nacc);
    static const bool smem_allowed =   /* once per instantiation, for the largest nacc */
        (allow_smem(norm_backward_kernel<T, C, RMS, AMAX>, norm_backward_smem<T, C>(RMS ? 2 : 3)), true);
    (void)smem_allowed;
    if (AMAX) *amax.count = grid;
    LLMGEN_LAUNCH((norm_backward_kernel<T, C, RMS, AMAX>), dim3(grid), dim3(S::NT), smem, stream, dx, dw, db, dbias,
                  scratch.partial, scratch.counters, dy, x, mean, rstd, dres, w, N, acc_flags, amax.partials);
    return cudaGetLastError();
}

/* dx (N, C) = layernorm backward [+ dres]; dw, db (C) fp32; dbias_prev (C) fp32 or NULL; dres may be
 * NULL or dx itself; AMAX: also dx's amax partials (NormAmax: one per block, the grid is not capped) */
template <class T, int C, bool AMAX = false>
cudaError_t layernorm_backward(T* dx, float* dw, float* db, float* dbias_prev, const T* dy, const T* x,
                               const float* mean, const float* rstd, const T* dres, const T* w, NormScratch scratch,
                               int N, unsigned acc_flags, cudaStream_t stream = 0, NormAmax amax = NormAmax{}) {
    return norm_backward<T, C, false, AMAX>("layernorm_backward", dx, dw, db, dbias_prev, dy, x, mean, rstd, dres, w,
                                            scratch, N, acc_flags, stream, amax);
}
template <class T, int C, bool AMAX = false>
cudaError_t rmsnorm_backward(T* dx, float* dw, float* dbias_prev, const T* dy, const T* x, const float* rstd,
                             const T* dres, const T* w, NormScratch scratch, int N, unsigned acc_flags,
                             cudaStream_t stream = 0, NormAmax amax = NormAmax{}) {
    return norm_backward<T, C, true, AMAX>("rmsnorm_backward", dx, dw, (float*)nullptr, dbias_prev, dy, x,
                                           (const float*)nullptr, rstd, dres, w, scratch, N, acc_flags, stream, amax);
}
template <class T, int C>
size_t layernorm_backward_scratch_bytes(int N, int max_blocks = 0) {
    return norm_backward_scratch_bytes<T, C, false>(N, max_blocks);
}
template <class T, int C>
size_t rmsnorm_backward_scratch_bytes(int N, int max_blocks = 0) {
    return norm_backward_scratch_bytes<T, C, true>(N, max_blocks);
}

}  // namespace llmk

#endif /* LLMK_NORMS_CUH */
