/* embed.cuh -- token embedding (plus GPT-2's position rows), forward and deterministic backward.
 *
 * CONTRACT
 *   Templates over the storage type T (float or __nv_bfloat16) and the row length C (any C; rows
 *   move as C / VEC vectors, VEC = vec_width<T>(C), 16 bytes when C is a multiple of 8 / 4).
 *
 *   Forward      out[r] = T(wte[tokens[r]] + wpe[r % seq_len]), or wte[tokens[r]] when wpe is NULL
 *                (Llama; and GPT-2's token embedding followed by a separate position add, which
 *                rounds the same since wte[tokens[r]] is already T). One thread per vector.
 *   Backward     dwte[v] (+)= sum of the dx rows of token v, in position order, in fp32: the
 *   (tokens)     buckets of embed_buckets_build (host: a stable counting sort of the positions by
 *                token) give each distinct token one block (C / VEC threads, each a vector of
 *                columns, several blocks per bucket when C / VEC > 256), so repeated tokens never
 *                race and no atomics are needed; the same bits as the trainer's kernel of today.
 *                The buckets are ordered LARGEST FIRST (ties by token id), so the block of the most
 *                frequent token (the longest serial sum) starts first instead of last. A bucket's
 *                positions are staged in shared memory, so each thread keeps EMBED_UNROLL (16) row
 *                loads in flight without waiting on index loads.
 *   Backward     dwpe[t] (+)= sum over b of dx[b, t], in b order, fp32: a column sum per position,
 *   (positions)  one thread per vector of columns. Deterministic.
 *   accumulate = 0 overwrites: the token launcher first clears the whole dwte (rows of tokens
 *   absent from the batch get 0), the position launcher writes every row.
 *
 *   Host: embed_buckets_build(order, token, start, counts, tokens, n, V) fills order (n: positions
 *   grouped by bucket, ascending within one), token (per bucket) and start (buckets + 1 offsets),
 *   using counts (V ints of host scratch), and returns the bucket count; it stops the program
 *   with one line when a token is outside [0, V). Copy the three arrays to the device (the trainer
 *   sends them with the tokens) and pass their device copies to embedding_backward_tokens.
 */
#ifndef LLMK_EMBED_CUH
#define LLMK_EMBED_CUH

#include <algorithm>
#ifndef LLMK_COMMON_CUH   /* pasted after common.cuh (llmgen's train.cu): already there */
#include "common.cuh"
#endif

namespace llmk {

/* threads per block; rows in flight per thread (tokens: a bucket can be hundreds of rows long;
 * positions: B rows); positions staged per shared-memory load */
enum { EMBED_NT = 256, EMBED_UNROLL = 16, EMBED_POS_UNROLL = 8, EMBED_STAGE = 256 };

template <class T, int C>
struct EmbedShape {
    static constexpr int VEC = vec_width<T>(C);
    static constexpr int NVEC = C / VEC;
    static constexpr int NT = NVEC >= EMBED_NT ? EMBED_NT : (NVEC + 31) / 32 * 32;   /* threads per bucket block */
    static constexpr int PARTS = (NVEC + NT - 1) / NT;                               /* blocks per bucket */
};

/* ---- forward ---- */
template <class T, int C>
__global__ void __launch_bounds__(EMBED_NT)
    embedding_forward_kernel(T* out, const int* tokens, const T* wte, const T* wpe, int N, int seq_len) {
    typedef EmbedShape<T, C> S;
    const long long i = (long long)blockIdx.x * EMBED_NT + threadIdx.x;
    if (i >= (long long)N * S::NVEC) return;
    const long long r = i / S::NVEC;
    const int v = (int)(i % S::NVEC);
    const Vec<T, S::VEC> e = load_vec<S::VEC>(wte + (long long)tokens[r] * C + (long long)v * S::VEC);
    if (!wpe) {
        store_vec<S::VEC>(out + r * C + (long long)v * S::VEC, e);
        return;
    }
    const Vec<T, S::VEC> p = load_vec<S::VEC>(wpe + (r % seq_len) * C + (long long)v * S::VEC);
    Vec<T, S::VEC> o;
    LLMK_UNROLL
    for (int j = 0; j < S::VEC; j++) o.v[j] = from_f32<T>(e.f(j) + p.f(j));
    store_vec<S::VEC>(out + r * C + (long long)v * S::VEC, o);
}

/* out (N, C) from tokens (N), wte (V, C) and wpe (>= seq_len, C) or NULL */
template <class T, int C>
cudaError_t embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int N, int seq_len,
                              cudaStream_t stream = 0) {
    typedef EmbedShape<T, C> S;
    const size_t va = sizeof(T) * S::VEC;
    LLMK_REQUIRE(N >= 0 && (!wpe || seq_len >= 1), "embedding_forward", "N must be >= 0 and seq_len >= 1");
    LLMK_REQUIRE(out && tokens && wte, "embedding_forward", "a required pointer is NULL");
    LLMK_REQUIRE(aligned_to(out, va) && aligned_to(wte, va) && (!wpe || aligned_to(wpe, va)), "embedding_forward",
                 "a T array is not aligned to the vector width (VEC * sizeof(T) bytes)");
    if (N == 0) return cudaSuccess;
    LLMGEN_LAUNCH((embedding_forward_kernel<T, C>), dim3((unsigned)ceil_div((long long)N * S::NVEC, EMBED_NT)),
                  dim3(EMBED_NT), 0, stream, out, tokens, wte, wpe, N, seq_len);
    return cudaGetLastError();
}

/* ---- host: the buckets ---- */
static inline int embed_buckets_build(int* order, int* token, int* start, int* counts, const int* tokens, int n,
                                      int V) {
    memset(counts, 0, sizeof(int) * (size_t)V);
    int nb = 0;
    for (int i = 0; i < n; i++) {
        LLMK_REQUIRE(tokens[i] >= 0 && tokens[i] < V, "embed_buckets_build", "a token id is outside [0, vocabulary)");
        if (counts[tokens[i]]++ == 0) token[nb++] = tokens[i];
    }
    std::sort(token, token + nb,     /* largest first, ties by token id */
              [counts](int a, int b) { return counts[a] != counts[b] ? counts[a] > counts[b] : a < b; });
    int pos = 0;
    for (int b = 0; b < nb; b++) {
        start[b] = pos;
        const int c = counts[token[b]];
        counts[token[b]] = pos;            /* from here on: the next free slot of that token */
        pos += c;
    }
    start[nb] = n;
    for (int i = 0; i < n; i++) order[counts[tokens[i]]++] = i;
    return nb;
}

/* ---- backward, tokens ---- */
/* grid: nbuckets * PARTS blocks (bucket-major: the largest bucket's blocks first), NT threads, one
 * vector of columns each. The bucket's positions are staged in shared memory EMBED_STAGE at a time
 * (one cooperative load), so the row loads do not wait on index loads; EMBED_UNROLL rows in flight. */
template <class T, int C>
__global__ void __launch_bounds__(EmbedShape<T, C>::NT)
    embedding_backward_tokens_kernel(float* dwte, const T* dx, const int* order, const int* token, const int* start,
                                     int accumulate) {
    typedef EmbedShape<T, C> S;
    __shared__ int s_pos[EMBED_STAGE];
    const int bucket = blockIdx.x / S::PARTS, v = (blockIdx.x % S::PARTS) * S::NT + threadIdx.x;
    const bool active = v < S::NVEC;          /* idle threads still help stage the positions */
    const int j0 = start[bucket], j1 = start[bucket + 1];
    float s[S::VEC];
    LLMK_UNROLL
    for (int k = 0; k < S::VEC; k++) s[k] = 0.0f;
    for (int c0 = j0; c0 < j1; c0 += EMBED_STAGE) {
        const int n = j1 - c0 < EMBED_STAGE ? j1 - c0 : EMBED_STAGE;
        __syncthreads();                      /* the previous stage is consumed */
        for (int i = threadIdx.x; i < n; i += S::NT) s_pos[i] = order[c0 + i];
        __syncthreads();
        if (!active) continue;
        for (int j = 0; j < n; j += EMBED_UNROLL) {
            Vec<T, S::VEC> x[EMBED_UNROLL];
            LLMK_UNROLL
            for (int u = 0; u < EMBED_UNROLL; u++)
                if (j + u < n) x[u] = load_vec<S::VEC>(dx + (long long)s_pos[j + u] * C + (long long)v * S::VEC);
            LLMK_UNROLL
            for (int u = 0; u < EMBED_UNROLL; u++)
                if (j + u < n)
                    LLMK_UNROLL
                    for (int k = 0; k < S::VEC; k++) s[k] += x[u].f(k);     /* position order */
        }
    }
    if (!active) return;
    float* d = dwte + (long long)token[bucket] * C + (long long)v * S::VEC;
    constexpr int W = S::VEC < 4 ? S::VEC : 4;
    LLMK_UNROLL
    for (int c = 0; c < S::VEC; c += W) {
        FVec<W> o;
        if (accumulate) o = load_f<W>(d + c);
        LLMK_UNROLL
        for (int k = 0; k < W; k++) o.v[k] = accumulate ? o.v[k] + s[c + k] : s[c + k];
        store_f<W>(d + c, o);
    }
}

/* dwte (V, C) fp32 from dx (N, C) through the device copies of the buckets (nbuckets of them) */
template <class T, int C>
cudaError_t embedding_backward_tokens(float* dwte, const T* dx, const int* order, const int* token, const int* start,
                                      int nbuckets, int V, int accumulate, cudaStream_t stream = 0) {
    typedef EmbedShape<T, C> S;
    LLMK_REQUIRE(nbuckets >= 0 && V >= 1, "embedding_backward_tokens", "nbuckets must be >= 0, V >= 1");
    LLMK_REQUIRE(dwte && dx && (nbuckets == 0 || (order && token && start)), "embedding_backward_tokens",
                 "a required pointer is NULL");
    LLMK_REQUIRE(aligned_to(dx, sizeof(T) * S::VEC) && aligned_to(dwte, 4 * (S::VEC < 4 ? S::VEC : 4)),
                 "embedding_backward_tokens", "dx or dwte is not aligned to the vector width");
    if (!accumulate) {
        const cudaError_t e = cudaMemsetAsync(dwte, 0, sizeof(float) * (size_t)V * C, stream);
        if (e != cudaSuccess) return e;
    }
    if (nbuckets == 0) return cudaSuccess;
    const unsigned grid = (unsigned)((long long)nbuckets * S::PARTS);
    LLMGEN_LAUNCH((embedding_backward_tokens_kernel<T, C>), dim3(grid), dim3(S::NT), 0, stream, dwte, dx, order, token,
                  start, accumulate);
    return cudaGetLastError();
}

/* ---- backward, positions ---- */
template <class T, int C>
__global__ void __launch_bounds__(EMBED_NT)
    embedding_backward_positions_kernel(float* dwpe, const T* dx, int B, int seq_len, int accumulate) {
    typedef EmbedShape<T, C> S;
    const long long i = (long long)blockIdx.x * EMBED_NT + threadIdx.x;
    if (i >= (long long)seq_len * S::NVEC) return;
    const long long t = i / S::NVEC;
    const int v = (int)(i % S::NVEC);
    float s[S::VEC];
    LLMK_UNROLL
    for (int k = 0; k < S::VEC; k++) s[k] = 0.0f;
    for (int b0 = 0; b0 < B; b0 += EMBED_POS_UNROLL) {
        Vec<T, S::VEC> x[EMBED_POS_UNROLL];
        LLMK_UNROLL
        for (int u = 0; u < EMBED_POS_UNROLL; u++)
            if (b0 + u < B)
                x[u] = load_vec<S::VEC>(dx + ((long long)(b0 + u) * seq_len + t) * C + (long long)v * S::VEC);
        LLMK_UNROLL
        for (int u = 0; u < EMBED_POS_UNROLL; u++)
            if (b0 + u < B)
                LLMK_UNROLL
                for (int k = 0; k < S::VEC; k++) s[k] += x[u].f(k);     /* b order */
    }
    float* d = dwpe + t * C + (long long)v * S::VEC;
    constexpr int W = S::VEC < 4 ? S::VEC : 4;
    LLMK_UNROLL
    for (int c = 0; c < S::VEC; c += W) {
        FVec<W> o;
        if (accumulate) o = load_f<W>(d + c);
        LLMK_UNROLL
        for (int k = 0; k < W; k++) o.v[k] = accumulate ? o.v[k] + s[c + k] : s[c + k];
        store_f<W>(d + c, o);
    }
}

/* dwpe (seq_len, C) fp32 from dx (B, seq_len, C) */
template <class T, int C>
cudaError_t embedding_backward_positions(float* dwpe, const T* dx, int B, int seq_len, int accumulate,
                                         cudaStream_t stream = 0) {
    typedef EmbedShape<T, C> S;
    LLMK_REQUIRE(B >= 0 && seq_len >= 0, "embedding_backward_positions", "B and seq_len must be >= 0");
    LLMK_REQUIRE(dwpe && dx, "embedding_backward_positions", "a required pointer is NULL");
    LLMK_REQUIRE(aligned_to(dx, sizeof(T) * S::VEC) && aligned_to(dwpe, 4 * (S::VEC < 4 ? S::VEC : 4)),
                 "embedding_backward_positions", "dx or dwpe is not aligned to the vector width");
    if (seq_len == 0) return cudaSuccess;
    LLMGEN_LAUNCH((embedding_backward_positions_kernel<T, C>),
                  dim3((unsigned)ceil_div((long long)seq_len * S::NVEC, EMBED_NT)), dim3(EMBED_NT), 0, stream, dwpe, dx,
                  B, seq_len, accumulate);
    return cudaGetLastError();
}

}  // namespace llmk

#endif /* LLMK_EMBED_CUH */
