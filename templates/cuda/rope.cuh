/* rope.cuh -- rotary position embeddings in Hugging Face's rotate-half layout, as templates over the heads
 * NH of the tensor and the head size HD: inside each head, channel i pairs with channel i + HD/2 and the pair
 * turns by angle t * inv_freq[i] (t = the position in its sequence, bt % T). The backward (BWD) turns the
 * gradient back by -angle. One thread per (row bt, frequency i): one cosf/sinf pair (fp32, the angle rounded
 * to float32 first, as HF does), then the NH heads of that row rotate with it. out may be inp (in place): a
 * thread reads both channels of a pair before it writes them, and no other thread touches them.
 *
 * The inverse frequencies come from the instance: FREQ is a type whose static __device__ at(i) returns
 * inv_freq[i] (the family template defines the table and that accessor).
 *
 * Needs from the program before it: floatX, to_float / to_floatX, cdiv, LAUNCH_CHECK and LLMGEN_LAUNCH.
 */

/* forward: out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin (x1 = channels [0, HD/2), x2 = [HD/2, HD) of a head);
 * backward (BWD), the transpose: dx1 = dy1 cos + dy2 sin, dx2 = dy2 cos - dy1 sin */
template <int NH, int HD, bool BWD, class FREQ>
__global__ void rope_kernel(floatX *out, const floatX *inp, int N, int T) {
    constexpr int H2 = HD / 2;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)N * H2) return;
    const int bt = (int)(idx / H2), i = (int)(idx % H2);
    const float a = (float)(bt % T) * FREQ::at(i);
    const float c = cosf(a), s = BWD ? -sinf(a) : sinf(a);
    for (int h = 0; h < NH; h++) {
        const long base = ((long)bt * NH + h) * HD;
        const float x1 = to_float(inp[base + i]), x2 = to_float(inp[base + H2 + i]);
        out[base + i] = to_floatX(x1 * c - x2 * s);
        out[base + H2 + i] = to_floatX(x2 * c + x1 * s);
    }
}

/* host launcher: N rows of NH heads, sequences of T positions */
template <int NH, int HD, bool BWD, class FREQ>
static void rope(floatX *out, const floatX *inp, int N, int T) {
    LLMGEN_LAUNCH((rope_kernel<NH, HD, BWD, FREQ>), dim3(cdiv((long)N * (HD / 2), 256)), dim3(256), 0, 0, out, inp,
                  N, T);
    LAUNCH_CHECK("rope_kernel");
}
