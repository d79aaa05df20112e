// The engine of `fjord bench`: interconnect benchmarks over a Communicator, reported the way
// nccl-tests reports them, so that operators read fjord's numbers with the habits they have.
//
// Two benchmarks:
//  - A sweep of one collective over message sizes (RunBenchSweep): per size, an out-of-place and
//    an in-place measurement of time, algorithm bandwidth (bytes / time) and bus bandwidth
//    (algbw times the collective's factor, docs/BENCH.md), and #wrong: elements that differ from
//    the exactly predictable result, summed over ranks.
//  - A pairwise point-to-point matrix (RunP2p): bandwidth and latency of every link between
//    nodes (or ranks), with the links far below the median flagged.
//
// Design: the engine knows collectives only through the Communicator interface and memory only
// through BenchMemory, so the same sweep runs on the MPI backend (host memory, steady clock) and
// on NCCL (device memory, CUDA events on the communicator's stream). Metadata (times, error
// counts, host names) travels over a separate `control` communicator in host memory: for MPI it
// is the measured communicator itself, for NCCL the MPI communicator that bootstrapped it.
// Inputs are integers chosen per dtype so that every partial and final reduction is exact, and
// results are compared bit for bit (after nccl-tests' verifiable.h).
//
// `reduce` has no Communicator call (the trainer never needs one): the engine composes it from
// ReduceScatter and a gather of the blocks to the root over SendRecv, the bandwidth-optimal
// scheme MPI libraries use for large messages; its rows measure that composition.
//
// Threads: every function here is collective over all ranks of the communicators it takes and
// must be called from one thread per rank.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

enum class BenchCollective {
  kAllReduce,
  kAllGather,
  kReduceScatter,
  kBroadcast,
  kReduce,
  kAllToAll,
  kSendRecv
};

// "allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall", "sendrecv".
const char* BenchCollectiveName(BenchCollective c);
StatusOr<BenchCollective> ParseBenchCollective(const std::string& name);
bool BenchHasReduction(BenchCollective c);  // the redop column applies
bool BenchHasRoot(BenchCollective c);       // the root column applies

// busbw = algbw * factor, as nccl-tests defines it: 2(n-1)/n for allreduce; (n-1)/n for
// allgather, reducescatter and alltoall (whose algbw is over the total size); 1 for broadcast,
// reduce and sendrecv. 0 for allreduce, allgather, reducescatter and alltoall on one rank.
double BusBandwidthFactor(BenchCollective c, int world_size);

// How the per-rank times of one measurement combine into the reported time (nccl-tests -a).
enum class TimeCombine { kAvg, kMin, kMax };
const char* TimeCombineName(TimeCombine c);  // "avg", "min", "max"

// Where the benchmark's buffers live and how a timed loop is clocked. Not thread-safe.
class BenchMemory {
 public:
  virtual ~BenchMemory() = default;
  // Buffers of at least `bytes` bytes (64-byte aligned), owned by this object until Free().
  virtual StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* buffer) = 0;  // zeroes, then frees
  // Copies between a buffer of Allocate() and host memory; complete when they return.
  virtual Status Upload(void* buffer, const void* host, size_t bytes) = 0;
  virtual Status Download(void* host, const void* buffer, size_t bytes) = 0;
  // The timed loop: StartTimer before the first operation is issued, StopTimer after the last;
  // StopTimer waits until the operations are complete and returns the seconds between the two.
  virtual Status StartTimer() = 0;
  virtual StatusOr<double> StopTimer() = 0;
  // True when the memory belongs to a device queue (NCCL): the engine issues the loop's
  // operations with the Async calls and lets StopTimer wait, as nccl-tests does.
  virtual bool queued() const = 0;
  // Where the buffers are, for the header: "host memory", "cuda:0 NVIDIA H200 (0000:1b:00.0)".
  virtual std::string Describe() const = 0;
};

// Host memory (std::aligned_alloc) and std::chrono::steady_clock.
std::unique_ptr<BenchMemory> CreateHostBenchMemory();

// One buffer of a BenchMemory; frees it when destroyed.
class BenchBuffer {
 public:
  BenchBuffer() = default;
  BenchBuffer(BenchMemory* memory, void* data) : memory_(memory), data_(data) {}
  BenchBuffer(BenchBuffer&& other) noexcept { *this = std::move(other); }
  BenchBuffer& operator=(BenchBuffer&& other) noexcept;
  BenchBuffer(const BenchBuffer&) = delete;
  BenchBuffer& operator=(const BenchBuffer&) = delete;
  ~BenchBuffer();
  void* get() const { return data_; }
  std::byte* bytes() const { return static_cast<std::byte*>(data_); }

 private:
  BenchMemory* memory_ = nullptr;
  void* data_ = nullptr;
};
StatusOr<BenchBuffer> AllocateBenchBuffer(BenchMemory& memory, size_t bytes);

struct BenchOptions {
  BenchCollective collective = BenchCollective::kAllReduce;
  size_t min_bytes = 8;                 // -b
  size_t max_bytes = size_t{32} << 20;  // -e
  double factor = 2.0;                  // -f: sizes grow by this factor when > 1 ...
  size_t step_bytes = 0;                // -i: ... else by this increment
  int iters = 20;                       // -n: timed iterations per measurement
  int warmup = 5;                       // -w: untimed iterations before them
  // --repeat: time the loop of `iters` this many times and report the fastest (a departure from
  // nccl-tests, which times one loop, for shared machines where a descheduled rank spoils a loop).
  int repeat = 1;
  bool check = true;                        // -c: verify one run per measurement
  ReduceOp op = ReduceOp::kSum;             // -o
  DataType dtype = DataType::kF32;          // -d
  int root = 0;                             // -r: broadcast and reduce
  TimeCombine combine = TimeCombine::kAvg;  // -a
  // Test hook (FJORD_TEST_HOOK bench_corrupt=RANK:INDEX): rank `corrupt_rank` changes element
  // `corrupt_index` of its result before comparing it, in the first out-of-place check whose
  // result has that element; once per run. -1: off.
  int corrupt_rank = -1;
  size_t corrupt_index = 0;
};

// Sizes of one row for a world of `world_size` ranks: bytes is the size column (nccl-tests: the
// larger of one rank's send and receive buffer), count = bytes / element size, per_rank the
// count each call takes (allgather: send count; reducescatter: recv count; alltoall: elements per
// block). A size too small for one element per rank gives count 0 (the row is skipped).
struct BenchShape {
  size_t bytes = 0;
  size_t count = 0;
  size_t per_rank = 0;
};
BenchShape BenchShapeFor(BenchCollective c, size_t requested_bytes, DataType dtype, int world_size);

// The requested sizes of a sweep, in order (without rounding to the collective's shape).
std::vector<size_t> BenchSizes(const BenchOptions& options);

struct BenchMeasurement {
  bool measured = false;  // false: not applicable (in place for alltoall and sendrecv)
  double time_us = 0;     // per iteration, combined over ranks as BenchOptions::combine says
  double algbw = 0;       // GB/s (1e9 bytes per second)
  double busbw = 0;
  long long wrong = -1;  // elements wrong, summed over ranks; -1 when not checked
};

struct BenchRow {
  size_t bytes = 0;
  size_t count = 0;
  BenchMeasurement out_of_place, in_place;
};

struct BenchTable {
  std::string label;  // the algorithm of the communicator measured ("auto", "mpi", "nccl", ...)
  std::vector<BenchRow> rows;
  long long wrong = 0;   // over every checked measurement
  double avg_busbw = 0;  // mean of busbw over every measurement, both columns (nccl-tests)
};

// One communicator to measure, named in the output.
struct BenchTarget {
  std::string label;
  Communicator* comm = nullptr;
};

// Where the ranks are, for the header and the JSON: one entry per rank, in rank order.
struct BenchRankDesc {
  int rank = 0;
  long pid = 0;
  std::string host;
  std::string device;
};

// What the run was, for the header and the JSON.
struct BenchContext {
  std::string backend;  // "mpi", "nccl", "self"
  int world_size = 1;
  std::vector<BenchRankDesc> ranks;
};

// Gathers every rank's pid, host and memory description over `control` (host memory).
StatusOr<BenchContext> GatherBenchContext(Communicator& control, const BenchMemory& memory,
                                          const std::string& backend);

// Runs the sweep of `options` on every target, size by size (targets back to back within a size,
// so that their rows see the same machine conditions). Collective over all ranks of every
// target and of `control`. `on_row(table_index, row)` is called on every rank as each row is
// complete. Returns the tables (the same on every rank) or the first error.
StatusOr<std::vector<BenchTable>> RunBenchSweep(
    const BenchOptions& options, const std::vector<BenchTarget>& targets, Communicator& control,
    BenchMemory& memory, const std::function<void(size_t, const BenchRow&)>& on_row = {});

// The nccl-tests table, in pieces so that rows can be printed as they come.
std::string FormatBenchHeader(const BenchOptions& options, const BenchContext& context,
                              const std::string& label);
std::string FormatBenchRow(const BenchOptions& options, const BenchRow& row);
std::string FormatBenchFooter(const BenchTable& table);
// With several tables: time and busbw of every table against the first, per size.
std::string FormatBenchComparison(const std::vector<BenchTable>& tables);
// The whole run as one JSON document (schema in docs/BENCH.md).
std::string BenchJson(const BenchOptions& options, const BenchContext& context,
                      const std::vector<BenchTable>& tables);

// ---------------------------------------------------------------------------------------------
// Point to point.

struct P2pOptions {
  size_t latency_bytes = 8;                   // -b: message of the latency test
  size_t bandwidth_bytes = size_t{16} << 20;  // -e: message of the bandwidth test
  int iters = 20;                             // -n
  int warmup = 2;                             // -w
  bool check = true;                          // -c: verify the last message of each direction
  bool per_rank = false;                      // every rank instead of one rank per host
  double threshold = 0.7;  // flag bandwidth below threshold * median, latency above median / threshold
};

struct P2pNode {
  int rank = 0;
  std::string host;
  std::string label;  // the host name, or "RANK:HOST" with per_rank
};

struct P2pFlag {
  enum class Kind { kBandwidth, kLatency };
  Kind kind = Kind::kBandwidth;
  int from = 0, to = 0;  // node indices; for latency (a symmetric exchange) from < to
  double value = 0;      // GB/s or us
  double ratio = 0;      // value / median
};

struct P2pResult {
  std::vector<P2pNode> nodes;
  // [from][to]; the diagonal is 0. Latency is symmetric: the median time of one exchange of
  // latency_bytes messages in both directions at once (one message latency plus overheads), the
  // mean of what the two ends measured.
  std::vector<std::vector<double>> bandwidth_gbps;
  std::vector<std::vector<double>> latency_us;
  std::vector<std::vector<long long>> wrong;  // [from][to]: elements wrong in the checked message
  long long wrong_total = 0;
  double median_bandwidth = 0, median_latency = 0;
  std::vector<P2pFlag> flags;         // bandwidth flags first, slowest first; then latency
  std::vector<std::string> suspects;  // one sentence per node or link the flags point at
};

// Measures every pair of nodes (or ranks), one pair at a time while every other rank waits, so
// links are measured alone. Collective over all ranks of `data` and `control`; the result is the
// same on every rank. FailedPrecondition when fewer than two nodes take part.
StatusOr<P2pResult> RunP2p(const P2pOptions& options, Communicator& data, Communicator& control,
                           BenchMemory& memory);

// Fills median_*, flags and suspects of `result` from its matrices (pure; used by RunP2p).
void FlagSlowLinks(double threshold, P2pResult* result);

std::string FormatP2p(const P2pOptions& options, const BenchContext& context, const P2pResult& result);
std::string P2pJson(const P2pOptions& options, const BenchContext& context, const P2pResult& result);

}  // namespace fjord
