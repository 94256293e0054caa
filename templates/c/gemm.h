/* The C target's shared kernel helpers: vector types, vectorisable exp / GELU, and the GEMM engine every
 * linear kernel (and the attention) calls. Nothing here is model-specific: the per-instance constants come
 * from the callers. codegen/c.py pastes the pieces a program uses into its "kernel helpers" section; the
 * program declares llmgen_fail and includes <math.h>, <omp.h>, <stdint.h>, <stdlib.h>, <string.h> first. */

/* what a kernel body is: inlined into each caller, where its size parameters are literals gcc folds */
#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* how the schedule calls a body: the statement after it runs on every thread of a new team, whose work the
 * body's `omp for` loops (and the GEMM engine's tiles) split */
#define PARALLEL _Pragma("omp parallel")

// --------------------------------------------------------------------------------------------
// vector math: written as scalar functions that gcc vectorises inside `omp simd` loops
// (no libm calls in hot loops: glibc's expf/tanhf are scalar and were 5% of a step).

/* e^x for x in [-87, 88] (clamped outside), max error ~2 ulp: x = n ln2 + r with |r| <= ln2/2,
 * e^r by a degree-6 polynomial (Taylor-like minimax coefficients), 2^n put in the exponent bits. */
static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;      /* round(x / ln2): the 1.5*2^23 trick */
    float r = x - n * 0.693359375f;                                  /* ln2 split in two (Cody-Waite), */
    r = r + n * 2.12194440e-4f;                                      /* so r is exact to a few ulps */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* GPT-2's tanh GELU as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): the same function
 * as 0.5 x (1 + tanh(u)) without tanh's cancellation near -1. */
static inline float gelu_fwd(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + exp_fast(-2.0f * u));
}

/* d gelu / dx = s + 2 x s (1 - s) u'(x), s = sigmoid(2u): the derivative of 0.5 x (1 + tanh u) */
static inline float gelu_grad(float x) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    float s = 1.0f / (1.0f + exp_fast(-2.0f * u));
    float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

// --------------------------------------------------------------------------------------------
// the GEMM engine: C (m x n) = [C +] A (m x k) . B (k x n), fp32, row-major C.
//
// The BLIS structure (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
// Functionality", and Goto & van de Geijn, "Anatomy of High-Performance Matrix Multiplication"):
//   for jc (NC columns) / pc (KC of the reduction) / ic (MC rows):
//     pack A's MC x KC block into MR-row panels, K-major (stays in L2);
//     for jr (NR columns): pack B's KC x NR panel on first use (stays in L1/L2) while prefetching
//                          the next panel's source lines (weights stream from DRAM once per GEMM),
//       for ir (MR rows): the micro-kernel adds an MR x NR tile of C in registers; the epilogue
//                         (bias, GELU, dGELU) runs on the finished tile while it is in L1.
// KC, MC and NC are decided per GEMM from a CPU profile's caches (codegen/c.py; literals at each call site);
// the register tile MR x NR depends on the instruction set, which only the compiler knows, so it
// is chosen here by the preprocessor. The vectors are GCC vector extensions: gcc turns them into
// AVX-512, AVX2, SSE or NEON instructions, with no intrinsics to keep in sync per ISA.
//
// Determinism: every element of C is reduced by one thread, over KC blocks in order and k in order
// inside a block, so the bits never depend on the thread count (threads only split C).
//
// Register tiles: with AVX-512, 8 x 48 (8 x 3 accumulators + 3 B vectors + 1 broadcast = 28 of 32
// zmm): 24 FMAs per 3 loads and 8 broadcasts, and no partial tiles at GPT-2's sizes (B*T a multiple
// of 8; 768, 2304, 3072 and the padded vocabulary 50304 multiples of 48). 14 x 32 measured the same
// (within 1.5%) but cuts B*T = 256 into 18 tiles and a 4-row rest. -DGEMM_MR=.. -DGEMM_NV=.. override.
#if defined(__AVX512F__)
#define GEMM_VL 16     /* floats per vector register: zmm, */
#elif defined(__AVX__)
#define GEMM_VL 8      /* ymm, */
#else
#define GEMM_VL 4      /* SSE / NEON */
#endif
#ifndef GEMM_MR
#define GEMM_MR (GEMM_VL == 16 ? 8 : 4)   /* rows of the register tile (with AVX: 4 x 3 + 3 + 1 = 16 ymm) */
#define GEMM_NV 3                         /* vectors per row of the register tile */
#endif
#define GEMM_NR (GEMM_NV * GEMM_VL)  /* columns of the register tile */
_Static_assert(GEMM_MR <= GEMM_VL && GEMM_MR <= 16, "A panels are packed one vector of rows at a time");
#if defined(__GNUC__) && !defined(__clang__)
#define GEMM_SHUFFLE 1         /* __builtin_shuffle: vectorised transposes while packing */
#endif

typedef float vfloat __attribute__((vector_size(GEMM_VL * 4)));                /* 64-byte aligned: packed panels */
typedef float vfloat_u __attribute__((vector_size(GEMM_VL * 4), aligned(4)));  /* any alignment: C, inputs */
typedef int32_t vint __attribute__((vector_size(GEMM_VL * 4)));

enum { EPI_NONE, EPI_GELU, EPI_DGELU };

typedef struct {
    int m, n, k;                 /* C is m x n; the reduction runs over k */
    const float *a; long lda;    /* A(i,p) = a_t ? a[p*lda + i] : a[i*lda + p] */
    int a_t;
    const float *b; long ldb;    /* B(p,j) = b_t ? b[j*ldb + p] : b[p*ldb + j]  (b_t: a weight W[n][k]) */
    int b_t;
    float *c; long ldc;          /* C(i,j) = c[i*ldc + j] */
    int accumulate;              /* C += A.B instead of C = A.B */
    const float *bias;           /* the epilogue, applied to each finished tile: C += bias[j] (if bias), */
    int epi;                     /* then EPI_GELU: out = gelu(C) (C keeps the pre-activation), or */
    const float *pre;            /* EPI_DGELU: C *= gelu'(pre), pre shaped like C */
    float *out;
    int kc, mc, nc;              /* cache blocks (rounded here to whole MR / NR tiles) */
    int serial;                  /* 1: the calling thread does all of C (inside a loop the team already splits) */
} Gemm;

/* per-thread packing buffers, grown on demand and kept for the life of the thread */
static __thread float *gemm_apack, *gemm_bpack;
static __thread size_t gemm_apack_n, gemm_bpack_n;

static float *gemm_buffer(float **buf, size_t *have, size_t need) {
    if (need > *have) {
        free(*buf);
        size_t bytes = (need * sizeof(float) + 63) / 64 * 64;
        *buf = (float *)aligned_alloc(64, bytes);
        if (!*buf) llmgen_fail("out of memory for GEMM packing buffers (%zu bytes)", bytes);
        *have = need;
    }
    return *buf;
}

#ifdef GEMM_SHUFFLE
/* Transpose the VL x VL block v[row][lane] in registers: log2(VL) rounds; the round with half
 * size h swaps the off-diagonal h x h quarter-blocks of each 2h x 2h block (two-source shuffles). */
ALWAYS_INLINE void gemm_transpose(vfloat v[GEMM_VL]) {
    #pragma GCC unroll 8
    for (int h = GEMM_VL / 2; h >= 1; h /= 2) {
        vint lo, hi;
        #pragma GCC unroll 16
        for (int l = 0; l < GEMM_VL; l++) {
            lo[l] = (l & h) ? GEMM_VL + l - h : l;     /* row i   <- i's low half,  then (i+h)'s low half */
            hi[l] = (l & h) ? GEMM_VL + l : l + h;     /* row i+h <- i's high half, then (i+h)'s high half */
        }
        #pragma GCC unroll 16
        for (int i = 0; i < GEMM_VL; i++) {
            if (i & h) continue;
            vfloat a = v[i], b = v[i + h];
            v[i] = __builtin_shuffle(a, b, lo);
            v[i + h] = __builtin_shuffle(a, b, hi);
        }
    }
}
#endif

/* dst[p*ds + r] = r < nr ? src[r*ld + p] : 0 for r < min(ds, VL), p < kc: up to VL rows of a
 * row-major matrix become a K-major panel. Each p stores a whole vector, so when ds < VL it runs
 * (VL - ds) floats into the next p's slot, which the next store rewrites; panel buffers carry VL
 * floats of slack for the last one. */
ALWAYS_INLINE void gemm_pack_t(float *restrict dst, int ds, const float *restrict src, long ld, int nr, int kc) {
    int p = 0;
#ifdef GEMM_SHUFFLE
    for (; p + GEMM_VL <= kc; p += GEMM_VL) {
        vfloat v[GEMM_VL];
        #pragma GCC unroll 16
        for (int r = 0; r < GEMM_VL; r++) v[r] = r < nr ? *(const vfloat_u *)(src + r * ld + p) : (vfloat){0};
        gemm_transpose(v);
        #pragma GCC unroll 16
        for (int q = 0; q < GEMM_VL; q++) *(vfloat_u *)(dst + (long)(p + q) * ds) = v[q];
    }
#endif
    for (; p < kc; p++)
        for (int r = 0; r < (ds < GEMM_VL ? ds : GEMM_VL); r++) dst[(long)p * ds + r] = r < nr ? src[r * ld + p] : 0.0f;
}

/* A's rows i0.. (mr of them, mr <= MR) and reduction indices p0.. (kc) -> one MR x kc panel, K-major */
ALWAYS_INLINE void gemm_pack_a(float *restrict dst, const Gemm *g, int i0, int mr, int p0, int kc) {
    if (!g->a_t) {
        gemm_pack_t(dst, GEMM_MR, g->a + (long)i0 * g->lda + p0, g->lda, mr, kc);
    } else if (mr == GEMM_MR) {                                /* A^T stored: MR contiguous floats per p */
        for (int p = 0; p < kc; p++) {
            const float *s = g->a + (long)(p0 + p) * g->lda + i0;
            #pragma GCC unroll 16
            for (int i = 0; i < GEMM_MR; i++) dst[p * GEMM_MR + i] = s[i];
        }
    } else {
        for (int p = 0; p < kc; p++)
            for (int i = 0; i < GEMM_MR; i++)
                dst[p * GEMM_MR + i] = i < mr ? g->a[(long)(p0 + p) * g->lda + i0 + i] : 0.0f;
    }
}

/* B's columns j0.. (nr <= NR) and reduction indices p0.. (kc) -> one kc x NR panel */
ALWAYS_INLINE void gemm_pack_b(float *restrict dst, const Gemm *g, int j0, int nr, int p0, int kc) {
    if (g->b_t) {
        #pragma GCC unroll 4
        for (int v = 0; v < GEMM_NV; v++) {
            const int rows = nr - v * GEMM_VL < 0 ? 0 : (nr - v * GEMM_VL > GEMM_VL ? GEMM_VL : nr - v * GEMM_VL);
            gemm_pack_t(dst + v * GEMM_VL, GEMM_NR, g->b + (long)(j0 + v * GEMM_VL) * g->ldb + p0, g->ldb, rows, kc);
        }
    } else if (nr == GEMM_NR) {
        for (int p = 0; p < kc; p++) {
            const float *s = g->b + (long)(p0 + p) * g->ldb + j0;
            #pragma GCC unroll 4
            for (int v = 0; v < GEMM_NV; v++)
                *(vfloat *)(dst + p * GEMM_NR + v * GEMM_VL) = *(const vfloat_u *)(s + v * GEMM_VL);
        }
    } else {
        for (int p = 0; p < kc; p++)
            for (int j = 0; j < GEMM_NR; j++)
                dst[p * GEMM_NR + j] = j < nr ? g->b[(long)(p0 + p) * g->ldb + j0 + j] : 0.0f;
    }
}

/* The micro-kernel: C[MR x NR] (row stride ldc) = (load ? C : 0) + a . b over kc, with a an MR-row
 * panel and b an NR-column panel, both K-major. MR x NV vector accumulators live in registers;
 * each step loads NV B vectors and broadcasts MR values of A into MR x NV fused multiply-adds. */
ALWAYS_INLINE void gemm_micro(int kc, const float *restrict a, const float *restrict b, float *restrict c, long ldc,
                              int load) {
    vfloat acc[GEMM_MR][GEMM_NV];
    #pragma GCC unroll 16
    for (int i = 0; i < GEMM_MR; i++)
        #pragma GCC unroll 4
        for (int v = 0; v < GEMM_NV; v++)
            acc[i][v] = load ? *(const vfloat_u *)(c + i * ldc + v * GEMM_VL) : (vfloat){0};
    for (int p = 0; p < kc; p++) {
        vfloat bv[GEMM_NV];
        #pragma GCC unroll 4
        for (int v = 0; v < GEMM_NV; v++) bv[v] = *(const vfloat *)(b + p * GEMM_NR + v * GEMM_VL);
        #pragma GCC unroll 16
        for (int i = 0; i < GEMM_MR; i++) {
            vfloat ai = a[p * GEMM_MR + i] - (vfloat){0};   /* broadcast (x - 0 == x for every x, even -0) */
            #pragma GCC unroll 4
            for (int v = 0; v < GEMM_NV; v++) acc[i][v] += ai * bv[v];
        }
    }
    #pragma GCC unroll 16
    for (int i = 0; i < GEMM_MR; i++)
        #pragma GCC unroll 4
        for (int v = 0; v < GEMM_NV; v++) *(vfloat_u *)(c + i * ldc + v * GEMM_VL) = acc[i][v];
}

/* a tile cut by C's last rows or columns (mr < MR or nr < NR): through a full tile of scratch; rare, not inlined */
static __attribute__((noinline)) void gemm_micro_edge(int kc, const float *a, const float *b, float *c, long ldc,
                                                      int load, int mr, int nr) {
    float t[GEMM_MR * GEMM_NR] __attribute__((aligned(64)));
    if (load)
        for (int i = 0; i < mr; i++) for (int j = 0; j < nr; j++) t[i * GEMM_NR + j] = c[i * ldc + j];
    gemm_micro(kc, a, b, t, GEMM_NR, load);
    for (int i = 0; i < mr; i++) for (int j = 0; j < nr; j++) c[i * ldc + j] = t[i * GEMM_NR + j];
}

/* the epilogue of a finished tile (rows i0.., columns j0..), while it is still in L1 */
ALWAYS_INLINE void gemm_epilogue(const Gemm *g, int i0, int j0, int mr, int nr) {
    for (int i = 0; i < mr; i++) {
        float *c = g->c + (long)(i0 + i) * g->ldc + j0;
        if (g->bias) {
            const float *b = g->bias + j0;
            #pragma omp simd
            for (int j = 0; j < nr; j++) c[j] += b[j];
        }
        if (g->epi == EPI_GELU) {
            float *o = g->out + (long)(i0 + i) * g->ldc + j0;
            #pragma omp simd
            for (int j = 0; j < nr; j++) o[j] = gelu_fwd(c[j]);
        } else if (g->epi == EPI_DGELU) {
            const float *x = g->pre + (long)(i0 + i) * g->ldc + j0;
            #pragma omp simd
            for (int j = 0; j < nr; j++) c[j] *= gelu_grad(x[j]);
        }
    }
}

/* Software prefetch, part q of nq, of the source lines of B's panel at columns j.. (while the panel
 * before it is in use): the panel's first use would otherwise wait on DRAM (weights stream through
 * once per GEMM). Prefetches never fault, and addresses past the matrix are skipped. */
ALWAYS_INLINE void gemm_prefetch_b(const Gemm *g, int j, int p0, int kc, int q, int nq) {
    const int lines = g->b_t ? (kc + 15) / 16 : GEMM_NV;                 /* 64-byte lines per source row */
    const int rows = g->b_t ? (g->n - j < GEMM_NR ? g->n - j : GEMM_NR) : kc;
    const long total = (long)rows * lines, lo = total * q / nq, hi = total * (q + 1) / nq;
    for (long l = lo; l < hi; l++) {
        const int r = (int)(l / lines), c = (int)(l % lines) * 16;
        __builtin_prefetch(g->b_t ? g->b + (long)(j + r) * g->ldb + p0 + c : g->b + (long)(p0 + r) * g->ldb + j + c);
    }
}

/* How T threads split C: a tm x tn grid of blocks (tm * tn <= T) that minimises the slowest
 * thread's work, counted as its tiles' multiply-adds plus the A rows and B columns it packs
 * (a thread packs all of A's rows in its block row, all of B's columns in its block column). */
static void gemm_grid(int mt, int nt, int threads, int *tm_out, int *tn_out) {
    double best = 1e300;
    *tm_out = *tn_out = 1;
    for (int tn = 1; tn <= threads && tn <= nt; tn++) {
        int tm = threads / tn;
        if (tm > mt) tm = mt;
        int rows = (mt + tm - 1) / tm, cols = (nt + tn - 1) / tn;
        double cost = (double)rows * cols * GEMM_MR * GEMM_NR / (2.0 * GEMM_VL) + rows * GEMM_MR + cols * GEMM_NR;
        if (cost < best - 1e-9) { best = cost; *tm_out = tm; *tn_out = tn; }
    }
}

/* One thread's share of C = [C +] A.B: call inside a parallel region with a Gemm of literal sizes,
 * so that the compiler specialises all of this to the instance (this function is inlined);
 * with .serial = 1, all of C on the calling thread (anywhere). */
ALWAYS_INLINE void gemm_thread(const Gemm *g) {
    const int MR = GEMM_MR, NR = GEMM_NR;
    const int KC = g->kc, MC = g->mc / MR > 0 ? g->mc / MR * MR : MR, NC = g->nc / NR > 0 ? g->nc / NR * NR : NR;
    const int mt = (g->m + MR - 1) / MR, nt = (g->n + NR - 1) / NR;
    int tm, tn;
    gemm_grid(mt, nt, g->serial ? 1 : omp_get_num_threads(), &tm, &tn);
    const int t = g->serial ? 0 : omp_get_thread_num();
    if (t >= tm * tn) return;
    const int tr = t / tn, tc = t % tn;
    int i0 = (int)((long)mt * tr / tm) * MR, i1 = (int)((long)mt * (tr + 1) / tm) * MR;
    int j0 = (int)((long)nt * tc / tn) * NR, j1 = (int)((long)nt * (tc + 1) / tn) * NR;
    if (i1 > g->m) i1 = g->m;
    if (j1 > g->n) j1 = g->n;
    if (i0 >= i1 || j0 >= j1) return;
    float *ap = gemm_buffer(&gemm_apack, &gemm_apack_n, (size_t)(MC + MR) * KC + GEMM_VL);
    float *bp = gemm_buffer(&gemm_bpack, &gemm_bpack_n, (size_t)(NC + NR) * KC + GEMM_VL);
    for (int jc = j0; jc < j1; jc += NC) {
        const int nc = j1 - jc < NC ? j1 - jc : NC;
        for (int pc = 0; pc < g->k; pc += KC) {
            const int kc = g->k - pc < KC ? g->k - pc : KC;
            const int load = g->accumulate || pc > 0, last = pc + kc == g->k;
            for (int ic = i0; ic < i1; ic += MC) {
                const int mc = i1 - ic < MC ? i1 - ic : MC;
                for (int ir = 0; ir < mc; ir += MR)
                    gemm_pack_a(ap + (long)ir * kc, g, ic + ir, mc - ir < MR ? mc - ir : MR, pc, kc);
                for (int jr = 0; jr < nc; jr += NR) {
                    const int nr = nc - jr < NR ? nc - jr : NR;
                    float *bpanel = bp + (long)jr * kc;
                    if (ic == i0) gemm_pack_b(bpanel, g, jc + jr, nr, pc, kc);   /* reused by later ic blocks */
                    const int ntiles = (mc + MR - 1) / MR;
                    for (int ir = 0; ir < mc; ir += MR) {
                        const int mr = mc - ir < MR ? mc - ir : MR;
                        float *c = g->c + (long)(ic + ir) * g->ldc + jc + jr;
                        if (ic == i0 && jr + NR < nc) gemm_prefetch_b(g, jc + jr + NR, pc, kc, ir / MR, ntiles);
                        if (load && ir + MR < mc)                               /* the next tile of C */
                            for (int i = 0; i < MR; i++)
                                for (int v = 0; v < GEMM_NV; v++)
                                    __builtin_prefetch(c + (long)(MR + i) * g->ldc + v * GEMM_VL, 1);
                        if (mr == MR && nr == NR) gemm_micro(kc, ap + (long)ir * kc, bpanel, c, g->ldc, load);
                        else gemm_micro_edge(kc, ap + (long)ir * kc, bpanel, c, g->ldc, load, mr, nr);
                        if (last && (g->bias || g->epi != EPI_NONE)) gemm_epilogue(g, ic + ir, jc + jr, mr, nr);
                    }
                }
            }
        }
    }
}
