/* wmma under emulation: 16x16x16 bf16 tiles with fp32 accumulators, every layout the attention
 * kernels use, against numpy (tests/test_emu_wmma.py); the alignment rule; and that a lane
 * reading what other lanes stored sees it only after __syncwarp(). */
#include "emulate.h"
#include "testio.h"

namespace wmma = nvcuda::wmma;
typedef __nv_bfloat16 bf16;

/* one warp: d_row = a (16x32) . b (32x16) + c, with b given row-major; d_t the same with b given
 * as bt = b^T (16x32 row-major = b col-major); d_col: d_row stored column-major */
__global__ void mma_kernel(float* d_row, float* d_t, float* d_col, const bf16* a, const bf16* b, const bf16* bt,
                           const float* c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fbt;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, acc_t;
    wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
    wmma::load_matrix_sync(acc_t, c, 16, wmma::mem_row_major);
    for (int k = 0; k < 2; k++) {
        wmma::load_matrix_sync(fa, a + k * 16, 32);
        wmma::load_matrix_sync(fb, b + k * 16 * 16, 16);
        wmma::load_matrix_sync(fbt, bt + k * 16, 32);
        wmma::mma_sync(acc, fa, fb, acc);
        wmma::mma_sync(acc_t, fa, fbt, acc_t);
    }
    wmma::store_matrix_sync(d_row, acc, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(d_t, acc_t, 16, wmma::mem_row_major);
    wmma::store_matrix_sync(d_col, acc, 16, wmma::mem_col_major);
}

/* lane 0 reads element 1 of a tile the warp just stored (lane 1's share here): before and after
 * __syncwarp() */
__global__ void visibility_kernel(float* seen) {
    __shared__ __align__(32) float tile[256];
    for (int e = threadIdx.x; e < 256; e += 32) tile[e] = -1.0f;
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 2.0f);
    wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
    if (threadIdx.x == 0) seen[0] = tile[1];
    __syncwarp();
    if (threadIdx.x == 0) seen[1] = tile[1];
}

__global__ void misaligned_kernel(const bf16* a) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + 8, 16);   /* 16 bytes past a 256-byte aligned buffer */
}

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    g_dir = argv[2];
    const std::string c = argv[1];
    if (c == "mma") {
        bf16 *a = to_device(read_input<bf16>("a")), *b = to_device(read_input<bf16>("b")),
             *bt = to_device(read_input<bf16>("bt"));
        float* cc = to_device(read_input<float>("c"));
        float *d_row, *d_t, *d_col;
        CHECK_CUDA(cudaMalloc((void**)&d_row, 256 * 4));
        CHECK_CUDA(cudaMalloc((void**)&d_t, 256 * 4));
        CHECK_CUDA(cudaMalloc((void**)&d_col, 256 * 4));
        LLMGEN_LAUNCH(mma_kernel, dim3(1), dim3(32), 0, 0, d_row, d_t, d_col, a, b, bt, cc);
        CHECK_CUDA(cudaGetLastError());
        std::vector<float> h(256);
        const char* names[3] = {"d_row", "d_t", "d_col"};
        float* ptrs[3] = {d_row, d_t, d_col};
        for (int i = 0; i < 3; i++) {
            CHECK_CUDA(cudaMemcpy(h.data(), ptrs[i], 256 * 4, cudaMemcpyDeviceToHost));
            write_output(names[i], h);
        }
    } else if (c == "visibility") {
        float* seen;
        CHECK_CUDA(cudaMalloc((void**)&seen, 8));
        LLMGEN_LAUNCH(visibility_kernel, dim3(1), dim3(32), 0, 0, seen);
        std::vector<float> h(2);
        CHECK_CUDA(cudaMemcpy(h.data(), seen, 8, cudaMemcpyDeviceToHost));
        write_output("seen", h);
    } else if (c == "misaligned") {
        bf16* a;
        CHECK_CUDA(cudaMalloc((void**)&a, 1024));
        LLMGEN_LAUNCH(misaligned_kernel, dim3(1), dim3(32), 0, 0, a);
    } else {
        return 2;
    }
    return 0;
}
