/* Every kernel of templates/cuda/kernels/ at the shapes of GPT-2 124M (C 768, V 50257 padded to
 * 50304) and Llama-3.1-8B (C 4096, V 128256), fp32 and bf16 storage: compiled by nvcc -c with
 * -Xptxas -v (test_kern_build.py reads registers and spills per kernel) and by g++ under the
 * emulation. Nothing here runs: the calls only instantiate the templates. */
#include "norms.cuh"
#include "xent.cuh"
#include "adamw.cuh"
#include "embed.cuh"

using llmk::bf16;

template <class T, int C, int V, int Vp>
void instantiate_model() {
    T* p = nullptr;
    float* f = nullptr;
    const int* ip = nullptr;
    llmk::NormScratch sc = {nullptr, nullptr, 0};
    llmk::layernorm_forward<T, C>(p, f, f, p, p, p, 0, 1e-5f);
    llmk::residual_layernorm_forward<T, C>(p, p, f, f, p, p, p, p, 0, 1e-5f);
    llmk::layernorm_backward<T, C>(p, f, f, f, p, p, f, f, p, p, sc, 0, 0);
    llmk::rmsnorm_forward<T, C>(p, f, p, p, 0, 1e-5f);
    llmk::residual_rmsnorm_forward<T, C>(p, p, f, p, p, p, 0, 1e-5f);
    llmk::rmsnorm_backward<T, C>(p, f, f, p, p, f, p, p, sc, 0, 0);
    llmk::softmax_xent_backward<T, V, Vp>(f, p, p, ip, f, f, 0, 1);
    llmk::xent_forward<T, V, Vp>(f, p, ip, 0);
    llmk::embedding_forward<T, C>(p, ip, p, p, 0, 1);
    llmk::embedding_backward_tokens<T, C>(f, p, ip, ip, ip, 0, 1, 1);
    llmk::embedding_backward_positions<T, C>(f, p, 0, 0, 1);
    llmk::adamw_update<T>(p, f, f, f, f, (const llmk::AdamwSegment*)nullptr, 0, 0, 0, f, 1e-3, 1, llmk::AdamwHyper{});
}

void instantiate_all() {
    instantiate_model<float, 768, 50257, 50304>();     /* GPT-2 124M */
    instantiate_model<bf16, 768, 50257, 50304>();
    instantiate_model<float, 4096, 128256, 128256>();  /* Llama-3.1-8B */
    instantiate_model<bf16, 4096, 128256, 128256>();
    llmk::grad_norm(nullptr, nullptr, nullptr, 0, nullptr, 1);
}

int main() { return 0; }
