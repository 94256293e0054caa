/* emulate.h -- run llmgen's generated CUDA program (train.cu) unchanged on the CPU.
 *
 * CONTRACT
 *   One .cu file builds two ways:
 *     GPU:  nvcc -O3 -arch=sm_90 train.cu -lcublasLt -o train
 *     CPU:  g++ -std=c++17 -O2 -x c++ -DLLMGEN_EMULATE -fno-strict-aliasing -fcf-protection=none \
 *               -fopenmp -I<this folder> -I/usr/local/cuda/include train.cu -o train
 *   The CPU build needs only the CUDA *headers* (cuda_runtime.h, cuda_bf16.h, cuda_fp8.h, library_types.h);
 *   libcudart, libcublasLt and a GPU are never used. This file is the only one a program includes;
 *   it includes the parts beside it (emu_*.h), so -I must name this folder (or the program must
 *   sit beside it).
 *     -fno-strict-aliasing  required: CUDA code reads float and bf16 arrays through float4 / int4
 *                           pointers (llm.c's Packed128), which g++ may otherwise miscompile.
 *     -fopenmp              spreads blocks over cores (without it everything runs on one core).
 *     -fcf-protection=none  only matters where the toolchain enables CET by default (Ubuntu): with
 *                           shadow-stack marking the slower ucontext switch is used.
 *   Nothing else: -U_FORTIFY_SOURCE is not needed (no longjmp). -O0 ... -O3 -march=native all work.
 *
 *   The .cu starts with
 *       #ifdef LLMGEN_EMULATE
 *       #include "emulate.h"     // kernels as fibers on the CPU, cuBLASLt as a CPU GEMM
 *       #else
 *       <the CUDA includes, cublasLt.h, and launch.h (the three #defines of nvcc builds)>
 *       #endif
 *   (or includes this file in both builds: under nvcc it is the real CUDA headers and those
 *   defines), and then uses, for every kernel launch and every dynamic shared-memory array:
 *       LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, args...);
 *       LLMGEN_DYNAMIC_SMEM(type, name);   // in a kernel body: `type* name` -> dynamic shared memory
 *   A templated kernel goes in parentheses: LLMGEN_LAUNCH((k<float, 4>), ...). The kernel may
 *   also be a function-pointer variable. LLMGEN_EMULATED is 1 under emulation and 0 under nvcc,
 *   for `#if` twins of code the emulator cannot run. Kernel launches from device code, and
 *   `extern __shared__` written out by hand, are not supported.
 *
 * CONFIGURATION MACROS (emulation only)
 *   LLMGEN_EMU_STACK_KB=N   stack reserved per CUDA thread, default 128 (KiB)
 *   LLMGEN_EMU_UCONTEXT     use ucontext instead of the hand-written x86-64 switch
 *   LLMGEN_EMU_NO_CUBLASLT  leave the cuBLASLt emulation out
 *   LLMGEN_EMU_NO_POISON    do not fill new device memory and each block's dynamic shared memory
 *                           with 0xFF bytes (NaN as float or bf16, -1 as int; on by default, so
 *                           code that reads memory it never wrote fails here as it may on a GPU)
 *
 * THE PARTS (each states its contract at its top; README.md says what the emulation models, how,
 * and what it cannot show)
 *   emu_base.h      __shared__ as thread_local, the CUDA headers, built-in variables, fatal()
 *   emu_fibers.h    one fiber (own stack, guard page) per CUDA thread; the context switch
 *   emu_banks.h     shared-memory bank conflicts and cp.async counts per kernel, and their report
 *   emu_launch.h    LLMGEN_LAUNCH: blocks on OpenMP threads, barriers, the warp exchange
 *   emu_warp.h      __syncthreads, __syncwarp, shuffles, votes, reduces, fences
 *   emu_atomics.h   atomics, correct across OS threads
 *   emu_math.h      math and bit intrinsics, device-only bf16/fp16 functions
 *   emu_ptx.h       the PTX instructions of ../ptx.cuh (mma.sync, ldmatrix, cp.async, ...) per the
 *                   PTX ISA's per-lane layouts, warp-collective; cp.async visibility checks
 *   emu_wmma.h      nvcuda::wmma 16x16x16 fragments
 *   emu_runtime.h   the CUDA runtime API on host memory (guard pages, NaN-filled allocations)
 *   emu_cublaslt.h  the cuBLASLt subset as a CPU GEMM with the epilogues, FP8 matmuls with scales and amax
 *
 * COSTS (measured on the 2-core x86-64 dev VM, one OpenMP thread)
 *   - barrier-free kernel: ~2 ns per CUDA thread (a function call; no fiber switch).
 *   - one __syncthreads: ~50 ns per thread in a 256-thread block (fiber creation, two switches);
 *     later barriers of the same block ~10-15 ns per thread. A 5-step __shfl_xor_sync reduction:
 *     ~50 ns per thread. llm.c-style layernorm 256x768 (block 256, ~20 barriers): ~15 ms.
 *   - cuBLASLt GEMM: ~20 GFLOP/s per core with baseline SSE2 (fp32 or bf16 inputs).
 *   On VMs whose vCPUs are oversubscribed, libgomp's spin-waiting can make 2 threads slower than
 *   one; OMP_WAIT_POLICY=passive fixes that.
 *
 * Written against the CUDA 13.0 headers. All emulation internals live in namespace llmgen_emu.
 */
#ifndef LLMGEN_EMULATE_H
#define LLMGEN_EMULATE_H

#ifndef LLMGEN_EMULATE
/* ============================================================================================ */
/* Real CUDA (nvcc): nothing is emulated                                                       */
/* ============================================================================================ */
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <mma.h>

#include "launch.h"     /* LLMGEN_LAUNCH, LLMGEN_DYNAMIC_SMEM, LLMGEN_EMULATED 0 */

#else
/* ============================================================================================ */
/* CPU emulation (g++ -x c++ -DLLMGEN_EMULATE): the parts, in dependency order                  */
/* ============================================================================================ */
#include "emu_base.h"
#include "emu_fibers.h"
#include "emu_banks.h"
#include "emu_launch.h"
#include "emu_warp.h"
#include "emu_atomics.h"
#include "emu_math.h"
#include "emu_ptx.h"
#include "emu_wmma.h"
#include "emu_runtime.h"
#include "emu_cublaslt.h"

#endif /* LLMGEN_EMULATE */
#endif /* LLMGEN_EMULATE_H */
