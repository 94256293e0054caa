/*
comm_driver: exercises every collective of templates/common/comm.h on data the test wrote.

    comm_driver collectives DIR N      inputs DIR/in_r<rank>_{f32,f64,bf16}.bin (N elements each);
                                       writes DIR/out_r<rank>_<name>.bin and DIR/info_r<rank>.txt
    comm_driver loop DIR ITERS         all-reduces 1M floats ITERS times (the kill tests); writes
                                       DIR/pid_r<rank> and prints "ready" after the first
    comm_driver agree DIR VALUE        comm_agree("flags", VALUE), then writes DIR/agreed_r<rank>
    comm_driver init DIR               comm_init + comm_free only (rendezvous tests)
    comm_driver orphan DIR             rank 1 exits at once (status 3); the others broadcast 64 MiB from the
                                       last rank: the fault message of a rank that never waits on rank 1
    comm_driver bench DIR COUNT ITERS  times ITERS f32 all-reduces (avg) of COUNT elements; rank 0 prints
                                       seconds per call and the bytes each rank sent (2(N-1)/N of the buffer)

Built three ways by tests/distributed: gcc (tcp/file/single), mpicc -DLLMGEN_MPI (all backends), and as
C++ (g++ -x c++) to prove the header is valid C++. Options come from LLMGEN_* variables.
*/
#include "comm.h"

static void die(const char *what, const char *path) {
    fprintf(stderr, "comm_driver: %s %s: %s\n", what, path, strerror(errno));
    exit(2);
}

static void *read_input(const char *dir, int rank, const char *name, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/in_r%d_%s.bin", dir, rank, name);
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    void *p = malloc(bytes ? bytes : 1);
    if (fread(p, 1, bytes, f) != bytes) die("short read", path);
    fclose(f);
    return p;
}

static void write_output(const char *dir, int rank, const char *name, const void *p, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/out_r%d_%s.bin", dir, rank, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f) != 0) die("cannot write", path);
}

static void *xdup(const void *p, size_t bytes) {
    void *q = malloc(bytes ? bytes : 1);
    memcpy(q, p, bytes);
    return q;
}

// All-reduce, then the ZeRO-1 pattern (pad to shard * N, reduce-scatter, all-gather), broadcast.
static void run_collectives(Comm *c, const char *dir, size_t n) {
    const int N = c->world_size, r = c->rank;
    const CommDtype dts[3] = {COMM_F32, COMM_F64, COMM_BF16};
    const char *names[3] = {"f32", "f64", "bf16"};
    const size_t shard = comm_shard_count(n, N), padded = shard * (size_t)N;
    for (int t = 0; t < 3; t++) {
        const size_t esz = comm_dtype_size(dts[t]);
        void *in = read_input(dir, r, names[t], n * esz);
        char name[64];
        for (int op = 0; op < 2; op++) {
            const char *opname = op ? "avg" : "sum";
            // allreduce, out of place
            void *out = malloc(n * esz + 1);
            comm_allreduce(c, out, in, n, dts[t], (CommOp)op);
            snprintf(name, sizeof(name), "ar_%s_%s", names[t], opname);
            write_output(dir, r, name, out, n * esz);
            // allreduce, in place
            void *buf = xdup(in, n * esz);
            comm_allreduce(c, buf, buf, n, dts[t], (CommOp)op);
            snprintf(name, sizeof(name), "ari_%s_%s", names[t], opname);
            write_output(dir, r, name, buf, n * esz);
            // reduce-scatter of the zero-padded buffer: this rank's shard
            void *pad = calloc(padded + 1, esz);
            memcpy(pad, in, n * esz);
            void *sh = malloc(shard * esz + 1);
            comm_reduce_scatter(c, sh, pad, shard, dts[t], (CommOp)op);
            snprintf(name, sizeof(name), "rs_%s_%s", names[t], opname);
            write_output(dir, r, name, sh, shard * esz);
            // the same, in place (recv = send + rank * shard), then the in-place all-gather
            void *pad2 = calloc(padded + 1, esz);
            memcpy(pad2, in, n * esz);
            char *mine = (char *)pad2 + (size_t)r * shard * esz;
            comm_reduce_scatter(c, mine, pad2, shard, dts[t], (CommOp)op);
            snprintf(name, sizeof(name), "rsi_%s_%s", names[t], opname);
            write_output(dir, r, name, mine, shard * esz);
            comm_allgather(c, pad2, mine, shard, dts[t]);
            snprintf(name, sizeof(name), "agi_%s_%s", names[t], opname);
            write_output(dir, r, name, pad2, padded * esz);
            // out-of-place all-gather of the shard
            void *gathered = malloc(padded * esz + 1);
            comm_allgather(c, gathered, sh, shard, dts[t]);
            snprintf(name, sizeof(name), "ag_%s_%s", names[t], opname);
            write_output(dir, r, name, gathered, padded * esz);
            free(out); free(buf); free(pad); free(sh); free(pad2); free(gathered);
        }
        // broadcast from the last rank
        void *b = xdup(in, n * esz);
        comm_broadcast(c, b, n, dts[t], N - 1);
        snprintf(name, sizeof(name), "bc_%s", names[t]);
        write_output(dir, r, name, b, n * esz);
        free(b);
        free(in);
    }
    comm_barrier(c);
    char path[4096];
    snprintf(path, sizeof(path), "%s/info_r%d.txt", dir, r);
    FILE *f = fopen(path, "w");
    if (!f) die("cannot write", path);
    char netns[256] = "?";  // which network namespace ran this rank (the two-host tests)
    ssize_t len = readlink("/proc/self/ns/net", netns, sizeof(netns) - 1);
    if (len > 0) netns[len] = '\0';
    fprintf(f, "rank %d\nworld_size %d\nlocal_rank %d\nlocal_world_size %d\nbackend %d\nhow %s\nhost %s\nnetns %s\n",
            c->rank, c->world_size, c->local_rank, c->local_world_size, (int)c->backend, c->how, c->host, netns);
    fclose(f);
}

static void run_loop(Comm *c, const char *dir, long iters) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/pid_r%d", dir, c->rank);
    FILE *f = fopen(path, "w");
    if (!f) die("cannot write", path);
    fprintf(f, "%ld\n", (long)getpid());
    fclose(f);
    const size_t n = (size_t)1 << 20;
    float *buf = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 7);
    for (long it = 0; it < iters; it++) {
        comm_allreduce_f32(c, buf, n, COMM_AVG);
        if (it == 0) {
            comm_barrier(c);
            printf("ready rank %d\n", c->rank);
            fflush(stdout);
        }
    }
    free(buf);
}

static void run_bench(Comm *c, size_t n, long iters) {
    float *buf = (float *)malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 13) * 0.25f;
    comm_allreduce_f32(c, buf, n, COMM_AVG);  // warm-up: scratch allocated, pages touched
    comm_barrier(c);
    double t0 = comm_now();
    for (long it = 0; it < iters; it++) comm_allreduce_f32(c, buf, n, COMM_AVG);
    comm_barrier(c);
    double per = (comm_now() - t0) / (double)iters;
    double sent = 2.0 * (double)(c->world_size - 1) / (double)c->world_size * (double)n * sizeof(float);
    if (c->rank == 0)
        printf("allreduce f32 x %zu on %d ranks (%s): %.4f s per call, %.1f MB sent per rank, %.2f GB/s\n", n,
               c->world_size, c->how, per, sent / 1e6, sent / per / 1e9);
    free(buf);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: comm_driver collectives|loop|agree|init|bench DIR [ARG...]\n");
        return 2;
    }
    CommOptions o;
    comm_options_default(&o);
    comm_options_from_env(&o);
    Comm c;
    comm_init(&c, &o);
    if (comm_current() != &c) {
        fprintf(stderr, "comm_driver: comm_current() is not the communicator\n");
        return 2;
    }
    const char *cmd = argv[1], *dir = argv[2];
    if (strcmp(cmd, "collectives") == 0 && argc == 4) {
        run_collectives(&c, dir, (size_t)atoll(argv[3]));
    } else if (strcmp(cmd, "loop") == 0 && argc == 4) {
        run_loop(&c, dir, atol(argv[3]));
    } else if (strcmp(cmd, "agree") == 0 && argc == 4) {
        comm_agree(&c, "flags", argv[3]);
        char path[4096];
        snprintf(path, sizeof(path), "%s/agreed_r%d", dir, c.rank);
        FILE *f = fopen(path, "w");
        if (f) fclose(f);
    } else if (strcmp(cmd, "orphan") == 0) {
        if (c.rank == 1) exit(3);
        const size_t n = (size_t)16 << 20;
        float *buf = (float *)calloc(n, sizeof(float));
        comm_broadcast(&c, buf, n, COMM_F32, c.world_size - 1);
        free(buf);
    } else if (strcmp(cmd, "bench") == 0 && argc == 5) {
        run_bench(&c, (size_t)atoll(argv[3]), atol(argv[4]));
    } else if (strcmp(cmd, "init") == 0) {
        printf("rank %d of %d: %s\n", c.rank, c.world_size, c.how);
    } else {
        fprintf(stderr, "comm_driver: unknown command or wrong arguments\n");
        return 2;
    }
    comm_free(&c);
    return 0;
}
