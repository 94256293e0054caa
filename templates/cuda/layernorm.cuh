/* layernorm.cuh -- LayerNorm over the last axis (C channels) of N = B*T rows, forward and backward, as
 * templates over C and the rows per block (WARPS): one warp per row, each lane holding the channels
 * lane, lane + 32, ... in registers (PER = ceil(C / 32) of them). The residual variant rounds the sum
 * to floatX first and normalises the rounded values, so a recompute from the stored sum gives the same
 * bits. eps is an argument.
 *
 * Backward: dx = rstd * (dy*w - mean(dy*w) - xhat * mean(dy*w*xhat)) (+ dres), dw (+)= sum_rows dy*xhat,
 * db (+)= sum_rows dy. Stage 1: warp per row (rows strided over the grid); each block adds its warps'
 * column sums in warp order and writes them to partial[block] (2*C floats a block: dw, then db).
 * Stage 2 sums the blocks in order: no atomics, the same bits every run.
 *
 * Needs from the program before it: floatX, to_float / to_floatX, warp_sum, cdiv, CUDA_CHECK,
 * LAUNCH_CHECK, LLMGEN_LAUNCH and LLMGEN_UNROLL.
 */

/* normalise the row held in v (PER values a lane), write out, mean and rstd */
template <int C, int PER>
__device__ __forceinline__ void layernorm_row(const float *v, floatX *out, float *mean, float *rstd,
                                              const floatX *w, const floatX *b, float eps, int row, int lane) {
    float s = 0.0f;
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) s += v[i];
    const float m = warp_sum(s) / C;
    float q = 0.0f;
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = lane + 32 * i;
        if (c < C) { const float d = v[i] - m; q += d * d; }
    }
    const float r = 1.0f / sqrtf(warp_sum(q) / C + eps);
    floatX *o = out + (long)row * C;
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = lane + 32 * i;
        if (c < C) o[c] = to_floatX((v[i] - m) * r * to_float(w[c]) + to_float(b[c]));
    }
    if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

/* out = layernorm(inp) * w + b; grid N / WARPS blocks of WARPS warps */
template <int C, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) layernorm_kernel(floatX *out, float *mean, float *rstd,
                                                               const floatX *inp, const floatX *w, const floatX *b,
                                                               float eps, int N) {
    constexpr int PER = (C + 31) / 32;
    const int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;     /* a whole warp leaves together; no block barrier below */
    const floatX *x = inp + (long)row * C;
    float v[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = lane + 32 * i;
        v[i] = c < C ? to_float(x[c]) : 0.0f;
    }
    layernorm_row<C, PER>(v, out, mean, rstd, w, b, eps, row, lane);
}

/* sum = a + b (the residual stream, rounded to floatX), then out = layernorm(sum) */
template <int C, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) residual_layernorm_kernel(floatX *sum, floatX *out, float *mean,
                                                                        float *rstd, const floatX *a,
                                                                        const floatX *bb, const floatX *w,
                                                                        const floatX *b, float eps, int N) {
    constexpr int PER = (C + 31) / 32;
    const int row = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const long base = (long)row * C;
    float v[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = lane + 32 * i;
        v[i] = 0.0f;
        if (c < C) {
            const floatX x = to_floatX(to_float(a[base + c]) + to_float(bb[base + c]));
            sum[base + c] = x;
            v[i] = to_float(x);
        }
    }
    layernorm_row<C, PER>(v, out, mean, rstd, w, b, eps, row, lane);
}

/* stage 1 of the backward: dx (+ dres when RESIDUAL), and each block's column sums of dy*xhat and dy */
template <int C, int WARPS, bool RESIDUAL>
__global__ void __launch_bounds__(32 * WARPS) layernorm_bwd_kernel(floatX *dx, float *partial, const floatX *dy,
                                                                   const floatX *inp, const floatX *w,
                                                                   const float *mean, const float *rstd,
                                                                   const floatX *dres, int N) {
    constexpr int PER = (C + 31) / 32;
    __shared__ float col_w[C], col_b[C];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    (void)dres;
    float aw[PER], ab[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) { aw[i] = 0.0f; ab[i] = 0.0f; }
    for (int row = blockIdx.x * WARPS + warp; row < N; row += gridDim.x * WARPS) {
        const long base = (long)row * C;
        const float m = mean[row], r = rstd[row];
        float g[PER], xh[PER], sa = 0.0f, sb = 0.0f;
        LLMGEN_UNROLL
        for (int i = 0; i < PER; i++) {
            const int c = lane + 32 * i;
            g[i] = 0.0f; xh[i] = 0.0f;
            if (c < C) {
                g[i] = to_float(dy[base + c]);
                xh[i] = (to_float(inp[base + c]) - m) * r;
                const float gw = g[i] * to_float(w[c]);
                sa += gw;
                sb += gw * xh[i];
            }
        }
        sa = warp_sum(sa) / C;
        sb = warp_sum(sb) / C;
        LLMGEN_UNROLL
        for (int i = 0; i < PER; i++) {
            const int c = lane + 32 * i;
            if (c < C) {
                float d = r * (g[i] * to_float(w[c]) - sa - xh[i] * sb);
                if (RESIDUAL) d += to_float(dres[base + c]);
                dx[base + c] = to_floatX(d);
                aw[i] += g[i] * xh[i];
                ab[i] += g[i];
            }
        }
    }
    for (int wi = 0; wi < WARPS; wi++) {                     /* the block's column sums, warp by warp */
        if (warp == wi) {
            LLMGEN_UNROLL
            for (int i = 0; i < PER; i++) {
                const int c = lane + 32 * i;
                if (c < C) {
                    col_w[c] = wi == 0 ? aw[i] : col_w[c] + aw[i];
                    col_b[c] = wi == 0 ? ab[i] : col_b[c] + ab[i];
                }
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        partial[(long)blockIdx.x * 2 * C + c] = col_w[c];
        partial[(long)blockIdx.x * 2 * C + C + c] = col_b[c];
    }
}

/* stage 2: dw, db = the blocks' partial sums in block order (added to dw, db when ACC_W, ACC_B) */
template <int C, bool ACC_W, bool ACC_B>
__global__ void layernorm_bwd_sum_kernel(float *dw, float *db, const float *partial, int nblocks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sw = 0.0f, sb = 0.0f;
    for (int j = 0; j < nblocks; j++) {
        sw += partial[(long)j * 2 * C + c];
        sb += partial[(long)j * 2 * C + C + c];
    }
    dw[c] = ACC_W ? dw[c] + sw : sw;
    db[c] = ACC_B ? db[c] + sb : sb;
}

/* host launchers: N rows; the backward's partial sums go to `partial` (2*C floats for each of at most
 * MAXB blocks) */
template <int C, int WARPS>
static void layernorm_fwd(floatX *out, float *mean, float *rstd, const floatX *inp, const floatX *w, const floatX *b,
                          float eps, int N) {
    LLMGEN_LAUNCH((layernorm_kernel<C, WARPS>), dim3(cdiv(N, WARPS)), dim3(32 * WARPS), 0, 0, out, mean, rstd, inp, w,
                  b, eps, N);
    LAUNCH_CHECK("layernorm_kernel");
}

template <int C, int WARPS>
static void residual_layernorm_fwd(floatX *sum, floatX *out, float *mean, float *rstd, const floatX *a,
                                   const floatX *bb, const floatX *w, const floatX *b, float eps, int N) {
    LLMGEN_LAUNCH((residual_layernorm_kernel<C, WARPS>), dim3(cdiv(N, WARPS)), dim3(32 * WARPS), 0, 0, sum, out, mean,
                  rstd, a, bb, w, b, eps, N);
    LAUNCH_CHECK("residual_layernorm_kernel");
}

template <int C, int WARPS, int MAXB, bool RESIDUAL, bool ACC_W, bool ACC_B>
static void layernorm_bwd(floatX *dx, float *dw, float *db, float *partial, const floatX *dy, const floatX *inp,
                          const floatX *w, const float *mean, const float *rstd, const floatX *dres, int N) {
    const int nblocks = (int)(cdiv(N, WARPS) < MAXB ? cdiv(N, WARPS) : MAXB);
    LLMGEN_LAUNCH((layernorm_bwd_kernel<C, WARPS, RESIDUAL>), dim3(nblocks), dim3(32 * WARPS), 0, 0, dx, partial, dy,
                  inp, w, mean, rstd, dres, N);
    LAUNCH_CHECK("layernorm_bwd_kernel");
    LLMGEN_LAUNCH((layernorm_bwd_sum_kernel<C, ACC_W, ACC_B>), dim3(cdiv(C, 256)), dim3(256), 0, 0, dw, db, partial,
                  nblocks);
    LAUNCH_CHECK("layernorm_bwd_sum_kernel");
}
