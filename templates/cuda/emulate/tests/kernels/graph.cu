/* graph.cu -- CUDA Graphs by stream capture, under the emulation (test_emu_graph.py) and, unchanged, with
 * nvcc. `prog all DIR` prints one OK/FAIL line per check and "DONE <n> failures".
 *   - what a capture records (a launch, cudaMemsetAsync, cudaMemcpyAsync H2D / D2D / D2H, a launch after
 *     them) runs only at cudaGraphLaunch, in stream order, with the arguments of capture time, every replay;
 *   - synchronous calls during a capture fail with cudaErrorStreamCaptureUnsupported and invalidate it
 *     (cudaStreamEndCapture: cudaErrorStreamCaptureInvalidated, no graph);
 *   - cudaStreamIsCapturing, the legacy stream refused, a second capture after a failed one;
 *   - fork and join through events (another stream joins the capture), an unjoined fork refused. */
#ifdef LLMGEN_EMULATE
#include "emulate.h"
#else
#include <cuda_runtime.h>
#include "launch.h"
#endif
#include "testio.h"

/* p[i] = p[i] * a + b */
__global__ void axpb_kernel(float* p, float a, float b, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = p[i] * a + b;
}
/* out[0] = sum of p[0..n), one thread */
__global__ void sum_kernel(float* out, const float* p, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += p[i];
    *out = s;
}

int main(int argc, char** argv) {
    if (argc >= 3) g_dir = argv[2];
    const int n = 64;
    const cudaStream_t st = cudaStreamPerThread; /* stream 0 of a --default-stream per-thread build */
    float *d = nullptr, *d2 = nullptr, *h = nullptr;
    CHECK_CUDA(cudaMalloc((void**)&d, sizeof(float) * n));
    CHECK_CUDA(cudaMalloc((void**)&d2, sizeof(float) * (n + 1)));
    CHECK_CUDA(cudaMallocHost((void**)&h, sizeof(float) * (n + 1)));
    for (int i = 0; i < n; i++) h[i] = (float)i;
    h[n] = -7.0f;
    CHECK_CUDA(cudaMemset(d, 0, sizeof(float) * n));

    /* the capture: h -> d, d = d * 2 + 1 (a launch with stream 0, as the trainer's kernels are), d -> d2,
     * d2[n] = sum(d2[0..n)), d2 -> h; then d zeroed */
    CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CHECK_CUDA(cudaStreamIsCapturing(st, &cs));
    EXPECT("is_capturing", cs == cudaStreamCaptureStatusActive);
    CHECK_CUDA(cudaMemcpyAsync(d, h, sizeof(float) * n, cudaMemcpyHostToDevice, st));
    float a = 2.0f;
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(n), 0, 0, d, a, 1.0f, n);
    a = 100.0f; /* the launch keeps the value it was captured with */
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemcpyAsync(d2, d, sizeof(float) * n, cudaMemcpyDeviceToDevice, st));
    LLMGEN_LAUNCH(sum_kernel, dim3(1), dim3(1), 0, st, d2 + n, d2, n);
    CHECK_CUDA(cudaMemcpyAsync(h, d2, sizeof(float) * (n + 1), cudaMemcpyDeviceToHost, st));
    CHECK_CUDA(cudaMemsetAsync(d, 0, sizeof(float) * n, st));
    cudaGraph_t graph = nullptr;
    CHECK_CUDA(cudaStreamEndCapture(st, &graph));
    CHECK_CUDA(cudaStreamIsCapturing(st, &cs));
    EXPECT("not_capturing_after", cs == cudaStreamCaptureStatusNone);
    EXPECT("nothing_ran_in_capture", h[5] == 5.0f && h[n] == -7.0f);
    cudaGraphExec_t exec = nullptr;
    CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));

    CHECK_CUDA(cudaGraphLaunch(exec, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    bool ok = true;
    float want_sum = 0.0f;
    for (int i = 0; i < n; i++) {
        ok = ok && h[i] == 2.0f * (float)i + 1.0f;
        want_sum += 2.0f * (float)i + 1.0f;
    }
    EXPECT("replay_in_order", ok && h[n] == want_sum);
    float back[n];
    CHECK_CUDA(cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost));
    bool zero = true;
    for (int i = 0; i < n; i++) zero = zero && back[i] == 0.0f;
    EXPECT("memset_replayed", zero);

    /* a second replay starts from what the host left in h: h -> 2h + 1 again */
    for (int i = 0; i < n; i++) h[i] = 1.0f;
    CHECK_CUDA(cudaGraphLaunch(exec, 0));
    CHECK_CUDA(cudaDeviceSynchronize());
    ok = true;
    for (int i = 0; i < n; i++) ok = ok && h[i] == 3.0f;
    EXPECT("replay_again", ok && h[n] == 3.0f * n);

    /* synchronous calls during a capture are refused and invalidate it */
    CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(n), 0, st, d, 1.0f, 1.0f, n);
    float one = 0.0f;
    const cudaError_t e_copy = cudaMemcpy(&one, d, sizeof(float), cudaMemcpyDeviceToHost);
    EXPECT("sync_copy_refused", e_copy == cudaErrorStreamCaptureUnsupported);
    CHECK_CUDA(cudaStreamIsCapturing(st, &cs));
    EXPECT("capture_invalidated", cs == cudaStreamCaptureStatusInvalidated);
    cudaGraph_t bad = nullptr;
    const cudaError_t e_end = cudaStreamEndCapture(st, &bad);
    EXPECT("end_invalidated", e_end == cudaErrorStreamCaptureInvalidated && bad == nullptr);
    (void)cudaGetLastError();
    CHECK_CUDA(cudaMemcpy(back, d, sizeof back, cudaMemcpyDeviceToHost));
    EXPECT("refused_capture_ran_nothing", back[0] == 0.0f);

    /* the other refusals, one capture each */
    const char* names[4] = {"memset_refused", "device_sync_refused", "stream_sync_refused", "malloc_refused"};
    for (int c = 0; c < 4; c++) {
        CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        void* q = nullptr;
        const cudaError_t e = c == 0 ? cudaMemset(d, 0, 4)
                            : c == 1 ? cudaDeviceSynchronize()
                            : c == 2 ? cudaStreamSynchronize(st)
                                     : cudaMalloc(&q, 256);
        cudaGraph_t g = nullptr;
        EXPECT(names[c], e == cudaErrorStreamCaptureUnsupported &&
                             cudaStreamEndCapture(st, &g) == cudaErrorStreamCaptureInvalidated);
        (void)cudaGetLastError();
    }
    EXPECT("legacy_stream_refused",
           cudaStreamBeginCapture(cudaStreamLegacy, cudaStreamCaptureModeGlobal) != cudaSuccess);
    (void)cudaGetLastError();

    /* fork and join: s2 waits for an event of the capture (joins it), runs d2[i] = 3 d2[i] + 0 after st's copy into
     * d2, and st waits for s2's event before reading d2 back: replayed in issue order */
    cudaStream_t s2;
    cudaEvent_t fork, join;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CHECK_CUDA(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CHECK_CUDA(cudaMemcpyAsync(d2, h, sizeof(float) * n, cudaMemcpyHostToDevice, st));
    CHECK_CUDA(cudaEventRecord(fork, st));
    CHECK_CUDA(cudaStreamWaitEvent(s2, fork, 0));
    CHECK_CUDA(cudaStreamIsCapturing(s2, &cs));
    EXPECT("fork_joins_capture", cs == cudaStreamCaptureStatusActive);
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(n), 0, s2, d2, 3.0f, 0.0f, n);
    CHECK_CUDA(cudaEventRecord(join, s2));
    EXPECT("end_on_forked_stream_refused", cudaStreamEndCapture(s2, &graph) == cudaErrorStreamCaptureUnmatched);
    CHECK_CUDA(cudaStreamWaitEvent(st, join, 0));
    CHECK_CUDA(cudaMemcpyAsync(h, d2, sizeof(float) * n, cudaMemcpyDeviceToHost, st));
    cudaGraph_t forked = nullptr;
    CHECK_CUDA(cudaStreamEndCapture(st, &forked));
    cudaGraphExec_t forked_exec = nullptr;
    CHECK_CUDA(cudaGraphInstantiate(&forked_exec, forked, 0));
    for (int i = 0; i < n; i++) h[i] = (float)i;
    CHECK_CUDA(cudaGraphLaunch(forked_exec, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    ok = true;
    for (int i = 0; i < n; i++) ok = ok && h[i] == 3.0f * (float)i;
    EXPECT("fork_join_replay", ok);
    CHECK_CUDA(cudaGraphExecDestroy(forked_exec));
    CHECK_CUDA(cudaGraphDestroy(forked));
    /* a fork whose last work the origin never waits for */
    CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CHECK_CUDA(cudaEventRecord(fork, st));
    CHECK_CUDA(cudaStreamWaitEvent(s2, fork, 0));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(n), 0, s2, d2, 1.0f, 1.0f, n);
    cudaGraph_t unjoined = nullptr;
    EXPECT("unjoined_fork_refused", cudaStreamEndCapture(st, &unjoined) == cudaErrorStreamCaptureUnjoined &&
                                        unjoined == nullptr);
    CHECK_CUDA(cudaStreamIsCapturing(s2, &cs));
    EXPECT("fork_released", cs == cudaStreamCaptureStatusNone);
    CHECK_CUDA(cudaEventDestroy(fork));
    CHECK_CUDA(cudaEventDestroy(join));
    CHECK_CUDA(cudaStreamDestroy(s2));

    /* after all that, the first graph still replays */
    for (int i = 0; i < n; i++) h[i] = 0.5f;
    CHECK_CUDA(cudaGraphLaunch(exec, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    EXPECT("replay_after_refusals", h[0] == 2.0f && h[n] == 2.0f * n);

    CHECK_CUDA(cudaGraphExecDestroy(exec));
    CHECK_CUDA(cudaGraphDestroy(graph));
    CHECK_CUDA(cudaFree(d));
    CHECK_CUDA(cudaFree(d2));
    CHECK_CUDA(cudaFreeHost(h));
    printf("DONE %d failures\n", failures);
    return failures ? 1 : 0;
}
