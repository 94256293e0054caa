/* Runtime-API tests: every check prints "OK name" or "FAIL name: why"; the Python test collects
 * them. Covers memory (malloc/free/memcpy kinds/memset/async/pinned/mem info), errors (last
 * error, invalid launch configurations, strings), streams, events, device properties and
 * attributes, __constant__ + cudaMemcpyToSymbol/FromSymbol, cudaFuncSetAttribute, launches with
 * dim3/int grids, zero-argument kernels and argument conversion. */
#include "emulate.h"
#include "testio.h"

#include <algorithm>

__constant__ float c_table[16];
__device__ int d_counter;

__global__ void use_constant_kernel(float* out) { out[threadIdx.x] = c_table[threadIdx.x] * 2.0f; }
__global__ void no_args_kernel() { atomicAdd(&d_counter, 1); }
__global__ void convert_args_kernel(double* out, double a, long long b, const float* p) {
    out[0] = a;
    out[1] = (double)b;
    out[2] = p ? p[0] : -1.0;
}
__global__ void fill_kernel(int* out, int v) { out[blockIdx.x * blockDim.x + threadIdx.x] = v; }
/* reads dynamic shared memory before writing it: every block must see the poison, not the last block's 7 */
__global__ void smem_first_read_kernel(unsigned* out) {
    LLMGEN_DYNAMIC_SMEM(unsigned, sm);
    out[blockIdx.x] = sm[5];
    sm[5] = 7u;
}
__global__ void fill3d_kernel(int* out, int v) {
    const int block = blockIdx.y * gridDim.x + blockIdx.x;
    const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[block * blockDim.x * blockDim.y * blockDim.z + thread] = v + thread;
}

/* scalar intrinsics, evaluated in a kernel and checked on the host */
__global__ void intrinsics_kernel(float* f, int* i, unsigned* u) {
    f[0] = __saturatef(1.5f);
    f[1] = __saturatef(-0.5f);
    f[2] = __saturatef(nanf(""));
    f[3] = rsqrtf(4.0f);
    f[4] = __fdividef(1.0f, 8.0f);
    f[5] = __expf(0.0f) + __logf(1.0f);
    f[6] = __frcp_rn(4.0f);
    f[7] = __fmaf_rn(2.0f, 3.0f, 1.0f);
    f[8] = min(2.5f, -1.0f);
    f[9] = max(2.5f, -1.0f);
    f[10] = __int_as_float(0x3f800000);
    f[11] = (float)max(1.0, 2.0f);
    i[0] = __popc(0xF0F0u);
    i[1] = __clz(1);
    i[2] = __clz(0);
    i[3] = __ffs(0x18);
    i[4] = __ffs(0);
    i[5] = __float2int_rn(2.5f);
    i[6] = __float2int_rn(3.5f);
    i[7] = __float2int_rn(3e10f);
    i[8] = __float2int_rz(-2.7f);
    i[9] = min(-3, 7);
    i[10] = max(-3, 7);
    i[11] = __float_as_int(1.0f);
    i[12] = __popcll(0xFFFFFFFFFFull);
    i[13] = __float2int_rn(nanf(""));
    u[0] = __brev(1u);
    u[1] = min(5u, 3);                  /* mixed signedness: compared unsigned */
    u[2] = max(-1, 3u);
    u[3] = __umulhi(0x80000000u, 4u);
    u[4] = __float2uint_rn(-5.0f);      /* saturates at 0 */
}

__global__ void write_at_kernel(float* p, int i) { p[i] = 1.0f; }
__global__ void smem_read_at_kernel(float* out, int i) {
    LLMGEN_DYNAMIC_SMEM(float, sm);
    out[0] = sm[i];
}

int main(int argc, char** argv) {
    if (argc >= 3) g_dir = argv[2];
    if (argc >= 2 && (strcmp(argv[1], "overrun") == 0 || strcmp(argv[1], "smem_overrun") == 0)) {
        /* one element past the end of 1024 floats (4096 bytes: no 256-byte rounding slack), or of 64
         * bytes of dynamic shared memory (rounded to 128): the emulation must fault */
        float* p;
        CHECK_CUDA(cudaMalloc((void**)&p, 1024 * sizeof(float)));
        if (strcmp(argv[1], "overrun") == 0) LLMGEN_LAUNCH(write_at_kernel, 1, 1, 0, 0, p, 1023);
        else LLMGEN_LAUNCH(smem_read_at_kernel, 1, 1, 64, 0, p, 31);
        printf("in bounds ok\n");
        fflush(stdout);
        if (strcmp(argv[1], "overrun") == 0) LLMGEN_LAUNCH(write_at_kernel, 1, 1, 0, 0, p, 1024);
        else LLMGEN_LAUNCH(smem_read_at_kernel, 1, 1, 64, 0, p, 32);
        printf("past the end: no fault\n");
        return 0;
    }
    /* memory */
    float* d = nullptr;
    EXPECT("malloc", cudaMalloc(&d, 1000 * sizeof(float)) == cudaSuccess && d != nullptr);
    EXPECT("malloc_aligned", ((uintptr_t)d % 256) == 0);
    {   /* new device memory and each block's dynamic shared memory hold 0xFF bytes (NaN), not zeros */
        std::vector<unsigned> u(8, 0u);
        EXPECT("malloc_poisoned", cudaMemcpy(u.data(), d, 32, cudaMemcpyDeviceToHost) == cudaSuccess &&
                                      u[0] == 0xFFFFFFFFu && u[7] == 0xFFFFFFFFu && std::isnan(((float*)u.data())[3]));
        unsigned* seen;
        cudaMalloc(&seen, 8 * sizeof(unsigned));
        LLMGEN_LAUNCH(smem_first_read_kernel, dim3(8), dim3(1), 64, 0, seen);
        EXPECT("smem_poisoned", cudaMemcpy(u.data(), seen, 32, cudaMemcpyDeviceToHost) == cudaSuccess &&
                                    std::count(u.begin(), u.end(), 0xFFFFFFFFu) == 8);
        cudaFree(seen);
    }
    std::vector<float> h(1000), g(1000, -1.0f);
    for (int i = 0; i < 1000; ++i) h[i] = (float)i;
    EXPECT("memcpy_h2d", cudaMemcpy(d, h.data(), 4000, cudaMemcpyHostToDevice) == cudaSuccess);
    float* d2;
    cudaMalloc(&d2, 4000);
    EXPECT("memcpy_d2d", cudaMemcpy(d2, d, 4000, cudaMemcpyDeviceToDevice) == cudaSuccess);
    EXPECT("memcpy_d2h", cudaMemcpy(g.data(), d2, 4000, cudaMemcpyDeviceToHost) == cudaSuccess && g[999] == 999.0f);
    EXPECT("memcpy_default", cudaMemcpy(g.data(), d2, 400, cudaMemcpyDefault) == cudaSuccess);
    std::vector<float> hh(10, 3.0f), hh2(10, 0.0f);
    EXPECT("memcpy_h2h", cudaMemcpy(hh2.data(), hh.data(), 40, cudaMemcpyHostToHost) == cudaSuccess && hh2[9] == 3.0f);
    EXPECT("memset", cudaMemset(d2, 0, 4000) == cudaSuccess);
    cudaStream_t s;
    EXPECT("stream_create", cudaStreamCreate(&s) == cudaSuccess);
    EXPECT("memset_async", cudaMemsetAsync(d2 + 10, 0xff, 8, s) == cudaSuccess);
    EXPECT("memcpy_async", cudaMemcpyAsync(g.data(), d2, 4000, cudaMemcpyDeviceToHost, s) == cudaSuccess);
    EXPECT("stream_sync", cudaStreamSynchronize(s) == cudaSuccess);
    EXPECT("memset_values", g[0] == 0.0f && std::isnan(g[10]) && std::isnan(g[11]) && g[12] == 0.0f);
    /* the device side of a copy must be device memory: a GPU faults, the emulation says so */
    std::vector<float> not_device(1000);
    EXPECT("memcpy_bad_dst", cudaMemcpy(not_device.data(), h.data(), 4000, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT("memcpy_past_end", cudaMemcpy(d, h.data(), 4004, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT("memcpy_inside", cudaMemcpy(d + 500, h.data(), 2000, cudaMemcpyHostToDevice) == cudaSuccess);
    float* pinned;
    EXPECT("malloc_host", cudaMallocHost(&pinned, 4000) == cudaSuccess);
    EXPECT("memcpy_pinned_as_device", cudaMemcpy(pinned, d, 4000, cudaMemcpyDeviceToDevice) == cudaSuccess);
    EXPECT("free_host", cudaFreeHost(pinned) == cudaSuccess);
    size_t fr = 0, tot = 0;
    EXPECT("mem_get_info", cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot > 0 && fr <= tot);
    EXPECT("free_bad_pointer", cudaFree(h.data()) == cudaErrorInvalidValue);
    cudaGetLastError();
    EXPECT("free_null", cudaFree(nullptr) == cudaSuccess);

    /* errors */
    EXPECT("last_error_clean", cudaGetLastError() == cudaSuccess);
    int* di;
    cudaMalloc(&di, 64 * 256 * sizeof(int));   /* the largest launch below: 64 blocks of 256 */
    LLMGEN_LAUNCH(fill_kernel, 1, 2048, 0, 0, di, 1); /* > 1024 threads */
    EXPECT("too_many_threads_peek", cudaPeekAtLastError() == cudaErrorInvalidConfiguration);
    EXPECT("too_many_threads", cudaGetLastError() == cudaErrorInvalidConfiguration);
    EXPECT("error_cleared", cudaGetLastError() == cudaSuccess);
    LLMGEN_LAUNCH(fill_kernel, dim3(1, 70000), 32, 0, 0, di, 1);
    EXPECT("grid_y_too_big", cudaGetLastError() == cudaErrorInvalidConfiguration);
    LLMGEN_LAUNCH(fill_kernel, 0, 32, 0, 0, di, 1);
    EXPECT("empty_grid", cudaGetLastError() == cudaErrorInvalidConfiguration);
    LLMGEN_LAUNCH(fill3d_kernel, dim3(2, 2), dim3(16, 4, 2), 0, s, di, 5);
    std::vector<int> hi(4 * 128);
    cudaMemcpy(hi.data(), di, hi.size() * sizeof(int), cudaMemcpyDeviceToHost);
    EXPECT("launch_dim3_on_stream", cudaGetLastError() == cudaSuccess && hi[0] == 5 && hi[255] == 132 && hi[511] == 132);
    EXPECT("error_string", strcmp(cudaGetErrorString(cudaErrorInvalidConfiguration), "invalid configuration argument") == 0);
    EXPECT("error_string_ok", strcmp(cudaGetErrorString(cudaSuccess), "no error") == 0);
    EXPECT("error_name", strcmp(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation") == 0);

    /* events */
    cudaEvent_t e0, e1;
    EXPECT("event_create", cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess);
    cudaEventRecord(e0, s);
    LLMGEN_LAUNCH(fill_kernel, 64, 256, 0, s, di, 3);
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms = -1.0f;
    EXPECT("event_elapsed", cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess && ms >= 0.0f && ms < 10000.0f);
    cudaEvent_t e2;
    cudaEventCreateWithFlags(&e2, cudaEventDisableTiming);
    EXPECT("event_unrecorded", cudaEventElapsedTime(&ms, e0, e2) != cudaSuccess);
    EXPECT("stream_wait_event", cudaStreamWaitEvent(s, e1, 0) == cudaSuccess);
    EXPECT("event_destroy", cudaEventDestroy(e0) == cudaSuccess && cudaEventDestroy(e1) == cudaSuccess &&
                                cudaEventDestroy(e2) == cudaSuccess);
    EXPECT("stream_destroy", cudaStreamDestroy(s) == cudaSuccess);

    /* device */
    int count = 0, dev = -1;
    EXPECT("device_count", cudaGetDeviceCount(&count) == cudaSuccess && count == 1);
    EXPECT("set_device", cudaSetDevice(0) == cudaSuccess && cudaGetDevice(&dev) == cudaSuccess && dev == 0);
    EXPECT("set_bad_device", cudaSetDevice(3) != cudaSuccess);
    cudaDeviceProp prop;
    EXPECT("props", cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
    EXPECT("props_name", strcmp(prop.name, "llmgen CPU emulation") == 0);
    EXPECT("props_limits", prop.maxThreadsPerBlock == 1024 && prop.sharedMemPerBlock == 48 * 1024 &&
                               prop.warpSize == 32 && prop.major == 9 && prop.multiProcessorCount >= 1 &&
                               prop.sharedMemPerBlockOptin == 227 * 1024 && prop.totalGlobalMem > 0);
    int v = 0;
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0);
    EXPECT("attr_sm_count", v == prop.multiProcessorCount);
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
    EXPECT("attr_smem_optin", v == 227 * 1024);
    cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0);
    EXPECT("attr_major", v == 9);
    printf("INFO sm_count %d\n", prop.multiProcessorCount);

    /* symbols */
    float table[16];
    for (int i = 0; i < 16; ++i) table[i] = (float)(i * i);
    EXPECT("to_symbol", cudaMemcpyToSymbol(c_table, table, sizeof(table)) == cudaSuccess);
    float* dout;
    cudaMalloc(&dout, 16 * sizeof(float));
    LLMGEN_LAUNCH(use_constant_kernel, 1, 16, 0, 0, dout);
    std::vector<float> ho(16);
    cudaMemcpy(ho.data(), dout, 64, cudaMemcpyDeviceToHost);
    EXPECT("constant_used", ho[3] == 18.0f && ho[15] == 450.0f);
    float back[4] = {0, 0, 0, 0};
    EXPECT("from_symbol_offset", cudaMemcpyFromSymbol(back, c_table, 4 * sizeof(float), 4 * sizeof(float)) == cudaSuccess &&
                                     back[0] == 16.0f && back[3] == 49.0f);
    int zero = 0, counted = -1;
    cudaMemcpyToSymbol(d_counter, &zero, sizeof(int));
    LLMGEN_LAUNCH(no_args_kernel, 3, 7, 0, 0);
    cudaMemcpyFromSymbol(&counted, d_counter, sizeof(int));
    EXPECT("no_args_kernel", counted == 21);

    void* sym = nullptr;
    EXPECT("symbol_address", cudaGetSymbolAddress(&sym, c_table) == cudaSuccess && sym == (void*)c_table);
    EXPECT("memcpy_to_symbol_address", cudaMemcpy(sym, table, sizeof(table), cudaMemcpyHostToDevice) == cudaSuccess);

    /* arguments convert to the kernel's parameter types once */
    double* dd;
    cudaMalloc(&dd, 3 * sizeof(double));
    const int small = 7;
    LLMGEN_LAUNCH(convert_args_kernel, 1, 1, 0, 0, dd, small, small * 2, nullptr);
    double hd[3];
    cudaMemcpy(hd, dd, sizeof(hd), cudaMemcpyDeviceToHost);
    EXPECT("arg_conversion", hd[0] == 7.0 && hd[1] == 14.0 && hd[2] == -1.0);

    /* a kernel chosen at run time, through a function-pointer variable */
    void (*chosen)(int*, int) = hi[0] == 5 ? fill_kernel : nullptr;
    LLMGEN_LAUNCH(chosen, 2, 64, 0, 0, di, 9);
    cudaMemcpy(hi.data(), di, 128 * sizeof(int), cudaMemcpyDeviceToHost);
    EXPECT("launch_through_pointer", cudaGetLastError() == cudaSuccess && hi[0] == 9 && hi[127] == 9);

    /* function attributes */
    EXPECT("func_attr", cudaFuncSetAttribute(fill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100000) == cudaSuccess);
    EXPECT("func_attr_too_big", cudaFuncSetAttribute(fill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 300000) != cudaSuccess);
    cudaGetLastError();
    LLMGEN_LAUNCH(fill_kernel, 1, 32, 100000, 0, di, 1);
    EXPECT("launch_big_smem_after_attr", cudaGetLastError() == cudaSuccess);
    LLMGEN_LAUNCH(fill_kernel, 1, 32, 100001, 0, di, 1);
    EXPECT("launch_smem_over_attr", cudaGetLastError() == cudaErrorInvalidValue);

    /* intrinsics */
    float* fi;
    int* ii;
    unsigned* ui;
    cudaMalloc(&fi, 16 * sizeof(float));
    cudaMalloc(&ii, 16 * sizeof(int));
    cudaMalloc(&ui, 8 * sizeof(unsigned));
    LLMGEN_LAUNCH(intrinsics_kernel, 1, 1, 0, 0, fi, ii, ui);
    float hf[16];
    int hi2[16];
    unsigned hu[8];
    cudaMemcpy(hf, fi, sizeof(hf), cudaMemcpyDeviceToHost);
    cudaMemcpy(hi2, ii, sizeof(hi2), cudaMemcpyDeviceToHost);
    cudaMemcpy(hu, ui, sizeof(hu), cudaMemcpyDeviceToHost);
    EXPECT("saturatef", hf[0] == 1.0f && hf[1] == 0.0f && hf[2] == 0.0f);
    EXPECT("fast_math", hf[3] == 0.5f && hf[4] == 0.125f && hf[5] == 1.0f && hf[6] == 0.25f && hf[7] == 7.0f);
    EXPECT("minmax_float", hf[8] == -1.0f && hf[9] == 2.5f && hf[10] == 1.0f && hf[11] == 2.0f);
    EXPECT("bits", hi2[0] == 8 && hi2[1] == 31 && hi2[2] == 32 && hi2[3] == 4 && hi2[4] == 0 && hi2[12] == 40);
    EXPECT("float2int", hi2[5] == 2 && hi2[6] == 4 && hi2[7] == 2147483647 && hi2[8] == -2 && hi2[13] == 0);
    EXPECT("minmax_int", hi2[9] == -3 && hi2[10] == 7 && hi2[11] == 0x3f800000);
    EXPECT("unsigned", hu[0] == 0x80000000u && hu[1] == 3u && hu[2] == 0xffffffffu && hu[3] == 2u && hu[4] == 0u);

    EXPECT("free", cudaFree(d) == cudaSuccess && cudaFree(d2) == cudaSuccess);
    EXPECT("device_sync", cudaDeviceSynchronize() == cudaSuccess);
    printf("DONE %d failures\n", failures);
    return failures ? 1 : 0;
}
