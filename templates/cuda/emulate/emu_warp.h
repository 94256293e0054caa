/* emu_warp.h -- __syncthreads*, __syncwarp, __activemask, shuffles, votes, reduces, fences.
 *
 * CONTRACT
 *   Each is a call into the worker's barrier or warp exchange (emu_launch.h), fenced against the
 *   compiler so shared-memory accesses are not moved across it.
 *   - Shuffles follow PTX shfl.sync's lane formula (c = ((32 - width) << 8) | clamp), so width < 32
 *     and out-of-range source lanes behave as on the GPU; a source lane that is not in the
 *     exchange gives the caller its own value. Values up to 8 bytes.
 *   - Votes and reduces count only lanes that have not exited (a full-mask ballot after early
 *     returns shows 0 bits for them).
 *   - __activemask() cannot see convergence: it waits for the warp's live lanes like __syncwarp()
 *     and returns them.
 *   - Memory fences are sequentially consistent fences; __ldg/__ldcg/... and __stcg/... ignore their
 *     cache hints; clock64() reads a steady clock in ns; __trap() aborts.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_WARP_H
#define LLMGEN_EMU_WARP_H
#ifndef LLMGEN_EMULATE_H
#error "emu_warp.h is a part of emulate.h: include emulate.h"
#endif

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

#endif /* LLMGEN_EMU_WARP_H */
