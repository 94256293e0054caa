/* prelude.cuh -- what a generated train.cu puts before its kernel families (templates/cuda/program.cu.j2:
 * the CUDA or emulation headers, the precision section, llmgen_fail, then device.cuh), so that a test
 * program can include one family header alone: `#include "prelude.cuh"` then `#include "<family>.cuh"`.
 * LLMGEN_BF16 (0 or 1, default 1) picks floatX as in the program. */
#ifdef LLMGEN_EMULATE
#include "emulate.h"
#else
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include "launch.h"
#endif
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if LLMGEN_EMULATED
#define LLMGEN_UNROLL
#else
#define LLMGEN_UNROLL _Pragma("unroll")
#endif

#ifndef LLMGEN_BF16
#define LLMGEN_BF16 1
#endif
#if LLMGEN_BF16
typedef __nv_bfloat16 floatX;
static const cudaDataType_t CUDA_FLOATX = CUDA_R_16BF;
__host__ __device__ __forceinline__ float to_float(floatX x) { return __bfloat162float(x); }
__host__ __device__ __forceinline__ float to_float(float x) { return x; }
__host__ __device__ __forceinline__ floatX to_floatX(float x) { return __float2bfloat16_rn(x); }
#else
typedef float floatX;
static const cudaDataType_t CUDA_FLOATX = CUDA_R_32F;
__host__ __device__ __forceinline__ float to_float(float x) { return x; }
__host__ __device__ __forceinline__ floatX to_floatX(float x) { return x; }
#endif

/* the runtime's error exit (templates/common/runtime.h) */
__attribute__((noreturn, format(printf, 1, 2))) static void llmgen_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

#include "device.cuh"

/* test drivers: n elements of a raw file DIR/NAME.bin to (from) a new device array */
template <class T>
static T *load_device(const char *dir, const char *name, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) llmgen_fail("cannot open %s", path);
    T *host = (T *)malloc(sizeof(T) * n);
    if (fread(host, sizeof(T), n, f) != n) llmgen_fail("short read from %s", path);
    fclose(f);
    T *dev = (T *)device_alloc(sizeof(T) * n);
    CUDA_CHECK(cudaMemcpy(dev, host, sizeof(T) * n, cudaMemcpyHostToDevice));
    free(host);
    return dev;
}
template <class T>
static void save_device(const char *dir, const char *name, const T *dev, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    T *host = (T *)malloc(sizeof(T) * n);
    CUDA_CHECK(cudaMemcpy(host, dev, sizeof(T) * n, cudaMemcpyDeviceToHost));
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(host, sizeof(T), n, f) != n) llmgen_fail("cannot write %s", path);
    fclose(f);
    free(host);
}
