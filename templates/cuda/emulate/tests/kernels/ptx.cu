/* The PTX instructions of ptx.cuh (../test_emu_ptx.py): every lane's registers of mma.sync and
 * ldmatrix for numpy to check through the PTX ISA's layouts, cp.async contents and group order,
 * the rules the emulation enforces, and the bank-conflict counts of hand-computable accesses.
 * Under nvcc the same file compiles to the inline-PTX versions (test_emu_build.py, sm_80, sm_90). */
#include "emulate.h"
#include "ptx.cuh"
#include "testio.h"

typedef __nv_bfloat16 bf16;

/* ---- mma: one warp; a/b/c are per-lane registers [32][4], [32][2], [32][4] ---- */
__global__ void mma_kernel(float* d, float* d_inplace, const uint32_t* a, const uint32_t* b, const float* c) {
    const int l = threadIdx.x;
    uint32_t ra[4], rb[2];
    float rc[4], rd[4], acc[4];
    for (int i = 0; i < 4; i++) ra[i] = a[l * 4 + i];
    for (int i = 0; i < 2; i++) rb[i] = b[l * 2 + i];
    for (int i = 0; i < 4; i++) rc[i] = acc[i] = c[l * 4 + i];
    ptx_mma_m16n8k16_bf16(rd, ra, rb, rc);
    ptx_mma_m16n8k16_bf16(acc, ra, rb, acc); /* d aliasing c */
    for (int i = 0; i < 4; i++) {
        d[l * 4 + i] = rd[i];
        d_inplace[l * 4 + i] = acc[i];
    }
}

/* ---- ldmatrix: a 64x64 b16 tile in shared memory, lane l passes row offset off[l] (elements) ---- */
template <int NUM, bool TRANS>
__device__ void ldm(uint32_t (&r)[NUM], const void* p);
template <> __device__ void ldm<1, false>(uint32_t (&r)[1], const void* p) { ptx_ldmatrix_x1(r, p); }
template <> __device__ void ldm<2, false>(uint32_t (&r)[2], const void* p) { ptx_ldmatrix_x2(r, p); }
template <> __device__ void ldm<4, false>(uint32_t (&r)[4], const void* p) { ptx_ldmatrix_x4(r, p); }
template <> __device__ void ldm<1, true>(uint32_t (&r)[1], const void* p) { ptx_ldmatrix_x1_trans(r, p); }
template <> __device__ void ldm<2, true>(uint32_t (&r)[2], const void* p) { ptx_ldmatrix_x2_trans(r, p); }
template <> __device__ void ldm<4, true>(uint32_t (&r)[4], const void* p) { ptx_ldmatrix_x4_trans(r, p); }

template <int NUM, bool TRANS>
__global__ void ldmatrix_kernel(uint32_t* out, const uint16_t* tile, const int* off) {
    __shared__ __align__(16) uint16_t s[64 * 64];
    for (int i = threadIdx.x; i < 64 * 64; i += blockDim.x) s[i] = tile[i];
    __syncthreads();
    uint32_t r[NUM];
    ldm<NUM, TRANS>(r, s + off[threadIdx.x]);
    for (int m = 0; m < NUM; m++) out[threadIdx.x * NUM + m] = r[m];
}

/* ---- bank conflicts: one warp reads a 16x16 bf16 tile at rows `ld` elements apart (dynamic shared
 * memory), as mma's A fragment (ldmatrix.x4), with a 16-byte-chunk XOR swizzle when swz != 0 ---- */
__global__ void conflicts_ldmatrix(float* sink, int ld, int swz) {
    LLMGEN_DYNAMIC_SMEM(uint16_t, s);
    for (int i = threadIdx.x; i < 16 * ld; i += blockDim.x) s[i] = (uint16_t)i;
    __syncthreads();
    const int l = threadIdx.x, row = (l & 7) + 8 * ((l >> 3) & 1), chunk = l >> 4; /* 16-byte chunk of the row */
    const int c = swz ? (chunk ^ (row & 7)) : chunk;
    uint32_t r[4];
    ptx_ldmatrix_x4(r, s + row * ld + c * 8);
    sink[l] = (float)(r[0] + r[1] + r[2] + r[3]);
}
/* the same tile through wmma (its load modelled as ldmatrix.x4) */
__global__ void conflicts_wmma(float* sink, int ld) {
    LLMGEN_DYNAMIC_SMEM(bf16, s);
    for (int i = threadIdx.x; i < 16 * ld; i += blockDim.x) s[i] = __float2bfloat16(1.0f);
    __syncthreads();
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, bf16, nvcuda::wmma::row_major> fa;
    nvcuda::wmma::load_matrix_sync(fa, s, (unsigned)ld);
    sink[threadIdx.x] = __bfloat162float(fa.x[0]);
}
/* 4-byte loads: lane l reads word l*stride (stride 0: every lane the same word) */
__global__ void conflicts_words(float* sink, int stride) {
    __shared__ float w[32 * 33];
    for (int i = threadIdx.x; i < 32 * 33; i += blockDim.x) ptx_st_shared(&w[i], (float)i);
    __syncthreads();
    sink[threadIdx.x] = ptx_ld_shared(&w[threadIdx.x * stride]);
}
/* 16-byte stores: lane l writes the 16 bytes at l*stride16 * 16 */
__global__ void conflicts_st16(float* sink, int stride16) {
    __shared__ __align__(16) float4 v[32 * 8];
    ptx_st_shared(&v[threadIdx.x * stride16], make_float4(1.0f, 2.0f, 3.0f, (float)threadIdx.x));
    __syncthreads();
    sink[threadIdx.x] = v[threadIdx.x * stride16].w;
}

/* ---- cp.async: 128 threads copy a 64x32 float tile (8 chunks of 16 bytes per row) in 4 groups of
 * 16 rows; `take` bytes of every chunk (the rest zero-filled); waits as a 2-deep pipeline ---- */
__global__ void cp_async_kernel(float* out, char* trace, const float* src, int take) {
    LLMGEN_DYNAMIC_SMEM(float, s);
    const int t = threadIdx.x;
    for (int g = 0; g < 4; g++) {
        const int chunk = g * 128 + t, row = chunk / 8, col = (chunk % 8) * 4; /* 16 rows x 8 chunks */
        ptx_cp_async_cg16(s + row * 32 + col, src + row * 32 + col, take);
        ptx_cp_async_commit();
        if (g >= 1) ptx_cp_async_wait<1>(); /* the group before this one is complete */
    }
    ptx_cp_async_wait<0>();
    __syncthreads();
    for (int i = t; i < 64 * 32; i += blockDim.x) out[i] = ptx_ld_shared(&s[i]);
#if LLMGEN_EMULATED
    if (t == 5) {
        const std::string tr = llmgen_emu::cp_async_trace_of_this_thread();
        memcpy(trace, tr.c_str(), tr.size() + 1);
    }
#else
    (void)trace;
#endif
}

/* ---- what the emulation refuses ---- */
__global__ void read_before_wait(float* sink, const float* src) { /* ldmatrix of a chunk still in flight */
    __shared__ __align__(16) uint16_t s[8 * 8 * 32];
    ptx_cp_async_cg16(s + threadIdx.x * 8, src + threadIdx.x * 4);
    ptx_cp_async_commit();
    uint32_t r[1];
    ptx_ldmatrix_x1(r, s + (threadIdx.x & 7) * 8);
    sink[threadIdx.x] = (float)r[0];
}
__global__ void wait_without_barrier(float* sink, const float* src) { /* warp 1 reads what warp 0 copied */
    __shared__ __align__(16) float s[32 * 4];
    if (threadIdx.x < 32) {
        ptx_cp_async_cg16(s + threadIdx.x * 4, src + threadIdx.x * 4);
        ptx_cp_async_wait_all();
    }
    __syncwarp();
    if (threadIdx.x >= 32) sink[threadIdx.x] = ptx_ld_shared(&s[(threadIdx.x - 32) * 4]);
}
__global__ void wait_and_barrier(float* sink, const float* src) { /* the same, correct */
    __shared__ __align__(16) float s[32 * 4];
    if (threadIdx.x < 32) {
        ptx_cp_async_cg16(s + threadIdx.x * 4, src + threadIdx.x * 4);
        ptx_cp_async_wait_all();
    }
    __syncthreads();
    if (threadIdx.x >= 32) sink[threadIdx.x] = ptx_ld_shared(&s[(threadIdx.x - 32) * 4]);
}
__global__ void store_over_copy_in_flight(const float* src) {
    __shared__ __align__(16) float s[32 * 4];
    ptx_cp_async_cg16(s + threadIdx.x * 4, src + threadIdx.x * 4);
    ptx_st_shared(&s[((threadIdx.x + 1) % 32) * 4], 0.0f);
}
__global__ void mma_after_exit(float* out) {
    if (threadIdx.x == 7) return;
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    ptx_mma_m16n8k16_bf16(c, a, b, c);
    out[threadIdx.x] = c[0];
}
__global__ void ldmatrix_misaligned(float* out) {
    __shared__ __align__(16) uint16_t s[8 * 16];
    for (int i = threadIdx.x; i < 8 * 16; i += 32) s[i] = 0;
    __syncwarp();
    uint32_t r[1];
    ptx_ldmatrix_x1(r, s + (threadIdx.x & 7) * 16 + 4); /* 8 bytes into a row */
    out[threadIdx.x] = (float)r[0];
}
__global__ void ldmatrix_global(float* out, const uint16_t* g) {
    uint32_t r[1];
    ptx_ldmatrix_x1(r, g + (threadIdx.x & 7) * 8);
    out[threadIdx.x] = (float)r[0];
}

/* ---- ex2 and the bf16 pack: one value per thread ---- */
__global__ void math_kernel(float* e, uint32_t* packed, const float* x, const float* lo, const float* hi, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    e[i] = ptx_ex2_approx(x[i]);
    packed[i] = ptx_pack_bf16x2(lo[i], hi[i]);
}

#if LLMGEN_EMULATED
/* instructions, phases, wavefronts, max_way of one access kind of one kernel */
static void save_counts(const char* name, const char* kernel, llmgen_emu::SmemKind kind) {
    const llmgen_emu::SmemCount c = llmgen_emu::smem_stats(kernel).smem[kind];
    std::vector<uint64_t> v = {c.instructions, c.phases, c.wavefronts, c.max_way};
    write_output(name, v);
}
#endif

static float* scratch(size_t n) {
    float* p;
    CHECK_CUDA(cudaMalloc((void**)&p, n * sizeof(float)));
    return p;
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    g_dir = argv[2];
    const std::string c = argv[1];
    if (c == "mma") {
        uint32_t* a = to_device(read_input<uint32_t>("a"));
        uint32_t* b = to_device(read_input<uint32_t>("b"));
        float* cc = to_device(read_input<float>("c"));
        float *d = scratch(128), *d2 = scratch(128);
        LLMGEN_LAUNCH(mma_kernel, 1, 32, 0, 0, d, d2, a, b, cc);
        CHECK_CUDA(cudaGetLastError());
        save_device("d", d, 128);
        save_device("d_inplace", d2, 128);
    } else if (c.rfind("ldmatrix_x", 0) == 0) { /* ldmatrix_x{1,2,4}[_trans] */
        uint16_t* tile = to_device(read_input<uint16_t>("tile"));
        int* off = to_device(read_input<int>("off"));
        uint32_t* out;
        CHECK_CUDA(cudaMalloc((void**)&out, 32 * 4 * 4));
        const std::string v = c.substr(9);
        int num = 0;
        if (v == "x1") { LLMGEN_LAUNCH((ldmatrix_kernel<1, false>), 1, 32, 0, 0, out, tile, off); num = 1; }
        if (v == "x2") { LLMGEN_LAUNCH((ldmatrix_kernel<2, false>), 1, 32, 0, 0, out, tile, off); num = 2; }
        if (v == "x4") { LLMGEN_LAUNCH((ldmatrix_kernel<4, false>), 1, 32, 0, 0, out, tile, off); num = 4; }
        if (v == "x1_trans") { LLMGEN_LAUNCH((ldmatrix_kernel<1, true>), 1, 32, 0, 0, out, tile, off); num = 1; }
        if (v == "x2_trans") { LLMGEN_LAUNCH((ldmatrix_kernel<2, true>), 1, 32, 0, 0, out, tile, off); num = 2; }
        if (v == "x4_trans") { LLMGEN_LAUNCH((ldmatrix_kernel<4, true>), 1, 32, 0, 0, out, tile, off); num = 4; }
        if (!num) return 2;
        CHECK_CUDA(cudaGetLastError());
        save_device("r", out, (size_t)32 * num);
    } else if (c == "conflicts") {
#if LLMGEN_EMULATED
        float* sink = scratch(64);
        CHECK_CUDA(cudaFuncSetAttribute(conflicts_ldmatrix, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 64 * 2, 0, sink, 64, 0);    /* 128-byte rows */
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 64 * 2, 0, sink, 64, 0);    /* twice: counts add up */
        save_counts("ldm_unpadded", "conflicts_ldmatrix", llmgen_emu::SMEM_LDMATRIX);
        llmgen_emu::smem_reset();
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 72 * 2, 0, sink, 72, 0);    /* padded to 144 bytes */
        save_counts("ldm_padded", "conflicts_ldmatrix", llmgen_emu::SMEM_LDMATRIX);
        llmgen_emu::smem_reset();
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 64 * 2, 0, sink, 64, 1);    /* XOR-swizzled */
        save_counts("ldm_swizzled", "conflicts_ldmatrix", llmgen_emu::SMEM_LDMATRIX);
        llmgen_emu::smem_reset();
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 16 * 2, 0, sink, 16, 0);    /* 32-byte rows: 2-way */
        save_counts("ldm_32byte_rows", "conflicts_ldmatrix", llmgen_emu::SMEM_LDMATRIX);
        LLMGEN_LAUNCH(conflicts_wmma, 1, 32, 16 * 64 * 2, 0, sink, 64);
        save_counts("wmma_unpadded", "conflicts_wmma", llmgen_emu::SMEM_WMMA_LOAD);
        llmgen_emu::smem_reset();
        LLMGEN_LAUNCH(conflicts_wmma, 1, 32, 16 * 72 * 2, 0, sink, 72);
        save_counts("wmma_padded", "conflicts_wmma", llmgen_emu::SMEM_WMMA_LOAD);
        for (int stride : {0, 1, 2, 32, 33}) {
            llmgen_emu::smem_reset();
            LLMGEN_LAUNCH(conflicts_words, 1, 32, 0, 0, sink, stride);
            save_counts(("words_" + std::to_string(stride)).c_str(), "conflicts_words", llmgen_emu::SMEM_LOAD);
        }
        for (int stride : {1, 2, 8}) {
            llmgen_emu::smem_reset();
            LLMGEN_LAUNCH(conflicts_st16, 1, 32, 0, 0, sink, stride);
            save_counts(("st16_" + std::to_string(stride)).c_str(), "conflicts_st16", llmgen_emu::SMEM_STORE);
        }
        CHECK_CUDA(cudaGetLastError());
#endif
    } else if (c == "report") { /* the at-exit report (LLMGEN_EMU_BANK_CONFLICTS) and the C API */
        float* sink = scratch(64);
        CHECK_CUDA(cudaFuncSetAttribute(conflicts_ldmatrix, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
        LLMGEN_LAUNCH(conflicts_ldmatrix, 1, 32, 16 * 64 * 2, 0, sink, 64, 0);
        LLMGEN_LAUNCH(conflicts_words, 1, 32, 0, 0, sink, 32);
#if LLMGEN_EMULATED
        const int n = llmgen_emu_smem_report(nullptr, 0);
        std::vector<char> buf((size_t)n + 1);
        llmgen_emu_smem_report(buf.data(), n + 1);
        write_output("json", buf.data(), (size_t)n);
#endif
    } else if (c == "cp_async") {
        const std::vector<float> src = read_input<float>("src");
        const int take = read_input<int>("take")[0];
        float* s = to_device(src);
        float* out = scratch(64 * 32);
        char* trace;
        CHECK_CUDA(cudaMalloc((void**)&trace, 256));
        CHECK_CUDA(cudaMemset(trace, 0, 256));
#if LLMGEN_EMULATED
        llmgen_emu::cp_async_trace(true);
#endif
        LLMGEN_LAUNCH(cp_async_kernel, 2, 128, 64 * 32 * 4, 0, out, trace, s, take);
        CHECK_CUDA(cudaGetLastError());
        save_device("out", out, 64 * 32);
        std::vector<char> tr = to_host(trace, 256);
        write_output("trace", tr.data(), strlen(tr.data()));
#if LLMGEN_EMULATED
        const llmgen_emu::KernelStats k = llmgen_emu::smem_stats("cp_async_kernel");
        std::vector<uint64_t> v = {k.cp_copies, k.cp_commits, k.cp_waits, k.cp_max_pending,
                                   k.smem[llmgen_emu::SMEM_CP_ASYNC].instructions,
                                   k.smem[llmgen_emu::SMEM_CP_ASYNC].wavefronts,
                                   k.smem[llmgen_emu::SMEM_CP_ASYNC].phases};
        write_output("counts", v);
#endif
    } else if (c == "read_before_wait" || c == "wait_without_barrier" || c == "wait_and_barrier" ||
               c == "store_over_copy_in_flight" || c == "mma_after_exit" || c == "ldmatrix_misaligned" ||
               c == "ldmatrix_global") {
        float* sink = scratch(64);
        float* src = scratch(1024);
        CHECK_CUDA(cudaMemset(src, 0, 1024 * 4));
        if (c == "read_before_wait") LLMGEN_LAUNCH(read_before_wait, 1, 32, 0, 0, sink, src);
        if (c == "wait_without_barrier") LLMGEN_LAUNCH(wait_without_barrier, 1, 64, 0, 0, sink, src);
        if (c == "wait_and_barrier") LLMGEN_LAUNCH(wait_and_barrier, 1, 64, 0, 0, sink, src);
        if (c == "store_over_copy_in_flight") LLMGEN_LAUNCH(store_over_copy_in_flight, 1, 32, 0, 0, src);
        if (c == "mma_after_exit") LLMGEN_LAUNCH(mma_after_exit, 1, 32, 0, 0, sink);
        if (c == "ldmatrix_misaligned") LLMGEN_LAUNCH(ldmatrix_misaligned, 1, 32, 0, 0, sink);
        if (c == "ldmatrix_global") LLMGEN_LAUNCH(ldmatrix_global, 1, 32, 0, 0, sink, (const uint16_t*)src);
        CHECK_CUDA(cudaGetLastError());
        printf("finished\n");
    } else if (c == "math") {
        const std::vector<float> x = read_input<float>("x");
        const int n = (int)x.size();
        float* dx = to_device(x);
        float* dlo = to_device(read_input<float>("lo"));
        float* dhi = to_device(read_input<float>("hi"));
        float* e = scratch((size_t)n);
        uint32_t* packed;
        CHECK_CUDA(cudaMalloc((void**)&packed, (size_t)n * 4));
        LLMGEN_LAUNCH(math_kernel, (n + 127) / 128, 128, 0, 0, e, packed, dx, dlo, dhi, n);
        CHECK_CUDA(cudaGetLastError());
        save_device("e", e, (size_t)n);
        save_device("packed", packed, (size_t)n);
    } else {
        return 2;
    }
    return 0;
}
