/* The embedding kernels of ../../embed.cuh (test_kern_embed.py). CASE = op:dtype:C.
 *   fwd  inputs tokens (int32, N), wte (T, V x C), wpe (T, P x C, or empty), params (int32 N, V, seq_len)
 *        output out (T, N x C)
 *   bwd  inputs tokens (int32, B*seq_len), dx (T), dwte0 (fp32 V x C), dwpe0 (fp32 seq_len x C),
 *        params (int32 B, seq_len, V, accumulate); outputs dwte, dwpe (twice: _2), and the buckets
 *        (order, token, start) as built on the host */
#include "kdriver.h"
#include "embed.cuh"

template <class T, int C>
static int run(const std::string& op) {
    const std::vector<int> prm = read_input<int>("params");
    if (op == "fwd") {
        const int N = prm[0], V = prm[1], seq_len = prm[2];
        (void)V;
        int* tokens = dev_in<int>("tokens");
        T *wte = dev_in<T>("wte"), *wpe = dev_in<T>("wpe");
        T* out = dev_out<T>((size_t)N * C);
        check_launch(llmk::embedding_forward<T, C>(out, tokens, wte, wpe, N, seq_len), "embedding_forward");
        save_device("out", out, (size_t)N * C);
    } else if (op == "bwd") {
        const int B = prm[0], seq_len = prm[1], V = prm[2], accumulate = prm[3], n = B * seq_len;
        const std::vector<int> tokens = read_input<int>("tokens");
        std::vector<int> order(n), token(n), start(n + 1), counts(V);
        const int nb =
            llmk::embed_buckets_build(order.data(), token.data(), start.data(), counts.data(), tokens.data(), n, V);
        write_output("order", order.data(), sizeof(int) * n);
        write_output("bucket_token", token.data(), sizeof(int) * nb);
        write_output("bucket_start", start.data(), sizeof(int) * (nb + 1));
        int *d_order = to_device(order), *d_token = to_device(token), *d_start = to_device(start);
        T* dx = dev_in<T>("dx");
        const std::vector<float> dwte0 = read_input<float>("dwte0"), dwpe0 = read_input<float>("dwpe0");
        for (int rep = 0; rep < 2; rep++) {
            float *dwte = to_device(dwte0), *dwpe = to_device(dwpe0);
            check_launch(llmk::embedding_backward_tokens<T, C>(dwte, dx, d_order, d_token, d_start, nb, V, accumulate),
                         "embedding_backward_tokens");
            check_launch(llmk::embedding_backward_positions<T, C>(dwpe, dx, B, seq_len, accumulate),
                         "embedding_backward_positions");
            save_device(rep ? "dwte_2" : "dwte", dwte, (size_t)V * C);
            save_device(rep ? "dwpe_2" : "dwpe", dwpe, (size_t)seq_len * C);
        }
    } else {
        fprintf(stderr, "unknown op %s\n", op.c_str());
        return 2;
    }
    return 0;
}

template <class T>
static int by_size(const std::string& op, int C) {
    switch (C) {
    case 768: return run<T, 768>(op);     /* GPT-2: 96 (bf16) or 192 (fp32) threads per bucket */
    case 4096: return run<T, 4096>(op);   /* Llama-3 8B: bf16 512 vectors: 2 blocks per bucket */
    case 100: return run<T, 100>(op);     /* 4-element vectors */
    case 37: return run<T, 37>(op);       /* scalar */
    }
    fprintf(stderr, "C=%d is not instantiated\n", C);
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    g_dir = argv[2];
    const std::vector<std::string> c = split_case(argv[1]);
    if (c.size() != 3) return 2;
    const int C = atoi(c[2].c_str());
    return c[1] == "bf16" ? by_size<llmk_bf16>(c[0], C) : by_size<float>(c[0], C);
}
