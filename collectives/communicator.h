// The Communicator: collectives over the ranks of one job, behind one interface for every
// backend (MPI over host memory here; NCCL over device memory with the CUDA backend).
//
// Counts are in elements of `dtype`. Buffers belong to the caller and must stay valid (and
// untouched) until the operation completes: for the synchronous calls, until they return; for
// the async ones, until Wait() returns or Test() reports completion. In-place operation is
// allowed where noted (send == recv); any other overlap of send and recv is refused.
//
// Ordering: every rank must issue the same collectives in the same order (as in MPI and NCCL).
// Each collective gets a sequence number (1, 2, ...) that names it in errors and in the flight
// recorder. Async operations run in issue order, one at a time per communicator; a synchronous
// call issued while async ones are pending runs after them.
//
// Threads: every method may be called from any thread; calls are ordered by the time they are
// issued. The MPI backend runs operations on its own communication thread (or, for a
// synchronous call on an idle communicator, directly on the caller's thread), so an async
// collective progresses while the caller computes.
//
// Reductions: f32 in float; bf16 and f16 are converted to float, reduced and rounded back to
// nearest-even after every step (partial sums are bf16/f16, as in NCCL); i32 sums wrap
// (two's complement); u8 sums wrap modulo 256. kAvg is the sum divided by size() once at the
// end: float division rounded to the dtype, truncating integer division for i32; kAvg on u8 is
// refused (a wrapped sum has no meaningful average). kMax works on every dtype. A NaN in any
// input gives NaN. Every rank receives bit-identical results.
//
// Failures: a collective that does not complete within the timeout returns an error naming the
// collective, its sequence number and the ranks that did not arrive; every surviving rank prints
// that message and writes its flight recorder (the last collectives of this rank) to
// CommOptions::flight_dir (stderr without one). A timeout is a verdict of the census: when every
// rank answers and has issued the operation, it is late, not lost, and is given one more timeout
// before it fails (docs/RELIABILITY.md, "Timeouts"). After an
// error the communicator is unusable: later calls fail with the first error, MPI may still
// write into the buffers of the failed operation, and MPI is not finalized (a peer may never
// get there). The caller reports and ends the job with Abort(), which ends every rank.
// Invalid arguments (InvalidArgument) are refused before anything is sent and do not break the
// communicator.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fjord {

enum class DataType { kF32, kBF16, kF16, kI32, kU8 };
enum class ReduceOp { kSum, kAvg, kMax };

// Which algorithm the MPI backend uses for AllReduce: kAuto picks by message size (the tree up
// to CommOptions::tree_max_bytes, the ring above). kMpi is the MPI library's own collective.
// ReduceScatter and AllGather use the ring under every setting but kMpi.
enum class Algorithm { kAuto, kMpi, kRing, kTree };

size_t DataTypeSize(DataType dtype);        // 0 for a value outside the enum
const char* DataTypeName(DataType dtype);   // "float", "bfloat16", "half", "int32", "uint8"
const char* ReduceOpName(ReduceOp op);      // "sum", "avg", "max"
const char* AlgorithmName(Algorithm algo);  // "auto", "mpi", "ring", "tree"
// Parses "auto", "mpi", "ring" or "tree" (as --algo and parallel.algo spell them).
StatusOr<Algorithm> ParseAlgorithm(const std::string& name);

// Where this process sits in the job, known before any communicator exists: from the
// launcher's environment (Open MPI's OMPI_COMM_WORLD_*, then PMIx, then Slurm's SLURM_*),
// or rank 0 of 1 when started without a launcher. local_size is the number of ranks on this
// node (OMPI_COMM_WORLD_LOCAL_SIZE or SLURM_NTASKS_PER_NODE; 1 when neither is set).
struct RankInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string host;
};
RankInfo RankInfoFromEnvironment();

// A pending async collective. Owned by the caller; it may outlive its communicator.
class CommHandle {
 public:
  virtual ~CommHandle() = default;
  // Blocks until the collective completes; returns its error, if any. May be called again.
  virtual Status Wait() = 0;
  // Non-blocking: true when complete (Wait() then returns at once); the error when it failed.
  virtual StatusOr<bool> Test() = 0;
};

// The handle of an operation that finished before its call returned (backends that run an
// operation at once): Wait returns `status`; Test returns true, or `status` when it failed.
std::unique_ptr<CommHandle> CompletedHandle(Status status);

struct CommOptions {
  // How long one operation may take on this rank, from the moment it starts running.
  std::chrono::milliseconds timeout{300'000};
  Algorithm algorithm = Algorithm::kAuto;
  // Operations remembered by the flight recorder (0 disables it).
  size_t flight_recorder_entries = 64;
  // Where a rank that fails writes its flight recorder, as rank-R.txt, and prints one line naming
  // the file (fjord train: RUN_DIR/flight). Empty: the dump goes to stderr. MPI backend only.
  std::string flight_dir{};
  // Tuning of the MPI backend; 0 means the measured default (see collectives/mpi/mpi_communicator.cc).
  size_t ring_chunk_bytes = 0;  // pipeline chunk of the ring algorithms
  int ring_window = 0;          // ring chunks in flight at once
  size_t tree_max_bytes = 0;    // kAuto uses the tree for AllReduce up to this many bytes
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank, size, local rank and size, host: from MPI for the MPI backend.
  virtual RankInfo rank_info() const = 0;
  virtual const char* backend() const = 0;  // "mpi", "self", "nccl"

  // recv[i] = op over ranks of send[i], i < count. In place allowed.
  virtual Status AllReduce(const void* send, void* recv, size_t count, DataType dtype, ReduceOp op) = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> AllReduceAsync(const void* send, void* recv, size_t count,
                                                               DataType dtype, ReduceOp op) = 0;
  // send holds size() * recv_count elements; rank r receives the reduction of block r.
  // In place allowed when recv == send + rank() * recv_count (elements); the other blocks of
  // send are not modified.
  virtual Status ReduceScatter(const void* send, void* recv, size_t recv_count, DataType dtype,
                               ReduceOp op) = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> ReduceScatterAsync(const void* send, void* recv,
                                                                   size_t recv_count, DataType dtype,
                                                                   ReduceOp op) = 0;
  // recv (size() * send_count elements) gets every rank's send block in rank order.
  // In place allowed when send == recv + rank() * send_count.
  virtual Status AllGather(const void* send, void* recv, size_t send_count, DataType dtype) = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> AllGatherAsync(const void* send, void* recv,
                                                               size_t send_count, DataType dtype) = 0;
  // buffer of root is copied to every rank's buffer.
  virtual Status Broadcast(void* buffer, size_t count, DataType dtype, int root) = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> BroadcastAsync(void* buffer, size_t count, DataType dtype,
                                                               int root) = 0;
  // Block j (count elements) of send goes to rank j; block i of recv comes from rank i.
  // send and recv must not overlap.
  virtual Status AllToAll(const void* send, void* recv, size_t count, DataType dtype) = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> AllToAllAsync(const void* send, void* recv, size_t count,
                                                              DataType dtype) = 0;
  // Sends send_count elements to rank `dest` and receives recv_count from rank `source`
  // (either may be this rank). Not a collective: only the ranks involved take part, and it
  // gets no sequence number of its own in the collective order (the flight recorder numbers
  // it "p2p.N"). The message from `source` must hold exactly recv_count elements.
  virtual Status SendRecv(const void* send, size_t send_count, int dest, void* recv, size_t recv_count,
                          int source, DataType dtype) = 0;
  virtual Status Barrier() = 0;
  virtual StatusOr<std::unique_ptr<CommHandle>> BarrierAsync() = 0;

  // The flight recorder as text: one line per recent operation (seq, op, bytes, algorithm,
  // issue, start and end time, state), oldest first.
  virtual std::string FlightRecord() const = 0;
  // `why` and the flight recorder for the log: written to CommOptions::flight_dir/rank-R.txt where
  // the backend does that (MPI), and then the console gets `why` and one line naming the file;
  // else `why` and the whole dump.
  virtual std::string FlightReport(const std::string& why) const { return why + "\n" + FlightRecord(); }

  // What this rank is waiting in right now, for a report when the process is told to stop
  // (a launcher tearing the job down after another rank died): the oldest unfinished operation,
  // e.g. "allreduce #57 (3145728 bytes f32 sum, ring), running for 0.84 s, waiting for rank 1
  // (host no2)", or "" when none is in flight. Thread-safe; callable while an operation runs.
  virtual std::string InFlight() const { return ""; }

  // Ends every rank of the job with `exit_code` after printing `message`; does not return.
  // The MPI backend waits about a second first, so that the other ranks finish reporting a
  // failure they saw at the same time.
  [[noreturn]] virtual void Abort(const std::string& message, int exit_code) = 0;
};

// The communicator for this process: the MPI backend when the job was started by a launcher
// with more than one rank (OMPI_COMM_WORLD_SIZE or SLURM_NTASKS above 1, or PMIX_RANK set) or
// `force_mpi`, else a one-rank communicator that needs no MPI. Creating an MPI communicator is
// collective over MPI_COMM_WORLD (all ranks must create theirs in the same order); the first
// one initializes MPI unless the application did, and destroying the last one finalizes it
// (MPI cannot be initialized again in the same process).
StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(const CommOptions& options,
                                                           bool force_mpi = false);

// Every rank's `mine`, in rank order, any length (no fixed slots, nothing cut off): the lengths
// first, then the strings padded to the longest. `gather_bytes(send, recv, bytes)` must all-gather
// `bytes` bytes from every rank into recv in rank order; the Communicator form uses AllGather, the
// MPI backend passes MPI_Allgather before it can serve collectives itself. Collective.
StatusOr<std::vector<std::string>> AllGatherStrings(
    std::string_view mine, int world_size,
    const std::function<Status(const void*, void*, size_t)>& gather_bytes);
StatusOr<std::vector<std::string>> AllGatherStrings(Communicator& comm, std::string_view mine);

}  // namespace fjord
