/* attention.cuh -- causal attention, flash-style, on CUDA cores: NH query heads over KV key/value heads
 * (grouped-query attention; multi-head attention is KV == NH); query head h reads K/V head h / R
 * (R = NH/KV, HF's repeat_kv order) by indexing, so the K/V of a group are never repeated in memory.
 * Operands are addressed by row strides: q[b, t, h] = q + (b*T + t)*QS + h*HD, k and v of K/V head g
 * with KS, y and dy with YS = NH*HD; GPT-2 passes its packed qkv (QS = KS = 3C, k and v at +C and +2C),
 * Llama its separate q, k, v; dq, dk, dv have the layouts of q, k, v. lse (B,NH,T) fp32; the (T,T)
 * matrix never exists. B, T and the softmax scale (1/sqrt(HD)) are arguments.
 *
 * Work split (template parameters, chosen by llmgen/codegen/cuda.py):
 *   TPR threads share one (query row, head): thread `part` holds channels part, part + TPR, ...
 *       (DPT = ceil(HD / TPR) of them) of q and of the accumulator; a dot product is DPT multiply-adds
 *       and a butterfly over the TPR lanes (__shfl_xor_sync, every lane ends with the same bits).
 *       TPR keeps DPT <= 32, so head_dim 64 needs 2 threads and 128 needs 4: the dk/dv kernel's k, v, dk
 *       and dv of 64 floats each would not fit a thread's 255 registers (ptxas spills them).
 *   forward and dq: a block takes BQ query rows of RB heads of one K/V group; each K/V tile of BC rows
 *       it stages in shared memory (fp32) serves all RB heads. Online softmax (running max m, running
 *       sum l, rescaled accumulator) over the tiles up to the block's last row.
 *   dk, dv: a block takes BK key rows of one K/V group and walks, head by head of the group (in order),
 *       the query tiles at or after its first key: dk and dv sum over the group's heads in registers,
 *       so no two blocks write one element and nothing needs atomics.
 * Every shuffle runs in block-uniform control flow (masked scores become -inf or p = 0 instead of
 * skipping), and blocks are whole warps. Plain fp32 CUDA-core math (no tensor-core intrinsics), so the
 * emulation runs the code the GPU does. With TPR = 1 (head_dim up to 32) a thread holds a whole
 * head of a query (or key) row. bf16 builds with head size 64 or 128 run kernels/attention_fa2.cuh instead
 * where it applies (attention.cu.j2).
 *
 * Needs from the program before it: floatX, to_float / to_floatX, CUDA_CHECK, LAUNCH_CHECK, cdiv,
 * LLMGEN_LAUNCH, LLMGEN_DYNAMIC_SMEM and LLMGEN_UNROLL.
 */

/* sum over the TPR lanes of a (row, head): a butterfly, every lane ends with the same bits */
template <int TPR>
__device__ __forceinline__ float attention_group_sum(float x) {
    LLMGEN_UNROLL
    for (int o_ = TPR / 2; o_ > 0; o_ >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o_);
    return x;
}

/* the compile-time shape of one attention instance and its work split */
template <int NH_, int KV_, int HD_, int QS_, int KS_, int TPR_, int RB_, int BQ_, int BC_, int BK_>
struct AttentionShape {
    static constexpr int NH = NH_, KV = KV_, HD = HD_, QS = QS_, KS = KS_, YS = NH_ * HD_;
    static constexpr int TPR = TPR_, RB = RB_, BQ = BQ_, BC = BC_, BK = BK_;
    static constexpr int R = NH / KV, NCH = R / RB;          /* heads of a group; blocks over a group */
    static constexpr int DPT = (HD + TPR - 1) / TPR;          /* channels per thread */
    static constexpr bool RAGGED = HD % TPR != 0;             /* the last slot of some threads is empty */
    static constexpr int NTH = BQ * RB * TPR, NK = BK * TPR;  /* threads of a forward / dq and a dk/dv block */
    static_assert(NH % KV == 0 && R % RB == 0, "attention: KV divides NH, RB divides NH / KV");
    /* channel d = part + TPR * e of register slot e exists */
    static __device__ __forceinline__ bool in(int d) { return !RAGGED || d < HD; }
};

/* thread -> (query row i, head h, part) of the forward and dq kernels, and the K/V rows it reads */
template <class S>
struct AttentionQueryRow {
    int part, b, g, h, i0, i, last;
    bool live;
    long qoff, yoff;
    const floatX *kg, *vg;
    __device__ __forceinline__ AttentionQueryRow(const floatX *kk, const floatX *v, int T_) {
        part = threadIdx.x % S::TPR;
        const int row = threadIdx.x / S::TPR;
        b = blockIdx.y / (S::KV * S::NCH);
        g = blockIdx.y / S::NCH % S::KV;
        h = g * S::R + blockIdx.y % S::NCH * S::RB + row / S::BQ;
        i0 = blockIdx.x * S::BQ;
        i = i0 + row % S::BQ;
        live = i < T_;
        qoff = ((long)b * T_ + i) * S::QS + h * S::HD;        /* row i, head h of q (and dq) */
        yoff = ((long)b * T_ + i) * S::YS + h * S::HD;        /* ... of y and dy */
        kg = kk + (long)b * T_ * S::KS + g * S::HD;           /* K/V head g: key j at j * KS */
        vg = v + (long)b * T_ * S::KS + g * S::HD;
        last = min(i0 + S::BQ, T_) - 1;                       /* the block's last query row */
    }
};

/* stage keys j0 .. j0+BC-1 of K/V head g in shared memory (zeros past T) */
template <class S>
__device__ __forceinline__ void attention_stage_kv(float *ks, float *vs, const floatX *kg, const floatX *vg, int j0,
                                                   int T_) {
    __syncthreads();                                          /* the previous tile is consumed */
    for (int e = threadIdx.x; e < S::BC * S::HD; e += S::NTH) {
        const int j = j0 + e / S::HD, d = e % S::HD;
        ks[e] = j < T_ ? to_float(kg[(long)j * S::KS + d]) : 0.0f;
        vs[e] = j < T_ ? to_float(vg[(long)j * S::KS + d]) : 0.0f;
    }
    __syncthreads();
}

/* y[b,t,h] = sum_{t2<=t} softmax_t2(q_h.k2 * scale) v2 with k, v of K/V head h / R;
 * lse[b,h,t] = log sum_t2 exp(q_h.k2 * scale).
 * grid (T/BQ, B*KV*NCH), NTH threads: BQ query rows x RB head(s) of one K/V group x TPR thread(s) of DPT
 * channels; shared memory: a BC-row tile of k and of v (fp32) */
template <class S>
__global__ void __launch_bounds__(S::NTH) attention_fwd_kernel(floatX *y, float *lse, const floatX *q,
                                                               const floatX *kk, const floatX *v, float scale,
                                                               int T_) {
    constexpr int HD = S::HD, TPR = S::TPR, DPT = S::DPT, BC = S::BC;
    LLMGEN_DYNAMIC_SMEM(float, smem);
    float *ks = smem, *vs = smem + BC * HD;
    const AttentionQueryRow<S> w(kk, v, T_);
    const int part = w.part, i = w.i;
    float qv[DPT], acc[DPT];
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++) {
        qv[e] = w.live && S::in(part + TPR * e) ? to_float(q[w.qoff + (part + TPR * e)]) : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;                            /* running max and sum of exp */
    for (int j0 = 0; j0 <= w.last; j0 += BC) {
        attention_stage_kv<S>(ks, vs, w.kg, w.vg, j0, T_);
        float s[BC], mt = m;
        LLMGEN_UNROLL
        for (int jj = 0; jj < BC; jj++) {
            float dot = 0.0f;
            LLMGEN_UNROLL
            for (int e = 0; e < DPT; e++)
                if (S::in(part + TPR * e)) dot += qv[e] * ks[jj * HD + (part + TPR * e)];
            dot = attention_group_sum<TPR>(dot);
            s[jj] = j0 + jj <= i ? dot * scale : -INFINITY;    /* causal: keys up to i */
            mt = fmaxf(mt, s[jj]);
        }
        if (mt > -INFINITY) {          /* the TPR threads of a row hold the same bits: no divergence among them */
            const float corr = expf(m - mt);                  /* 0 on the row's first tile (m = -inf) */
            l *= corr;
            LLMGEN_UNROLL
            for (int e = 0; e < DPT; e++) acc[e] *= corr;
            LLMGEN_UNROLL
            for (int jj = 0; jj < BC; jj++) {
                if (s[jj] > -INFINITY) {
                    const float pj = expf(s[jj] - mt);
                    l += pj;
                    LLMGEN_UNROLL
                    for (int e = 0; e < DPT; e++)
                        if (S::in(part + TPR * e)) acc[e] += pj * vs[jj * HD + (part + TPR * e)];
                }
            }
            m = mt;
        }
    }
    if (!w.live) return;
    const float inv = 1.0f / l;
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++)
        if (S::in(part + TPR * e)) y[w.yoff + (part + TPR * e)] = to_floatX(acc[e] * inv);
    if (part == 0) lse[((long)w.b * S::NH + w.h) * T_ + i] = m + logf(l);
}

/* p = exp(q.k2 * scale - lse), D = dy.y (= sum_t2 p dp); ds = p (dy.v2 - D) * scale;
 * dq = sum_t2 ds k2: the forward's split, walking key tiles */
template <class S>
__global__ void __launch_bounds__(S::NTH) attention_dq_kernel(floatX *dq, const floatX *dy, const floatX *q,
                                                              const floatX *kk, const floatX *v, const floatX *y,
                                                              const float *lse, float scale, int T_) {
    constexpr int HD = S::HD, TPR = S::TPR, DPT = S::DPT, BC = S::BC;
    LLMGEN_DYNAMIC_SMEM(float, smem);
    float *ks = smem, *vs = smem + BC * HD;
    const AttentionQueryRow<S> w(kk, v, T_);
    const int part = w.part, i = w.i;
    float qv[DPT], gv[DPT], acc[DPT], D = 0.0f;
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++) {
        const bool in = w.live && S::in(part + TPR * e);
        qv[e] = in ? to_float(q[w.qoff + (part + TPR * e)]) : 0.0f;
        gv[e] = in ? to_float(dy[w.yoff + (part + TPR * e)]) : 0.0f;
        D += in ? gv[e] * to_float(y[w.yoff + (part + TPR * e)]) : 0.0f;
        acc[e] = 0.0f;
    }
    D = attention_group_sum<TPR>(D);
    const float li = w.live ? lse[((long)w.b * S::NH + w.h) * T_ + i] : 0.0f;
    for (int j0 = 0; j0 <= w.last; j0 += BC) {
        attention_stage_kv<S>(ks, vs, w.kg, w.vg, j0, T_);
        for (int jj = 0; jj < BC; jj++) {
            float s = 0.0f, dp = 0.0f;
            LLMGEN_UNROLL
            for (int e = 0; e < DPT; e++) {
                if (S::in(part + TPR * e)) {
                    s += qv[e] * ks[jj * HD + (part + TPR * e)];
                    dp += gv[e] * vs[jj * HD + (part + TPR * e)];
                }
            }
            s = attention_group_sum<TPR>(s);
            dp = attention_group_sum<TPR>(dp);
            const float p = j0 + jj <= i ? expf(s * scale - li) : 0.0f;
            const float ds = p * (dp - D) * scale;
            LLMGEN_UNROLL
            for (int e = 0; e < DPT; e++)
                if (S::in(part + TPR * e)) acc[e] += ds * ks[jj * HD + (part + TPR * e)];
        }
    }
    if (!w.live) return;
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++)
        if (S::in(part + TPR * e)) dq[w.qoff + (part + TPR * e)] = to_floatX(acc[e]);
}

/* dk2 = sum_h sum_t ds q, dv2 = sum_h sum_t p dy over the R query head(s) h of the group: BK key rows x
 * TPR thread(s) a block, walking query tiles head by head */
template <class S>
__global__ void __launch_bounds__(S::NK) attention_dkv_kernel(floatX *dk, floatX *dv, const floatX *dy,
                                                              const floatX *q, const floatX *kk, const floatX *v,
                                                              const floatX *y, const float *lse, float scale,
                                                              int T_) {
    constexpr int HD = S::HD, TPR = S::TPR, DPT = S::DPT, BC = S::BC, NK = S::NK;
    LLMGEN_DYNAMIC_SMEM(float, smem);
    float *qs = smem, *gs = smem + BC * HD, *Ds = smem + 2 * BC * HD, *ls = Ds + BC;
    const int part = threadIdx.x % TPR;
    const int b = blockIdx.y / S::KV, g = blockIdx.y % S::KV;
    const int j0 = blockIdx.x * S::BK, j = j0 + threadIdx.x / TPR;
    const bool live = j < T_;
    const long koff = ((long)b * T_ + j) * S::KS + g * HD;   /* key row j of K/V head g (and of dk, dv) */
    float kr[DPT], vr[DPT], dkr[DPT], dvr[DPT];
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++) {
        kr[e] = live && S::in(part + TPR * e) ? to_float(kk[koff + (part + TPR * e)]) : 0.0f;
        vr[e] = live && S::in(part + TPR * e) ? to_float(v[koff + (part + TPR * e)]) : 0.0f;
        dkr[e] = 0.0f;
        dvr[e] = 0.0f;
    }
    for (int r = 0; r < S::R; r++) {                         /* the group's query heads, in order */
        const int h = g * S::R + r;
        for (int t0 = j0; t0 < T_; t0 += BC) {                /* queries before j0 see none of these keys */
            __syncthreads();
            for (int e = threadIdx.x; e < BC * HD; e += NK) {
                const int t = t0 + e / HD, d = e % HD;
                const long row = (long)b * T_ + t;
                qs[e] = t < T_ ? to_float(q[row * S::QS + h * HD + d]) : 0.0f;
                gs[e] = t < T_ ? to_float(dy[row * S::YS + h * HD + d]) : 0.0f;
            }
            for (int tt = threadIdx.x; tt < BC; tt += NK) {
                const int t = t0 + tt;
                float D = 0.0f;
                if (t < T_) {
                    const long o = ((long)b * T_ + t) * S::YS + h * HD;
                    for (int d = 0; d < HD; d++) D += to_float(dy[o + d]) * to_float(y[o + d]);
                }
                Ds[tt] = D;
                ls[tt] = t < T_ ? lse[((long)b * S::NH + h) * T_ + t] : 0.0f;
            }
            __syncthreads();
            for (int tt = 0; tt < BC; tt++) {
                float s = 0.0f, dp = 0.0f;
                LLMGEN_UNROLL
                for (int e = 0; e < DPT; e++) {
                    if (S::in(part + TPR * e)) {
                        s += qs[tt * HD + (part + TPR * e)] * kr[e];
                        dp += gs[tt * HD + (part + TPR * e)] * vr[e];
                    }
                }
                s = attention_group_sum<TPR>(s);
                dp = attention_group_sum<TPR>(dp);
                const int t = t0 + tt;
                const float p = t >= j && t < T_ ? expf(s * scale - ls[tt]) : 0.0f;
                const float ds = p * (dp - Ds[tt]) * scale;
                LLMGEN_UNROLL
                for (int e = 0; e < DPT; e++) {
                    if (S::in(part + TPR * e)) {
                        dkr[e] += ds * qs[tt * HD + (part + TPR * e)];
                        dvr[e] += p * gs[tt * HD + (part + TPR * e)];
                    }
                }
            }
        }
    }
    if (!live) return;
    LLMGEN_UNROLL
    for (int e = 0; e < DPT; e++) {
        if (S::in(part + TPR * e)) {
            dk[koff + (part + TPR * e)] = to_floatX(dkr[e]);
            dv[koff + (part + TPR * e)] = to_floatX(dvr[e]);
        }
    }
}

/* host launchers; each kernel's dynamic shared memory is allowed once per instance (only needed above
 * 48 KiB, harmless below) */
template <class S>
static void attention_fwd(floatX *y, float *lse, const floatX *q, const floatX *kk, const floatX *v, float scale,
                          int B_, int T_) {
    const size_t smem = sizeof(float) * 2 * S::BC * S::HD;
    static bool configured = false;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_fwd_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        configured = true;
    }
    LLMGEN_LAUNCH(attention_fwd_kernel<S>, dim3(cdiv(T_, S::BQ), B_ * S::KV * S::NCH), dim3(S::NTH), smem, 0,
                  y, lse, q, kk, v, scale, T_);
    LAUNCH_CHECK("attention_fwd_kernel");
}

template <class S>
static void attention_bwd(floatX *dq, floatX *dk, floatX *dv, const floatX *dy, const floatX *q, const floatX *kk,
                          const floatX *v, const floatX *y, const float *lse, float scale, int B_, int T_) {
    const size_t smem_dq = sizeof(float) * 2 * S::BC * S::HD;
    const size_t smem_dkv = sizeof(float) * (2 * S::BC * S::HD + 2 * S::BC);    /* + D and lse of a tile */
    static bool configured = false;
    if (!configured) {
        CUDA_CHECK(cudaFuncSetAttribute(attention_dq_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem_dq));
        CUDA_CHECK(cudaFuncSetAttribute(attention_dkv_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem_dkv));
        configured = true;
    }
    LLMGEN_LAUNCH(attention_dq_kernel<S>, dim3(cdiv(T_, S::BQ), B_ * S::KV * S::NCH), dim3(S::NTH), smem_dq, 0,
                  dq, dy, q, kk, v, y, lse, scale, T_);
    LAUNCH_CHECK("attention_dq_kernel");
    LLMGEN_LAUNCH(attention_dkv_kernel<S>, dim3(cdiv(T_, S::BK), B_ * S::KV), dim3(S::NK), smem_dkv, 0,
                  dk, dv, dy, q, kk, v, y, lse, scale, T_);
    LAUNCH_CHECK("attention_dkv_kernel");
}
