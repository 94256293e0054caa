/* embed.cuh -- the embedding as templates over the channels C: the token rows of wte, plus the position rows
 * of wpe when the model has a position table (GPT-2; Llama's positions enter through RoPE).
 * The backward sums each token's dx rows in position order through the buckets upload_tokens made (a stable
 * counting sort of the positions by token: order / token / start), so repeated tokens never race and the
 * (tied) embedding gradient needs no atomics.
 *
 * Needs from the program before it: floatX, to_float / to_floatX, cdiv, CUDA_CHECK, LAUNCH_CHECK and
 * LLMGEN_LAUNCH.
 */

/* out[bt, c] = wte[tokens[bt], c]: one thread per element */
template <int C>
__global__ void embed_kernel(floatX *out, const int *tokens, const floatX *wte, int N) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    const int bt = (int)(i / C), c = (int)(i % C);
    out[i] = wte[(long)tokens[bt] * C + c];
}

/* out[bt, c] = wte[tokens[bt], c] + wpe[bt % T, c]: one thread per element */
template <int C>
__global__ void embed_pos_kernel(floatX *out, const int *tokens, const floatX *wte, const floatX *wpe, int N, int T) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    const int bt = (int)(i / C), c = (int)(i % C);
    out[i] = to_floatX(to_float(wte[(long)tokens[bt] * C + c]) + to_float(wpe[(long)(bt % T) * C + c]));
}

/* dwte[token] (+)= the dx rows of that token, summed in position order: block x owns one distinct token of
 * the micro-batch, threads own channels (grid.y covers C in chunks of 128) */
template <int C, bool ACC>
__global__ void embed_wte_bwd_kernel(float *dwte, const floatX *dx, const int *order, const int *token,
                                     const int *start) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int u = blockIdx.x;
    float s = 0.0f;
    for (int j = start[u]; j < start[u + 1]; j++) s += to_float(dx[(long)order[j] * C + c]);
    float *d = dwte + (long)token[u] * C + c;
    *d = ACC ? *d + s : s;
}

/* dwpe[t] (+)= sum over b of dx[b, t], in b order */
template <int C, bool ACC>
__global__ void embed_wpe_bwd_kernel(float *dwpe, const floatX *dx, int B, int T) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x, t = blockIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int b = 0; b < B; b++) s += to_float(dx[((long)b * T + t) * C + c]);
    float *d = dwpe + (long)t * C + c;
    *d = ACC ? *d + s : s;
}

/* host launchers: N = B*T rows */
template <int C>
static void embed_fwd(floatX *out, const int *tokens, const floatX *wte, int N) {
    LLMGEN_LAUNCH((embed_kernel<C>), dim3(cdiv((long)N * C, 256)), dim3(256), 0, 0, out, tokens, wte, N);
    LAUNCH_CHECK("embed_kernel");
}

template <int C>
static void embed_pos_fwd(floatX *out, const int *tokens, const floatX *wte, const floatX *wpe, int N, int T) {
    LLMGEN_LAUNCH((embed_pos_kernel<C>), dim3(cdiv((long)N * C, 256)), dim3(256), 0, 0, out, tokens, wte, wpe, N, T);
    LAUNCH_CHECK("embed_pos_kernel");
}

/* dwte of V rows: zeroed first unless ACC; nbuckets distinct tokens in the buckets */
template <int C, int V, bool ACC>
static void embed_wte_bwd(float *dwte, const floatX *dx, const int *order, const int *token, const int *start,
                          int nbuckets) {
    if (!ACC) CUDA_CHECK(cudaMemset(dwte, 0, sizeof(float) * V * C));
    if (nbuckets > 0) {
        LLMGEN_LAUNCH((embed_wte_bwd_kernel<C, ACC>), dim3(nbuckets, cdiv(C, 128)), dim3(128), 0, 0, dwte, dx, order,
                      token, start);
        LAUNCH_CHECK("embed_wte_bwd_kernel");
    }
}

/* dwpe of P rows: zeroed first unless ACC; the first T rows get the sums */
template <int C, int P, bool ACC>
static void embed_wpe_bwd(float *dwpe, const floatX *dx, int B, int T) {
    if (!ACC) CUDA_CHECK(cudaMemset(dwpe, 0, sizeof(float) * P * C));
    LLMGEN_LAUNCH((embed_wpe_bwd_kernel<C, ACC>), dim3(T, cdiv(C, 128)), dim3(128), 0, 0, dwpe, dx, B, T);
    LAUNCH_CHECK("embed_wpe_bwd_kernel");
}
