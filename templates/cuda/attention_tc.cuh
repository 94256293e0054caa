/* attention_tc.cuh -- causal attention on tensor cores (bf16 builds, T a multiple of 64), for GPT-2's
 * multi-head and Llama's grouped-query attention alike: the flash-attention schedule of attention.cuh
 * (online softmax forward; a dq kernel by query rows and a dk/dv kernel by key rows in the backward,
 * recomputing the probabilities from lse; no atomics, no (T,T) matrix), with every product a 16x16x16
 * wmma tile (bf16 inputs, fp32 accumulation).
 *
 * Templates over the compile-time sizes: NH query heads over KV key/value heads of HD channels, and the
 * row strides QS of q (and dq) and KS of k, v (and dk, dv); y and dy have rows of NH * HD. Operands are
 * addressed as q[b, t, h] = q + (b*T + t)*QS + h*HD and k, v[b, t, g] with KS; query head h reads K/V
 * head g = h / (NH/KV) (HF's repeat_kv order). GPT-2 passes its packed qkv (QS = KS = 3C, k and v at +C
 * and +2C); Llama its separate q, k, v. The dk/dv kernel of a K/V head sums over the query heads of its
 * group in order, so nothing needs atomics. B, T and the softmax scale are arguments.
 *
 * A block is 4 warps; a warp owns 16 query rows (16 key rows in dk/dv), so a block covers 64 rows, and
 * key (query) tiles of 64 rows are staged in shared memory. wmma fragments are opaque (which element a
 * lane holds is unspecified), so the softmax reads the scores from a per-warp shared tile: lanes 2r and
 * 2r+1 own row r, its even and odd columns. The forward's output rows are rescaled by the online
 * softmax, so they live in shared memory too; every other accumulator (dq, dk, dv) stays in fragments
 * until the end. The launchers in attention.cuh call these when attention_tc_usable() and fall back to
 * the CUDA-core kernels otherwise.
 *
 * Needs from the program before it: floatX (bf16), to_float / to_floatX, CUDA_CHECK, LAUNCH_CHECK,
 * LLMGEN_LAUNCH, LLMGEN_DYNAMIC_SMEM and <mma.h> (or the emulation's wmma).
 */
namespace wmma = nvcuda::wmma;
/* wmma tiles: A (16 x 16, row-major), B (16 x 16) stored row-major (B) or as the rows of B^T (Bt),
 * fp32 accumulators */
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, floatX, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::row_major> FragB;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, floatX, wmma::col_major> FragBt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

/* The shared-memory layout of head size HD: 64-row tiles of two bf16 operands, then per warp (4 warps)
 * fp32 tiles of 16 rows (SW: scores, and the staging of results, max(64, HD) columns; OS: the forward's
 * output, HD; DS: dp, 64) and bf16 tiles (PS: p and ds, 64). Each row stride is padded by 16 bytes, so
 * the rows a warp's lanes walk start in different banks (a 64-float row would put all 16 in one), and
 * stays a multiple of 16 bytes as wmma's ldm must; every tile starts 32-byte aligned. SMEM_*: the
 * dynamic shared memory of each kernel, in bytes. */
template <int HD>
struct AttentionTcTiles {
    static_assert(HD % 16 == 0 && HD <= 128, "tensor-core attention: head size a multiple of 16, at most 128");
    static constexpr int SW = (HD > 64 ? HD : 64) + 4, OS = HD + 4, DS = 64 + 4, PS = 64 + 8;
    static constexpr int F = HD / 16;                                  /* 16-channel fragments of a row */
    static constexpr int TILES = 2 * 64 * HD * (int)sizeof(floatX);
    static constexpr int SMEM_FWD = TILES + 4 * (16 * SW + 16 * OS) * 4 + 4 * 16 * PS * 2;
    static constexpr int SMEM_DQ = TILES + 4 * (16 * SW + 16 * DS) * 4 + 4 * 16 * PS * 2;
    static constexpr int SMEM_DKV = TILES + 2 * 64 * 4 + 4 * (16 * SW + 16 * DS) * 4 + 4 * 2 * 16 * PS * 2;
};

/* rows x HD elements with row stride ld (global) -> consecutive rows of shared memory, 16 bytes
 * (8 bf16) per move, by the whole block */
template <int HD>
__device__ __forceinline__ void tc_load_rows(floatX *dst, const floatX *src, long ld, int rows) {
    constexpr int per_row = HD / 8;
    for (int e = threadIdx.x; e < rows * per_row; e += blockDim.x) {
        const int r = e / per_row, c = e % per_row;
        reinterpret_cast<int4 *>(dst + (long)r * HD)[c] = reinterpret_cast<const int4 *>(src + (long)r * ld)[c];
    }
}

/* one warp: 16 rows of HD fp32 accumulators -> floatX at dst (row stride ld), staged through st
 * (16 x sw floats of this warp's shared memory) */
template <int HD>
__device__ __forceinline__ void tc_store_rows(floatX *dst, long ld, const FragC *acc, float *st, int sw) {
    for (int n = 0; n < HD / 16; n++) wmma::store_matrix_sync(st + n * 16, acc[n], sw, wmma::mem_row_major);
    __syncwarp();
    for (int e = threadIdx.x & 31; e < 16 * HD; e += 32)
        dst[(long)(e / HD) * ld + e % HD] = to_floatX(st[(e / HD) * sw + e % HD]);
    __syncwarp();
}

/* the tensor-core kernels need T % 64 == 0 and 32-byte aligned operands (wmma's rule; `addresses`
 * is the bitwise or of every operand's address) */
static inline int attention_tc_usable(int T_, uintptr_t addresses) {
#ifdef LLMGEN_NO_TC_ATTENTION      /* test switch: always take the CUDA-core kernels */
    (void)T_;
    (void)addresses;
    return 0;
#else
    return T_ % 64 == 0 && addresses % 32 == 0;
#endif
}

/* forward: grid (T/64, B*NH), 4 warps; warp w: query rows i0+16w .. i0+16w+15 of one (b, h).
 * shared: k, v tiles (64 x HD bf16 each) | per warp: scores s (16 x SW fp32), output o (16 x OS fp32),
 * probabilities p (16 x PS bf16) */
template <int NH, int KV, int HD, int QS, int KS>
__global__ void __launch_bounds__(128) attention_tc_fwd_kernel(floatX *y, float *lse, const floatX *q,
                                                               const floatX *kk, const floatX *v, float scale, int T_) {
    typedef AttentionTcTiles<HD> L;
    constexpr int SW = L::SW, OS = L::OS, PS = L::PS, F = L::F, YS = NH * HD;
    LLMGEN_DYNAMIC_SMEM(floatX, ks);
    floatX *vs = ks + 64 * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = (float *)(vs + 64 * HD) + warp * (16 * SW + 16 * OS);
    float *ow = sw + 16 * SW;
    floatX *pw = (floatX *)((float *)(vs + 64 * HD) + 4 * (16 * SW + 16 * OS)) + warp * 16 * PS;
    const int b = blockIdx.y / NH, h = blockIdx.y % NH, g = h / (NH / KV);
    const int i0 = blockIdx.x * 64, iw = i0 + warp * 16;
    const floatX *qb = q + (long)b * T_ * QS + h * HD;
    const floatX *kb = kk + (long)b * T_ * KS + g * HD, *vb = v + (long)b * T_ * KS + g * HD;
    FragA qf[F];                                           /* q rows iw .. iw+15 */
    for (int f = 0; f < F; f++) wmma::load_matrix_sync(qf[f], qb + (long)iw * QS + f * 16, QS);
    const int r = lane >> 1, half = lane & 1, i = iw + r;  /* lanes 2r, 2r+1: even / odd columns of row r */
    for (int d = half; d < HD; d += 2) ow[r * OS + d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j0 = 0; j0 < i0 + 64; j0 += 64) {
        __syncthreads();                                   /* the previous tile is consumed */
        tc_load_rows<HD>(ks, kb + (long)j0 * KS, KS, 64);
        tc_load_rows<HD>(vs, vb + (long)j0 * KS, KS, 64);
        __syncthreads();
        if (j0 > iw + 15) continue;                        /* every key of the tile is after this warp's rows */
        for (int n = 0; n < 4; n++) {                      /* s = q k^T, 16 keys at a time */
            FragC acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int f = 0; f < F; f++) {
                FragBt kf;
                wmma::load_matrix_sync(kf, ks + n * 16 * HD + f * 16, HD);
                wmma::mma_sync(acc, qf[f], kf, acc);
            }
            wmma::store_matrix_sync(sw + n * 16, acc, SW, wmma::mem_row_major);
        }
        __syncwarp();
        float mt = m;                                      /* online softmax of row r: max, then exp */
        for (int c = half; c < 64; c += 2) {
            const float s = j0 + c <= i ? sw[r * SW + c] * scale : -INFINITY;
            sw[r * SW + c] = s;
            mt = fmaxf(mt, s);
        }
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        const float corr = expf(m - mt);                   /* 0 on the first tile (m = -inf) */
        float ls = 0.0f;
        for (int c = half; c < 64; c += 2) {
            const float p = expf(sw[r * SW + c] - mt);
            ls += p;
            pw[r * PS + c] = to_floatX(p);
        }
        ls += __shfl_xor_sync(0xffffffffu, ls, 1);
        l = l * corr + ls;
        m = mt;
        for (int d = half; d < HD; d += 2) ow[r * OS + d] *= corr;
        __syncwarp();
        for (int n = 0; n < F; n++) {                      /* o += p v, 16 channels at a time */
            FragC acc;
            wmma::load_matrix_sync(acc, ow + n * 16, OS, wmma::mem_row_major);
            for (int f = 0; f < 4; f++) {
                FragA pf;
                FragB vf;
                wmma::load_matrix_sync(pf, pw + f * 16, PS);
                wmma::load_matrix_sync(vf, vs + f * 16 * HD + n * 16, HD);
                wmma::mma_sync(acc, pf, vf, acc);
            }
            wmma::store_matrix_sync(ow + n * 16, acc, OS, wmma::mem_row_major);
        }
        __syncwarp();
    }
    const float inv = 1.0f / l;
    floatX *o = y + ((long)b * T_ + i) * YS + h * HD;
    for (int d = half; d < HD; d += 2) o[d] = to_floatX(ow[r * OS + d] * inv);
    if ((lane & 1) == 0) lse[((long)b * NH + h) * T_ + i] = m + logf(l);
}

/* backward, dq part: grid (T/64, B*NH), 4 warps; warp w: query rows iw = i0+16w .. iw+15. Per key tile:
 * s = q k^T, dp = dy v^T (fragments -> per-warp fp32 tiles), ds = p (dp - D) scale (bf16 tile),
 * dq += ds k (fragments). shared: k, v tiles | per warp s (16 x SW), dp (16 x DS) fp32, ds (16 x PS) bf16 */
template <int NH, int KV, int HD, int QS, int KS>
__global__ void __launch_bounds__(128) attention_tc_dq_kernel(floatX *dq, const floatX *dy, const floatX *q,
                                                              const floatX *kk, const floatX *v, const floatX *y,
                                                              const float *lse, float scale, int T_) {
    typedef AttentionTcTiles<HD> L;
    constexpr int SW = L::SW, DS = L::DS, PS = L::PS, F = L::F, YS = NH * HD;
    LLMGEN_DYNAMIC_SMEM(floatX, ks);
    floatX *vs = ks + 64 * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = (float *)(vs + 64 * HD) + warp * (16 * SW + 16 * DS);
    float *dpw = sw + 16 * SW;
    floatX *dsw = (floatX *)((float *)(vs + 64 * HD) + 4 * (16 * SW + 16 * DS)) + warp * 16 * PS;
    const int b = blockIdx.y / NH, h = blockIdx.y % NH, g = h / (NH / KV);
    const int i0 = blockIdx.x * 64, iw = i0 + warp * 16;
    const floatX *qb = q + (long)b * T_ * QS + h * HD;
    const floatX *kb = kk + (long)b * T_ * KS + g * HD, *vb = v + (long)b * T_ * KS + g * HD;
    const floatX *dyw = dy + ((long)b * T_ + iw) * YS + h * HD;
    FragA qf[F], gf[F];                                    /* q and dy rows iw .. iw+15 */
    FragC dqf[F];
    for (int f = 0; f < F; f++) {
        wmma::load_matrix_sync(qf[f], qb + (long)iw * QS + f * 16, QS);
        wmma::load_matrix_sync(gf[f], dyw + f * 16, YS);
        wmma::fill_fragment(dqf[f], 0.0f);
    }
    const int r = lane >> 1, half = lane & 1, i = iw + r;  /* lanes 2r, 2r+1: even / odd columns of row r */
    const long row = ((long)b * T_ + i) * YS + h * HD;
    float D = 0.0f;                                        /* D = dy . y of row i (= sum_t2 p dp) */
    for (int d = half; d < HD; d += 2) D += to_float(dy[row + d]) * to_float(y[row + d]);
    D += __shfl_xor_sync(0xffffffffu, D, 1);
    const float li = lse[((long)b * NH + h) * T_ + i];
    for (int j0 = 0; j0 < i0 + 64; j0 += 64) {
        __syncthreads();
        tc_load_rows<HD>(ks, kb + (long)j0 * KS, KS, 64);
        tc_load_rows<HD>(vs, vb + (long)j0 * KS, KS, 64);
        __syncthreads();
        if (j0 > iw + 15) continue;
        for (int n = 0; n < 4; n++) {                      /* s = q k^T, dp = dy v^T */
            FragC s, dp;
            wmma::fill_fragment(s, 0.0f);
            wmma::fill_fragment(dp, 0.0f);
            for (int f = 0; f < F; f++) {
                FragBt kf, vf;
                wmma::load_matrix_sync(kf, ks + n * 16 * HD + f * 16, HD);
                wmma::load_matrix_sync(vf, vs + n * 16 * HD + f * 16, HD);
                wmma::mma_sync(s, qf[f], kf, s);
                wmma::mma_sync(dp, gf[f], vf, dp);
            }
            wmma::store_matrix_sync(sw + n * 16, s, SW, wmma::mem_row_major);
            wmma::store_matrix_sync(dpw + n * 16, dp, DS, wmma::mem_row_major);
        }
        __syncwarp();
        for (int c = half; c < 64; c += 2) {
            const float p = j0 + c <= i ? expf(sw[r * SW + c] * scale - li) : 0.0f;
            dsw[r * PS + c] = to_floatX(p * (dpw[r * DS + c] - D) * scale);
        }
        __syncwarp();
        for (int n = 0; n < F; n++) {                      /* dq += ds k */
            for (int f = 0; f < 4; f++) {
                FragA a;
                FragB kf;
                wmma::load_matrix_sync(a, dsw + f * 16, PS);
                wmma::load_matrix_sync(kf, ks + f * 16 * HD + n * 16, HD);
                wmma::mma_sync(dqf[n], a, kf, dqf[n]);
            }
        }
    }
    tc_store_rows<HD>(dq + ((long)b * T_ + iw) * QS + h * HD, QS, dqf, sw, SW);
}

/* backward, dk/dv part: grid (T/64, B*KV), 4 warps; warp w: key rows jw = j0+16w .. jw+15 of K/V head g.
 * For each query head of the group (NH/KV, in order) and each query tile t0 >= j0: s^T = k q^T,
 * dp^T = v dy^T (per-warp fp32 tiles), p^T and ds^T = p^T (dp^T - D) scale (bf16 tiles), dv += p^T dy,
 * dk += ds^T q (fragments). shared: q, dy tiles, lse and D of the tile's rows | per warp s (16 x SW),
 * dp (16 x DS) fp32, p, ds (16 x PS) bf16 */
template <int NH, int KV, int HD, int QS, int KS>
__global__ void __launch_bounds__(128) attention_tc_dkv_kernel(floatX *dk, floatX *dv, const floatX *dy,
                                                               const floatX *q, const floatX *kk, const floatX *v,
                                                               const floatX *y, const float *lse, float scale,
                                                               int T_) {
    typedef AttentionTcTiles<HD> L;
    constexpr int SW = L::SW, DS = L::DS, PS = L::PS, F = L::F, YS = NH * HD, R = NH / KV;
    LLMGEN_DYNAMIC_SMEM(floatX, qs);
    floatX *gs = qs + 64 * HD;
    float *lt = (float *)(gs + 64 * HD), *Dt = lt + 64;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float *sw = Dt + 64 + warp * (16 * SW + 16 * DS);
    float *dpw = sw + 16 * SW;
    floatX *pw = (floatX *)(Dt + 64 + 4 * (16 * SW + 16 * DS)) + warp * 2 * 16 * PS;
    floatX *dsw = pw + 16 * PS;
    const int b = blockIdx.y / KV, g = blockIdx.y % KV;
    const int j0 = blockIdx.x * 64, jw = j0 + warp * 16;
    const long krow = ((long)b * T_ + jw) * KS + g * HD;
    FragA kf[F], vf[F];                                    /* k and v rows jw .. jw+15 */
    FragC dkf[F], dvf[F];
    for (int f = 0; f < F; f++) {
        wmma::load_matrix_sync(kf[f], kk + krow + f * 16, KS);
        wmma::load_matrix_sync(vf[f], v + krow + f * 16, KS);
        wmma::fill_fragment(dkf[f], 0.0f);
        wmma::fill_fragment(dvf[f], 0.0f);
    }
    const int r = lane >> 1, half = lane & 1, j = jw + r;
    for (int h = g * R; h < (g + 1) * R; h++) {            /* the group's query heads, in order */
        const floatX *qb = q + (long)b * T_ * QS + h * HD;
        for (int t0 = j0; t0 < T_; t0 += 64) {             /* query tiles at or after the block's first key */
            __syncthreads();
            tc_load_rows<HD>(qs, qb + (long)t0 * QS, QS, 64);
            tc_load_rows<HD>(gs, dy + ((long)b * T_ + t0) * YS + h * HD, YS, 64);
            {                                              /* threads 2t, 2t+1: lse and D = dy . y of query t0+t */
                const int t = threadIdx.x >> 1, e0 = (threadIdx.x & 1) * (HD / 2);
                const long row = ((long)b * T_ + t0 + t) * YS + h * HD;
                float D = 0.0f;
                for (int d = e0; d < e0 + HD / 2; d++) D += to_float(dy[row + d]) * to_float(y[row + d]);
                D += __shfl_xor_sync(0xffffffffu, D, 1);
                if ((threadIdx.x & 1) == 0) {
                    Dt[t] = D;
                    lt[t] = lse[((long)b * NH + h) * T_ + t0 + t];
                }
            }
            __syncthreads();
            for (int n = 0; n < 4; n++) {                  /* s^T = k q^T, dp^T = v dy^T */
                FragC s, dp;
                wmma::fill_fragment(s, 0.0f);
                wmma::fill_fragment(dp, 0.0f);
                for (int f = 0; f < F; f++) {
                    FragBt qt, gt;
                    wmma::load_matrix_sync(qt, qs + n * 16 * HD + f * 16, HD);
                    wmma::load_matrix_sync(gt, gs + n * 16 * HD + f * 16, HD);
                    wmma::mma_sync(s, kf[f], qt, s);
                    wmma::mma_sync(dp, vf[f], gt, dp);
                }
                wmma::store_matrix_sync(sw + n * 16, s, SW, wmma::mem_row_major);
                wmma::store_matrix_sync(dpw + n * 16, dp, DS, wmma::mem_row_major);
            }
            __syncwarp();
            for (int c = half; c < 64; c += 2) {           /* key j, query t0 + c */
                const float p = t0 + c >= j ? expf(sw[r * SW + c] * scale - lt[c]) : 0.0f;
                pw[r * PS + c] = to_floatX(p);
                dsw[r * PS + c] = to_floatX(p * (dpw[r * DS + c] - Dt[c]) * scale);
            }
            __syncwarp();
            for (int n = 0; n < F; n++) {                  /* dv += p^T dy, dk += ds^T q */
                for (int f = 0; f < 4; f++) {
                    FragA pa, da;
                    FragB gb, qm;
                    wmma::load_matrix_sync(pa, pw + f * 16, PS);
                    wmma::load_matrix_sync(da, dsw + f * 16, PS);
                    wmma::load_matrix_sync(gb, gs + f * 16 * HD + n * 16, HD);
                    wmma::load_matrix_sync(qm, qs + f * 16 * HD + n * 16, HD);
                    wmma::mma_sync(dvf[n], pa, gb, dvf[n]);
                    wmma::mma_sync(dkf[n], da, qm, dkf[n]);
                }
            }
        }
    }
    tc_store_rows<HD>(dk + krow, KS, dkf, sw, SW);
    tc_store_rows<HD>(dv + krow, KS, dvf, sw, SW);
}

/* host launchers over (T/64, rows) blocks of 128 threads; each kernel's shared memory is raised above
 * 48 KiB once per instance */
template <int NH, int KV, int HD, int QS, int KS>
static void attention_tc_fwd(floatX *y, float *lse, const floatX *q, const floatX *kk, const floatX *v, float scale,
                             int B_, int T_) {
    constexpr int smem = AttentionTcTiles<HD>::SMEM_FWD;
    static bool configured = false;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_tc_fwd_kernel<NH, KV, HD, QS, KS>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        configured = true;
    }
    LLMGEN_LAUNCH((attention_tc_fwd_kernel<NH, KV, HD, QS, KS>), dim3(T_ / 64, B_ * NH), dim3(128), smem, 0,
                  y, lse, q, kk, v, scale, T_);
    LAUNCH_CHECK("attention_tc_fwd_kernel");
}

template <int NH, int KV, int HD, int QS, int KS>
static void attention_tc_bwd(floatX *dq, floatX *dk, floatX *dv, const floatX *dy, const floatX *q,
                             const floatX *kk, const floatX *v, const floatX *y, const float *lse, float scale,
                             int B_, int T_) {
    constexpr int smem_dq = AttentionTcTiles<HD>::SMEM_DQ, smem_dkv = AttentionTcTiles<HD>::SMEM_DKV;
    static bool configured = false;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_tc_dq_kernel<NH, KV, HD, QS, KS>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem_dq));
        CUDA_CHECK(cudaFuncSetAttribute(attention_tc_dkv_kernel<NH, KV, HD, QS, KS>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem_dkv));
        configured = true;
    }
    LLMGEN_LAUNCH((attention_tc_dq_kernel<NH, KV, HD, QS, KS>), dim3(T_ / 64, B_ * NH), dim3(128), smem_dq, 0,
                  dq, dy, q, kk, v, y, lse, scale, T_);
    LAUNCH_CHECK("attention_tc_dq_kernel");
    LLMGEN_LAUNCH((attention_tc_dkv_kernel<NH, KV, HD, QS, KS>), dim3(T_ / 64, B_ * KV), dim3(128), smem_dkv, 0,
                  dk, dv, dy, q, kk, v, y, lse, scale, T_);
    LAUNCH_CHECK("attention_tc_dkv_kernel");
}
