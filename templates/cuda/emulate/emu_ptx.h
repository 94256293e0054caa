/* emu_ptx.h -- C++ models of the PTX instructions ptx.cuh exposes, per the PTX ISA's documented
 * per-lane semantics.
 *
 * CONTRACT
 *   Kernels never call these directly: templates/cuda/ptx.cuh's ptx_* device functions call them
 *   under LLMGEN_EMULATE and inline PTX under nvcc, with one signature for both builds. Here, in
 *   namespace llmgen_emu::ptx:
 *   - mma_m16n8k16_bf16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32. With
 *       g = lane >> 2 (groupID) and t = lane % 4 (threadID_in_group), PTX ISA 9.7.14.5.8:
 *         A (16x16, row): a[j] holds a_{2j} (low 16 bits) and a_{2j+1} (high);
 *                         a_i is at row g + 8*((i>>1)&1), column 2t + (i&1) + 8*(i>>2)
 *         B (16x8, col):  b[j] holds b_{2j}, b_{2j+1}; b_i is at row (k) 2t + (i&1) + 8*(i>>1), column g
 *         C, D (16x8):    c[i] is at row g + 8*(i>>1), column 2t + (i&1)
 *       D = A*B + C with every product exact (bf16 x bf16 fits fp32) summed in fp32 in k order,
 *       starting from C. d may be the same array as c.
 *   - ldmatrix<NUM, TRANS>  ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 (9.7.14.5.15):
 *       lanes 8m .. 8m+7 give the addresses of rows 0..7 of matrix m (16 bytes each, 16-byte
 *       aligned; the addresses of lanes >= 8*NUM are not used); lane l receives in r[m] the
 *       elements (row l/4, columns 2(l%4), 2(l%4)+1) of matrix m, low column in the low half;
 *       with .trans the elements (rows 2(l%4), 2(l%4)+1, column l/4): the matrix transposed.
 *   - cp_async<CG>  cp.async.{cg,ca}.shared.global [dst], [src], 16, src_bytes: copies src_bytes
 *       (0..16) bytes and zero-fills the rest of the 16, AT ISSUE. What the GPU leaves pending is
 *       recorded instead (emu_launch.h's CpState): every copy belongs to its thread's current
 *       group (the commits before it); cp_async_commit closes the group; cp_async_wait(N) completes
 *       all but the N most recent groups, which makes their bytes visible to the issuing thread;
 *       a __syncthreads after that wait makes them visible to the block, a __syncwarp including
 *       the issuer to its warp. Reading a chunk before it is visible to the reader, through
 *       ldmatrix, ld_shared or a wmma load, aborts with a message naming the kernel, the block,
 *       both threads and the group; so does a store into a chunk whose copy is still in flight.
 *   - ld_shared / st_shared: plain shared-memory accesses of 1..16 bytes per lane, made
 *       warp-collective only so that their bank conflicts can be counted.
 *   - ex2_approx: ex2.approx.ftz.f32 as exp2f (glibc: within 1 ulp, usually correctly rounded)
 *       with subnormal inputs and results flushed to +-0. The GPU's instruction is within 2 ulp
 *       of the correctly rounded result (PTX ISA 9.7.3.21), so the two may differ by ~3 ulp.
 *   - pack_bf16x2: cvt.rn.bf16x2.f32: two floats rounded to nearest even, lo in the low half.
 *   Warp-collective here: mma, ldmatrix (.aligned: all 32 lanes must take part; a lane that has
 *   exited, or a partial last warp, aborts, as it is undefined on the GPU), cp_async, ld_shared,
 *   st_shared (every live lane of the warp must call them together: use src_bytes = 0 for lanes
 *   with nothing to copy). Lanes of a warp that meet at different collectives abort as divergent
 *   warp code. The last lane to arrive performs the whole instruction at once, as one warp
 *   instruction: reads of every lane before writes of any. Bank conflicts of every access with
 *   shared-memory addresses are counted per kernel (emu_banks.h).
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_PTX_H
#define LLMGEN_EMU_PTX_H
#ifndef LLMGEN_EMULATE_H
#error "emu_ptx.h is a part of emulate.h: include emulate.h"
#endif

namespace llmgen_emu {
inline bool device_accessible(const void* p, size_t bytes); /* emu_runtime.h: inside a cudaMalloc allocation? */

namespace ptx {

/* ---- the warp exchange ----------------------------------------------------------------------- */
inline void collective(Collective& c) {
    LLMGEN_EMU_COMPILER_FENCE();
    cur().warp_op(0xffffffffu, WOP_COLL, (uint64_t)(uintptr_t)&c, -1);
    LLMGEN_EMU_COMPILER_FENCE();
}

inline std::string where(Worker& w) {
    char buf[300];
    snprintf(buf, sizeof(buf), "kernel %s, block (%u,%u,%u)", kernel_display_name(w.kernel).c_str(), blockIdx.x,
             blockIdx.y, blockIdx.z);
    return buf;
}

/* .aligned instructions: all 32 lanes of the warp */
inline void require_full_warp(Worker& w, unsigned warp, uint32_t present, const char* what) {
    if (present == 0xffffffffu) return;
    char buf[500];
    snprintf(buf, sizeof(buf), "%s in %s, warp %u: lanes 0x%08x have exited or do not exist (a partial last warp); "
             "this .aligned instruction needs all 32 lanes of the warp (undefined on the GPU)", what,
             where(w).c_str(), warp, ~present);
    fatal(buf);
}

inline std::string describe_smem(Worker& w, uintptr_t a) {
    char buf[120];
    const uintptr_t d = (uintptr_t)w.dyn_smem;
    if (w.dyn_smem && a >= d && a < d + w.dyn_bytes)
        snprintf(buf, sizeof(buf), "dynamic shared memory + %zu", (size_t)(a - d));
    else
        snprintf(buf, sizeof(buf), "address %p", (void*)a);
    return buf;
}

/* The address of lane 0 (the others are not checked: a lookup per lane would cost too much) must
 * not lie in device memory: these instructions read or write shared memory only. */
inline void require_shared(Worker& w, uintptr_t a, const char* what) {
    if (!device_accessible((const void*)a, 1)) return;
    char buf[400];
    snprintf(buf, sizeof(buf), "%s in %s: address %p lies in memory from cudaMalloc, not in shared memory", what,
             where(w).c_str(), (void*)a);
    fatal(buf);
}

/* ---- cp.async visibility ----------------------------------------------------------------------- */
/* `reader` reads [p, p+bytes): one thread (reader = its index), or a whole warp (ldmatrix: its
 * rows go to several lanes; reader = any thread of the warp). */
inline void check_read(Worker& w, const void* p, size_t bytes, uint32_t reader, bool whole_warp, const char* what) {
    if (w.cp.chunks.empty() || bytes == 0) return;
    const uintptr_t a = (uintptr_t)p, end = a + bytes;
    for (uintptr_t c = a & ~(uintptr_t)15; c < end; c += 16) {
        auto it = w.cp.chunks.find(c);
        if (it == w.cp.chunks.end()) continue;
        const CpChunk& k = it->second;
        bool ok = false;
        const char* why = "";
        if (k.stage == CP_IN_FLIGHT) {
            why = "no cp.async.wait_group of that thread has covered the group yet: on a GPU the bytes may not "
                  "have arrived";
        } else if (k.stage == CP_WAITED) {
            ok = !whole_warp && k.issuer == reader;
            why = "that thread waited for it, but no __syncthreads (nor a __syncwarp with that thread) came between "
                  "its wait and this read, so the bytes need not be visible here";
        } else {
            ok = k.issuer / 32 == reader / 32;
            why = "that thread waited and then met its own warp at a __syncwarp, but no __syncthreads came after, so "
                  "the bytes need not be visible to other warps";
        }
        if (ok) continue;
        char buf[900];
        snprintf(buf, sizeof(buf), "%s in %s: %s %u reads shared memory (%s) that thread %u wrote with cp.async "
                 "(its group %u): %s", what, where(w).c_str(), whole_warp ? "the warp of thread" : "thread", reader,
                 describe_smem(w, c).c_str(), k.issuer, k.group, why);
        fatal(buf);
    }
}

inline void check_write(Worker& w, const void* p, size_t bytes, uint32_t writer, const char* what) {
    if (w.cp.chunks.empty() || bytes == 0) return;
    const uintptr_t a = (uintptr_t)p, end = a + bytes;
    for (uintptr_t c = a & ~(uintptr_t)15; c < end; c += 16) {
        auto it = w.cp.chunks.find(c);
        if (it == w.cp.chunks.end()) continue;
        if (it->second.stage == CP_IN_FLIGHT) {
            char buf[600];
            snprintf(buf, sizeof(buf), "%s in %s: thread %u writes shared memory (%s) that thread %u's cp.async "
                     "(its group %u) still has in flight: a wait_group (and a barrier) must come first", what,
                     where(w).c_str(), writer, describe_smem(w, c).c_str(), it->second.issuer, it->second.group);
            fatal(buf);
        }
        w.cp.chunks.erase(it); /* overwritten: nothing of the copy is left to track */
    }
}

/* ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ------------------------------------- */
struct MmaArgs : Collective {
    float* d;
    const uint32_t* a;
    const uint32_t* b;
    const float* c;
};
inline float bf16_bits_to_float(uint32_t bits16) { return u2f(bits16 << 16); }

inline void mma_run(Worker& w, unsigned warp, Collective** lanes, uint32_t present) {
    require_full_warp(w, warp, present, lanes[__builtin_ctz(present)]->what);
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaArgs& x = *static_cast<MmaArgs*>(lanes[l]);
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 8; ++i) {
            const uint32_t bits = (x.a[i >> 1] >> (16 * (i & 1))) & 0xffffu;
            A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = bf16_bits_to_float(bits);
        }
        for (int i = 0; i < 4; ++i) {
            const uint32_t bits = (x.b[i >> 1] >> (16 * (i & 1))) & 0xffffu;
            B[2 * t + (i & 1) + 8 * (i >> 1)][g] = bf16_bits_to_float(bits);
        }
        for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = x.c[i];
    }
    for (int l = 0; l < 32; ++l) {
        MmaArgs& x = *static_cast<MmaArgs*>(lanes[l]);
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) {
            const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            float s = C[row][col];
            for (int k = 0; k < 16; ++k) s = opaque(s + A[row][k] * B[k][col]); /* the product is exact */
            x.d[i] = s;
        }
    }
}

inline void mma_m16n8k16_bf16(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
    MmaArgs x;
    x.run = mma_run;
    x.what = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
    x.d = d;
    x.a = a;
    x.b = b;
    x.c = c;
    collective(x);
}

/* ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 ---------------------------------- */
struct LdmArgs : Collective {
    const void* addr;
    uint32_t* r;
};

template <int NUM, bool TRANS>
inline void ldmatrix_run(Worker& w, unsigned warp, Collective** lanes, uint32_t present) {
    const char* what = lanes[__builtin_ctz(present)]->what;
    require_full_warp(w, warp, present, what);
    uint16_t rows[NUM][8][8];
    uintptr_t addr[8];
    for (int m = 0; m < NUM; ++m) {
        for (int i = 0; i < 8; ++i) {
            addr[i] = (uintptr_t) static_cast<LdmArgs*>(lanes[8 * m + i])->addr;
            if (addr[i] % 16) {
                char buf[400];
                snprintf(buf, sizeof(buf), "%s in %s, warp %u: lane %d's row address %p is not 16-byte aligned", what,
                         where(w).c_str(), warp, 8 * m + i, (void*)addr[i]);
                fatal(buf);
            }
            check_read(w, (const void*)addr[i], 16, warp * 32, true, what);
            memcpy(rows[m][i], (const void*)addr[i], 16);
        }
        if (m == 0) require_shared(w, addr[0], what);
        count_phase(w.stats.smem[SMEM_LDMATRIX], addr, 8, 16); /* one matrix = one phase */
    }
    w.stats.smem[SMEM_LDMATRIX].instructions += 1;
    for (int l = 0; l < 32; ++l) {
        uint32_t* r = static_cast<LdmArgs*>(lanes[l])->r;
        const int g = l >> 2, t = l & 3;
        for (int m = 0; m < NUM; ++m) {
            const uint16_t lo = TRANS ? rows[m][2 * t][g] : rows[m][g][2 * t];
            const uint16_t hi = TRANS ? rows[m][2 * t + 1][g] : rows[m][g][2 * t + 1];
            r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
        }
    }
}

template <int NUM, bool TRANS>
inline void ldmatrix(uint32_t* r, const void* smem_row) {
    static_assert(NUM == 1 || NUM == 2 || NUM == 4, "ldmatrix: .x1, .x2 or .x4");
    static const char* names[2][3] = {
        {"ldmatrix.sync.aligned.m8n8.x1.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
         "ldmatrix.sync.aligned.m8n8.x4.shared.b16"},
        {"ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16",
         "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"}};
    LdmArgs x;
    x.run = ldmatrix_run<NUM, TRANS>;
    x.what = names[TRANS ? 1 : 0][NUM == 1 ? 0 : NUM == 2 ? 1 : 2];
    x.addr = smem_row;
    x.r = r;
    collective(x);
}

/* ---- counted shared-memory loads and stores --------------------------------------------------- */
struct AccessArgs : Collective {
    void* addr;
    void* value; /* load: where the lane's value goes; store: the lane's value */
    unsigned bytes;
};

inline void gather_addresses(Collective** lanes, uint32_t present, uintptr_t* addr, int* n) {
    *n = 0;
    for (uint32_t m = present; m; m &= m - 1)
        addr[(*n)++] = (uintptr_t) static_cast<AccessArgs*>(lanes[__builtin_ctz(m)])->addr;
}

inline void check_access(Worker& w, unsigned warp, const AccessArgs& x, int lane) {
    const unsigned b = x.bytes;
    if ((b & (b - 1)) != 0 || b > 16 || (uintptr_t)x.addr % b) {
        char buf[400];
        snprintf(buf, sizeof(buf), "%s in %s, warp %u: lane %d accesses %u bytes at %p (1, 2, 4, 8 or 16 bytes, "
                 "aligned to their size)", x.what, where(w).c_str(), warp, lane, b, x.addr);
        fatal(buf);
    }
}

inline void ld_shared_run(Worker& w, unsigned warp, Collective** lanes, uint32_t present) {
    uintptr_t addr[32] = {0};   /* zeroed: g++ -O2 cannot see that `present` is never empty */
    int n;
    gather_addresses(lanes, present, addr, &n);
    const unsigned bytes = static_cast<AccessArgs*>(lanes[__builtin_ctz(present)])->bytes;
    require_shared(w, addr[0], lanes[__builtin_ctz(present)]->what);
    count_warp_access(w.stats, SMEM_LOAD, addr, n, bytes);
    for (uint32_t m = present; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        AccessArgs& x = *static_cast<AccessArgs*>(lanes[l]);
        check_access(w, warp, x, l);
        check_read(w, x.addr, x.bytes, warp * 32 + (unsigned)l, false, x.what);
        memcpy(x.value, x.addr, x.bytes);
    }
}

inline void st_shared_run(Worker& w, unsigned warp, Collective** lanes, uint32_t present) {
    uintptr_t addr[32] = {0};   /* zeroed: g++ -O2 cannot see that `present` is never empty */
    int n;
    gather_addresses(lanes, present, addr, &n);
    const unsigned bytes = static_cast<AccessArgs*>(lanes[__builtin_ctz(present)])->bytes;
    require_shared(w, addr[0], lanes[__builtin_ctz(present)]->what);
    count_warp_access(w.stats, SMEM_STORE, addr, n, bytes);
    for (uint32_t m = present; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        AccessArgs& x = *static_cast<AccessArgs*>(lanes[l]);
        check_access(w, warp, x, l);
        check_write(w, x.addr, x.bytes, warp * 32 + (unsigned)l, x.what);
        memcpy(x.addr, x.value, x.bytes);
    }
}

template <class T>
inline T ld_shared(const T* p) {
    T v;
    AccessArgs x;
    x.run = ld_shared_run;
    x.what = sizeof(T) == 16 ? "ld.shared.v4.b32 (ptx_ld_shared)" : sizeof(T) == 8 ? "ld.shared.b64 (ptx_ld_shared)"
                                                                                  : "ld.shared (ptx_ld_shared)";
    x.addr = (void*)p;
    x.value = (void*)&v;
    x.bytes = sizeof(T);
    collective(x);
    return v;
}

template <class T>
inline void st_shared(T* p, const T& v) {
    AccessArgs x;
    x.run = st_shared_run;
    x.what = sizeof(T) == 16 ? "st.shared.v4.b32 (ptx_st_shared)" : sizeof(T) == 8 ? "st.shared.b64 (ptx_st_shared)"
                                                                                  : "st.shared (ptx_st_shared)";
    x.addr = (void*)p;
    x.value = (void*)&v;
    x.bytes = sizeof(T);
    collective(x);
}

/* ---- cp.async ------------------------------------------------------------------------------- */
inline std::atomic<bool> g_cp_trace{false};

inline CpThread& cp_thread(Worker& w, unsigned tid) {
    if (!w.cp.used) {
        w.cp.reset(w.n);
        w.cp.used = true;
    }
    return w.cp.threads[tid];
}

struct CpArgs : Collective {
    void* dst;
    const void* src;
    int src_bytes;
};

inline void cp_async_run(Worker& w, unsigned warp, Collective** lanes, uint32_t present) {
    uintptr_t addr[32] = {0};   /* zeroed: g++ -O2 cannot see that `present` is never empty */
    int n = 0;
    const bool trace = g_cp_trace.load(std::memory_order_relaxed);
    for (uint32_t m = present; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        const CpArgs& x = *static_cast<CpArgs*>(lanes[l]);
        const unsigned tid = warp * 32 + (unsigned)l;
        if ((uintptr_t)x.dst % 16 || (x.src_bytes > 0 && (uintptr_t)x.src % 16) || x.src_bytes < 0 ||
            x.src_bytes > 16) {
            char buf[400];
            snprintf(buf, sizeof(buf), "%s in %s: thread %u copies %d bytes from %p to %p (both 16-byte aligned, "
                     "0 <= src-size <= 16)", x.what, where(w).c_str(), tid, x.src_bytes, x.src, x.dst);
            fatal(buf);
        }
        unsigned char tmp[16] = {0};
        if (x.src_bytes > 0) memcpy(tmp, x.src, (size_t)x.src_bytes);
        check_write(w, x.dst, 16, tid, x.what); /* over a copy still in flight: a race on the GPU */
        memcpy(x.dst, tmp, 16);
        CpThread& t = cp_thread(w, tid);
        w.cp.chunks[(uintptr_t)x.dst] = CpChunk{tid, t.committed, CP_IN_FLIGHT};
        t.copies.emplace_back((uintptr_t)x.dst, t.committed);
        if (trace) t.trace += "c ";
        addr[n++] = (uintptr_t)x.dst;
    }
    if (n) require_shared(w, addr[0], lanes[__builtin_ctz(present)]->what);
    w.stats.cp_copies += (uint64_t)n;
    count_warp_access(w.stats, SMEM_CP_ASYNC, addr, n, 16);
}

template <bool CG>
inline void cp_async16(void* smem, const void* gmem, int src_bytes) {
    CpArgs x;
    x.run = cp_async_run;
    x.what = CG ? "cp.async.cg.shared.global (16 bytes)" : "cp.async.ca.shared.global (16 bytes)";
    x.dst = smem;
    x.src = gmem;
    x.src_bytes = src_bytes;
    collective(x);
}

inline void cp_async_commit() {
    Worker& w = cur();
    CpThread& t = cp_thread(w, w.current->tid);
    t.committed += 1;
    w.stats.cp_commits += 1;
    if (g_cp_trace.load(std::memory_order_relaxed)) t.trace += "C ";
}

inline void cp_async_wait(int n) {
    LLMGEN_EMU_COMPILER_FENCE();
    Worker& w = cur();
    const unsigned tid = w.current->tid;
    CpThread& t = cp_thread(w, tid);
    const uint32_t pending = t.committed - t.complete;
    w.stats.cp_waits += 1;
    w.stats.cp_max_pending = std::max(w.stats.cp_max_pending, pending);
    if (g_cp_trace.load(std::memory_order_relaxed)) t.trace += "W" + std::to_string(n) + " ";
    const uint32_t target = t.committed > (uint32_t)n ? t.committed - (uint32_t)n : 0u;
    if (target <= t.complete) return;
    t.complete = target;
    size_t keep = 0;
    for (size_t i = 0; i < t.copies.size(); ++i) {
        const auto cg = t.copies[i];
        if (cg.second >= target) {
            t.copies[keep++] = cg;
            continue;
        }
        auto it = w.cp.chunks.find(cg.first);
        if (it != w.cp.chunks.end() && it->second.issuer == tid && it->second.group == cg.second &&
            it->second.stage == CP_IN_FLIGHT) {
            it->second.stage = CP_WAITED;
            w.cp.waited.push_back(cg.first);
        }
    }
    t.copies.resize(keep);
    LLMGEN_EMU_COMPILER_FENCE();
}

/* ---- math ---------------------------------------------------------------------------------- */
inline float ex2_approx_ftz(float x) {
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.0f;
    float r = exp2f(x);
    if (std::fpclassify(r) == FP_SUBNORMAL) r = 0.0f; /* 2^x > 0: flushed to +0 */
    return r;
}

inline uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat16 l = __float2bfloat16_rn(lo), h = __float2bfloat16_rn(hi);
    uint16_t lb, hb;
    memcpy(&lb, &l, 2);
    memcpy(&hb, &h, 2);
    return (uint32_t)lb | ((uint32_t)hb << 16);
}

} /* namespace ptx */

/* ---- host-side controls and the per-thread trace (for tests) ---------------------------------- */
/* Record, per thread of the running block, its cp.async events ("c" copy, "C" commit, "W<n>" wait). */
inline void cp_async_trace(bool on) { ptx::g_cp_trace.store(on); }
/* The calling CUDA thread's cp.async events in this block so far (with cp_async_trace(true)). */
inline std::string cp_async_trace_of_this_thread() {
    Worker& w = cur();
    return w.cp.used ? w.cp.threads[w.current->tid].trace : std::string();
}

} /* namespace llmgen_emu */

#endif /* LLMGEN_EMU_PTX_H */
