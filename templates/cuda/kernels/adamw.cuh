/* adamw.cuh -- the optimizer step over the flat parameter array: global gradient norm, then AdamW
 * with clip_grad_norm_'s rescale, at memory bandwidth.
 *
 * CONTRACT
 *   The parameters live in one flat array (llmgen's parameter arena: every tensor at an offset,
 *   aligned to 16 elements, the gaps zero). Gradients, both moments and the fp32 master weights
 *   are fp32; the parameters the model reads are T (float or __nv_bfloat16).
 *
 *   Gradient norm (grad_norm): sqrt(sum of g^2) over grads[0, n), deterministic: part j of nparts
 *   (a block of 256 threads) sums, in double, the fixed 4-element vectors j*256 + t, + nparts*256, ...
 *   (the < 4 tail elements, and those before a 16-byte boundary, go to block 0), then its threads in a
 *   fixed order; a second one-block kernel adds the parts in order. The same bits on every run and
 *   for every device with the same nparts. Writes *norm (fp32) and, when sumsq is not NULL, the
 *   double sum of squares (for a sharded run to all-reduce before taking the root). Scratch: nparts
 *   doubles.
 *
 *   AdamW (adamw_update): torch.optim.AdamW's single-tensor formula after the clip, in this order of
 *   fp32 operations, each rounded once (__fmul_rn & co.: no FMA contraction on the GPU, none in g++):
 *       clip = min(1, max_norm / (norm + 1e-6))     (norm read from the device scalar grad_norm;
 *                                                    NULL: no clipping)
 *       g  = grad * clip;         p = master * (decay ? 1 - lr * wd : 1)
 *       m  = m + (1 - b1) * (g - m);                v = v * b2 + ((1 - b2) * g) * g
 *       p' = p - step_size * (m / (sqrt(v) / bc2_sqrt + eps))
 *            step_size = lr / (1 - b1^t), bc2_sqrt = sqrt(1 - b2^t), computed on the host in double
 *   and the bf16 parameter from p' by the trainer's stochastic rounding (round_param: a hash of
 *   the element's global index and the value's bits picks the rounding, so a resumed run writes
 *   the same bits); fp32 builds write p' to master (which may be params itself) and to params
 *   when that is a different array.
 *
 *   Blocks are mapped to parameter ranges by a small table (AdamwSegment: offset, size, decay,
 *   first block), built once on the host by adamw_plan() from the tensor list and the shard:
 *   block b finds its segment by a binary search over the table (once per block, not per element)
 *   and updates ADAMW_EPB consecutive elements of it with 16-byte accesses (scalar for a segment
 *   whose start is not a multiple of 4). ZeRO-1: a shard is a contiguous range [shard_begin,
 *   shard_end) of the flat array that may cross tensor boundaries; adamw_plan clips every tensor to
 *   it. params and grads are always indexed by the global element index; master, m and v by
 *   (index - opt_base), so a rank can hold only its shard of the optimizer state (opt_base =
 *   shard_begin) or all of it (opt_base = 0).
 */
#ifndef LLMK_ADAMW_CUH
#define LLMK_ADAMW_CUH

#include <math.h>
#ifndef LLMK_COMMON_CUH   /* pasted after common.cuh (llmgen's train.cu): already there */
#include "common.cuh"
#endif

namespace llmk {

enum { ADAMW_NT = 256, ADAMW_UNROLL = 2, ADAMW_EPB = ADAMW_NT * 4 * ADAMW_UNROLL, GRAD_NORM_NT = 256 };

/* ============================================================================================ */
/* gradient norm                                                                                */
/* ============================================================================================ */
__global__ void __launch_bounds__(GRAD_NORM_NT)
    grad_norm_partial_kernel(double* partial, const float* grads, long long n, int head) {
    __shared__ double red[GRAD_NORM_NT / 32];
    const float* const first = grads;          /* head (< 4) elements before the first 16-byte boundary */
    grads += head;
    n -= head;
    const long long n4 = n / 4, stride = (long long)gridDim.x * GRAD_NORM_NT;
    double s = 0.0;
    long long q = (long long)blockIdx.x * GRAD_NORM_NT + threadIdx.x;
    for (; q + 3 * stride < n4; q += 4 * stride) {      /* four loads in flight, summed in index order */
        FVec<4> x[4];
        LLMK_UNROLL
        for (int u = 0; u < 4; u++) x[u] = load_f<4>(grads + 4 * (q + u * stride));
        LLMK_UNROLL
        for (int u = 0; u < 4; u++)
            LLMK_UNROLL
            for (int i = 0; i < 4; i++) s += (double)x[u].v[i] * x[u].v[i];
    }
    for (; q < n4; q += stride) {
        const FVec<4> x = load_f<4>(grads + 4 * q);
        LLMK_UNROLL
        for (int i = 0; i < 4; i++) s += (double)x.v[i] * x.v[i];
    }
    if (blockIdx.x == 0 && threadIdx.x < n - 4 * n4) {
        const float x = grads[4 * n4 + threadIdx.x];
        s += (double)x * x;
    }
    if (blockIdx.x == 0 && (int)threadIdx.x >= 4 && (int)threadIdx.x < 4 + head) {
        const float x = first[threadIdx.x - 4];
        s += (double)x * x;
    }
    s = block_sum<GRAD_NORM_NT>(s, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(GRAD_NORM_NT)
    grad_norm_final_kernel(float* norm, double* sumsq, const double* partial, int nparts) {
    __shared__ double red[GRAD_NORM_NT / 32];
    double s = 0.0;
    for (int j = threadIdx.x; j < nparts; j += GRAD_NORM_NT) s += partial[j];
    s = block_sum<GRAD_NORM_NT>(s, red);
    if (threadIdx.x == 0) {
        if (norm) *norm = (float)sqrt(s);
        if (sumsq) *sumsq = s;
    }
}

/* *norm = ||grads[0, n)||_2 (fp32), *sumsq = its square in double (either may be NULL);
 * partial: nparts doubles of scratch (1024 parts keep an H100/H200 busy for 124M parameters).
 * grads needs 4-byte alignment only: the elements before its first 16-byte boundary (a ZeRO-1 shard
 * may start anywhere) are summed by block 0 like the tail */
static inline cudaError_t grad_norm(float* norm, double* sumsq, const float* grads, long long n, double* partial,
                                    int nparts, cudaStream_t stream = 0) {
    LLMK_REQUIRE(n >= 0 && nparts >= 1, "grad_norm", "n must be >= 0 and nparts >= 1");
    LLMK_REQUIRE(grads && partial, "grad_norm", "a required pointer is NULL");
    LLMK_REQUIRE(aligned_to(grads, 4), "grad_norm", "grads is not 4-byte aligned");
    long long head = (long long)((16 - (uintptr_t)grads % 16) % 16 / 4);
    if (head > n) head = n;
    LLMGEN_LAUNCH(grad_norm_partial_kernel, dim3(nparts), dim3(GRAD_NORM_NT), 0, stream, partial, grads, n, (int)head);
    LLMGEN_LAUNCH(grad_norm_final_kernel, dim3(1), dim3(GRAD_NORM_NT), 0, stream, norm, sumsq, partial, nparts);
    return cudaGetLastError();
}

/* ============================================================================================ */
/* AdamW                                                                                        */
/* ============================================================================================ */
/* host: one parameter tensor of the flat array */
struct AdamwTensor {
    long long offset, size;  /* elements */
    int decay;               /* weight decay applies (2-D weights) */
};
/* device table: a range of the flat array (a tensor clipped to the shard) and its blocks */
struct AdamwSegment {
    long long offset, size;  /* global element index of the first element, elements */
    int first_block;         /* blocks first_block .. first_block + ceil(size / ADAMW_EPB) - 1 */
    int decay;
};

/* Fill seg[] (capacity cap) with the tensors clipped to [shard_begin, shard_end), in tensor order;
 * returns the segment count and sets *nblocks to the grid the update needs. Copy seg to the device
 * once (the table is a function of the model and the shard only). */
static inline int adamw_plan(AdamwSegment* seg, int cap, int* nblocks, const AdamwTensor* tensors, int ntensors,
                             long long shard_begin, long long shard_end) {
    int n = 0;
    long long blocks = 0;
    for (int i = 0; i < ntensors; i++) {
        const long long lo = tensors[i].offset > shard_begin ? tensors[i].offset : shard_begin;
        const long long end = tensors[i].offset + tensors[i].size, hi = end < shard_end ? end : shard_end;
        if (lo >= hi) continue;
        LLMK_REQUIRE(n < cap, "adamw_plan", "more segments than the table holds");
        seg[n].offset = lo;
        seg[n].size = hi - lo;
        seg[n].first_block = (int)blocks;
        seg[n].decay = tensors[i].decay;
        blocks += ceil_div(hi - lo, ADAMW_EPB);
        n++;
    }
    LLMK_REQUIRE(blocks < 2147483647LL, "adamw_plan", "too many blocks for one launch");
    *nblocks = (int)blocks;
    return n;
}

/* the fp32 scalars of one step, computed on the host in double as the trainer always has */
struct AdamwStep {
    float step_size, bc2_sqrt, keep;          /* lr / (1 - b1^t), sqrt(1 - b2^t), 1 - lr * wd */
    float one_minus_beta1, beta2, one_minus_beta2, eps, max_norm;
};
struct AdamwHyper {
    double beta1, beta2, eps, weight_decay, max_norm;
};
static inline AdamwStep adamw_step_scalars(double lr, int t, const AdamwHyper& h) {
    AdamwStep s;
    s.step_size = (float)(lr / (1.0 - pow(h.beta1, t)));
    s.bc2_sqrt = (float)sqrt(1.0 - pow(h.beta2, t));
    s.keep = (float)(1.0 - lr * h.weight_decay);
    s.one_minus_beta1 = (float)(1.0 - h.beta1);
    s.beta2 = (float)h.beta2;
    s.one_minus_beta2 = (float)(1.0 - h.beta2);
    s.eps = (float)h.eps;
    s.max_norm = (float)h.max_norm;
    return s;
}

/* the trainer's stochastic rounding of a master weight to bf16 (program.cu.j2's round_param):
 * the random low 16 bits come from a hash of the global index and the value's bits */
__device__ __forceinline__ unsigned mix32(unsigned h) {
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    return h;
}
__device__ __forceinline__ bf16 stochastic_round_bf16(float x, unsigned long long i) {
    const unsigned bits = __float_as_uint(x);
    const unsigned r = mix32((unsigned)i * 0x9e3779b9u ^ mix32(bits ^ (unsigned)(i >> 32))) & 0xffffu;
    const unsigned up = (bits & 0x7f800000u) == 0x7f800000u ? bits : bits + r;   /* inf and NaN stay */
    __nv_bfloat16_raw raw;
    raw.x = (unsigned short)(up >> 16);
    return bf16(raw);
}

/* one element: updates m and v, returns the new master weight (see the contract for the order) */
__device__ __forceinline__ float adamw_element(float& m, float& v, float master, float grad, float clip, float decay,
                                               const AdamwStep& st) {
    const float g = __fmul_rn(grad, clip);
    const float p = __fmul_rn(master, decay);
    m = __fadd_rn(m, __fmul_rn(st.one_minus_beta1, __fsub_rn(g, m)));
    v = __fadd_rn(__fmul_rn(v, st.beta2), __fmul_rn(__fmul_rn(st.one_minus_beta2, g), g));
    const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), st.bc2_sqrt), st.eps);
    return __fsub_rn(p, __fmul_rn(st.step_size, __fdiv_rn(m, den)));
}

template <class T>
__device__ __forceinline__ void adamw_write_param(T* params, float* master_i, unsigned long long i, float p);
template <>
__device__ __forceinline__ void adamw_write_param<bf16>(bf16* params, float*, unsigned long long i, float p) {
    params[i] = stochastic_round_bf16(p, i);
}
template <>
__device__ __forceinline__ void adamw_write_param<float>(float* params, float* master_i, unsigned long long i,
                                                         float p) {
    if (params && params + i != master_i) params[i] = p;
}

template <class T>
__global__ void __launch_bounds__(ADAMW_NT)
    adamw_kernel(T* params, float* master, float* m, float* v, const float* grads, const AdamwSegment* segs, int nseg,
                 long long opt_base, const float* grad_norm, AdamwStep st) {
    int lo = 0, hi = nseg - 1;                 /* the last segment starting at or before this block */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (segs[mid].first_block <= (int)blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    const AdamwSegment seg = segs[lo];
    const long long begin = seg.offset + (long long)(blockIdx.x - seg.first_block) * ADAMW_EPB;
    const long long end = begin + ADAMW_EPB < seg.offset + seg.size ? begin + ADAMW_EPB : seg.offset + seg.size;
    float clip = 1.0f;
    if (grad_norm) {
        clip = __fdiv_rn(st.max_norm, __fadd_rn(*grad_norm, 1e-6f));
        if (clip > 1.0f) clip = 1.0f;
    }
    const float decay = seg.decay ? st.keep : 1.0f;
    float* mo = m - opt_base;                  /* optimizer state indexed by the global element index */
    float* vo = v - opt_base;
    float* po = master - opt_base;
    long long i = begin;
    if (begin % 4 == 0 && opt_base % 4 == 0) {
        const long long n4 = (end - begin) / 4;
        for (long long q0 = threadIdx.x; q0 < n4; q0 += ADAMW_NT * ADAMW_UNROLL) {
            FVec<4> g[ADAMW_UNROLL], w[ADAMW_UNROLL], a[ADAMW_UNROLL], b[ADAMW_UNROLL];
            LLMK_UNROLL
            for (int u = 0; u < ADAMW_UNROLL; u++) {
                const long long q = q0 + u * ADAMW_NT, e = begin + 4 * q;
                if (q < n4) {
                    g[u] = load_f<4>(grads + e);
                    w[u] = load_f<4>(po + e);
                    a[u] = load_f<4>(mo + e);
                    b[u] = load_f<4>(vo + e);
                }
            }
            LLMK_UNROLL
            for (int u = 0; u < ADAMW_UNROLL; u++) {
                const long long q = q0 + u * ADAMW_NT, e = begin + 4 * q;
                if (q >= n4) continue;
                Vec<T, 4> pv;
                LLMK_UNROLL
                for (int j = 0; j < 4; j++) {
                    w[u].v[j] = adamw_element(a[u].v[j], b[u].v[j], w[u].v[j], g[u].v[j], clip, decay, st);
                    if constexpr (sizeof(T) == 2) pv.v[j] = stochastic_round_bf16(w[u].v[j], (unsigned long long)e + j);
                    else pv.v[j] = w[u].v[j];
                }
                store_f<4>(po + e, w[u]);
                store_f<4>(mo + e, a[u]);
                store_f<4>(vo + e, b[u]);
                if (sizeof(T) == 2 || (params && (void*)params != (void*)master)) store_vec<4>(params + e, pv);
            }
        }
        i = begin + 4 * n4;
    }
    for (i += threadIdx.x; i < end; i += ADAMW_NT) {     /* the tail (or all of a misaligned segment) */
        float mi = mo[i], vi = vo[i];
        const float p = adamw_element(mi, vi, po[i], grads[i], clip, decay, st);
        mo[i] = mi;
        vo[i] = vi;
        po[i] = p;
        adamw_write_param<T>(params, po + i, (unsigned long long)i, p);
    }
}

/* One AdamW step over the segments of the table segs (device memory, nseg entries, nblocks from
 * adamw_plan). params: T, the whole array (fp32 builds: may be master itself, or NULL);
 * master, m, v: fp32 indexed from opt_base; grads: fp32, the whole array; grad_norm: device scalar
 * (NULL: no clipping). t is the 1-based step. */
template <class T>
cudaError_t adamw_update(T* params, float* master, float* m, float* v, const float* grads, const AdamwSegment* segs,
                         int nseg, int nblocks, long long opt_base, const float* grad_norm, double lr, int t,
                         const AdamwHyper& hyper, cudaStream_t stream = 0) {
    LLMK_REQUIRE(nseg >= 0 && nblocks >= 0 && t >= 1, "adamw_update", "nseg and nblocks must be >= 0 and t >= 1");
    LLMK_REQUIRE(master && m && v && grads && (nseg == 0 || segs) && (sizeof(T) == 4 || params), "adamw_update",
                 "a required pointer is NULL");
    /* an opt_base that is not a multiple of 4 (a ZeRO-1 shard starting anywhere) sends every segment down the
     * scalar path, which needs no more than element alignment of master, m and v */
    const size_t oa = opt_base % 4 == 0 ? 16 : 4;
    LLMK_REQUIRE(aligned_to(master, oa) && aligned_to(m, oa) && aligned_to(v, oa) && aligned_to(grads, 16)
                     && (!params || aligned_to(params, 4 * sizeof(T))),
                 "adamw_update", "grads must be 16-byte aligned, master, m, v too (when opt_base % 4 == 0), params to "
                 "4 elements");
    if (nseg == 0 || nblocks == 0) return cudaSuccess;
    const AdamwStep st = adamw_step_scalars(lr, t, hyper);
    LLMGEN_LAUNCH((adamw_kernel<T>), dim3(nblocks), dim3(ADAMW_NT), 0, stream, params, master, m, v, grads, segs, nseg,
                  opt_base, grad_norm, st);
    return cudaGetLastError();
}

}  // namespace llmk

#endif /* LLMK_ADAMW_CUH */
