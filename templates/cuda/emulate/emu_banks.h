/* emu_banks.h -- shared-memory bank conflicts and cp.async counts, per kernel.
 *
 * CONTRACT
 *   The warp-collective shared-memory accesses of the emulation (ldmatrix, the counted loads and
 *   stores of ptx.cuh, the shared-memory side of cp.async: emu_ptx.h; wmma loads and stores:
 *   emu_wmma.h) see all 32 lanes' addresses at once and are counted here, accumulated per kernel
 *   name (the first argument of LLMGEN_LAUNCH, as written).
 *   - The model: 32 banks of 4 bytes; word w lies in bank w % 32. A warp access is split into
 *     phases of 128 bytes: accesses of up to 4 bytes per lane are one phase of 32 lanes, 8 bytes
 *     two phases of 16 lanes, 16 bytes four phases of 8 lanes (ldmatrix: one phase per 8x8
 *     matrix, its 8 rows of 16 bytes). A phase costs as many wavefronts as the largest number of
 *     DISTINCT 4-byte words that fall in one bank (lanes reading the same word share it): 1 is
 *     conflict-free, 8 is an 8-way conflict. Counted per access kind: instructions, phases (the
 *     ideal wavefronts), wavefronts, and the worst degree seen.
 *   - wmma's per-lane layout is not documented, so its accesses are modelled: a 16-bit A/B tile
 *     load as ldmatrix.x4 (four phases of 8 rows x 16 bytes: rows 0-7 and 8-15 of each 16-byte
 *     column half), an accumulator load/store as the mma accumulator layout (lane l holds columns
 *     2(l%4), 2(l%4)+1 of rows l/4 and l/4+8 in each 8-column half: one 2-element access per lane
 *     and register pair when stored row-major, one element per lane and register column-major).
 *   - cp.async: copies issued, groups committed, waits, and the most groups a thread still had
 *     pending at a wait (2 for a double-buffered pipeline that waits with one group in flight).
 *
 * READING THE COUNTS
 *   - In a program: llmgen_emu::smem_stats("kernel") (a KernelStats, zeros when never counted),
 *     llmgen_emu::smem_reset().
 *   - From a shared library (the in-process runner): extern "C" llmgen_emu_smem_report(buf, cap)
 *     writes the JSON object {kernel: {kind: {instructions, phases, wavefronts, max_way}, ...,
 *     "cp_async": {copies, commits, waits, max_pending_groups}}} and returns its length (like
 *     snprintf: call again with a larger buffer when it is >= cap); llmgen_emu_smem_reset().
 *   - At exit, when the environment variable LLMGEN_EMU_BANK_CONFLICTS is set: "1" or "stderr"
 *     prints a table to stderr; any other value is a file path the JSON is written to.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_BANKS_H
#define LLMGEN_EMU_BANKS_H
#ifndef LLMGEN_EMULATE_H
#error "emu_banks.h is a part of emulate.h: include emulate.h"
#endif

namespace llmgen_emu {

enum SmemKind : int {
    SMEM_LDMATRIX, SMEM_WMMA_LOAD, SMEM_WMMA_STORE, SMEM_LOAD, SMEM_STORE, SMEM_CP_ASYNC, SMEM_KINDS
};
inline const char* smem_kind_name(int k) {
    static const char* names[SMEM_KINDS] = {"ldmatrix", "wmma_load", "wmma_store", "ld_shared", "st_shared",
                                            "cp_async_store"};
    return names[k];
}

struct SmemCount {
    uint64_t instructions = 0; /* warp-level instructions */
    uint64_t phases = 0;       /* 128-byte phases: the wavefronts a conflict-free access needs */
    uint64_t wavefronts = 0;   /* the wavefronts the bank conflicts make it take */
    uint32_t max_way = 0;      /* the worst conflict degree of one phase */
};

struct KernelStats {
    SmemCount smem[SMEM_KINDS];
    uint64_t cp_copies = 0, cp_commits = 0, cp_waits = 0;
    uint32_t cp_max_pending = 0; /* the most committed groups one thread had pending at a wait */
    bool empty() const {
        if (cp_copies || cp_commits || cp_waits) return false;
        for (const SmemCount& c : smem)
            if (c.instructions) return false;
        return true;
    }
    void add(const KernelStats& o) {
        for (int k = 0; k < SMEM_KINDS; ++k) {
            smem[k].instructions += o.smem[k].instructions;
            smem[k].phases += o.smem[k].phases;
            smem[k].wavefronts += o.smem[k].wavefronts;
            smem[k].max_way = std::max(smem[k].max_way, o.smem[k].max_way);
        }
        cp_copies += o.cp_copies;
        cp_commits += o.cp_commits;
        cp_waits += o.cp_waits;
        cp_max_pending = std::max(cp_max_pending, o.cp_max_pending);
    }
};

/* The conflict degree of one phase: n accesses of `bytes` bytes each (1, 2, 4, 8 or 16; aligned to
 * their size) at the given addresses. The largest number of distinct 4-byte words in one bank. */
inline unsigned bank_degree(const uintptr_t* addr, int n, unsigned bytes) {
    uintptr_t words[128];
    int nw = 0;
    for (int i = 0; i < n; ++i) {
        const uintptr_t first = addr[i] / 4, last = (addr[i] + (bytes ? bytes : 1) - 1) / 4;
        for (uintptr_t w = first; w <= last && nw < 128; ++w) words[nw++] = w;
    }
    unsigned per_bank[32] = {0};
    unsigned worst = n > 0 ? 1u : 0u;
    for (int i = 0; i < nw; ++i) {
        bool seen = false;
        for (int j = 0; j < i && !seen; ++j) seen = words[j] == words[i];
        if (seen) continue;
        const unsigned c = ++per_bank[words[i] % 32];
        if (c > worst) worst = c;
    }
    return worst;
}

/* One phase of an instruction already counted */
inline void count_phase(SmemCount& c, const uintptr_t* addr, int n, unsigned bytes) {
    const unsigned d = bank_degree(addr, n, bytes);
    c.phases += 1;
    c.wavefronts += d;
    if (d > c.max_way) c.max_way = d;
}

/* One warp-level access: addr[i] for the n participating lanes in lane order, `bytes` per lane,
 * split into phases of 128 bytes (8 lanes of 16 bytes, 16 of 8, 32 of up to 4). */
inline void count_warp_access(KernelStats& s, SmemKind kind, const uintptr_t* addr, int n, unsigned bytes) {
    if (n <= 0) return;
    const int per_phase = bytes >= 16 ? 8 : bytes == 8 ? 16 : 32;
    SmemCount& c = s.smem[kind];
    c.instructions += 1;
    for (int p = 0; p < n; p += per_phase) count_phase(c, addr + p, std::min(per_phase, n - p), bytes);
}

/* ---- per-kernel totals of the whole program ---- */
inline std::mutex g_stats_mutex;
inline std::map<std::string, KernelStats> g_stats;

inline std::string kernel_display_name(const char* spelled) {
    std::string s = spelled ? spelled : "?";
    while (s.size() >= 2 && s.front() == '(' && s.back() == ')') s = s.substr(1, s.size() - 2);
    return s;
}

inline void smem_merge(const std::string& kernel, const KernelStats& s) {
    if (s.empty()) return;
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    g_stats[kernel].add(s);
}

inline KernelStats smem_stats(const char* kernel) {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    auto it = g_stats.find(kernel_display_name(kernel));
    return it == g_stats.end() ? KernelStats() : it->second;
}

inline void smem_reset() {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    g_stats.clear();
}

inline std::string json_escape(const std::string& s) {
    std::string o;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') o += '\\';
        if ((unsigned char)ch < 0x20) continue;
        o += ch;
    }
    return o;
}

inline std::string smem_report_json() {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    std::string o = "{";
    bool first = true;
    char buf[256];
    for (const auto& kv : g_stats) {
        o += first ? "\"" : ", \"";
        first = false;
        o += json_escape(kv.first) + "\": {";
        for (int k = 0; k < SMEM_KINDS; ++k) {
            const SmemCount& c = kv.second.smem[k];
            snprintf(buf, sizeof(buf),
                     "\"%s\": {\"instructions\": %llu, \"phases\": %llu, \"wavefronts\": %llu, \"max_way\": %u}, ",
                     smem_kind_name(k), (unsigned long long)c.instructions, (unsigned long long)c.phases,
                     (unsigned long long)c.wavefronts, c.max_way);
            o += buf;
        }
        const KernelStats& s = kv.second;
        snprintf(buf, sizeof(buf),
                 "\"cp_async\": {\"copies\": %llu, \"commits\": %llu, \"waits\": %llu, \"max_pending_groups\": %u}}",
                 (unsigned long long)s.cp_copies, (unsigned long long)s.cp_commits, (unsigned long long)s.cp_waits,
                 s.cp_max_pending);
        o += buf;
    }
    return o + "}";
}

inline void smem_report_table(FILE* f) {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    fprintf(f, "llmgen emulate: shared-memory accesses per kernel (32 banks x 4 bytes; way = wavefronts / phases, "
               "1.00 = conflict-free)\n");
    fprintf(f, "%-40s %-15s %12s %12s %12s %6s %7s\n", "kernel", "access", "instructions", "phases", "wavefronts",
            "way", "max-way");
    for (const auto& kv : g_stats) {
        for (int k = 0; k < SMEM_KINDS; ++k) {
            const SmemCount& c = kv.second.smem[k];
            if (!c.instructions) continue;
            fprintf(f, "%-40s %-15s %12llu %12llu %12llu %6.2f %7u\n", kv.first.c_str(), smem_kind_name(k),
                    (unsigned long long)c.instructions, (unsigned long long)c.phases,
                    (unsigned long long)c.wavefronts, c.phases ? (double)c.wavefronts / (double)c.phases : 0.0,
                    c.max_way);
        }
        const KernelStats& s = kv.second;
        if (s.cp_copies || s.cp_commits || s.cp_waits)
            fprintf(f, "%-40s %-15s copies %llu, commits %llu, waits %llu, at most %u groups pending at a wait\n",
                    kv.first.c_str(), "cp.async", (unsigned long long)s.cp_copies, (unsigned long long)s.cp_commits,
                    (unsigned long long)s.cp_waits, s.cp_max_pending);
    }
}

/* LLMGEN_EMU_BANK_CONFLICTS: registered once, at the first launch */
inline void smem_report_at_exit() {
    const char* v = getenv("LLMGEN_EMU_BANK_CONFLICTS");
    if (!v || !*v) return;
    if (!strcmp(v, "1") || !strcmp(v, "stderr")) {
        smem_report_table(stderr);
        return;
    }
    FILE* f = fopen(v, "w");
    if (!f) {
        fprintf(stderr, "llmgen emulate: cannot write the bank-conflict report to %s\n", v);
        return;
    }
    const std::string j = smem_report_json();
    fputs(j.c_str(), f);
    fputc('\n', f);
    fclose(f);
}
inline void smem_register_report() {
    static std::once_flag once;
    std::call_once(once, [] { atexit(smem_report_at_exit); });
}

} /* namespace llmgen_emu */

/* For a shared library's caller (ctypes): weak, so that several translation units may hold it. */
extern "C" __attribute__((weak, used, visibility("default"))) int llmgen_emu_smem_report(char* buf, int cap) {
    const std::string j = llmgen_emu::smem_report_json();
    if (buf && cap > 0) snprintf(buf, (size_t)cap, "%s", j.c_str());
    return (int)j.size();
}
extern "C" __attribute__((weak, used, visibility("default"))) void llmgen_emu_smem_reset(void) {
    llmgen_emu::smem_reset();
}

#endif /* LLMGEN_EMU_BANKS_H */
