/* emu_math.h -- math and bit intrinsics, and the bf16/fp16 functions cuda_bf16.h keeps device-only.
 *
 * CONTRACT
 *   - Fast intrinsics (__expf, __logf, __fdividef, rsqrtf, __tanhf, ...) are computed accurately with
 *     glibc, not with the GPU's approximations. __fadd_rn / __fmul_rn are never contracted into an
 *     FMA (llmgen_emu::opaque); __fmaf_rn and fmaf are fused on both sides.
 *   - Conversions to integers saturate and map NaN to 0, as PTX cvt does.
 *   - __byte_perm: prmt.b32's default mode, as CUDA documents it.
 *   - min/max: the overload set of CUDA's math_functions.h (mixed signedness compares unsigned).
 *   - __hfma and friends round once (the product of two 16-bit floats is exact in double; the sum
 *     is rounded to odd in float, then to nearest in bf16/fp16: no double rounding).
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_MATH_H
#define LLMGEN_EMU_MATH_H
#ifndef LLMGEN_EMULATE_H
#error "emu_math.h is a part of emulate.h: include emulate.h"
#endif

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
/* prmt.b32 (default mode): byte n of the result is byte ((s >> 4n) & 7) of the 8 bytes {y, x}, x's low byte
 * being byte 0, as CUDA documents __byte_perm (the fourth bit of each selector nibble is ignored) */
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xffu) << (8 * n);
    return r;
}
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

#endif /* LLMGEN_EMU_MATH_H */
