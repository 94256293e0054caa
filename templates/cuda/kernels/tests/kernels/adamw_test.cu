/* The optimizer kernels of ../../adamw.cuh (test_kern_adamw.py).
 * CASE adamw:dtype  inputs: params (T, n), master/m/v (fp32, the optimizer's range), grads (fp32, n),
 *                   tensors (int64 triples offset, size, decay), shard (int64 begin, end), opt_base
 *                   (int64), hyper (double beta1, beta2, eps, weight_decay, max_norm, lr), ints
 *                   (int32 t, use_norm, params_is_master), norm (float)
 *                   outputs: params, master, m, v; plan (int32 nseg, nblocks) and segs (int64 x4 each)
 * CASE gradnorm     inputs: grads (fp32), nparts (int32); outputs: norm (float), sumsq (double) */
#include "kdriver.h"
#include "adamw.cuh"

template <class T>
static int adamw() {
    const std::vector<long long> tens = read_input<long long>("tensors"), shard = read_input<long long>("shard");
    const long long opt_base = read_input<long long>("opt_base")[0];
    const std::vector<double> hy = read_input<double>("hyper");
    const std::vector<int> ints = read_input<int>("ints");
    const std::vector<float> grads_h = read_input<float>("grads"), master_h = read_input<float>("master");
    const int t = ints[0], use_norm = ints[1], params_is_master = ints[2];
    std::vector<llmk::AdamwTensor> tv;
    for (size_t i = 0; i + 2 < tens.size(); i += 3) tv.push_back({tens[i], tens[i + 1], (int)tens[i + 2]});
    std::vector<llmk::AdamwSegment> segs(tv.size());
    int nblocks = 0;
    const int nseg =
        llmk::adamw_plan(segs.data(), (int)segs.size(), &nblocks, tv.data(), (int)tv.size(), shard[0], shard[1]);
    const int plan[2] = {nseg, nblocks};
    write_output("plan", plan, sizeof plan);
    std::vector<long long> sflat;
    for (int i = 0; i < nseg; i++) {
        sflat.push_back(segs[i].offset);
        sflat.push_back(segs[i].size);
        sflat.push_back(segs[i].first_block);
        sflat.push_back(segs[i].decay);
    }
    write_output("segs", sflat);
    llmk::AdamwSegment* dsegs = to_device(segs);
    float *master = to_device(master_h), *m = dev_in<float>("m"), *v = dev_in<float>("v"), *grads = to_device(grads_h);
    float* norm = dev_in<float>("norm");
    T* params = params_is_master ? (T*)(void*)master : dev_in<T>("params");
    const llmk::AdamwHyper h = {hy[0], hy[1], hy[2], hy[3], hy[4]};
    const float* norm_or_null = use_norm ? norm : nullptr;
    const cudaError_t e =
        llmk::adamw_update<T>(params, master, m, v, grads, dsegs, nseg, nblocks, opt_base, norm_or_null, hy[5], t, h);
    check_launch(e, "adamw_update");
    save_device("params", params, params_is_master ? master_h.size() : grads_h.size());
    save_device("master", master, master_h.size());
    save_device("m", m, master_h.size());
    save_device("v", v, master_h.size());
    return 0;
}

static int gradnorm() {
    const std::vector<float> g = read_input<float>("grads");
    const int nparts = read_input<int>("nparts")[0];
    float* grads = to_device(g);
    double* partial = dev_out<double>(nparts);
    float* norm = dev_out<float>(1);
    double* sumsq = dev_out<double>(1);
    for (int rep = 0; rep < 2; rep++) {
        check_launch(llmk::grad_norm(norm, sumsq, grads, (long long)g.size(), partial, nparts), "grad_norm");
        save_device(rep ? "norm_2" : "norm", norm, 1);
        save_device(rep ? "sumsq_2" : "sumsq", sumsq, 1);
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    g_dir = argv[2];
    const std::vector<std::string> c = split_case(argv[1]);
    if (c[0] == "gradnorm") return gradnorm();
    if (c[0] == "adamw" && c.size() == 2) return c[1] == "bf16" ? adamw<llmk_bf16>() : adamw<float>();
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
}
