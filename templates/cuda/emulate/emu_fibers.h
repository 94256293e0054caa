/* emu_fibers.h -- one fiber (own stack) per CUDA thread.
 *
 * CONTRACT
 *   llmgen_emu::Fiber, MainCtx, new_fiber(index) and, defined with the worker in emu_launch.h,
 *   fiber_prepare / ctx_switch / ctx_enter / ctx_leave.
 *   - The switch saves the callee-saved registers, rsp, MXCSR and the x87 control word (the two
 *     control registers are reloaded only when they differ); about 10-13 ns per switch. With
 *     ucontext (LLMGEN_EMU_UCONTEXT, non-x86-64, CET) a switch is a syscall (~160 ns).
 *   - A stack is LLMGEN_EMU_STACK_KB KiB reserved (MAP_NORESERVE: committed on touch) above a
 *     PROT_NONE guard page. A SIGSEGV handler (installed once, on an alternate signal stack per OS
 *     thread) names an overflow into a guard page as such, says that other faults may be accesses
 *     past a device allocation, and hands anything else to the previous handler.
 *   - Stacks start staggered (up to 16 KiB below their top) so the hot frames of many fibers do not
 *     share cache sets.
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_FIBERS_H
#define LLMGEN_EMU_FIBERS_H
#ifndef LLMGEN_EMULATE_H
#error "emu_fibers.h is a part of emulate.h: include emulate.h"
#endif

namespace llmgen_emu {

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

} /* namespace llmgen_emu */

#endif /* LLMGEN_EMU_FIBERS_H */
