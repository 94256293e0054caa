/* The optimizer: global grad norm, then AdamW (torch.optim.AdamW's single-tensor formula) after
 * clip_grad_norm_'s rescale. Parameters, grads and both moments share one layout. templates/c/adamw.c.j2 calls
 * these in a parallel region (PARALLEL) with the spec's constants as literals.
 *
 * Both run at memory bandwidth: one vectorised pass each, every thread on one contiguous slice, the parameter
 * table walked once per thread (never searched per element). GPT-2 124M, 2 threads, Zen 5 (AMD EPYC):
 * adamw_update 78-97 ms for 124.5M parameters (28 bytes each: 36-45 GB/s), where a bare loop that reads the
 * same four arrays and writes three took 82-96 ms: the arithmetic (two divisions and a square root a vector)
 * hides under the memory traffic, and fewer bytes would need other numbers (bf16 moments) or another order. */

/* The grad norm, sqrt(sum of every gradient squared), into *norm, and the sum itself into *sumsq (either NULL: not
 * wanted), accumulated in double over the n grads. Fixed chunks summed in a fixed order (and a fixed vector width
 * inside each): the same bits on every run, whatever the thread count. Memory-bound: one read of the grads. part:
 * NORM_CHUNKS partial sums shared by the team. */
enum { NORM_CHUNKS = 64 };
static double norm_part[NORM_CHUNKS];   /* the partial sums the schedule's call shares across the team */
ALWAYS_INLINE void grad_norm_forward(float *norm, double *sumsq, const float *grads, double *part, long n) {
    const long per = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
    #pragma omp for schedule(static)
    for (int c = 0; c < NORM_CHUNKS; c++) {
        double s = 0.0;
        long hi = (c + 1) * per < n ? (c + 1) * per : n;
        #pragma omp simd reduction(+:s)
        for (long i = c * per; i < hi; i++) s += (double)grads[i] * grads[i];
        part[c] = s;
    }
    #pragma omp single
    {
        double s = 0.0;
        for (int c = 0; c < NORM_CHUNKS; c++) s += part[c];
        if (sumsq) *sumsq = s;
        if (norm) *norm = (float)sqrt(s);
    }
}

/* The step's scalars: the clip factor from the grad norm, the bias corrections, the decay factor. */
typedef struct { float clip, step_size, bc2_sqrt, keep; } AdamW;
static inline AdamW adamw_scalars(float norm, double lr, int t, double weight_decay, double beta1, double beta2,
                                  float max_norm) {
    const float clip = max_norm / (norm + 1e-6f);
    return (AdamW){ clip > 1.0f ? 1.0f : clip, (float)(lr / (1.0 - pow(beta1, t))), (float)sqrt(1.0 - pow(beta2, t)),
                    (float)(1.0 - (double)lr * weight_decay) };
}

/* AdamW on the elements [lo, hi) of one parameter; decay: its weight-decay factor (s.keep, or 1) */
ALWAYS_INLINE void adamw_range(float *params, const float *grads, float *m, float *v, AdamW s, float decay, long lo,
                               long hi, double beta1, double beta2, float eps) {
    #pragma omp simd
    for (long i = lo; i < hi; i++) {
        float g = grads[i] * s.clip;
        float p = params[i] * decay;
        float mi = m[i] + (float)(1.0 - beta1) * (g - m[i]);
        float vi = v[i] * (float)beta2 + (float)(1.0 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = p - s.step_size * (mi / (sqrtf(vi) / s.bc2_sqrt + eps));
    }
}

/* One pass over the n parameters of the table seg (or, seg NULL, over one parameter of total elements, decayed
 * by `decay`): clip, decoupled weight decay (2-D weights only), moments, bias-corrected step. Memory-bound
 * (4 streams read, 3 written, 28 bytes per parameter), so each thread takes one contiguous slice of the arena,
 * walking the segments that overlap it (no barrier per parameter); every element is independent. */
ALWAYS_INLINE void adamw_update(float *params, const float *grads, float *m, float *v, AdamW s, const ParamInfo *seg,
                                int n, long total, float decay, double beta1, double beta2, float eps) {
    for (int j = 0; seg && j < n; j++)                /* the end of the last segment */
        if (seg[j].offset + seg[j].numel > total) total = seg[j].offset + seg[j].numel;
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const long lo = total * tid / nt / 16 * 16, hi = tid == nt - 1 ? total : total * (tid + 1) / nt / 16 * 16;
    if (!seg) adamw_range(params, grads, m, v, s, decay, lo, hi, beta1, beta2, eps);
    for (int j = 0; seg && j < n; j++) {
        const long a = seg[j].offset > lo ? seg[j].offset : lo;
        const long b = seg[j].offset + seg[j].numel < hi ? seg[j].offset + seg[j].numel : hi;
        adamw_range(params, grads, m, v, s, seg[j].decay ? s.keep : 1.0f, a, b, beta1, beta2, eps);
    }
}
