/* emulate_nccl.h -- the NCCL calls of a data-parallel trainer, on the CPU, over comm.h.
 *
 * CONTRACT
 *   Under -DLLMGEN_EMULATE (g++, see emulate.h) this header stands in for <nccl.h>: train.cu says
 *       #ifdef LLMGEN_EMULATE
 *       #include "emulate_nccl.h"   // after emulate.h and comm.h
 *       #else
 *       #include <nccl.h>
 *       #endif
 *   and calls NCCL exactly as on a GPU. Include it after emulate.h (it needs cudaStream_t); it
 *   includes comm.h itself (../common/comm.h, else "comm.h" on the include path) unless comm.h came
 *   first (the generator pastes comm.h).
 *   Emulated "device" memory is host memory (emulate.h's cudaMalloc), so the collectives read and
 *   write the buffers directly. Build with mpicxx flags and -DLLMGEN_MPI to run under mpirun, or
 *   without MPI for the TCP/file rendezvous of comm.h.
 *
 *   Names, types, enum values and signatures follow NCCL's nccl.h / API documentation (2.18):
 *     ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclCommAbort,
 *     ncclCommFinalize, ncclCommCount, ncclCommUserRank, ncclCommCuDevice, ncclAllReduce,
 *     ncclReduceScatter, ncclReduce, ncclAllGather, ncclBroadcast, ncclBcast, ncclGroupStart, ncclGroupEnd,
 *     ncclGetErrorString, ncclGetLastError; ncclUniqueId, ncclComm_t, ncclResult_t,
 *     ncclDataType_t, ncclRedOp_t. Reductions: ncclSum, ncclAvg and ncclMax on ncclFloat32,
 *     ncclFloat64 and ncclBfloat16 (ncclMax: the FP8 trainer's amaxes); ncclAllGather /
 *     ncclBroadcast move any type. Anything else returns ncclInvalidArgument with the reason in
 *     ncclGetLastError() and on stderr.
 *
 *   Bootstrap, as on the GPU: the program calls comm_init (comm.h) first; rank 0 calls
 *   ncclGetUniqueId; the 128-byte id goes to every rank with comm_broadcast; every rank calls
 *   ncclCommInitRank(&nccl, world_size, id, rank). The emulated communicator runs over the Comm
 *   that comm_init made (comm_current()); InitRank checks nranks and rank against it and that
 *   every rank holds the same id (comm_agree). Without comm_init only nranks == 1 works.
 *
 * NUMERICS (the emulation is comm.h's deterministic collectives)
 *   - Every element is reduced by one owner rank, in rank order 0..N-1, in fp32 for ncclFloat32
 *     and ncclBfloat16 (bf16 widened exactly) and fp64 for ncclFloat64; bf16 is rounded ONCE to
 *     nearest even at the end. ncclAvg divides that sum by N (fp32 / fp64) before rounding.
 *     Every rank gets identical bits, whatever the transport.
 *   - Real NCCL differs: its ring / tree / NVLS algorithms add in an order set by the algorithm,
 *     channel split and topology (not rank order), so fp32 sums can differ in the last bits; for
 *     bf16 a ring rounds the partial sum to bf16 at every hop (N-1 roundings, each up to half a
 *     bf16 ulp), so real bf16 results can differ by a few bf16 ulps and are less accurate; for
 *     floating-point ncclAvg NCCL multiplies each contribution by 1/N before summing (PreMulSum
 *     in its sources), which equals sum/N exactly only when N is a power of two (absent
 *     underflow). NCCL results are still identical on all ranks (each element's result is
 *     computed once and copied), which is the property the trainer relies on.
 *   - Streams: a call first runs the work queued on its stream (LLMGEN_EMU_DEFER_STREAMS), then
 *     completes before it returns. Without deferral emulate.h runs everything at once, so
 *     stream-ordering bugs (a collective on the wrong stream, llm.c #369) show only under
 *     LLMGEN_EMU_DEFER_STREAMS=side|main. ncclGroupStart/End only count; grouped calls run one by
 *     one, in call order, which is valid because every rank issues the same calls in the same order.
 *   - A dead or stuck peer ends the process with comm.h's message (comm_fail) instead of an
 *     ncclRemoteError / asynchronous error for ncclCommGetAsyncError.
 */
#ifndef LLMGEN_EMULATE_NCCL_H
#define LLMGEN_EMULATE_NCCL_H

#ifndef LLMGEN_EMULATE
#error "emulate_nccl.h is the CPU emulation of NCCL: include <nccl.h> when building with nvcc"
#endif
#ifndef LLMGEN_COMM_H
#if __has_include("../common/comm.h")
#include "../common/comm.h"
#else
#include "comm.h"  // templates/common on the include path
#endif
#endif

#define NCCL_MAJOR 2
#define NCCL_MINOR 18
#define NCCL_PATCH 5
#define NCCL_SUFFIX "-llmgen-emulated"
#define NCCL_VERSION(X, Y, Z) (((X) <= 2 && (Y) <= 8) ? (X) * 1000 + (Y) * 100 + (Z) : (X) * 10000 + (Y) * 100 + (Z))
#define NCCL_VERSION_CODE NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH)
#define NCCL_UNIQUE_ID_BYTES 128

typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
typedef struct ncclComm* ncclComm_t;

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclNumResults = 8
} ncclResult_t;

typedef enum {
    ncclInt8 = 0, ncclChar = 0,
    ncclUint8 = 1,
    ncclInt32 = 2, ncclInt = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6, ncclHalf = 6,
    ncclFloat32 = 7, ncclFloat = 7,
    ncclFloat64 = 8, ncclDouble = 8,
    ncclBfloat16 = 9,
    ncclNumTypes = 10
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

// The emulated communicator: the process's Comm plus what NCCL reports about itself.
struct ncclComm {
    Comm* comm;        // comm_current() at ncclCommInitRank (or a private one-rank Comm)
    Comm single;       // used when nranks == 1 and comm_init was never called
    int nranks, rank, device;
};

namespace llmgen_nccl {

inline char* last_error() {
    static char text[512] = "";
    return text;
}

inline int& group_depth() {
    static int depth = 0;
    return depth;
}

// Record the reason for a failed call (ncclGetLastError) and say it on stderr.
inline ncclResult_t fail(ncclResult_t code, const char* fmt, ...) COMM_PRINTF(2, 3);
inline ncclResult_t fail(ncclResult_t code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error(), 512, fmt, ap);
    va_end(ap);
    fprintf(stderr, "NCCL (emulated) error: %s\n", last_error());
    return code;
}

inline size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

inline const char* type_name(ncclDataType_t t) {
    static const char* names[] = {"ncclInt8", "ncclUint8", "ncclInt32", "ncclUint32", "ncclInt64",
                                  "ncclUint64", "ncclFloat16", "ncclFloat32", "ncclFloat64", "ncclBfloat16"};
    return (int)t >= 0 && (int)t < (int)ncclNumTypes ? names[(int)t] : "an unknown ncclDataType_t";
}

// The comm.h type and op of a reduction; ncclInvalidArgument for what is not emulated.
inline ncclResult_t reduction(const char* call, ncclDataType_t t, ncclRedOp_t op, CommDtype* dt, CommOp* cop) {
    switch (t) {
    case ncclFloat32: *dt = COMM_F32; break;
    case ncclFloat64: *dt = COMM_F64; break;
    case ncclBfloat16: *dt = COMM_BF16; break;
    default: return fail(ncclInvalidArgument, "%s: reductions are emulated for ncclFloat32, ncclFloat64 and "
                         "ncclBfloat16, not %s", call, type_name(t));
    }
    if (op == ncclSum) *cop = COMM_SUM;
    else if (op == ncclAvg) *cop = COMM_AVG;
    else if (op == ncclMax) *cop = COMM_MAX;
    else return fail(ncclInvalidArgument, "%s: only ncclSum, ncclAvg and ncclMax are emulated (op %d)", call, (int)op);
    return ncclSuccess;
}

inline ncclResult_t check_comm(const char* call, ncclComm_t comm) {
    if (!comm || !comm->comm) return fail(ncclInvalidArgument, "%s: comm is NULL or destroyed", call);
    return ncclSuccess;
}

inline ncclResult_t check_buffers(const char* call, const void* send, const void* recv, size_t count) {
    if (count && (!send || !recv)) return fail(ncclInvalidArgument, "%s: NULL buffer with count %zu", call, count);
    return ncclSuccess;
}

}  // namespace llmgen_nccl

inline ncclResult_t ncclGetVersion(int* version) {
    if (!version) return llmgen_nccl::fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

inline const char* ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

inline const char* ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return llmgen_nccl::last_error();
}

// A fresh id: a marker, the creator's pid and time, and random bytes (only compared, never parsed
// for an address: the emulation travels over comm.h's connections).
inline ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
    if (!uniqueId) return llmgen_nccl::fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    memset(uniqueId, 0, sizeof(*uniqueId));
    snprintf(uniqueId->internal, 32, "llmgen-emulated-nccl");
    uint64_t words[4] = {(uint64_t)getpid(), (uint64_t)time(NULL), 0, 0};
    FILE* f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&words[2], sizeof(uint64_t), 2, f) != 2) words[2] = (uint64_t)clock();
        fclose(f);
    }
    memcpy(uniqueId->internal + 32, words, sizeof(words));
    return ncclSuccess;
}

inline ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
    if (!comm) return llmgen_nccl::fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = NULL;
    if (strncmp(commId.internal, "llmgen-emulated-nccl", 32) != 0)
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclCommInitRank: the id was not made by ncclGetUniqueId "
                                 "(was it broadcast from rank 0 before this call?)");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d ranks", rank, nranks);
    ncclComm_t nc = new ncclComm();
    nc->comm = comm_current();
    if (!nc->comm) {
        if (nranks != 1) {
            delete nc;
            return llmgen_nccl::fail(ncclInvalidUsage, "ncclCommInitRank: %d ranks, but comm_init was not called: "
                                     "the emulated NCCL runs over comm.h's communicator", nranks);
        }
        comm_init(&nc->single, NULL);  // no launcher variables -> one rank, no network
        nc->comm = &nc->single;
    }
    if (nc->comm->world_size != nranks || nc->comm->rank != rank) {
        int ws = nc->comm->world_size, r = nc->comm->rank;
        delete nc;
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclCommInitRank: called as rank %d of %d, but this process "
                                 "is rank %d of %d in comm.h", rank, nranks, r, ws);
    }
    // every rank must hold the same id (NCCL would hang or fail to connect otherwise)
    char hex[2 * NCCL_UNIQUE_ID_BYTES + 1];
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned)(unsigned char)commId.internal[i]);
    comm_agree(nc->comm, "the NCCL unique id (rank 0 must broadcast it before ncclCommInitRank)", hex);
    nc->nranks = nranks;
    nc->rank = rank;
    cudaGetDevice(&nc->device);
    *comm = nc;
    return ncclSuccess;
}

inline ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    if (comm->comm == &comm->single) comm_free(&comm->single);
    comm->comm = NULL;
    delete comm;
    return ncclSuccess;
}

inline ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

inline ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    return llmgen_nccl::check_comm("ncclCommFinalize", comm);  // nothing is in flight
}

inline ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
    ncclResult_t r = llmgen_nccl::check_comm("ncclCommCount", comm);
    if (r == ncclSuccess && count) *count = comm->nranks;
    return r;
}

inline ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
    ncclResult_t r = llmgen_nccl::check_comm("ncclCommUserRank", comm);
    if (r == ncclSuccess && rank) *rank = comm->rank;
    return r;
}

inline ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
    ncclResult_t r = llmgen_nccl::check_comm("ncclCommCuDevice", comm);
    if (r == ncclSuccess && device) *device = comm->device;
    return r;
}

inline ncclResult_t ncclGroupStart() {
    llmgen_nccl::group_depth()++;
    return ncclSuccess;
}

inline ncclResult_t ncclGroupEnd() {
    if (llmgen_nccl::group_depth() == 0)
        return llmgen_nccl::fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    llmgen_nccl::group_depth()--;
    return ncclSuccess;
}

// recvbuff[i] = op over ranks of sendbuff[i]; in place when sendbuff == recvbuff.
inline ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                  ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);   /* LLMGEN_EMU_DEFER_STREAMS: the stream's queued work first */
    CommDtype dt = COMM_F32;
    CommOp cop = COMM_SUM;
    ncclResult_t r;
    if ((r = llmgen_nccl::check_comm("ncclAllReduce", comm)) != ncclSuccess) return r;
    if ((r = llmgen_nccl::reduction("ncclAllReduce", datatype, op, &dt, &cop)) != ncclSuccess) return r;
    if ((r = llmgen_nccl::check_buffers("ncclAllReduce", sendbuff, recvbuff, count)) != ncclSuccess) return r;
    comm_allreduce(comm->comm, recvbuff, sendbuff, count, dt, cop);
    return ncclSuccess;
}

// Rank r: recvbuff[i] = op over ranks of sendbuff[r*recvcount + i]; in place when
// recvbuff == sendbuff + rank*recvcount.
inline ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                      ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                      cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);   /* LLMGEN_EMU_DEFER_STREAMS: the stream's queued work first */
    CommDtype dt = COMM_F32;
    CommOp cop = COMM_SUM;
    ncclResult_t r;
    if ((r = llmgen_nccl::check_comm("ncclReduceScatter", comm)) != ncclSuccess) return r;
    if ((r = llmgen_nccl::reduction("ncclReduceScatter", datatype, op, &dt, &cop)) != ncclSuccess) return r;
    if ((r = llmgen_nccl::check_buffers("ncclReduceScatter", sendbuff, recvbuff, recvcount)) != ncclSuccess) return r;
    comm_reduce_scatter(comm->comm, recvbuff, sendbuff, recvcount, dt, cop);
    return ncclSuccess;
}

// On rank root: recvbuff[i] = op over ranks of sendbuff[i]; in place when sendbuff == recvbuff. recvbuff is
// written on root only. Emulated as an all-reduce into a temporary: the same rank-order sums, more traffic.
inline ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                               ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);   /* LLMGEN_EMU_DEFER_STREAMS: the stream's queued work first */
    CommDtype dt = COMM_F32;
    CommOp cop = COMM_SUM;
    ncclResult_t r;
    if ((r = llmgen_nccl::check_comm("ncclReduce", comm)) != ncclSuccess) return r;
    if ((r = llmgen_nccl::reduction("ncclReduce", datatype, op, &dt, &cop)) != ncclSuccess) return r;
    if (root < 0 || root >= comm->nranks)
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclReduce: root %d is not a rank of %d", root, comm->nranks);
    if (count && !sendbuff) return llmgen_nccl::fail(ncclInvalidArgument, "ncclReduce: sendbuff is NULL");
    if (count && comm->rank == root && !recvbuff)
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclReduce: recvbuff is NULL on the root");
    const size_t bytes = count * comm_dtype_size(dt);
    void* tmp = malloc(bytes ? bytes : 1);
    if (!tmp) return llmgen_nccl::fail(ncclSystemError, "ncclReduce: out of memory (%zu bytes)", bytes);
    comm_allreduce(comm->comm, tmp, sendbuff, count, dt, cop);
    if (comm->rank == root && bytes) memcpy(recvbuff, tmp, bytes);
    free(tmp);
    return ncclSuccess;
}

// recvbuff[q*sendcount + i] = sendbuff of rank q [i]; in place when
// sendbuff == recvbuff + rank*sendcount.
inline ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                                  ncclComm_t comm, cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);   /* LLMGEN_EMU_DEFER_STREAMS: the stream's queued work first */
    ncclResult_t r;
    if ((r = llmgen_nccl::check_comm("ncclAllGather", comm)) != ncclSuccess) return r;
    size_t esz = llmgen_nccl::type_size(datatype);
    if (!esz) return llmgen_nccl::fail(ncclInvalidArgument, "ncclAllGather: %s", llmgen_nccl::type_name(datatype));
    if ((r = llmgen_nccl::check_buffers("ncclAllGather", sendbuff, recvbuff, sendcount)) != ncclSuccess) return r;
    comm_allgather(comm->comm, recvbuff, sendbuff, sendcount * esz, COMM_U8);
    return ncclSuccess;
}

// recvbuff of every rank = sendbuff of rank root (sendbuff is read on root only).
inline ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                  int root, ncclComm_t comm, cudaStream_t stream) {
    llmgen_emu::flush_stream(stream);   /* LLMGEN_EMU_DEFER_STREAMS: the stream's queued work first */
    ncclResult_t r;
    if ((r = llmgen_nccl::check_comm("ncclBroadcast", comm)) != ncclSuccess) return r;
    size_t esz = llmgen_nccl::type_size(datatype);
    if (!esz) return llmgen_nccl::fail(ncclInvalidArgument, "ncclBroadcast: %s", llmgen_nccl::type_name(datatype));
    if (root < 0 || root >= comm->nranks)
        return llmgen_nccl::fail(ncclInvalidArgument, "ncclBroadcast: root %d is not a rank of %d", root, comm->nranks);
    if (count && !recvbuff) return llmgen_nccl::fail(ncclInvalidArgument, "ncclBroadcast: recvbuff is NULL");
    if (comm->rank == root && count) {
        if (!sendbuff) return llmgen_nccl::fail(ncclInvalidArgument, "ncclBroadcast: sendbuff is NULL on the root");
        if (sendbuff != recvbuff) memmove(recvbuff, sendbuff, count * esz);
    }
    comm_broadcast(comm->comm, recvbuff, count * esz, COMM_U8, root);
    return ncclSuccess;
}

inline ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                              cudaStream_t stream) {
    return ncclBroadcast(buff, buff, count, datatype, root, comm, stream);
}

#endif  // LLMGEN_EMULATE_NCCL_H
