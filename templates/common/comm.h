/*
llmgen comm: the communication layer of a data-parallel trainer (N processes, one per device).

Contract
- Pasted into (or #included by) the generated trainer: train.c (gcc or mpicc, -std=gnu11) and
  train.cu (nvcc, or g++ -std=c++17 -x c++ for the CPU emulation). Compiles as C11 (gnu11) and as
  C++17 with -Wall -Wextra. Everything is `static`; libc + POSIX sockets only, and MPI when the
  program is built with -DLLMGEN_MPI (by mpicc, or with its flags: `mpicc --showme:compile/link`).
- One process = one rank. comm_init() finds the job from the launcher's environment:
    backend  when                                         rank / size / local rank from
    mpi      built with -DLLMGEN_MPI and started by an    MPI_COMM_WORLD; the local rank from
             MPI launcher (mpirun, mpiexec, srun with     MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)
             PMIx/PMI2: OMPI_, PMI_, PMIX_ variables)
    tcp      RANK/WORLD_SIZE (torchrun style) or srun's   RANK, WORLD_SIZE, LOCAL_RANK,
             SLURM_PROCID/SLURM_STEP_NUM_TASKS, and        LOCAL_WORLD_SIZE (or SLURM_PROCID,
             MASTER_ADDR + MASTER_PORT                    SLURM_STEP_NUM_TASKS, SLURM_LOCALID);
                                                          local rank from host names if not given
    file     as tcp, but rank 0's address is found in     as tcp
             a shared folder (CommOptions.rendezvous_dir)
             instead of MASTER_ADDR/MASTER_PORT
    single   none of the above (world size 1)             rank 0 of 1; no network is touched
  A build WITHOUT -DLLMGEN_MPI started by mpirun with N > 1 stops with an error (rather than run
  N independent single-process jobs). An MPI build started by srun without PMI (each process an
  MPI singleton: llm.c #426) falls back to tcp/file from SLURM_* when MASTER_ADDR or a rendezvous
  folder is given, and otherwise stops with an error naming the cause. Slurm's variables count
  only inside an srun step (SLURM_STEP_NUM_TASKS): a batch script also has SLURM_PROCID=0 and
  SLURM_NTASKS=N, and a program started there directly is one process, not rank 0 of N.
- Collectives (all blocking; every rank calls the same ones in the same order with the same counts):
    comm_allreduce       recv[i] = op over ranks of send[i]; count elements (any count)
    comm_reduce_scatter  rank r gets shard r: recv[i] = op over ranks of send[r*recvcount + i]
    comm_allgather       recv[q*sendcount + i] = send of rank q [i]
    comm_broadcast       buf of rank `root` copied to every rank
    comm_barrier         returns when every rank has entered it
    comm_agree           every rank compares a string (build id, flags); a mismatch stops the job
                         with a message naming the ranks that differ
  In place as NCCL defines it: allreduce send == recv; reduce_scatter recv == send + rank*recvcount;
  allgather send == recv + rank*sendcount. Other overlaps are not allowed.
- Determinism: every reduction is done by the rank that owns the element (allreduce splits the
  buffer in N near-equal chunks, chunk q owned by rank q), which sums the N contributions IN RANK
  ORDER 0, 1, ..., N-1: acc = x0; acc += x1; ...; in fp32 for COMM_F32 and COMM_BF16 (bf16 values
  widened exactly), in fp64 for COMM_F64; COMM_AVG then divides acc by N in the same precision;
  COMM_MAX keeps the larger of acc and x (x when either is NaN: fp8 amaxes are never NaN);
  bf16 results are rounded once, to nearest even. The owner sends the result to the others, so
  every rank holds identical bits, and the bits do not depend on the backend (tcp and mpi move
  the same bytes; MPI's own reductions are never used), nor on the segment size.
- Topology (tcp/file): a full mesh, one socket per pair of ranks. Bootstrap: every rank connects
  to rank 0, which hands out everyone's address; then rank r connects to ranks 1..r-1 and accepts
  ranks r+1..N-1. Collectives are "each owner receives its chunk from everyone", which is what a
  mesh does in one step; with N at most a few tens of processes (one per device) the N-1 sockets
  per rank are cheap, and the bytes each rank sends, 2(N-1)/N of the buffer for an allreduce, are
  the same as a ring's. For hundreds of ranks a ring or tree would have to replace the mesh.
- Faults: every failure prints "error: rank R: <cause>" and ends the job: exit(1) on tcp/file/single
  (peers see the closed sockets), MPI_Abort on mpi. No function here returns an error code.
    * a peer that dies (EOF / ECONNRESET on its socket) during a collective: every rank that needs
      its data stops at once, naming it ("lost the connection to rank 1"). Under mpirun, mpirun
      itself ends the job and names the rank; MPI errors go to an error handler that prints the
      rank and aborts.
    * a collective that waits longer than op_timeout_s (default 600 s) for its peers (measured per
      exchange step: one segment of a reduction, or a whole gather) stops, naming the ranks it
      still waits for; the rendezvous has its own timeout (default 300 s) and names the
      address it could not reach or the ranks that never came.
  There is no sleep used as synchronisation: connections and data are waited for with poll() and
  a deadline. Connecting to a rank that is not listening yet is retried (10 ms, doubling up to
  500 ms between tries) until the deadline, and so is reading a rendezvous file not yet written.
- File rendezvous: rank 0 listens on a free port and writes "<addr> <port>" lines into
  <dir>/llmgen-rendezvous-<run id>, atomically (temp file + fsync + rename), and deletes it once
  everyone is connected. The run id (CommOptions.run_id, else $SLURM_JOB_ID[.$SLURM_STEP_ID]) is
  a nonce of this run, so a file left by an earlier run is never read. Addresses: MASTER_ADDR
  if set, else every non-loopback IPv4 address of the host, then 127.0.0.1; the others try them
  in order, and the handshake (magic, run id, world size) rejects anything that is not this run.
- Not thread-safe: one thread calls comm_*. Host byte order and struct layout must be the same on
  all ranks (the same binary everywhere).

API (sections below)
  options    CommOptions, comm_options_default, comm_options_from_env
  setup      Comm, comm_init, comm_free, comm_current, comm_fail, comm_exit_job, comm_shard_count,
             comm_dtype_size
  design     templates/common/COMM.md: how the trainer calls all this (data slices, ZeRO-1 shards,
             grad norm, rank-0 logging, NCCL bootstrap)
  ops        comm_allreduce, comm_reduce_scatter, comm_allgather, comm_broadcast, comm_barrier,
             comm_agree, comm_allreduce_f32, comm_allreduce_f64
  internals  transport (tcp / mpi exchange), rendezvous, reduction
*/
#ifndef LLMGEN_COMM_H
#define LLMGEN_COMM_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <ifaddrs.h>
#include <limits.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifdef LLMGEN_MPI
#define OMPI_SKIP_MPICXX 1   // the C API only, also when compiled as C++
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD != 0
#error "llmgen comm: sums must round to float after every add (FLT_EVAL_METHOD 0, e.g. SSE, not x87)"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define COMM_UNUSED __attribute__((unused))
#define COMM_NORETURN __attribute__((noreturn))
#define COMM_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define COMM_UNUSED
#define COMM_NORETURN
#define COMM_PRINTF(fmt_index, first_arg)
#endif

// ----------------------------------------------------------------------------
// options

typedef struct {
    const char *rendezvous_dir;   // shared folder for the file rendezvous; NULL: MASTER_ADDR/PORT
    const char *run_id;           // nonce of this run; NULL: $SLURM_JOB_ID[.$SLURM_STEP_ID]
    double rendezvous_timeout_s;  // <= 0: 300 s; how long ranks wait for each other at start
    double op_timeout_s;          // <= 0: 600 s; how long one collective may take
    size_t segment_bytes;         // 0: 4 MiB; per-peer piece of a reduction (bounds the scratch)
} CommOptions;

static COMM_UNUSED void comm_options_default(CommOptions *o) {
    memset(o, 0, sizeof(*o));
}

// Fill the fields still unset from LLMGEN_RENDEZVOUS_DIR, LLMGEN_RUN_ID, LLMGEN_RENDEZVOUS_TIMEOUT,
// LLMGEN_COMM_TIMEOUT, LLMGEN_COMM_SEGMENT_BYTES (for programs without flags of their own).
static COMM_UNUSED void comm_options_from_env(CommOptions *o) {
    const char *v;
    if (!o->rendezvous_dir && (v = getenv("LLMGEN_RENDEZVOUS_DIR")) && *v) o->rendezvous_dir = v;
    if (!o->run_id && (v = getenv("LLMGEN_RUN_ID")) && *v) o->run_id = v;
    if (o->rendezvous_timeout_s <= 0 && (v = getenv("LLMGEN_RENDEZVOUS_TIMEOUT"))) o->rendezvous_timeout_s = atof(v);
    if (o->op_timeout_s <= 0 && (v = getenv("LLMGEN_COMM_TIMEOUT"))) o->op_timeout_s = atof(v);
    if (o->segment_bytes == 0 && (v = getenv("LLMGEN_COMM_SEGMENT_BYTES"))) o->segment_bytes = (size_t)atoll(v);
}

// ----------------------------------------------------------------------------
// the communicator

typedef enum { COMM_SINGLE = 0, COMM_TCP = 1, COMM_FILE = 2, COMM_MPI = 3 } CommBackend;
typedef enum { COMM_F32 = 0, COMM_F64 = 1, COMM_BF16 = 2, COMM_U8 = 3, COMM_I32 = 4, COMM_I64 = 5 } CommDtype;
typedef enum { COMM_SUM = 0, COMM_AVG = 1, COMM_MAX = 2 } CommOp;

typedef struct {
    int rank, world_size;              // this process among all
    int local_rank, local_world_size;  // among the processes on this host: local_rank picks the device
    CommBackend backend;
    char how[512];                     // e.g. "tcp via 10.0.0.1:29500", for the trainer's first log line
    char host[64];                     // gethostname()
    double op_timeout_s;
    size_t segment_bytes;
    int *fd;                           // tcp/file: fd[q] = socket to rank q (-1 for self), world_size entries
    struct pollfd *pfd;                // scratch for poll(), world_size entries
    int *pfd_rank;
    void *scratch;                     // reduction scratch: world_size pieces + the accumulator
    size_t scratch_bytes;
    int mpi_initialized_here;          // comm_free finalizes MPI only if comm_init started it
#ifdef LLMGEN_MPI
    MPI_Comm mpi;                      // a duplicate of MPI_COMM_WORLD (errors abort with the rank)
#endif
} Comm;

// The communicator comm_init made last (NULL before): the emulated NCCL finds it here.
static COMM_UNUSED Comm **comm_current_slot(void) {
    static Comm *current = NULL;
    return &current;
}
static COMM_UNUSED Comm *comm_current(void) { return *comm_current_slot(); }

static COMM_UNUSED size_t comm_dtype_size(CommDtype dt) {
    switch (dt) {
    case COMM_F32: return 4;
    case COMM_F64: return 8;
    case COMM_BF16: return 2;
    case COMM_U8: return 1;
    case COMM_I32: return 4;
    case COMM_I64: return 8;
    }
    return 0;
}

static COMM_UNUSED const char *comm_dtype_name(CommDtype dt) {
    switch (dt) {
    case COMM_F32: return "f32";
    case COMM_F64: return "f64";
    case COMM_BF16: return "bf16";
    case COMM_U8: return "u8";
    case COMM_I32: return "i32";
    case COMM_I64: return "i64";
    }
    return "?";
}

// ZeRO shard length: ceil(count / world_size). Pad buffers to shard * world_size elements.
static COMM_UNUSED size_t comm_shard_count(size_t count, int world_size) {
    return (count + (size_t)world_size - 1) / (size_t)world_size;
}

// ----------------------------------------------------------------------------
// errors: print "error: rank R: ..." and end the job

static COMM_UNUSED void comm_exit_job(int code) {
#ifdef LLMGEN_MPI
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
#endif
    exit(code);
}

static COMM_UNUSED COMM_NORETURN COMM_PRINTF(2, 3) void comm_fail(const Comm *c, const char *fmt, ...) {
    va_list ap;
    char msg[1024];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (c && c->rank >= 0) fprintf(stderr, "error: rank %d: %s\n", c->rank, msg);
    else fprintf(stderr, "error: %s\n", msg);
    fflush(stderr);
    comm_exit_job(1);
    exit(1);  // not reached (keeps noreturn honest for every compiler)
}

static COMM_UNUSED double comm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Milliseconds left until deadline, for poll() (0 when past it).
static COMM_UNUSED int comm_ms_left(double deadline) {
    double ms = (deadline - comm_now()) * 1e3;
    if (ms <= 0) return 0;
    if (ms > (double)INT_MAX) return INT_MAX;
    return (int)ms + 1;
}

static COMM_UNUSED void *comm_xcalloc(const Comm *c, size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) comm_fail(c, "out of memory (%zu x %zu bytes)", n, size);
    return p;
}

// A strict decimal integer from the environment: -1 when unset, an error when malformed.
static COMM_UNUSED long comm_env_int(const Comm *c, const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) return -1;
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0 || x > INT_MAX) comm_fail(c, "%s='%s' is not a non-negative integer", name, v);
    return x;
}

// FNV-1a, 64 bit: the hash the agree-check and the handshake compare.
static COMM_UNUSED uint64_t comm_hash(const void *data, size_t n, uint64_t h) {
    const unsigned char *p = (const unsigned char *)data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}
#define COMM_HASH_SEED 0xcbf29ce484222325ULL

// ----------------------------------------------------------------------------
// bf16 <-> f32 (bf16 as raw uint16 bits)

static inline float comm_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

// Round to nearest even; NaN stays NaN (quiet); overflow rounds to infinity.
static inline uint16_t comm_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// ----------------------------------------------------------------------------
// transport: one exchange step. For every peer q, send io[q].send (nsend bytes) and receive
// io[q].nrecv bytes into io[q].recv, all at once (no order between peers, so no deadlock).

typedef struct {
    const char *send;
    size_t nsend;
    char *recv;
    size_t nrecv;
} CommPeerIO;

static COMM_UNUSED void comm_list_ranks(char *out, size_t cap, const int *ranks, int n) {
    size_t len = 0;
    out[0] = '\0';
    for (int i = 0; i < n && len + 16 < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%d", i ? ", " : "", ranks[i]);
}

// Has the peer closed its end? (Linux: POLLRDHUP sees it even behind unread data; elsewhere a peek.)
static COMM_UNUSED int comm_peer_closed(int fd) {
    struct pollfd pf;
    pf.fd = fd;
    pf.revents = 0;
#ifdef POLLRDHUP
    pf.events = POLLIN | POLLRDHUP;
#else
    pf.events = POLLIN;
#endif
    if (poll(&pf, 1, 0) <= 0) return 0;
#ifdef POLLRDHUP
    if (pf.revents & (POLLRDHUP | POLLHUP | POLLERR)) return 1;
#endif
    char b;
    ssize_t k = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static COMM_UNUSED void comm_sort_ints(int *a, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && a[j - 1] > a[j]; j--) {
            int t = a[j];
            a[j] = a[j - 1];
            a[j - 1] = t;
        }
}

static COMM_UNUSED void comm_tcp_exchange(Comm *c, const char *what, CommPeerIO *io) {
    const int N = c->world_size;
    const double deadline = comm_now() + c->op_timeout_s;
    int *dead = (int *)comm_xcalloc(c, (size_t)N, sizeof(int));
    for (;;) {
        int n = 0;
        for (int q = 0; q < N; q++) {
            if (q == c->rank) continue;
            short ev = 0;
            if (io[q].nsend) ev |= POLLOUT;
            if (io[q].nrecv) ev |= POLLIN;
            if (!ev) continue;
            c->pfd[n].fd = c->fd[q];
            c->pfd[n].events = ev;
            c->pfd[n].revents = 0;
            c->pfd_rank[n++] = q;
        }
        if (n == 0) break;
        int ms = comm_ms_left(deadline);
        int ready = ms > 0 ? poll(c->pfd, (nfds_t)n, ms) : 0;
        if (ready < 0) {
            if (errno == EINTR) continue;
            comm_fail(c, "%s: poll failed: %s", what, strerror(errno));
        }
        if (ready == 0 && comm_now() >= deadline) {
            int nwait = 0;
            for (int i = 0; i < n; i++) dead[nwait++] = c->pfd_rank[i];
            char list[256];
            comm_list_ranks(list, sizeof(list), dead, nwait);
            comm_fail(c, "%s did not complete within %.0f s: still waiting for rank(s) %s (stuck, stopped "
                      "or much slower; the limit is CommOptions.op_timeout_s / LLMGEN_COMM_TIMEOUT)",
                      what, c->op_timeout_s, list);
        }
        int ndead = 0;
        const char *reason = "";
        for (int i = 0; i < n; i++) {
            int q = c->pfd_rank[i];
            short re = c->pfd[i].revents;
            if (!re) continue;
            if (re & POLLNVAL) comm_fail(c, "%s: the socket to rank %d is not open (was comm_free called?)", what, q);
            if (io[q].nrecv && (re & (POLLIN | POLLHUP | POLLERR))) {
                size_t want = io[q].nrecv < ((size_t)1 << 30) ? io[q].nrecv : ((size_t)1 << 30);
                ssize_t k = recv(c->fd[q], io[q].recv, want, 0);
                if (k > 0) {
                    io[q].recv += k;
                    io[q].nrecv -= (size_t)k;
                } else if (k == 0) {
                    dead[ndead++] = q;
                    reason = "connection closed";
                    continue;
                } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    dead[ndead++] = q;
                    reason = strerror(errno);
                    continue;
                }
            }
            if (io[q].nsend && (re & (POLLOUT | POLLHUP | POLLERR))) {
                size_t want = io[q].nsend < ((size_t)1 << 30) ? io[q].nsend : ((size_t)1 << 30);
                ssize_t k = send(c->fd[q], io[q].send, want, MSG_NOSIGNAL);
                if (k > 0) {
                    io[q].send += k;
                    io[q].nsend -= (size_t)k;
                } else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    dead[ndead++] = q;
                    reason = strerror(errno);
                }
            }
        }
        if (ndead) {
            // name every peer that is gone, not just the first noticed: a rank whose data already
            // arrived may have died first, and a later one only stopped because of it
            for (int q = 0; q < N; q++) {
                int known = q == c->rank;
                for (int i = 0; i < ndead && !known; i++) known = dead[i] == q;
                if (!known && comm_peer_closed(c->fd[q])) dead[ndead++] = q;
            }
            comm_sort_ints(dead, ndead);
            char list[256];
            comm_list_ranks(list, sizeof(list), dead, ndead);
            comm_fail(c, "%s: lost the connection to rank %s (%s): that rank exited or was killed, see its "
                      "own messages", what, list, reason);
        }
    }
    free(dead);
}

#ifdef LLMGEN_MPI
// The same exchange over MPI point-to-point messages (tag 0; MPI keeps the order between a pair),
// polled with MPI_Testall so that a stuck collective ends at op_timeout_s instead of hanging.
static COMM_UNUSED void comm_mpi_exchange(Comm *c, const char *what, CommPeerIO *io) {
    const int N = c->world_size;
    const size_t piece = (size_t)1 << 30;  // MPI counts are int
    size_t nreq = 0;
    for (int q = 0; q < N; q++) {
        if (q == c->rank) continue;
        nreq += (io[q].nsend + piece - 1) / piece + (io[q].nrecv + piece - 1) / piece;
    }
    if (nreq == 0) return;
    MPI_Request *req = (MPI_Request *)comm_xcalloc(c, nreq, sizeof(MPI_Request));
    int *req_rank = (int *)comm_xcalloc(c, nreq, sizeof(int));
    size_t r = 0;
    for (int q = 0; q < N; q++) {
        if (q == c->rank) continue;
        for (size_t off = 0; off < io[q].nrecv; off += piece, r++) {
            size_t len = io[q].nrecv - off < piece ? io[q].nrecv - off : piece;
            MPI_Irecv(io[q].recv + off, (int)len, MPI_BYTE, q, 0, c->mpi, &req[r]);
            req_rank[r] = q;
        }
        for (size_t off = 0; off < io[q].nsend; off += piece, r++) {
            size_t len = io[q].nsend - off < piece ? io[q].nsend - off : piece;
            MPI_Isend((void *)(io[q].send + off), (int)len, MPI_BYTE, q, 0, c->mpi, &req[r]);
            req_rank[r] = q;
        }
    }
    const double deadline = comm_now() + c->op_timeout_s;
    for (long spins = 0;; spins++) {
        int done = 0;
        MPI_Testall((int)nreq, req, &done, MPI_STATUSES_IGNORE);
        if (done) break;
        if ((spins & 1023) == 1023) {
            if (comm_now() >= deadline) {
                // the ranks with a message still in flight either way (a large send waits for its receiver)
                int *pending = (int *)comm_xcalloc(c, (size_t)N, sizeof(int));
                for (size_t i = 0; i < nreq; i++) {
                    int flag = 0;
                    MPI_Test(&req[i], &flag, MPI_STATUS_IGNORE);
                    if (!flag) pending[req_rank[i]] = 1;
                }
                int waiting[64], nwait = 0;
                for (int q = 0; q < N && nwait < 64; q++) if (pending[q]) waiting[nwait++] = q;
                char list[256];
                comm_list_ranks(list, sizeof(list), waiting, nwait);
                comm_fail(c, "%s did not complete within %.0f s: still waiting for rank(s) %s (stuck, stopped "
                          "or much slower; the limit is CommOptions.op_timeout_s / LLMGEN_COMM_TIMEOUT)",
                          what, c->op_timeout_s, list);
            }
            sched_yield();  // let other ranks on an oversubscribed host run
        }
    }
    free(req);
    free(req_rank);
}

static void comm_mpi_errhandler(MPI_Comm *comm, int *code, ...) {
    (void)comm;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0, rank = -1;
    MPI_Error_string(*code, text, &len);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    fflush(stdout);
    fprintf(stderr, "error: rank %d: MPI error: %s\n", rank, text);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
}
#endif

static COMM_UNUSED void comm_exchange(Comm *c, const char *what, CommPeerIO *io) {
    if (c->world_size == 1) return;
#ifdef LLMGEN_MPI
    if (c->backend == COMM_MPI) {
        comm_mpi_exchange(c, what, io);
        return;
    }
#endif
    comm_tcp_exchange(c, what, io);
}

static COMM_UNUSED CommPeerIO *comm_io(Comm *c) {
    return (CommPeerIO *)comm_xcalloc(c, (size_t)c->world_size, sizeof(CommPeerIO));
}

// ----------------------------------------------------------------------------
// socket helpers for the rendezvous (blocking semantics built from poll() and a deadline)

// Send or receive exactly n bytes before deadline. 0: done, -1: closed or failed (errno set;
// errno 0 means end of file), -2: deadline passed.
static COMM_UNUSED int comm_sock_full(int fd, void *buf, size_t n, int sending, double deadline) {
    char *p = (char *)buf;
    while (n) {
        struct pollfd pf;
        pf.fd = fd;
        pf.events = sending ? POLLOUT : POLLIN;
        pf.revents = 0;
        int ms = comm_ms_left(deadline);
        if (ms == 0) return -2;
        int ready = poll(&pf, 1, ms);
        if (ready < 0 && errno == EINTR) continue;
        if (ready < 0) return -1;
        if (ready == 0) continue;
        ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k == 0) {
            errno = 0;
            return -1;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

static COMM_UNUSED void comm_sock_setup(int fd) {
    int one = 1;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// Connect to host:port once, within min(deadline, now + attempt_s). Returns the socket or -1 with
// the cause in err.
static COMM_UNUSED int comm_connect_once(const char *host, int port, double deadline, double attempt_s,
                                         char *err, size_t errcap) {
    struct addrinfo hints, *res = NULL;
    char portstr[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errcap, "cannot resolve '%s': %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) {
            snprintf(err, errcap, "socket: %s", strerror(errno));
            continue;
        }
        comm_sock_setup(fd);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        if (errno == EINPROGRESS) {
            double until = comm_now() + attempt_s < deadline ? comm_now() + attempt_s : deadline;
            struct pollfd pf;
            pf.fd = fd;
            pf.events = POLLOUT;
            pf.revents = 0;
            int ready;
            do ready = poll(&pf, 1, comm_ms_left(until));
            while (ready < 0 && errno == EINTR);
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            if (ready > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0) break;
            snprintf(err, errcap, "%s", ready > 0 ? strerror(soerr) : "connection attempt timed out");
        } else {
            snprintf(err, errcap, "%s", strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

// Listen on port (0: any free one) on every address of the host, IPv6 dual-stack when the host
// has IPv6, else IPv4. Returns the socket; *bound_port receives the port.
static COMM_UNUSED int comm_listen(const Comm *c, int port, int backlog, int *bound_port) {
    int families[2] = {AF_INET6, AF_INET};
    for (int i = 0; i < 2; i++) {
        int fd = socket(families[i], SOCK_STREAM, 0);
        if (fd < 0) continue;
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_storage ss;
        socklen_t len;
        memset(&ss, 0, sizeof(ss));
        if (families[i] == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_any;
            a->sin6_port = htons((uint16_t)port);
            len = sizeof(*a);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_ANY);
            a->sin_port = htons((uint16_t)port);
            len = sizeof(*a);
        }
        if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
            int e = errno;
            close(fd);
            if (families[i] == AF_INET6 && (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)) continue;
            comm_fail(c, "cannot listen on port %d: %s%s", port, strerror(e),
                      e == EADDRINUSE ? " (another job, or an earlier run still holding it? choose another "
                                        "MASTER_PORT)" : "");
        }
        if (listen(fd, backlog) != 0) comm_fail(c, "listen on port %d: %s", port, strerror(errno));
        comm_sock_setup(fd);
        len = sizeof(ss);
        getsockname(fd, (struct sockaddr *)&ss, &len);
        *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                     : ((struct sockaddr_in *)&ss)->sin_port);
        return fd;
    }
    comm_fail(c, "cannot create a listening socket: %s", strerror(errno));
}

// The numeric address of a connected socket's peer (IPv4-mapped IPv6 shown as plain IPv4).
static COMM_UNUSED void comm_peer_addr(int fd, char *out, size_t cap) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    out[0] = '\0';
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
            inet_ntop(AF_INET, &a6->sin6_addr.s6_addr[12], out, (socklen_t)cap);
            return;
        }
    }
    getnameinfo((struct sockaddr *)&ss, len, out, (socklen_t)cap, NULL, 0, NI_NUMERICHOST);
}

// ----------------------------------------------------------------------------
// handshake messages (fixed layout, host byte order: the same binary runs on every rank)

#define COMM_MAGIC "LLMGCOM1"
typedef struct {
    char magic[8];
    uint32_t rank, world_size, port, pad;
    uint64_t key;      // hash of the run id and world size: another run's process is turned away
    char host[64];
} CommHello;

typedef struct {
    char addr[64];     // numeric address rank 0 saw this rank connect from
    uint32_t port, pad;
    char host[64];
} CommPeerAddr;

static COMM_UNUSED void comm_hello_fill(const Comm *c, CommHello *h, int port, uint64_t key) {
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, COMM_MAGIC, 8);
    h->rank = (uint32_t)c->rank;
    h->world_size = (uint32_t)c->world_size;
    h->port = (uint32_t)port;
    h->key = key;
    memcpy(h->host, c->host, sizeof(h->host) - 1);
}

// Retry delay between connection attempts (not synchronisation: the deadline decides when to stop).
static COMM_UNUSED void comm_backoff(int *ms, double deadline) {
    int left = comm_ms_left(deadline);
    poll(NULL, 0, *ms < left ? *ms : left);
    *ms = *ms * 2 > 500 ? 500 : *ms * 2;
}

// Connect to one of `addrs` (host, port) and exchange hellos with the rank `expect` there. Tries
// each address once; returns the socket or -1 with the cause in err.
static COMM_UNUSED int comm_connect_peer(char (*addrs)[64], const int *ports, int naddr, int expect,
                                         const CommHello *mine, double deadline, char *err, size_t errcap) {
    for (int i = 0; i < naddr; i++) {
        int fd = comm_connect_once(addrs[i], ports[i], deadline, 2.0, err, errcap);
        if (fd < 0) continue;
        CommHello theirs;
        double hs_deadline = comm_now() + 10.0 < deadline ? comm_now() + 10.0 : deadline;
        int rc = comm_sock_full(fd, (void *)mine, sizeof(*mine), 1, hs_deadline);
        if (rc == 0) rc = comm_sock_full(fd, &theirs, sizeof(theirs), 0, hs_deadline);
        if (rc == 0 && memcmp(theirs.magic, COMM_MAGIC, 8) == 0 && theirs.key == mine->key &&
            (int)theirs.rank == expect)
            return fd;
        if (rc == 0)
            snprintf(err, errcap, "%s:%d answered, but not as rank %d of this run", addrs[i], ports[i], expect);
        else if (rc == -2) snprintf(err, errcap, "no handshake from %s:%d", addrs[i], ports[i]);
        else snprintf(err, errcap, "%s:%d closed the connection during the handshake (another run, or a "
                      "different world size? see rank %d's messages)", addrs[i], ports[i], expect);
        close(fd);
    }
    return -1;
}

// Accept one connection and read its hello, before deadline. Returns the socket (hello in *h) or
// -1 (deadline passed). Connections that are not llmgen hellos are closed and skipped.
static COMM_UNUSED int comm_accept_hello(Comm *c, int lfd, CommHello *h, double deadline) {
    for (;;) {
        struct pollfd pf;
        pf.fd = lfd;
        pf.events = POLLIN;
        pf.revents = 0;
        int ms = comm_ms_left(deadline);
        if (ms == 0) return -1;
        int ready = poll(&pf, 1, ms);
        if (ready < 0 && errno != EINTR) comm_fail(c, "poll on the listening socket: %s", strerror(errno));
        if (ready <= 0) continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) continue;
        comm_sock_setup(fd);
        double hs_deadline = comm_now() + 10.0 < deadline ? comm_now() + 10.0 : deadline;
        if (comm_sock_full(fd, h, sizeof(*h), 0, hs_deadline) == 0 && memcmp(h->magic, COMM_MAGIC, 8) == 0)
            return fd;
        close(fd);
    }
}

// ----------------------------------------------------------------------------
// rendezvous file: <dir>/llmgen-rendezvous-<run id>, lines "<addr> <port>"

static COMM_UNUSED void comm_rendezvous_path(const Comm *c, const char *dir, const char *run_id, char *out,
                                             size_t cap) {
    for (const char *p = run_id; *p; p++)
        if (*p == '/' || *p == ' ' || *p == '\n')
            comm_fail(c, "the run id '%s' must not contain '/', spaces or newlines (it names a file)", run_id);
    if ((size_t)snprintf(out, cap, "%s/llmgen-rendezvous-%s", dir, run_id) >= cap)
        comm_fail(c, "rendezvous path too long: %s/llmgen-rendezvous-%s", dir, run_id);
}

// The addresses rank 0 publishes: MASTER_ADDR if set, else every UP non-loopback IPv4 address,
// then 127.0.0.1 (enough when all ranks share the host).
static COMM_UNUSED int comm_own_addrs(char (*out)[64], int cap) {
    int n = 0;
    const char *master = getenv("MASTER_ADDR");
    if (master && *master) snprintf(out[n++], 64, "%s", master);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i && n < cap - 1; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
            if (!(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK)) continue;
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out[n], 64);
            n++;
        }
        freeifaddrs(ifs);
    }
    if (n < cap) snprintf(out[n++], 64, "127.0.0.1");
    return n;
}

static COMM_UNUSED void comm_write_rendezvous(const Comm *c, const char *path, int port) {
    char tmp[4200];
    char addrs[16][64];
    int n = comm_own_addrs(addrs, 16);
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) comm_fail(c, "cannot write the rendezvous file %s: %s", tmp, strerror(errno));
    for (int i = 0; i < n; i++) fprintf(f, "%s %d\n", addrs[i], port);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
        comm_fail(c, "cannot write the rendezvous file %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) comm_fail(c, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
}

// Read the addresses rank 0 published; 0 when the file is not there (yet).
static COMM_UNUSED int comm_read_rendezvous(const char *path, char (*addrs)[64], int *ports, int cap) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0;
    char line[256];
    while (n < cap && fgets(line, sizeof(line), f)) {
        char a[64];
        int p;
        if (sscanf(line, "%63s %d", a, &p) == 2 && p > 0 && p < 65536) {
            snprintf(addrs[n], 64, "%s", a);
            ports[n++] = p;
        }
    }
    fclose(f);
    return n;
}

// ----------------------------------------------------------------------------
// bootstrap of the tcp/file backends: the full mesh

static COMM_UNUSED void comm_tcp_bootstrap(Comm *c, const CommOptions *o, const char *run_id, double rv_timeout) {
    const int N = c->world_size;
    const double deadline = comm_now() + rv_timeout;
    const char *master = getenv("MASTER_ADDR");
    const char *master_port = getenv("MASTER_PORT");
    char rvpath[4096] = "";
    int mport = -1;
    if (c->backend == COMM_FILE) {
        if (!run_id || !*run_id)
            comm_fail(c, "the file rendezvous needs a nonce for this run, so that an earlier run's file is "
                      "never read: set LLMGEN_RUN_ID (any value unique to this run) or run under Slurm "
                      "(SLURM_JOB_ID)");
        struct stat st;
        if (stat(o->rendezvous_dir, &st) != 0 || !S_ISDIR(st.st_mode))
            comm_fail(c, "rendezvous folder %s does not exist (it must be on a filesystem every rank sees)",
                      o->rendezvous_dir);
        comm_rendezvous_path(c, o->rendezvous_dir, run_id, rvpath, sizeof(rvpath));
        snprintf(c->how, sizeof(c->how), "tcp, rendezvous file %.400s", rvpath);
    } else {
        if (!master || !*master || !master_port || !*master_port)
            comm_fail(c, "WORLD_SIZE is %d but MASTER_ADDR/MASTER_PORT are not set: set them to rank 0's "
                      "host address and a free port (or LLMGEN_RENDEZVOUS_DIR for the file rendezvous)", N);
        mport = (int)comm_env_int(c, "MASTER_PORT");
        if (mport <= 0 || mport > 65535) comm_fail(c, "MASTER_PORT=%s is not a port number", master_port);
        snprintf(c->how, sizeof(c->how), "tcp via %.100s:%d", master, mport);
    }
    char keybuf[600];
    snprintf(keybuf, sizeof(keybuf), "%s|%d", run_id ? run_id : "", N);
    const uint64_t key = comm_hash(keybuf, strlen(keybuf), COMM_HASH_SEED);
    CommPeerAddr *table = (CommPeerAddr *)comm_xcalloc(c, (size_t)N, sizeof(CommPeerAddr));
    CommHello mine;

    if (c->rank == 0) {
        // rank 0: listen, wait for the N-1 others, send everyone the address table
        int port = 0;
        int lfd = comm_listen(c, c->backend == COMM_FILE ? 0 : mport, N + 16, &port);
        if (c->backend == COMM_FILE) comm_write_rendezvous(c, rvpath, port);
        comm_hello_fill(c, &mine, port, key);
        memcpy(table[0].host, c->host, sizeof(table[0].host));
        int connected = 1;
        while (connected < N) {
            CommHello h;
            int fd = comm_accept_hello(c, lfd, &h, deadline);
            if (fd < 0) {
                int missing[64], nm = 0;
                for (int q = 1; q < N && nm < 64; q++) if (c->fd[q] < 0) missing[nm++] = q;
                char list[256];
                comm_list_ranks(list, sizeof(list), missing, nm);
                comm_fail(c, "only %d of %d ranks connected within %.0f s (rank 0 listens on port %d%s%s); "
                          "missing rank(s) %s: did they start, with the same MASTER_ADDR/MASTER_PORT or "
                          "rendezvous folder and run id?", connected, N, rv_timeout, port,
                          rvpath[0] ? ", rendezvous file " : "", rvpath, list);
            }
            if (h.key != key || (int)h.world_size != N) {
                if ((int)h.world_size != N)
                    comm_fail(c, "rank %u (host %.64s) has WORLD_SIZE=%u but this rank has %d: every rank "
                              "must be started with the same world size", h.rank, h.host, h.world_size, N);
                fprintf(stderr, "warning: rank 0: turned away a connection from another run (run id differs)\n");
                close(fd);
                continue;
            }
            if (h.rank == 0 || (int)h.rank >= N)
                comm_fail(c, "a process on host %.64s claims rank %u of %d", h.host, h.rank, N);
            if (c->fd[h.rank] >= 0)
                comm_fail(c, "two processes claim rank %u (hosts %.64s and %.64s): check RANK/SLURM_PROCID",
                          h.rank, table[h.rank].host, h.host);
            if (comm_sock_full(fd, &mine, sizeof(mine), 1, deadline) != 0) {
                close(fd);  // it went away during the handshake; it will be reported missing
                continue;
            }
            c->fd[h.rank] = fd;
            comm_peer_addr(fd, table[h.rank].addr, sizeof(table[h.rank].addr));
            table[h.rank].port = h.port;
            memcpy(table[h.rank].host, h.host, sizeof(table[h.rank].host));
            table[h.rank].host[sizeof(table[h.rank].host) - 1] = '\0';
            connected++;
        }
        close(lfd);
        if (rvpath[0]) unlink(rvpath);  // everyone has found rank 0: no later run can read it
        for (int q = 1; q < N; q++)
            if (comm_sock_full(c->fd[q], table, (size_t)N * sizeof(CommPeerAddr), 1, deadline) != 0)
                comm_fail(c, "lost rank %d during the rendezvous (%s)", q, errno ? strerror(errno) : "closed");
    } else {
        // rank r > 0: listen for ranks above, find rank 0, get the table, connect to ranks 1..r-1
        int port = 0;
        int lfd = comm_listen(c, 0, N + 16, &port);
        comm_hello_fill(c, &mine, port, key);
        char addrs[16][64];
        int ports[16], naddr = 0, backoff = 10;
        char err[300] = "no attempt made";
        for (;;) {
            if (c->backend == COMM_FILE) {
                naddr = comm_read_rendezvous(rvpath, addrs, ports, 16);
            } else {
                snprintf(addrs[0], 64, "%s", master);
                ports[0] = mport;
                naddr = 1;
            }
            if (naddr > 0) {
                c->fd[0] = comm_connect_peer(addrs, ports, naddr, 0, &mine, deadline, err, sizeof(err));
                if (c->fd[0] >= 0) break;
            }
            if (comm_now() >= deadline) {
                if (c->backend == COMM_FILE && naddr == 0)
                    comm_fail(c, "the rendezvous file %s did not appear within %.0f s: is rank 0 running, with "
                              "the same rendezvous folder and run id?", rvpath, rv_timeout);
                comm_fail(c, "no connection from rank 0 at %s:%d%s%s within %.0f s (last error: %s)", addrs[0],
                          ports[0], rvpath[0] ? " (from " : "", rvpath[0] ? rvpath : "", rv_timeout, err);
            }
            comm_backoff(&backoff, deadline);
        }
        if (comm_sock_full(c->fd[0], table, (size_t)N * sizeof(CommPeerAddr), 0, deadline) != 0)
            comm_fail(c, "rank 0 did not send the address table within %.0f s (%s)", rv_timeout,
                      errno ? strerror(errno) : "connection closed: rank 0 stopped, see its messages");
        for (int q = 1; q < c->rank; q++) {
            int qport = (int)table[q].port;
            backoff = 10;
            while ((c->fd[q] = comm_connect_peer(&table[q].addr, &qport, 1, q, &mine, deadline, err,
                                                 sizeof(err))) < 0) {
                if (comm_now() >= deadline)
                    comm_fail(c, "no connection from rank %d at %s:%d within %.0f s (last error: %s)", q,
                              table[q].addr, qport, rv_timeout, err);
                comm_backoff(&backoff, deadline);
            }
        }
        for (int accepted = c->rank + 1; accepted < N;) {
            CommHello h;
            int fd = comm_accept_hello(c, lfd, &h, deadline);
            if (fd < 0) {
                int missing[64], nm = 0;
                for (int q = c->rank + 1; q < N && nm < 64; q++) if (c->fd[q] < 0) missing[nm++] = q;
                char list[256];
                comm_list_ranks(list, sizeof(list), missing, nm);
                comm_fail(c, "no connection from rank(s) %s within %.0f s", list, rv_timeout);
            }
            if (h.key != key || (int)h.rank <= c->rank || (int)h.rank >= N || c->fd[h.rank] >= 0) {
                close(fd);
                continue;
            }
            if (comm_sock_full(fd, &mine, sizeof(mine), 1, deadline) != 0) {
                close(fd);
                continue;
            }
            c->fd[h.rank] = fd;
            accepted++;
        }
        close(lfd);
    }
    // local rank: the launcher's when it says, else the order among ranks on the same host
    int lr = 0, lws = 0;
    for (int q = 0; q < N; q++) {
        if (strncmp(table[q].host, c->host, sizeof(table[q].host)) != 0) continue;
        if (q < c->rank) lr++;
        lws++;
    }
    long env_lr = comm_env_int(c, "LOCAL_RANK");
    if (env_lr < 0) env_lr = comm_env_int(c, "SLURM_LOCALID");
    long env_lws = comm_env_int(c, "LOCAL_WORLD_SIZE");
    c->local_rank = env_lr >= 0 ? (int)env_lr : lr;
    c->local_world_size = env_lws > 0 ? (int)env_lws : lws;
    free(table);
}

// ----------------------------------------------------------------------------
// init / free

static COMM_UNUSED int comm_env_set(const char *name) {
    const char *v = getenv(name);
    return v && *v;
}

static void comm_barrier(Comm *c);

// Collective: every rank of the job calls it once, first. Reads the launcher's variables.
static COMM_UNUSED void comm_init(Comm *c, const CommOptions *opt) {
    CommOptions o;
    if (opt) o = *opt;
    else comm_options_default(&o);
    memset(c, 0, sizeof(*c));
    c->rank = -1;
    c->world_size = 1;
    c->local_world_size = 1;
    c->op_timeout_s = o.op_timeout_s > 0 ? o.op_timeout_s : 600.0;
    c->segment_bytes = o.segment_bytes ? o.segment_bytes : ((size_t)4 << 20);
    gethostname(c->host, sizeof(c->host) - 1);
    double rv_timeout = o.rendezvous_timeout_s > 0 ? o.rendezvous_timeout_s : 300.0;
    char slurm_run_id[128] = "";
    const char *run_id = o.run_id;
    if ((!run_id || !*run_id) && comm_env_set("SLURM_JOB_ID")) {
        const char *step = getenv("SLURM_STEP_ID");
        snprintf(slurm_run_id, sizeof(slurm_run_id), "%s%s%s", getenv("SLURM_JOB_ID"), step && *step ? "." : "",
                 step && *step ? step : "");
        run_id = slurm_run_id;
    }
    long ompi_size = comm_env_int(c, "OMPI_COMM_WORLD_SIZE");
    long pmi_size = comm_env_int(c, "PMI_SIZE");
    int mpi_launcher = ompi_size >= 0 || pmi_size >= 0 || comm_env_set("PMIX_RANK") || comm_env_set("PMI_RANK");
    long env_rank = comm_env_int(c, "RANK"), env_world = comm_env_int(c, "WORLD_SIZE");
    const char *rank_var = "RANK", *world_var = "WORLD_SIZE";
    if (env_rank < 0 && env_world < 0) {
        // srun's step, not the allocation: the batch script itself has SLURM_PROCID=0, SLURM_NTASKS=N
        env_world = comm_env_int(c, "SLURM_STEP_NUM_TASKS");
        env_rank = env_world >= 0 ? comm_env_int(c, "SLURM_PROCID") : -1;
        rank_var = "SLURM_PROCID";
        world_var = "SLURM_STEP_NUM_TASKS";
    }

#ifdef LLMGEN_MPI
    if (mpi_launcher) {
        int inited = 0;
        MPI_Initialized(&inited);
        if (!inited) {
            MPI_Init(NULL, NULL);
            c->mpi_initialized_here = 1;
        }
        MPI_Errhandler eh;
        MPI_Comm_create_errhandler(comm_mpi_errhandler, &eh);
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, eh);
        MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi);
        MPI_Comm_set_errhandler(c->mpi, eh);
        MPI_Comm_rank(c->mpi, &c->rank);
        MPI_Comm_size(c->mpi, &c->world_size);
        MPI_Comm local;
        MPI_Comm_split_type(c->mpi, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local);
        MPI_Comm_rank(local, &c->local_rank);
        MPI_Comm_size(local, &c->local_world_size);
        MPI_Comm_free(&local);
        c->backend = COMM_MPI;
        snprintf(c->how, sizeof(c->how), "mpi");
        // the launcher's count: mpirun's or PMI's when they say, else srun's / torchrun's (mpirun inside
        // a Slurm allocation may start fewer processes than the allocation has tasks, and that is fine)
        long launcher_world = ompi_size >= 0 ? ompi_size : pmi_size >= 0 ? pmi_size : env_world;
        const char *launcher_var = ompi_size >= 0 ? "OMPI_COMM_WORLD_SIZE" : pmi_size >= 0 ? "PMI_SIZE" : world_var;
        if (launcher_world > 0 && launcher_world != c->world_size)
            comm_fail(c, "MPI reports %d process(es) but %s=%ld: the launcher started each process as its own "
                      "MPI job (srun without PMIx/PMI2?). Use srun --mpi=pmix, or the TCP rendezvous "
                      "(MASTER_ADDR/MASTER_PORT or LLMGEN_RENDEZVOUS_DIR) with a build without MPI",
                      c->world_size, launcher_var, launcher_world);
        c->pfd = NULL;
        *comm_current_slot() = c;
        return;
    }
#else
    if (ompi_size > 1 || (pmi_size > 1 && env_world < 0))
        comm_fail(NULL, "this program was built without MPI but was started by an MPI launcher with %ld "
                  "processes: each would train alone. Rebuild with MPI (mpicc -DLLMGEN_MPI), or start it "
                  "with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun style)",
                  ompi_size > 1 ? ompi_size : pmi_size);
#endif
    (void)mpi_launcher;
    if (env_rank < 0 && env_world < 0) {
        c->rank = 0;  // no launcher: one process, no network
        c->local_rank = 0;
        c->backend = COMM_SINGLE;
        snprintf(c->how, sizeof(c->how), "single process");
        *comm_current_slot() = c;
        return;
    }
    if (env_rank < 0 || env_world <= 0)
        comm_fail(NULL, "%s and %s must be set together (found %s=%s, %s=%s)", rank_var, world_var, rank_var,
                  getenv(rank_var) ? getenv(rank_var) : "(unset)", world_var,
                  getenv(world_var) ? getenv(world_var) : "(unset)");
    if (env_rank >= env_world) comm_fail(NULL, "%s=%ld is not below %s=%ld", rank_var, env_rank, world_var, env_world);
    c->rank = (int)env_rank;
    c->world_size = (int)env_world;
    if (c->world_size == 1) {
        c->local_rank = 0;
        c->backend = COMM_SINGLE;
        snprintf(c->how, sizeof(c->how), "single process");
        *comm_current_slot() = c;
        return;
    }
    c->backend = (o.rendezvous_dir && *o.rendezvous_dir) ? COMM_FILE : COMM_TCP;
    c->fd = (int *)comm_xcalloc(c, (size_t)c->world_size, sizeof(int));
    for (int q = 0; q < c->world_size; q++) c->fd[q] = -1;
    c->pfd = (struct pollfd *)comm_xcalloc(c, (size_t)c->world_size, sizeof(struct pollfd));
    c->pfd_rank = (int *)comm_xcalloc(c, (size_t)c->world_size, sizeof(int));
    comm_tcp_bootstrap(c, &o, run_id, rv_timeout);
    comm_barrier(c);  // every socket of the mesh is up on every rank
    *comm_current_slot() = c;
}

// ----------------------------------------------------------------------------
// reduction (the owner of a chunk sums the contributions in rank order)

static COMM_UNUSED int comm_reducible(CommDtype dt) {
    return dt == COMM_F32 || dt == COMM_F64 || dt == COMM_BF16;
}

// acc (fp32 for f32/bf16, fp64 for f64) = src (first), else acc + src (COMM_MAX: the larger of acc and src),
// element by element.
static COMM_UNUSED void comm_accumulate(CommDtype dt, CommOp op, void *acc, const void *src, size_t n, int first) {
    const int mx = op == COMM_MAX;
    if (dt == COMM_F64) {
        double *a = (double *)acc;
        const double *s = (const double *)src;
        if (first) for (size_t i = 0; i < n; i++) a[i] = s[i];
        else if (mx) for (size_t i = 0; i < n; i++) a[i] = a[i] > s[i] ? a[i] : s[i];
        else for (size_t i = 0; i < n; i++) a[i] += s[i];
    } else if (dt == COMM_F32) {
        float *a = (float *)acc;
        const float *s = (const float *)src;
        if (first) for (size_t i = 0; i < n; i++) a[i] = s[i];
        else if (mx) for (size_t i = 0; i < n; i++) a[i] = a[i] > s[i] ? a[i] : s[i];
        else for (size_t i = 0; i < n; i++) a[i] += s[i];
    } else {
        float *a = (float *)acc;
        const uint16_t *s = (const uint16_t *)src;
        if (first) for (size_t i = 0; i < n; i++) a[i] = comm_bf16_to_f32(s[i]);
        else if (mx) for (size_t i = 0; i < n; i++) a[i] = a[i] > comm_bf16_to_f32(s[i]) ? a[i]
                                                                                         : comm_bf16_to_f32(s[i]);
        else for (size_t i = 0; i < n; i++) a[i] += comm_bf16_to_f32(s[i]);
    }
}

// dst = acc (divided by N for COMM_AVG), in dt (bf16 rounded to nearest even, once).
static COMM_UNUSED void comm_finish(CommDtype dt, CommOp op, int N, void *dst, const void *acc, size_t n) {
    if (dt == COMM_F64) {
        const double *a = (const double *)acc;
        double *d = (double *)dst;
        for (size_t i = 0; i < n; i++) d[i] = op == COMM_AVG ? a[i] / (double)N : a[i];
    } else if (dt == COMM_F32) {
        const float *a = (const float *)acc;
        float *d = (float *)dst;
        for (size_t i = 0; i < n; i++) d[i] = op == COMM_AVG ? a[i] / (float)N : a[i];
    } else {
        const float *a = (const float *)acc;
        uint16_t *d = (uint16_t *)dst;
        for (size_t i = 0; i < n; i++) d[i] = comm_f32_to_bf16(op == COMM_AVG ? a[i] / (float)N : a[i]);
    }
}

// The core of allreduce and reduce_scatter. Rank q's chunk is send[off[q] .. off[q]+len[q]) (in
// elements) on every rank; this rank reduces its own chunk into own_out (len[rank] elements).
// Done in rounds of at most `seg` elements per chunk, so the scratch stays N * segment_bytes.
static COMM_UNUSED void comm_reduce_chunks(Comm *c, const char *what, CommDtype dt, CommOp op, const void *send,
                                           const size_t *off, const size_t *len, void *own_out) {
    const int N = c->world_size, me = c->rank;
    const size_t esz = comm_dtype_size(dt), asz = dt == COMM_F64 ? 8 : 4;
    size_t maxlen = 0;
    for (int q = 0; q < N; q++) if (len[q] > maxlen) maxlen = len[q];
    size_t seg = c->segment_bytes / esz;
    if (seg == 0) seg = 1;
    if (seg > maxlen) seg = maxlen ? maxlen : 1;
    size_t need = (size_t)N * seg * esz + seg * asz;
    if (c->scratch_bytes < need) {
        free(c->scratch);
        c->scratch = comm_xcalloc(c, need, 1);
        c->scratch_bytes = need;
    }
    char *pieces = (char *)c->scratch;  // piece from rank q at pieces + q*seg*esz
    char *acc = pieces + (size_t)N * seg * esz;
    const char *src = (const char *)send;
    CommPeerIO *io = comm_io(c);
    for (size_t s = 0; s < maxlen; s += seg) {
        size_t mine = len[me] > s ? (len[me] - s < seg ? len[me] - s : seg) : 0;
        for (int q = 0; q < N; q++) {
            size_t theirs = len[q] > s ? (len[q] - s < seg ? len[q] - s : seg) : 0;
            io[q].send = src + (off[q] + s) * esz;
            io[q].nsend = q == me ? 0 : theirs * esz;
            io[q].recv = pieces + (size_t)q * seg * esz;
            io[q].nrecv = q == me ? 0 : mine * esz;
        }
        comm_exchange(c, what, io);
        if (!mine) continue;
        for (int q = 0; q < N; q++) {
            const char *x = q == me ? src + (off[me] + s) * esz : pieces + (size_t)q * seg * esz;
            comm_accumulate(dt, op, acc, x, mine, q == 0);
        }
        comm_finish(dt, op, N, (char *)own_out + s * esz, acc, mine);
    }
    free(io);
}

// ----------------------------------------------------------------------------
// collectives

static COMM_UNUSED void comm_check_reducible(const Comm *c, const char *what, CommDtype dt) {
    if (!comm_reducible(dt))
        comm_fail(c, "%s: reductions are defined for f32, f64 and bf16, not %s", what, comm_dtype_name(dt));
}

// recv[i] = op over ranks of send[i], i < count. In place when recv == send.
static COMM_UNUSED void comm_allreduce(Comm *c, void *recv, const void *send, size_t count, CommDtype dt, CommOp op) {
    comm_check_reducible(c, "allreduce", dt);
    const int N = c->world_size;
    const size_t esz = comm_dtype_size(dt);
    size_t *off = (size_t *)comm_xcalloc(c, (size_t)N, sizeof(size_t));
    size_t *len = (size_t *)comm_xcalloc(c, (size_t)N, sizeof(size_t));
    const size_t chunk = comm_shard_count(count, N);
    for (int q = 0; q < N; q++) {
        off[q] = (size_t)q * chunk < count ? (size_t)q * chunk : count;
        len[q] = count - off[q] < chunk ? count - off[q] : chunk;
    }
    // 1) reduce: this rank's chunk, summed in rank order, lands in recv
    comm_reduce_chunks(c, "allreduce", dt, op, send, off, len, (char *)recv + off[c->rank] * esz);
    // 2) gather: every owner sends its reduced chunk to everyone
    CommPeerIO *io = comm_io(c);
    for (int q = 0; q < N; q++) {
        if (q == c->rank) continue;
        io[q].send = (const char *)recv + off[c->rank] * esz;
        io[q].nsend = len[c->rank] * esz;
        io[q].recv = (char *)recv + off[q] * esz;
        io[q].nrecv = len[q] * esz;
    }
    comm_exchange(c, "allreduce", io);
    free(io);
    free(off);
    free(len);
}

// Rank r gets recv[i] = op over ranks of send[r*recvcount + i], i < recvcount (send holds
// world_size * recvcount elements). In place when recv == send + rank*recvcount.
static COMM_UNUSED void comm_reduce_scatter(Comm *c, void *recv, const void *send, size_t recvcount, CommDtype dt,
                                            CommOp op) {
    comm_check_reducible(c, "reduce_scatter", dt);
    const int N = c->world_size;
    size_t *off = (size_t *)comm_xcalloc(c, (size_t)N, sizeof(size_t));
    size_t *len = (size_t *)comm_xcalloc(c, (size_t)N, sizeof(size_t));
    for (int q = 0; q < N; q++) {
        off[q] = (size_t)q * recvcount;
        len[q] = recvcount;
    }
    comm_reduce_chunks(c, "reduce_scatter", dt, op, send, off, len, recv);
    free(off);
    free(len);
}

// recv[q*sendcount + i] = send of rank q [i]. In place when send == recv + rank*sendcount.
static COMM_UNUSED void comm_allgather(Comm *c, void *recv, const void *send, size_t sendcount, CommDtype dt) {
    const size_t bytes = sendcount * comm_dtype_size(dt);
    char *mine = (char *)recv + (size_t)c->rank * bytes;
    if (mine != (const char *)send) memmove(mine, send, bytes);
    CommPeerIO *io = comm_io(c);
    for (int q = 0; q < c->world_size; q++) {
        if (q == c->rank) continue;
        io[q].send = mine;
        io[q].nsend = bytes;
        io[q].recv = (char *)recv + (size_t)q * bytes;
        io[q].nrecv = bytes;
    }
    comm_exchange(c, "allgather", io);
    free(io);
}

// buf (count elements) of rank root is copied into buf of every rank.
static COMM_UNUSED void comm_broadcast(Comm *c, void *buf, size_t count, CommDtype dt, int root) {
    if (root < 0 || root >= c->world_size) comm_fail(c, "broadcast: root %d is not a rank of %d", root, c->world_size);
    const size_t bytes = count * comm_dtype_size(dt);
    CommPeerIO *io = comm_io(c);
    for (int q = 0; q < c->world_size; q++) {
        if (q == c->rank) continue;
        if (c->rank == root) {
            io[q].send = (const char *)buf;
            io[q].nsend = bytes;
        } else if (q == root) {
            io[q].recv = (char *)buf;
            io[q].nrecv = bytes;
        }
    }
    comm_exchange(c, "broadcast", io);
    free(io);
}

// Returns when every rank has called it (one byte to and from every peer).
static COMM_UNUSED void comm_barrier(Comm *c) {
    const int N = c->world_size;
    if (N == 1) return;
    char *in = (char *)comm_xcalloc(c, (size_t)N, 1);
    const char out = 1;
    CommPeerIO *io = comm_io(c);
    for (int q = 0; q < N; q++) {
        if (q == c->rank) continue;
        io[q].send = &out;
        io[q].nsend = 1;
        io[q].recv = in + q;
        io[q].nrecv = 1;
    }
    comm_exchange(c, "barrier", io);
    free(io);
    free(in);
}

// Every rank compares `value` (e.g. the build id and the flags that must match); if any differs,
// rank 0 prints which ranks hold which value and every rank exits with status 1.
static COMM_UNUSED void comm_agree(Comm *c, const char *what, const char *value) {
    typedef struct {
        uint64_t hash;
        char text[200];  // the start of the value, for the message
    } AgreeRec;
    const int N = c->world_size;
    if (N == 1) return;
    AgreeRec mine;
    memset(&mine, 0, sizeof(mine));
    mine.hash = comm_hash(value, strlen(value), COMM_HASH_SEED);
    snprintf(mine.text, sizeof(mine.text), "%s", value);
    if (strlen(value) >= sizeof(mine.text)) memcpy(mine.text + sizeof(mine.text) - 4, "...", 4);
    AgreeRec *all = (AgreeRec *)comm_xcalloc(c, (size_t)N, sizeof(AgreeRec));
    comm_allgather(c, all, &mine, sizeof(AgreeRec), COMM_U8);
    int ok = 1;
    for (int q = 1; q < N; q++) ok &= all[q].hash == all[0].hash;
    if (ok) {
        free(all);
        return;
    }
    if (c->rank == 0) {
        // group the ranks by value: "rank(s) 0, 1 have '...'; rank(s) 2 have '...'"
        char msg[4000];
        size_t n = (size_t)snprintf(msg, sizeof(msg), "ranks disagree on %s: ", what);
        int *done = (int *)comm_xcalloc(c, (size_t)N, sizeof(int));
        for (int q = 0; q < N && n < sizeof(msg) - 300; q++) {
            if (done[q]) continue;
            int members[64], nm = 0;
            for (int p = q; p < N; p++)
                if (!done[p] && all[p].hash == all[q].hash) {
                    done[p] = 1;
                    if (nm < 64) members[nm++] = p;
                }
            char list[256];
            comm_list_ranks(list, sizeof(list), members, nm);
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "%srank(s) %s have '%s'", q ? "; " : "", list, all[q].text);
        }
        free(done);
        fflush(stdout);
        fprintf(stderr, "error: rank 0: %s\n", msg);
        fflush(stderr);
    }
    free(all);
    comm_barrier(c);  // rank 0 has printed: now everyone leaves
#ifdef LLMGEN_MPI
    if (c->backend == COMM_MPI) MPI_Finalize();
#endif
    exit(1);
}

// In-place conveniences: the gradient all-reduce (f32) and the grad-norm sum of squares (f64).
static COMM_UNUSED void comm_allreduce_f32(Comm *c, float *buf, size_t count, CommOp op) {
    comm_allreduce(c, buf, buf, count, COMM_F32, op);
}
static COMM_UNUSED void comm_allreduce_f64(Comm *c, double *buf, size_t count, CommOp op) {
    comm_allreduce(c, buf, buf, count, COMM_F64, op);
}

// Collective: a last barrier (so no rank closes a socket a peer still reads), then close
// everything; finalizes MPI if comm_init started it.
static COMM_UNUSED void comm_free(Comm *c) {
    comm_barrier(c);
    if (c->fd)
        for (int q = 0; q < c->world_size; q++)
            if (c->fd[q] >= 0) close(c->fd[q]);
    free(c->fd);
    free(c->pfd);
    free(c->pfd_rank);
    free(c->scratch);
#ifdef LLMGEN_MPI
    if (c->backend == COMM_MPI) {
        MPI_Comm_free(&c->mpi);
        if (c->mpi_initialized_here) MPI_Finalize();
    }
#endif
    if (*comm_current_slot() == c) *comm_current_slot() = NULL;
    memset(c, 0, sizeof(*c));
}

#endif  // LLMGEN_COMM_H
