/* rmsnorm.cuh -- RMSNorm over the last axis (C channels) of N = B*T rows (Llama), forward and backward, as
 * templates over C and the threads per row NT: y = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps).
 * One block of NT threads per row; thread t holds channels t, t + NT, ... (PER = ceil(C / NT) of them) in
 * registers, so C = 4096 costs 8 registers a thread, not 128 as with a warp per row.
 * The residual variant rounds the sum to floatX first and normalises the rounded values (what it stores),
 * so a recompute (-r 2) from the stored sum gives the same bits. eps is an argument.
 * The backward writes dx row by row and keeps each thread's dw column sums in registers; a block writes
 * them to partial[block] and a second kernel adds the blocks in order: no atomics.
 * Numerics as templates/c/rmsnorm.h (fp32 math; floatX storage).
 *
 * Needs from the program before it: floatX, to_float / to_floatX, block_sum, cdiv, LAUNCH_CHECK,
 * LLMGEN_LAUNCH and LLMGEN_UNROLL.
 */

/* normalise the row held in v (PER values a thread), write out and rstd; red: 33 floats of shared memory */
template <int C, int NT, int PER>
__device__ __forceinline__ void rmsnorm_row(const float *v, floatX *out, float *rstd, const floatX *w, float eps,
                                            long row, float *red) {
    float ss = 0.0f;
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) ss += v[i] * v[i];
    const float r = 1.0f / sqrtf(block_sum(ss, red) / C + eps);
    floatX *o = out + row * C;
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + NT * i;
        if (c < C) o[c] = to_floatX(to_float(w[c]) * (v[i] * r));
    }
    if (threadIdx.x == 0) rstd[row] = r;
}

/* out = w * x * rstd, rstd[r] = 1 / sqrt(mean_c x[r,c]^2 + eps) (fp32, kept for the backward); a block per row */
template <int C, int NT>
__global__ void __launch_bounds__(NT) rmsnorm_kernel(floatX *out, float *rstd, const floatX *inp, const floatX *w,
                                                     float eps) {
    constexpr int PER = (C + NT - 1) / NT;
    __shared__ float red[33];
    const long row = blockIdx.x;
    const floatX *x = inp + row * C;
    float v[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + NT * i;
        v[i] = c < C ? to_float(x[c]) : 0.0f;
    }
    rmsnorm_row<C, NT, PER>(v, out, rstd, w, eps, row, red);
}

/* sum = a + b (the next residual stream, rounded to floatX), then out = rmsnorm(sum): one pass per row */
template <int C, int NT>
__global__ void __launch_bounds__(NT) residual_rmsnorm_kernel(floatX *sum, floatX *out, float *rstd, const floatX *a,
                                                              const floatX *bb, const floatX *w, float eps) {
    constexpr int PER = (C + NT - 1) / NT;
    __shared__ float red[33];
    const long row = blockIdx.x, base = row * C;
    float v[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + NT * i;
        v[i] = 0.0f;
        if (c < C) {
            const floatX s = to_floatX(to_float(a[base + c]) + to_float(bb[base + c]));
            sum[base + c] = s;
            v[i] = to_float(s);
        }
    }
    rmsnorm_row<C, NT, PER>(v, out, rstd, w, eps, row, red);
}

/* dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) (+ dres when RESIDUAL), xhat = x * rstd; the dw partial sums.
 * Block j handles rows j, j + gridDim.x, ... (a block per row at a time); thread t keeps the dw sums of
 * its channels and writes them to partial[j] (C floats a block). */
template <int C, int NT, bool RESIDUAL>
__global__ void __launch_bounds__(NT) rmsnorm_bwd_kernel(floatX *dx, float *partial, const floatX *dy,
                                                         const floatX *inp, const floatX *w, const float *rstd,
                                                         const floatX *dres, int N) {
    constexpr int PER = (C + NT - 1) / NT;
    __shared__ float red[33];
    float aw[PER], wv[PER];
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + NT * i;
        aw[i] = 0.0f;
        wv[i] = c < C ? to_float(w[c]) : 0.0f;
    }
    for (long row = blockIdx.x; row < N; row += gridDim.x) {     /* the same trip count for the whole block */
        const long base = row * C;
        const float r = rstd[row];
        float g[PER], x[PER], dot = 0.0f;
        LLMGEN_UNROLL
        for (int i = 0; i < PER; i++) {
            const int c = threadIdx.x + NT * i;
            g[i] = 0.0f; x[i] = 0.0f;
            if (c < C) {
                g[i] = to_float(dy[base + c]);
                x[i] = to_float(inp[base + c]);
                dot += g[i] * wv[i] * x[i];
            }
        }
        const float m = block_sum(dot, red) * (r / C);   /* mean(dy*w*xhat) */
        LLMGEN_UNROLL
        for (int i = 0; i < PER; i++) {
            const int c = threadIdx.x + NT * i;
            if (c < C) {
                float d = r * (g[i] * wv[i] - x[i] * r * m);
                if (RESIDUAL) d += to_float(dres[base + c]);
                dx[base + c] = to_floatX(d);
                aw[i] += g[i] * (x[i] * r);
            }
        }
    }
    LLMGEN_UNROLL
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + NT * i;
        if (c < C) partial[(long)blockIdx.x * C + c] = aw[i];
    }
}

/* dw (+)= the blocks' partial sums, added in block order */
template <int C, bool ACC>
__global__ void rmsnorm_bwd_sum_kernel(float *dw, const float *partial, int nblocks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int j = 0; j < nblocks; j++) s += partial[(long)j * C + c];
    dw[c] = ACC ? dw[c] + s : s;
}

/* host launchers: N rows; the backward's partial sums go to `partial` (C floats for each of at most MAXB
 * blocks) */
template <int C, int NT>
static void rmsnorm_fwd(floatX *out, float *rstd, const floatX *inp, const floatX *w, float eps, int N) {
    LLMGEN_LAUNCH((rmsnorm_kernel<C, NT>), dim3(N), dim3(NT), 0, 0, out, rstd, inp, w, eps);
    LAUNCH_CHECK("rmsnorm_kernel");
}

template <int C, int NT>
static void residual_rmsnorm_fwd(floatX *sum, floatX *out, float *rstd, const floatX *a, const floatX *bb,
                                 const floatX *w, float eps, int N) {
    LLMGEN_LAUNCH((residual_rmsnorm_kernel<C, NT>), dim3(N), dim3(NT), 0, 0, sum, out, rstd, a, bb, w, eps);
    LAUNCH_CHECK("residual_rmsnorm_kernel");
}

template <int C, int NT, int MAXB, bool RESIDUAL, bool ACC>
static void rmsnorm_bwd(floatX *dx, float *dw, float *partial, const floatX *dy, const floatX *inp, const floatX *w,
                        const float *rstd, const floatX *dres, int N) {
    const int nblocks = N < MAXB ? N : MAXB;
    LLMGEN_LAUNCH((rmsnorm_bwd_kernel<C, NT, RESIDUAL>), dim3(nblocks), dim3(NT), 0, 0, dx, partial, dy, inp, w, rstd,
                  dres, N);
    LAUNCH_CHECK("rmsnorm_bwd_kernel");
    LLMGEN_LAUNCH((rmsnorm_bwd_sum_kernel<C, ACC>), dim3(cdiv(C, 256)), dim3(256), 0, 0, dw, partial, nblocks);
    LAUNCH_CHECK("rmsnorm_bwd_sum_kernel");
}
