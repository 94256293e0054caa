/* emu_base.h -- what every other part needs.
 *
 * CONTRACT
 *   Included first by emulate.h, only under LLMGEN_EMULATE (g++ -x c++, never nvcc). It
 *   - defines `__shared__` as `thread_local` BEFORE the CUDA headers (which would make it empty:
 *     one copy per CUDA thread). One copy per OS thread is one copy per running block, because an
 *     OS thread runs one block at a time (emu_launch.h);
 *   - includes cuda_runtime.h / cuda_bf16.h / cuda_fp8.h / library_types.h (NVIDIA's declarations
 *     stay: the other parts define the functions) and the C/C++ headers the parts use. cuda_fp8.h's
 *     host code is the emulation's FP8: __nv_fp8_e4m3 / __nv_fp8_e5m2 and __nv_cvt_float_to_fp8
 *     round to nearest even, and with __NV_SATFINITE saturate to the finite maximum (448, 57344;
 *     NaN stays NaN), exactly as the cvt.rn.satfinite.{e4m3,e5m2}x2.f32 that nvcc emits on sm_89+
 *     (tests/test_emu_fp8.py checks every code and midpoint against torch's float8 dtypes);
 *   - chooses the fiber switch: the hand-written x86-64 one (LLMGEN_EMU_ASM_SWITCH 1), or ucontext
 *     elsewhere, with -DLLMGEN_EMU_UCONTEXT, or when -fcf-protection marks the program for CET
 *     shadow stacks;
 *   - defines LLMGEN_EMULATED 1, empty __launch_bounds__ / __maxnreg__ / __cluster_dims__, the
 *     built-in variables threadIdx, blockIdx, blockDim, gridDim (per OS thread; emu_launch.h sets
 *     them to the running fiber's values on every switch), warpSize, the opaque stream and event
 *     types, and llmgen_emu::fatal() / guarded_map().
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_BASE_H
#define LLMGEN_EMU_BASE_H
#ifndef LLMGEN_EMULATE_H
#error "emu_base.h is a part of emulate.h: include emulate.h"
#endif

#if defined(__CUDACC__)
#error "emulate.h: LLMGEN_EMULATE is for g++ -x c++; build with nvcc without -DLLMGEN_EMULATE"
#endif

/* Under g++ the CUDA headers make __shared__ empty (one copy per CUDA thread: wrong). One copy per
 * OS thread is one copy per running block, because an OS thread runs one block at a time. */
#define __shared__ thread_local

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <library_types.h>

#include <math.h>
#include <cmath>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mman.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <map>
#include <new>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The hand-written switch returns on another stack than it was called on, which a CET shadow
 * stack forbids: when the toolchain marks the program shadow-stack compatible (-fcf-protection,
 * the default on Ubuntu) ucontext is used instead; add -fcf-protection=none to get the fast switch. */
#if defined(__x86_64__) && !defined(LLMGEN_EMU_UCONTEXT) && !(defined(__CET__) && (__CET__ & 2))
#define LLMGEN_EMU_ASM_SWITCH 1
#else
#define LLMGEN_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#ifndef LLMGEN_EMU_STACK_KB
#define LLMGEN_EMU_STACK_KB 128 /* reserved stack per CUDA thread (fiber) */
#endif

#define LLMGEN_EMULATED 1

/* Attributes g++ does not know */
#define __launch_bounds__(...)
#undef __maxnreg__
#define __maxnreg__(...)
#undef __cluster_dims__
#define __cluster_dims__(...)

/* ---- built-in variables: per OS thread, set to the running fiber's values on every switch ---- */
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

/* The runtime types NVIDIA leaves opaque */
struct CUstream_st { int unused; };
struct CUevent_st {
    std::chrono::steady_clock::time_point t;
    bool recorded;
    /* LLMGEN_EMU_DEFER_STREAMS (emu_launch.h): the deferred stream its last record waits in, and that record's
     * place in it (0: the record has run) */
    cudaStream_t queue = nullptr;
    uint64_t seq = 0;
};

namespace llmgen_emu {

/* bytes (rounded up to pages) of read-write memory followed by one PROT_NONE guard page; *span gets
 * the size of the whole mapping (for munmap). nullptr when out of memory. */
inline unsigned char* guarded_map(size_t bytes, size_t* span) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    *span = (bytes + page - 1) / page * page + page;
    void* m = mmap(nullptr, *span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    if (mprotect((char*)m + *span - page, page, PROT_NONE) != 0) {
        munmap(m, *span);
        return nullptr;
    }
    return (unsigned char*)m;
}

[[noreturn]] inline void fatal(const char* what) {
    fprintf(stderr, "llmgen emulate: %s\n", what);
    fflush(stderr);
    abort();
}

} /* namespace llmgen_emu */

#endif /* LLMGEN_EMU_BASE_H */
