/* Rotary position embeddings in Hugging Face's rotate-half layout: inside each head of HD channels, channel i
 * pairs with channel i + HD/2 and the pair turns by angle t * inv_freq[i] (t = the position in its sequence).
 * inv_freq comes from the spec, Llama 3.1's scaling already applied (templates/c/rope.c.j2 holds it). The
 * backward turns the gradient back by -angle. out may be inp (in place): each pair is read before it is
 * written. NH: heads in this tensor; T and BT are the program's runtime batch shape. */

/* cos | sin (or -sin for the backward) of t * inv_freq for every position: T * HD floats, made per call (cheap
 * next to the BT * NH * HD rotations) so the kernel keeps no state; the caller frees it */
static inline float *rope_table(const float *inv_freq, int HD, int backward) {
    float *cs = (float *)xmalloc(sizeof(float) * (size_t)T * HD);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HD / 2; i++) {
            float a = (float)t * inv_freq[i];
            cs[(size_t)t * HD + i] = cosf(a);
            cs[(size_t)t * HD + HD / 2 + i] = backward ? -sinf(a) : sinf(a);
        }
    return cs;
}

/* out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin (x1 = channels [0, HD/2), x2 = [HD/2, HD) of a head) */
ALWAYS_INLINE void rope_rotate(float *out, const float *inp, const float *cs, int NH, int HD) {
    #pragma omp for
    for (int bt = 0; bt < BT; bt++) {
        const float *c = cs + (size_t)(bt % T) * HD, *s = c + HD / 2;
        for (int h = 0; h < NH; h++) {
            const float *x = inp + ((size_t)bt * NH + h) * HD;
            float *o = out + ((size_t)bt * NH + h) * HD;
            for (int i = 0; i < HD / 2; i++) {
                float x1 = x[i], x2 = x[i + HD / 2];
                o[i] = x1 * c[i] - x2 * s[i];
                o[i + HD / 2] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}
