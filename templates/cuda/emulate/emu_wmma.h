/* emu_wmma.h -- tensor-core fragments: the nvcuda::wmma API of <mma.h>, 16x16x16 tiles.
 *
 * CONTRACT
 *   The fragment layout of wmma is opaque (which elements a lane holds is unspecified). Here every
 *   lane holds the whole tile (num_elements = rows*cols, row-major in x[]) and computes every
 *   product itself, which satisfies the API for code that touches fragments only through fill /
 *   load / store / mma (or applies the same operation to every x[i]).
 *   - load_matrix_sync reads the whole tile; store_matrix_sync writes only this lane's share
 *     (elements e with e % 32 == lane), so a lane that reads what others stored before a
 *     __syncwarp() sees stale memory here, as it could on the GPU.
 *   - Pointers must be 256-bit aligned and ldm a multiple of 16 bytes (the documented rules);
 *     a violation aborts naming the call.
 *   - mma_sync: exact products summed in fp32 in k order, starting from c.
 *   - Loads and stores of shared memory count bank conflicts (emu_banks.h: the per-lane layout is
 *     modelled, as wmma does not document it); loads check that what cp.async wrote is visible.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_WMMA_H
#define LLMGEN_EMU_WMMA_H
#ifndef LLMGEN_EMULATE_H
#error "emu_wmma.h is a part of emulate.h: include emulate.h"
#endif

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

/* The shared-memory accesses of a wmma load or store, as emu_banks.h models them, are counted once
 * per warp (by lane 0), when p is shared memory: not in a cudaMalloc allocation, not on the
 * thread's own stack. */
inline bool wmma_counts(const void* p) {
    Worker& w = cur();
    if ((w.current->tid & 31) != 0) return false;
    const char* c = (const char*)p;
    const Fiber* f = w.current;
    if (c >= f->stack_lo && c < f->stack_lo + f->stack_bytes) return false;
    return !device_accessible(p, 1);
}
/* a 16x16 A or B tile: 16 stored lines ldm elements apart; like ldmatrix.x4, each 16-byte column
 * segment is read in two phases of 8 lines (lines 0-7, 8-15) */
inline void wmma_count_ab(const void* p, unsigned ldm, size_t elem) {
    if (!wmma_counts(p)) return;
    const size_t line = (size_t)ldm * elem;
    SmemCount& c = cur().stats.smem[SMEM_WMMA_LOAD];
    c.instructions += 1;
    uintptr_t addr[8];
    for (size_t seg = 0; seg < elem; ++seg)      /* 16 elements of `elem` bytes: `elem` segments of 16 bytes */
        for (int half = 0; half < 2; ++half) {
            for (int i = 0; i < 8; ++i) addr[i] = (uintptr_t)p + (size_t)(8 * half + i) * line + 16 * seg;
            count_phase(c, addr, 8, 16);
        }
}
/* a 16x16 accumulator tile in the mma layout: lane l holds columns 8j + 2(l%4) + {0,1} of rows
 * l/4 and l/4 + 8, j = 0, 1: a pair per access row-major, one element per access column-major */
inline void wmma_count_acc(const void* p, unsigned ldm, size_t elem, bool row_major, SmemKind kind) {
    if (!wmma_counts(p)) return;
    KernelStats& s = cur().stats;
    uintptr_t addr[32];
    for (int j = 0; j < 2; ++j)
        for (int i = 0; i < 4; ++i) {
            if (row_major && (i & 1)) continue; /* the pair (i, i+1) is one access */
            for (int l = 0; l < 32; ++l) {
                const size_t row = (size_t)((l >> 2) + 8 * (i >> 1)), col = (size_t)(8 * j + 2 * (l & 3) + (i & 1));
                addr[l] = (uintptr_t)p + (row_major ? row * ldm + col : col * ldm + row) * elem;
            }
            count_warp_access(s, kind, addr, 32, (unsigned)(row_major ? 2 * elem : elem));
        }
}
/* a wmma load reads for the whole warp: what cp.async wrote must be visible to it */
inline void wmma_check_read(const void* p, unsigned ldm, size_t elem, int lines, const char* what) {
    Worker& w = cur();
    if (w.cp.chunks.empty()) return;
    for (int r = 0; r < lines; ++r)
        ptx::check_read(w, (const char*)p + (size_t)r * ldm * elem, 16 * elem, w.current->tid, true, what);
}
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
    llmgen_emu::wmma_check_read(p, ldm, sizeof(T), 16, "wmma::load_matrix_sync");
    llmgen_emu::wmma_count_ab(p, ldm, sizeof(T));
    const bool row = std::is_same<L, row_major>::value;
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = row ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t layout) {
    llmgen_emu::wmma_check(p, ldm, sizeof(T), "wmma::load_matrix_sync");
    llmgen_emu::wmma_check_read(p, ldm, sizeof(T), 16, "wmma::load_matrix_sync");
    llmgen_emu::wmma_count_acc(p, ldm, sizeof(T), layout == mem_row_major, llmgen_emu::SMEM_WMMA_LOAD);
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.x[r * f.cols + c] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
    llmgen_emu::wmma_check(p, ldm, sizeof(T), "wmma::store_matrix_sync");
    llmgen_emu::wmma_count_acc(p, ldm, sizeof(T), layout == mem_row_major, llmgen_emu::SMEM_WMMA_STORE);
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

#endif /* LLMGEN_EMU_WMMA_H */
