// nccl_emu.cu -- the NCCL calls of a data-parallel trainer, run on the CPU through emulate.h +
// emulate_nccl.h (g++ -DLLMGEN_EMULATE, with -DLLMGEN_MPI under mpirun). Written as a GPU program
// would be: buffers from cudaMalloc, copies with cudaMemcpy, the unique id broadcast through
// comm.h, collectives on a stream.
//
//     nccl_emu DIR N    inputs DIR/in_r<rank>_{f32,f64,bf16}.bin (N elements), outputs
//                       DIR/out_r<rank>_<name>.bin with the names of comm_driver.c, and
//                       DIR/reduce_r<rank>_<name>.bin for ncclReduce (only its root's hold the result)
#include "emulate.h"
#include "emulate_nccl.h"

#define CUDA_CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); exit(2); } } while (0)
#define NCCL_CHECK(x) do { ncclResult_t r_ = (x); if (r_ != ncclSuccess) { \
    fprintf(stderr, "NCCL error %s at %s:%d\n", ncclGetErrorString(r_), __FILE__, __LINE__); exit(2); } } while (0)

static const char* g_dir;
static int g_rank;

static void* read_input(const char* name, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/in_r%d_%s.bin", g_dir, g_rank, name);
    FILE* f = fopen(path, "rb");
    void* host = malloc(bytes + 1);
    if (!f || fread(host, 1, bytes, f) != bytes) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    void* dev = NULL;
    CUDA_CHECK(cudaMalloc(&dev, bytes + 16));
    CUDA_CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice));
    free(host);
    return dev;
}

static void write_file(const char* prefix, const char* name, const void* dev, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s_r%d_%s.bin", g_dir, prefix, g_rank, name);
    void* host = malloc(bytes + 1);
    CUDA_CHECK(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost));
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(host, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    free(host);
}

static void write_output(const char* name, const void* dev, size_t bytes) { write_file("out", name, dev, bytes); }

static void* dev_alloc(size_t bytes) {
    void* p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes + 16));
    CUDA_CHECK(cudaMemset(p, 0, bytes + 16));
    return p;
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: nccl_emu DIR N\n"); return 2; }
    g_dir = argv[1];
    const size_t n = (size_t)atoll(argv[2]);
    CommOptions o;
    comm_options_default(&o);
    comm_options_from_env(&o);
    Comm c;
    comm_init(&c, &o);
    g_rank = c.rank;
    const int N = c.world_size;

    // NCCL bootstrap as on the GPU: rank 0 makes the id, comm.h carries it to everyone
    ncclUniqueId id;
    if (c.rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    comm_broadcast(&c, &id, sizeof(id), COMM_U8, 0);
    ncclComm_t nccl;
    NCCL_CHECK(ncclCommInitRank(&nccl, N, id, c.rank));
    int count = -1, me = -1;
    NCCL_CHECK(ncclCommCount(nccl, &count));
    NCCL_CHECK(ncclCommUserRank(nccl, &me));
    if (count != N || me != c.rank) { fprintf(stderr, "ncclCommCount/UserRank wrong\n"); return 2; }
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));

    const ncclDataType_t types[3] = {ncclFloat32, ncclFloat64, ncclBfloat16};
    const char* tnames[3] = {"f32", "f64", "bf16"};
    const size_t esizes[3] = {4, 8, 2};
    const size_t shard = (n + (size_t)N - 1) / (size_t)N, padded = shard * (size_t)N;
    for (int t = 0; t < 3; t++) {
        const size_t esz = esizes[t];
        char* in = (char*)read_input(tnames[t], n * esz);
        char name[64];
        for (int k = 0; k < 2; k++) {
            const ncclRedOp_t op = k ? ncclAvg : ncclSum;
            const char* opname = k ? "avg" : "sum";
            char* out = (char*)dev_alloc(n * esz);
            NCCL_CHECK(ncclAllReduce(in, out, n, types[t], op, nccl, stream));
            snprintf(name, sizeof(name), "ar_%s_%s", tnames[t], opname);
            write_output(name, out, n * esz);
            char* buf = (char*)dev_alloc(n * esz);
            CUDA_CHECK(cudaMemcpy(buf, in, n * esz, cudaMemcpyDeviceToDevice));
            NCCL_CHECK(ncclAllReduce(buf, buf, n, types[t], op, nccl, stream));
            snprintf(name, sizeof(name), "ari_%s_%s", tnames[t], opname);
            write_output(name, buf, n * esz);
            // ZeRO-1: the padded gradient reduce-scattered, the shard all-gathered
            char* pad = (char*)dev_alloc(padded * esz);
            CUDA_CHECK(cudaMemcpy(pad, in, n * esz, cudaMemcpyDeviceToDevice));
            char* sh = (char*)dev_alloc(shard * esz);
            NCCL_CHECK(ncclReduceScatter(pad, sh, shard, types[t], op, nccl, stream));
            snprintf(name, sizeof(name), "rs_%s_%s", tnames[t], opname);
            write_output(name, sh, shard * esz);
            char* pad2 = (char*)dev_alloc(padded * esz);
            CUDA_CHECK(cudaMemcpy(pad2, in, n * esz, cudaMemcpyDeviceToDevice));
            char* mine = pad2 + (size_t)c.rank * shard * esz;
            NCCL_CHECK(ncclGroupStart());  // grouped, as a trainer issuing per-layer collectives would
            NCCL_CHECK(ncclReduceScatter(pad2, mine, shard, types[t], op, nccl, stream));
            NCCL_CHECK(ncclGroupEnd());
            snprintf(name, sizeof(name), "rsi_%s_%s", tnames[t], opname);
            write_output(name, mine, shard * esz);
            NCCL_CHECK(ncclAllGather(mine, pad2, shard, types[t], nccl, stream));
            snprintf(name, sizeof(name), "agi_%s_%s", tnames[t], opname);
            write_output(name, pad2, padded * esz);
            char* gathered = (char*)dev_alloc(padded * esz);
            NCCL_CHECK(ncclAllGather(sh, gathered, shard, types[t], nccl, stream));
            snprintf(name, sizeof(name), "ag_%s_%s", tnames[t], opname);
            write_output(name, gathered, padded * esz);
            // ncclReduce (the trainer's per-layer exchange under -z 1): to the last rank out of place (the others'
            // recvbuff stays zero), and to rank 0 in place (the others' buffer keeps their input)
            char* red = (char*)dev_alloc(n * esz);
            NCCL_CHECK(ncclReduce(in, red, n, types[t], op, N - 1, nccl, stream));
            snprintf(name, sizeof(name), "red_%s_%s", tnames[t], opname);
            write_file("reduce", name, red, n * esz);
            CUDA_CHECK(cudaMemcpy(red, in, n * esz, cudaMemcpyDeviceToDevice));
            NCCL_CHECK(ncclReduce(red, red, n, types[t], op, 0, nccl, stream));
            snprintf(name, sizeof(name), "redi_%s_%s", tnames[t], opname);
            write_file("reduce", name, red, n * esz);
            CUDA_CHECK(cudaFree(red));
            CUDA_CHECK(cudaFree(out)); CUDA_CHECK(cudaFree(buf)); CUDA_CHECK(cudaFree(pad));
            CUDA_CHECK(cudaFree(sh)); CUDA_CHECK(cudaFree(pad2)); CUDA_CHECK(cudaFree(gathered));
        }
        char* b = (char*)dev_alloc(n * esz);
        NCCL_CHECK(ncclBroadcast(in, b, n, types[t], N - 1, nccl, stream));
        snprintf(name, sizeof(name), "bc_%s", tnames[t]);
        write_output(name, b, n * esz);
        CUDA_CHECK(cudaFree(b));
        CUDA_CHECK(cudaFree(in));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));

    // what is not emulated says so instead of computing something else
    float* x = (float*)dev_alloc(16);
    int* xi = (int*)dev_alloc(16);
    int neg_ok = ncclAllReduce(x, x, 4, ncclFloat32, ncclProd, nccl, stream) == ncclInvalidArgument &&
                 ncclAllReduce(xi, xi, 4, ncclInt32, ncclSum, nccl, stream) == ncclInvalidArgument &&
                 ncclGroupEnd() == ncclInvalidUsage && strstr(ncclGetLastError(nccl), "ncclGroupEnd") != NULL;
    printf("rank %d: negative checks %s\n", c.rank, neg_ok ? "ok" : "FAILED");
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(xi));
    NCCL_CHECK(ncclCommDestroy(nccl));
    comm_free(&c);
    return neg_ok ? 0 : 3;
}
