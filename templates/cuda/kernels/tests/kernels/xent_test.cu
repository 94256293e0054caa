/* Softmax + cross-entropy of ../../xent.cuh (test_kern_xent.py). CASE = op:dtype:V:Vp, op xent_bwd
 * (losses and dlogits) or xent_fwd (losses only). params.bin (int32): N, loss_rows, use_dlosses,
 * in_place. Inputs: logits (N, Vp), targets (N), dloss (1 float), dlosses (N floats). The
 * backward runs twice (fresh logits each time) to show the same bits: outputs <name>, <name>_2. */
#include "kdriver.h"
#include "xent.cuh"

template <class T, int V, int Vp>
static int run(const std::string& op) {
    const std::vector<int> prm = read_input<int>("params");
    const int N = prm[0], loss_rows = prm[1], use_dlosses = prm[2], in_place = prm[3];
    const std::vector<char> logits_h = read_bytes("logits");
    int* targets = dev_in<int>("targets");
    float *dloss = dev_in<float>("dloss"), *dlosses = use_dlosses ? dev_in<float>("dlosses") : nullptr;
    const size_t NV = (size_t)N * Vp;
    for (int rep = 0; rep < (op == "xent_bwd" ? 2 : 1); rep++) {
        T* logits = dev_out<T>(NV);
        CHECK_CUDA(cudaMemcpy(logits, logits_h.data(), NV * sizeof(T), cudaMemcpyHostToDevice));
        float* losses = dev_out<float>(N);
        const std::string s = rep ? "_2" : "";
        if (op == "xent_bwd") {
            T* d = in_place ? logits : dev_out<T>(NV);
            check_launch(
                llmk::softmax_xent_backward<T, V, Vp>(losses, d, logits, targets, dloss, dlosses, N, loss_rows),
                "xent_bwd");
            save_device(("dlogits" + s).c_str(), d, NV);
        } else if (op == "xent_fwd") {
            check_launch(llmk::xent_forward<T, V, Vp>(losses, logits, targets, N), "xent_fwd");
        } else {
            fprintf(stderr, "unknown op %s\n", op.c_str());
            return 2;
        }
        save_device(("losses" + s).c_str(), losses, N);
    }
    return 0;
}

template <class T>
static int by_size(const std::string& op, int V, int Vp) {
    if (V == 50257 && Vp == 50304) return run<T, 50257, 50304>(op);   /* GPT-2, padded as llm.c pads it */
    if (V == 1001 && Vp == 1024) return run<T, 1001, 1024>(op);       /* V not a multiple of the vector */
    if (V == 130 && Vp == 132) return run<T, 130, 132>(op);           /* Vp not a multiple of 8: 4-element vectors */
    if (V == 37 && Vp == 37) return run<T, 37, 37>(op);               /* odd, unpadded: scalar accesses */
    fprintf(stderr, "V=%d Vp=%d is not instantiated\n", V, Vp);
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    g_dir = argv[2];
    const std::vector<std::string> c = split_case(argv[1]);
    if (c.size() != 4) return 2;
    const int V = atoi(c[2].c_str()), Vp = atoi(c[3].c_str());
    return c[1] == "bf16" ? by_size<llmk_bf16>(c[0], V, Vp) : by_size<float>(c[0], V, Vp);
}
