/* llmgen runtime: the plain host-side support every generated trainer needs, pasted verbatim after the model
 * into train.c (gcc -std=gnu11) and train.cu (nvcc, or g++ -std=c++17 for the CPU emulation); it compiles
 * cleanly as C11 and C++17 with -Wall -Wextra. Everything is `static`, on libc + POSIX only (link with -lm),
 * little-endian hosts. Every error goes through llmgen_fail(): "error: <message>" on stderr, exit status 1,
 * the message naming the cause (file, field, expected versus found); nothing here returns an error code.
 *   utilities       llmgen_fail, xmalloc, xcalloc, xfopen, llmgen_now, llmgen_mkdirs, LlmgenBuf
 *   random numbers  Rng (splitmix64), rng_seed, rng_u32, rng_uniform, rng_normal
 *   token shards    ShardLoader: llm.c's .bin shards, batches without shuffling
 *   safetensors     StFile: st_open, st_find, st_read_f32, st_load_f32, st_close; st_write_f32 (F32, "pt")
 *   atomic writes   AtomicFile, write_file_atomic
 */
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

// mkdir -p: create `path` and missing parents; fine if it is already a directory.
LLMGEN_API void llmgen_mkdirs(const char *path) {
    if (path == NULL || path[0] == '\0') llmgen_fail("cannot create a directory with an empty path");
    char *buf = xstrdup(path);
    for (size_t i = 1, n = strlen(path); i <= n; i++) {
        if ((i < n && buf[i] != '/') || buf[i - 1] == '/') continue;   // not a component's end, or a repeated '/'
        char saved = buf[i];
        buf[i] = '\0';
        struct stat st;
        if (mkdir(buf, 0777) != 0) {
            int err = errno;
            if (stat(buf, &st) != 0) llmgen_fail("cannot create directory %s: %s", buf, strerror(err));
            if (!S_ISDIR(st.st_mode))
                llmgen_fail("cannot create directory %s: %s exists and is not a directory", path, buf);
        }
        buf[i] = saved;
    }
    free(buf);
}

// A growable byte string (always NUL-terminated), used to build headers and to read files.
typedef struct {
    char *data;
    size_t len, cap;
} LlmgenBuf;

LLMGEN_API void llmgen_buf_append(LlmgenBuf *b, const char *s, size_t n) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    if (cap != b->cap) b->data = (char *)xrealloc(b->data, b->cap = cap);
    memcpy(b->data + b->len, s, n);
    b->data[b->len += n] = '\0';
}

LLMGEN_API __attribute__((format(printf, 2, 3))) void llmgen_buf_printf(LlmgenBuf *b, const char *fmt, ...) {
    char s[512];   // the runtime's pieces are short (a name is at most 255 bytes, escaped at most twice that)
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s, sizeof s, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= (int)sizeof s) llmgen_fail("llmgen_buf_printf: \"%s\" needs more than %zu bytes", fmt, sizeof s);
    llmgen_buf_append(b, s, (size_t)n);
}

// ----------------------------------------------------------------------------
// random numbers
// splitmix64 (Steele, Lea & Flood 2014, constants as in Vigna's reference): the state advances by
// the golden-ratio increment 0x9E3779B97F4A7C15 and each output is a bijective mix of it. Any seed,
// 0 included, is fine. The whole generator is the one uint64 in Rng, so saving it resumes exactly.

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

// The top 32 bits of one splitmix64 output.
LLMGEN_API uint32_t rng_u32(Rng *r) { return (uint32_t)(rng_u64(r) >> 32); }

// Uniform in [0, 1): the top 24 bits of rng_u32, so every value is exact in float.
LLMGEN_API float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

// Standard normal by Box-Muller (cosine branch only, so no hidden cached state).
// Uses two 64-bit draws as 53-bit uniforms: u1 in (0, 1], u2 in [0, 1).
LLMGEN_API float rng_normal(Rng *r) {
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = (double)((rng_u64(r) >> 11) + 1) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(two_pi * u2));
}

// ----------------------------------------------------------------------------
// token shards
// llm.c's layout: a header of 256 int32 (magic, version, token count), then the tokens, little-endian:
//   magic 20240520 version 1: uint16 tokens;  magic 20240801 version 7: uint32 tokens.
// Batches are drawn in order, without shuffling, exactly as llm.c: position is a token offset in the
// current shard; a batch reads B*T+1 tokens at position (inputs = the first B*T, targets = the same
// shifted by one) and advances position by B*T; when a batch would not fit, the loader moves to the
// next shard (wrapping to the first) at position 0. Every shard is validated once at init (format,
// exact size, length >= B*T+1, every token id < vocab_size); only the current shard is in memory.

enum { SHARD_HEADER_BYTES = 256 * 4, SHARD_MAGIC_U16 = 20240520, SHARD_MAGIC_U32 = 20240801 };

typedef struct {
    int B, T, vocab_size;
    int num_shards;
    char **paths;          // (num_shards) glob matches, sorted
    int64_t *counts;       // (num_shards) tokens in each shard
    int *token_bytes;      // (num_shards) 2 (uint16) or 4 (uint32)
    int64_t shard_index;   // shard the next batch comes from
    int64_t position;      // token offset of the next batch in that shard
    int64_t loaded_shard;  // shard whose tokens are in `tokens`, -1 if none
    unsigned char *tokens; // raw little-endian tokens of loaded_shard
} ShardLoader;

LLMGEN_API uint32_t shard_token_at(const unsigned char *raw, int token_bytes, int64_t i) {
    uint16_t v16;
    uint32_t v32;
    if (token_bytes == 2) return memcpy(&v16, raw + 2 * i, 2), v16;
    return memcpy(&v32, raw + 4 * i, 4), v32;
}

// Read n tokens (file token indices first..) of shard `path` into raw and check their ids.
LLMGEN_API void shard_read_tokens(FILE *fp, const char *path, unsigned char *raw, int64_t n, int token_bytes,
                                  int64_t first, int vocab_size) {
    if (fread(raw, (size_t)token_bytes, (size_t)n, fp) != (size_t)n)
        llmgen_fail("cannot read tokens of shard %s at token %lld: %s", path, (long long)first,
                    ferror(fp) ? strerror(errno) : "unexpected end of file");
    for (int64_t i = 0; i < n; i++) {
        uint32_t tok = shard_token_at(raw, token_bytes, i);
        if (tok >= (uint32_t)vocab_size)
            llmgen_fail("shard %s: token %lld has id %u, but vocab_size is %d (ids must be < %d)", path,
                        (long long)(first + i), tok, vocab_size, vocab_size);
    }
}

// Open a shard, read and check its header against the file size; the file is left at the first token.
LLMGEN_API FILE *shard_open(const char *path, int64_t *count_out, int *token_bytes_out) {
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) llmgen_fail("cannot open shard %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) llmgen_fail("shard %s is not a regular file", path);
    long long size = (long long)st.st_size;
    if (size < SHARD_HEADER_BYTES)
        llmgen_fail("shard %s is %lld bytes, shorter than the %d-byte header", path, size, SHARD_HEADER_BYTES);
    int32_t h[256];
    if (fread(h, 4, 256, fp) != 256) llmgen_fail("cannot read the header of shard %s: %s", path, strerror(errno));
    int token_bytes = h[0] == SHARD_MAGIC_U16 && h[1] == 1 ? 2 : h[0] == SHARD_MAGIC_U32 && h[1] == 7 ? 4 : 0;
    if (!token_bytes)
        llmgen_fail("shard %s has magic %d version %d; expected magic %d version 1 (uint16 tokens) "
                    "or magic %d version 7 (uint32 tokens)",
                    path, (int)h[0], (int)h[1], SHARD_MAGIC_U16, SHARD_MAGIC_U32);
    int64_t count = h[2];
    long long expected = (long long)SHARD_HEADER_BYTES + (long long)count * token_bytes;
    if (count < 0 || size != expected)
        llmgen_fail("shard %s is %s: its header says %lld tokens of %d bytes, so the file should be "
                    "%lld bytes, but it is %lld bytes",
                    path, size < expected ? "truncated" : "oversized", (long long)count, token_bytes, expected, size);
    *count_out = count;
    *token_bytes_out = token_bytes;
    return fp;
}

LLMGEN_API void loader_init(ShardLoader *L, const char *pattern, int B, int T, int vocab_size) {
    memset(L, 0, sizeof(*L));
    if (B <= 0 || T <= 0 || vocab_size <= 0)
        llmgen_fail("loader: B, T and vocab_size must be positive, got B=%d T=%d vocab_size=%d", B, T, vocab_size);
    L->B = B;
    L->T = T;
    L->vocab_size = vocab_size;
    glob_t g;
    memset(&g, 0, sizeof(g));
    int rc = glob(pattern, 0, NULL, &g);
    if (rc == GLOB_NOMATCH || (rc == 0 && g.gl_pathc == 0)) llmgen_fail("no file matches %s", pattern);
    if (rc != 0 || g.gl_pathc > (size_t)INT32_MAX) llmgen_fail("glob(%s) failed (rc %d)", pattern, rc);
    L->num_shards = (int)g.gl_pathc;
    L->paths = (char **)xcalloc((size_t)L->num_shards, sizeof(char *));
    L->counts = (int64_t *)xcalloc((size_t)L->num_shards, sizeof(int64_t));
    L->token_bytes = (int *)xcalloc((size_t)L->num_shards, sizeof(int));
    // validate every shard once, streaming through it in chunks
    const int64_t chunk = (int64_t)1 << 20, need = (int64_t)B * T + 1;
    unsigned char *buf = (unsigned char *)xmalloc((size_t)chunk * 4);
    size_t max_bytes = 0;
    for (int s = 0; s < L->num_shards; s++) {
        const char *path = L->paths[s] = xstrdup(g.gl_pathv[s]);
        FILE *fp = shard_open(path, &L->counts[s], &L->token_bytes[s]);
        if (L->counts[s] < need)
            llmgen_fail("shard %s has %lld tokens, fewer than the B*T+1 = %lld one batch needs (B=%d, T=%d)", path,
                        (long long)L->counts[s], (long long)need, B, T);
        for (int64_t done = 0; done < L->counts[s]; done += chunk)
            shard_read_tokens(fp, path, buf, L->counts[s] - done < chunk ? L->counts[s] - done : chunk,
                              L->token_bytes[s], done, vocab_size);
        fclose(fp);
        if ((size_t)L->counts[s] * L->token_bytes[s] > max_bytes) max_bytes = (size_t)L->counts[s] * L->token_bytes[s];
    }
    globfree(&g);
    free(buf);
    L->tokens = (unsigned char *)xmalloc(max_bytes);
    L->loaded_shard = -1;
}

// Fill inputs and targets, (B,T) each, with the next batch.
LLMGEN_API void loader_next(ShardLoader *L, int *inputs, int *targets) {
    int64_t bt = (int64_t)L->B * (int64_t)L->T;
    if (L->position + bt + 1 > L->counts[L->shard_index]) {
        L->shard_index = (L->shard_index + 1) % L->num_shards;
        L->position = 0;
    }
    if (L->loaded_shard != L->shard_index) {   // make the shard current (re-checked: it may have changed)
        int64_t s = L->shard_index, count;
        int token_bytes;
        FILE *fp = shard_open(L->paths[s], &count, &token_bytes);
        if (count != L->counts[s] || token_bytes != L->token_bytes[s])
            llmgen_fail("shard %s changed since the loader was initialised "
                        "(had %lld tokens of %d bytes, now %lld of %d)",
                        L->paths[s], (long long)L->counts[s], L->token_bytes[s], (long long)count, token_bytes);
        shard_read_tokens(fp, L->paths[s], L->tokens, count, token_bytes, 0, L->vocab_size);
        fclose(fp);
        L->loaded_shard = s;
    }
    int tb = L->token_bytes[L->shard_index];
    const unsigned char *raw = L->tokens + (size_t)L->position * (size_t)tb;
    for (int64_t i = 0; i < bt; i++) {
        inputs[i] = (int)shard_token_at(raw, tb, i);
        targets[i] = (int)shard_token_at(raw, tb, i + 1);
    }
    L->position += bt;
}

LLMGEN_API void loader_reset(ShardLoader *L) { L->shard_index = 0, L->position = 0; }

// The state that determines the next batch; save it with a checkpoint.
LLMGEN_API void loader_get_state(const ShardLoader *L, int64_t *shard_index, int64_t *position) {
    *shard_index = L->shard_index;
    *position = L->position;
}

LLMGEN_API void loader_set_state(ShardLoader *L, int64_t shard_index, int64_t position) {
    if (shard_index < 0 || shard_index >= L->num_shards)
        llmgen_fail("loader state: shard index %lld out of range, there are %d shards", (long long)shard_index,
                    L->num_shards);
    if (position < 0 || position > L->counts[shard_index])
        llmgen_fail("loader state: position %lld out of range for shard %s with %lld tokens", (long long)position,
                    L->paths[shard_index], (long long)L->counts[shard_index]);
    L->shard_index = shard_index;
    L->position = position;
}

LLMGEN_API void loader_free(ShardLoader *L) {
    for (int s = 0; s < L->num_shards; s++) free(L->paths[s]);
    free(L->paths);
    free(L->counts);
    free(L->token_bytes);
    free(L->tokens);
    memset(L, 0, sizeof(*L));
}

// ----------------------------------------------------------------------------
// safetensors: reading
// Layout: u64 little-endian header length N, N bytes of JSON, then the data. The JSON is one flat
// object: tensor name -> {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
// section, other fields skipped), plus an optional "__metadata__" string -> string map (other
// values skipped). This is no general JSON parser: a scanner for exactly that form, with strings
// (every JSON escape: names are UTF-8) and non-negative integers read in full and any other value
// skipped by its brackets and characters. st_open validates every entry (known dtype, offsets in
// range and equal to dtype size * numel); st_read_f32 converts F32, BF16 and F16.

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
    unsigned char *bytes;      // the whole file
    size_t size;               // file size in bytes
    int mapped;                // 1: bytes is an mmap; 0: malloc'd copy
    const unsigned char *data; // start of the data section
    size_t data_size;          // bytes in the data section
    StTensor *tensors;         // (count) in header order
    int count;
    char **meta_keys;          // (meta_count) "__metadata__" entries
    char **meta_values;
    int meta_count;
} StFile;

LLMGEN_API const char *st_dtype_name(int dtype) {
    return dtype >= 0 && dtype < ST_NUM_DTYPES ? st_dtypes[dtype].name : "?";
}

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

// The scanner: a cursor over the header [begin, end).
typedef struct {
    const char *p, *begin, *end, *path;
    int depth;
} StJson;

LLMGEN_API __attribute__((noreturn)) void st_json_fail(const StJson *j, const char *what) {
    char found[32];
    unsigned char c = j->p < j->end ? (unsigned char)*j->p : 0;
    if (j->p >= j->end) snprintf(found, sizeof(found), "end of header");
    else if (c >= 0x20 && c < 0x7f) snprintf(found, sizeof(found), "'%c'", c);
    else snprintf(found, sizeof(found), "byte 0x%02x", (unsigned)c);
    llmgen_fail("malformed safetensors header in %s: %s, found %s at header byte %lld", j->path, what, found,
                (long long)(j->p - j->begin));
}

// The next byte after whitespace (-1 at the end), not consumed.
LLMGEN_API int st_json_peek(StJson *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
    return j->p < j->end ? (unsigned char)*j->p : -1;
}

LLMGEN_API void st_json_expect(StJson *j, char c) {
    char what[32];
    snprintf(what, sizeof(what), "expected '%c'", c);
    if (st_json_peek(j) != (unsigned char)c) st_json_fail(j, what);
    j->p++;
}

// After '{' or '[' (first = 1) or a member: 1 when a member follows (its ',' consumed), 0 at `close`.
LLMGEN_API int st_json_more(StJson *j, int first, char close, const char *what) {
    int c = st_json_peek(j);
    if (c == (unsigned char)close) return j->p++, 0;
    if (first) return 1;
    if (c != ',') st_json_fail(j, what);
    return j->p++, 1;
}

LLMGEN_API unsigned st_json_hex4(StJson *j) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++, j->p++) {
        const char *hex = "0123456789abcdef0123456789ABCDEF", *d = j->p < j->end && *j->p ? strchr(hex, *j->p) : NULL;
        if (!d) st_json_fail(j, "expected 4 hex digits after \\u");
        v = v * 16 + (unsigned)((d - hex) % 16);
    }
    return v;
}

// A JSON string, decoded to UTF-8 (NUL-terminated, malloc'd; never longer than its raw bytes).
LLMGEN_API char *st_json_string(StJson *j, size_t *len_out) {
    if (st_json_peek(j) != '"') st_json_fail(j, "expected a string");
    const char *q = ++j->p;
    while (q < j->end && *q != '"') q += (*q == '\\' && j->end - q > 1) ? 2 : 1;
    if (q >= j->end) j->p = j->end, st_json_fail(j, "unterminated string");
    char *out = (char *)xmalloc((size_t)(q - j->p) + 1);
    size_t n = 0;
    for (;;) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') break;
        if (c < 0x20) j->p--, st_json_fail(j, "control character inside a string");
        if (c != '\\') { out[n++] = (char)c; continue; }
        const char *esc = strchr("\"\\/bfnrt", *j->p), *to = "\"\\/\b\f\n\r\t";
        if (*j->p && esc) { out[n++] = to[esc - "\"\\/bfnrt"]; j->p++; continue; }
        if (*j->p++ != 'u') j->p--, st_json_fail(j, "invalid escape in string");
        unsigned cp = st_json_hex4(j);
        if (cp >= 0xDC00 && cp <= 0xDFFF) st_json_fail(j, "lone low surrogate in \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                st_json_fail(j, "expected a low surrogate \\uDC00-\\uDFFF after a high surrogate");
            j->p += 2;
            unsigned lo = st_json_hex4(j);
            if (lo < 0xDC00 || lo > 0xDFFF) st_json_fail(j, "expected a low surrogate \\uDC00-\\uDFFF");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp == 0) st_json_fail(j, "\\u0000 inside a string is not supported");
        int extra = cp < 0x80 ? 0 : cp < 0x800 ? 1 : cp < 0x10000 ? 2 : 3;   // UTF-8 continuation bytes
        out[n++] = (char)(extra == 0 ? cp : ((0xFF00u >> (extra + 1)) & 0xFFu) | (cp >> (6 * extra)));
        for (int k = extra - 1; k >= 0; k--) out[n++] = (char)(0x80 | ((cp >> (6 * k)) & 0x3F));
    }
    out[n] = '\0';
    if (len_out) *len_out = n;
    return out;
}

// A non-negative integer that fits in int64 (shapes, offsets).
LLMGEN_API int64_t st_json_int(StJson *j, const char *what) {
    char msg[160];
    snprintf(msg, sizeof(msg), "expected a non-negative integer (int64) for %s", what);
    int c = st_json_peek(j);
    if (c < '0' || c > '9') st_json_fail(j, msg);
    uint64_t v = 0;
    for (; j->p < j->end && *j->p >= '0' && *j->p <= '9'; j->p++) {
        if (v > ((uint64_t)INT64_MAX - (unsigned)(*j->p - '0')) / 10) st_json_fail(j, msg);
        v = v * 10 + (unsigned)(*j->p - '0');
    }
    if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E')) st_json_fail(j, msg);
    return (int64_t)v;
}

// Skip a value the reader does not use (nesting at most 64 deep): strings and brackets are followed,
// numbers and true / false / null are skipped as a run of the characters they are made of.
LLMGEN_API void st_json_skip(StJson *j) {
    int c = st_json_peek(j);
    if (c != '{' && c != '[') {
        const char *start = j->p;
        if (c == '"') free(st_json_string(j, NULL));
        while (c != '"' && j->p < j->end && *j->p && strchr("+-.0123456789Eeaflnrstu", *j->p)) j->p++;
        if (j->p == start) st_json_fail(j, "expected a JSON value");
        return;
    }
    const char close = c == '{' ? '}' : ']';
    if (++j->depth > 64) st_json_fail(j, "nesting deeper than 64 levels");
    j->p++;
    for (int first = 1; st_json_more(j, first, close, "expected ',' or the end of an object or array"); first = 0) {
        if (c == '{') free(st_json_string(j, NULL)), st_json_expect(j, ':');
        st_json_skip(j);
    }
    j->depth--;
}

// One tensor's entry {"dtype": ..., "shape": [...], "data_offsets": [begin, end], ...}.
LLMGEN_API void st_json_tensor(StJson *j, StTensor *t) {
    char what[320];
    t->dtype = t->ndim = -1, t->begin = -1;   // -1 until read: the field is missing
    snprintf(what, sizeof(what), "expected '{' to start the entry of tensor \"%s\"", t->name);
    if (st_json_peek(j) != '{') st_json_fail(j, what);
    j->p++;
    for (int first = 1; st_json_more(j, first, '}', "expected ',' or '}' in a tensor entry"); first = 0) {
        char *key = st_json_string(j, NULL);
        st_json_expect(j, ':');
        if (strcmp(key, "dtype") == 0) {
            char *name = st_json_string(j, NULL);
            t->dtype = ST_NUM_DTYPES - 1;
            while (t->dtype >= 0 && strcmp(name, st_dtypes[t->dtype].name) != 0) t->dtype--;
            if (t->dtype < 0)
                llmgen_fail("safetensors file %s: tensor \"%s\" has unsupported dtype \"%s\" "
                            "(F32, BF16 and F16 can be read)", j->path, t->name, name);
            free(name);
        } else if (strcmp(key, "shape") == 0) {
            snprintf(what, sizeof(what), "a dimension of tensor \"%s\"", t->name);
            st_json_expect(j, '[');
            for (t->ndim = 0; st_json_more(j, t->ndim == 0, ']', "expected ',' or ']' in shape");) {
                if (t->ndim == 8)
                    llmgen_fail("safetensors file %s: tensor \"%s\" has more than 8 dimensions", j->path, t->name);
                t->shape[t->ndim++] = st_json_int(j, what);
            }
        } else if (strcmp(key, "data_offsets") == 0) {
            snprintf(what, sizeof(what), "data_offsets of tensor \"%s\"", t->name);
            st_json_expect(j, '[');
            t->begin = st_json_int(j, what);
            st_json_expect(j, ',');
            t->end = st_json_int(j, what);
            st_json_expect(j, ']');
        } else {
            st_json_skip(j);
        }
        free(key);
    }
    const char *missing = t->dtype < 0 ? "dtype" : t->ndim < 0 ? "shape" : t->begin < 0 ? "data_offsets" : NULL;
    if (missing) llmgen_fail("safetensors file %s: tensor \"%s\" has no \"%s\" field", j->path, t->name, missing);
}

// The header: every entry, then each tensor's extent checked against the data section.
LLMGEN_API void st_parse_header(StFile *f, const char *json, size_t n) {
    StJson j = {json, json, json + n, f->path, 0};
    int cap = 0;
    st_json_expect(&j, '{');
    for (int first = 1; st_json_more(&j, first, '}', "expected ',' or '}' after a top-level entry"); first = 0) {
        const char *key_at = j.p;
        size_t len;
        char *key = st_json_string(&j, &len);
        st_json_expect(&j, ':');
        if (strcmp(key, "__metadata__") == 0 && st_json_peek(&j) == 'n') {
            st_json_skip(&j);                          // "__metadata__": null
        } else if (strcmp(key, "__metadata__") == 0) {  // string values kept, others tolerated and skipped
            st_json_expect(&j, '{');
            for (int m = 1; st_json_more(&j, m, '}', "expected ',' or '}' in __metadata__"); m = 0) {
                char *mkey = st_json_string(&j, NULL);
                st_json_expect(&j, ':');
                if (st_json_peek(&j) != '"') {
                    free(mkey), st_json_skip(&j);
                    continue;
                }
                f->meta_keys = (char **)xrealloc(f->meta_keys, sizeof(char *) * (size_t)(f->meta_count + 1));
                f->meta_values = (char **)xrealloc(f->meta_values, sizeof(char *) * (size_t)(f->meta_count + 1));
                f->meta_keys[f->meta_count] = mkey;
                f->meta_values[f->meta_count++] = st_json_string(&j, NULL);
            }
        } else {
            if (len >= sizeof(f->tensors[0].name))
                j.p = key_at, llmgen_fail("safetensors file %s: tensor name of %zu bytes is too long "
                                          "(at most 255): %.60s...", f->path, len, key);
            for (int i = 0; i < f->count; i++)
                if (strcmp(f->tensors[i].name, key) == 0)
                    llmgen_fail("safetensors file %s: tensor \"%s\" appears twice in the header", f->path, key);
            if (f->count == cap)
                f->tensors = (StTensor *)xrealloc(f->tensors, sizeof(StTensor) * (size_t)(cap = cap ? 2 * cap : 64));
            StTensor *t = &f->tensors[f->count++];
            memset(t, 0, sizeof(*t));
            memcpy(t->name, key, len + 1);
            st_json_tensor(&j, t);
        }
        free(key);
    }
    while (j.p < j.end && (*j.p == ' ' || *j.p == '\t' || *j.p == '\n' || *j.p == '\r' || *j.p == '\0')) j.p++;
    if (j.p != j.end) st_json_fail(&j, "expected only padding after the header object");
    for (int i = 0; i < f->count; i++) {
        const StTensor *t = &f->tensors[i];
        char shape[200];
        st_shape_str(shape, sizeof(shape), t->ndim, t->shape);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] != 0 && numel > INT64_MAX / 8 / t->shape[d])
                llmgen_fail("safetensors file %s: tensor \"%s\" shape %s is too large", f->path, t->name, shape);
            numel *= t->shape[d];
        }
        if (t->begin > t->end || (uint64_t)t->end > (uint64_t)f->data_size)
            llmgen_fail("safetensors file %s: tensor \"%s\" data_offsets [%lld, %lld] are out of range of the "
                        "%zu-byte data section",
                        f->path, t->name, (long long)t->begin, (long long)t->end, f->data_size);
        if (t->end - t->begin != numel * st_dtypes[t->dtype].bytes)
            llmgen_fail("safetensors file %s: tensor \"%s\" data_offsets [%lld, %lld] span %lld bytes, but dtype %s "
                        "shape %s needs %lld bytes", f->path, t->name, (long long)t->begin, (long long)t->end,
                        (long long)(t->end - t->begin), st_dtype_name(t->dtype), shape,
                        (long long)(numel * st_dtypes[t->dtype].bytes));
    }
}

LLMGEN_API void st_open(StFile *f, const char *path) {
    memset(f, 0, sizeof(*f));
    f->path = xstrdup(path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) llmgen_fail("cannot open safetensors file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) llmgen_fail("safetensors file %s is not a regular file", path);
    f->size = (size_t)st.st_size;
    if (f->size < 8)
        llmgen_fail("safetensors file %s is %zu bytes, too short to hold the 8-byte header length", path, f->size);
    void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    f->mapped = m != MAP_FAILED;
    f->bytes = f->mapped ? (unsigned char *)m : (unsigned char *)xmalloc(f->size);
    for (size_t got = 0; !f->mapped && got < f->size;) {   // e.g. a filesystem without mmap: read it all
        ssize_t r = read(fd, f->bytes + got, f->size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) llmgen_fail("cannot read %s: %s", path, r < 0 ? strerror(errno) : "unexpected end of file");
        got += (size_t)r;
    }
    close(fd);
    uint64_t header_len;
    memcpy(&header_len, f->bytes, 8);
    if (header_len > (uint64_t)(f->size - 8))
        llmgen_fail("safetensors file %s: header length %llu exceeds the %zu bytes that follow it "
                    "(truncated, or not a safetensors file)", path, (unsigned long long)header_len, f->size - 8);
    f->data = f->bytes + 8 + header_len;
    f->data_size = f->size - 8 - (size_t)header_len;
    st_parse_header(f, (const char *)f->bytes + 8, (size_t)header_len);
}

LLMGEN_API const StTensor *st_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

// Value of a "__metadata__" key, NULL if absent.
LLMGEN_API const char *st_metadata(const StFile *f, const char *key) {
    for (int i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

LLMGEN_API float st_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float x;
    return memcpy(&x, &bits, 4), x;
}

LLMGEN_API float st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
    if (exp == 0x1F) bits = sign | 0x7F800000u | (mant << 13);          // inf, nan (payload kept)
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13); // normal: rebias 15 -> 127
    else if (mant == 0) bits = sign;                                     // +-0
    else {                                                               // subnormal mant * 2^-24: normalise
        int s = 0;
        for (; !(mant & 0x400u); s++) mant <<= 1;
        bits = sign | ((uint32_t)(113 - s) << 23) | ((mant & 0x3FFu) << 13);
    }
    float x;
    return memcpy(&x, &bits, 4), x;
}

// Copy tensor t of f into dst (numel floats), converting BF16/F16 to float.
LLMGEN_API void st_read_f32(const StFile *f, const StTensor *t, float *dst) {
    if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16)
        llmgen_fail("safetensors file %s: tensor \"%s\" has dtype %s; only F32, BF16 and F16 can be read as float",
                    f->path, t->name, st_dtype_name(t->dtype));
    const unsigned char *src = f->data + t->begin;
    if (t->dtype == ST_F32) memcpy(dst, src, (size_t)st_numel(t) * 4);
    for (int64_t i = 0, n = t->dtype == ST_F32 ? 0 : st_numel(t); i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = t->dtype == ST_BF16 ? st_bf16_to_f32(h) : st_f16_to_f32(h);
    }
}

// Find `name`, check its shape is exactly (ndim, shape), read it as float.
LLMGEN_API void st_load_f32(const StFile *f, const char *name, float *dst, int ndim, const int64_t *shape) {
    const StTensor *t = st_find(f, name);
    if (t == NULL) llmgen_fail("safetensors file %s has no tensor \"%s\"", f->path, name);
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    char want[200], got[200];
    if (!same)
        llmgen_fail("safetensors file %s: tensor \"%s\" has shape %s, expected %s", f->path, name,
                    st_shape_str(got, sizeof(got), t->ndim, t->shape), st_shape_str(want, sizeof(want), ndim, shape));
    st_read_f32(f, t, dst);
}

LLMGEN_API void st_close(StFile *f) {
    if (f->bytes && f->mapped) munmap(f->bytes, f->size);
    else free(f->bytes);
    for (int i = 0; i < f->meta_count; i++) free(f->meta_keys[i]), free(f->meta_values[i]);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

// ----------------------------------------------------------------------------
// atomic writes
// Write to "<path>.tmp", fflush + fsync, then rename over path (and fsync the directory, best
// effort): a crash at any point leaves the previous file whole.

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
    a->fp = fopen(a->tmp_path, "wb");
    if (a->fp == NULL) llmgen_fail("cannot create %s: %s", a->tmp_path, strerror(errno));
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
    // make the rename itself durable; some filesystems refuse, which is harmless
    char *slash = strrchr(a->path, '/');
    if (slash) *(slash == a->path ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? a->path : ".", O_RDONLY);
    if (dfd >= 0) (void)fsync(dfd), close(dfd);
    free(a->path);
    free(a->tmp_path);
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
    const float *data; // numel floats
} StEntry;

// Fills dst (entry i's numel floats) for an entry written without data
typedef void (*StFill)(int i, float *dst, void *ctx);

// Write F32 tensors, in the given order, as a safetensors file that transformers loads
// ("__metadata__": {"format": "pt"}), atomically. Entries with data == NULL are produced one at a
// time by fill(i, buffer, ctx), so the whole file is never in memory.
LLMGEN_API void st_write_f32_fill(const char *path, const StEntry *entries, int n, StFill fill, void *ctx) {
    LlmgenBuf h = {NULL, 0, 0};
    llmgen_buf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    int64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const StEntry *e = &entries[i];
        if (e->name == NULL || strcmp(e->name, "__metadata__") == 0 || strlen(e->name) > 255)
            llmgen_fail("st_write_f32 %s: invalid tensor name \"%.60s\"", path, e->name ? e->name : "(none)");
        for (int k = 0; k < i; k++)
            if (strcmp(entries[k].name, e->name) == 0)
                llmgen_fail("st_write_f32 %s: tensor \"%s\" given twice", path, e->name);
        if (e->ndim < 0 || e->ndim > 8)
            llmgen_fail("st_write_f32 %s: tensor \"%s\" has ndim %d (0..8 allowed)", path, e->name, e->ndim);
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0 || (e->shape[d] != 0 && numel > INT64_MAX / 4 / e->shape[d]))
                llmgen_fail("st_write_f32 %s: tensor \"%s\" has invalid dimension %d = %lld", path, e->name, d,
                            (long long)e->shape[d]);
            numel *= e->shape[d];
        }
        if (numel > 0 && e->data == NULL && fill == NULL)
            llmgen_fail("st_write_f32 %s: tensor \"%s\" has no data", path, e->name);
        llmgen_buf_append(&h, ",\"", 2);           // the name as a JSON string: quotes, backslashes, controls escaped
        for (const unsigned char *p = (const unsigned char *)e->name; *p; p++) {
            if (*p == '"' || *p == '\\') llmgen_buf_printf(&h, "\\%c", *p);
            else if (*p < 0x20) llmgen_buf_printf(&h, "\\u%04x", (unsigned)*p);
            else llmgen_buf_append(&h, (const char *)p, 1);
        }
        llmgen_buf_printf(&h, "\":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) llmgen_buf_printf(&h, d ? ",%lld" : "%lld", (long long)e->shape[d]);
        llmgen_buf_printf(&h, "],\"data_offsets\":[%lld,%lld]}", (long long)offset, (long long)(offset + 4 * numel));
        offset += 4 * numel;
    }
    llmgen_buf_append(&h, "}", 1);
    while (h.len % 8 != 0) llmgen_buf_append(&h, " ", 1);
    uint64_t header_len = (uint64_t)h.len;
    AtomicFile a;
    atomic_file_open(&a, path);
    atomic_file_write(&a, &header_len, 8);
    atomic_file_write(&a, h.data, h.len);
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < entries[i].ndim; d++) numel *= entries[i].shape[d];
        float *buf = entries[i].data || numel == 0 ? NULL : (float *)xmalloc((size_t)numel * 4);
        if (buf) fill(i, buf, ctx);
        atomic_file_write(&a, buf ? buf : entries[i].data, (size_t)numel * 4);
        free(buf);
    }
    atomic_file_commit(&a);
    free(h.data);
}

LLMGEN_API void st_write_f32(const char *path, const StEntry *entries, int n) {
    st_write_f32_fill(path, entries, n, NULL, NULL);
}

#endif // LLMGEN_RUNTIME_H
