/* llmgen runtime: the host-side support every generated trainer needs, pasted verbatim after the model into
 * train.c and train.cu. C11 and C++17 clean with -Wall -Wextra, libc + POSIX only (-lm), little-endian hosts.
 * Every error goes through llmgen_fail(): "error: <message>" on stderr and exit status 1, the message naming
 * the file, the field and what was expected versus found; nothing here returns an error code.
 *   utilities llmgen_fail, x* allocators, llmgen_now, llmgen_mkdirs, llmgen_read_file | random numbers Rng |
 *   token shards ShardLoader | safetensors StFile, st_open, st_find, st_read_f32, st_write_f32_fill | atomic writes */
#ifndef LLMGEN_RUNTIME_H
#define LLMGEN_RUNTIME_H

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "llmgen runtime: shards and safetensors are little-endian; this host is not"
#endif
#define LLMGEN_API static __attribute__((unused))   /* a program uses part of this file: no warning for the rest */

// ----------------------------------------------------------------------------
// utilities

// Print "error: <message>" to stderr and exit(1). Never returns.
LLMGEN_API __attribute__((noreturn, format(printf, 1, 2))) void llmgen_fail(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

LLMGEN_API void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (p == NULL) llmgen_fail("out of memory allocating %zu bytes", n);
    return p;
}

LLMGEN_API void *xcalloc(size_t n, size_t size) {
    void *p = size != 0 && n > SIZE_MAX / size ? NULL : calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) llmgen_fail("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

LLMGEN_API void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (q == NULL) llmgen_fail("out of memory reallocating to %zu bytes", n);
    return q;
}

LLMGEN_API char *xstrdup(const char *s) { return (char *)memcpy(xmalloc(strlen(s) + 1), s, strlen(s) + 1); }

LLMGEN_API FILE *xfopen(const char *path, const char *mode) {
    FILE *fp = fopen(path, mode);
    if (fp == NULL) llmgen_fail("cannot open %s (mode \"%s\"): %s", path, mode, strerror(errno));
    return fp;
}

// Seconds on CLOCK_MONOTONIC: only differences are meaningful.
LLMGEN_API double llmgen_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// mkdir -p: create `path` and its missing parents; fine if it is already a directory.
LLMGEN_API void llmgen_mkdirs(const char *path) {
    if (path[0] == '\0') llmgen_fail("cannot create a directory with an empty path");
    char *buf = xstrdup(path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char end = *p;   // buf up to p is one more component
        *p = '\0';
        struct stat st;
        int err = mkdir(buf, 0777) == 0 ? 0 : errno;   // an existing component is fine if it is a directory
        if (err && stat(buf, &st) != 0) llmgen_fail("cannot create directory %s: %s", buf, strerror(err));
        if (err && !S_ISDIR(st.st_mode))
            llmgen_fail("cannot create directory %s: %s exists and is not a directory", path, buf);
        if ((*p = end) == '\0') break;
    }
    free(buf);
}

// The whole file at path, read to its end (also a FIFO), malloc'd and NUL-terminated, its size in *len; or NULL
// with errno set where it cannot be read (ENOENT: there is no such file; EISDIR: a directory).
LLMGEN_API char *llmgen_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t n = 0, cap = (size_t)1 << 16;
    char *data = (char *)xmalloc(cap);
    for (size_t got; (got = fread(data + n, 1, cap - n - 1, f)) > 0;)
        if ((n += got) + 1 == cap) data = (char *)xrealloc(data, cap *= 2);
    const int err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) return free(data), errno = err, (char *)NULL;
    return data[*len = n] = '\0', data;
}

// ----------------------------------------------------------------------------
// random numbers
// splitmix64 (Steele, Lea & Flood 2014, constants as in Vigna's reference): the state advances by the
// golden-ratio increment and each output is a bijective mix of it. Any seed, 0 included, is fine; the whole
// generator is the one uint64 in Rng, so saving it resumes exactly.

typedef struct {
    uint64_t state;
} Rng;

LLMGEN_API void rng_seed(Rng *r, uint64_t seed) { r->state = seed; }

LLMGEN_API uint64_t rng_u64(Rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

LLMGEN_API uint32_t rng_u32(Rng *r) { return (uint32_t)(rng_u64(r) >> 32); }

// Uniform in [0, 1): the top 24 bits of rng_u32, so every value is exact in float.
LLMGEN_API float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

// Standard normal by Box-Muller (cosine branch only: no hidden cached state), from two 53-bit uniforms
// u1 in (0, 1] and u2 in [0, 1).
LLMGEN_API float rng_normal(Rng *r) {
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = (double)((rng_u64(r) >> 11) + 1) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}

// ----------------------------------------------------------------------------
// token shards
// llm.c's .bin layout: 256 int32 of header (magic, version, token count), then the tokens: magic 20240520
// version 1 for uint16 tokens, 20240801 version 7 for uint32. Batches come in order, as in llm.c: B*T+1 tokens
// at `position` (inputs, and targets one further), then position += B*T; a batch that does not fit moves to
// the next shard (wrapping) at 0. loader_init checks every shard (format, size, B*T+1 tokens, ids < vocab).

enum { SHARD_HEADER_BYTES = 256 * 4, SHARD_MAGIC_U16 = 20240520, SHARD_MAGIC_U32 = 20240801 };

typedef struct {
    int B, T, vocab_size;
    int num_shards;
    char **paths;          // (num_shards) glob matches, sorted
    int64_t *counts;       // (num_shards) tokens in each shard
    int *token_bytes;      // (num_shards) 2 (uint16) or 4 (uint32)
    int64_t shard_index;   // shard the next batch comes from
    int64_t position;      // token offset of the next batch in that shard
    int64_t loaded_shard;  // shard whose tokens are in `tokens`
    unsigned char *tokens; // raw little-endian tokens of loaded_shard
} ShardLoader;

LLMGEN_API uint32_t shard_token_at(const unsigned char *raw, int token_bytes, int64_t i) {
    uint32_t v = 0;   // a uint16 token fills the low half (little-endian)
    return memcpy(&v, raw + (size_t)token_bytes * (size_t)i, (size_t)token_bytes), v;
}

// Open a shard and check its header against the file size; the file is left at the first token.
LLMGEN_API FILE *shard_open(const char *path, int64_t *count_out, int *token_bytes_out) {
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) llmgen_fail("cannot open shard %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) llmgen_fail("shard %s is not a regular file", path);
    long long size = (long long)st.st_size;
    int32_t h[256];
    if (size < SHARD_HEADER_BYTES || fread(h, 4, 256, fp) != 256)
        llmgen_fail("shard %s is %lld bytes, shorter than the %d-byte header", path, size, SHARD_HEADER_BYTES);
    int token_bytes = h[0] == SHARD_MAGIC_U16 && h[1] == 1 ? 2 : h[0] == SHARD_MAGIC_U32 && h[1] == 7 ? 4 : 0;
    if (!token_bytes)
        llmgen_fail("shard %s has magic %d version %d; expected magic %d version 1 (uint16 tokens) "
                    "or magic %d version 7 (uint32 tokens)", path, h[0], h[1], SHARD_MAGIC_U16, SHARD_MAGIC_U32);
    long long count = h[2], expected = SHARD_HEADER_BYTES + count * token_bytes;
    if (count < 0 || size != expected)
        llmgen_fail("shard %s is %s: its header says %lld tokens of %d bytes, so the file should be "
                    "%lld bytes, but it is %lld bytes",
                    path, size < expected ? "truncated" : "oversized", count, token_bytes, expected, size);
    *count_out = count;
    *token_bytes_out = token_bytes;
    return fp;
}

// Read shard s whole into L->tokens, checking that its header is still the one loader_init saw and every id.
LLMGEN_API void shard_load(ShardLoader *L, int64_t s) {
    int64_t n;
    int tb;
    FILE *fp = shard_open(L->paths[s], &n, &tb);
    if (n != L->counts[s] || tb != L->token_bytes[s])
        llmgen_fail("shard %s changed since the loader was initialised", L->paths[s]);
    if (fread(L->tokens, (size_t)tb, (size_t)n, fp) != (size_t)n)
        llmgen_fail("cannot read the tokens of shard %s: %s", L->paths[s],
                    ferror(fp) ? strerror(errno) : "unexpected end of file");
    fclose(fp);
    for (int64_t i = 0; i < n; i++)
        if (shard_token_at(L->tokens, tb, i) >= (uint32_t)L->vocab_size)
            llmgen_fail("shard %s: token %lld has id %u, but vocab_size is %d (ids must be < %d)", L->paths[s],
                        (long long)i, shard_token_at(L->tokens, tb, i), L->vocab_size, L->vocab_size);
    L->loaded_shard = s;
}

LLMGEN_API void loader_init(ShardLoader *L, const char *pattern, int B, int T, int vocab_size) {
    memset(L, 0, sizeof(*L));
    if (B <= 0 || T <= 0 || vocab_size <= 0)
        llmgen_fail("loader: B, T and vocab_size must be positive, got B=%d T=%d vocab_size=%d", B, T, vocab_size);
    L->B = B, L->T = T, L->vocab_size = vocab_size;
    glob_t g;
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) llmgen_fail("no file matches %s", pattern);
    if (rc != 0 || g.gl_pathc > (size_t)INT32_MAX) llmgen_fail("glob(%s) failed (rc %d)", pattern, rc);
    L->num_shards = (int)g.gl_pathc;
    L->paths = (char **)xcalloc((size_t)L->num_shards, sizeof(char *));
    L->counts = (int64_t *)xcalloc((size_t)L->num_shards, sizeof(int64_t));
    L->token_bytes = (int *)xcalloc((size_t)L->num_shards, sizeof(int));
    size_t max_bytes = 0;
    for (int s = 0; s < L->num_shards; s++) {
        const char *path = L->paths[s] = xstrdup(g.gl_pathv[s]);
        fclose(shard_open(path, &L->counts[s], &L->token_bytes[s]));
        if (L->counts[s] < (int64_t)B * T + 1)
            llmgen_fail("shard %s has %lld tokens, fewer than the B*T+1 = %lld one batch needs (B=%d, T=%d)", path,
                        (long long)L->counts[s], (long long)B * T + 1, B, T);
        if ((size_t)L->counts[s] * L->token_bytes[s] > max_bytes) max_bytes = (size_t)L->counts[s] * L->token_bytes[s];
    }
    globfree(&g);
    L->tokens = (unsigned char *)xmalloc(max_bytes);
    for (int s = L->num_shards - 1; s >= 0; s--) shard_load(L, s);   // every shard checked now; shard 0 stays
}

// Fill inputs and targets, (B,T) each, with the next batch.
LLMGEN_API void loader_next(ShardLoader *L, int *inputs, int *targets) {
    int64_t bt = (int64_t)L->B * (int64_t)L->T;
    if (L->position + bt + 1 > L->counts[L->shard_index])
        L->shard_index = (L->shard_index + 1) % L->num_shards, L->position = 0;
    if (L->loaded_shard != L->shard_index) shard_load(L, L->shard_index);
    int tb = L->token_bytes[L->shard_index];
    const unsigned char *raw = L->tokens + (size_t)L->position * (size_t)tb;
    for (int64_t i = 0; i < bt; i++) {
        inputs[i] = (int)shard_token_at(raw, tb, i);
        targets[i] = (int)shard_token_at(raw, tb, i + 1);
    }
    L->position += bt;
}

LLMGEN_API void loader_reset(ShardLoader *L) { L->shard_index = 0, L->position = 0; }

// The state that determines the next batch (saved with a checkpoint), and setting it back.
LLMGEN_API void loader_get_state(const ShardLoader *L, int64_t *shard_index, int64_t *position) {
    *shard_index = L->shard_index, *position = L->position;
}

LLMGEN_API void loader_set_state(ShardLoader *L, int64_t shard_index, int64_t position) {
    if (shard_index < 0 || shard_index >= L->num_shards || position < 0 || position > L->counts[shard_index])
        llmgen_fail("loader state: shard index %lld, position %lld is out of range of the %d shards found "
                    "(saved with other data?)", (long long)shard_index, (long long)position, L->num_shards);
    L->shard_index = shard_index, L->position = position;
}

LLMGEN_API void loader_free(ShardLoader *L) {
    for (int s = 0; s < L->num_shards; s++) free(L->paths[s]);
    free(L->paths), free(L->counts), free(L->token_bytes), free(L->tokens);
    memset(L, 0, sizeof(*L));
}

// ----------------------------------------------------------------------------
// safetensors: reading
// A file is a u64 header length N, N bytes of JSON, then the data. The JSON is one flat object: tensor name ->
// {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]} (byte offsets into the data), plus an
// optional "__metadata__" entry, skipped. No general JSON parser: a scanner for that form, which decodes
// strings (names are UTF-8, maybe escaped), reads integers and skips any other value by its characters.
// st_open checks every entry: a known dtype, offsets inside the data and spanning dtype size * numel bytes.

enum { ST_F32, ST_BF16, ST_F16, ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U64, ST_U32, ST_U16, ST_U8, ST_BOOL,
       ST_F8_E4M3, ST_F8_E5M2, ST_NUM_DTYPES };
static const struct { const char *name; int bytes; } st_dtypes[ST_NUM_DTYPES] = {
    {"F32", 4}, {"BF16", 2}, {"F16", 2}, {"F64", 8}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};

typedef struct {
    char name[256];
    int dtype;          // ST_F32, ST_BF16, ST_F16 (or another ST_* code)
    int ndim;
    int64_t shape[8];
    int64_t begin, end; // byte offsets into the data section
} StTensor;

typedef struct {
    char *path;
    unsigned char *bytes;      // the whole file, mapped
    size_t size;
    const unsigned char *data; // the data section: data_size bytes
    size_t data_size;
    StTensor *tensors;         // (count) in header order
    int count;
} StFile;

LLMGEN_API int64_t st_numel(const StTensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
    return n;
}

// "[2, 3, 4]" into buf (truncated to cap)
LLMGEN_API const char *st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

LLMGEN_API const StTensor *st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

// The scanner: a cursor over the header [begin, end).
typedef struct {
    const char *p, *begin, *end, *path;
} StJson;

LLMGEN_API __attribute__((noreturn)) void st_json_fail(const StJson *j, const char *what) {
    char found[32] = "end of header";
    int c = j->p < j->end ? (unsigned char)*j->p : -1;
    if (c >= 0) snprintf(found, sizeof found, c >= 0x20 && c < 0x7f ? "'%c'" : "byte 0x%02x", c);
    llmgen_fail("malformed safetensors header in %s: %s, found %s at header byte %lld", j->path, what, found,
                (long long)(j->p - j->begin));
}

// The next character after whitespace, not consumed; -1 at the end of the header.
LLMGEN_API int st_json_peek(StJson *j) {
    while (j->p < j->end && *j->p && strchr(" \t\n\r", *j->p)) j->p++;
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

LLMGEN_API void st_json_expect(StJson *j, char c) {
    char what[16];
    snprintf(what, sizeof what, "expected '%c'", c);
    if (st_json_peek(j) != c) st_json_fail(j, what);
    j->p++;
}

// After '{' or '[' (first = 1) or a member: 1 when a member follows (its ',' consumed), 0 at `close`.
LLMGEN_API int st_json_more(StJson *j, int first, char close, const char *what) {
    int c = st_json_peek(j);
    if (c == close) return j->p++, 0;
    if (first) return 1;
    if (c != ',') st_json_fail(j, what);
    return j->p++, 1;
}

// A string (malloc'd, NUL-terminated): the two-character escapes decoded; a \uXXXX escape is kept as written (the
// names this reader looks up are ASCII, and writers escape only quotes, backslashes and control characters).
LLMGEN_API char *st_json_string(StJson *j, size_t *len_out) {
    static const char esc[] = "\"\\/bfnrtu", unesc[] = "\"\\/\b\f\n\r\t\\";
    if (st_json_peek(j) != '"') st_json_fail(j, "expected a string");
    const char *q = ++j->p;   // q: the closing quote
    while (q < j->end && *q != '"') q += *q == '\\' && j->end - q > 1 ? 2 : 1;
    if (q >= j->end) j->p = j->end, st_json_fail(j, "unterminated string");
    char *out = (char *)xmalloc((size_t)(q - j->p) + 1), *o = out;
    while (j->p < q) {
        const unsigned c = (unsigned char)*j->p++;
        const char *e = c == '\\' && *j->p ? strchr(esc, *j->p) : NULL;
        if (c < 0x20) j->p--, st_json_fail(j, "control character inside a string");
        if (c == '\\' && !e) st_json_fail(j, "invalid escape in string");
        *o++ = e ? unesc[e - esc] : (char)c;   // \u: its backslash, then "uXXXX" as it is
        j->p += e && *e != 'u';
    }
    *o = '\0', j->p++;
    if (len_out) *len_out = (size_t)(o - out);
    return out;
}

// Skip a value the reader does not use: a string, a run of the characters numbers, true, false and null
// are made of, or brackets followed to their match (at most 64 deep) with no check of what is inside.
LLMGEN_API void st_json_skip(StJson *j) {
    int depth = 0;
    do {
        int c = st_json_peek(j);
        const char *start = j->p;
        if (c == '"') free(st_json_string(j, NULL));
        else if (c == '{' || c == '[') j->p++, depth++;
        else if (depth > 0 && (c == '}' || c == ']')) j->p++, depth--;
        else if (depth > 0 && (c == ',' || c == ':')) j->p++;
        else while (j->p < j->end && *j->p && strchr("+-.0123456789Eeaflnrstu", *j->p)) j->p++;
        if (j->p == start) st_json_fail(j, "expected a JSON value");
        if (depth > 64) st_json_fail(j, "nesting deeper than 64 levels");
    } while (depth > 0);
}

// "[a, b, ...]": at most max non-negative integers that fit in int64, into v; returns how many.
LLMGEN_API int st_json_ints(StJson *j, int64_t *v, int max, const char *field, const char *tensor) {
    char what[320];
    snprintf(what, sizeof what, "expected a non-negative integer (int64) among the %s of tensor \"%s\"", field,
             tensor);
    st_json_expect(j, '[');
    int n = 0;
    for (; st_json_more(j, n == 0, ']', "expected ',' or ']' in a list of integers"); n++) {
        if (n == max)
            llmgen_fail("safetensors file %s: tensor \"%s\" has more than %d %s", j->path, tensor, max, field);
        const char *start = (st_json_peek(j), j->p);
        for (v[n] = 0; j->p < j->end && *j->p >= '0' && *j->p <= '9'; j->p++) {
            if (v[n] > (INT64_MAX - (*j->p - '0')) / 10) st_json_fail(j, what);
            v[n] = v[n] * 10 + (*j->p - '0');
        }
        if (j->p == start || (j->p < j->end && *j->p && strchr(".eE", *j->p))) st_json_fail(j, what);
    }
    return n;
}

// One tensor's entry {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, other fields skipped.
LLMGEN_API void st_json_tensor(StJson *j, StTensor *t) {
    int64_t offsets[2];
    int n_offsets = -1;
    t->dtype = t->ndim = -1;   // -1 until read: the field is missing
    st_json_expect(j, '{');
    for (int first = 1; st_json_more(j, first, '}', "expected ',' or '}' in a tensor entry"); first = 0) {
        char *key = st_json_string(j, NULL);
        st_json_expect(j, ':');
        if (strcmp(key, "dtype") == 0) {
            char *name = st_json_string(j, NULL);
            for (t->dtype = ST_NUM_DTYPES - 1; t->dtype >= 0 && strcmp(name, st_dtypes[t->dtype].name);) t->dtype--;
            if (t->dtype < 0)
                llmgen_fail("safetensors file %s: tensor \"%s\" has unsupported dtype \"%s\" "
                            "(F32, BF16 and F16 can be read)", j->path, t->name, name);
            free(name);
        } else if (strcmp(key, "shape") == 0) {
            t->ndim = st_json_ints(j, t->shape, 8, "dimensions", t->name);
        } else if (strcmp(key, "data_offsets") == 0) {
            n_offsets = st_json_ints(j, offsets, 2, "data_offsets", t->name);
        } else {
            st_json_skip(j);
        }
        free(key);
    }
    const char *missing = t->dtype < 0 ? "dtype" : t->ndim < 0 ? "shape" : n_offsets < 0 ? "data_offsets" : NULL;
    if (missing) llmgen_fail("safetensors file %s: tensor \"%s\" has no \"%s\" field", j->path, t->name, missing);
    if (n_offsets != 2)
        llmgen_fail("safetensors file %s: tensor \"%s\" has %d data_offsets, not [begin, end]", j->path, t->name,
                    n_offsets);
    t->begin = offsets[0], t->end = offsets[1];
}

// The header: every tensor's entry, its extent checked against the data section; "__metadata__" skipped.
LLMGEN_API void st_parse_header(StFile *f, const char *json, size_t n) {
    StJson j = {json, json, json + n, f->path};
    int cap = 0;
    st_json_expect(&j, '{');
    for (int first = 1; st_json_more(&j, first, '}', "expected ',' or '}' after a top-level entry"); first = 0) {
        size_t len;
        char *key = st_json_string(&j, &len);
        st_json_expect(&j, ':');
        if (strcmp(key, "__metadata__") == 0) {
            free(key), st_json_skip(&j);
            continue;
        }
        if (len >= sizeof(f->tensors[0].name))
            llmgen_fail("safetensors file %s: tensor name of %zu bytes is too long (at most 255): %.60s...", f->path,
                        len, key);
        if (st_find(f, key))
            llmgen_fail("safetensors file %s: tensor \"%s\" appears twice in the header", f->path, key);
        if (f->count == cap)
            f->tensors = (StTensor *)xrealloc(f->tensors, sizeof(StTensor) * (size_t)(cap = cap ? 2 * cap : 64));
        StTensor *t = &f->tensors[f->count++];
        memcpy(t->name, key, len + 1);
        free(key);
        st_json_tensor(&j, t);
        char shape[200];
        double bytes = st_dtypes[t->dtype].bytes;   // exact whenever it can equal the span (< 2^53 bytes)
        for (int d = 0; d < t->ndim; d++) bytes *= (double)t->shape[d];
        if (t->begin > t->end || (uint64_t)t->end > (uint64_t)f->data_size)
            llmgen_fail("safetensors file %s: tensor \"%s\" data_offsets [%lld, %lld] are out of range of the "
                        "%zu-byte data section", f->path, t->name, (long long)t->begin, (long long)t->end,
                        f->data_size);
        if ((double)(t->end - t->begin) != bytes)
            llmgen_fail("safetensors file %s: tensor \"%s\" data_offsets [%lld, %lld] span %lld bytes, but dtype %s "
                        "shape %s needs %.0f bytes", f->path, t->name, (long long)t->begin, (long long)t->end,
                        (long long)(t->end - t->begin), st_dtypes[t->dtype].name,
                        st_shape_str(shape, sizeof shape, t->ndim, t->shape), bytes);
    }
    while (j.p < j.end && (*j.p == '\0' || strchr(" \t\n\r", *j.p))) j.p++;
    if (j.p != j.end) st_json_fail(&j, "expected only padding after the header object");
}

LLMGEN_API void st_open(StFile *f, const char *path) {
    memset(f, 0, sizeof(*f));
    f->path = xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) llmgen_fail("cannot open safetensors file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) llmgen_fail("safetensors file %s is not a regular file", path);
    if ((f->size = (size_t)st.st_size) < 8)
        llmgen_fail("safetensors file %s is %zu bytes, too short to hold the 8-byte header length", path, f->size);
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) llmgen_fail("cannot map safetensors file %s: %s", path, strerror(errno));
    close(fd);
    f->bytes = (unsigned char *)m;
    uint64_t header_len;
    memcpy(&header_len, f->bytes, 8);
    if (header_len > (uint64_t)(f->size - 8))
        llmgen_fail("safetensors file %s: header length %llu exceeds the %zu bytes that follow it "
                    "(truncated, or not a safetensors file)", path, (unsigned long long)header_len, f->size - 8);
    f->data = f->bytes + 8 + header_len;
    f->data_size = f->size - 8 - (size_t)header_len;
    st_parse_header(f, (const char *)f->bytes + 8, (size_t)header_len);
}

LLMGEN_API float st_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float x;
    return memcpy(&x, &bits, 4), x;
}

LLMGEN_API float st_f16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7FFFu) << 13;   // exponent and mantissa in float's places
    float x;
    if ((h & 0x7C00u) == 0x7C00u) bits |= 0x7F800000u;   // inf, nan (payload kept): all-ones exponent
    memcpy(&x, &bits, 4);
    if ((h & 0x7C00u) != 0x7C00u) x *= 5.192296858534828e33f;   // the rest: * 2^112 rebiases 15 -> 127, exactly
    return (h & 0x8000u) ? -x : x;
}

// Copy tensor t of f into dst (numel floats), converting BF16/F16 to float.
LLMGEN_API void st_read_f32(const StFile *f, const StTensor *t, float *dst) {
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16)
        llmgen_fail("safetensors file %s: tensor \"%s\" has dtype %s; only F32, BF16 and F16 can be read as float",
                    f->path, t->name, st_dtypes[t->dtype].name);
    const unsigned char *src = f->data + t->begin;
    if (t->dtype == ST_F32) memcpy(dst, src, (size_t)st_numel(t) * 4);
    for (int64_t i = 0, n = t->dtype == ST_F32 ? 0 : st_numel(t); i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = t->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
    }
}

LLMGEN_API void st_close(StFile *f) {
    if (f->bytes) munmap(f->bytes, f->size);
    free(f->tensors), free(f->path);
    memset(f, 0, sizeof(*f));
}

// ----------------------------------------------------------------------------
// atomic writes
// Write to "<path>.tmp", fflush + fsync, then rename over path (and fsync the directory, best effort):
// a crash at any point leaves the previous file whole.

typedef struct {
    FILE *fp;
    char *path;
    char *tmp_path;
} AtomicFile;

LLMGEN_API __attribute__((noreturn)) void atomic_file_abort(AtomicFile *a, const char *what, int err) {
    if (a->fp) fclose(a->fp);
    unlink(a->tmp_path);
    llmgen_fail("%s %s: %s", what, a->tmp_path, strerror(err));
}

LLMGEN_API void atomic_file_open(AtomicFile *a, const char *path) {
    a->path = xstrdup(path);
    a->tmp_path = (char *)xmalloc(strlen(path) + 5);
    snprintf(a->tmp_path, strlen(path) + 5, "%s.tmp", path);
    if ((a->fp = fopen(a->tmp_path, "wb")) == NULL) llmgen_fail("cannot create %s: %s", a->tmp_path, strerror(errno));
}

LLMGEN_API void atomic_file_write(AtomicFile *a, const void *data, size_t n) {
    if (n > 0 && fwrite(data, 1, n, a->fp) != n) atomic_file_abort(a, "cannot write", errno);
}

LLMGEN_API void atomic_file_commit(AtomicFile *a) {
    if (fflush(a->fp) != 0) atomic_file_abort(a, "cannot flush", errno);
    if (fsync(fileno(a->fp)) != 0) atomic_file_abort(a, "cannot fsync", errno);
    FILE *fp = a->fp;
    a->fp = NULL;
    if (fclose(fp) != 0) atomic_file_abort(a, "cannot close", errno);
    if (rename(a->tmp_path, a->path) != 0) atomic_file_abort(a, "cannot rename into place", errno);
    char *slash = strrchr(a->path, '/');   // make the rename durable; some filesystems refuse, harmlessly
    if (slash) *(slash == a->path ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? a->path : ".", O_RDONLY);
    if (dfd >= 0) (void)fsync(dfd), close(dfd);
    free(a->path), free(a->tmp_path);
    memset(a, 0, sizeof(*a));
}

LLMGEN_API void write_file_atomic(const char *path, const void *data, size_t n) {
    AtomicFile a;
    atomic_file_open(&a, path);
    atomic_file_write(&a, data, n);
    atomic_file_commit(&a);
}

// ----------------------------------------------------------------------------
// safetensors: writing

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[8];
    const float *data; // numel floats, or NULL: produced by the StFill
} StEntry;

typedef void (*StFill)(int i, float *dst, void *ctx);   // fills dst with entry i's numel floats

// Write F32 tensors, in order, atomically, as a safetensors file transformers loads ("__metadata__":
// {"format": "pt"}). An entry without data is produced by fill(i, buffer, ctx) as it is written, one at a time,
// so the whole file is never in memory.
LLMGEN_API void st_write_f32_fill(const char *path, const StEntry *entries, int n, StFill fill, void *ctx) {
    char *h = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&h, &len);   // the header
    if (m == NULL) llmgen_fail("st_write_f32 %s: cannot build the header: %s", path, strerror(errno));
    fputs("{\"__metadata__\":{\"format\":\"pt\"}", m);
    int64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const StEntry *e = &entries[i];
        fputs(",\"", m);   // the name as a JSON string: quotes, backslashes and control characters escaped
        for (const unsigned char *p = (const unsigned char *)e->name; *p; p++)
            fprintf(m, *p == '"' || *p == '\\' ? "\\%c" : *p < 0x20 ? "\\u%04x" : "%c", *p);
        fputs("\":{\"dtype\":\"F32\",\"shape\":[", m);
        int64_t bytes = 4;
        for (int d = 0; d < e->ndim; d++)
            bytes *= e->shape[d], fprintf(m, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        fprintf(m, "],\"data_offsets\":[%lld,%lld]}", (long long)offset, (long long)(offset + bytes));
        offset += bytes;
    }
    fputc('}', m);
    fclose(m);
    uint64_t header_len = (len + 7) / 8 * 8;   // padded with spaces to a multiple of 8
    AtomicFile a;
    atomic_file_open(&a, path);
    atomic_file_write(&a, &header_len, 8);
    atomic_file_write(&a, h, len);
    atomic_file_write(&a, "       ", header_len - len);
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++) numel *= entries[i].shape[d];
        float *buf = entries[i].data || numel == 0 ? NULL : (float *)xmalloc((size_t)numel * 4);
        if (buf) fill(i, buf, ctx);
        atomic_file_write(&a, buf ? buf : entries[i].data, (size_t)numel * 4);
        free(buf);
    }
    atomic_file_commit(&a);
    free(h);
}

#endif // LLMGEN_RUNTIME_H
