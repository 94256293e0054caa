/* Embedding: the token rows of wte, plus the position rows of wpe when the model has a position table (GPT-2;
 * Llama's positions enter through RoPE: wpe NULL), over the runtime BT rows of T positions. Called inside the
 * parallel region the schedule opens (PARALLEL). */

ALWAYS_INLINE void embed_forward(float *out, const int *tokens, const float *wte, const float *wpe, int C) {
    #pragma omp for
    for (int bt = 0; bt < BT; bt++) {
        const float *te = wte + (size_t)tokens[bt] * C;
        const float *pe = wpe ? wpe + (size_t)(bt % T) * C : NULL;
        float *o = out + (size_t)bt * C;
        for (int c = 0; c < C; c++) o[c] = pe ? te[c] + pe[c] : te[c];
    }
}

/* Scatter-add of dx rows into dwte[token] (and dwpe[t] unless NULL); threads own 16-channel column blocks, so
 * repeated tokens never race. Unless acc_te (acc_pe), dwte (dwpe: V, P rows) is zeroed first. */
ALWAYS_INLINE void embed_backward(float *dwte, float *dwpe, const float *dx, const int *tokens, int C, int V, int P,
                                  int acc_te, int acc_pe) {
    #pragma omp single
    {
        if (!acc_te) memset(dwte, 0, sizeof(float) * V * C);
        if (dwpe && !acc_pe) memset(dwpe, 0, sizeof(float) * P * C);
    }
    #pragma omp for
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int bt = 0; bt < BT; bt++) {
            const float *d = dx + (size_t)bt * C;
            float *te = dwte + (size_t)tokens[bt] * C, *pe = dwpe ? dwpe + (size_t)(bt % T) * C : NULL;
            for (int c = c0; c < c1; c++) te[c] += d[c];
            for (int c = c0; pe && c < c1; c++) pe[c] += d[c];
        }
    }
}
