/* LayerNorm / RMSNorm kernels of ../../norms.cuh (test_kern_norms.py).
 * CASE = op:dtype:C, op one of ln_fwd, ln_fwd_res, rms_fwd, rms_fwd_res, ln_bwd, rms_bwd, misaligned.
 * params.bin (int32): N, acc_flags, max_blocks, has_dres, has_dbias, in_place; eps.bin (float).
 * The backward runs twice in the process from the same inputs (counters must come back zero and
 * the second run give the same bits): outputs <name> and <name>_2. */
#include "kdriver.h"
#include "norms.cuh"

template <class T, int C>
static int run(const std::string& op) {
    const std::vector<int> prm = read_input<int>("params");
    const int N = prm[0], has_dres = prm[3], has_dbias = prm[4], in_place = prm[5];
    const unsigned flags = (unsigned)prm[1];
    const float eps = read_input<float>("eps")[0];
    const size_t NC = (size_t)N * C;
    T* w = dev_in<T>("w");
    if (op == "ln_fwd" || op == "rms_fwd") {
        T* x = dev_in<T>("x");
        T* out = dev_out<T>(NC);
        float *mean = dev_out<float>(N), *rstd = dev_out<float>(N);
        if (op == "ln_fwd")
            check_launch(llmk::layernorm_forward<T, C>(out, mean, rstd, x, w, dev_in<T>("b"), N, eps), "ln_fwd");
        else check_launch(llmk::rmsnorm_forward<T, C>(out, rstd, x, w, N, eps), "rms_fwd");
        save_device("out", out, NC);
        if (op == "ln_fwd") save_device("mean", mean, N);
        save_device("rstd", rstd, N);
    } else if (op == "ln_fwd_res" || op == "rms_fwd_res") {
        T *a = dev_in<T>("a"), *b2 = dev_in<T>("b2");
        T* resid = in_place ? a : dev_out<T>(NC);
        T* out = dev_out<T>(NC);
        float *mean = dev_out<float>(N), *rstd = dev_out<float>(N);
        if (op == "ln_fwd_res")
            check_launch(
                llmk::residual_layernorm_forward<T, C>(resid, out, mean, rstd, a, b2, w, dev_in<T>("b"), N, eps),
                op.c_str());
        else check_launch(llmk::residual_rmsnorm_forward<T, C>(resid, out, rstd, a, b2, w, N, eps), op.c_str());
        save_device("resid", resid, NC);
        save_device("out", out, NC);
        if (op == "ln_fwd_res") save_device("mean", mean, N);
        save_device("rstd", rstd, N);
    } else if (op == "ln_bwd" || op == "rms_bwd") {
        const bool ln = op == "ln_bwd";
        T *dy = dev_in<T>("dy"), *x = dev_in<T>("x");
        float *mean = ln ? dev_in<float>("mean") : nullptr, *rstd = dev_in<float>("rstd");
        const std::vector<char> dres_h = read_bytes("dres");
        const std::vector<float> dw0 = read_input<float>("dw0"), db0 = read_input<float>("db0");
        const std::vector<float> dp0 = read_input<float>("dp0");
        const int max_blocks = prm[2];
        llmk::NormScratch sc;
        const size_t sbytes = ln ? llmk::layernorm_backward_scratch_bytes<T, C>(N, max_blocks)
                                 : llmk::rmsnorm_backward_scratch_bytes<T, C>(N, max_blocks);
        sc.partial = dev_out<float>(sbytes / 4 + 4);
        sc.counters = dev_zero<unsigned>(llmk::NORM_COUNTERS);
        sc.max_blocks = max_blocks;
        for (int rep = 0; rep < 2; rep++) {
            T* dres = nullptr;
            if (has_dres) {
                dres = dev_out<T>(NC);
                CHECK_CUDA(cudaMemcpy(dres, dres_h.data(), NC * sizeof(T), cudaMemcpyHostToDevice));
            }
            T* dx = (has_dres && in_place) ? dres : dev_out<T>(NC);
            float *dw = to_device(dw0), *db = to_device(db0), *dp = has_dbias ? to_device(dp0) : nullptr;
            if (ln)
                check_launch(llmk::layernorm_backward<T, C>(dx, dw, db, dp, dy, x, mean, rstd, dres, w, sc, N, flags),
                             "ln_bwd");
            else check_launch(llmk::rmsnorm_backward<T, C>(dx, dw, dp, dy, x, rstd, dres, w, sc, N, flags), "rms_bwd");
            const std::string s = rep ? "_2" : "";
            save_device(("dx" + s).c_str(), dx, NC);
            save_device(("dw" + s).c_str(), dw, C);
            if (ln) save_device(("db" + s).c_str(), db, C);
            if (has_dbias) save_device(("dbias" + s).c_str(), dp, C);
        }
        const std::vector<unsigned> cnt = to_host(sc.counters, llmk::NORM_COUNTERS);
        write_output("counters", cnt);
        const int grid[1] = {(int)(sbytes / 4)};
        write_output("scratch_floats", grid, sizeof grid);
    } else if (op == "misaligned") {    /* a launcher given a row base off the vector width: one line, exit 1 */
        T* x = dev_in<T>("x");
        T* out = dev_out<T>(NC + 8);
        check_launch(llmk::layernorm_forward<T, C>(out, nullptr, nullptr, x + 1, w, dev_in<T>("b"), N - 1, eps),
                     "misaligned");
        fprintf(stderr, "the misaligned launch was accepted\n");
        return 3;
    } else {
        fprintf(stderr, "unknown op %s\n", op.c_str());
        return 2;
    }
    return 0;
}

template <class T>
static int by_size(const std::string& op, int C) {
    switch (C) {
    case 768: return run<T, 768>(op);     /* GPT-2: one warp per row (bf16 3 vectors of 8 per lane) */
    case 1600: return run<T, 1600>(op);   /* two warps per row, the last vector slot partly idle */
    case 4096: return run<T, 4096>(op);   /* Llama-3 8B: four warps per row (bf16) */
    case 100: return run<T, 100>(op);     /* not a multiple of 8: 4-element vectors */
    case 37: return run<T, 37>(op);       /* odd: scalar accesses */
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
