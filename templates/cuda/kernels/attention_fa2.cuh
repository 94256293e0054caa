/* attention_fa2.cuh -- causal attention at FlashAttention-2 class on the tensor cores: bf16 inputs,
 * fp32 accumulation, forward and backward, multi-head (GPT-2) and grouped-query (Llama) alike.
 *
 * CONTRACT
 *   Include it after ptx.cuh (which comes after emulate.h, or after the CUDA headers under nvcc). It
 *   holds no Jinja syntax and includes only <stdio.h>, so the generator may paste it into train.cu.
 *   Everything lives in namespace llmgen_fa2. The same source builds with nvcc (sm_80 or newer: mma
 *   bf16, ldmatrix, cp.async) and, unchanged, with g++ -DLLMGEN_EMULATE on the CPU, where every PTX
 *   instruction is modelled lane by lane and shared-memory bank conflicts are counted per kernel.
 *
 *   Shapes (HD = head size, 64 or 128; NH query heads; KV key/value heads, NH % KV == 0; query head h
 *   reads K/V head h / (NH/KV), HF's repeat_kv order; MHA is KV == NH):
 *     q[b, t, h, :] = q + (b*T + t)*q_stride  + h*HD     (bf16)   likewise dq with dq_stride
 *     k[b, t, g, :] = k + (b*T + t)*kv_stride + g*HD     (bf16)   likewise v; dk, dv with dkv_stride
 *     o[b, t, h, :] = o + (b*T + t)*o_stride  + h*HD     (bf16)   likewise dout (same stride)
 *     lse[(b*NH + h)*T + t], D[(b*NH + h)*T + t]         (fp32, natural log; D = sum_d dout*o)
 *   GPT-2's packed qkv (B, T, 3C): q = qkv, k = qkv + C, v = qkv + 2C, q_stride = kv_stride = 3C
 *   (and the gradients into dqkv the same way); Llama's separate q, k, v: NH*HD and KV*HD.
 *   Every stride a multiple of 8 elements and every pointer 16-byte aligned (16-byte cp.async and
 *   vector stores); T >= 1 is arbitrary (ragged tails are zero-filled and masked). The softmax scale
 *   is 1/sqrt(HD).
 *
 *   o[b,t,h]   = sum_{t2 <= t} softmax_t2(q[b,t,h] . k[b,t2,g] / sqrt(HD)) v[b,t2,g]
 *   lse[b,h,t] = log sum_{t2 <= t} exp(q[b,t,h] . k[b,t2,g] / sqrt(HD))
 *   dq, dk, dv: the gradients of sum(dout * o); dk/dv of K/V head g sum the query heads of its group
 *   in ascending order; every output is written (=), not accumulated, and bitwise reproducible (no
 *   atomics: each output element has one writer, and every sum has a fixed order).
 *
 *   Host API (each returns cudaSuccess, or cudaErrorInvalidValue after printing one line that names
 *   the bad argument, or the launch's error):
 *     attention_fwd<HD>(o, lse, q, k, v, B, T, NH, KV, q_stride, kv_stride, o_stride, stream)
 *     attention_bwd<HD>(dq, dk, dv, D, dout, q, k, v, o, lse, B, T, NH, KV,
 *                       q_stride, kv_stride, o_stride, dq_stride, dkv_stride, stream)
 *   attention_bwd runs three kernels in order on `stream`: D = rowsum(dout * o) into the caller's
 *   scratch D (B*NH*T floats, overwritten), then dk/dv, then dq. lse is the forward's (B*NH*T
 *   floats). attention_fwd_launch<HD, C> / attention_bwd_launch<HD, C> take the tile configuration as
 *   a class C (the members of Fa2Tiles<HD>, which the plain launchers use; the tests try others).
 *   Dynamic shared memory above 48 KiB is opted into with cudaFuncSetAttribute at a launcher's first
 *   call (once per instantiation and process: one process drives one device).
 *
 * THE KERNELS (README.md beside this file: the schedule, the layouts, the determinism, the costs)
 *   NW warps per block; a warp owns MT m16 tiles (16*MT consecutive rows); fragments "in registers"
 *   are loaded once per block, the others re-read from shared memory per tile (fewer registers).
 *   attention_fwd_kernel<HD, NW, MT, BN, Q_REGS>   one block per (b, h, BM = 16*MT*NW query rows).
 *       Key/value tiles of BN rows are double-buffered with cp.async; S = Q K^T, the online softmax
 *       (exp2, log2(e) folded into the scale) and O += P V stay in registers: P's fp32 accumulators
 *       are repacked as bf16 A fragments (the m16n8 accumulator layout of two n-tiles is the m16k16
 *       A layout). Each ldmatrix of K or V serves the warp's MT m-tiles.
 *   attention_bwd_d_kernel<HD>                D = rowsum(dout * o), HD/8 lanes per row and head.
 *   attention_bwd_dkv_kernel<HD, NW, MT, BQ, KV_REGS>   one block per (b, g, BN = 16*MT*NW keys); it
 *       walks the query heads of group g in order and, for each, the query tiles (BQ rows) from the
 *       diagonal on; Q, dout (cp.async) and lse, D (plain loads one step ahead) double-buffered.
 *       Transposed products keep everything in registers: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
 *       dS^T = P^T (dP^T - D), dK += dS^T Q.
 *   attention_bwd_dq_kernel<HD, NW, MT, BN, QO_REGS>   one block per (b, h, 16*MT*NW query rows), key
 *       tiles up to the diagonal: S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K.
 *   Blocks are numbered heaviest first: the forward and dq take the last query tiles (the most keys)
 *   first, dk/dv the first key tiles (the most queries) first, every head of one tile before the next.
 *   Each kernel has two instances of its tile body: one with the causal tests (the diagonal tiles),
 *   one without a single test (the rest), chosen per tile by a block-uniform branch.

 * SHARED MEMORY LAYOUT
 *   A tile of rows of HD bf16 (128 or 256 bytes) is stored with its 16-byte chunks XOR-swizzled:
 *   chunk c of row r lies at chunk c ^ (r & 7). Every ldmatrix phase (8 rows, one logical chunk)
 *   and every cp.async / 16-byte phase (8 consecutive chunks of one row) then touches 8 distinct
 *   16-byte bank groups: conflict-free, which the emulation counts (tests/test_attention_fa2.py).
 */
#ifndef LLMGEN_ATTENTION_FA2_CUH
#define LLMGEN_ATTENTION_FA2_CUH

#ifndef LLMGEN_PTX_CUH
#error "attention_fa2.cuh: include ptx.cuh first"
#endif

#include <stdio.h>

#if LLMGEN_EMULATED
#define LLMGEN_FA2_UNROLL
#else
#define LLMGEN_FA2_UNROLL _Pragma("unroll")
#endif

namespace llmgen_fa2 {

typedef __nv_bfloat16 bf16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/* The tile configurations of the plain launchers, per head size (the reasoning and ptxas's numbers:
 * README.md). FWD: NW warps of MT m16 tiles (16*MT query rows each), BN keys per tile, Q's fragments in
 * registers or read from shared memory per tile; DQ: the same for dq (Q and dO); DKV: NW warps of MT m16
 * tiles of keys, BQ queries per tile, K's and V's fragments in registers or not. A class with these
 * members is what the *_launch<HD, C> variants take. */
template <int HD>
struct Fa2Tiles;
template <>
struct Fa2Tiles<64> {
    static constexpr int FWD_NW = 4, FWD_MT = 2, FWD_BN = 64;
    static constexpr bool FWD_Q_REGS = true;
    static constexpr int DQ_NW = 4, DQ_MT = 2, DQ_BN = 32;
    static constexpr bool DQ_QO_REGS = false;
    static constexpr int DKV_NW = 4, DKV_MT = 1, DKV_BQ = 64;
    static constexpr bool DKV_KV_REGS = true;
};
template <>
struct Fa2Tiles<128> {
    static constexpr int FWD_NW = 4, FWD_MT = 2, FWD_BN = 32;
    static constexpr bool FWD_Q_REGS = false;
    static constexpr int DQ_NW = 4, DQ_MT = 1, DQ_BN = 32;
    static constexpr bool DQ_QO_REGS = true;
    static constexpr int DKV_NW = 4, DKV_MT = 1, DKV_BQ = 32;
    static constexpr bool DKV_KV_REGS = false;
};

/* ---- device helpers ------------------------------------------------------------------------------ */
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

/* Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile of HD-element rows. */
template <int HD>
__device__ __forceinline__ int swz(int row, int chunk) {
    static_assert(HD % 64 == 0, "the XOR swizzle needs rows of a multiple of 8 chunks (HD a multiple of 64)");
    return row * HD + ((chunk ^ (row & 7)) << 3);
}

/* cp.async of ROWS rows of HD bf16 (global row stride `stride`) into a swizzled tile, by the NT
 * threads of the block, one 16-byte chunk per thread and step: thread c takes chunk c % (HD/8) of
 * row c / (HD/8), so the 8 lanes of a phase fill 8 chunks of one row. Rows >= valid are zero-filled
 * (src-size 0: nothing is read). One commit group is the caller's. */
template <int HD, int ROWS, int NT>
__device__ __forceinline__ void cp_tile(bf16* s, const bf16* g, long stride, int valid) {
    constexpr int CPR = HD / 8, N = ROWS * CPR, STEPS = (N + NT - 1) / NT;
    static_assert(N % 32 == 0 && NT % 32 == 0, "whole warps issue the copies");
    LLMGEN_FA2_UNROLL
    for (int e = 0; e < STEPS; e++) {
        const int c = threadIdx.x + e * NT;
        if (N % NT != 0 && c >= N) break; /* warp-uniform: N is a multiple of 32 */
        const int r = c / CPR, ch = c % CPR;
        const bool ok = r < valid;
        ptx_cp_async_cg16(s + swz<HD>(r, ch), ok ? g + r * stride + ch * 8 : g, ok ? 16 : 0);
    }
}

/* A compile-time flag for the generic lambdas that hold a tile's work: Flag<true>() instantiates the
 * masked body (the diagonal tiles), Flag<false>() the one without a single test (all the others). */
template <bool B>
struct Flag {
    static constexpr bool value = B;
};

/* The ldmatrix addresses. Row r0 + i and 16-byte chunk 2kk + h of a swizzled tile (r0 a multiple of 8,
 * h = 0 or 1) lie at element r0*HD + (i*HD + ((h ^ (i & 7)) << 3)) ^ (kk << 4): the lane's part is one
 * per-thread constant and each k-step is an XOR with an immediate (the chunk field lies below HD). */
template <int HD>
__device__ __forceinline__ int lane_off_a() { /* lanes 0-15: rows 0-15, chunk 0; lanes 16-31: the same, chunk 1 */
    const int lane = threadIdx.x & 31;
    return (lane & 15) * HD + (((lane >> 4) ^ (lane & 7)) << 3);
}
template <int HD>
__device__ __forceinline__ int lane_off_bn() { /* lanes 0-7 rows 0-7 chunk 0, 8-15 chunk 1; 16-31 rows 8-15 */
    const int lane = threadIdx.x & 31;
    return ((lane & 7) + ((lane >> 4) << 3)) * HD + ((((lane >> 3) & 1) ^ (lane & 7)) << 3);
}

/* mma's A fragment: rows r0 .. r0+15, columns 16kk .. 16kk+15 of a swizzled tile (ldmatrix.x4 of its
 * four 8x8 quarters: lanes 0-15 rows 0-15 of the left half, lanes 16-31 of the right half). */
template <int HD>
__device__ __forceinline__ void ldsm_a(uint32_t (&a)[4], const bf16* s, int r0, int kk) {
    ptx_ldmatrix_x4(a, s + r0 * HD + (lane_off_a<HD>() ^ (kk << 4)));
}

/* B fragments of two n-tiles when the tile's rows are the n index (K in Q K^T): rows n0 .. n0+15,
 * columns (the k index) 16kk .. 16kk+15. b[0..1]: n-tile n0 .. n0+7, b[2..3]: n0+8 .. n0+15. */
template <int HD>
__device__ __forceinline__ void ldsm_b_rows_n(uint32_t (&b)[4], const bf16* s, int n0, int kk) {
    ptx_ldmatrix_x4(b, s + n0 * HD + (lane_off_bn<HD>() ^ (kk << 4)));
}

/* B fragments of two n-tiles when the tile's rows are the k index (V in P V): rows k0 .. k0+15,
 * columns (the n index) 8c .. 8c+15 (c even), through ldmatrix .trans. b[0..1]: columns 8c .., b[2..3]:
 * 8c+8 .. */
template <int HD>
__device__ __forceinline__ void ldsm_b_rows_k(uint32_t (&b)[4], const bf16* s, int k0, int c) {
    ptx_ldmatrix_x4_trans(b, s + k0 * HD + (lane_off_a<HD>() ^ (c << 3)));
}

__device__ __forceinline__ void copy_frag(uint32_t (&d)[4], const uint32_t (&a)[4]) {
    d[0] = a[0];
    d[1] = a[1];
    d[2] = a[2];
    d[3] = a[3];
}

/* d += a * (b0, b1) */
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    ptx_mma_m16n8k16_bf16(d, a, b, d);
}

/* Two m16n8 fp32 accumulators (columns 0-7 and 8-15 of 16 rows) as one m16k16 bf16 A fragment: the
 * accumulator's (row g, columns 2t, 2t+1) and (row g+8, ...) are exactly A's a[0] and a[1] for the
 * left half, a[2] and a[3] for the right: scores become the next product's operand without shared
 * memory. */
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = ptx_pack_bf16x2(c0[0], c0[1]);
    a[1] = ptx_pack_bf16x2(c0[2], c0[3]);
    a[2] = ptx_pack_bf16x2(c1[0], c1[1]);
    a[3] = ptx_pack_bf16x2(c1[2], c1[3]);
}

/* One warp's 16 rows of HD fp32 accumulators (acc[n-tile][4]) times `mul`, as bf16, through its own
 * 16 rows r0 .. r0+15 of a swizzled shared tile (4-byte stores: lanes g, t of a phase hit chunk
 * (n ^ row) word t, 32 distinct banks), then out to global rows row0 + r (< T) with 16-byte stores,
 * a row's chunks from consecutive lanes. The warp must be done reading those 16 shared rows. */
template <int HD>
__device__ __forceinline__ void store_rows(bf16* s, int r0, const float (&acc)[HD / 8][4], float mul, bf16* gdst,
                                           long stride, int row0, int T) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    LLMGEN_FA2_UNROLL
    for (int n = 0; n < HD / 8; n++) {
        ptx_st_shared(reinterpret_cast<uint32_t*>(s + swz<HD>(r0 + g, n) + 2 * t),
                      ptx_pack_bf16x2(acc[n][0] * mul, acc[n][1] * mul));
        ptx_st_shared(reinterpret_cast<uint32_t*>(s + swz<HD>(r0 + g + 8, n) + 2 * t),
                      ptx_pack_bf16x2(acc[n][2] * mul, acc[n][3] * mul));
    }
    __syncwarp();
    constexpr int CPR = HD / 8;
    LLMGEN_FA2_UNROLL
    for (int c = lane; c < 16 * CPR; c += 32) {
        const int r = c / CPR, ch = c % CPR;
        const uint4 val = ptx_ld_shared(reinterpret_cast<const uint4*>(s + swz<HD>(r0 + r, ch)));
        if (row0 + r < T) *reinterpret_cast<uint4*>(gdst + (long)r * stride + ch * 8) = val;
    }
}

/* max and sum over the 4 lanes (t = 0..3) that share a row of an accumulator */
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* ---- forward ------------------------------------------------------------------------------------ */
/* Shared memory: Q (BM x HD) | K (2 x BN x HD) | V (2 x BN x HD), bf16, swizzled. Grid: one block per
 * (query tile, b, h), blockIdx.x = (last tile - tile) * B*NH + b*NH + h; NW*32 threads. Q_REGS: Q's A
 * fragments stay in registers for the whole block (else they are read from sQ at every tile). */
template <int HD, int NW, int MT, int BN>
constexpr int fwd_smem_bytes() { return (16 * MT * NW + 4 * BN) * HD * 2; }

template <int HD, int NW, int MT, int BN, bool Q_REGS>
__global__ void __launch_bounds__(NW * 32)
attention_fwd_kernel(bf16* __restrict__ o, float* __restrict__ lse, const bf16* __restrict__ q,
                     const bf16* __restrict__ k, const bf16* __restrict__ v, int B, int T, int NH, int KV,
                     int q_stride, int kv_stride, int o_stride, float scale_log2) {
    constexpr int NT = NW * 32, BM = 16 * MT * NW, KT = HD / 16, NS = BN / 8, NO = HD / 8;
    static_assert(BN % 16 == 0 && HD % 16 == 0, "tiles of whole mma steps");
    LLMGEN_DYNAMIC_SMEM(bf16, sQ);
    bf16* sK = sQ + BM * HD;
    bf16* sV = sK + 2 * BN * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int BH = B * NH, nqt = (T + BM - 1) / BM;
    const int qt = nqt - 1 - (int)(blockIdx.x / BH), bh = (int)(blockIdx.x % BH);
    const int b = bh / NH, h = bh % NH, kvh = h / (NH / KV);
    const int i0 = qt * BM, wr0 = i0 + warp * 16 * MT, wlast = wr0 + 16 * MT - 1;
    const bf16* kb = k + (long)b * T * kv_stride + (long)kvh * HD;
    const bf16* vb = v + (long)b * T * kv_stride + (long)kvh * HD;
    const int nkt = (imin(i0 + BM, T) + BN - 1) / BN; /* key tiles holding a key <= some row of the block */

    cp_tile<HD, BM, NT>(sQ, q + ((long)b * T + i0) * q_stride + (long)h * HD, q_stride, T - i0);
    cp_tile<HD, BN, NT>(sK, kb, kv_stride, T);
    cp_tile<HD, BN, NT>(sV, vb, kv_stride, T);
    ptx_cp_async_commit();

    uint32_t qf[Q_REGS ? MT : 1][Q_REGS ? KT : 1][4];
    float acc[MT][NO][4];
    float m[MT][2], l[MT][2];
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        LLMGEN_FA2_UNROLL
        for (int n = 0; n < NO; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    /* One key tile: S = Q K^T, the online softmax, O += P V. MASK (the diagonal tiles, where some key
     * is after some row of the block): skip the 16-key groups after all rows of an m-tile and set the
     * scores of keys after their row to -inf; without MASK nothing is tested. */
    auto tile = [&](auto mask, int j0, const bf16* sKb, const bf16* sVb) {
        constexpr bool MASK = decltype(mask)::value;
        if (MASK && j0 > wlast) return; /* every key of the tile is after this warp's rows */

        /* S = Q K^T, one k-step at a time: Q's A fragments of the MT m-tiles, then 16 keys (two n-tiles)
         * per ldmatrix of K, used by every m-tile */
        float s[MT][NS][4];
        LLMGEN_FA2_UNROLL
        for (int mt = 0; mt < MT; mt++) {
            LLMGEN_FA2_UNROLL
            for (int n = 0; n < NS; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
        }
        LLMGEN_FA2_UNROLL
        for (int kk = 0; kk < KT; kk++) {
            uint32_t qa[MT][4];
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) {
                if (MASK && j0 > wr0 + 16 * mt + 15) continue; /* the tile is after every row of the m-tile */
                if (Q_REGS)
                    copy_frag(qa[mt], qf[Q_REGS ? mt : 0][Q_REGS ? kk : 0]);
                else
                    ldsm_a<HD>(qa[mt], sQ, warp * 16 * MT + 16 * mt, kk);
            }
            LLMGEN_FA2_UNROLL
            for (int np = 0; np < NS / 2; np++) {
                if (MASK && j0 + 16 * np > wlast) continue;
                uint32_t bk[4];
                ldsm_b_rows_n<HD>(bk, sKb, 16 * np, kk);
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && j0 + 16 * np > wr0 + 16 * mt + 15) continue; /* after every row of the m-tile */
                    mma(s[mt][2 * np], qa[mt], bk[0], bk[1]);
                    mma(s[mt][2 * np + 1], qa[mt], bk[2], bk[3]);
                }
            }
        }

        /* online softmax in base 2 on raw scores s: the row max m in score units, then
         * p = 2^(s c - m c) with c = scale * log2(e): one FFMA and one ex2 per score */
        LLMGEN_FA2_UNROLL
        for (int mt = 0; mt < MT; mt++) {
            const int r0 = wr0 + 16 * mt; /* this m-tile's first row; the lane holds rows r0+g, r0+g+8 */
            if (MASK && j0 > r0 + 15) continue;
            float mx[2] = {m[mt][0], m[mt][1]};
            LLMGEN_FA2_UNROLL
            for (int n = 0; n < NS; n++) {
                LLMGEN_FA2_UNROLL
                for (int i = 0; i < 4; i++) {
                    if (MASK && j0 + 8 * n + 2 * t + (i & 1) > r0 + g + 8 * (i >> 1)) s[mt][n][i] = -INFINITY;
                    mx[i >> 1] = fmaxf(mx[i >> 1], s[mt][n][i]);
                }
            }
            float mc[2];
            LLMGEN_FA2_UNROLL
            for (int r = 0; r < 2; r++) {
                mx[r] = quad_max(mx[r]);
                mc[r] = mx[r] == -INFINITY ? 0.0f : mx[r] * scale_log2; /* no key yet: keep exp2 finite */
                const float corr = ptx_ex2_approx(m[mt][r] * scale_log2 - mc[r]); /* 0 on the first tile */
                m[mt][r] = mx[r];
                l[mt][r] *= corr;
                LLMGEN_FA2_UNROLL
                for (int n = 0; n < NO; n++) {
                    acc[mt][n][2 * r] *= corr;
                    acc[mt][n][2 * r + 1] *= corr;
                }
            }
            LLMGEN_FA2_UNROLL
            for (int n = 0; n < NS; n++) {
                LLMGEN_FA2_UNROLL
                for (int i = 0; i < 4; i++) {
                    const float p = ptx_ex2_approx(fmaf(s[mt][n][i], scale_log2, -mc[i >> 1]));
                    l[mt][i >> 1] += p; /* this lane's share of the row sum; the quad adds up at the end */
                    s[mt][n][i] = p;
                }
            }
        }

        /* O += P V: P's accumulators repacked as A fragments, V through ldmatrix .trans */
        LLMGEN_FA2_UNROLL
        for (int kk = 0; kk < BN / 16; kk++) {
            if (MASK && j0 + 16 * kk > wlast) continue;
            uint32_t pa[MT][4];
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) acc_to_a(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
            LLMGEN_FA2_UNROLL
            for (int c = 0; c < NO; c += 2) {
                uint32_t bv[4];
                ldsm_b_rows_k<HD>(bv, sVb, 16 * kk, c);
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && j0 + 16 * kk > wr0 + 16 * mt + 15) continue;
                    mma(acc[mt][c], pa[mt], bv[0], bv[1]);
                    mma(acc[mt][c + 1], pa[mt], bv[2], bv[3]);
                }
            }
        }
    };

    for (int jt = 0; jt < nkt; jt++) {
        const int j0 = jt * BN, buf = jt & 1;
        ptx_cp_async_wait<0>(); /* this tile (and, first, Q) has landed for this thread's copies ... */
        __syncthreads();        /* ... and everyone's; everyone is done with the other buffer */
        if (Q_REGS && jt == 0) {
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < (Q_REGS ? MT : 1); mt++) {
                LLMGEN_FA2_UNROLL
                for (int kk = 0; kk < (Q_REGS ? KT : 1); kk++) ldsm_a<HD>(qf[mt][kk], sQ, warp * 16 * MT + 16 * mt, kk);
            }
        }
        if (jt + 1 < nkt) { /* the next tile streams in while this one is used */
            cp_tile<HD, BN, NT>(sK + (buf ^ 1) * BN * HD, kb + (long)(j0 + BN) * kv_stride, kv_stride, T - j0 - BN);
            cp_tile<HD, BN, NT>(sV + (buf ^ 1) * BN * HD, vb + (long)(j0 + BN) * kv_stride, kv_stride, T - j0 - BN);
        }
        ptx_cp_async_commit();
        if (j0 + BN - 1 > i0) /* block-uniform: the diagonal tiles */
            tile(Flag<true>(), j0, sK + buf * BN * HD, sV + buf * BN * HD);
        else
            tile(Flag<false>(), j0, sK + buf * BN * HD, sV + buf * BN * HD);
    }

    /* O / l and lse = (m c + log2 l) ln 2 per row; O through this warp's rows of sQ (read only by it) */
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        const int r0 = wr0 + 16 * mt;
        float inv[2];
        LLMGEN_FA2_UNROLL
        for (int r = 0; r < 2; r++) {
            const float sum = quad_sum(l[mt][r]);
            inv[r] = 1.0f / sum;
            const int row = r0 + g + 8 * r;
            if (t == 0 && row < T) lse[(long)bh * T + row] = (m[mt][r] * scale_log2 + log2f(sum)) * kLn2;
        }
        LLMGEN_FA2_UNROLL
        for (int n = 0; n < NO; n++) {
            acc[mt][n][0] *= inv[0];
            acc[mt][n][1] *= inv[0];
            acc[mt][n][2] *= inv[1];
            acc[mt][n][3] *= inv[1];
        }
        store_rows<HD>(sQ, r0 - i0, acc[mt], 1.0f, o + ((long)b * T + r0) * o_stride + (long)h * HD, o_stride, r0,
                       T);
    }
}

/* ---- backward: D = rowsum(dout * o) ------------------------------------------------------------- */
/* HD/8 consecutive lanes per (b, t, h), one 16-byte load of dout and of o each; a fixed butterfly. */
template <int HD>
__global__ void __launch_bounds__(256)
attention_bwd_d_kernel(float* __restrict__ D, const bf16* __restrict__ dout, const bf16* __restrict__ o, int B, int T,
                       int NH, int o_stride) {
    constexpr int L = HD / 8;
    static_assert(L <= 32 && (L & (L - 1)) == 0, "HD/8 lanes per row and head: a power of two up to 32");
    const long item = ((long)blockIdx.x * blockDim.x + threadIdx.x) / L;
    const int part = (int)(threadIdx.x % L);
    const long n = (long)B * T * NH;
    float s = 0.0f;
    long bt = 0;
    int h = 0;
    if (item < n) {
        bt = item / NH;
        h = (int)(item % NH);
        const long off = bt * o_stride + (long)h * HD + part * 8;
        const uint4 a = *reinterpret_cast<const uint4*>(dout + off);
        const uint4 c = *reinterpret_cast<const uint4*>(o + off);
        const bf16* pa = reinterpret_cast<const bf16*>(&a);
        const bf16* pc = reinterpret_cast<const bf16*>(&c);
        LLMGEN_FA2_UNROLL
        for (int e = 0; e < 8; e++) s += __bfloat162float(pa[e]) * __bfloat162float(pc[e]);
    }
    LLMGEN_FA2_UNROLL
    for (int off = L / 2; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (item < n && part == 0) {
        const long b = bt / T, t = bt % T;
        D[(b * NH + h) * T + t] = s;
    }
}

/* ---- backward: dk, dv ----------------------------------------------------------------------------- */
/* Shared memory: K, V (BN x HD each) | Q, dO (2 x BQ x HD each), bf16 swizzled | lse*log2(e), D (2 x BQ
 * fp32 each). Grid: one block per (key tile, b, g), blockIdx.x = tile * B*KV + b*KV + g (tile 0, the
 * one with the most queries, first); NW*32 threads, warp w owns the 16*MT keys j0+16*MT*w .. as MT m16
 * tiles. KV_REGS: K's and V's A fragments stay in registers (else they are read from sK, sV per step). */
template <int HD, int NW, int MT, int BQ>
constexpr int dkv_smem_bytes() { return (2 * 16 * MT * NW + 4 * BQ) * HD * 2 + 4 * BQ * 4; }

template <int HD, int NW, int MT, int BQ, bool KV_REGS>
__global__ void __launch_bounds__(NW * 32)
attention_bwd_dkv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ dout,
                         const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                         const float* __restrict__ lse, const float* __restrict__ D, int B, int T, int NH, int KV,
                         int q_stride, int kv_stride, int o_stride, int dkv_stride, float scale_log2, float scale) {
    constexpr int NT = NW * 32, BN = 16 * MT * NW, KT = HD / 16, NQ = BQ / 8, NO = HD / 8;
    constexpr int LD = (2 * BQ + NT - 1) / NT; /* lse and D values each thread stages per tile */
    static_assert(BQ % 16 == 0 && (2 * BQ) % 32 == 0, "query tiles of whole mma steps");
    LLMGEN_DYNAMIC_SMEM(bf16, sK);
    bf16* sV = sK + BN * HD;
    bf16* sQ = sV + BN * HD;
    bf16* sO = sQ + 2 * BQ * HD;
    float* sL = reinterpret_cast<float*>(sO + 2 * BQ * HD); /* [2][BQ] lse * log2(e) (+inf past T) */
    float* sD = sL + 2 * BQ;                                  /* [2][BQ] D (0 past T) */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int BG = B * KV, R = NH / KV;
    const int kt = (int)(blockIdx.x / BG), bg = (int)(blockIdx.x % BG);
    const int b = bg / KV, gh = bg % KV;
    const int j0 = kt * BN, kw0 = j0 + 16 * MT * warp; /* the block's and this warp's first key */
    const int nqt = (T + BQ - 1) / BQ, qt0 = j0 / BQ, per_head = nqt - qt0, steps = R * per_head;

    /* step s: query head gh*R + s / per_head, query tile qt0 + s % per_head */
    auto issue = [&](int s, int buf) {
        const int h = gh * R + s / per_head, q0 = (qt0 + s % per_head) * BQ;
        cp_tile<HD, BQ, NT>(sQ + buf * BQ * HD, q + ((long)b * T + q0) * q_stride + (long)h * HD, q_stride, T - q0);
        cp_tile<HD, BQ, NT>(sO + buf * BQ * HD, dout + ((long)b * T + q0) * o_stride + (long)h * HD, o_stride,
                            T - q0);
    };
    /* lse and D of step s into registers (plain loads: their latency hides behind the step before) */
    auto fetch = [&](int s, float (&st)[LD]) {
        const int h = gh * R + s / per_head, q0 = (qt0 + s % per_head) * BQ;
        LLMGEN_FA2_UNROLL
        for (int e = 0; e < LD; e++) {
            const int c = threadIdx.x + e * NT, col = c % BQ;
            const long at = ((long)b * NH + h) * T + q0 + col;
            if (c < 2 * BQ)
                st[e] = c < BQ ? (q0 + col < T ? lse[at] * kLog2e : INFINITY) : (q0 + col < T ? D[at] : 0.0f);
        }
    };
    auto stage = [&](const float (&st)[LD], int buf) {
        LLMGEN_FA2_UNROLL
        for (int e = 0; e < LD; e++) {
            const int c = threadIdx.x + e * NT;
            if (c < 2 * BQ) ptx_st_shared(c < BQ ? &sL[buf * BQ + c] : &sD[buf * BQ + c - BQ], st[e]);
        }
    };

    cp_tile<HD, BN, NT>(sK, k + ((long)b * T + j0) * kv_stride + (long)gh * HD, kv_stride, T - j0);
    cp_tile<HD, BN, NT>(sV, v + ((long)b * T + j0) * kv_stride + (long)gh * HD, kv_stride, T - j0);
    issue(0, 0);
    ptx_cp_async_commit();
    float pre[LD];
    fetch(0, pre);
    stage(pre, 0);

    uint32_t kf[KV_REGS ? MT : 1][KV_REGS ? KT : 1][4], vf[KV_REGS ? MT : 1][KV_REGS ? KT : 1][4];
    float dka[MT][NO][4], dva[MT][NO][4];
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        LLMGEN_FA2_UNROLL
        for (int n = 0; n < NO; n++) {
            dka[mt][n][0] = dka[mt][n][1] = dka[mt][n][2] = dka[mt][n][3] = 0.0f;
            dva[mt][n][0] = dva[mt][n][1] = dva[mt][n][2] = dva[mt][n][3] = 0.0f;
        }
    }

    /* One query tile: S^T = K Q^T, dP^T = V dO^T, P^T = exp2(S^T scale log2e - lse log2e), dS^T = P^T
     * (dP^T - D), dV += P^T dO, dK += dS^T Q. MASK (the diagonal, where some key of the block is after
     * some query of the tile): skip the 16-query groups all before an m-tile's keys and zero P where the
     * key is after the query. Queries past T need no test: their lse is +inf (P = 0). */
    auto tile = [&](auto mask, int q0, int buf) {
        constexpr bool MASK = decltype(mask)::value;
        if (MASK && (kw0 > q0 + BQ - 1 || kw0 >= T)) return; /* no query of the tile sees these keys */
        const bf16* sQb = sQ + buf * BQ * HD;
        const bf16* sOb = sO + buf * BQ * HD;
        /* acc (rows = keys, columns = the BQ queries) = K Q^T or V dO^T */
        auto product = [&](const bf16* sA, const uint32_t (&af)[KV_REGS ? MT : 1][KV_REGS ? KT : 1][4],
                           const bf16* sB, float (&acc)[MT][NQ][4]) {
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) {
                LLMGEN_FA2_UNROLL
                for (int n = 0; n < NQ; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
            }
            LLMGEN_FA2_UNROLL
            for (int kk = 0; kk < KT; kk++) {
                uint32_t a[MT][4];
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && kw0 + 16 * mt > q0 + BQ - 1) continue; /* these keys are after every query */
                    if (KV_REGS)
                        copy_frag(a[mt], af[KV_REGS ? mt : 0][KV_REGS ? kk : 0]);
                    else
                        ldsm_a<HD>(a[mt], sA, 16 * MT * warp + 16 * mt, kk);
                }
                LLMGEN_FA2_UNROLL
                for (int np = 0; np < NQ / 2; np++) {
                    if (MASK && q0 + 16 * np + 15 < kw0) continue; /* 16 queries all before this warp's keys */
                    uint32_t bq[4];
                    ldsm_b_rows_n<HD>(bq, sB, 16 * np, kk);
                    LLMGEN_FA2_UNROLL
                    for (int mt = 0; mt < MT; mt++) {
                        if (MASK && q0 + 16 * np + 15 < kw0 + 16 * mt) continue;
                        mma(acc[mt][2 * np], a[mt], bq[0], bq[1]);
                        mma(acc[mt][2 * np + 1], a[mt], bq[2], bq[3]);
                    }
                }
            }
        };
        /* acc += A B with A the accumulators pt (keys x queries) as bf16 fragments, B = dO or Q (.trans) */
        auto update = [&](const float (&pt)[MT][NQ][4], const bf16* sB, float (&acc)[MT][NO][4]) {
            LLMGEN_FA2_UNROLL
            for (int kk = 0; kk < BQ / 16; kk++) {
                if (MASK && q0 + 16 * kk + 15 < kw0) continue;
                uint32_t a[MT][4];
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) acc_to_a(a[mt], pt[mt][2 * kk], pt[mt][2 * kk + 1]);
                LLMGEN_FA2_UNROLL
                for (int c = 0; c < NO; c += 2) {
                    uint32_t bb[4];
                    ldsm_b_rows_k<HD>(bb, sB, 16 * kk, c);
                    LLMGEN_FA2_UNROLL
                    for (int mt = 0; mt < MT; mt++) {
                        if (MASK && q0 + 16 * kk + 15 < kw0 + 16 * mt) continue;
                        mma(acc[mt][c], a[mt], bb[0], bb[1]);
                        mma(acc[mt][c + 1], a[mt], bb[2], bb[3]);
                    }
                }
            }
        };

        float st[MT][NQ][4], dpt[MT][NQ][4]; /* S^T, dP^T: rows = this warp's keys, columns = the queries */
        product(sK, kf, sQb, st);
        product(sV, vf, sOb, dpt);
        LLMGEN_FA2_UNROLL
        for (int n = 0; n < NQ; n++) {
            const float2 L2 = ptx_ld_shared(reinterpret_cast<const float2*>(&sL[buf * BQ + 8 * n + 2 * t]));
            const float2 Dv = ptx_ld_shared(reinterpret_cast<const float2*>(&sD[buf * BQ + 8 * n + 2 * t]));
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) {
                LLMGEN_FA2_UNROLL
                for (int i = 0; i < 4; i++) {
                    float p = ptx_ex2_approx(st[mt][n][i] * scale_log2 - ((i & 1) ? L2.y : L2.x));
                    if (MASK && kw0 + 16 * mt + g + 8 * (i >> 1) > q0 + 8 * n + 2 * t + (i & 1)) p = 0.0f;
                    st[mt][n][i] = p;                                                 /* P^T */
                    dpt[mt][n][i] = p * (dpt[mt][n][i] - ((i & 1) ? Dv.y : Dv.x));   /* dS^T */
                }
            }
        }
        update(st, sOb, dva);  /* dV += P^T dO */
        update(dpt, sQb, dka); /* dK += dS^T Q */
    };

    for (int s = 0; s < steps; s++) {
        const int buf = s & 1, q0 = (qt0 + s % per_head) * BQ;
        ptx_cp_async_wait<0>();
        __syncthreads(); /* step s's tiles (and first K, V) visible; everyone is done with buffer buf^1 */
        if (KV_REGS && s == 0) {
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < (KV_REGS ? MT : 1); mt++) {
                LLMGEN_FA2_UNROLL
                for (int kk = 0; kk < (KV_REGS ? KT : 1); kk++) {
                    ldsm_a<HD>(kf[mt][kk], sK, 16 * MT * warp + 16 * mt, kk);
                    ldsm_a<HD>(vf[mt][kk], sV, 16 * MT * warp + 16 * mt, kk);
                }
            }
        }
        if (s + 1 < steps) {
            issue(s + 1, buf ^ 1);
            fetch(s + 1, pre);
        }
        ptx_cp_async_commit();
        if (j0 + BN - 1 > q0) /* block-uniform: the diagonal tiles */
            tile(Flag<true>(), q0, buf);
        else
            tile(Flag<false>(), q0, buf);
        if (s + 1 < steps) stage(pre, buf ^ 1); /* visible after the next step's barrier */
    }

    /* dK * scale and dV out, through this warp's own rows of sK and sV */
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        const int r0 = kw0 + 16 * mt;
        const long row = (long)b * T + r0;
        store_rows<HD>(sK, r0 - j0, dka[mt], scale, dk + row * dkv_stride + (long)gh * HD, dkv_stride, r0, T);
        store_rows<HD>(sV, r0 - j0, dva[mt], 1.0f, dv + row * dkv_stride + (long)gh * HD, dkv_stride, r0, T);
    }
}

/* ---- backward: dq ----------------------------------------------------------------------------------- */
/* Shared memory: Q, dO (BM x HD each) | K, V (2 x BN x HD each), bf16 swizzled. Grid as the forward's
 * (last query tile first); NW*32 threads, warp w owns the 16*MT rows i0+16*MT*w .. as MT m16 tiles.
 * QO_REGS: Q's and dO's A fragments stay in registers (else they are read from sQ, sO at every tile). */
template <int HD, int NW, int MT, int BN>
constexpr int dq_smem_bytes() { return (2 * 16 * MT * NW + 4 * BN) * HD * 2; }

template <int HD, int NW, int MT, int BN, bool QO_REGS>
__global__ void __launch_bounds__(NW * 32)
attention_bwd_dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ dout, const bf16* __restrict__ q,
                        const bf16* __restrict__ k, const bf16* __restrict__ v, const float* __restrict__ lse,
                        const float* __restrict__ D, int B, int T, int NH, int KV, int q_stride, int kv_stride,
                        int o_stride, int dq_stride, float scale_log2, float scale) {
    constexpr int NT = NW * 32, BM = 16 * MT * NW, KT = HD / 16, NS = BN / 8, NO = HD / 8;
    static_assert(BN % 16 == 0, "key tiles of whole mma steps");
    LLMGEN_DYNAMIC_SMEM(bf16, sQ);
    bf16* sO = sQ + BM * HD;
    bf16* sK = sO + BM * HD;
    bf16* sV = sK + 2 * BN * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int BH = B * NH, nqt = (T + BM - 1) / BM;
    const int qt = nqt - 1 - (int)(blockIdx.x / BH), bh = (int)(blockIdx.x % BH);
    const int b = bh / NH, h = bh % NH, kvh = h / (NH / KV);
    const int i0 = qt * BM, wr0 = i0 + 16 * MT * warp, wlast = wr0 + 16 * MT - 1;
    const bf16* kb = k + (long)b * T * kv_stride + (long)kvh * HD;
    const bf16* vb = v + (long)b * T * kv_stride + (long)kvh * HD;
    const int nkt = (imin(i0 + BM, T) + BN - 1) / BN;

    cp_tile<HD, BM, NT>(sQ, q + ((long)b * T + i0) * q_stride + (long)h * HD, q_stride, T - i0);
    cp_tile<HD, BM, NT>(sO, dout + ((long)b * T + i0) * o_stride + (long)h * HD, o_stride, T - i0);
    cp_tile<HD, BN, NT>(sK, kb, kv_stride, T);
    cp_tile<HD, BN, NT>(sV, vb, kv_stride, T);
    ptx_cp_async_commit();

    float Lr[MT][2], Dr[MT][2]; /* lse * log2(e) and D of rows r0+g, r0+g+8 (rows past T: never stored) */
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        LLMGEN_FA2_UNROLL
        for (int r = 0; r < 2; r++) {
            const int row = wr0 + 16 * mt + g + 8 * r;
            Lr[mt][r] = row < T ? lse[(long)bh * T + row] * kLog2e : 0.0f;
            Dr[mt][r] = row < T ? D[(long)bh * T + row] : 0.0f;
        }
    }
    uint32_t qf[QO_REGS ? MT : 1][QO_REGS ? KT : 1][4], of[QO_REGS ? MT : 1][QO_REGS ? KT : 1][4];
    float dqa[MT][NO][4];
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        LLMGEN_FA2_UNROLL
        for (int n = 0; n < NO; n++) dqa[mt][n][0] = dqa[mt][n][1] = dqa[mt][n][2] = dqa[mt][n][3] = 0.0f;
    }

    /* One key tile: S = Q K^T, dP = dO V^T, dS = P (dP - D), dQ += dS K. MASK: the diagonal tiles */
    auto tile = [&](auto mask, int j0, const bf16* sKb, const bf16* sVb) {
        constexpr bool MASK = decltype(mask)::value;
        if (MASK && j0 > wlast) return;
        float s[MT][NS][4], dp[MT][NS][4];
        LLMGEN_FA2_UNROLL
        for (int mt = 0; mt < MT; mt++) {
            LLMGEN_FA2_UNROLL
            for (int n = 0; n < NS; n++) {
                s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
                dp[mt][n][0] = dp[mt][n][1] = dp[mt][n][2] = dp[mt][n][3] = 0.0f;
            }
        }
        LLMGEN_FA2_UNROLL
        for (int kk = 0; kk < KT; kk++) {
            uint32_t qa[MT][4], oa[MT][4];
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) {
                if (MASK && j0 > wr0 + 16 * mt + 15) continue;
                if (QO_REGS) {
                    copy_frag(qa[mt], qf[QO_REGS ? mt : 0][QO_REGS ? kk : 0]);
                    copy_frag(oa[mt], of[QO_REGS ? mt : 0][QO_REGS ? kk : 0]);
                } else {
                    ldsm_a<HD>(qa[mt], sQ, 16 * MT * warp + 16 * mt, kk);
                    ldsm_a<HD>(oa[mt], sO, 16 * MT * warp + 16 * mt, kk);
                }
            }
            LLMGEN_FA2_UNROLL
            for (int np = 0; np < NS / 2; np++) {
                if (MASK && j0 + 16 * np > wlast) continue;
                uint32_t bk[4], bv[4];
                ldsm_b_rows_n<HD>(bk, sKb, 16 * np, kk);
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && j0 + 16 * np > wr0 + 16 * mt + 15) continue;
                    mma(s[mt][2 * np], qa[mt], bk[0], bk[1]);
                    mma(s[mt][2 * np + 1], qa[mt], bk[2], bk[3]);
                }
                ldsm_b_rows_n<HD>(bv, sVb, 16 * np, kk);
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && j0 + 16 * np > wr0 + 16 * mt + 15) continue;
                    mma(dp[mt][2 * np], oa[mt], bv[0], bv[1]);
                    mma(dp[mt][2 * np + 1], oa[mt], bv[2], bv[3]);
                }
            }
        }
        LLMGEN_FA2_UNROLL
        for (int mt = 0; mt < MT; mt++) {
            const int r0 = wr0 + 16 * mt;
            LLMGEN_FA2_UNROLL
            for (int n = 0; n < NS; n++) {
                LLMGEN_FA2_UNROLL
                for (int i = 0; i < 4; i++) {
                    float p = ptx_ex2_approx(s[mt][n][i] * scale_log2 - Lr[mt][i >> 1]);
                    if (MASK && j0 + 8 * n + 2 * t + (i & 1) > r0 + g + 8 * (i >> 1)) p = 0.0f;
                    s[mt][n][i] = p * (dp[mt][n][i] - Dr[mt][i >> 1]); /* dS */
                }
            }
        }
        LLMGEN_FA2_UNROLL
        for (int kk = 0; kk < BN / 16; kk++) {
            if (MASK && j0 + 16 * kk > wlast) continue;
            uint32_t da[MT][4];
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < MT; mt++) acc_to_a(da[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
            LLMGEN_FA2_UNROLL
            for (int c = 0; c < NO; c += 2) {
                uint32_t bk[4];
                ldsm_b_rows_k<HD>(bk, sKb, 16 * kk, c);
                LLMGEN_FA2_UNROLL
                for (int mt = 0; mt < MT; mt++) {
                    if (MASK && j0 + 16 * kk > wr0 + 16 * mt + 15) continue;
                    mma(dqa[mt][c], da[mt], bk[0], bk[1]);
                    mma(dqa[mt][c + 1], da[mt], bk[2], bk[3]);
                }
            }
        }
    };

    for (int jt = 0; jt < nkt; jt++) {
        const int j0 = jt * BN, buf = jt & 1;
        ptx_cp_async_wait<0>();
        __syncthreads();
        if (QO_REGS && jt == 0) {
            LLMGEN_FA2_UNROLL
            for (int mt = 0; mt < (QO_REGS ? MT : 1); mt++) {
                LLMGEN_FA2_UNROLL
                for (int kk = 0; kk < (QO_REGS ? KT : 1); kk++) {
                    ldsm_a<HD>(qf[mt][kk], sQ, 16 * MT * warp + 16 * mt, kk);
                    ldsm_a<HD>(of[mt][kk], sO, 16 * MT * warp + 16 * mt, kk);
                }
            }
        }
        if (jt + 1 < nkt) {
            cp_tile<HD, BN, NT>(sK + (buf ^ 1) * BN * HD, kb + (long)(j0 + BN) * kv_stride, kv_stride, T - j0 - BN);
            cp_tile<HD, BN, NT>(sV + (buf ^ 1) * BN * HD, vb + (long)(j0 + BN) * kv_stride, kv_stride, T - j0 - BN);
        }
        ptx_cp_async_commit();
        if (j0 + BN - 1 > i0) /* block-uniform: the diagonal tiles */
            tile(Flag<true>(), j0, sK + buf * BN * HD, sV + buf * BN * HD);
        else
            tile(Flag<false>(), j0, sK + buf * BN * HD, sV + buf * BN * HD);
    }
    LLMGEN_FA2_UNROLL
    for (int mt = 0; mt < MT; mt++) {
        const int r0 = wr0 + 16 * mt;
        store_rows<HD>(sQ, r0 - i0, dqa[mt], scale, dq + ((long)b * T + r0) * dq_stride + (long)h * HD, dq_stride,
                       r0, T);
    }
}

/* ---- host launchers ------------------------------------------------------------------------------- */
inline bool fa2_check(const char* who, bool ok, const char* what) {
    if (!ok) fprintf(stderr, "%s: %s\n", who, what);
    return ok;
}

inline bool fa2_aligned(const void* p) { return ((uintptr_t)p & 15) == 0; }

/* the shape checks both launchers share; false after printing the first failed one */
template <int HD>
inline bool fa2_shape_ok(const char* who, int B, int T, int NH, int KV, int q_stride, int kv_stride, int o_stride) {
    char msg[200];
    snprintf(msg, sizeof msg, "B = %d, T = %d, NH = %d, KV = %d: all must be >= 1 and NH a multiple of KV", B, T, NH,
             KV);
    if (!fa2_check(who, B >= 1 && T >= 1 && NH >= 1 && KV >= 1 && NH % KV == 0, msg)) return false;
    snprintf(msg, sizeof msg, "row strides q %d, k/v %d, o %d: multiples of 8 elements, at least %d, %d, %d",
             q_stride, kv_stride, o_stride, NH * HD, KV * HD, NH * HD);
    return fa2_check(who, q_stride % 8 == 0 && kv_stride % 8 == 0 && o_stride % 8 == 0 && q_stride >= NH * HD &&
                              kv_stride >= KV * HD && o_stride >= NH * HD,
                     msg);
}

/* Opt a kernel into more than 48 KiB of dynamic shared memory. The launchers call it once per
 * instantiation and process (a function-local static: the attribute belongs to the function, and one
 * process drives one device). */
template <class K>
inline cudaError_t fa2_smem_attr(K kernel, int bytes) {
    return bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
                             : cudaSuccess;
}

template <int HD, class C>
cudaError_t attention_fwd_launch(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T,
                                 int NH, int KV, int q_stride, int kv_stride, int o_stride, cudaStream_t stream) {
    const char* who = "attention_fwd";
    if (!fa2_shape_ok<HD>(who, B, T, NH, KV, q_stride, kv_stride, o_stride)) return cudaErrorInvalidValue;
    if (!fa2_check(who, fa2_aligned(o) && fa2_aligned(q) && fa2_aligned(k) && fa2_aligned(v),
                   "o, q, k and v must be 16-byte aligned"))
        return cudaErrorInvalidValue;
    constexpr int BM = 16 * C::FWD_MT * C::FWD_NW, SMEM = fwd_smem_bytes<HD, C::FWD_NW, C::FWD_MT, C::FWD_BN>();
    const long blocks = (long)((T + BM - 1) / BM) * B * NH;
    if (!fa2_check(who, blocks < 2147483647L, "too many blocks for one grid")) return cudaErrorInvalidValue;
    static const cudaError_t attr =
        fa2_smem_attr(attention_fwd_kernel<HD, C::FWD_NW, C::FWD_MT, C::FWD_BN, C::FWD_Q_REGS>, SMEM);
    if (attr != cudaSuccess) return attr;
    const float scale_log2 = kLog2e / sqrtf((float)HD);
    LLMGEN_LAUNCH((attention_fwd_kernel<HD, C::FWD_NW, C::FWD_MT, C::FWD_BN, C::FWD_Q_REGS>), (unsigned)blocks,
                  C::FWD_NW * 32, SMEM, stream, o, lse, q, k, v, B, T, NH, KV, q_stride, kv_stride, o_stride,
                  scale_log2);
    return cudaGetLastError();
}

template <int HD, class C>
cudaError_t attention_bwd_launch(bf16* dq, bf16* dk, bf16* dv, float* D, const bf16* dout, const bf16* q,
                                 const bf16* k, const bf16* v, const bf16* o, const float* lse, int B, int T, int NH,
                                 int KV, int q_stride, int kv_stride, int o_stride, int dq_stride, int dkv_stride,
                                 cudaStream_t stream) {
    const char* who = "attention_bwd";
    if (!fa2_shape_ok<HD>(who, B, T, NH, KV, q_stride, kv_stride, o_stride)) return cudaErrorInvalidValue;
    char msg[160];
    snprintf(msg, sizeof msg, "gradient row strides dq %d, dk/dv %d: multiples of 8 elements, at least %d, %d",
             dq_stride, dkv_stride, NH * HD, KV * HD);
    if (!fa2_check(who, dq_stride % 8 == 0 && dkv_stride % 8 == 0 && dq_stride >= NH * HD && dkv_stride >= KV * HD,
                   msg))
        return cudaErrorInvalidValue;
    if (!fa2_check(who, fa2_aligned(dq) && fa2_aligned(dk) && fa2_aligned(dv) && fa2_aligned(dout) &&
                            fa2_aligned(q) && fa2_aligned(k) && fa2_aligned(v) && fa2_aligned(o),
                   "dq, dk, dv, dout, q, k, v and o must be 16-byte aligned"))
        return cudaErrorInvalidValue;
    constexpr int BM = 16 * C::DQ_MT * C::DQ_NW, BN = 16 * C::DKV_MT * C::DKV_NW;
    const long blocks_dq = (long)((T + BM - 1) / BM) * B * NH, blocks_dkv = (long)((T + BN - 1) / BN) * B * KV;
    if (!fa2_check(who, blocks_dq < 2147483647L && blocks_dkv < 2147483647L, "too many blocks for one grid"))
        return cudaErrorInvalidValue;
    const float scale = 1.0f / sqrtf((float)HD), scale_log2 = kLog2e * scale;
    cudaError_t e;

    constexpr int DL = HD / 8; /* D: HD/8 lanes per (b, t, h) */
    const long d_threads = (long)B * T * NH * DL;
    LLMGEN_LAUNCH((attention_bwd_d_kernel<HD>), (unsigned)((d_threads + 255) / 256), 256, 0, stream, D, dout, o, B, T,
                  NH, o_stride);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;

    constexpr int SMEM_DKV = dkv_smem_bytes<HD, C::DKV_NW, C::DKV_MT, C::DKV_BQ>();
    static const cudaError_t attr_dkv =
        fa2_smem_attr(attention_bwd_dkv_kernel<HD, C::DKV_NW, C::DKV_MT, C::DKV_BQ, C::DKV_KV_REGS>, SMEM_DKV);
    if (attr_dkv != cudaSuccess) return attr_dkv;
    LLMGEN_LAUNCH((attention_bwd_dkv_kernel<HD, C::DKV_NW, C::DKV_MT, C::DKV_BQ, C::DKV_KV_REGS>),
                  (unsigned)blocks_dkv, C::DKV_NW * 32, SMEM_DKV, stream, dk, dv, dout, q, k, v, lse,
                  D, B, T, NH, KV, q_stride, kv_stride, o_stride, dkv_stride, scale_log2, scale);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;

    constexpr int SMEM_DQ = dq_smem_bytes<HD, C::DQ_NW, C::DQ_MT, C::DQ_BN>();
    static const cudaError_t attr_dq =
        fa2_smem_attr(attention_bwd_dq_kernel<HD, C::DQ_NW, C::DQ_MT, C::DQ_BN, C::DQ_QO_REGS>, SMEM_DQ);
    if (attr_dq != cudaSuccess) return attr_dq;
    LLMGEN_LAUNCH((attention_bwd_dq_kernel<HD, C::DQ_NW, C::DQ_MT, C::DQ_BN, C::DQ_QO_REGS>),
                  (unsigned)blocks_dq, C::DQ_NW * 32, SMEM_DQ, stream, dq, dout, q, k, v, lse, D, B,
                  T, NH, KV, q_stride, kv_stride, o_stride, dq_stride, scale_log2, scale);
    return cudaGetLastError();
}

template <int HD>
cudaError_t attention_fwd(bf16* o, float* lse, const bf16* q, const bf16* k, const bf16* v, int B, int T, int NH,
                          int KV, int q_stride, int kv_stride, int o_stride, cudaStream_t stream) {
    return attention_fwd_launch<HD, Fa2Tiles<HD>>(o, lse, q, k, v, B, T, NH, KV, q_stride, kv_stride, o_stride,
                                                  stream);
}

template <int HD>
cudaError_t attention_bwd(bf16* dq, bf16* dk, bf16* dv, float* D, const bf16* dout, const bf16* q, const bf16* k,
                          const bf16* v, const bf16* o, const float* lse, int B, int T, int NH, int KV, int q_stride,
                          int kv_stride, int o_stride, int dq_stride, int dkv_stride, cudaStream_t stream) {
    return attention_bwd_launch<HD, Fa2Tiles<HD>>(dq, dk, dv, D, dout, q, k, v, o, lse, B, T, NH, KV, q_stride,
                                                  kv_stride, o_stride, dq_stride, dkv_stride, stream);
}

} /* namespace llmgen_fa2 */

#endif /* LLMGEN_ATTENTION_FA2_CUH */
