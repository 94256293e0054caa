/* emu_atomics.h -- atomicAdd / Sub / Exch / Min / Max / And / Or / Xor / CAS / Inc / Dec.
 *
 * CONTRACT
 *   Correct across OS threads (blocks of one launch run concurrently): integer atomics are
 *   __atomic builtins (sequentially consistent); float, double, bf16, half (and their x2 forms)
 *   are compare-and-swap loops on the enclosing 32- or 64-bit word. 16-bit float adds compute in
 *   fp32 and round to nearest, as sm_90 does. The order of atomics from different blocks varies
 *   between runs (as on a GPU); within a block the schedule is deterministic.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_ATOMICS_H
#define LLMGEN_EMU_ATOMICS_H
#ifndef LLMGEN_EMULATE_H
#error "emu_atomics.h is a part of emulate.h: include emulate.h"
#endif

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

#endif /* LLMGEN_EMU_ATOMICS_H */
