/* emulate.h -- run llmgen's generated CUDA program (train.cu) unchanged on the CPU.
 *
 * CONTRACT
 *   One .cu file builds two ways:
 *     GPU:  nvcc -O3 -arch=sm_90 train.cu -lcublasLt -lcublas -o train
 *     CPU:  g++ -std=c++17 -O2 -x c++ -DLLMGEN_EMULATE -fno-strict-aliasing -fcf-protection=none \
 *               -fopenmp -I/usr/local/cuda/include train.cu -o train
 *   The CPU build needs only the CUDA *headers* (cuda_runtime.h, cuda_bf16.h, library_types.h);
 *   libcudart, libcublasLt and a GPU are never used.
 *     -fno-strict-aliasing  required: CUDA code reads float and bf16 arrays through float4 / int4
 *                           pointers (llm.c's Packed128), which g++ may otherwise miscompile.
 *     -fopenmp              spreads blocks over cores (without it everything runs on one core).
 *     -fcf-protection=none  only matters where the toolchain enables CET by default (Ubuntu): with
 *                           shadow-stack marking the slower ucontext switch is used (see below).
 *   Nothing else: -U_FORTIFY_SOURCE is not needed (no longjmp). -O0 ... -O3 -march=native all work.
 *
 *   The .cu starts with this header (the generator inlines it; both branches are in here):
 *       #include "emulate.h"      // real CUDA under nvcc, the CPU emulation with -DLLMGEN_EMULATE
 *       #ifndef LLMGEN_EMULATE
 *       #include <cublasLt.h>     // only when the program calls cuBLASLt; emulated below otherwise
 *       #endif
 *   (or, equivalently, `#ifdef LLMGEN_EMULATE #include "emulate.h" #else <the CUDA includes> and
 *   the two #defines of the nvcc branch below #endif`), and then uses, for every kernel launch and
 *   every dynamic shared-memory array:
 *       LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, args...);
 *       LLMGEN_DYNAMIC_SMEM(type, name);   // in a kernel body: `type* name` -> dynamic shared memory
 *   A templated kernel goes in parentheses: LLMGEN_LAUNCH((k<float, 4>), ...). The kernel may
 *   also be a function-pointer variable. LLMGEN_EMULATED is 1 under emulation and 0 under nvcc,
 *   for `#if` twins of code the emulator cannot run. Kernel launches from device code, and
 *   `extern __shared__` written out by hand, are not supported.
 *
 * CONFIGURATION MACROS (emulation only)
 *   LLMGEN_EMU_STACK_KB=N   stack reserved per CUDA thread, default 128 (KiB)
 *   LLMGEN_EMU_UCONTEXT     use ucontext instead of the hand-written x86-64 switch
 *   LLMGEN_EMU_NO_CUBLASLT  leave the cuBLASLt emulation out
 *   LLMGEN_EMU_NO_POISON    do not fill new device memory and each block's dynamic shared memory
 *                           with 0xFF bytes (NaN as float or bf16, -1 as int; on by default, so
 *                           code that reads memory it never wrote fails here as it may on a GPU)
 *
 * COSTS (measured on the 2-core x86-64 dev VM, one OpenMP thread)
 *   - barrier-free kernel: ~2 ns per CUDA thread (a function call; no fiber switch).
 *   - one __syncthreads: ~50 ns per thread in a 256-thread block (fiber creation, two switches);
 *     later barriers of the same block ~10-15 ns per thread. A 5-step __shfl_xor_sync reduction:
 *     ~50 ns per thread. llm.c-style layernorm 256x768 (block 256, ~20 barriers): ~15 ms.
 *   - cuBLASLt GEMM: ~20 GFLOP/s per core with baseline SSE2 (fp32 or bf16 inputs).
 *   On VMs whose vCPUs are oversubscribed, libgomp's spin-waiting can make 2 threads slower than
 *   one; OMP_WAIT_POLICY=passive fixes that.
 *
 * HOW IT RUNS (emulation)
 *   - Host side: cuda_runtime.h stays (its declarations are kept); the runtime functions are
 *     defined here as inline functions matching NVIDIA's declarations. Device memory is host memory
 *     (256-byte aligned, its own mapping ending at a PROT_NONE guard page, so a kernel running past
 *     the end of an allocation faults); cudaMemcpy/cudaMemset are memmove/memset; every call is
 *     synchronous, so streams and events are trivially ordered (events read a steady clock).
 *     cudaMemcpy/cudaMemset check that the device side lies inside memory from cudaMalloc /
 *     cudaMallocHost (a GPU would fault): they return cudaErrorInvalidValue and say why on stderr.
 *   - A launch runs the whole grid before returning. Blocks are spread over OpenMP threads
 *     (schedule dynamic); one OS thread runs one block at a time, so `__shared__` (defined as
 *     `thread_local`) is one copy per running block. Dynamic shared memory is a per-OS-thread
 *     buffer sized at launch.
 *   - Each CUDA thread runs on a fiber (own stack: LLMGEN_EMU_STACK_KB KiB reserved, default 128,
 *     committed on touch, with a guard page; an overflow is reported as such). Fast path: a fiber
 *     runs thread after thread of the block with no switch at all until one of them reaches a
 *     barrier; only then is the next thread started on a new fiber. So a barrier-free kernel costs
 *     about a function call per CUDA thread.
 *   - __syncthreads(): the thread waits; the next runnable fiber of the block runs (or the next
 *     thread starts); when all live (not exited) threads have arrived, the waiters resume in
 *     thread order. Threads that returned early do not block a barrier (as on sm_70+).
 *   - Warp ops (__syncwarp, __shfl*_sync, __ballot/__any/__all_sync, __reduce_*_sync) wait for the
 *     lanes of `mask` that have not exited; the last lane to arrive computes every lane's result
 *     (shuffles follow PTX shfl's lane formula, so width < 32 works; a source lane that did not
 *     take part gives the caller its own value). Exited lanes count as absent, so a full-mask
 *     ballot after some lanes returned works and shows 0 bits for them.
 *   - A barrier that can never complete (divergent __syncthreads, or lanes of one warp waiting at
 *     different kinds of barrier) aborts with a message naming the block, instead of hanging.
 *   - Fibers switch with a hand-written x86-64 routine (callee-saved registers, rsp, MXCSR and the
 *     x87 control word; the two control registers are reloaded only when they differ); elsewhere,
 *     with -DLLMGEN_EMU_UCONTEXT, or when -fcf-protection marks the program for CET shadow stacks
 *     (Ubuntu's default: add -fcf-protection=none), with ucontext (a syscall per switch).
 *   - __activemask() cannot see convergence: it waits for the warp's live lanes like __syncwarp()
 *     and returns them. Lanes of one mask that meet at *different* warp operations are reported
 *     as divergent warp code (abort with a message), like a deadlock.
 *   - cuBLASLt: the types, enums and functions the generator uses are declared here with NVIDIA's
 *     names and values (cublasLt.h / cublas_api.h; cudaDataType_t comes from library_types.h) and
 *     run a blocked, OpenMP-parallel CPU GEMM accumulating in fp32, with the epilogues DEFAULT,
 *     BIAS, GELU, GELU_BIAS, GELU_AUX, GELU_AUX_BIAS, DGELU, DGELU_BGRAD, BGRADA, BGRADB.
 *
 * KNOWN DIFFERENCES FROM A GPU
 *   - FMA: g++ on baseline x86-64 (no -mfma/-march=native) emits no FMA, so `a*b+c` rounds twice
 *     where nvcc (default -fmad=true) emits one fma.rn: results can differ by an ulp per such
 *     operation. __fmaf_rn / fmaf are fused (exact) on both sides; __fadd_rn/__fmul_rn are never
 *     contracted. Compare float results with tolerances, bf16 results made with the __h*_rn
 *     intrinsics bit-exactly.
 *   - Math: expf/tanhf/... come from glibc (usually correctly rounded or < 1 ulp); CUDA's are
 *     within its documented ulp bounds. Fast intrinsics (__expf, __logf, __fdividef, rsqrtf,
 *     __tanhf) are computed accurately here, not with the GPU's approximations.
 *   - GEMM: fp32 accumulation in k order per output element; cuBLAS uses its own order and tensor
 *     cores. COMPUTE_32F_FAST_TF32 rounds inputs to tf32 (to nearest, ties away from zero); other
 *     FAST modes compute in plain fp32. Epilogue order: D = act(alpha*op(A)op(B) + beta*C + bias),
 *     C is not read when beta == 0; GELU is the tanh approximation; GELU_AUX stores the
 *     pre-activation (bias included); DGELU multiplies the result by gelu'(aux); the bias gradient
 *     of DGELU_BGRAD is the row sum of the final fp32 values (before rounding to D's type);
 *     BGRADA / BGRADB are the sums of op(A) over k / of op(B) over k, without alpha. All bias
 *     gradients overwrite the bias buffer, in BIAS_DATA_TYPE (default: D's type). These follow
 *     cuBLASLt's documentation; they could not be compared with a GPU here.
 *   - Atomics are exact, but when blocks run on several OS threads their order (so float sums)
 *     varies from run to run, as on a GPU. Within a block the schedule is deterministic.
 *   - wmma (tensor-core fragments, 16x16x16) is emulated with every lane holding the whole tile
 *     (the API leaves the layout opaque); products are exact and summed in fp32 in k order.
 *   - Not emulated: inline PTX, cooperative groups / grid sync, cp.async / TMA / mbarrier, raw
 *     mma.sync / wgmma, `extern __shared__` (use LLMGEN_DYNAMIC_SMEM), warp code relying on lockstep
 *     without *_sync, spin-waits on other threads or blocks (deadlock: nothing is pre-empted),
 *     __CUDA_ARCH__ (stays undefined), stream concurrency, kernel-side cudaMalloc, sanitizers
 *     (ASan does not follow the fiber stacks), kernels with default arguments or overloaded kernel
 *     names in LLMGEN_LAUNCH (pass every argument; give kernels distinct names).
 *   - Every kernel's static __shared__ arrays live in the TLS of every OS thread (an OpenMP thread
 *     holds them all at once): keep their total to a few MiB.
 *   - Static shared memory is not counted against the 48 KiB limit; dynamic shared memory is
 *     (48 KiB unless raised with cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize),
 *     227 KiB at most, as on sm_90). Shared and dynamic shared memory keep the previous block's
 *     contents (a GPU leaves them undefined; dynamic shared memory is refilled with 0xFF bytes per
 *     block and ends at a guard page); cudaMalloc memory starts as 0xFF bytes (NaN), never zeroed.
 *   - The fake device reports sm_90 limits, name "llmgen CPU emulation", and one multiprocessor
 *     per OpenMP thread. Launch-configuration errors are reported through cudaGetLastError() as
 *     on the GPU (cudaErrorInvalidConfiguration, cudaErrorInvalidValue for too much dynamic smem).
 *
 * Written against the CUDA 13.0 headers. All emulation internals live in namespace llmgen_emu.
 */
#ifndef LLMGEN_EMULATE_H
#define LLMGEN_EMULATE_H

/* ============================================================================================ */
/* Real CUDA (nvcc): nothing is emulated                                                       */
/* ============================================================================================ */
#ifndef LLMGEN_EMULATE

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <mma.h>

#define LLMGEN_EMULATED 0
#define LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, ...) \
    kernel<<<(grid), (block), (shmem_bytes), (stream)>>>(__VA_ARGS__)
#define LLMGEN_DYNAMIC_SMEM(type, name)                                  \
    extern __shared__ __align__(16) unsigned char llmgen_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(llmgen_dynamic_smem_)

#else /* LLMGEN_EMULATE */

/* ============================================================================================ */
/* CPU emulation                                                                                */
/* ============================================================================================ */
#if defined(__CUDACC__)
#error "emulate.h: LLMGEN_EMULATE is for g++ -x c++; build with nvcc without -DLLMGEN_EMULATE"
#endif

/* Under g++ the CUDA headers make __shared__ empty (one copy per CUDA thread: wrong). One copy per
 * OS thread is one copy per running block, because an OS thread runs one block at a time. */
#define __shared__ thread_local

#include <cuda_runtime.h>
#include <cuda_bf16.h>
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
#include <chrono>
#include <limits>
#include <map>
#include <new>
#include <mutex>
#include <tuple>
#include <type_traits>
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

/* ============================================================================================ */
/* Fibers: context switch                                                                       */
/* ============================================================================================ */
#if LLMGEN_EMU_ASM_SWITCH
/* llmgen_emu_switch(save, load): push the callee-saved registers, MXCSR and the x87 control word
 * on the current stack, store rsp in *save, load rsp from `load`, pop the same from there, ret.
 * llmgen_emu_fiber_start: first "return" of a new fiber; calls r13(r12) and never comes back. */
extern "C" void llmgen_emu_switch(void** save_sp, void* load_sp);
extern "C" void llmgen_emu_fiber_start(void);
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".weak llmgen_emu_switch\n"
    ".type llmgen_emu_switch,@function\n"
    "llmgen_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    subq $16, %rsp\n"
    "    stmxcsr 8(%rsp)\n"
    "    fnstcw 12(%rsp)\n"
    "    movq %rsp, (%rdi)\n"
    "    movl 8(%rsp), %eax\n"   /* eax: MXCSR, ecx: x87 control word of the fiber we leave */
    "    movzwl 12(%rsp), %ecx\n"
    "    movq %rsi, %rsp\n"
    "    cmpl 8(%rsp), %eax\n"   /* reload only what differs: the loads are slow */
    "    je 1f\n"
    "    ldmxcsr 8(%rsp)\n"
    "1:  cmpw 12(%rsp), %cx\n"
    "    je 2f\n"
    "    fldcw 12(%rsp)\n"
    "2:  addq $16, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size llmgen_emu_switch, .-llmgen_emu_switch\n"
    ".p2align 4\n"
    ".weak llmgen_emu_fiber_start\n"
    ".type llmgen_emu_fiber_start,@function\n"
    "llmgen_emu_fiber_start:\n"
    "    movq %r12, %rdi\n"
    "    callq *%r13\n"
    "    ud2\n"
    ".size llmgen_emu_fiber_start, .-llmgen_emu_fiber_start\n");
#endif

struct Worker;

struct Fiber {
#if LLMGEN_EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
    char* stack_lo = nullptr; /* lowest usable byte, just above the guard page */
    size_t stack_bytes = 0;
    size_t stagger = 0; /* the stack starts this far below its top: spreads the hot top frames of
                           many fibers over cache sets (equal page offsets would collide) */
    unsigned tid = 0; /* linear CUDA thread index running on this fiber */
    uint3 idx = {0, 0, 0};
};

struct MainCtx {
#if LLMGEN_EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

/* ---- stacks, and a SIGSEGV handler that names a fiber-stack overflow ---- */
struct GuardRange { uintptr_t lo, hi; };
inline std::mutex g_guard_mutex;
inline GuardRange g_guards[1 << 15];       /* guard pages of all fiber stacks (read in the handler) */
inline volatile int g_nguards = 0;
inline struct sigaction g_prev_segv;

inline void segv_handler(int sig, siginfo_t* info, void* uctx) {
    uintptr_t a = (uintptr_t)info->si_addr;
    int n = g_nguards;
    for (int i = 0; i < n; ++i) {
        if (a >= g_guards[i].lo && a < g_guards[i].hi) {
            static const char msg[] =
                "llmgen emulate: a CUDA thread overflowed its fiber stack (raise LLMGEN_EMU_STACK_KB, "
                "default 128)\n";
            ssize_t r = write(2, msg, sizeof(msg) - 1);
            (void)r;
            signal(SIGABRT, SIG_DFL);
            abort();
        }
    }
    {
        static const char msg[] =
            "llmgen emulate: segmentation fault: an access outside mapped memory (device allocations "
            "and dynamic shared memory end at a guard page, so running past their end lands here)\n";
        ssize_t r = write(2, msg, sizeof(msg) - 1);
        (void)r;
    }
    /* not ours: hand over to whoever was there before */
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) { g_prev_segv.sa_sigaction(sig, info, uctx); return; }
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
        return;
    }
    signal(SIGSEGV, SIG_DFL); /* the fault repeats and kills the process as usual */
}

inline void install_segv_handler_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_prev_segv);
    });
}

inline size_t page_bytes() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

inline Fiber* new_fiber(size_t index) {
    const size_t page = page_bytes();
    const size_t bytes = ((size_t)LLMGEN_EMU_STACK_KB * 1024 + page - 1) / page * page;
    void* base = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) fatal("mmap of a fiber stack failed");
    if (mprotect(base, page, PROT_NONE) != 0) fatal("mprotect of a fiber guard page failed");
    {
        std::lock_guard<std::mutex> lock(g_guard_mutex);
        int n = g_nguards;
        if (n < (int)(sizeof(g_guards) / sizeof(g_guards[0]))) {
            g_guards[n].lo = (uintptr_t)base;
            g_guards[n].hi = (uintptr_t)base + page;
            g_nguards = n + 1;
        }
    }
    Fiber* f = new Fiber();
    f->stack_lo = (char*)base + page;
    f->stack_bytes = bytes;
    f->stagger = ((index * 37) % 256) * 64; /* < 16 KiB */
    return f;
}

/* ============================================================================================ */
/* The per-OS-thread worker: runs the blocks of a launch one at a time                          */
/* ============================================================================================ */
enum WarpOp : uint8_t {
    WOP_SYNC, WOP_SHFL, WOP_VOTE, WOP_ACTIVE, WOP_ADD, WOP_MIN_S, WOP_MAX_S, WOP_MIN_U, WOP_MAX_U,
    WOP_AND, WOP_OR, WOP_XOR, WOP_COUNT
};
inline const char* warp_op_name(uint8_t op) {
    static const char* names[WOP_COUNT] = {"__syncwarp", "__shfl*_sync", "__ballot/__any/__all_sync",
                                           "__activemask", "__reduce_add_sync", "__reduce_min_sync",
                                           "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
                                           "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync"};
    return op < WOP_COUNT ? names[op] : "?";
}

struct Warp {
    uint32_t exited;    /* lanes that returned, or do not exist (partial last warp) */
    uint32_t arrived;   /* lanes waiting at the current warp op */
    uint32_t maskunion; /* union of the arrived lanes' masks */
    uint32_t mask[32];
    uint8_t op[32];
    int8_t src[32];
    uint64_t in[32];
    uint64_t out[32];
    Fiber* waiter[32];
};

struct Worker {
    /* launch constants */
    unsigned n = 0;              /* threads per block */
    unsigned bx = 1, by = 1;
    bool one_d = true;
    unsigned nwarps = 0;
    void (*entry)(Worker*) = nullptr; /* fiber main for this launch's kernel */
    const void* body = nullptr;       /* the kernel call, see launch() */
    /* block state */
    unsigned next = 0;     /* next thread not yet started */
    unsigned live = 0;     /* threads not exited (started or not) */
    unsigned arrived = 0;  /* threads waiting at __syncthreads */
    unsigned nwait = 0;
    unsigned bar_count = 0, res_count = 0, res_n = 0;
    Fiber* current = nullptr;
    unsigned rhead = 0, rtail = 0, rcap = 1;
    unsigned fibers_used = 0;
    MainCtx main;
    std::vector<Fiber*> waiters, ready, pool;
    std::vector<Warp> warps;
    std::vector<uint32_t> warp_absent; /* lanes that do not exist, per warp */
    /* dynamic shared memory */
    unsigned char* dyn_smem = nullptr; /* this launch's dynamic shared memory: it ends at a guard page */
    unsigned char* dyn_map = nullptr;  /* the mapping holding it, dyn_span bytes, the last page PROT_NONE */
    size_t dyn_span = 0;
    size_t dyn_cap = 0;
    size_t dyn_bytes = 0; /* this launch's dynamic shared memory */
    /* an alternate signal stack so the overflow message can be written */
    void* altstack = nullptr;
    /* MXCSR and x87 control word new fibers start with: the OS thread's, read once per block */
    uint32_t fp_mxcsr = 0x1f80;
    uint16_t fp_cw = 0x037f;

    void prepare(dim3 grid, dim3 block, size_t shmem, void (*e)(Worker*), const void* b);
    void run_block(uint3 bidx);
    void begin_thread(Fiber* f, unsigned t) {
        f->tid = t;
        uint3 i;
        if (one_d) {
            i.x = t; i.y = 0; i.z = 0;
        } else {
            i.x = t % bx;
            unsigned r = t / bx;
            i.y = r % by;
            i.z = r / by;
        }
        f->idx = i;
        threadIdx = i;
    }
    void end_thread(Fiber* f) {
        const unsigned t = f->tid;
        --live;
        Warp& w = warps[t >> 5];
        w.exited |= 1u << (t & 31);
        if (arrived != 0 && arrived == live) release_barrier(nullptr);
        if (w.arrived != 0) try_complete(w, nullptr);
    }
    [[noreturn]] void retire(Fiber* self);
    void ready_push(Fiber* f) {
        ready[rtail] = f;
        if (++rtail == rcap) rtail = 0;
    }
    Fiber* ready_pop() {
        if (rhead == rtail) return nullptr;
        Fiber* f = ready[rhead];
        if (++rhead == rcap) rhead = 0;
        return f;
    }
    Fiber* fresh_fiber();
    void switch_to(Fiber* from, Fiber* to);
    void yield(Fiber* self);
    unsigned barrier(int pred);
    void release_barrier(Fiber* keep);
    bool try_complete(Warp& w, Fiber* keep) {
        const uint32_t req = w.maskunion & ~w.exited;
        if ((w.arrived & req) != req) return false;
        complete(w, keep);
        return true;
    }
    void complete(Warp& w, Fiber* keep);
    uint64_t warp_op(uint32_t mask, uint8_t op, uint64_t v, int src);
    [[noreturn]] void deadlock();
};

inline thread_local Worker* tl_worker = nullptr; /* the worker of this OS thread */

inline Worker& worker() {
    Worker* w = tl_worker;
    if (!w) {
        w = new Worker();
        tl_worker = w;
        install_segv_handler_once();
        /* each OS thread that runs fibers gets an alternate signal stack for the handler */
        const size_t alt = 64 * 1024;
        w->altstack = malloc(alt);
        if (w->altstack) {
            stack_t ss;
            memset(&ss, 0, sizeof(ss));
            ss.ss_sp = w->altstack;
            ss.ss_size = alt;
            sigaltstack(&ss, nullptr);
        }
    }
    return *w;
}

/* The worker running the calling CUDA thread (checked: device functions need a launch) */
inline Worker& cur() {
    Worker* w = tl_worker;
    if (!w || !w->current) fatal("a device-side intrinsic was called outside a kernel launch");
    return *w;
}

#if LLMGEN_EMU_ASM_SWITCH
inline void fiber_prepare(Fiber* f, Worker* w) {
    /* frame popped by llmgen_emu_switch: [pad][mxcsr][fpucw] r15 r14 r13 r12 rbx rbp ret */
    uintptr_t top = ((uintptr_t)(f->stack_lo + f->stack_bytes - f->stagger)) & ~(uintptr_t)15;
    uintptr_t x = top - 16; /* rsp at the call in llmgen_emu_fiber_start: 16-byte aligned */
    uint64_t* sp = (uint64_t*)(x - 72);
    sp[0] = 0;
    sp[1] = 0;
    memcpy((char*)sp + 8, &w->fp_mxcsr, 4);
    memcpy((char*)sp + 12, &w->fp_cw, 2);
    sp[2] = 0;                                    /* r15 */
    sp[3] = 0;                                    /* r14 */
    sp[4] = (uint64_t)(uintptr_t)w->entry;        /* r13: function to call */
    sp[5] = (uint64_t)(uintptr_t)w;               /* r12: its argument */
    sp[6] = 0;                                    /* rbx */
    sp[7] = 0;                                    /* rbp */
    sp[8] = (uint64_t)(uintptr_t)&llmgen_emu_fiber_start; /* return address */
    f->sp = sp;
}
inline void ctx_switch(Fiber* from, Fiber* to) { llmgen_emu_switch(&from->sp, to->sp); }
inline void ctx_enter(MainCtx* m, Fiber* to) { llmgen_emu_switch(&m->sp, to->sp); }
inline void ctx_leave(Fiber* from, MainCtx* m) { llmgen_emu_switch(&from->sp, m->sp); }
#else
inline void uc_entry() {
    Worker* w = tl_worker;
    w->entry(w);
}
inline void fiber_prepare(Fiber* f, Worker*) {
    if (getcontext(&f->uc) != 0) fatal("getcontext failed");
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = f->stack_bytes;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())uc_entry, 0);
}
inline void ctx_switch(Fiber* from, Fiber* to) { swapcontext(&from->uc, &to->uc); }
inline void ctx_enter(MainCtx* m, Fiber* to) { swapcontext(&m->uc, &to->uc); }
inline void ctx_leave(Fiber* from, MainCtx* m) { swapcontext(&from->uc, &m->uc); }
#endif

inline Fiber* Worker::fresh_fiber() {
    if (fibers_used == pool.size()) pool.push_back(new_fiber(pool.size()));
    Fiber* f = pool[fibers_used++];
    fiber_prepare(f, this);
    return f;
}

inline void Worker::switch_to(Fiber* from, Fiber* to) {
    current = to;
    threadIdx = to->idx;
    ctx_switch(from, to);
}

/* The calling fiber waits: run something else of this block. */
inline void Worker::yield(Fiber* self) {
    Fiber* nx = ready_pop();
    if (!nx) {
        if (next < n) nx = fresh_fiber();
        else deadlock();
    }
    switch_to(self, nx);
}

/* A fiber whose loop found no thread left to start: hand over, never to run again this block. */
inline void Worker::retire(Fiber* self) {
    Fiber* nx = ready_pop();
    if (nx) {
        switch_to(self, nx);
    } else if (live == 0) {
        current = nullptr;
        ctx_leave(self, &main);
    } else {
        deadlock();
    }
    fatal("a retired fiber was resumed");
}

inline void Worker::release_barrier(Fiber* keep) {
    res_count = bar_count;
    res_n = arrived;
    bar_count = 0;
    arrived = 0;
    for (unsigned i = 0; i < nwait; ++i)
        if (waiters[i] != keep) ready_push(waiters[i]);
    nwait = 0;
}

inline unsigned Worker::barrier(int pred) {
    Fiber* self = current;
    bar_count += (pred != 0);
    waiters[nwait++] = self;
    if (++arrived == live) release_barrier(self); /* the last one to arrive goes on */
    else yield(self);
    return res_count;
}

inline void Worker::complete(Warp& w, Fiber* keep) {
    const uint32_t arr = w.arrived;
    uint32_t pred = 0;
    uint32_t by_op[WOP_COUNT] = {0};
    for (uint32_t m = arr; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        if (w.in[l] != 0) pred |= 1u << l;
        by_op[w.op[l]] |= 1u << l;
    }
    for (uint32_t m = arr; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        const uint32_t group = arr & w.mask[l];
        if (group & ~by_op[w.op[l]]) { /* lanes of one mask meet at different warp operations */
            const int other = __builtin_ctz(group & ~by_op[w.op[l]]);
            char buf[400];
            snprintf(buf, sizeof(buf),
                     "divergent warp code in block (%u,%u,%u), warp %u: lane %d is in %s while lane %d of "
                     "its mask is in %s",
                     blockIdx.x, blockIdx.y, blockIdx.z, (unsigned)(&w - warps.data()), l, warp_op_name(w.op[l]),
                     other, warp_op_name(w.op[other]));
            fatal(buf);
        }
        switch (w.op[l]) {
        case WOP_SYNC: break;
        case WOP_ACTIVE: w.out[l] = group; break;
        case WOP_SHFL: {
            const int s = w.src[l];
            w.out[l] = (s >= 0 && ((arr >> s) & 1u)) ? w.in[s] : w.in[l];
            break;
        }
        case WOP_VOTE: w.out[l] = (uint64_t)(pred & group) | ((uint64_t)group << 32); break;
        default: {
            uint32_t acc = 0;
            bool first = true;
            for (uint32_t g = group; g; g &= g - 1) {
                const uint32_t v = (uint32_t)w.in[__builtin_ctz(g)];
                if (first) { acc = v; first = false; continue; }
                switch (w.op[l]) {
                case WOP_ADD: acc += v; break;
                case WOP_MIN_S: acc = (int32_t)v < (int32_t)acc ? v : acc; break;
                case WOP_MAX_S: acc = (int32_t)v > (int32_t)acc ? v : acc; break;
                case WOP_MIN_U: acc = v < acc ? v : acc; break;
                case WOP_MAX_U: acc = v > acc ? v : acc; break;
                case WOP_AND: acc &= v; break;
                case WOP_OR: acc |= v; break;
                default: acc ^= v; break;
                }
            }
            w.out[l] = acc;
        }
        }
    }
    w.arrived = 0;
    w.maskunion = 0;
    for (uint32_t m = arr; m; m &= m - 1) {
        Fiber* f = w.waiter[__builtin_ctz(m)];
        if (f != keep) ready_push(f);
    }
}

inline uint64_t Worker::warp_op(uint32_t mask, uint8_t op, uint64_t v, int src) {
    Fiber* self = current;
    const unsigned t = self->tid, lane = t & 31;
    Warp& w = warps[t >> 5];
    const uint32_t bit = 1u << lane;
    w.op[lane] = op;
    w.in[lane] = v;
    w.src[lane] = (int8_t)src;
    w.mask[lane] = mask;
    w.waiter[lane] = self;
    w.arrived |= bit;
    w.maskunion |= mask | bit;
    if (!try_complete(w, self)) yield(self);
    return w.out[lane];
}

inline void Worker::deadlock() {
    char buf[512];
    unsigned at_warp = 0;
    for (unsigned i = 0; i < nwarps; ++i) at_warp += (unsigned)__builtin_popcount(warps[i].arrived);
    snprintf(buf, sizeof(buf),
             "deadlock in block (%u,%u,%u) of a (%u,%u,%u)-thread block: %u live threads, %u wait at "
             "__syncthreads, %u at warp barriers/shuffles (divergent barrier, or lanes of one warp "
             "waiting at different barriers)",
             blockIdx.x, blockIdx.y, blockIdx.z, blockDim.x, blockDim.y, blockDim.z, live, arrived,
             at_warp);
    fatal(buf);
}

template <class Body>
void fiber_entry(Worker* w) {
    Fiber* self = w->current;
    const Body& body = *static_cast<const Body*>(w->body);
    for (;;) {
        const unsigned t = w->next;
        if (t >= w->n) break;
        w->next = t + 1;
        w->begin_thread(self, t);
        body();
        w->end_thread(self);
    }
    w->retire(self);
}

inline void Worker::prepare(dim3 grid, dim3 block, size_t shmem, void (*e)(Worker*), const void* b) {
    n = block.x * block.y * block.z;
    bx = block.x;
    by = block.y;
    one_d = (block.y == 1 && block.z == 1);
    nwarps = (n + 31) / 32;
    entry = e;
    body = b;
    if (waiters.size() < n) waiters.resize(n);
    rcap = n + 1;
    if (ready.size() < rcap) ready.resize(rcap);
    if (warps.size() < nwarps) warps.resize(nwarps);
    warp_absent.assign(nwarps, 0u);
    if (n % 32) warp_absent[nwarps - 1] = ~0u << (n % 32);
    if (dyn_cap < shmem || !dyn_map) {
        if (dyn_map) munmap(dyn_map, dyn_span);
        dyn_cap = std::max<size_t>((shmem + 127) / 128 * 128, 256);
        dyn_map = guarded_map(dyn_cap, &dyn_span);
        if (!dyn_map) fatal("out of memory for dynamic shared memory");
    }
    /* placed so that it ends at the guard page (128-byte aligned): reading or writing past the
     * launch's dynamic shared memory faults, as on a GPU */
    dyn_bytes = shmem;
    dyn_smem = dyn_map + dyn_span - (size_t)sysconf(_SC_PAGESIZE) - std::max<size_t>((shmem + 127) / 128 * 128, 128);
    blockDim = block;
    gridDim = grid;
}

inline void Worker::run_block(uint3 bidx) {
    blockIdx = bidx;
#ifndef LLMGEN_EMU_NO_POISON
    memset(dyn_smem, 0xFF, dyn_bytes); /* undefined on a GPU: NaN here, so a read before a write shows */
#endif
    next = 0;
    live = n;
    arrived = 0;
    nwait = 0;
    bar_count = 0;
    rhead = rtail = 0;
    fibers_used = 0;
#if LLMGEN_EMU_ASM_SWITCH
    __asm__ volatile("stmxcsr %0" : "=m"(fp_mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fp_cw));
#endif
    for (unsigned i = 0; i < nwarps; ++i) {
        warps[i].exited = warp_absent[i];
        warps[i].arrived = 0;
        warps[i].maskunion = 0;
    }
    Fiber* f = fresh_fiber();
    current = f;
    ctx_enter(&main, f);
}

/* ============================================================================================ */
/* Launch                                                                                       */
/* ============================================================================================ */
inline thread_local cudaError_t tl_last_error = cudaSuccess;
inline void set_error(cudaError_t e) {
    if (e != cudaSuccess) tl_last_error = e;
}

inline std::mutex g_func_mutex;
inline std::map<const void*, int> g_func_max_dyn_smem; /* cudaFuncAttributeMaxDynamicSharedMemorySize */
constexpr size_t kSmemDefault = 48 * 1024;
constexpr size_t kSmemOptin = 227 * 1024; /* sm_90 */

inline cudaError_t check_launch(const void* func, dim3 grid, dim3 block, size_t shmem) {
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0)
        return cudaErrorInvalidConfiguration;
    if (block.x > 1024 || block.y > 1024 || block.z > 64 ||
        (uint64_t)block.x * block.y * block.z > 1024)
        return cudaErrorInvalidConfiguration;
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidConfiguration;
    if (shmem > kSmemDefault) {
        size_t limit = kSmemDefault;
        std::lock_guard<std::mutex> lock(g_func_mutex);
        auto it = g_func_max_dyn_smem.find(func);
        if (it != g_func_max_dyn_smem.end()) limit = (size_t)it->second;
        if (shmem > limit) return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

inline uint3 block_index(dim3 grid, uint64_t b) {
    uint3 i;
    i.x = (unsigned)(b % grid.x);
    b /= grid.x;
    i.y = (unsigned)(b % grid.y);
    i.z = (unsigned)(b / grid.y);
    return i;
}

inline int omp_workers() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

inline void run_grid(dim3 grid, dim3 block, size_t shmem, void (*entry)(Worker*), const void* body) {
    if (tl_worker && tl_worker->current) fatal("a kernel launch from device code (dynamic parallelism) is not emulated");
    const uint64_t nb = (uint64_t)grid.x * grid.y * grid.z;
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nt = omp_get_max_threads();
    if ((uint64_t)nt > nb) nt = (int)nb;
#endif
    if (nt <= 1) {
        Worker& w = worker();
        w.prepare(grid, block, shmem, entry, body);
        for (uint64_t b = 0; b < nb; ++b) w.run_block(block_index(grid, b));
        return;
    }
#ifdef _OPENMP
    const int64_t chunk = std::max<int64_t>(1, (int64_t)(nb / ((uint64_t)nt * 16)));
#pragma omp parallel num_threads(nt)
    {
        Worker& w = worker();
        w.prepare(grid, block, shmem, entry, body);
#pragma omp for schedule(dynamic, chunk)
        for (int64_t b = 0; b < (int64_t)nb; ++b) w.run_block(block_index(grid, (uint64_t)b));
    }
#endif
}

/* LLMGEN_LAUNCH lands here. `call` is a lambda that calls the kernel by name (so it inlines);
 * the arguments are converted to the kernel's parameter types once, as a real launch does, and
 * every CUDA thread gets its own copy of them. */
template <class... P, class F, class... A>
inline void launch(void (*kernel)(P...), F call, dim3 grid, dim3 block, size_t shmem,
                   cudaStream_t stream, A&&... a) {
    static_assert(sizeof...(P) == sizeof...(A), "LLMGEN_LAUNCH: wrong number of kernel arguments");
    (void)stream;
    const cudaError_t e = check_launch(reinterpret_cast<const void*>(kernel), grid, block, shmem);
    if (e != cudaSuccess) {
        set_error(e);
        return;
    }
    std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
    auto body = [&call, &args]() { std::apply(call, args); };
    run_grid(grid, block, shmem, &fiber_entry<decltype(body)>, &body);
}

inline void* dynamic_smem() { return tl_worker->dyn_smem; }

} /* namespace llmgen_emu */

#define LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, ...)                             \
    ::llmgen_emu::launch(kernel, [&](auto&... llmgen_arg_) { kernel(llmgen_arg_...); },          \
                         dim3(grid), dim3(block), (size_t)(shmem_bytes), (cudaStream_t)(stream), \
                         ##__VA_ARGS__)
#define LLMGEN_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::llmgen_emu::dynamic_smem())

/* ============================================================================================ */
/* Device intrinsics: synchronisation and warp operations                                       */
/* ============================================================================================ */
#define LLMGEN_EMU_COMPILER_FENCE() __asm__ __volatile__("" ::: "memory")

inline void __syncthreads() {
    LLMGEN_EMU_COMPILER_FENCE();
    llmgen_emu::cur().barrier(0);
    LLMGEN_EMU_COMPILER_FENCE();
}
inline int __syncthreads_count(int pred) {
    LLMGEN_EMU_COMPILER_FENCE();
    llmgen_emu::Worker& w = llmgen_emu::cur();
    w.barrier(pred);
    const int r = (int)w.res_count;
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}
inline int __syncthreads_and(int pred) {
    LLMGEN_EMU_COMPILER_FENCE();
    llmgen_emu::Worker& w = llmgen_emu::cur();
    w.barrier(pred);
    const int r = w.res_count == w.res_n;
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}
inline int __syncthreads_or(int pred) {
    LLMGEN_EMU_COMPILER_FENCE();
    llmgen_emu::Worker& w = llmgen_emu::cur();
    w.barrier(pred);
    const int r = w.res_count != 0;
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    LLMGEN_EMU_COMPILER_FENCE();
    llmgen_emu::cur().warp_op(mask, llmgen_emu::WOP_SYNC, 0, -1);
    LLMGEN_EMU_COMPILER_FENCE();
}

/* Lanes of the warp that have not exited. The emulator cannot see which lanes are converged, so
 * this waits for the warp's other live lanes like __syncwarp(); it is exact for converged code
 * and early exits. Calling it in a branch that only part of a warp takes, while the rest goes on
 * to another warp operation, is reported as divergent warp code. */
inline unsigned __activemask() {
    LLMGEN_EMU_COMPILER_FENCE();
    const unsigned r = (unsigned)llmgen_emu::cur().warp_op(0xffffffffu, llmgen_emu::WOP_ACTIVE, 0, -1);
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}

namespace llmgen_emu {
enum ShflMode { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_BFLY };
/* PTX shfl.sync: c = ((32 - width) << 8) | clamp, clamp = 0 for .up and 0x1f otherwise */
inline int shfl_source(ShflMode mode, int b, int width) {
    const int lane = (int)(cur().current->tid & 31);
    const int segmask = (32 - width) & 0x1f;
    const int cval = mode == SHFL_UP ? 0 : 0x1f;
    const int max_lane = (lane & segmask) | (cval & ~segmask);
    const int min_lane = lane & segmask;
    int j;
    bool ok;
    switch (mode) {
    case SHFL_UP: j = lane - b; ok = j >= max_lane; break;
    case SHFL_DOWN: j = lane + b; ok = j <= max_lane; break;
    case SHFL_BFLY: j = lane ^ b; ok = j <= max_lane; break;
    default: j = min_lane | (b & 0x1f & ~segmask); ok = j <= max_lane; break;
    }
    return ok ? j : lane;
}
template <class T>
inline T shfl(unsigned mask, T var, ShflMode mode, int b, int width) {
    static_assert(sizeof(T) <= 8, "__shfl*_sync: at most 8-byte types");
    uint64_t v = 0;
    memcpy(&v, (const void*)&var, sizeof(T));
    const int src = shfl_source(mode, b, width);
    LLMGEN_EMU_COMPILER_FENCE();
    const uint64_t r = cur().warp_op(mask, WOP_SHFL, v, src);
    LLMGEN_EMU_COMPILER_FENCE();
    T out;
    memcpy((void*)&out, &r, sizeof(T));
    return out;
}
inline uint64_t vote(unsigned mask, int pred) {
    LLMGEN_EMU_COMPILER_FENCE();
    const uint64_t r = cur().warp_op(mask, WOP_VOTE, pred != 0, -1);
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}
inline uint32_t reduce(unsigned mask, uint8_t op, uint32_t v) {
    LLMGEN_EMU_COMPILER_FENCE();
    const uint32_t r = (uint32_t)cur().warp_op(mask, op, v, -1);
    LLMGEN_EMU_COMPILER_FENCE();
    return r;
}
} /* namespace llmgen_emu */

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    return llmgen_emu::shfl(mask, var, llmgen_emu::SHFL_IDX, srcLane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return llmgen_emu::shfl(mask, var, llmgen_emu::SHFL_UP, (int)delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return llmgen_emu::shfl(mask, var, llmgen_emu::SHFL_DOWN, (int)delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    return llmgen_emu::shfl(mask, var, llmgen_emu::SHFL_BFLY, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return (unsigned)llmgen_emu::vote(mask, pred); }
inline int __any_sync(unsigned mask, int pred) { return (uint32_t)llmgen_emu::vote(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
    const uint64_t r = llmgen_emu::vote(mask, pred);
    return (uint32_t)r == (uint32_t)(r >> 32);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_ADD, v); }
inline int __reduce_add_sync(unsigned mask, int v) { return (int)llmgen_emu::reduce(mask, llmgen_emu::WOP_ADD, (uint32_t)v); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_MIN_U, v); }
inline int __reduce_min_sync(unsigned mask, int v) { return (int)llmgen_emu::reduce(mask, llmgen_emu::WOP_MIN_S, (uint32_t)v); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_MAX_U, v); }
inline int __reduce_max_sync(unsigned mask, int v) { return (int)llmgen_emu::reduce(mask, llmgen_emu::WOP_MAX_S, (uint32_t)v); }
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_AND, v); }
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_OR, v); }
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return llmgen_emu::reduce(mask, llmgen_emu::WOP_XOR, v); }

/* ---- memory fences and loads/stores with cache hints (hints are meaningless here) ---- */
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline void __trap() { llmgen_emu::fatal("__trap() called in a kernel"); }
inline void __nanosleep(unsigned) {}
inline long long clock64() {
    return (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}

/* ============================================================================================ */
/* Atomics (correct across OS threads: __atomic builtins)                                       */
/* ============================================================================================ */
#define LLMGEN_EMU_ATOMIC_INT(T)                                                                          \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }                  \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }                  \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }                \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }                  \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }                    \
    inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }                  \
    inline T atomicCAS(T* p, T compare, T v) {                                                             \
        __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
        return compare;                                                                                    \
    }                                                                                                      \
    inline T atomicMax(T* p, T v) {                                                                        \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                      \
        while (old < v &&                                                                                  \
               !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {       \
        }                                                                                                  \
        return old;                                                                                        \
    }                                                                                                      \
    inline T atomicMin(T* p, T v) {                                                                        \
        T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                      \
        while (old > v &&                                                                                  \
               !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {       \
        }                                                                                                  \
        return old;                                                                                        \
    }
LLMGEN_EMU_ATOMIC_INT(int)
LLMGEN_EMU_ATOMIC_INT(unsigned int)
LLMGEN_EMU_ATOMIC_INT(unsigned long long int)
LLMGEN_EMU_ATOMIC_INT(long long int)
#undef LLMGEN_EMU_ATOMIC_INT

inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v) {
    __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline unsigned atomicInc(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, old >= limit ? 0u : old + 1u, true, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, (old == 0u || old > limit) ? limit : old - 1u, true,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}

namespace llmgen_emu {
/* read-modify-write of a value held in an integer word, by compare-and-swap */
template <class W, class F>
inline W atomic_rmw(W* p, F f) {
    W old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (!__atomic_compare_exchange_n(p, &old, f(old), true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline double u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }
inline uint64_t d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
/* a 16-bit value inside its aligned 32-bit word (little endian) */
template <class H, class F>
inline H atomic_rmw16(H* p, F f) {
    const uintptr_t a = (uintptr_t)p;
    uint32_t* word = (uint32_t*)(a & ~(uintptr_t)3);
    const int shift = (a & 2) ? 16 : 0;
    const uint32_t old = atomic_rmw(word, [&](uint32_t w) {
        uint16_t h = (uint16_t)(w >> shift);
        H x;
        memcpy((void*)&x, &h, 2);
        const H y = f(x);
        memcpy(&h, (const void*)&y, 2);
        return (w & ~(0xffffu << shift)) | ((uint32_t)h << shift);
    });
    const uint16_t h = (uint16_t)(old >> shift);
    H x;
    memcpy((void*)&x, &h, 2);
    return x;
}
template <class H2, class F>
inline H2 atomic_rmw32(H2* p, F f) {
    const uint32_t old = atomic_rmw((uint32_t*)p, [&](uint32_t w) {
        H2 x;
        memcpy((void*)&x, &w, 4);
        const H2 y = f(x);
        uint32_t r;
        memcpy(&r, (const void*)&y, 4);
        return r;
    });
    H2 x;
    memcpy((void*)&x, &old, 4);
    return x;
}
} /* namespace llmgen_emu */

inline float atomicAdd(float* p, float v) {
    return llmgen_emu::u2f(llmgen_emu::atomic_rmw((uint32_t*)p, [v](uint32_t o) {
        return llmgen_emu::f2u(llmgen_emu::u2f(o) + v);
    }));
}
inline double atomicAdd(double* p, double v) {
    return llmgen_emu::u2d(llmgen_emu::atomic_rmw((uint64_t*)p, [v](uint64_t o) {
        return llmgen_emu::d2u(llmgen_emu::u2d(o) + v);
    }));
}
inline float atomicExch(float* p, float v) {
    return llmgen_emu::u2f(__atomic_exchange_n((uint32_t*)p, llmgen_emu::f2u(v), __ATOMIC_SEQ_CST));
}
/* 16-bit float atomics: the element-wise add is done in fp32 and rounded to nearest, as sm_90 does */
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) {
    return llmgen_emu::atomic_rmw16(p, [v](__nv_bfloat16 o) {
        return __float2bfloat16_rn(__bfloat162float(o) + __bfloat162float(v));
    });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* p, __nv_bfloat162 v) {
    return llmgen_emu::atomic_rmw32(p, [v](__nv_bfloat162 o) {
        return __floats2bfloat162_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
    });
}
inline __half atomicAdd(__half* p, __half v) {
    return llmgen_emu::atomic_rmw16(p, [v](__half o) { return __float2half_rn(__half2float(o) + __half2float(v)); });
}
inline __half2 atomicAdd(__half2* p, __half2 v) {
    return llmgen_emu::atomic_rmw32(p, [v](__half2 o) {
        return __floats2half2_rn(__low2float(o) + __low2float(v), __high2float(o) + __high2float(v));
    });
}

/* ============================================================================================ */
/* Math and bit intrinsics                                                                      */
/* ============================================================================================ */
namespace llmgen_emu {
/* Stops the compiler from contracting or reassociating: the value must be materialised. */
inline float opaque(float x) {
#if defined(__x86_64__)
    __asm__("" : "+x"(x));
#else
    volatile float v = x;
    x = v;
#endif
    return x;
}
inline double opaque(double x) {
#if defined(__x86_64__)
    __asm__("" : "+x"(x));
#else
    volatile double v = x;
    x = v;
#endif
    return x;
}
template <class I>
inline I cvt_sat(double r) { /* PTX cvt to integer: saturate, NaN -> 0 */
    if (r != r) return 0;
    if (r <= (double)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
    if (r >= (double)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
    return (I)r;
}
} /* namespace llmgen_emu */

/* Names glibc's <math.h> also declares (extern "C", noexcept) must be defined the same way. */
extern "C" {
inline float __expf(float x) noexcept { return expf(x); }
inline float __exp10f(float x) noexcept { return exp10f(x); }
inline float __logf(float x) noexcept { return logf(x); }
inline float __log2f(float x) noexcept { return log2f(x); }
inline float __log10f(float x) noexcept { return log10f(x); }
inline float __sinf(float x) noexcept { return sinf(x); }
inline float __cosf(float x) noexcept { return cosf(x); }
inline float __tanf(float x) noexcept { return tanf(x); }
inline float __powf(float x, float y) noexcept { return powf(x, y); }
inline float __tanhf(float x) noexcept { return tanhf(x); }
inline void __sincosf(float x, float* s, float* c) noexcept { *s = sinf(x); *c = cosf(x); }
}

/* CUDA-only math names. extern "C" + noexcept: newer C libraries (C23) declare some of them. */
extern "C" {
inline float rsqrtf(float x) noexcept { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) noexcept { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) noexcept { return 1.0f / cbrtf(x); }
inline float normcdff(float x) noexcept { return 0.5f * erfcf(-x * 0.70710678118654752f); }
inline double normcdf(double x) noexcept { return 0.5 * erfc(-x * 0.70710678118654752440); }
inline float sinpif(float x) noexcept { return (float)sin(3.14159265358979323846 * (double)x); }
inline float cospif(float x) noexcept { return (float)cos(3.14159265358979323846 * (double)x); }
inline float fdividef(float a, float b) noexcept { return a / b; }
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); /* NaN -> 0 */ }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __frsqrt_rn(float x) { return (float)(1.0 / sqrt((double)x)); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return llmgen_emu::opaque(a + b); }
inline float __fsub_rn(float a, float b) { return llmgen_emu::opaque(a - b); }
inline float __fmul_rn(float a, float b) { return llmgen_emu::opaque(a * b); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return llmgen_emu::opaque(a + b); }
inline double __dmul_rn(double a, double b) { return llmgen_emu::opaque(a * b); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline int __double2hiint(double x) { return (int)(__double_as_longlong(x) >> 32); }
inline int __double2loint(double x) { return (int)(unsigned)__double_as_longlong(x); }
inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}

inline int __float2int_rn(float x) { return llmgen_emu::cvt_sat<int>(nearbyint((double)x)); }
inline int __float2int_rz(float x) { return llmgen_emu::cvt_sat<int>(trunc((double)x)); }
inline int __float2int_rd(float x) { return llmgen_emu::cvt_sat<int>(floor((double)x)); }
inline int __float2int_ru(float x) { return llmgen_emu::cvt_sat<int>(ceil((double)x)); }
inline unsigned __float2uint_rn(float x) { return llmgen_emu::cvt_sat<unsigned>(nearbyint((double)x)); }
inline unsigned __float2uint_rz(float x) { return llmgen_emu::cvt_sat<unsigned>(trunc((double)x)); }
inline long long __float2ll_rn(float x) { return llmgen_emu::cvt_sat<long long>(nearbyint((double)x)); }
inline long long __float2ll_rz(float x) { return llmgen_emu::cvt_sat<long long>(trunc((double)x)); }
inline int __double2int_rn(double x) { return llmgen_emu::cvt_sat<int>(nearbyint(x)); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }
inline float __ll2float_rn(long long x) { return (float)x; }
inline float __double2float_rn(double x) { return (float)x; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32 | lo) << (s & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)(((unsigned long long)hi << 32 | lo) >> (s & 31));
}

/* min/max: the overload set of CUDA's math_functions.h (mixed signedness compares unsigned) */
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline unsigned long min(long a, unsigned long b) { return min((unsigned long)a, b); }
inline unsigned long min(unsigned long a, long b) { return min(a, (unsigned long)b); }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long min(long long a, unsigned long long b) { return min((unsigned long long)a, b); }
inline unsigned long long min(unsigned long long a, long long b) { return min(a, (unsigned long long)b); }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double min(float a, double b) { return fmin((double)a, b); }
inline double min(double a, float b) { return fmin(a, (double)b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline unsigned long max(long a, unsigned long b) { return max((unsigned long)a, b); }
inline unsigned long max(unsigned long a, long b) { return max(a, (unsigned long)b); }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline unsigned long long max(long long a, unsigned long long b) { return max((unsigned long long)a, b); }
inline unsigned long long max(unsigned long long a, long long b) { return max(a, (unsigned long long)b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double max(float a, double b) { return fmax((double)a, b); }
inline double max(double a, float b) { return fmax(a, (double)b); }

/* ============================================================================================ */
/* bf16 / fp16 helpers cuda_bf16.h and cuda_fp16.h keep device-only                             */
/* ============================================================================================ */
namespace llmgen_emu {
/* double -> float with round-to-odd: a following float -> bf16/fp16 round-to-nearest then gives
 * the correctly rounded result of the exact value (no double rounding). */
inline float round_to_odd_float(double d) {
    float f = (float)d;
    if ((double)f != d && d == d) {
        uint32_t u = f2u(f);
        if (fabs((double)f) > fabs(d)) u -= 1; /* rounded away from zero: step back */
        u |= 1;
        f = u2f(u);
    }
    return f;
}
inline float tofloat(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float tofloat(__half x) { return __half2float(x); }
template <class H> H fromfloat(float x);
template <> inline __nv_bfloat16 fromfloat<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> inline __half fromfloat<__half>(float x) { return __float2half_rn(x); }
/* a*b+c rounded once, as fma.rn.bf16 / fma.rn.f16 do (the product of two 16-bit floats is exact
 * in double and so, almost always, is the sum) */
template <class H>
inline H fma16(H a, H b, H c) {
    const double r = (double)tofloat(a) * (double)tofloat(b) + (double)tofloat(c);
    return fromfloat<H>(round_to_odd_float(r));
}
template <class I>
inline I to_int_rn(float f) { return cvt_sat<I>(nearbyint((double)f)); }
} /* namespace llmgen_emu */

#define LLMGEN_EMU_H16_MATH(H, H2, low2f, high2f, make2)                                                   \
    inline H __hfma(H a, H b, H c) { return llmgen_emu::fma16(a, b, c); }                                 \
    inline H __hfma_relu(H a, H b, H c) {                                                                  \
        H r = llmgen_emu::fma16(a, b, c);                                                                  \
        return llmgen_emu::tofloat(r) < 0.0f ? llmgen_emu::fromfloat<H>(0.0f) : r;                         \
    }                                                                                                      \
    inline H2 __hfma2(H2 a, H2 b, H2 c) {                                                                  \
        return make2(llmgen_emu::fma16(a.x, b.x, c.x), llmgen_emu::fma16(a.y, b.y, c.y));                 \
    }                                                                                                      \
    inline H hexp(H a) { return llmgen_emu::fromfloat<H>(expf(llmgen_emu::tofloat(a))); }                \
    inline H hexp2(H a) { return llmgen_emu::fromfloat<H>(exp2f(llmgen_emu::tofloat(a))); }              \
    inline H hexp10(H a) { return llmgen_emu::fromfloat<H>(exp10f(llmgen_emu::tofloat(a))); }            \
    inline H hlog(H a) { return llmgen_emu::fromfloat<H>(logf(llmgen_emu::tofloat(a))); }                \
    inline H hlog2(H a) { return llmgen_emu::fromfloat<H>(log2f(llmgen_emu::tofloat(a))); }              \
    inline H hlog10(H a) { return llmgen_emu::fromfloat<H>(log10f(llmgen_emu::tofloat(a))); }            \
    inline H hsqrt(H a) { return llmgen_emu::fromfloat<H>(sqrtf(llmgen_emu::tofloat(a))); }              \
    inline H hrsqrt(H a) { return llmgen_emu::fromfloat<H>(1.0f / sqrtf(llmgen_emu::tofloat(a))); }      \
    inline H hrcp(H a) { return llmgen_emu::fromfloat<H>(1.0f / llmgen_emu::tofloat(a)); }               \
    inline H hsin(H a) { return llmgen_emu::fromfloat<H>(sinf(llmgen_emu::tofloat(a))); }                \
    inline H hcos(H a) { return llmgen_emu::fromfloat<H>(cosf(llmgen_emu::tofloat(a))); }                \
    inline H htanh(H a) { return llmgen_emu::fromfloat<H>(tanhf(llmgen_emu::tofloat(a))); }              \
    inline H htanh_approx(H a) { return htanh(a); }                                                        \
    inline H hceil(H a) { return llmgen_emu::fromfloat<H>(ceilf(llmgen_emu::tofloat(a))); }              \
    inline H hfloor(H a) { return llmgen_emu::fromfloat<H>(floorf(llmgen_emu::tofloat(a))); }            \
    inline H htrunc(H a) { return llmgen_emu::fromfloat<H>(truncf(llmgen_emu::tofloat(a))); }            \
    inline H hrint(H a) { return llmgen_emu::fromfloat<H>(nearbyintf(llmgen_emu::tofloat(a))); }         \
    inline H2 h2exp(H2 a) { return make2(hexp(a.x), hexp(a.y)); }                                          \
    inline H2 h2exp2(H2 a) { return make2(hexp2(a.x), hexp2(a.y)); }                                       \
    inline H2 h2log(H2 a) { return make2(hlog(a.x), hlog(a.y)); }                                          \
    inline H2 h2sqrt(H2 a) { return make2(hsqrt(a.x), hsqrt(a.y)); }                                       \
    inline H2 h2rsqrt(H2 a) { return make2(hrsqrt(a.x), hrsqrt(a.y)); }                                    \
    inline H2 h2rcp(H2 a) { return make2(hrcp(a.x), hrcp(a.y)); }                                          \
    inline H2 h2tanh(H2 a) { return make2(htanh(a.x), htanh(a.y)); }
LLMGEN_EMU_H16_MATH(__nv_bfloat16, __nv_bfloat162, __low2float, __high2float, __halves2bfloat162)
LLMGEN_EMU_H16_MATH(__half, __half2, __low2float, __high2float, __halves2half2)
#undef LLMGEN_EMU_H16_MATH

inline int __bfloat162int_rn(__nv_bfloat16 a) { return llmgen_emu::to_int_rn<int>(__bfloat162float(a)); }
inline int __bfloat162int_rd(__nv_bfloat16 a) { return llmgen_emu::cvt_sat<int>(floor((double)__bfloat162float(a))); }
inline int __bfloat162int_ru(__nv_bfloat16 a) { return llmgen_emu::cvt_sat<int>(ceil((double)__bfloat162float(a))); }
inline unsigned __bfloat162uint_rn(__nv_bfloat16 a) { return llmgen_emu::to_int_rn<unsigned>(__bfloat162float(a)); }
inline short __bfloat162short_rn(__nv_bfloat16 a) { return llmgen_emu::to_int_rn<short>(__bfloat162float(a)); }
inline long long __bfloat162ll_rn(__nv_bfloat16 a) { return llmgen_emu::to_int_rn<long long>(__bfloat162float(a)); }

/* ============================================================================================ */
/* Tensor-core fragments: the nvcuda::wmma API of <mma.h> (16x16x16 tiles)                       */
/* ============================================================================================ */
/* The fragment layout of wmma is opaque: which elements a lane holds is unspecified. Here every
 * lane holds the whole tile (num_elements = 256, row-major in x[]) and computes every product
 * itself, which satisfies the API for code that touches fragments only through fill / load /
 * store / mma (or applies the same operation to every x[i]).
 *   - load_matrix_sync reads the whole tile; store_matrix_sync writes only this lane's share
 *     (elements e with e % 32 == lane), so a lane that reads what others stored before a
 *     __syncwarp() sees stale memory here, as it could on the GPU.
 *   - Pointers must be 256-bit aligned and ldm a multiple of 16 bytes (the documented rules);
 *     a violation aborts naming the call.
 *   - mma_sync: exact products summed in fp32 in k order, starting from c. */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct tile_shape;
template <int M, int N, int K> struct tile_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulate.h: only 16x16x16 wmma tiles are emulated");
    static constexpr int rows = tile_shape<Use, M, N, K>::rows, cols = tile_shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    typedef T element_type;
    T x[num_elements];
};
} /* namespace wmma */
} /* namespace nvcuda */

namespace llmgen_emu {
inline void wmma_check(const void* p, unsigned ldm, size_t elem, const char* what) {
    if ((uintptr_t)p % 32 != 0 || (ldm * elem) % 16 != 0) {
        char buf[200];
        snprintf(buf, sizeof(buf), "%s: pointer %p must be 32-byte aligned and ldm (%u elements of %zu bytes) a "
                 "multiple of 16 bytes", what, p, ldm, elem);
        fatal(buf);
    }
}
inline unsigned wmma_lane() { return cur().current->tid & 31; }
} /* namespace llmgen_emu */

namespace nvcuda {
namespace wmma {
template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = (T)v;
}
/* matrix_a / matrix_b: the layout is part of the fragment type */
template <class Use, int M, int N, int K, class T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
    static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                  "emulate.h: an accumulator load needs a layout_t argument");
    llmgen_emu::wmma_check(p, ldm, sizeof(T), "wmma::load_matrix_sync");
    const bool row = std::is_same<L, row_major>::value;
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
    llmgen_emu::wmma_check(p, ldm, sizeof(T), "wmma::load_matrix_sync");
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.x[r * f.cols + c] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    llmgen_emu::wmma_check(p, ldm, sizeof(T), "wmma::store_matrix_sync");
    for (int e = (int)llmgen_emu::wmma_lane(); e < f.num_elements; e += 32) {
        const int r = e / f.cols, c = e % f.cols;
        (layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[e];
    }
}
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
    TC out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = (float)c.x[i * N + j];
            for (int k = 0; k < K; ++k) s += (float)a.x[i * K + k] * (float)b.x[k * N + j];
            out[i * N + j] = (TC)s;
        }
    memcpy(d.x, out, sizeof(out));
}
} /* namespace wmma */
} /* namespace nvcuda */

/* ============================================================================================ */
/* CUDA runtime API (host): definitions of NVIDIA's declarations                                */
/* ============================================================================================ */
namespace llmgen_emu {
enum MemKind { MEM_DEVICE, MEM_HOST_PINNED, MEM_SYMBOL /* a __device__/__constant__ variable */ };
struct Alloc { size_t bytes; MemKind kind; void* map; size_t span; }; /* map: device memory's mapping */
inline std::mutex g_mem_mutex;
inline std::map<uintptr_t, Alloc> g_allocs;
inline size_t g_device_bytes = 0;

inline cudaError_t alloc(void** p, size_t bytes, MemKind kind) {
    if (!p) return cudaErrorInvalidValue;
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    const size_t rounded = (bytes + 255) / 256 * 256;
    void* q = nullptr;
    unsigned char* map = nullptr;
    size_t span = 0;
    if (kind == MEM_DEVICE) {
        /* 256-byte aligned and ending at a guard page: a kernel running past the end faults (SIGSEGV)
         * instead of silently corrupting the host heap */
        map = guarded_map(rounded, &span);
        if (map) q = map + span - (size_t)sysconf(_SC_PAGESIZE) - rounded;
    } else {
        q = aligned_alloc(256, rounded);
    }
    if (!q) return cudaErrorMemoryAllocation;
#ifndef LLMGEN_EMU_NO_POISON
    if (kind == MEM_DEVICE) memset(q, 0xFF, rounded); /* NaN floats, -1 ints: nothing may assume zeroed memory */
#endif
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs[(uintptr_t)q] = Alloc{bytes, kind, map, span};
    if (kind == MEM_DEVICE) g_device_bytes += bytes;
    *p = q;
    return cudaSuccess;
}
inline void register_symbol(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs.emplace((uintptr_t)p, Alloc{bytes, MEM_SYMBOL, nullptr, 0});
}
inline cudaError_t release(void* p, MemKind kind) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second.kind != kind) return cudaErrorInvalidValue;
    if (kind == MEM_DEVICE) g_device_bytes -= it->second.bytes;
    if (it->second.map) munmap(it->second.map, it->second.span);
    else free(p);
    g_allocs.erase(it);
    return cudaSuccess;
}
/* [p, p+bytes) inside one allocation of cudaMalloc / cudaMallocHost? */
inline bool device_accessible(const void* p, size_t bytes) {
    if (bytes == 0) return true;
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_allocs.upper_bound((uintptr_t)p);
    if (it == g_allocs.begin()) return false;
    --it;
    const uintptr_t a = (uintptr_t)p;
    return a >= it->first && a + bytes <= it->first + it->second.bytes;
}
inline cudaError_t fail(const char* func, const char* why) {
    fprintf(stderr, "llmgen emulate: %s: %s\n", func, why);
    tl_last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
}
inline cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* func) {
    if (count == 0) return cudaSuccess;
    if (!dst || !src) return fail(func, "null pointer");
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((int)kind < 0 || (int)kind > 4) {
        tl_last_error = cudaErrorInvalidMemcpyDirection;
        return cudaErrorInvalidMemcpyDirection;
    }
    if (dst_dev && !device_accessible(dst, count))
        return fail(func, "the destination range is not inside memory from cudaMalloc/cudaMallocHost");
    if (src_dev && !device_accessible(src, count))
        return fail(func, "the source range is not inside memory from cudaMalloc/cudaMallocHost");
    memmove(dst, src, count);
    return cudaSuccess;
}
inline cudaError_t fill(void* p, int value, size_t count, const char* func) {
    if (count == 0) return cudaSuccess;
    if (!device_accessible(p, count))
        return fail(func, "the range is not inside memory from cudaMalloc/cudaMallocHost");
    memset(p, value, count);
    return cudaSuccess;
}
inline size_t physical_bytes() {
    return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
}
inline int g_device = 0;
} /* namespace llmgen_emu */

extern "C" {
inline cudaError_t cudaMalloc(void** devPtr, size_t size) {
    const cudaError_t e = llmgen_emu::alloc(devPtr, size, llmgen_emu::MEM_DEVICE);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaMallocManaged(void** devPtr, size_t size, unsigned int) { return cudaMalloc(devPtr, size); }
inline cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t) { return cudaMalloc(devPtr, size); }
inline cudaError_t cudaFree(void* devPtr) {
    const cudaError_t e = llmgen_emu::release(devPtr, llmgen_emu::MEM_DEVICE);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t) { return cudaFree(devPtr); }
inline cudaError_t cudaMallocHost(void** ptr, size_t size) {
    const cudaError_t e = llmgen_emu::alloc(ptr, size, llmgen_emu::MEM_HOST_PINNED);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaHostAlloc(void** pHost, size_t size, unsigned int) { return cudaMallocHost(pHost, size); }
inline cudaError_t cudaFreeHost(void* ptr) {
    const cudaError_t e = llmgen_emu::release(ptr, llmgen_emu::MEM_HOST_PINNED);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
    return llmgen_emu::copy(dst, src, count, kind, "cudaMemcpy");
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind, cudaStream_t) {
    return llmgen_emu::copy(dst, src, count, kind, "cudaMemcpyAsync");
}
inline cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                                size_t height, enum cudaMemcpyKind kind) {
    if (width > dpitch || width > spitch) return llmgen_emu::fail("cudaMemcpy2D", "width exceeds a pitch");
    for (size_t r = 0; r < height; ++r) {
        const cudaError_t e = llmgen_emu::copy((char*)dst + r * dpitch, (const char*)src + r * spitch, width,
                                               kind, "cudaMemcpy2D");
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
    return llmgen_emu::fill(devPtr, value, count, "cudaMemset");
}
inline cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t) {
    return llmgen_emu::fill(devPtr, value, count, "cudaMemsetAsync");
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    const size_t t = llmgen_emu::physical_bytes();
    size_t used;
    {
        std::lock_guard<std::mutex> lock(llmgen_emu::g_mem_mutex);
        used = llmgen_emu::g_device_bytes;
    }
    if (total) *total = t;
    if (free_bytes) *free_bytes = used < t ? t - used : 0;
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t count, size_t offset,
                                      enum cudaMemcpyKind) {
    memcpy((char*)symbol + offset, src, count);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const void* symbol, size_t count, size_t offset,
                                        enum cudaMemcpyKind) {
    memcpy(dst, (const char*)symbol + offset, count);
    return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
inline cudaError_t cudaDeviceReset(void) { return cudaSuccess; }
inline cudaError_t cudaDeviceSetLimit(enum cudaLimit, size_t) { return cudaSuccess; }
inline cudaError_t cudaGetLastError(void) {
    const cudaError_t e = llmgen_emu::tl_last_error;
    llmgen_emu::tl_last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError(void) { return llmgen_emu::tl_last_error; }
inline const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    default: return "cudaErrorUnknown";
    }
}
inline const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    default: return "unknown error";
    }
}

inline cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
    if (!pStream) return cudaErrorInvalidValue;
    *pStream = new CUstream_st{0};
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int) { return cudaStreamCreate(pStream); }
inline cudaError_t cudaStreamCreateWithPriority(cudaStream_t* pStream, unsigned int, int) { return cudaStreamCreate(pStream); }
inline cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamQuery(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return cudaSuccess; }

inline cudaError_t cudaEventCreate(cudaEvent_t* event) {
    if (!event) return cudaErrorInvalidValue;
    *event = new CUevent_st{std::chrono::steady_clock::time_point(), false};
    return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
    if (!event) return cudaErrorInvalidResourceHandle;
    event->t = std::chrono::steady_clock::now();
    event->recorded = true;
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    return event ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
inline cudaError_t cudaEventQuery(cudaEvent_t event) {
    return event ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end) return cudaErrorInvalidResourceHandle;
    if (!start->recorded || !end->recorded) return cudaErrorInvalidResourceHandle;
    *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceCount(int* count) {
    if (count) *count = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    llmgen_emu::g_device = device;
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
    if (device) *device = llmgen_emu::g_device;
    return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
    if (v) *v = CUDART_VERSION;
    return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
    if (v) *v = CUDART_VERSION;
    return cudaSuccess;
}
/* The fake device: sm_90 limits, one "SM" per OpenMP thread. */
inline cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* p, int device) {
    if (!p) return cudaErrorInvalidValue;
    if (device != 0) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "llmgen CPU emulation");
    p->totalGlobalMem = llmgen_emu::physical_bytes();
    p->sharedMemPerBlock = llmgen_emu::kSmemDefault;
    p->sharedMemPerBlockOptin = llmgen_emu::kSmemOptin;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->reservedSharedMemPerBlock = 1024;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)2147483647;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->textureAlignment = 512;
    p->texturePitchAlignment = 32;
    p->multiProcessorCount = llmgen_emu::omp_workers();
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxBlocksPerMultiProcessor = 32;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->memoryBusWidth = 5120;
    p->concurrentKernels = 1;
    p->unifiedAddressing = 1;
    p->managedMemory = 1;
    p->canMapHostMemory = 1;
    p->integrated = 1;
    p->asyncEngineCount = 0;
    p->cooperativeLaunch = 0;
    p->hostNativeAtomicSupported = 1;
    p->pageableMemoryAccess = 1;
    p->globalL1CacheSupported = 1;
    p->localL1CacheSupported = 1;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
    if (!value) return cudaErrorInvalidValue;
    if (device != 0) return cudaErrorInvalidDevice;
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    int v = 0;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: v = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: v = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: v = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: v = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: v = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: v = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: v = (int)p.sharedMemPerBlockOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: v = (int)p.sharedMemPerMultiprocessor; break;
    case cudaDevAttrTotalConstantMemory: v = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: v = p.regsPerBlock; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: v = p.regsPerMultiprocessor; break;
    case cudaDevAttrClockRate: v = 1980000; break;
    case cudaDevAttrMemoryClockRate: v = 2619000; break;
    case cudaDevAttrGlobalMemoryBusWidth: v = p.memoryBusWidth; break;
    case cudaDevAttrMultiProcessorCount: v = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: v = p.minor; break;
    case cudaDevAttrL2CacheSize: v = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: v = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: v = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrUnifiedAddressing: v = 1; break;
    case cudaDevAttrManagedMemory: v = 1; break;
    case cudaDevAttrConcurrentKernels: v = 1; break;
    case cudaDevAttrIntegrated: v = 1; break;
    default: v = 0; break;
    }
    *value = v;
    return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > llmgen_emu::kSmemOptin) {
            llmgen_emu::tl_last_error = cudaErrorInvalidValue;
            return cudaErrorInvalidValue;
        }
        std::lock_guard<std::mutex> lock(llmgen_emu::g_func_mutex);
        llmgen_emu::g_func_max_dyn_smem[func] = value;
    }
    return cudaSuccess;
}
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
    if (!attr) return cudaErrorInvalidValue;
    memset(attr, 0, sizeof(*attr));
    attr->maxThreadsPerBlock = 1024;
    attr->numRegs = 32;
    attr->ptxVersion = 90;
    attr->binaryVersion = 90;
    int dyn = (int)llmgen_emu::kSmemDefault;
    {
        std::lock_guard<std::mutex> lock(llmgen_emu::g_func_mutex);
        auto it = llmgen_emu::g_func_max_dyn_smem.find(func);
        if (it != llmgen_emu::g_func_max_dyn_smem.end()) dyn = it->second;
    }
    attr->maxDynamicSharedSizeBytes = dyn;
    return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* numBlocks, const void*,
                                                                          int blockSize, size_t dynamicSMemSize,
                                                                          unsigned int) {
    if (!numBlocks || blockSize <= 0) return cudaErrorInvalidValue;
    int by_threads = 2048 / blockSize;
    int by_smem = dynamicSMemSize ? (int)((228 * 1024) / dynamicSMemSize) : 32;
    *numBlocks = std::max(0, std::min(std::min(by_threads, by_smem), 32));
    return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func, int blockSize,
                                                                 size_t dynamicSMemSize) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, func, blockSize, dynamicSMemSize, 0);
}
} /* extern "C" */

/* C++ API templates that cuda_runtime.h keeps behind __CUDACC__ */
template <class T>
inline cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                      enum cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    return cudaMemcpyToSymbol((const void*)&symbol, src, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                           enum cudaMemcpyKind kind = cudaMemcpyHostToDevice,
                                           cudaStream_t = 0) {
    return cudaMemcpyToSymbol((const void*)&symbol, src, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                        enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    return cudaMemcpyFromSymbol(dst, (const void*)&symbol, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                             enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost,
                                             cudaStream_t = 0) {
    return cudaMemcpyFromSymbol(dst, (const void*)&symbol, count, offset, kind);
}
template <class T>
inline cudaError_t cudaGetSymbolAddress(void** devPtr, const T& symbol) {
    if (!devPtr) return cudaErrorInvalidValue;
    llmgen_emu::register_symbol(&symbol, sizeof(T)); /* so cudaMemcpy accepts it as device memory */
    *devPtr = (void*)&symbol;
    return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, enum cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, T* entry) {
    return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}

/* ============================================================================================ */
/* cuBLASLt subset: NVIDIA's names and values (cublasLt.h, cublas_api.h)                        */
/* ============================================================================================ */
#ifndef LLMGEN_EMU_NO_CUBLASLT

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;

typedef enum {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2,
    CUBLAS_OP_HERMITAN = 2,
    CUBLAS_OP_CONJG = 3
} cublasOperation_t;

typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;

typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_16F_PEDANTIC = 65,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
    CUBLAS_COMPUTE_32F_EMULATED_16BFX9 = 78,
    CUBLAS_COMPUTE_64F = 70,
    CUBLAS_COMPUTE_64F_PEDANTIC = 71,
    CUBLAS_COMPUTE_32I = 72,
    CUBLAS_COMPUTE_32I_PEDANTIC = 73
} cublasComputeType_t;

typedef enum {
    CUBLASLT_POINTER_MODE_HOST = CUBLAS_POINTER_MODE_HOST,
    CUBLASLT_POINTER_MODE_DEVICE = CUBLAS_POINTER_MODE_DEVICE,
    CUBLASLT_POINTER_MODE_DEVICE_VECTOR = 2,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO = 3,
    CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST = 4
} cublasLtPointerMode_t;

typedef enum {
    CUBLASLT_ORDER_COL = 0,
    CUBLASLT_ORDER_ROW = 1,
    CUBLASLT_ORDER_COL32 = 2,
    CUBLASLT_ORDER_COL4_4R2_8C = 3,
    CUBLASLT_ORDER_COL32_2R_4R4 = 4
} cublasLtOrder_t;

typedef enum {
    CUBLASLT_MATRIX_LAYOUT_TYPE = 0,
    CUBLASLT_MATRIX_LAYOUT_ORDER = 1,
    CUBLASLT_MATRIX_LAYOUT_ROWS = 2,
    CUBLASLT_MATRIX_LAYOUT_COLS = 3,
    CUBLASLT_MATRIX_LAYOUT_LD = 4,
    CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,
    CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,
    CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET = 7,
    CUBLASLT_MATRIX_LAYOUT_BATCH_MODE = 8
} cublasLtMatrixLayoutAttribute_t;

typedef enum {
    CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,
    CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,
    CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,
    CUBLASLT_MATMUL_DESC_TRANSA = 3,
    CUBLASLT_MATMUL_DESC_TRANSB = 4,
    CUBLASLT_MATMUL_DESC_TRANSC = 5,
    CUBLASLT_MATMUL_DESC_FILL_MODE = 6,
    CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
    CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
    CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE = 13,
    CUBLASLT_MATMUL_DESC_ALPHA_VECTOR_BATCH_STRIDE = 14,
    CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET = 15,
    CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17,
    CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18,
    CUBLASLT_MATMUL_DESC_C_SCALE_POINTER = 19,
    CUBLASLT_MATMUL_DESC_D_SCALE_POINTER = 20,
    CUBLASLT_MATMUL_DESC_AMAX_D_POINTER = 21,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE = 22,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER = 23,
    CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER = 24,
    CUBLASLT_MATMUL_DESC_FAST_ACCUM = 25,
    CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26
} cublasLtMatmulDescAttributes_t;

typedef enum {
    CUBLASLT_EPILOGUE_DEFAULT = 1,
    CUBLASLT_EPILOGUE_RELU = 2,
    CUBLASLT_EPILOGUE_RELU_AUX = (CUBLASLT_EPILOGUE_RELU | 128),
    CUBLASLT_EPILOGUE_BIAS = 4,
    CUBLASLT_EPILOGUE_RELU_BIAS = (CUBLASLT_EPILOGUE_RELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_RELU_AUX_BIAS = (CUBLASLT_EPILOGUE_RELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DRELU = 8 | 128,
    CUBLASLT_EPILOGUE_DRELU_BGRAD = CUBLASLT_EPILOGUE_DRELU | 16,
    CUBLASLT_EPILOGUE_GELU = 32,
    CUBLASLT_EPILOGUE_GELU_AUX = (CUBLASLT_EPILOGUE_GELU | 128),
    CUBLASLT_EPILOGUE_GELU_BIAS = (CUBLASLT_EPILOGUE_GELU | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_GELU_AUX_BIAS = (CUBLASLT_EPILOGUE_GELU_AUX | CUBLASLT_EPILOGUE_BIAS),
    CUBLASLT_EPILOGUE_DGELU = 64 | 128,
    CUBLASLT_EPILOGUE_DGELU_BGRAD = CUBLASLT_EPILOGUE_DGELU | 16,
    CUBLASLT_EPILOGUE_BGRADA = 256,
    CUBLASLT_EPILOGUE_BGRADB = 512
} cublasLtEpilogue_t;

typedef enum {
    CUBLASLT_SEARCH_BEST_FIT = 0,
    CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID = 1,
    CUBLASLT_SEARCH_RESERVED_02 = 2,
    CUBLASLT_SEARCH_RESERVED_03 = 3,
    CUBLASLT_SEARCH_RESERVED_04 = 4,
    CUBLASLT_SEARCH_RESERVED_05 = 5,
    CUBLASLT_SEARCH_RESERVED_06 = 6,
    CUBLASLT_SEARCH_RESERVED_07 = 7,
    CUBLASLT_SEARCH_RESERVED_08 = 8,
    CUBLASLT_SEARCH_RESERVED_09 = 9
} cublasLtMatmulSearch_t;

typedef enum {
    CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,
    CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
    CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
    CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT = 9,
    CUBLASLT_MATMUL_PREF_IMPL_MASK = 12
} cublasLtMatmulPreferenceAttributes_t;

struct cublasLtContext { int unused; };
typedef struct cublasLtContext* cublasLtHandle_t;
typedef struct { uint64_t data[8]; } cublasLtMatrixLayoutOpaque_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct { uint64_t data[32]; } cublasLtMatmulDescOpaque_t;
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulPreferenceOpaque_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;
typedef struct {
    cublasLtMatmulAlgo_t algo;
    size_t workspaceSize;
    cublasStatus_t state;
    float wavesCount;
    int reserved[4];
} cublasLtMatmulHeuristicResult_t;

namespace llmgen_emu {
namespace lt {

struct Desc { /* lives inside cublasLtMatmulDescOpaque_t */
    int32_t compute, scale_type, pointer_mode, transa, transb, transc, fill_mode;
    uint32_t epilogue;
    const void* bias;
    int64_t bias_batch_stride;
    void* aux;
    int64_t aux_ld, aux_batch_stride;
    int32_t aux_type, bias_type;
    int8_t fast_accum;
    int32_t sm_count_target;
};
struct Layout { /* lives inside cublasLtMatrixLayoutOpaque_t */
    uint32_t type;
    int32_t order;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch;
    int64_t batch_stride;
};
struct Pref {
    uint32_t search_mode;
    uint64_t max_workspace;
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "Desc must fit NVIDIA's opaque size");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "Layout must fit NVIDIA's opaque size");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "Pref must fit NVIDIA's opaque size");
inline Desc* desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d->data); }
inline Layout* layout(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l->data); }
inline Pref* pref(cublasLtMatmulPreference_t p) { return reinterpret_cast<Pref*>(p->data); }

inline cublasStatus_t bad(const char* why) {
    fprintf(stderr, "llmgen emulate: cublasLt: %s\n", why);
    return CUBLAS_STATUS_INVALID_VALUE;
}
inline cublasStatus_t unsupported(const char* why) {
    fprintf(stderr, "llmgen emulate: cublasLt: not emulated: %s\n", why);
    return CUBLAS_STATUS_NOT_SUPPORTED;
}
/* copy an attribute value of exactly `want` bytes, as cuBLASLt checks sizeInBytes */
template <class T>
inline bool take(T& dst, const void* buf, size_t size) {
    if (!buf || size != sizeof(T)) return false;
    memcpy(&dst, buf, sizeof(T));
    return true;
}
template <class T>
inline cublasStatus_t give(const T& src, void* buf, size_t size, size_t* written) {
    if (written) *written = sizeof(T);
    if (!buf && size == 0) return CUBLAS_STATUS_SUCCESS; /* size query */
    if (!buf || size < sizeof(T)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(buf, &src, sizeof(T));
    return CUBLAS_STATUS_SUCCESS;
}

inline size_t type_bytes(int t) {
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16BF: return 2;
    case CUDA_R_16F: return 2;
    default: return 0;
    }
}
inline float load(int type, const char* base, int64_t i) {
    switch (type) {
    case CUDA_R_32F: { float f; memcpy(&f, base + 4 * i, 4); return f; }
    case CUDA_R_16BF: { __nv_bfloat16 h; memcpy((void*)&h, base + 2 * i, 2); return __bfloat162float(h); }
    default: { __half h; memcpy((void*)&h, base + 2 * i, 2); return __half2float(h); }
    }
}
inline void store(int type, char* base, int64_t i, float v) {
    switch (type) {
    case CUDA_R_32F: memcpy(base + 4 * i, &v, 4); break;
    case CUDA_R_16BF: { __nv_bfloat16 h = __float2bfloat16_rn(v); memcpy(base + 2 * i, (const void*)&h, 2); break; }
    default: { __half h = __float2half_rn(v); memcpy(base + 2 * i, (const void*)&h, 2); break; }
    }
}
inline float tf32_rna(float x) { /* cvt.rna.tf32.f32 */
    uint32_t u = f2u(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    return u2f(u);
}

constexpr float kGeluS = 0.7978845608028654f; /* sqrt(2/pi) */
constexpr float kGeluC = 0.044715f;
inline float gelu(float x) { /* tanh approximation, as cuBLASLt's GELU epilogues */
    return 0.5f * x * (1.0f + tanhf(kGeluS * (x + kGeluC * x * x * x)));
}
inline float dgelu(float x) { /* derivative of the tanh approximation */
    const float t = tanhf(kGeluS * (x + kGeluC * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kGeluS * (1.0f + 3.0f * kGeluC * x * x);
}

/* A strided matrix view: element (r, c) at base[r*rs + c*cs] of `type` */
struct View {
    const char* base;
    int type;
    int64_t rs, cs;
};

enum { MR = 8, NR = 4, MC = 64, NC = 128 };
typedef float v8f __attribute__((vector_size(32)));

/* op(A) (m x k) -> panels of MR rows: panel ip holds (p, r) at [p*MR + r], zero-padded */
inline void pack_rows(const View& a, int64_t m, int64_t k, float* out, bool tf32) {
    const int64_t np = (m + MR - 1) / MR;
#pragma omp parallel for schedule(static) if (m * k > 32768)
    for (int64_t ip = 0; ip < np; ++ip) {
        float* dst = out + ip * MR * k;
        for (int64_t p = 0; p < k; ++p)
            for (int r = 0; r < MR; ++r) {
                const int64_t i = ip * MR + r;
                float v = i < m ? load(a.type, a.base, i * a.rs + p * a.cs) : 0.0f;
                dst[p * MR + r] = tf32 ? tf32_rna(v) : v;
            }
    }
}
/* op(B) (k x n) -> panels of NR columns: panel jp holds (p, c) at [p*NR + c], zero-padded */
inline void pack_cols(const View& b, int64_t k, int64_t n, float* out, bool tf32) {
    const int64_t np = (n + NR - 1) / NR;
#pragma omp parallel for schedule(static) if (n * k > 32768)
    for (int64_t jp = 0; jp < np; ++jp) {
        float* dst = out + jp * NR * k;
        for (int64_t p = 0; p < k; ++p)
            for (int c = 0; c < NR; ++c) {
                const int64_t j = jp * NR + c;
                float v = j < n ? load(b.type, b.base, p * b.rs + j * b.cs) : 0.0f;
                dst[p * NR + c] = tf32 ? tf32_rna(v) : v;
            }
    }
}

/* acc (MR x NR, column-major) = A panel (k x MR) . B panel (k x NR), summed over p in order */
inline void micro_kernel(int64_t k, const float* a, const float* b, float* acc) {
    v8f c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0};
    for (int64_t p = 0; p < k; ++p) {
        v8f av;
        memcpy(&av, a + p * MR, sizeof(av));
        const float* bp = b + p * NR;
        c0 += av * bp[0];
        c1 += av * bp[1];
        c2 += av * bp[2];
        c3 += av * bp[3];
    }
    memcpy(acc + 0 * MR, &c0, sizeof(c0));
    memcpy(acc + 1 * MR, &c1, sizeof(c1));
    memcpy(acc + 2 * MR, &c2, sizeof(c2));
    memcpy(acc + 3 * MR, &c3, sizeof(c3));
}

struct Epi {
    bool bias_add, gelu, aux_out, dgelu, bgrad_rows, bgrad_a, bgrad_b;
    int bias_type, aux_type;
    const char* bias;   /* BIAS: input */
    char* bgrad;        /* *_BGRAD*: output */
    char* aux;          /* GELU_AUX: output, DGELU: input */
    int64_t aux_ld;
};

/* D = epilogue(alpha * op(A) op(B) + beta * C) for one batch entry */
inline void gemm(int64_t m, int64_t n, int64_t k, const View& a, const View& b, float alpha, float beta,
                 const View& c, const View& d, const Epi& e, bool tf32) {
    static thread_local std::vector<float> abuf, bbuf, rowsum;
    const int64_t mpan = (m + MR - 1) / MR, npan = (n + NR - 1) / NR;
    abuf.resize((size_t)(mpan * MR * k + 16));
    bbuf.resize((size_t)(npan * NR * k + 16));
    float* ap = abuf.data();
    float* bp = bbuf.data();
    pack_rows(a, m, k, ap, tf32);
    pack_cols(b, k, n, bp, tf32);

    if (e.bgrad_a) /* bias gradient from A: sum over k of op(A)(i, :) */
        for (int64_t i = 0; i < m; ++i) {
            const float* pan = ap + (i / MR) * MR * k;
            float s = 0.0f;
            for (int64_t p = 0; p < k; ++p) s += pan[p * MR + i % MR];
            store(e.bias_type, e.bgrad, i, s);
        }
    if (e.bgrad_b) /* bias gradient from B: sum over k of op(B)(:, j) */
        for (int64_t j = 0; j < n; ++j) {
            const float* pan = bp + (j / NR) * NR * k;
            float s = 0.0f;
            for (int64_t p = 0; p < k; ++p) s += pan[p * NR + j % NR];
            store(e.bias_type, e.bgrad, j, s);
        }

    const int64_t tm = (m + MC - 1) / MC, tn = (n + NC - 1) / NC;
    if (e.bgrad_rows) rowsum.assign((size_t)(tn * m), 0.0f);
    float* rs = rowsum.data();
#pragma omp parallel for schedule(dynamic, 1) if (m * n * k > 65536)
    for (int64_t t = 0; t < tm * tn; ++t) {
        const int64_t ic = t % tm, jc = t / tm;
        const int64_t i_end = std::min(m, (ic + 1) * MC), j_end = std::min(n, (jc + 1) * NC);
        float acc[MR * NR];
        for (int64_t j0 = jc * NC; j0 < j_end; j0 += NR) {
            for (int64_t i0 = ic * MC; i0 < i_end; i0 += MR) {
                micro_kernel(k, ap + (i0 / MR) * MR * k, bp + (j0 / NR) * NR * k, acc);
                for (int cj = 0; cj < NR && j0 + cj < n; ++cj) {
                    const int64_t j = j0 + cj;
                    for (int ri = 0; ri < MR && i0 + ri < m; ++ri) {
                        const int64_t i = i0 + ri;
                        float v = alpha * acc[cj * MR + ri];
                        if (beta != 0.0f) v += beta * load(c.type, c.base, i * c.rs + j * c.cs);
                        if (e.bias_add) v += load(e.bias_type, e.bias, i);
                        if (e.aux_out) store(e.aux_type, e.aux, i + j * e.aux_ld, v);
                        if (e.gelu) v = gelu(v);
                        if (e.dgelu) v *= dgelu(load(e.aux_type, e.aux, i + j * e.aux_ld));
                        store(d.type, const_cast<char*>(d.base), i * d.rs + j * d.cs, v);
                        if (e.bgrad_rows) rs[jc * m + i] += v;
                    }
                }
            }
        }
    }
    if (e.bgrad_rows) /* bias gradient of the result: sum over columns, in column-tile order */
        for (int64_t i = 0; i < m; ++i) {
            float s = 0.0f;
            for (int64_t jc = 0; jc < tn; ++jc) s += rs[jc * m + i];
            store(e.bias_type, e.bgrad, i, s);
        }
}

} /* namespace lt */
} /* namespace llmgen_emu */

extern "C" {
inline cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
    if (!lightHandle) return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = new cublasLtContext{0};
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
    delete lightHandle;
    return CUBLAS_STATUS_SUCCESS;
}
inline size_t cublasLtGetVersion(void) { return 130000; }
inline const char* cublasLtGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_INTERNAL_ERROR";
    }
}
inline const char* cublasLtGetStatusString(cublasStatus_t s) { return cublasLtGetStatusName(s); }

inline cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc, cublasComputeType_t computeType,
                                               cudaDataType_t scaleType) {
    if (!matmulDesc) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulDescOpaque_t* o = new cublasLtMatmulDescOpaque_t();
    llmgen_emu::lt::Desc* d = new (o->data) llmgen_emu::lt::Desc();
    d->compute = computeType;
    d->scale_type = scaleType;
    d->pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    d->transa = d->transb = d->transc = CUBLAS_OP_N;
    d->epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    d->aux_type = -1;
    d->bias_type = -1;
    *matmulDesc = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
    delete matmulDesc;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                     cublasLtMatmulDescAttributes_t attr, const void* buf,
                                                     size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!matmulDesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    Desc* d = desc(matmulDesc);
    bool ok;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: ok = take(d->compute, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: ok = take(d->scale_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: ok = take(d->pointer_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSA: ok = take(d->transa, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSB: ok = take(d->transb, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_TRANSC: ok = take(d->transc, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_FILL_MODE: ok = take(d->fill_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: ok = take(d->epilogue, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: ok = take(d->bias, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE: ok = take(d->bias_batch_stride, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: ok = take(d->aux, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: ok = take(d->aux_ld, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE: ok = take(d->aux_batch_stride, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: ok = take(d->aux_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: ok = take(d->bias_type, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM: ok = take(d->fast_accum, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET: ok = take(d->sm_count_target, buf, sizeInBytes); break;
    default: return unsupported("this cublasLtMatmulDescAttributes_t value");
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatmulDescSetAttribute: null buffer or wrong sizeInBytes");
}
inline cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                     cublasLtMatmulDescAttributes_t attr, void* buf,
                                                     size_t sizeInBytes, size_t* sizeWritten) {
    using namespace llmgen_emu::lt;
    if (!matmulDesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    const Desc* d = desc(matmulDesc);
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: return give(d->compute, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: return give(d->scale_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: return give(d->pointer_mode, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSA: return give(d->transa, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_TRANSB: return give(d->transb, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return give(d->epilogue, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return give(d->bias, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: return give(d->aux, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: return give(d->aux_ld, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE: return give(d->aux_type, buf, sizeInBytes, sizeWritten);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return give(d->bias_type, buf, sizeInBytes, sizeWritten);
    default: return unsupported("this cublasLtMatmulDescAttributes_t value");
    }
}

inline cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                                 uint64_t rows, uint64_t cols, int64_t ld) {
    if (!matLayout) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatrixLayoutOpaque_t* o = new cublasLtMatrixLayoutOpaque_t();
    llmgen_emu::lt::Layout* l = new (o->data) llmgen_emu::lt::Layout();
    l->type = (uint32_t)type;
    l->order = CUBLASLT_ORDER_COL;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    l->batch = 1;
    l->batch_stride = 0;
    *matLayout = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
    delete matLayout;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                       cublasLtMatrixLayoutAttribute_t attr, const void* buf,
                                                       size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!matLayout) return CUBLAS_STATUS_NOT_INITIALIZED;
    Layout* l = layout(matLayout);
    bool ok;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: ok = take(l->type, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_ORDER: ok = take(l->order, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_ROWS: ok = take(l->rows, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_COLS: ok = take(l->cols, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_LD: ok = take(l->ld, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: ok = take(l->batch, buf, sizeInBytes); break;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET: ok = take(l->batch_stride, buf, sizeInBytes); break;
    default: return unsupported("this cublasLtMatrixLayoutAttribute_t value");
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatrixLayoutSetAttribute: null buffer or wrong sizeInBytes");
}

inline cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    if (!p) return CUBLAS_STATUS_INVALID_VALUE;
    cublasLtMatmulPreferenceOpaque_t* o = new cublasLtMatmulPreferenceOpaque_t();
    new (o->data) llmgen_emu::lt::Pref();
    *p = o;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                           cublasLtMatmulPreferenceAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
    using namespace llmgen_emu::lt;
    if (!p) return CUBLAS_STATUS_NOT_INITIALIZED;
    bool ok = true;
    uint32_t u32;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE: ok = take(pref(p)->search_mode, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: ok = take(pref(p)->max_workspace, buf, sizeInBytes); break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: ok = take(u32, buf, sizeInBytes); break; /* no effect */
    default: ok = buf != nullptr; break;                                                        /* no effect */
    }
    return ok ? CUBLAS_STATUS_SUCCESS : bad("cublasLtMatmulPreferenceSetAttribute: null buffer or wrong sizeInBytes");
}
inline cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                                     cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                                     cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                                     cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                                     cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                     int* returnAlgoCount) {
    if (!lightHandle || !operationDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc || !preference)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (requestedAlgoCount <= 0 || !heuristicResultsArray || !returnAlgoCount) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&heuristicResultsArray[0], 0, sizeof(heuristicResultsArray[0]));
    heuristicResultsArray[0].workspaceSize = 0;
    heuristicResultsArray[0].state = CUBLAS_STATUS_SUCCESS;
    heuristicResultsArray[0].wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* D = epilogue(alpha * op(A) op(B) + beta * C), column-major (or ROW order) layouts, strided batches */
inline cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                                     const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc, const void* B,
                                     cublasLtMatrixLayout_t Bdesc, const void* beta, const void* C,
                                     cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                                     const cublasLtMatmulAlgo_t* algo, void* workspace,
                                     size_t workspaceSizeInBytes, cudaStream_t stream) {
    using namespace llmgen_emu::lt;
    (void)algo;
    (void)workspace;
    (void)workspaceSizeInBytes;
    (void)stream;
    if (!lightHandle || !computeDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc) return CUBLAS_STATUS_NOT_INITIALIZED;
    const Desc& op = *desc(computeDesc);
    const Layout &la = *layout(Adesc), &lb = *layout(Bdesc), &lc = *layout(Cdesc), &ld = *layout(Ddesc);
    if (!alpha || !beta || !A || !B || !D) return bad("cublasLtMatmul: null alpha/beta/A/B/D");

    /* what is emulated */
    switch (op.compute) {
    case CUBLAS_COMPUTE_32F: case CUBLAS_COMPUTE_32F_PEDANTIC: case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF: case CUBLAS_COMPUTE_32F_FAST_TF32: break;
    default: return unsupported("compute type other than CUBLAS_COMPUTE_32F*");
    }
    if (op.scale_type != CUDA_R_32F) return unsupported("scale type other than CUDA_R_32F");
    if (op.pointer_mode != CUBLASLT_POINTER_MODE_HOST && op.pointer_mode != CUBLASLT_POINTER_MODE_DEVICE)
        return unsupported("vector pointer modes");
    if ((op.transa != CUBLAS_OP_N && op.transa != CUBLAS_OP_T) || (op.transb != CUBLAS_OP_N && op.transb != CUBLAS_OP_T))
        return bad("TRANSA/TRANSB must be CUBLAS_OP_N or CUBLAS_OP_T");
    if (op.transc != CUBLAS_OP_N) return bad("TRANSC must be CUBLAS_OP_N");
    const Layout* lays[4] = {&la, &lb, &lc, &ld};
    for (const Layout* l : lays) {
        if (!type_bytes((int)l->type)) return unsupported("matrix type other than CUDA_R_32F / CUDA_R_16BF / CUDA_R_16F");
        if (l->order != CUBLASLT_ORDER_COL && l->order != CUBLASLT_ORDER_ROW) return unsupported("matrix order other than COL/ROW");
        const int64_t need = l->order == CUBLASLT_ORDER_COL ? (int64_t)l->rows : (int64_t)l->cols;
        if (l->ld < std::max<int64_t>(1, need)) return bad("leading dimension smaller than the matrix");
    }

    /* shapes: op(A) m x k, op(B) k x n, C and D m x n */
    const int64_t m = (int64_t)ld.rows, n = (int64_t)ld.cols;
    const int64_t am = op.transa == CUBLAS_OP_N ? (int64_t)la.rows : (int64_t)la.cols;
    const int64_t k = op.transa == CUBLAS_OP_N ? (int64_t)la.cols : (int64_t)la.rows;
    const int64_t bk = op.transb == CUBLAS_OP_N ? (int64_t)lb.rows : (int64_t)lb.cols;
    const int64_t bn = op.transb == CUBLAS_OP_N ? (int64_t)lb.cols : (int64_t)lb.rows;
    if (am != m || bn != n || bk != k) return bad("cublasLtMatmul: op(A), op(B), D shapes do not agree");
    if ((int64_t)lc.rows != m || (int64_t)lc.cols != n) return bad("cublasLtMatmul: C and D shapes differ");
    if (lc.type != ld.type) return unsupported("C and D of different types");

    /* epilogue */
    const uint32_t ep = op.epilogue;
    Epi e;
    memset(&e, 0, sizeof(e));
    switch (ep) {
    case CUBLASLT_EPILOGUE_DEFAULT: break;
    case CUBLASLT_EPILOGUE_BIAS: e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_GELU: e.gelu = true; break;
    case CUBLASLT_EPILOGUE_GELU_BIAS: e.gelu = e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_GELU_AUX: e.gelu = e.aux_out = true; break;
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS: e.gelu = e.aux_out = e.bias_add = true; break;
    case CUBLASLT_EPILOGUE_DGELU: e.dgelu = true; break;
    case CUBLASLT_EPILOGUE_DGELU_BGRAD: e.dgelu = e.bgrad_rows = true; break;
    case CUBLASLT_EPILOGUE_BGRADA: e.bgrad_a = true; break;
    case CUBLASLT_EPILOGUE_BGRADB: e.bgrad_b = true; break;
    default: return unsupported("this epilogue (RELU family)");
    }
    e.bias_type = op.bias_type >= 0 ? op.bias_type : (int)ld.type;
    e.aux_type = op.aux_type >= 0 ? op.aux_type : (int)ld.type;
    if (!type_bytes(e.bias_type) || !type_bytes(e.aux_type)) return unsupported("bias/aux data type");
    if ((e.bias_add || e.bgrad_rows || e.bgrad_a || e.bgrad_b) && !op.bias)
        return bad("the epilogue needs CUBLASLT_MATMUL_DESC_BIAS_POINTER");
    if (e.aux_out || e.dgelu) {
        if (!op.aux) return bad("the epilogue needs CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER");
        if (op.aux_ld < m || op.aux_ld % 8 != 0)
            return bad("EPILOGUE_AUX_LD must be >= rows of D and a multiple of 8");
    }
    e.aux_ld = op.aux_ld;

    float al, be;
    memcpy(&al, alpha, 4);
    memcpy(&be, beta, 4);
    const bool tf32 = op.compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const int batches = std::max(1, ld.batch);
    auto view = [](const Layout& l, const void* base, bool trans, int64_t b) {
        View v;
        const int64_t rs = l.order == CUBLASLT_ORDER_COL ? 1 : l.ld;
        const int64_t cs = l.order == CUBLASLT_ORDER_COL ? l.ld : 1;
        v.base = (const char*)base + (size_t)(b * l.batch_stride) * type_bytes((int)l.type);
        v.type = (int)l.type;
        v.rs = trans ? cs : rs;
        v.cs = trans ? rs : cs;
        return v;
    };
    for (int b = 0; b < batches; ++b) {
        const int64_t ba = la.batch > 1 ? b : 0, bb = lb.batch > 1 ? b : 0, bc = lc.batch > 1 ? b : 0;
        Epi eb = e;
        eb.bias = (const char*)op.bias + (size_t)(b * op.bias_batch_stride) * type_bytes(e.bias_type);
        eb.bgrad = (char*)op.bias + (size_t)(b * op.bias_batch_stride) * type_bytes(e.bias_type);
        eb.aux = (char*)op.aux + (size_t)(b * op.aux_batch_stride) * type_bytes(e.aux_type);
        const View va = view(la, A, op.transa == CUBLAS_OP_T, ba);
        const View vb = view(lb, B, op.transb == CUBLAS_OP_T, bb);
        const View vc = view(lc, C ? C : D, false, bc);
        const View vd = view(ld, D, false, b);
        gemm(m, n, k, va, vb, al, C ? be : 0.0f, vc, vd, eb, tf32);
    }
    return CUBLAS_STATUS_SUCCESS;
}
} /* extern "C" */

#endif /* LLMGEN_EMU_NO_CUBLASLT */

#endif /* LLMGEN_EMULATE */
#endif /* LLMGEN_EMULATE_H */
