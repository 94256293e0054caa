/* emu_runtime.h -- the CUDA runtime API on host memory.
 *
 * CONTRACT
 *   Definitions of NVIDIA's declarations (cuda_runtime_api.h stays included), all synchronous:
 *   - cudaMalloc: host memory, 256-byte aligned, in its own mapping that ends at a PROT_NONE
 *     guard page (a kernel running past the end faults), filled with 0xFF bytes (NaN as float or
 *     bf16, -1 as int; LLMGEN_EMU_NO_POISON: not filled). cudaMallocHost: aligned_alloc.
 *   - cudaMemcpy* / cudaMemset* are memmove / memset; they check that the device side lies inside
 *     memory from cudaMalloc / cudaMallocHost and otherwise return cudaErrorInvalidValue, saying
 *     why on stderr (a GPU would fault).
 *   - Streams and events are trivially ordered (every call is synchronous); events read a steady
 *     clock. LLMGEN_EMU_DEFER_STREAMS=side (or main) keeps the work of created streams (or of stream 0) in a
 *     queue until a wait on an event recorded after it, a synchronisation, a query or a synchronous copy or
 *     set forces it (emu_launch.h, DeferMode): the latest (earliest) schedule CUDA allows, so a missing event
 *     wait between streams gives other numbers.
 *   - CUDA Graphs by stream capture (cudaStreamBeginCapture / EndCapture, cudaGraphInstantiate,
 *     cudaGraphLaunch, the destroys, cudaStreamIsCapturing): launches, cudaMemcpyAsync,
 *     cudaMemsetAsync, cudaEventRecord and cublasLtMatmul on the stream being captured are checked
 *     and recorded, not run; cudaGraphLaunch runs them in order. During a capture the calls CUDA
 *     refuses (cudaMemcpy, cudaMemset, cudaMemcpy2D, the synchronisations and queries, cudaMalloc,
 *     cudaMallocHost) return cudaErrorStreamCaptureUnsupported and invalidate it, so that
 *     cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated. As with --default-stream
 *     per-thread, stream 0 is cudaStreamPerThread (capturable); cudaStreamLegacy is refused. Another
 *     stream joins a capture by waiting on an event recorded in it (fork) and must be joined back
 *     (emu_launch.h, Capture).
 *   - The fake device reports sm_90 limits, the name "llmgen CPU emulation" and one
 *     multiprocessor per OpenMP thread. cudaFuncSetAttribute's dynamic shared-memory limit is
 *     honoured by LLMGEN_LAUNCH (48 KiB by default, 227 KiB at most).
 *   - The symbol templates cuda_runtime.h keeps behind __CUDACC__ (cudaMemcpyToSymbol, ...).
 *
 * Part of the CUDA-on-CPU emulation (README.md beside it); include emulate.h, never a part alone.
 */
#ifndef LLMGEN_EMU_RUNTIME_H
#define LLMGEN_EMU_RUNTIME_H
#ifndef LLMGEN_EMULATE_H
#error "emu_runtime.h is a part of emulate.h: include emulate.h"
#endif

namespace llmgen_emu {
enum MemKind { MEM_DEVICE, MEM_HOST_PINNED, MEM_SYMBOL /* a __device__/__constant__ variable */ };
struct Alloc { size_t bytes; MemKind kind; void* map; size_t span; }; /* map: device memory's mapping */
inline std::mutex g_mem_mutex;
inline std::map<uintptr_t, Alloc> g_allocs;
inline size_t g_device_bytes = 0;

inline cudaError_t alloc(void** p, size_t bytes, MemKind kind) {
    if (!p) return cudaErrorInvalidValue;
    *p = nullptr;
    if (bytes == 0) return cudaSuccess;
    const size_t rounded = (bytes + 255) / 256 * 256;
    void* q = nullptr;
    unsigned char* map = nullptr;
    size_t span = 0;
    if (kind == MEM_DEVICE) {
        /* 256-byte aligned and ending at a guard page: a kernel running past the end faults (SIGSEGV)
         * instead of silently corrupting the host heap */
        map = guarded_map(rounded, &span);
        if (map) q = map + span - (size_t)sysconf(_SC_PAGESIZE) - rounded;
    } else {
        q = aligned_alloc(256, rounded);
    }
    if (!q) return cudaErrorMemoryAllocation;
#ifndef LLMGEN_EMU_NO_POISON
    if (kind == MEM_DEVICE) memset(q, 0xFF, rounded); /* NaN floats, -1 ints: nothing may assume zeroed memory */
#endif
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs[(uintptr_t)q] = Alloc{bytes, kind, map, span};
    if (kind == MEM_DEVICE) g_device_bytes += bytes;
    *p = q;
    return cudaSuccess;
}
inline void register_symbol(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    g_allocs.emplace((uintptr_t)p, Alloc{bytes, MEM_SYMBOL, nullptr, 0});
}
inline cudaError_t release(void* p, MemKind kind) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end() || it->second.kind != kind) return cudaErrorInvalidValue;
    if (kind == MEM_DEVICE) g_device_bytes -= it->second.bytes;
    if (it->second.map) munmap(it->second.map, it->second.span);
    else free(p);
    g_allocs.erase(it);
    return cudaSuccess;
}
/* [p, p+bytes) inside one allocation of cudaMalloc / cudaMallocHost? */
inline bool device_accessible(const void* p, size_t bytes) {
    if (bytes == 0) return true;
    std::lock_guard<std::mutex> lock(g_mem_mutex);
    auto it = g_allocs.upper_bound((uintptr_t)p);
    if (it == g_allocs.begin()) return false;
    --it;
    const uintptr_t a = (uintptr_t)p;
    return a >= it->first && a + bytes <= it->first + it->second.bytes;
}
inline cudaError_t fail(const char* func, const char* why) {
    fprintf(stderr, "llmgen emulate: %s: %s\n", func, why);
    tl_last_error = cudaErrorInvalidValue;
    return cudaErrorInvalidValue;
}
inline cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, const char* func) {
    if (count == 0) return cudaSuccess;
    if (!dst || !src) return fail(func, "null pointer");
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((int)kind < 0 || (int)kind > 4) {
        tl_last_error = cudaErrorInvalidMemcpyDirection;
        return cudaErrorInvalidMemcpyDirection;
    }
    if (dst_dev && !device_accessible(dst, count))
        return fail(func, "the destination range is not inside memory from cudaMalloc/cudaMallocHost");
    if (src_dev && !device_accessible(src, count))
        return fail(func, "the source range is not inside memory from cudaMalloc/cudaMallocHost");
    memmove(dst, src, count);
    return cudaSuccess;
}
inline cudaError_t fill(void* p, int value, size_t count, const char* func) {
    if (count == 0) return cudaSuccess;
    if (!device_accessible(p, count))
        return fail(func, "the range is not inside memory from cudaMalloc/cudaMallocHost");
    memset(p, value, count);
    return cudaSuccess;
}
/* a copy or set on `stream`: checked now, done now or, on a stream being captured, at cudaGraphLaunch (or, on a
 * deferring stream, when its queue runs) */
inline cudaError_t copy_on(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream,
                           const char* func) {
    if (!kept(stream)) return copy(dst, src, count, kind, func);
    if ((int)kind < 0 || (int)kind > 4) {
        tl_last_error = cudaErrorInvalidMemcpyDirection;
        return cudaErrorInvalidMemcpyDirection;
    }
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (count && (!dst || !src)) return fail(func, "null pointer");
    if (dst_dev && !device_accessible(dst, count))
        return fail(func, "the destination range is not inside memory from cudaMalloc/cudaMallocHost");
    if (src_dev && !device_accessible(src, count))
        return fail(func, "the source range is not inside memory from cudaMalloc/cudaMallocHost");
    on_stream(stream, [=]() { copy(dst, src, count, kind, func); });
    return cudaSuccess;
}
inline cudaError_t fill_on(void* p, int value, size_t count, cudaStream_t stream, const char* func) {
    if (!kept(stream)) return fill(p, value, count, func);
    if (count && !device_accessible(p, count))
        return fail(func, "the range is not inside memory from cudaMalloc/cudaMallocHost");
    on_stream(stream, [=]() { fill(p, value, count, func); });
    return cudaSuccess;
}
inline size_t physical_bytes() {
    return (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
}
inline int g_device = 0;
} /* namespace llmgen_emu */

/* NVIDIA leaves these opaque: here a graph is the list of operations its capture recorded */
struct CUgraph_st { std::vector<std::function<void()>> ops; };
struct CUgraphExec_st { std::vector<std::function<void()>> ops; };

/* the calls a capture refuses return through this */
#define LLMGEN_EMU_NOT_IN_CAPTURE(func)                                          \
    do {                                                                         \
        cudaError_t refused_;                                                    \
        if (::llmgen_emu::refused_in_capture(func, &refused_)) return refused_;  \
    } while (0)

extern "C" {
inline cudaError_t cudaMalloc(void** devPtr, size_t size) {
    if (devPtr) *devPtr = nullptr;
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaMalloc");
    const cudaError_t e = llmgen_emu::alloc(devPtr, size, llmgen_emu::MEM_DEVICE);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaMallocManaged(void** devPtr, size_t size, unsigned int) { return cudaMalloc(devPtr, size); }
inline cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t) { return cudaMalloc(devPtr, size); }
inline cudaError_t cudaFree(void* devPtr) {
    const cudaError_t e = llmgen_emu::release(devPtr, llmgen_emu::MEM_DEVICE);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t) { return cudaFree(devPtr); }
inline cudaError_t cudaMallocHost(void** ptr, size_t size) {
    if (ptr) *ptr = nullptr;
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaMallocHost");
    const cudaError_t e = llmgen_emu::alloc(ptr, size, llmgen_emu::MEM_HOST_PINNED);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaHostAlloc(void** pHost, size_t size, unsigned int) { return cudaMallocHost(pHost, size); }
inline cudaError_t cudaFreeHost(void* ptr) {
    const cudaError_t e = llmgen_emu::release(ptr, llmgen_emu::MEM_HOST_PINNED);
    llmgen_emu::set_error(e);
    return e;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaMemcpy");
    llmgen_emu::flush_all();   /* synchronous: the work issued before it is done */
    return llmgen_emu::copy(dst, src, count, kind, "cudaMemcpy");
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                                   cudaStream_t stream) {
    return llmgen_emu::copy_on(dst, src, count, kind, stream, "cudaMemcpyAsync");
}
inline cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                                size_t height, enum cudaMemcpyKind kind) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaMemcpy2D");
    llmgen_emu::flush_all();
    if (width > dpitch || width > spitch) return llmgen_emu::fail("cudaMemcpy2D", "width exceeds a pitch");
    for (size_t r = 0; r < height; ++r) {
        const cudaError_t e = llmgen_emu::copy((char*)dst + r * dpitch, (const char*)src + r * spitch, width,
                                               kind, "cudaMemcpy2D");
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaMemset");
    llmgen_emu::flush_all();
    return llmgen_emu::fill(devPtr, value, count, "cudaMemset");
}
inline cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
    return llmgen_emu::fill_on(devPtr, value, count, stream, "cudaMemsetAsync");
}
inline cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
    const size_t t = llmgen_emu::physical_bytes();
    size_t used;
    {
        std::lock_guard<std::mutex> lock(llmgen_emu::g_mem_mutex);
        used = llmgen_emu::g_device_bytes;
    }
    if (total) *total = t;
    if (free_bytes) *free_bytes = used < t ? t - used : 0;
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t count, size_t offset,
                                      enum cudaMemcpyKind) {
    memcpy((char*)symbol + offset, src, count);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const void* symbol, size_t count, size_t offset,
                                        enum cudaMemcpyKind) {
    memcpy(dst, (const char*)symbol + offset, count);
    return cudaSuccess;
}

inline cudaError_t cudaDeviceSynchronize(void) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaDeviceSynchronize");
    llmgen_emu::flush_all();
    return cudaSuccess;
}
inline cudaError_t cudaDeviceReset(void) { return cudaSuccess; }
inline cudaError_t cudaDeviceSetLimit(enum cudaLimit, size_t) { return cudaSuccess; }
inline cudaError_t cudaGetLastError(void) {
    const cudaError_t e = llmgen_emu::tl_last_error;
    llmgen_emu::tl_last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaPeekAtLastError(void) { return llmgen_emu::tl_last_error; }
inline const char* cudaGetErrorName(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureUnjoined: return "cudaErrorStreamCaptureUnjoined";
    default: return "cudaErrorUnknown";
    }
}
inline const char* cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalState: return "the operation is not permitted in the current state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "the capture was not initiated in this stream";
    case cudaErrorStreamCaptureUnjoined:
        return "capture sequence contains a fork that was not joined to the primary stream";
    default: return "unknown error";
    }
}

inline cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
    if (!pStream) return cudaErrorInvalidValue;
    *pStream = new CUstream_st{0};
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int) { return cudaStreamCreate(pStream); }
inline cudaError_t cudaStreamCreateWithPriority(cudaStream_t* pStream, unsigned int, int) { return cudaStreamCreate(pStream); }
inline cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);
    delete stream;
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaStreamSynchronize");
    llmgen_emu::flush_stream(stream);
    return cudaSuccess;
}
inline cudaError_t cudaStreamQuery(cudaStream_t stream) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaStreamQuery");
    llmgen_emu::flush_stream(stream);   /* answers "done" */
    return cudaSuccess;
}
/* in a capture: an event recorded in it forks `stream` into the capture (or, waited for by the origin, joins the
 * recording stream's work up to the event back), and a replay waits again; otherwise the work up to the event's
 * record runs first where it is queued (LLMGEN_EMU_DEFER_STREAMS), else it has run already */
inline cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
    llmgen_emu::Capture& c = llmgen_emu::g_capture;
    if (!event) return cudaErrorInvalidResourceHandle;
    auto it = c.active ? c.events.find(event) : c.events.end();
    if (it == c.events.end()) {
        if (!llmgen_emu::capturing(stream)) llmgen_emu::wait_event(event);
        return cudaSuccess;
    }
    c.ops.push_back([event]() { llmgen_emu::wait_event(event); });
    const cudaStream_t s = llmgen_emu::stream_key(stream);
    if (s == cudaStreamLegacy) return cudaErrorStreamCaptureImplicit;
    if (!llmgen_emu::capturing(stream)) c.last_op[s] = 0, c.waited[s] = 0;   /* forked into the capture */
    if (s == c.stream && it->second.first != c.stream) {                    /* the origin joins that stream's work */
        size_t& w = c.waited[it->second.first];
        w = std::max(w, it->second.second);
    }
    return cudaSuccess;
}

inline cudaError_t cudaEventCreate(cudaEvent_t* event) {
    if (!event) return cudaErrorInvalidValue;
    *event = new CUevent_st{std::chrono::steady_clock::time_point(), false};
    return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) { return cudaEventCreate(event); }
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    if (!event) return cudaErrorInvalidResourceHandle;
    const bool captured = llmgen_emu::capturing(stream);
    if (!captured) llmgen_emu::record_event(event, stream);
    else llmgen_emu::capture_raw(stream, [event, stream]() { llmgen_emu::record_event(event, stream); });
    if (captured) {   /* what a wait on it joins: the stream's work so far */
        auto& c = llmgen_emu::g_capture;
        const cudaStream_t s = llmgen_emu::stream_key(stream);
        c.events[event] = {s, s == c.stream ? c.ops.size() : c.last_op[s]};
    }
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaEventSynchronize");
    if (event) llmgen_emu::wait_event(event);
    return event ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
inline cudaError_t cudaEventQuery(cudaEvent_t event) {
    LLMGEN_EMU_NOT_IN_CAPTURE("cudaEventQuery");
    if (event) llmgen_emu::wait_event(event);   /* answers "done" */
    return event ? cudaSuccess : cudaErrorInvalidResourceHandle;
}
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms || !start || !end) return cudaErrorInvalidResourceHandle;
    if (!start->recorded || !end->recorded) return cudaErrorInvalidResourceHandle;
    *ms = std::chrono::duration<float, std::milli>(end->t - start->t).count();
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
    delete event;
    return cudaSuccess;
}

/* ---- CUDA Graphs by stream capture (one capture at a time; see llmgen_emu::Capture) ---- */
inline cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode) {
    if (stream == cudaStreamLegacy) {
        fprintf(stderr, "llmgen emulate: cudaStreamBeginCapture: the legacy default stream cannot be captured\n");
        return cudaErrorStreamCaptureUnsupported;
    }
    if (llmgen_emu::g_capture.active) return cudaErrorIllegalState;
    llmgen_emu::g_capture = llmgen_emu::Capture();
    llmgen_emu::g_capture.active = true;
    llmgen_emu::g_capture.stream = llmgen_emu::stream_key(stream);
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
    if (!pGraph) return cudaErrorInvalidValue;
    if (!llmgen_emu::capturing(stream)) return cudaErrorIllegalState;
    if (llmgen_emu::stream_key(stream) != llmgen_emu::g_capture.stream) return cudaErrorStreamCaptureUnmatched;
    llmgen_emu::Capture done = std::move(llmgen_emu::g_capture);
    llmgen_emu::g_capture = llmgen_emu::Capture();
    *pGraph = nullptr;
    if (done.invalid) return cudaErrorStreamCaptureInvalidated;
    for (const auto& j : done.last_op)
        if (j.second > done.waited[j.first]) {
            fprintf(stderr, "llmgen emulate: cudaStreamEndCapture: a forked stream's last work was not joined back "
                            "(the origin never waited for an event recorded after it)\n");
            return cudaErrorStreamCaptureUnjoined;
        }
    *pGraph = new CUgraph_st{std::move(done.ops)};
    return cudaSuccess;
}
inline cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
    if (!status) return cudaErrorInvalidValue;
    *status = !llmgen_emu::capturing(stream) ? cudaStreamCaptureStatusNone
            : llmgen_emu::g_capture.invalid  ? cudaStreamCaptureStatusInvalidated
                                             : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* pGraphExec, cudaGraph_t graph, unsigned long long) {
    if (!pGraphExec || !graph) return cudaErrorInvalidValue;
    *pGraphExec = new CUgraphExec_st{graph->ops};
    return cudaSuccess;
}
/* the recorded operations, in order (in a capture of `stream`: recorded in turn) */
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
    if (!graphExec) return cudaErrorInvalidValue;
    if (llmgen_emu::capturing(stream)) {
        llmgen_emu::capture_raw(stream, [graphExec]() {
            for (auto& op : graphExec->ops) op();
        });
        return cudaSuccess;
    }
    for (auto& op : graphExec->ops) op();   /* each issues itself to its stream (run_on) */
    return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
    delete graphExec;
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceCount(int* count) {
    if (count) *count = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    llmgen_emu::g_device = device;
    return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* device) {
    if (device) *device = llmgen_emu::g_device;
    return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
    if (v) *v = CUDART_VERSION;
    return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
    if (v) *v = CUDART_VERSION;
    return cudaSuccess;
}
/* The fake device: sm_90 limits, one "SM" per OpenMP thread. */
inline cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* p, int device) {
    if (!p) return cudaErrorInvalidValue;
    if (device != 0) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "llmgen CPU emulation");
    p->totalGlobalMem = llmgen_emu::physical_bytes();
    p->sharedMemPerBlock = llmgen_emu::kSmemDefault;
    p->sharedMemPerBlockOptin = llmgen_emu::kSmemOptin;
    p->sharedMemPerMultiprocessor = 228 * 1024;
    p->reservedSharedMemPerBlock = 1024;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)2147483647;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->totalConstMem = 65536;
    p->major = 9;
    p->minor = 0;
    p->textureAlignment = 512;
    p->texturePitchAlignment = 32;
    p->multiProcessorCount = llmgen_emu::omp_workers();
    p->maxThreadsPerMultiProcessor = 2048;
    p->maxBlocksPerMultiProcessor = 32;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->memoryBusWidth = 5120;
    p->concurrentKernels = 1;
    p->unifiedAddressing = 1;
    p->managedMemory = 1;
    p->canMapHostMemory = 1;
    p->integrated = 1;
    p->asyncEngineCount = 0;
    p->cooperativeLaunch = 0;
    p->hostNativeAtomicSupported = 1;
    p->pageableMemoryAccess = 1;
    p->globalL1CacheSupported = 1;
    p->localL1CacheSupported = 1;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
    if (!value) return cudaErrorInvalidValue;
    if (device != 0) return cudaErrorInvalidDevice;
    cudaDeviceProp p;
    cudaGetDeviceProperties(&p, 0);
    int v = 0;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: v = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: v = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: v = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: v = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: v = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: v = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: v = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: v = (int)p.sharedMemPerBlockOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: v = (int)p.sharedMemPerMultiprocessor; break;
    case cudaDevAttrTotalConstantMemory: v = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: v = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: v = p.regsPerBlock; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: v = p.regsPerMultiprocessor; break;
    case cudaDevAttrClockRate: v = 1980000; break;
    case cudaDevAttrMemoryClockRate: v = 2619000; break;
    case cudaDevAttrGlobalMemoryBusWidth: v = p.memoryBusWidth; break;
    case cudaDevAttrMultiProcessorCount: v = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: v = p.minor; break;
    case cudaDevAttrL2CacheSize: v = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: v = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: v = p.maxBlocksPerMultiProcessor; break;
    case cudaDevAttrUnifiedAddressing: v = 1; break;
    case cudaDevAttrManagedMemory: v = 1; break;
    case cudaDevAttrConcurrentKernels: v = 1; break;
    case cudaDevAttrIntegrated: v = 1; break;
    default: v = 0; break;
    }
    *value = v;
    return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > llmgen_emu::kSmemOptin) {
            llmgen_emu::tl_last_error = cudaErrorInvalidValue;
            return cudaErrorInvalidValue;
        }
        std::lock_guard<std::mutex> lock(llmgen_emu::g_func_mutex);
        llmgen_emu::g_func_max_dyn_smem[func] = value;
    }
    return cudaSuccess;
}
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
    if (!attr) return cudaErrorInvalidValue;
    memset(attr, 0, sizeof(*attr));
    attr->maxThreadsPerBlock = 1024;
    attr->numRegs = 32;
    attr->ptxVersion = 90;
    attr->binaryVersion = 90;
    int dyn = (int)llmgen_emu::kSmemDefault;
    {
        std::lock_guard<std::mutex> lock(llmgen_emu::g_func_mutex);
        auto it = llmgen_emu::g_func_max_dyn_smem.find(func);
        if (it != llmgen_emu::g_func_max_dyn_smem.end()) dyn = it->second;
    }
    attr->maxDynamicSharedSizeBytes = dyn;
    return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* numBlocks, const void*,
                                                                          int blockSize, size_t dynamicSMemSize,
                                                                          unsigned int) {
    if (!numBlocks || blockSize <= 0) return cudaErrorInvalidValue;
    int by_threads = 2048 / blockSize;
    int by_smem = dynamicSMemSize ? (int)((228 * 1024) / dynamicSMemSize) : 32;
    *numBlocks = std::max(0, std::min(std::min(by_threads, by_smem), 32));
    return cudaSuccess;
}
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func, int blockSize,
                                                                 size_t dynamicSMemSize) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks, func, blockSize, dynamicSMemSize, 0);
}
} /* extern "C" */

/* C++ API templates that cuda_runtime.h keeps behind __CUDACC__ */
template <class T>
inline cudaError_t cudaMemcpyToSymbol(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                      enum cudaMemcpyKind kind = cudaMemcpyHostToDevice) {
    return cudaMemcpyToSymbol((const void*)&symbol, src, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyToSymbolAsync(const T& symbol, const void* src, size_t count, size_t offset = 0,
                                           enum cudaMemcpyKind kind = cudaMemcpyHostToDevice,
                                           cudaStream_t = 0) {
    return cudaMemcpyToSymbol((const void*)&symbol, src, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbol(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                        enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost) {
    return cudaMemcpyFromSymbol(dst, (const void*)&symbol, count, offset, kind);
}
template <class T>
inline cudaError_t cudaMemcpyFromSymbolAsync(void* dst, const T& symbol, size_t count, size_t offset = 0,
                                             enum cudaMemcpyKind kind = cudaMemcpyDeviceToHost,
                                             cudaStream_t = 0) {
    return cudaMemcpyFromSymbol(dst, (const void*)&symbol, count, offset, kind);
}
template <class T>
inline cudaError_t cudaGetSymbolAddress(void** devPtr, const T& symbol) {
    if (!devPtr) return cudaErrorInvalidValue;
    llmgen_emu::register_symbol(&symbol, sizeof(T)); /* so cudaMemcpy accepts it as device memory */
    *devPtr = (void*)&symbol;
    return cudaSuccess;
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, enum cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <class T>
inline cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, T* entry) {
    return cudaFuncGetAttributes(attr, reinterpret_cast<const void*>(entry));
}

#endif /* LLMGEN_EMU_RUNTIME_H */
