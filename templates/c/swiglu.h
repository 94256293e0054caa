/* The SwiGLU gate of Llama's MLP over n elements: h = silu(gate) * up, silu(g) = g * sigmoid(g). Called inside
 * the parallel region the schedule opens (PARALLEL). */

ALWAYS_INLINE void swiglu_forward(float *out, const float *gate, const float *up, long n) {
    #pragma omp for simd
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

/* dgate = dh * up * silu'(g), silu'(g) = sig * (1 + g * (1 - sig));  dup = dh * silu(g).
 * dgate/dup may be gate/up (in place): each element is read before it is written. */
ALWAYS_INLINE void swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up,
                                   long n) {
    #pragma omp for simd
    for (long i = 0; i < n; i++) {
        float g = gate[i], u = up[i], d = dh[i];
        float sig = 1.0f / (1.0f + expf(-g));
        dgate[i] = d * u * (sig * (1.0f + g * (1.0f - sig)));
        dup[i] = d * (g * sig);
    }
}
