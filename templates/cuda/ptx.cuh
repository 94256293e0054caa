/* ptx.cuh -- the PTX instructions a FlashAttention-2-class kernel needs, one device function each,
 * with ONE signature for both builds: inline PTX under nvcc, the PTX ISA's documented per-lane
 * semantics modelled in C++ under LLMGEN_EMULATE (emulate/emu_ptx.h), so the same kernel source
 * runs, is checked lane by lane, and has its bank conflicts counted on the CPU.
 *
 * CONTRACT
 *   Include it after emulate.h (or, under nvcc, after the CUDA headers); it includes nothing else
 *   and holds no Jinja syntax, so the generator may paste it into train.cu. nvcc: sm_80 or
 *   newer (mma bf16 and cp.async; ldmatrix needs sm_75). Pointers named smem must point into
 *   shared memory, gmem into global memory.
 *
 *   Fragments (g = lane >> 2, t = lane % 4; bf16 pairs packed low element first):
 *     ptx_mma_m16n8k16_bf16(d, a, b, c)   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
 *         D (16x8) = A (16x16) * B (16x8) + C, fp32 accumulation; d may be c.
 *         a[4]: a[j] = (A[g + 8*(j&1)][2t + 8*(j>>1)], A[same row][that column + 1])
 *         b[2]: b[j] = (B[2t + 8j][g], B[2t + 8j + 1][g])
 *         c[4], d[4]: c[i] = C[g + 8*(i>>1)][2t + (i&1)]
 *     ptx_ldmatrix_x{1,2,4}(r, smem_row)        ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16
 *     ptx_ldmatrix_x{1,2,4}_trans(r, smem_row)  the same with .trans
 *         Lane 8m + i passes the address of row i of 8x8 matrix m (16 bytes, 16-byte aligned);
 *         r[m] gets (M[g][2t], M[g][2t+1]) of matrix m, or with .trans (M[2t][g], M[2t+1][g]).
 *         So ldmatrix_x4 of the four 8x8 quarters of a row-major 16x16 tile (lanes 0-7 rows 0-7,
 *         8-15 rows 8-15 of columns 0-7, then 16-31 the same for columns 8-15) is exactly mma's A
 *         fragment; B's fragment is ldmatrix_x2_trans of a row-major 16x8 (k x n) tile (V in P V;
 *         lanes 0-15 address its rows), or ldmatrix_x2 of a row-major 8x16 (n x k) tile (K in
 *         Q K^T; lanes 0-7 address its rows for k 0-7, lanes 8-15 for k 8-15).
 *   Asynchronous copies (16 bytes, global -> shared):
 *     ptx_cp_async_cg16(smem, gmem, src_bytes = 16)  cp.async.cg.shared.global [smem], [gmem], 16, src_bytes
 *     ptx_cp_async_ca16(smem, gmem, src_bytes = 16)  the same through L1 (.ca)
 *         copies src_bytes (0..16) bytes and zero-fills the rest; both pointers 16-byte aligned.
 *     ptx_cp_async_commit()       cp.async.commit_group
 *     ptx_cp_async_wait<N>()      cp.async.wait_group N: all but the N most recent groups are done
 *     ptx_cp_async_wait_all()     cp.async.wait_all
 *         The bytes are visible to the issuing thread after the wait, to the block after a
 *         __syncthreads() that follows the wait.
 *   Math and conversions:
 *     ptx_ex2_approx(x)           ex2.approx.ftz.f32: 2^x within 2 ulp (the emulation: exp2f)
 *     ptx_pack_bf16x2(lo, hi)     cvt.rn.bf16x2.f32: two floats as bf16, lo in the low half
 *   Counted shared-memory accesses (plain loads and stores under nvcc):
 *     ptx_ld_shared(smem)         T of 1, 2, 4, 8 or 16 bytes, aligned to its size
 *     ptx_st_shared(smem, v)
 *
 * RULES THE EMULATION ENFORCES (a violation aborts naming the kernel, block and threads)
 *   - mma and ldmatrix are .aligned: all 32 lanes of the warp execute them together (no lane may
 *     have exited; no partial last warp).
 *   - cp.async, ptx_ld_shared and ptx_st_shared are warp-collective in the emulation (the GPU does
 *     not need that, the bank-conflict count does): every live lane of the warp calls them
 *     together. Give lanes with nothing to copy src_bytes = 0 instead of skipping the call.
 *   - What cp.async wrote may be read (ldmatrix, ptx_ld_shared, wmma loads) only once it is
 *     visible to the reader: after the issuer's wait_group covering its group, and a __syncthreads
 *     (or, within the issuer's warp, a __syncwarp) for other threads; a store into a chunk whose
 *     copy is still in flight aborts too. Plain C++ reads of shared memory are not checked.
 *   Bank conflicts of ldmatrix, cp.async, the counted accesses and wmma are counted per kernel:
 *   see emulate/emu_banks.h (LLMGEN_EMU_BANK_CONFLICTS=1 prints a table at exit).
 */
#ifndef LLMGEN_PTX_CUH
#define LLMGEN_PTX_CUH

#include <stdint.h>

#ifdef LLMGEN_EMULATE
#ifndef LLMGEN_EMULATE_H
#error "ptx.cuh: include emulate.h first"
#endif
#define LLMGEN_PTX_FN inline
#else
#define LLMGEN_PTX_FN __device__ __forceinline__
/* a generic pointer into shared memory as the 32-bit shared-window address PTX's [addr] takes */
LLMGEN_PTX_FN uint32_t llmgen_smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
#endif

/* ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ---------------------------------------- */
LLMGEN_PTX_FN void ptx_mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         const float (&c)[4]) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::mma_m16n8k16_bf16(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{ %0, %1, %2, %3 }, { %4, %5, %6, %7 }, { %8, %9 }, { %10, %11, %12, %13 };\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

/* ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 ----------------------------------- */
LLMGEN_PTX_FN void ptx_ldmatrix_x1(uint32_t (&r)[1], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<1, false>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 { %0 }, [%1];\n"
                 : "=r"(r[0]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}
LLMGEN_PTX_FN void ptx_ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<2, false>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 { %0, %1 }, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}
LLMGEN_PTX_FN void ptx_ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<4, false>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 { %0, %1, %2, %3 }, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}
LLMGEN_PTX_FN void ptx_ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<1, true>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 { %0 }, [%1];\n"
                 : "=r"(r[0]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}
LLMGEN_PTX_FN void ptx_ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<2, true>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 { %0, %1 }, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}
LLMGEN_PTX_FN void ptx_ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::ldmatrix<4, true>(r, smem_row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 { %0, %1, %2, %3 }, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(llmgen_smem_u32(smem_row)));
#endif
}

/* ---- cp.async (16 bytes) with commit / wait groups ---------------------------------------------- */
LLMGEN_PTX_FN void ptx_cp_async_cg16(void* smem, const void* gmem, int src_bytes = 16) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::cp_async16<true>(smem, gmem, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(llmgen_smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
#endif
}
LLMGEN_PTX_FN void ptx_cp_async_ca16(void* smem, const void* gmem, int src_bytes = 16) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::cp_async16<false>(smem, gmem, src_bytes);
#else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(llmgen_smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
#endif
}
LLMGEN_PTX_FN void ptx_cp_async_commit() {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
LLMGEN_PTX_FN void ptx_cp_async_wait() {
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group N: a small constant");
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
LLMGEN_PTX_FN void ptx_cp_async_wait_all() {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::cp_async_commit();
    llmgen_emu::ptx::cp_async_wait(0);
#else
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/* ---- math and conversions ----------------------------------------------------------------------- */
LLMGEN_PTX_FN float ptx_ex2_approx(float x) {
#ifdef LLMGEN_EMULATE
    return llmgen_emu::ptx::ex2_approx_ftz(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}
LLMGEN_PTX_FN uint32_t ptx_pack_bf16x2(float lo, float hi) {
#ifdef LLMGEN_EMULATE
    return llmgen_emu::ptx::pack_bf16x2(lo, hi);
#else
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo)); /* first source -> upper half */
    return r;
#endif
}

/* ---- counted shared-memory accesses ------------------------------------------------------------- */
template <class T>
LLMGEN_PTX_FN T ptx_ld_shared(const T* smem) {
#ifdef LLMGEN_EMULATE
    return llmgen_emu::ptx::ld_shared(smem);
#else
    return *smem;
#endif
}
template <class T>
LLMGEN_PTX_FN void ptx_st_shared(T* smem, const T& v) {
#ifdef LLMGEN_EMULATE
    llmgen_emu::ptx::st_shared(smem, v);
#else
    *smem = v;
#endif
}

#endif /* LLMGEN_PTX_CUH */
