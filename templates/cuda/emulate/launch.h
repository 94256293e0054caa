/* launch.h -- the kernel-launch macros of a real CUDA build (nvcc), defined here once: emulate.h includes
 * this file when LLMGEN_EMULATE is not defined, and the generator pastes it into train.cu for nvcc builds
 * (the file stays self-contained). Under LLMGEN_EMULATE, emu_launch.h defines the same macros for the
 * fiber emulation. Holds no Jinja syntax.
 *   LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, args...)   a <<<...>>> launch
 *   LLMGEN_DYNAMIC_SMEM(type, name)     in a kernel body: `type* name` -> the dynamic shared memory
 *   LLMGEN_EMULATED                     0 here, 1 in the emulation
 */
#ifndef LLMGEN_LAUNCH_H
#define LLMGEN_LAUNCH_H
#define LLMGEN_EMULATED 0
#define LLMGEN_LAUNCH(kernel, grid, block, shmem_bytes, stream, ...) \
    kernel<<<(grid), (block), (shmem_bytes), (stream)>>>(__VA_ARGS__)
#define LLMGEN_DYNAMIC_SMEM(type, name)                                  \
    extern __shared__ __align__(16) unsigned char llmgen_dynamic_smem_[]; \
    type* name = reinterpret_cast<type*>(llmgen_dynamic_smem_)
#endif /* LLMGEN_LAUNCH_H */
