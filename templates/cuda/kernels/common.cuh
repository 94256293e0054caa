/* common.cuh -- what the memory-bound kernel families share: storage conversions, 128-bit vectors,
 * warp reductions in a fixed order, counted shared-memory accesses, and host-side checks.
 *
 * CONTRACT
 *   Every header in this folder is C++17 CUDA that compiles two ways, unchanged:
 *     nvcc -std=c++17 -arch=sm_80|sm_90a -I templates/cuda/emulate -I templates/cuda ...
 *     g++  -std=c++17 -x c++ -DLLMGEN_EMULATE -fno-strict-aliasing -fopenmp -I (the same) -I <cuda>/include ...
 *   A program includes emulate.h (or, under nvcc, the CUDA headers and the LLMGEN_LAUNCH /
 *   LLMGEN_DYNAMIC_SMEM defines) before these headers; when it has not, this file includes
 *   emulate.h itself, which under nvcc is just those headers and defines. ptx.cuh comes in for
 *   the counted shared-memory accesses. A program that pastes these headers (llmgen's train.cu)
 *   defines LLMK_PLAIN_SHARED first: shared memory is then accessed by plain loads and stores (what
 *   ptx.cuh's accesses are under nvcc; the emulation then counts no bank conflicts) and ptx.cuh
 *   is not needed; its own #include lines are skipped by the include guards of what it pasted.
 *
 *   Everything lives in namespace llmk. Kernels are templates over the storage type T (float, or
 *   __nv_bfloat16 for bf16 programs: arithmetic is always fp32) and their compile-time sizes. Each
 *   family header pairs kernels with host launchers; a launcher takes outputs first, then inputs,
 *   weights, sizes, stream, checks what it cannot prove at compile time (alignment, sizes), and
 *   returns cudaGetLastError() after the launch (cudaSuccess when there was nothing to do).
 *
 *   A bad argument (a pointer not aligned for the kernel's vector width, a size out of range)
 *   is reported by LLMK_REQUIRE: one line on stderr naming the launcher and the cause, then
 *   exit(1). A program may define LLMK_FAIL(msg) before including these headers to route it
 *   through its own error path (llmgen's llmgen_fail).
 *
 *   Vectors: a row of C elements is read as C / VEC vectors of VEC elements, VEC = vec_width<T>(C)
 *   the widest power of two <= 16 bytes that divides C (bf16: 8, fp32: 4 when C allows). So any C
 *   works; C a multiple of 8 (bf16) or 4 (fp32) gets 128-bit accesses, an odd C 2- or 4-byte ones.
 *   Rows then start VEC-aligned whenever the base pointer is, which the launchers check.
 */
#ifndef LLMK_COMMON_CUH
#define LLMK_COMMON_CUH

#ifndef LLMGEN_LAUNCH
#include "emulate.h"
#endif
#ifndef LLMK_PLAIN_SHARED
#include "ptx.cuh"
#endif
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* loops whose trip count is a compile-time constant; register arrays they index stay in registers */
#if LLMGEN_EMULATED
#define LLMK_UNROLL
#else
#define LLMK_UNROLL _Pragma("unroll")
#endif

#ifndef LLMK_FAIL
#define LLMK_FAIL(msg)                     \
    do {                                   \
        fprintf(stderr, "%s\n", (msg));    \
        exit(1);                           \
    } while (0)
#endif
/* LLMK_REQUIRE(cond, "launcher", "what must hold") */
#define LLMK_REQUIRE(cond, where, why)                                              \
    do {                                                                            \
        if (!(cond)) {                                                              \
            char llmk_msg_[256];                                                    \
            snprintf(llmk_msg_, sizeof llmk_msg_, "llmgen kernels: %s: %s", where, why); \
            LLMK_FAIL(llmk_msg_);                                                   \
        }                                                                           \
    } while (0)

namespace llmk {

typedef __nv_bfloat16 bf16;

/* ---- storage <-> fp32 ---------------------------------------------------------------------- */
__host__ __device__ __forceinline__ float to_f32(float x) { return x; }
__host__ __device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

/* ---- vectors ---------------------------------------------------------------------------------- */
/* widest vector (elements) of at most 16 bytes whose width divides n */
template <class T>
constexpr int vec_width(long long n) {
    int v = (int)(16 / sizeof(T));
    while (v > 1 && n % v != 0) v /= 2;
    return v;
}

template <int BYTES> struct RawBits;
template <> struct RawBits<16> { typedef uint4 type; };
template <> struct RawBits<8> { typedef uint2 type; };
template <> struct RawBits<4> { typedef unsigned int type; };
template <> struct RawBits<2> { typedef unsigned short type; };

/* N elements of T moved as one access of sizeof(T) * N bytes (16: ld.global.v4.u32) */
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
    T v[N];
    typedef typename RawBits<sizeof(T) * N>::type Raw;
    __device__ __forceinline__ static Vec from_raw(Raw r) {
        Vec out;
        memcpy((void*)&out, &r, sizeof r);
        return out;
    }
    __device__ __forceinline__ Raw raw() const {
        Raw r;
        memcpy(&r, (const void*)this, sizeof r);
        return r;
    }
    __device__ __forceinline__ float f(int i) const { return to_f32(v[i]); }
};

/* loads and stores of N elements at p (p aligned to the vector: the launchers check the bases) */
template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
    typedef typename Vec<T, N>::Raw R;
    return Vec<T, N>::from_raw(*reinterpret_cast<const R*>(p));
}
/* streaming load (evict first): data read for the last time */
template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec_cs(const T* p) {
    typedef typename Vec<T, N>::Raw R;
    return Vec<T, N>::from_raw(__ldcs(reinterpret_cast<const R*>(p)));
}
/* load through L2 only (data other blocks wrote during this kernel) */
template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec_cg(const T* p) {
    typedef typename Vec<T, N>::Raw R;
    return Vec<T, N>::from_raw(__ldcg(reinterpret_cast<const R*>(p)));
}
template <int N, class T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
    typedef typename Vec<T, N>::Raw R;
    *reinterpret_cast<R*>(p) = v.raw();
}
template <int N, class T>
__device__ __forceinline__ void store_vec_cs(T* p, const Vec<T, N>& v) {
    typedef typename Vec<T, N>::Raw R;
    __stcs(reinterpret_cast<R*>(p), v.raw());
}

/* fp32 vectors for accumulators and partial sums (4 floats = 16 bytes at most) */
template <int N>
struct FVec {
    float v[N];
};
template <int N>
__device__ __forceinline__ FVec<N> fvec_zero() {
    FVec<N> z;
    LLMK_UNROLL
    for (int i = 0; i < N; i++) z.v[i] = 0.0f;
    return z;
}
template <int N>
__device__ __forceinline__ FVec<N> load_f(const float* p) {
    FVec<N> out;
    const Vec<float, N> r = load_vec<N>(p);
    LLMK_UNROLL
    for (int i = 0; i < N; i++) out.v[i] = r.v[i];
    return out;
}
template <int N>
__device__ __forceinline__ FVec<N> load_f_cg(const float* p) {
    FVec<N> out;
    const Vec<float, N> r = load_vec_cg<N>(p);
    LLMK_UNROLL
    for (int i = 0; i < N; i++) out.v[i] = r.v[i];
    return out;
}
template <int N>
__device__ __forceinline__ void store_f(float* p, const FVec<N>& x) {
    Vec<float, N> r;
    LLMK_UNROLL
    for (int i = 0; i < N; i++) r.v[i] = x.v[i];
    store_vec<N>(p, r);
}

/* ---- shared memory through ptx.cuh's counted accesses (bank conflicts counted under emulation).
 * Warp-collective in the emulation: every live lane of the warp makes the call, lanes with
 * nothing to do pass a harmless address (the launchers give each array a spare slot). */
#ifdef LLMK_PLAIN_SHARED
template <class V>
__device__ __forceinline__ V sld(const V* smem) { return *smem; }
template <class V>
__device__ __forceinline__ void sst(V* smem, const V& v) { *smem = v; }
#else
template <class V>
__device__ __forceinline__ V sld(const V* smem) { return ptx_ld_shared(smem); }
template <class V>
__device__ __forceinline__ void sst(V* smem, const V& v) { ptx_st_shared(smem, v); }
#endif

/* ---- warp reductions: butterflies, so every lane ends with the same bits ---------------------- */
__device__ __forceinline__ float warp_sum(float v) {
    LLMK_UNROLL
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    LLMK_UNROLL
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    LLMK_UNROLL
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block sum of NT threads (a multiple of 32): warp butterflies, then every thread adds the warp
 * results in warp order. `red` holds NT / 32 values and is free again when this returns. */
template <int NT, class F>
__device__ __forceinline__ F block_sum(F v, F* red) {
    static_assert(NT % 32 == 0 && NT <= 1024, "block size");
    v = warp_sum(v);
    if (NT == 32) return v;
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    F s = red[0];
    for (int w = 1; w < NT / 32; w++) s += red[w];
    __syncthreads();
    return s;
}

/* ---- host helpers -------------------------------------------------------------------------- */
static inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
static inline bool aligned_to(const void* p, size_t bytes) { return ((uintptr_t)p % bytes) == 0; }

/* multiprocessors of the current device (the emulation reports one per OpenMP thread) */
static inline int sm_count() {
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n < 1) n = 1;
    return n;
}

/* blocks of `kernel` (NT threads, smem dynamic bytes) that fit on one SM together, at least 1 */
template <class K>
static inline int blocks_per_sm(K kernel, int nt, size_t smem) {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, nt, smem) != cudaSuccess || n < 1) n = 1;
    return n;
}

/* raise a kernel's dynamic shared-memory limit when it needs more than the default 48 KiB */
template <class K>
static inline void allow_smem(K kernel, size_t bytes) {
    if (bytes > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

}  // namespace llmk

#endif /* LLMK_COMMON_CUH */
