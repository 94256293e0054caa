/* defer.cu -- LLMGEN_EMU_DEFER_STREAMS under the emulation (test_emu_defer.py). Emulation only: it reads device
 * memory from the host to see when work ran (nvcc compiles it; the program then says so and stops).
 * `prog MODE DIR`, MODE the value the test put in the environment (none, side, main); prints one OK/FAIL line per
 * check and "DONE <n> failures".
 *   side: a created stream's launches, sets and event records wait until a wait on an event recorded after it,
 *         a synchronisation or a synchronous copy; stream 0 runs at once; a replayed graph's forked work waits too;
 *   main: stream 0's work waits; a created stream's wait on an event of stream 0 runs stream 0 up to that event only;
 *   none: everything runs when issued. */
#ifdef LLMGEN_EMULATE
#include "emulate.h"
#else
#include <cuda_runtime.h>
#include "launch.h"
#endif
#include <cmath>
#include "testio.h"

/* p[0] = v */
__global__ void set_kernel(float* p, float v) { *p = v; }
/* p[0] = p[0] * a + b */
__global__ void axpb_kernel(float* p, float a, float b) { *p = *p * a + b; }

int main(int argc, char** argv) {
#ifndef LLMGEN_EMULATE
    printf("DONE 0 failures (the checks read device memory from the host: emulation only)\n");
    return 0;
#endif
    const std::string mode = argc >= 2 ? argv[1] : "none";
    if (argc >= 3) g_dir = argv[2];
    const bool side = mode == "side", main_ = mode == "main";
    const cudaStream_t st = cudaStreamPerThread;
    cudaStream_t s2;
    cudaEvent_t ev, ev2;
    float *d = nullptr, h = 0.0f;
    CHECK_CUDA(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    CHECK_CUDA(cudaEventCreateWithFlags(&ev2, cudaEventDisableTiming));
    CHECK_CUDA(cudaMalloc((void**)&d, sizeof(float) * 4));
    CHECK_CUDA(cudaMemset(d, 0, sizeof(float) * 4));

    /* a launch and a set on s2, then an event: run now (none, main) or at the wait on the event (side) */
    LLMGEN_LAUNCH(set_kernel, dim3(1), dim3(1), 0, s2, d, 1.0f);
    CHECK_CUDA(cudaMemsetAsync(d + 1, 0xFF, sizeof(float), s2));
    CHECK_CUDA(cudaEventRecord(ev, s2));
    LLMGEN_LAUNCH(set_kernel, dim3(1), dim3(1), 0, s2, d + 2, 5.0f);   /* after the event */
    EXPECT("side_waits", side ? d[0] == 0.0f : d[0] == 1.0f);
    CHECK_CUDA(cudaStreamWaitEvent(st, ev, 0));
    EXPECT("wait_runs_up_to_event", d[0] == 1.0f && std::isnan(d[1]));
    EXPECT("not_past_event", side ? d[2] == 0.0f : d[2] == 5.0f);
    CHECK_CUDA(cudaStreamSynchronize(s2));
    EXPECT("stream_sync_runs_it", d[2] == 5.0f);

    /* stream 0's work: at once, except in main, where s2's wait on an event of stream 0 runs it up to the event */
    LLMGEN_LAUNCH(set_kernel, dim3(1), dim3(1), 0, 0, d + 3, 2.0f);
    CHECK_CUDA(cudaEventRecord(ev2, st));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(1), 0, 0, d + 3, 10.0f, 0.0f);   /* after the event */
    EXPECT("main_waits", main_ ? d[3] == 0.0f : d[3] == 20.0f);
    CHECK_CUDA(cudaStreamWaitEvent(s2, ev2, 0));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(1), 0, s2, d + 3, 1.0f, 1.0f);   /* reads what the fork protects */
    EXPECT("fork_then_side_early", d[3] == (side ? 20.0f : main_ ? 3.0f : 21.0f));
    CHECK_CUDA(cudaMemcpy(&h, d + 3, sizeof(float), cudaMemcpyDeviceToHost));   /* synchronous: runs every queue */
    EXPECT("sync_copy_runs_all", h == (main_ ? 30.0f : 21.0f));

    /* a graph forking s2 off stream 0 and joining it back: a replay issues each operation to its stream again */
    CHECK_CUDA(cudaMemset(d, 0, sizeof(float) * 4));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    LLMGEN_LAUNCH(set_kernel, dim3(1), dim3(1), 0, 0, d, 3.0f);
    CHECK_CUDA(cudaEventRecord(ev, st));
    CHECK_CUDA(cudaStreamWaitEvent(s2, ev, 0));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(1), 0, s2, d, 2.0f, 0.0f);      /* d[0] = 6 */
    CHECK_CUDA(cudaEventRecord(ev2, s2));
    CHECK_CUDA(cudaStreamWaitEvent(st, ev2, 0));
    LLMGEN_LAUNCH(axpb_kernel, dim3(1), dim3(1), 0, 0, d, 1.0f, 1.0f);       /* d[0] = 7 */
    CHECK_CUDA(cudaStreamEndCapture(st, &graph));
    CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    CHECK_CUDA(cudaGraphLaunch(exec, st));
    EXPECT("replay_queued", d[0] == (main_ ? 6.0f : 7.0f));   /* main: the fork ran stream 0 up to it */
    CHECK_CUDA(cudaStreamSynchronize(st));
    EXPECT("replay_in_stream_order", d[0] == 7.0f);
    CHECK_CUDA(cudaGraphLaunch(exec, st));
    CHECK_CUDA(cudaDeviceSynchronize());
    EXPECT("replay_again", d[0] == 7.0f);
    CHECK_CUDA(cudaGraphExecDestroy(exec));
    CHECK_CUDA(cudaGraphDestroy(graph));

    CHECK_CUDA(cudaFree(d));
    CHECK_CUDA(cudaEventDestroy(ev));
    CHECK_CUDA(cudaEventDestroy(ev2));
    CHECK_CUDA(cudaStreamDestroy(s2));
    printf("DONE %d failures\n", failures);
    return failures ? 1 : 0;
}
