/* emu_launch.h -- kernel launches: blocks on OS threads, CUDA threads on fibers.
 *
 * CONTRACT
 *   LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, args...) checks the configuration as
 *   a GPU does (errors through cudaGetLastError), then runs the whole grid before returning:
 *   - Blocks are spread over OpenMP threads (schedule dynamic); each OS thread has one Worker
 *     and runs one block at a time, so `__shared__` (thread_local) is one copy per running block.
 *     LLMGEN_DYNAMIC_SMEM(type, name) points into the worker's dynamic shared memory: sized at
 *     launch, ending at a guard page, refilled with 0xFF bytes per block (LLMGEN_EMU_NO_POISON:
 *     not refilled).
 *   - Fast path: one fiber runs thread after thread of the block with no switch until one of them
 *     waits (barrier or warp operation); only then is the next thread started on a new fiber.
 *   - Worker::barrier (__syncthreads): waits for all live (not exited) threads; waiters resume in
 *     thread order. Worker::warp_op: the warp exchange behind every warp operation (emu_warp.h):
 *     the lanes of `mask` that have not exited meet; the last to arrive computes every lane's
 *     result (shuffle, vote, reduce, or a warp-collective callback, WOP_COLL, that performs one
 *     PTX instruction of emu_ptx.h for the whole warp). Lanes of one mask at different warp
 *     operations, or a barrier that can never complete, abort naming the block instead of hanging.
 *   - Per OS thread, the worker also keeps the running block's cp.async bookkeeping (CpState: a
 *     __syncthreads publishes what was waited for to the block, a __syncwarp to the warp) and the
 *     launch's shared-memory counts, merged per kernel name when the launch ends (emu_banks.h).
 *   - The arguments are converted to the kernel's parameter types once, as a real launch does;
 *     every CUDA thread gets its own copy. A templated kernel goes in parentheses:
 *     LLMGEN_LAUNCH((k<float, 4>), ...). Launches from device code abort.
 *   - Stream capture (CUDA Graphs, emu_runtime.h): a launch into the stream being captured is
 *     checked as above and recorded (the kernel and its converted arguments) instead of run;
 *     cudaGraphLaunch runs the recorded operations in order. The emulation behaves as a build with
 *     `--default-stream per-thread`: stream 0 and cudaStreamPerThread are one stream, which can be
 *     captured; cudaStreamLegacy cannot.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_LAUNCH_H
#define LLMGEN_EMU_LAUNCH_H
#ifndef LLMGEN_EMULATE_H
#error "emu_launch.h is a part of emulate.h: include emulate.h"
#endif

#include <deque>
#include <functional>
#include <memory>

namespace llmgen_emu {

enum WarpOp : uint8_t {
    WOP_SYNC, WOP_SHFL, WOP_VOTE, WOP_ACTIVE, WOP_ADD, WOP_MIN_S, WOP_MAX_S, WOP_MIN_U, WOP_MAX_U,
    WOP_AND, WOP_OR, WOP_XOR, WOP_COLL, WOP_COUNT
};
inline const char* warp_op_name(uint8_t op) {
    static const char* names[WOP_COUNT] = {"__syncwarp", "__shfl*_sync", "__ballot/__any/__all_sync",
                                           "__activemask", "__reduce_add_sync", "__reduce_min_sync",
                                           "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync",
                                           "__reduce_and_sync", "__reduce_or_sync", "__reduce_xor_sync",
                                           "a warp-collective PTX operation (ptx.cuh)"};
    return op < WOP_COUNT ? names[op] : "?";
}

struct Worker;

/* A warp-collective operation (WOP_COLL; the PTX models of emu_ptx.h): every lane passes one of
 * these (on its own stack, which stays valid while it waits); the last lane to arrive calls
 * run(worker, warp index, lanes[32] (nullptr for lanes not taking part), lanes taking part) once,
 * which reads every lane's inputs and writes every lane's outputs: one instruction for the warp. */
struct Collective {
    void (*run)(Worker& w, unsigned warp, Collective** lanes, uint32_t present);
    const char* what; /* the instruction with its qualifiers, for messages */
};

/* cp.async bookkeeping of the running block (emu_ptx.h): the 16-byte shared-memory chunks that
 * copies wrote, until every thread may read them. A copy completes at issue here, but the GPU
 * makes its bytes visible to the issuing thread only after a wait_group covering its group, and
 * to other threads only after a barrier that follows that wait; reads through ldmatrix, the
 * counted loads and wmma check this. */
enum CpStage : uint8_t {
    CP_IN_FLIGHT, /* no wait_group of its issuer has covered its group yet */
    CP_WAITED,    /* its issuer waited: visible to the issuer only */
    CP_WARP       /* waited, then a __syncwarp with the issuer: visible to that warp */
};
struct CpChunk {
    uint32_t issuer; /* linear thread index in the block */
    uint32_t group;  /* the issuer's group index: commits before the copy */
    CpStage stage;
};
struct CpThread {
    uint32_t committed = 0;                      /* groups committed so far */
    uint32_t complete = 0;                       /* groups 0 .. complete-1 are waited for */
    std::vector<std::pair<uintptr_t, uint32_t>> copies; /* (chunk, group) of copies not waited for */
    std::string trace;                           /* with trace on: "c" copy, "C" commit, "W<n>" wait */
};
struct CpState {
    bool used = false;                              /* any cp.async in this block */
    std::unordered_map<uintptr_t, CpChunk> chunks;  /* chunk address (16-byte aligned) -> state */
    std::vector<uintptr_t> waited;                  /* chunks in CP_WAITED or CP_WARP: published at a barrier */
    std::vector<CpThread> threads;
    void reset(unsigned n) {
        chunks.clear();
        waited.clear();
        if (threads.size() < n) threads.resize(n);
        for (unsigned i = 0; i < n; ++i) {
            threads[i].committed = threads[i].complete = 0;
            threads[i].copies.clear();
            threads[i].trace.clear();
        }
        used = false;
    }
    /* __syncthreads: what was waited for is visible to the whole block (forgotten here) */
    void publish_block() {
        for (uintptr_t c : waited) {
            auto it = chunks.find(c);
            if (it != chunks.end() && it->second.stage != CP_IN_FLIGHT) chunks.erase(it);
        }
        waited.clear();
    }
    /* __syncwarp over `lanes` of warp `warp`: what their own threads waited for is visible to the warp */
    void publish_warp(unsigned warp, uint32_t lanes) {
        for (uintptr_t c : waited) {
            auto it = chunks.find(c);
            if (it == chunks.end() || it->second.stage != CP_WAITED) continue;
            const uint32_t t = it->second.issuer;
            if (t / 32 == warp && ((lanes >> (t % 32)) & 1u)) it->second.stage = CP_WARP;
        }
    }
};

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
    const char* kernel = "";     /* the kernel's name as LLMGEN_LAUNCH spelled it */
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
    /* shared-memory and cp.async counts of this launch on this OS thread (emu_banks.h), merged
     * into the program's per-kernel totals when the launch ends */
    KernelStats stats;
    CpState cp;

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
    void run_collective(Warp& w, uint32_t lanes);
    uint64_t warp_op(uint32_t mask, uint8_t op, uint64_t v, int src);
    [[noreturn]] void deadlock();
    void finish_launch();
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
    if (!cp.waited.empty()) cp.publish_block();
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
        case WOP_COLL: break; /* run once for the warp below */
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
    if (by_op[WOP_COLL]) run_collective(w, by_op[WOP_COLL]);
    if (by_op[WOP_SYNC] && !cp.waited.empty()) cp.publish_warp((unsigned)(&w - warps.data()), by_op[WOP_SYNC]);
    w.arrived = 0;
    w.maskunion = 0;
    for (uint32_t m = arr; m; m &= m - 1) {
        Fiber* f = w.waiter[__builtin_ctz(m)];
        if (f != keep) ready_push(f);
    }
}

inline void Worker::run_collective(Warp& w, uint32_t lanes) {
    Collective* args[32] = {nullptr};
    int first = -1;
    for (uint32_t m = lanes; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        args[l] = reinterpret_cast<Collective*>((uintptr_t)w.in[l]);
        if (first < 0) {
            first = l;
        } else if (args[l]->run != args[first]->run || strcmp(args[l]->what, args[first]->what) != 0) {
            char buf[400];
            snprintf(buf, sizeof(buf), "divergent warp code in block (%u,%u,%u), warp %u: lane %d is in %s while "
                     "lane %d is in %s", blockIdx.x, blockIdx.y, blockIdx.z, (unsigned)(&w - warps.data()), first,
                     args[first]->what, l, args[l]->what);
            fatal(buf);
        }
    }
    args[first]->run(*this, (unsigned)(&w - warps.data()), args, lanes);
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
    if (cp.used) cp.reset(n); /* copies still in flight when a block ends are simply dropped */
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

/* ---- stream capture: what a stream being captured records instead of running (CUDA Graphs) ---- */
/* One capture at a time, in cudaStreamCaptureModeGlobal's terms: while it lasts, the calls CUDA refuses
 * during a capture (synchronous copies and sets, synchronisations, allocations) fail from any thread with
 * cudaErrorStreamCaptureUnsupported and invalidate it (cudaStreamEndCapture then answers
 * cudaErrorStreamCaptureInvalidated). Stream 0 means the per-thread default stream, as in a build with
 * --default-stream per-thread.
 * Fork and join, as CUDA defines them: another stream that waits (cudaStreamWaitEvent) on an event recorded in
 * the capture joins it, and its work is recorded too; the capture ends (on the stream it began on) only when the
 * origin has waited for an event recorded after each joined stream's last work, else cudaStreamEndCapture answers
 * cudaErrorStreamCaptureUnjoined (stricter than CUDA: a join through another forked stream does not count). The
 * recorded operations replay in the order they were issued, which respects every stream's order and every event
 * dependency (the emulation never runs two streams at once). */
struct Capture {
    bool active = false;
    bool invalid = false;
    cudaStream_t stream = nullptr;               /* the stream the capture began on (cudaStreamPerThread as 0) */
    std::vector<std::function<void()>> ops;      /* launches, copies, sets, GEMMs, in issue order */
    std::map<cudaStream_t, size_t> last_op;      /* joined stream -> ops recorded up to its last one */
    std::map<cudaStream_t, size_t> waited;       /* joined stream -> ops of it the origin has waited for */
    std::map<cudaEvent_t, std::pair<cudaStream_t, size_t>> events; /* recorded in the capture: stream, ops then */
};
inline Capture g_capture;
inline cudaStream_t stream_key(cudaStream_t s) { return s == cudaStreamPerThread ? nullptr : s; }
inline bool capturing(cudaStream_t s) {
    return g_capture.active && (stream_key(s) == g_capture.stream || g_capture.last_op.count(stream_key(s)));
}

/* ---- LLMGEN_EMU_DEFER_STREAMS: each stream's work as late, or as early, as CUDA allows ----
 * Unset (or empty, or 0), every operation runs when it is issued. `side`: the work issued to created streams
 * (cudaStreamCreate*) waits in the stream's queue until something forces it: another stream waits on an event
 * recorded after it (cudaStreamWaitEvent), an event, stream or device synchronisation or query, a synchronous copy
 * or set (which force every stream). Stream 0 runs at once, so a created stream runs as late as CUDA allows: a
 * missing wait before stream 0 overwrites what it reads, or a missing join, gives other numbers. `main`: stream 0's
 * work waits instead, and created streams run at once (as early as allowed): a missing wait for what stream 0
 * writes first (a fork) reads stale data. A stream's queue runs in its order; a replayed CUDA Graph issues its
 * operations to their streams in turn (the same rules). The emulated NCCL (emulate_nccl.h) runs the work queued on
 * a collective's stream, then the collective, when it is called. */
enum DeferMode { DEFER_NONE, DEFER_SIDE, DEFER_MAIN };
inline DeferMode defer_mode() {
    static const DeferMode mode = [] {
        const char* e = getenv("LLMGEN_EMU_DEFER_STREAMS");
        if (!e || !*e || strcmp(e, "0") == 0) return DEFER_NONE;
        if (strcmp(e, "side") == 0) return DEFER_SIDE;
        if (strcmp(e, "main") == 0) return DEFER_MAIN;
        fprintf(stderr, "llmgen emulate: LLMGEN_EMU_DEFER_STREAMS=%s: expected side, main or 0\n", e);
        abort();
    }();
    return mode;
}
struct StreamQueue {
    std::deque<std::function<void()>> ops;   /* issued, not run yet, in order */
    uint64_t issued = 0, done = 0;           /* operations issued to the queue so far, and run */
};
inline std::map<cudaStream_t, StreamQueue> g_queues;   /* by stream_key */
/* whether work issued to stream s (not being captured) waits in its queue */
inline bool deferring(cudaStream_t s) {
    const DeferMode m = defer_mode();
    if (m == DEFER_NONE || capturing(s)) return false;
    const bool main = stream_key(s) == nullptr || s == cudaStreamLegacy;
    return m == DEFER_MAIN ? main : !main;
}
/* run stream s's queue up to its operation `upto` (1-based; UINT64_MAX: all of it) */
inline void flush_stream(cudaStream_t s, uint64_t upto = UINT64_MAX) {
    auto it = g_queues.find(stream_key(s));
    if (it == g_queues.end()) return;
    StreamQueue& q = it->second;
    while (q.done < upto && !q.ops.empty()) {
        std::function<void()> op = std::move(q.ops.front());
        q.ops.pop_front();
        q.done++;
        op();
    }
}
inline void flush_all() {
    for (auto& q : g_queues) flush_stream(q.first);
}
/* the operation `op` issued to stream s outside a capture: queued (deferring) or run now; returns its place */
inline uint64_t run_on(cudaStream_t s, std::function<void()> op) {
    if (!deferring(s)) {
        op();
        return 0;
    }
    StreamQueue& q = g_queues[stream_key(s)];
    q.ops.push_back(std::move(op));
    return ++q.issued;
}
/* an event record on stream s, issued outside a capture */
inline void record_event(cudaEvent_t event, cudaStream_t s) {
    const uint64_t seq = run_on(s, [event]() {
        event->t = std::chrono::steady_clock::now();
        event->recorded = true;
    });
    event->queue = stream_key(s);
    event->seq = seq;
}
/* a wait on `event` outside a capture: the work up to its record runs first (what the waiter may read) */
inline void wait_event(cudaEvent_t event) {
    if (event->seq) flush_stream(event->queue, event->seq);
}
/* record fn on the captured stream s as it is (event records) */
inline void capture_raw(cudaStream_t s, std::function<void()> fn) {
    g_capture.ops.push_back(std::move(fn));
    auto it = g_capture.last_op.find(stream_key(s));
    if (it != g_capture.last_op.end()) it->second = g_capture.ops.size();
}
/* record op on the captured stream s: a replay issues it to s again (run_on) */
inline void capture_push(cudaStream_t s, std::function<void()> op) {
    capture_raw(s, [s, op]() { run_on(s, op); });
}
/* the operation `op` on stream s: recorded when s is being captured, else run now or queued (run_on) */
inline void on_stream(cudaStream_t s, std::function<void()> op) {
    if (capturing(s)) capture_push(s, std::move(op));
    else run_on(s, std::move(op));
}
/* whether an operation on s is kept for later (a capture records it, a deferring stream queues it) */
inline bool kept(cudaStream_t s) { return capturing(s) || deferring(s); }
/* a call CUDA refuses while a capture is under way: the error, and the capture is invalidated */
inline bool refused_in_capture(const char* func, cudaError_t* err) {
    if (!g_capture.active) return false;
    fprintf(stderr, "llmgen emulate: %s during a stream capture: cudaErrorStreamCaptureUnsupported "
                    "(the capture is invalidated)\n", func);
    g_capture.invalid = true;
    tl_last_error = cudaErrorStreamCaptureUnsupported;
    *err = cudaErrorStreamCaptureUnsupported;
    return true;
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

/* The end of a launch on one OS thread: its counts join the program's per-kernel totals. */
inline void Worker::finish_launch() {
    if (!stats.empty()) {
        smem_merge(kernel_display_name(kernel), stats);
        stats = KernelStats();
    }
}

inline void run_grid(dim3 grid, dim3 block, size_t shmem, void (*entry)(Worker*), const void* body,
                     const char* name) {
    if (tl_worker && tl_worker->current)
        fatal("a kernel launch from device code (dynamic parallelism) is not emulated");
    smem_register_report();
    const uint64_t nb = (uint64_t)grid.x * grid.y * grid.z;
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nt = omp_get_max_threads();
    if ((uint64_t)nt > nb) nt = (int)nb;
#endif
    if (nt <= 1) {
        Worker& w = worker();
        w.kernel = name;
        w.prepare(grid, block, shmem, entry, body);
        for (uint64_t b = 0; b < nb; ++b) w.run_block(block_index(grid, b));
        w.finish_launch();
        return;
    }
#ifdef _OPENMP
    const int64_t chunk = std::max<int64_t>(1, (int64_t)(nb / ((uint64_t)nt * 16)));
#pragma omp parallel num_threads(nt)
    {
        Worker& w = worker();
        w.kernel = name;
        w.prepare(grid, block, shmem, entry, body);
#pragma omp for schedule(dynamic, chunk)
        for (int64_t b = 0; b < (int64_t)nb; ++b) w.run_block(block_index(grid, (uint64_t)b));
        w.finish_launch();
    }
#endif
}

/* LLMGEN_LAUNCH lands here. `call` is a lambda that calls the kernel by name (so it inlines);
 * `name` is the kernel as the launch spells it (the key of the per-kernel counts); the arguments
 * are converted to the kernel's parameter types once, as a real launch does, and every CUDA
 * thread gets its own copy of them. */
template <class... P, class F, class... A>
inline void launch(void (*kernel)(P...), F call, const char* name, dim3 grid, dim3 block, size_t shmem,
                   cudaStream_t stream, A&&... a) {
    static_assert(sizeof...(P) == sizeof...(A), "LLMGEN_LAUNCH: wrong number of kernel arguments");
    const cudaError_t e = check_launch(reinterpret_cast<const void*>(kernel), grid, block, shmem);
    if (e != cudaSuccess) {
        set_error(e);
        return;
    }
    std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
    if (kept(stream)) { /* recorded or queued: the kernel with its converted arguments, run later */
        on_stream(stream, [call, args, grid, block, shmem, name]() mutable {
            auto body = [&call, &args]() { std::apply(call, args); };
            run_grid(grid, block, shmem, &fiber_entry<decltype(body)>, &body, name);
        });
        return;
    }
    auto body = [&call, &args]() { std::apply(call, args); };
    run_grid(grid, block, shmem, &fiber_entry<decltype(body)>, &body, name);
}

inline void* dynamic_smem() { return tl_worker->dyn_smem; }

} /* namespace llmgen_emu */

#define LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, ...)                                     \
    ::llmgen_emu::launch(kernel, [&](auto&... llmgen_arg_) { kernel(llmgen_arg_...); }, #kernel, dim3(grid), \
                         dim3(block), (size_t)(shmem_bytes), (cudaStream_t)(stream), ##__VA_ARGS__)
#define LLMGEN_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::llmgen_emu::dynamic_smem())

#endif /* LLMGEN_EMU_LAUNCH_H */
