/* testio.h -- host-side file I/O for the emulation tests (driven by ../test_emu_*.py).
 * A program is run as `prog CASE DIR`: it reads inputs DIR/<name>.bin written by the test and
 * writes outputs DIR/<name>.bin that the test compares with numpy/torch references. */
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>

#define CHECK_CUDA(call)                                                                      \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d: %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                          \
        }                                                                                     \
    } while (0)

static std::string g_dir = ".";

/* the self-checking programs (runtime.cu, graph.cu, defer.cu): one OK / FAIL line per check, failures counted */
static int failures __attribute__((unused)) = 0;
#define EXPECT(name, cond)                                                   \
    do {                                                                     \
        if (cond) printf("OK %s\n", name);                                   \
        else { printf("FAIL %s (line %d)\n", name, __LINE__); ++failures; } \
    } while (0)

static inline std::vector<char> read_bytes(const char* name) {
    std::string path = g_dir + "/" + name + ".bin";
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path.c_str()); exit(2); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    std::vector<char> buf((size_t)n);
    if (n > 0 && fread(buf.data(), 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "short read %s\n", path.c_str()); exit(2); }
    fclose(f);
    return buf;
}

template <class T>
static inline std::vector<T> read_input(const char* name) {
    std::vector<char> b = read_bytes(name);
    std::vector<T> v(b.size() / sizeof(T));
    if (!v.empty()) memcpy((void*)v.data(), b.data(), v.size() * sizeof(T));
    return v;
}

static inline void write_output(const char* name, const void* data, size_t bytes) {
    std::string path = g_dir + "/" + name + ".bin";
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path.c_str()); exit(2); }
    if (bytes && fwrite(data, 1, bytes, f) != bytes) { fprintf(stderr, "short write %s\n", path.c_str()); exit(2); }
    fclose(f);
}

template <class T>
static inline void write_output(const char* name, const std::vector<T>& v) { write_output(name, v.data(), v.size() * sizeof(T)); }

/* device buffer <- host vector */
template <class T>
static inline T* to_device(const std::vector<T>& h) {
    T* d = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, h.size() * sizeof(T) + 16));
    if (!h.empty()) CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <class T>
static inline std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    if (n) CHECK_CUDA(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}
template <class T>
static inline void save_device(const char* name, const T* d, size_t n) { write_output(name, to_host(d, n)); }
