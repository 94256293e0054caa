/* kdriver.h -- shared by the kernel test programs (driven by ../test_kern_*.py). A program runs as
 * `prog CASE DIR`, CASE = "op:dtype:size[:size]" (dtype f32 or bf16; the sizes pick a compile-time
 * instantiation); inputs are raw files DIR/<name>.bin (T arrays as their bits: float32, or bf16 as
 * uint16), outputs are written beside them. Uses ../../emulate/tests/kernels/testio.h. */
#pragma once
#include "emulate.h"
#include "testio.h"
#include <string>
#include <vector>

using llmk_bf16 = __nv_bfloat16;

/* "a:b:c" -> {"a", "b", "c"} */
static inline std::vector<std::string> split_case(const std::string& s) {
    std::vector<std::string> out;
    size_t p = 0;
    for (;;) {
        const size_t q = s.find(':', p);
        out.push_back(s.substr(p, q == std::string::npos ? std::string::npos : q - p));
        if (q == std::string::npos) break;
        p = q + 1;
    }
    return out;
}

/* an input file as a device array of T (raw bits), or NULL when the file is empty */
template <class T>
static inline T* dev_in(const char* name) {
    std::vector<char> b = read_bytes(name);
    if (b.empty()) return nullptr;
    T* d = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, b.size()));
    CHECK_CUDA(cudaMemcpy(d, b.data(), b.size(), cudaMemcpyHostToDevice));
    return d;
}
/* a device array of n elements (NaN-filled by the emulation: outputs must be written) */
template <class T>
static inline T* dev_out(size_t n) {
    T* d = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, n * sizeof(T) + 16));
    return d;
}
template <class T>
static inline T* dev_zero(size_t n) {
    T* d = dev_out<T>(n);
    CHECK_CUDA(cudaMemset(d, 0, n * sizeof(T) + 16));
    return d;
}
static inline void check_launch(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
        exit(2);
    }
}
