/* xent.cuh -- softmax + cross-entropy over the vocabulary, fused with dlogits, at memory bandwidth.
 *
 * CONTRACT
 *   Templates over the storage type T (float or __nv_bfloat16), the real vocabulary V and the
 *   padded row length Vp >= V (the logits are (N, Vp); columns V..Vp-1 never enter the softmax and
 *   get dlogit 0). Rows are read as Vp / VEC vectors, VEC = vec_width<T>(Vp) (16 bytes when Vp is a
 *   multiple of 8 for bf16, 4 for fp32: GPT-2's 50304, Llama-3's 128256); V need not be a
 *   multiple of anything. fp32 arithmetic; losses fp32.
 *
 *   One block of XENT_NT threads per row, rows in REVERSE order (block 0 takes row N-1: the rows the
 *   classifier GEMM wrote last are the likeliest to be still in L2), two passes over the row:
 *     pass 1  an online max and sum of exp in one read: each thread keeps (max, sum) rescaled when
 *             its max grows, the block combines the pairs in a fixed order (butterflies, then warps
 *             in order): loss[r] = logf(sum) + max - z[target]
 *     pass 2  (softmax_xent_backward only) dlogits = (expf(z - max) / sum - onehot(target)) * dscale,
 *             written in place over the logits when dlogits == logits (every thread reads
 *             z[target] before the first barrier and writes only the vectors it alone reads).
 *   dscale = dlosses[r] when dlosses is given (an unfused backward), else *dloss / loss_rows: the
 *   mean over loss_rows tokens, scaled by the device scalar dloss (1, or the micro-batch share),
 *   as the trainer does today. loss_rows is the whole B*T even when the caller runs the rows in
 *   chunks (logits, targets and losses pointing at the chunk, N its rows).
 *   targets must lie in [0, V) (the trainer validated them on the host).
 *
 *   Launchers: softmax_xent_backward(losses, dlogits, logits, targets, dloss, dlosses, N, loss_rows,
 *   stream) (losses may be NULL: an unfused backward, whose forward wrote them) and
 *   xent_forward(losses, logits, targets, N, stream) (evaluation: pass 1 only).
 */
#ifndef LLMK_XENT_CUH
#define LLMK_XENT_CUH

#include <math.h>
#ifndef LLMK_COMMON_CUH   /* pasted after common.cuh (llmgen's train.cu): already there */
#include "common.cuh"
#endif

namespace llmk {

enum { XENT_NT = 512, XENT_UNROLL = 4 };

template <class T, int V, int Vp>
struct XentShape {
    static_assert(V >= 1 && Vp >= V, "xent: need 1 <= V <= Vp");
    static constexpr int VEC = vec_width<T>(Vp);
    static constexpr int NVEC = Vp / VEC;
    static constexpr int NFULL = V / VEC;      /* vectors entirely inside the real vocabulary */
};

/* (m, s) <- the pair for the union of both sets; symmetric in its arguments, so both lanes of a
 * butterfly get the same bits. An empty set is (-inf, 0). */
__device__ __forceinline__ void lse_combine(float& m, float& s, float mo, float so) {
    const float M = fmaxf(m, mo);
    if (M == -INFINITY) return;
    s = s * expf(m - M) + so * expf(mo - M);
    m = M;
}

template <class T, int V, int Vp, bool GRAD>
__global__ void __launch_bounds__(XENT_NT)
    xent_kernel(float* losses, T* dlogits, const T* logits, const int* targets, const float* dloss,
                const float* dlosses, int N, int loss_rows) {
    typedef XentShape<T, V, Vp> S;
    typedef Vec<T, S::VEC> VT;
    constexpr int U = XENT_UNROLL;
    __shared__ float red_m[XENT_NT / 32], red_s[XENT_NT / 32];
    const long long row = (long long)N - 1 - blockIdx.x;
    const T* z = logits + row * Vp;
    const int tgt = targets[row];
    const float zt = to_f32(z[tgt]);           /* read before any thread can overwrite it */

    /* pass 1: online max and sum of exp */
    float m = -INFINITY, s = 0.0f;
    for (int v0 = threadIdx.x; v0 < S::NVEC; v0 += XENT_NT * U) {
        VT x[U];
        LLMK_UNROLL
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * XENT_NT;
            if (v < S::NVEC) x[u] = load_vec<S::VEC>(z + (long long)v * S::VEC);
        }
        LLMK_UNROLL
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * XENT_NT;
            if (v >= S::NVEC || v * S::VEC >= V) continue;
            const int n = v < S::NFULL ? S::VEC : V - v * S::VEC;    /* real columns in this vector */
            float vm = -INFINITY;
            LLMK_UNROLL
            for (int i = 0; i < S::VEC; i++)
                if (i < n) vm = fmaxf(vm, x[u].f(i));
            if (vm > m) {
                s *= expf(m - vm);
                m = vm;
            }
            LLMK_UNROLL
            for (int i = 0; i < S::VEC; i++)
                if (i < n) s += expf(x[u].f(i) - m);
        }
    }
    LLMK_UNROLL
    for (int o = 16; o > 0; o >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, o), so = __shfl_xor_sync(0xffffffffu, s, o);
        lse_combine(m, s, mo, so);
    }
    if (threadIdx.x % 32 == 0) {
        red_m[threadIdx.x / 32] = m;
        red_s[threadIdx.x / 32] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
    for (int w = 1; w < XENT_NT / 32; w++) lse_combine(m, s, red_m[w], red_s[w]);   /* warp order */
    if (threadIdx.x == 0 && losses) losses[row] = logf(s) + m - zt;
    if (!GRAD) return;

    /* pass 2: dlogits over the whole padded row */
    const float inv = 1.0f / s;
    const float dscale = dlosses ? dlosses[row] : *dloss / (float)loss_rows;
    T* d = dlogits + row * Vp;
    for (int v0 = threadIdx.x; v0 < S::NVEC; v0 += XENT_NT * U) {
        VT x[U];
        LLMK_UNROLL
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * XENT_NT;
            if (v < S::NVEC && v * S::VEC < V) x[u] = load_vec_cs<S::VEC>(z + (long long)v * S::VEC);
        }
        LLMK_UNROLL
        for (int u = 0; u < U; u++) {
            const int v = v0 + u * XENT_NT;
            if (v >= S::NVEC) continue;
            VT o;
            LLMK_UNROLL
            for (int i = 0; i < S::VEC; i++) {
                const int c = v * S::VEC + i;
                float g = 0.0f;
                if (c < V) g = (expf(x[u].f(i) - m) * inv - (c == tgt ? 1.0f : 0.0f)) * dscale;
                o.v[i] = from_f32<T>(g);
            }
            store_vec<S::VEC>(d + (long long)v * S::VEC, o);
        }
    }
}

template <class T, int V, int Vp, bool GRAD>
static cudaError_t xent_launch(const char* who, float* losses, T* dlogits, const T* logits, const int* targets,
                               const float* dloss, const float* dlosses, int N, int loss_rows, cudaStream_t stream) {
    typedef XentShape<T, V, Vp> S;
    LLMK_REQUIRE(N >= 0, who, "N (rows) is negative");
    LLMK_REQUIRE((losses || GRAD) && logits && targets && (!GRAD || (dlogits && (dloss || dlosses))), who,
                 "a required pointer is NULL");
    LLMK_REQUIRE(!GRAD || dlosses || loss_rows > 0, who, "loss_rows must be positive");
    LLMK_REQUIRE(aligned_to(logits, sizeof(T) * S::VEC) && (!GRAD || aligned_to(dlogits, sizeof(T) * S::VEC)), who,
                 "logits/dlogits are not aligned to the vector width (VEC * sizeof(T) bytes)");
    if (N == 0) return cudaSuccess;
    LLMGEN_LAUNCH((xent_kernel<T, V, Vp, GRAD>), dim3((unsigned)N), dim3(XENT_NT), 0, stream, losses, dlogits, logits,
                  targets, dloss, dlosses, N, loss_rows);
    return cudaGetLastError();
}

/* losses (N) fp32 (or NULL: not written), dlogits (N, Vp) (may be logits: in place) from logits (N, Vp),
 * targets (N); dlosses (N) per-row gradients, or NULL to use *dloss / loss_rows */
template <class T, int V, int Vp>
cudaError_t softmax_xent_backward(float* losses, T* dlogits, const T* logits, const int* targets, const float* dloss,
                                  const float* dlosses, int N, int loss_rows, cudaStream_t stream = 0) {
    return xent_launch<T, V, Vp, true>("softmax_xent_backward", losses, dlogits, logits, targets, dloss, dlosses, N,
                                       loss_rows, stream);
}
/* losses only (evaluation) */
template <class T, int V, int Vp>
cudaError_t xent_forward(float* losses, const T* logits, const int* targets, int N, cudaStream_t stream = 0) {
    return xent_launch<T, V, Vp, false>("xent_forward", losses, (T*)nullptr, logits, targets, (const float*)nullptr,
                                        (const float*)nullptr, N, 1, stream);
}

}  // namespace llmk

#endif /* LLMK_XENT_CUH */
