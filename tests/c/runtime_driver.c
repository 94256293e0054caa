/*
Test driver for templates/common/runtime.h: one subcommand per runtime feature,
printing results as plain text for tests/test_runtime_c.py to compare against
Python oracles. Compiles as C (gnu11) and as C++17, like the runtime itself.

  driver batches GLOB B T V OP...   OP: N (print N batches), reset, reopen
                                    (save state, free, re-init, restore), set S P
                                    each batch prints "in ..." / "tg ..." lines and
                                    the "state S P" before it
  driver st_dump FILE               "meta K V", then per tensor "tensor NAME DTYPE SHAPE"
                                    and "values ..." (%.9g, exact for float32); tab-separated,
                                    names and metadata with \t \n \\ escaped
  driver st_roundtrip IN OUT        read every tensor as float, write with st_write_f32
  driver st_find FILE NAME          "found DTYPE SHAPE" or "absent"
  driver st_load FILE NAME D...     st_load_f32 with the expected shape, prints "ok N"
  driver st_write_special OUT       names needing escapes, a scalar, an empty tensor
  driver rng SEED N                 N values of rng_u32
  driver rng_stats SEED N           uniform and normal sample statistics
  driver write_atomic PATH TEXT     write_file_atomic
  driver mkdirs PATH                llmgen_mkdirs
  driver fopen PATH MODE            xfopen
*/
#include "../../templates/common/runtime.h"

// ----------------------------------------------------------------------------
// helpers only the tests use, kept out of the runtime the trainers paste

// F32 tensors, all with data, as safetensors (the trainer writes through st_write_f32_fill).
static void st_write_f32(const char *path, const StEntry *entries, int n) {
    st_write_f32_fill(path, entries, n, NULL, NULL);
}

// Find `name`, check its shape is exactly (ndim, shape), read it as float.
static void st_load_f32(const StFile *f, const char *name, float *dst, int ndim, const int64_t *shape) {
    const StTensor *t = st_find(f, name);
    if (t == NULL) { llmgen_fail("safetensors file %s has no tensor \"%s\"", f->path, name); }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) { same = t->shape[d] == shape[d]; }
    char want[200], got[200];
    if (!same) {
        llmgen_fail("safetensors file %s: tensor \"%s\" has shape %s, expected %s", f->path, name,
                    st_shape_str(got, sizeof(got), t->ndim, t->shape), st_shape_str(want, sizeof(want), ndim, shape));
    }
    st_read_f32(f, t, dst);
}

static void print_escaped(const char *s);

// The string values of "__metadata__" (the runtime skips it), read with the runtime's scanner: every one as
// "meta\tKEY\tVALUE" when want is NULL, else only want's, as "want VALUE" or "want (none)".
static void print_metadata(const StFile *f, const char *want) {
    const char *header = (const char *)f->bytes + 8;
    StJson j = {header, header, (const char *)f->data, f->path};
    int found = 0;
    st_json_expect(&j, '{');
    for (int first = 1; st_json_more(&j, first, '}', "expected ',' or '}'"); first = 0) {
        char *key = st_json_string(&j, NULL);
        st_json_expect(&j, ':');
        int meta = strcmp(key, "__metadata__") == 0 && st_json_peek(&j) == '{';
        free(key);
        if (!meta) {
            st_json_skip(&j);
            continue;
        }
        st_json_expect(&j, '{');
        for (int m = 1; st_json_more(&j, m, '}', "expected ',' or '}' in __metadata__"); m = 0) {
            char *k = st_json_string(&j, NULL);
            st_json_expect(&j, ':');
            if (st_json_peek(&j) != '"') {   // non-string values are skipped
                st_json_skip(&j);
            } else {
                char *v = st_json_string(&j, NULL);
                if (want == NULL) {
                    printf("meta\t");
                    print_escaped(k);
                    printf("\t");
                    print_escaped(v);
                    printf("\n");
                } else if (strcmp(k, want) == 0) {
                    printf("%s %s\n", want, v);
                    found = 1;
                }
                free(v);
            }
            free(k);
        }
    }
    if (want && !found) { printf("%s (none)\n", want); }
}

static void print_state(const ShardLoader *L) {
    int64_t s, p;
    loader_get_state(L, &s, &p);
    printf("state %lld %lld\n", (long long)s, (long long)p);
}

static int cmd_batches(int argc, char **argv) {
    if (argc < 6) { llmgen_fail("usage: batches GLOB B T V OP..."); }
    const char *pattern = argv[2];
    int B = atoi(argv[3]), T = atoi(argv[4]), V = atoi(argv[5]);
    ShardLoader L;
    loader_init(&L, pattern, B, T, V);
    int *inputs = (int *)xmalloc(sizeof(int) * (size_t)B * (size_t)T);
    int *targets = (int *)xmalloc(sizeof(int) * (size_t)B * (size_t)T);
    for (int a = 6; a < argc; a++) {
        const char *op = argv[a];
        if (strcmp(op, "reset") == 0) {
            loader_reset(&L);
        } else if (strcmp(op, "reopen") == 0) {
            int64_t s, p;
            loader_get_state(&L, &s, &p);
            loader_free(&L);
            loader_init(&L, pattern, B, T, V);
            loader_set_state(&L, s, p);
        } else if (strcmp(op, "set") == 0) {
            if (a + 2 >= argc) { llmgen_fail("set needs S P"); }
            loader_set_state(&L, atoll(argv[a + 1]), atoll(argv[a + 2]));
            a += 2;
        } else {
            int n = atoi(op);
            for (int k = 0; k < n; k++) {
                print_state(&L);
                loader_next(&L, inputs, targets);
                printf("in");
                for (int i = 0; i < B * T; i++) { printf(" %d", inputs[i]); }
                printf("\ntg");
                for (int i = 0; i < B * T; i++) { printf(" %d", targets[i]); }
                printf("\n");
            }
        }
    }
    print_state(&L);
    free(inputs);
    free(targets);
    loader_free(&L);
    return 0;
}

// Names and metadata may hold tabs and newlines: print them as \t \n \\ escapes.
static void print_escaped(const char *s) {
    for (; *s; s++) {
        if (*s == '\\') { fputs("\\\\", stdout); }
        else if (*s == '\t') { fputs("\\t", stdout); }
        else if (*s == '\n') { fputs("\\n", stdout); }
        else { putchar(*s); }
    }
}

static void print_shape(const StTensor *t) {
    printf("[");
    for (int d = 0; d < t->ndim; d++) { printf(d ? ",%lld" : "%lld", (long long)t->shape[d]); }
    printf("]");
}

static int cmd_st_dump(const char *path) {
    StFile f;
    st_open(&f, path);
    print_metadata(&f, NULL);
    for (int i = 0; i < f.count; i++) {
        const StTensor *t = &f.tensors[i];
        printf("tensor\t");
        print_escaped(t->name);
        printf("\t%s\t", st_dtypes[t->dtype].name);
        print_shape(t);
        printf("\n");
        int64_t n = st_numel(t);
        float *x = (float *)xmalloc(sizeof(float) * (size_t)n);
        st_read_f32(&f, t, x);
        printf("values");
        for (int64_t k = 0; k < n; k++) { printf(" %.9g", (double)x[k]); }
        printf("\n");
        free(x);
    }
    st_close(&f);
    return 0;
}

static int cmd_st_roundtrip(const char *in, const char *out) {
    StFile f;
    st_open(&f, in);
    StEntry *entries = (StEntry *)xcalloc((size_t)f.count, sizeof(StEntry));
    for (int i = 0; i < f.count; i++) {
        const StTensor *t = &f.tensors[i];
        float *x = (float *)xmalloc(sizeof(float) * (size_t)st_numel(t));
        st_read_f32(&f, t, x);
        entries[i].name = t->name;
        entries[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) { entries[i].shape[d] = t->shape[d]; }
        entries[i].data = x;
    }
    st_write_f32(out, entries, f.count);
    for (int i = 0; i < f.count; i++) { free((void *)entries[i].data); }
    free(entries);
    st_close(&f);
    return 0;
}

static int cmd_st_find(const char *path, const char *name) {
    StFile f;
    st_open(&f, path);
    const StTensor *t = st_find(&f, name);
    if (t == NULL) {
        printf("absent\n");
    } else {
        printf("found %s ", st_dtypes[t->dtype].name);
        print_shape(t);
        printf("\n");
    }
    print_metadata(&f, "format");
    st_close(&f);
    return 0;
}

static int cmd_st_load(int argc, char **argv) {
    StFile f;
    st_open(&f, argv[2]);
    int64_t shape[8];
    int ndim = argc - 4;
    if (ndim > 8) { llmgen_fail("too many dims"); }
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        shape[d] = atoll(argv[4 + d]);
        n *= shape[d];
    }
    float *x = (float *)xmalloc(sizeof(float) * (size_t)n);
    st_load_f32(&f, argv[3], x, ndim, shape);
    printf("ok %lld\n", (long long)n);
    free(x);
    st_close(&f);
    return 0;
}

static int cmd_st_write_special(const char *out) {
    static const float a[6] = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-30f};
    static const float scalar[1] = {42.0f};
    StEntry e[4];
    memset(e, 0, sizeof(e));
    e[0].name = "quote\"back\\slash\ttab/é";
    e[0].ndim = 2;
    e[0].shape[0] = 2;
    e[0].shape[1] = 3;
    e[0].data = a;
    e[1].name = "scalar";
    e[1].ndim = 0;
    e[1].data = scalar;
    e[2].name = "empty";
    e[2].ndim = 2;
    e[2].shape[0] = 0;
    e[2].shape[1] = 5;
    e[2].data = NULL;
    e[3].name = "model.layers.0.w";
    e[3].ndim = 1;
    e[3].shape[0] = 6;
    e[3].data = a;
    st_write_f32(out, e, 4);
    return 0;
}

static int cmd_rng(uint64_t seed, int n) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) { printf("%u\n", rng_u32(&r)); }
    return 0;
}

static int cmd_rng_stats(uint64_t seed, int n) {
    Rng r;
    rng_seed(&r, seed);
    double umin = 1.0, umax = 0.0, usum = 0.0, nsum = 0.0, nsq = 0.0, nmin = 0.0, nmax = 0.0;
    int non24 = 0;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(&r);
        if (u < umin) { umin = u; }
        if (u > umax) { umax = u; }
        usum += u;
        float scaled = u * 16777216.0f;
        if (scaled != floorf(scaled)) { non24++; }
    }
    Rng saved = r;
    for (int i = 0; i < n; i++) {
        double z = rng_normal(&r);
        nsum += z;
        nsq += z * z;
        if (z < nmin) { nmin = z; }
        if (z > nmax) { nmax = z; }
    }
    double mean = nsum / n;
    printf("uniform %.9g %.9g %.9g %d\n", umin, umax, usum / n, non24);
    printf("normal %.9g %.9g %.9g %.9g\n", mean, sqrt(nsq / n - mean * mean), nmin, nmax);
    // restoring the one-word state replays the same stream
    float again = rng_normal(&saved);
    Rng replay;
    rng_seed(&replay, seed);
    for (int i = 0; i < n; i++) { (void)rng_uniform(&replay); }
    printf("replay %d\n", again == rng_normal(&replay) ? 1 : 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { llmgen_fail("usage: %s COMMAND ARGS...", argv[0]); }
    const char *cmd = argv[1];
    if (strcmp(cmd, "batches") == 0) { return cmd_batches(argc, argv); }
    if (strcmp(cmd, "st_dump") == 0 && argc == 3) { return cmd_st_dump(argv[2]); }
    if (strcmp(cmd, "st_roundtrip") == 0 && argc == 4) { return cmd_st_roundtrip(argv[2], argv[3]); }
    if (strcmp(cmd, "st_find") == 0 && argc == 4) { return cmd_st_find(argv[2], argv[3]); }
    if (strcmp(cmd, "st_load") == 0 && argc >= 4) { return cmd_st_load(argc, argv); }
    if (strcmp(cmd, "st_write_special") == 0 && argc == 3) { return cmd_st_write_special(argv[2]); }
    if (strcmp(cmd, "rng") == 0 && argc == 4) { return cmd_rng(strtoull(argv[2], NULL, 10), atoi(argv[3])); }
    if (strcmp(cmd, "rng_stats") == 0 && argc == 4) {
        return cmd_rng_stats(strtoull(argv[2], NULL, 10), atoi(argv[3]));
    }
    if (strcmp(cmd, "write_atomic") == 0 && argc == 4) {
        write_file_atomic(argv[2], argv[3], strlen(argv[3]));
        return 0;
    }
    if (strcmp(cmd, "mkdirs") == 0 && argc == 3) {
        llmgen_mkdirs(argv[2]);
        return 0;
    }
    if (strcmp(cmd, "fopen") == 0 && argc == 4) {
        fclose(xfopen(argv[2], argv[3]));
        return 0;
    }
    if (strcmp(cmd, "now") == 0) {
        double t0 = llmgen_now(), t1 = llmgen_now();
        printf("%d\n", t1 >= t0 && t0 > 0.0 ? 1 : 0);
        return 0;
    }
    llmgen_fail("unknown command or wrong arguments: %s", cmd);
}
