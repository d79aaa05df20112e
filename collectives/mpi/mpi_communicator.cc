// The MPI backend; the design is described in mpi_communicator.h. This file holds, in order: the
// process-wide MPI lifetime (MpiRuntime), the communicator with its operation queue and
// communication thread, the deadline-aware wait, the census and the failure report, and the
// MPI-library paths of the collectives.
//
// Tuned defaults, measured with tests/bench/allreduce_bench.cc on 2 ranks of the 2-core development VM
// (AMD EPYC, 1 MiB L2 per core, Open MPI 4.1.4 vader with CMA single copy), a shared machine
// whose other load made single runs noisy, hence best-of-N runs:
//  - ring chunk 256 KiB with 4 chunks in flight: the receive slots (1 MiB) stay in the L2, so the
//    reduction reads the received chunk from cache; 512 KiB x 4 was as fast at 256 MiB but
//    slower at 16 MiB, 128 KiB and 1-4 MiB chunks slower, 2 chunks in flight slower than 4.
//  - kAuto: recursive doubling up to 3 KiB, the ring above. The tree sends the whole buffer as
//    one message; above Open MPI's shared-memory eager limit (4 KiB, headers included) that
//    message needs a rendezvous round trip, and at 4 KiB the tree took 9 us against the ring's
//    5 us (two eager messages of half the size); at 1-2 KiB the tree took 1.8-2.6 us against
//    3.2-3.8 us. At 8 KiB the tree was ~15% faster again (the ring's halves cross the limit too),
//    from 16 KiB on the ring wins. More ranks favour the tree up to larger sizes (log2 n against
//    2 (n - 1) latencies); CommOptions::tree_max_bytes overrides the threshold.
#include "collectives/mpi/mpi_communicator.h"

#include <mpi.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "collectives/flight_recorder.h"
#include "collectives/mpi/datagrams.h"
#include "collectives/op.h"
#include "collectives/reduce.h"
#include "collectives/ring.h"
#include "collectives/transport.h"
#include "collectives/tree.h"
#include "common/env.h"
#include "common/file_util.h"
#include "common/host.h"

namespace fjord {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::duration;
using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr size_t kDefaultChunkBytes = size_t{256} << 10;
constexpr int kRingWindow = 4;
constexpr size_t kDefaultTreeMaxBytes = size_t{3} << 10;

// Tags on the data communicator: SendRecv uses 0, the ring and tree 1 + seq % kTagSpan (MPI
// guarantees tags up to 32767).
constexpr int kTagSendRecv = 0;
constexpr int kTagSpan = 30000;
// Tags on the census communicator.
constexpr int kTagCensusRequest = 1;
constexpr int kTagCensusReply = 2;
constexpr int kTagGaveUp = 3;  // "I failed in collective #seq": a CensusMsg, no reply
// Kinds of census datagrams (datagrams.h): the same request and answer, beside MPI's.
constexpr uint32_t kDatagramCensusRequest = 1;
constexpr uint32_t kDatagramCensusReply = 2;

constexpr milliseconds kIdlePoll{10};            // an idle communication thread answers census requests
constexpr milliseconds kDatagramResend{200};     // a census resends its datagram requests this often
constexpr microseconds kCensusPollInWait{1000};  // and a waiting one this often
constexpr milliseconds kAbortGrace{1000};
// A rank whose MPI_Abort cannot reach mpirun (its host cut off) ends itself this long after calling
// it: Open MPI's abort waits for the daemon's answer, which never comes across a partition.
constexpr milliseconds kAbortWatchdog{3000};
constexpr size_t kMaxMpiElems = size_t{1} << 30;  // per MPI call (counts are int)

// How long the census waits for answers. Its datagrams answer within milliseconds of the link's return;
// over MPI alone (no datagrams between two ranks) an answer queues behind TCP's resend of the data,
// which comes by 1.6 x timeout + 0.2 s after an outage of 0.8 x timeout that began with the
// operation, so the window is 0.6 x timeout + 1 s, and at most 7 s, so that a partition ends the
// job within timeout + 15 s (docs/RELIABILITY.md, "Timeouts").
Clock::duration CensusWindow(Clock::duration timeout) {
  return std::clamp<Clock::duration>(timeout * 6 / 10 + milliseconds(1000), milliseconds(500),
                                     milliseconds(7000));
}
constexpr const char* kAllArrived = "all ranks arrived";

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", duration<double>(d).count());
  return buf;
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spin first (a message is usually microseconds away), then yield (oversubscribed ranks need
// the core), then sleep up to 1 ms (a long wait is a slow peer or a hang; stop burning CPU the
// caller's compute threads could use).
void Backoff(Clock::duration waited) {
  if (waited < microseconds(200)) {
    CpuRelax();
  } else if (waited < milliseconds(10)) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::min<Clock::duration>(milliseconds(1), waited / 32));
  }
}

// Cancels pending receives so that a late message cannot land in a buffer the caller frees
// after a failure (one already matched cannot be cancelled); gives up after 100 ms, the job is
// ending anyway. Sends cannot be cancelled and are left.
void CancelReceives(const std::vector<MPI_Request*>& recvs) {
  bool any = false;
  for (MPI_Request* r : recvs) {
    if (*r != MPI_REQUEST_NULL) {
      MPI_Cancel(r);
      any = true;
    }
  }
  const Clock::time_point until = Clock::now() + milliseconds(100);
  while (any && Clock::now() < until) {
    any = false;
    for (MPI_Request* r : recvs) {
      if (*r == MPI_REQUEST_NULL) continue;
      int flag = 0;
      MPI_Test(r, &flag, MPI_STATUS_IGNORE);
      any = any || !flag;
    }
  }
}

MPI_Datatype MpiType(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return MPI_FLOAT;
    case DataType::kBF16:
    case DataType::kF16:
      return MPI_UINT16_T;
    case DataType::kI32:
      return MPI_INT32_T;
    case DataType::kU8:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

// User ops for bf16 / f16 (and u8 sum, see MpiRuntime) under kMpi: inout = in op inout.
template <DataType kType, ReduceOp kOp>
void UserOp(void* in, void* inout, int* len, MPI_Datatype*) {
  ReduceBuffers(inout, in, inout, static_cast<size_t>(*len), kType, kOp);
}

// ---------------------------------------------------------------------------------------------
// Process-wide MPI state: initialized by the first communicator, finalized with the last.

class MpiRuntime {
 public:
  static StatusOr<std::shared_ptr<MpiRuntime>> Acquire();
  ~MpiRuntime();

  bool multiple() const { return provided_ >= MPI_THREAD_MULTIPLE; }
  // A failed communicator: peers may never reach MPI_Finalize, which would then block forever.
  void SkipFinalize() { skip_finalize_ = true; }
  MPI_Op Op(DataType dtype, ReduceOp op) const {
    const bool max = op == ReduceOp::kMax;
    if (dtype == DataType::kBF16) return max ? bf16_max_ : bf16_sum_;
    if (dtype == DataType::kF16) return max ? f16_max_ : f16_sum_;
    if (dtype == DataType::kU8 && !max) return u8_sum_;
    return max ? MPI_MAX : MPI_SUM;
  }

  static std::mutex mu;   // guards the two below and initialization
  static int live_comms;  // MPI communicators alive now

 private:
  MpiRuntime() = default;
  int provided_ = MPI_THREAD_SINGLE;
  bool initialized_here_ = false;
  std::atomic<bool> skip_finalize_{false};
  MPI_Op bf16_sum_ = MPI_OP_NULL, bf16_max_ = MPI_OP_NULL, f16_sum_ = MPI_OP_NULL, f16_max_ = MPI_OP_NULL;
  MPI_Op u8_sum_ = MPI_OP_NULL;  // Open MPI 4.1.4's AVX MPI_SUM on MPI_UINT8_T saturates instead of wrapping
};

std::mutex MpiRuntime::mu;
int MpiRuntime::live_comms = 0;
std::weak_ptr<MpiRuntime> g_runtime;  // guarded by MpiRuntime::mu

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

// Called with MpiRuntime::mu held.
StatusOr<std::shared_ptr<MpiRuntime>> MpiRuntime::Acquire() {
  if (std::shared_ptr<MpiRuntime> rt = g_runtime.lock()) return rt;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    return FailedPrecondition(
        "MPI was already finalized in this process (the last MPI communicator was destroyed) and cannot be "
        "initialized again; keep one communicator alive for the whole run");
  }
  std::shared_ptr<MpiRuntime> rt(new MpiRuntime());
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&rt->provided_);
  } else {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &rt->provided_);
    if (rc != MPI_SUCCESS)
      return Internal("MPI_Init_thread failed: " + MpiErrorString(rc) + " (on " + ThisHostname() + ")");
    rt->initialized_here_ = true;
  }
  if (rt->provided_ < MPI_THREAD_SERIALIZED) {
    return FailedPrecondition(
        std::string("MPI provides only ") + ThreadLevelName(rt->provided_) +
        "; fjord's communication thread needs MPI_THREAD_SERIALIZED or better (initialize MPI "
        "with MPI_Init_thread, or use an MPI built with thread support)");
  }
  MPI_Op_create(&UserOp<DataType::kBF16, ReduceOp::kSum>, 1, &rt->bf16_sum_);
  MPI_Op_create(&UserOp<DataType::kBF16, ReduceOp::kMax>, 1, &rt->bf16_max_);
  MPI_Op_create(&UserOp<DataType::kF16, ReduceOp::kSum>, 1, &rt->f16_sum_);
  MPI_Op_create(&UserOp<DataType::kF16, ReduceOp::kMax>, 1, &rt->f16_max_);
  MPI_Op_create(&UserOp<DataType::kU8, ReduceOp::kSum>, 1, &rt->u8_sum_);
  g_runtime = rt;
  return rt;
}

MpiRuntime::~MpiRuntime() {
  if (skip_finalize_) return;
  for (MPI_Op* op : {&bf16_sum_, &bf16_max_, &f16_sum_, &f16_max_, &u8_sum_}) {
    if (*op != MPI_OP_NULL) MPI_Op_free(op);
  }
  if (initialized_here_) MPI_Finalize();
}

// ---------------------------------------------------------------------------------------------
// The communicator.

// One issued operation.
struct OpInfo {
  OpDesc desc;
  Algorithm algorithm = Algorithm::kMpi;  // resolved at issue
  uint64_t seq = 0;                       // collectives
  uint64_t p2p = 0;                       // SendRecv
  uint64_t record = 0;                    // flight recorder id
  size_t bytes = 0;
  bool started = false;  // recorded as started at issue (run on the caller's thread)
};

// A queued operation; shared by the queue, the executor and the caller's handle.
struct PendingOp {
  OpInfo info;

  std::mutex mu;
  std::condition_variable cv;
  bool done = false;  // guarded by mu
  Status status;      // guarded by mu
  std::atomic<bool> done_flag{false};

  void Complete(const Status& s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      status = s;
      done = true;
      done_flag.store(true, std::memory_order_release);
    }
    cv.notify_all();
  }
  Status Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return status;
  }
};

class OpHandle final : public CommHandle {
 public:
  explicit OpHandle(std::shared_ptr<PendingOp> op) : op_(std::move(op)) {}
  Status Wait() override { return op_->Wait(); }
  StatusOr<bool> Test() override {
    if (!op_->done_flag.load(std::memory_order_acquire)) return false;
    Status s = op_->Wait();
    if (!s.ok()) return s;
    return true;
  }

 private:
  std::shared_ptr<PendingOp> op_;
};

// What a rank tells a peer that gave up on a collective (sent as raw bytes: same build).
struct CensusMsg {
  int64_t from = -1;
  int64_t seq = 0;           // the collective asked about (0: a SendRecv)
  int64_t issued = 0;        // last collective issued on `from`
  int64_t completed = 0;     // last collective completed on `from`
  int64_t running = 0;       // collective running now on `from` (0: none)
  int64_t p2p_issued = 0;    // SendRecv calls issued on `from`
  int64_t idle_us = 0;       // since `from` last issued anything
  int64_t done_us = 0;       // since `from` last completed a collective
  int64_t kind_at_seq = -1;  // OpKind of `seq` on `from`; -1 when not issued or forgotten
  int64_t bytes_at_seq = 0;
};

enum class FailureKind { kNone, kTimeout, kPeerGaveUp, kMpiError, kOther };

class MpiCommunicator;

// The ring and tree's view of the communicator: MPI_Isend/Irecv on the data communicator, waits
// under the operation's deadline.
class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(MpiCommunicator& comm) : comm_(comm) {}
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  int rank() const override;
  int size() const override;
  Status Isend(const void* buf, size_t bytes, int peer, int tag, Request* req) override;
  Status Irecv(void* buf, size_t bytes, int peer, int tag, Request* req) override;
  Status Wait(Request* req) override;
  // After a failure: cancels the receives still posted and forgets every request.
  void CancelPending();

 private:
  Request NewSlot(bool recv, int peer);

  MpiCommunicator& comm_;
  std::vector<MPI_Request> requests_;
  std::vector<bool> is_recv_;
  std::vector<int> peers_;
  std::vector<Request> free_;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const CommOptions& options, std::shared_ptr<MpiRuntime> runtime)
      : options_(options), runtime_(std::move(runtime)), recorder_(options.flight_recorder_entries) {
    ring_.chunk_bytes = options.ring_chunk_bytes != 0 ? options.ring_chunk_bytes : kDefaultChunkBytes;
    ring_.window = options.ring_window > 0 ? options.ring_window : kRingWindow;
    tree_max_bytes_ = options.tree_max_bytes != 0 ? options.tree_max_bytes : kDefaultTreeMaxBytes;
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() override;

  Status Init();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  RankInfo rank_info() const override { return info_; }
  const char* backend() const override { return "mpi"; }

  Status AllReduce(const void* send, void* recv, size_t count, DataType dtype, ReduceOp op) override {
    return RunSync(
        {.kind = OpKind::kAllReduce, .send = send, .recv = recv, .count = count, .dtype = dtype, .op = op});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllReduceAsync(const void* send, void* recv, size_t count,
                                                       DataType dtype, ReduceOp op) override {
    return RunAsync(
        {.kind = OpKind::kAllReduce, .send = send, .recv = recv, .count = count, .dtype = dtype, .op = op});
  }
  Status ReduceScatter(const void* send, void* recv, size_t recv_count, DataType dtype,
                       ReduceOp op) override {
    return RunSync({.kind = OpKind::kReduceScatter,
                    .send = send,
                    .recv = recv,
                    .count = recv_count,
                    .dtype = dtype,
                    .op = op});
  }
  StatusOr<std::unique_ptr<CommHandle>> ReduceScatterAsync(const void* send, void* recv, size_t recv_count,
                                                           DataType dtype, ReduceOp op) override {
    return RunAsync({.kind = OpKind::kReduceScatter,
                     .send = send,
                     .recv = recv,
                     .count = recv_count,
                     .dtype = dtype,
                     .op = op});
  }
  Status AllGather(const void* send, void* recv, size_t send_count, DataType dtype) override {
    return RunSync(
        {.kind = OpKind::kAllGather, .send = send, .recv = recv, .count = send_count, .dtype = dtype});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllGatherAsync(const void* send, void* recv, size_t send_count,
                                                       DataType dtype) override {
    return RunAsync(
        {.kind = OpKind::kAllGather, .send = send, .recv = recv, .count = send_count, .dtype = dtype});
  }
  Status Broadcast(void* buffer, size_t count, DataType dtype, int root) override {
    return RunSync({.kind = OpKind::kBroadcast,
                    .send = buffer,
                    .recv = buffer,
                    .count = count,
                    .dtype = dtype,
                    .root = root});
  }
  StatusOr<std::unique_ptr<CommHandle>> BroadcastAsync(void* buffer, size_t count, DataType dtype,
                                                       int root) override {
    return RunAsync({.kind = OpKind::kBroadcast,
                     .send = buffer,
                     .recv = buffer,
                     .count = count,
                     .dtype = dtype,
                     .root = root});
  }
  Status AllToAll(const void* send, void* recv, size_t count, DataType dtype) override {
    return RunSync({.kind = OpKind::kAllToAll, .send = send, .recv = recv, .count = count, .dtype = dtype});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllToAllAsync(const void* send, void* recv, size_t count,
                                                      DataType dtype) override {
    return RunAsync({.kind = OpKind::kAllToAll, .send = send, .recv = recv, .count = count, .dtype = dtype});
  }
  Status SendRecv(const void* send, size_t send_count, int dest, void* recv, size_t recv_count, int source,
                  DataType dtype) override {
    return RunSync({.kind = OpKind::kSendRecv,
                    .send = send,
                    .recv = recv,
                    .count = send_count,
                    .recv_count = recv_count,
                    .dtype = dtype,
                    .root = dest,
                    .source = source});
  }
  Status Barrier() override { return RunSync({.kind = OpKind::kBarrier}); }
  StatusOr<std::unique_ptr<CommHandle>> BarrierAsync() override {
    return RunAsync({.kind = OpKind::kBarrier});
  }

  std::string FlightRecord() const override { return recorder_.Dump(Me()); }
  std::string InFlight() const override {
    const std::optional<FlightEntry> e = recorder_.OldestUnfinished();
    if (!e) return "";
    std::string what = recorder_.Describe(*e);
    const int peer = waiting_peer_.load(std::memory_order_relaxed);
    if (e->state == OpState::kRunning && peer >= 0) {
      what += ", waiting for rank " + std::to_string(peer) + " (host " + HostOf(peer) + ")";
    }
    return what;
  }
  [[noreturn]] void Abort(const std::string& message, int exit_code) override;

 private:
  friend class MpiTransport;

  std::string Me() const { return "rank " + std::to_string(rank_) + " (host " + HostOf(rank_) + ")"; }
  std::string HostOf(int r) const {
    return r >= 0 && static_cast<size_t>(r) < hosts_.size() ? hosts_[static_cast<size_t>(r)] : "?";
  }

  // Issue side (any thread).
  Status Validate(const OpDesc& d) const;
  void NewOp(const OpDesc& d, bool start_now, OpInfo* op);  // with mu_ held
  Status RunSync(const OpDesc& d);
  StatusOr<std::unique_ptr<CommHandle>> RunAsync(const OpDesc& d);
  void ThreadMain();

  // Executor side: the thread that holds busy_.
  Status Execute(OpInfo& op);
  Status Dispatch(const OpInfo& op);
  Status WaitRequest(MPI_Request* req, const char* call, MPI_Status* status = nullptr);
  Status MpiFailure(const char* call, int rc);
  Status MpiAllReduce(const OpDesc& d);
  Status MpiReduceScatter(const OpDesc& d);
  Status MpiAllGather(const OpDesc& d);
  Status MpiBroadcast(const OpDesc& d);
  Status MpiAllToAll(const OpDesc& d);
  Status MpiSendRecv(const OpDesc& d);
  Status MpiBarrier();
  Status OpenDatagrams();
  void ServiceCensus();
  // Answers one census request (over MPI or a datagram): returns the answer, and says once on
  // stderr why this rank has not issued the collective a peer asks about.
  CensusMsg AnswerCensus(const CensusMsg& request, int from);
  CensusMsg MyCensus(uint64_t seq) const;
  // The census of `op` as one phrase; *all_arrived: every rank answered and has issued `op`.
  std::string RunCensus(const OpInfo& op, bool* all_arrived = nullptr);
  // Writes `why` and the flight recorder to options_.flight_dir/rank-R.txt and returns the one
  // console line that names the file (with no flight_dir, or when the file cannot be written: `why`
  // and the whole dump, as before).
  std::string FlightReport(const std::string& why) const override;
  std::string Verdict(const OpInfo& op, const std::vector<bool>& answered) const;
  Status Fail(OpInfo& op, const Status& cause);
  std::string Describe(const OpInfo& op) const;

  const CommOptions options_;
  std::shared_ptr<MpiRuntime> runtime_;
  RingOptions ring_;
  size_t tree_max_bytes_ = 0;
  int rank_ = 0, size_ = 1;
  RankInfo info_;
  std::vector<std::string> hosts_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm census_comm_ = MPI_COMM_NULL;
  const Clock::time_point origin_ = Clock::now();
  FlightRecorder recorder_;
  std::thread thread_;

  // Issue state, guarded by mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<PendingOp>> queue_;
  bool busy_ = false;  // a thread is executing (an operation or a census poll)
  bool stop_ = false;
  bool failed_ = false;
  Status failure_;
  uint64_t next_seq_ = 0;
  uint64_t next_p2p_ = 0;

  // What a census reply reports; written by issuers and the executor, read by the executor.
  std::atomic<uint64_t> issued_seq_{0};
  std::atomic<uint64_t> issued_p2p_{0};
  std::atomic<uint64_t> completed_seq_{0};
  std::atomic<uint64_t> running_seq_{0};
  std::atomic<int> waiting_peer_{-1};      // the peer of the ring/tree message being waited for (-1: none)
  std::atomic<int64_t> last_issue_us_{0};  // since origin_
  std::atomic<int64_t> last_done_us_{0};   // since origin_: when the last collective completed
  std::atomic<bool> failed_flag_{false};

  // Executor-only state.
  Scratch scratch_;
  Clock::time_point started_{};
  Clock::time_point deadline_{};
  Clock::time_point next_census_poll_{};
  const OpInfo* current_ = nullptr;
  std::unique_ptr<MpiTransport> transport_;  // reused: no allocation per operation
  FailureKind failure_kind_ = FailureKind::kNone;
  uint64_t peer_gave_up_seq_ = 0;  // a peer's census asked about this collective (0: none)
  bool peer_gave_up_p2p_ = false;  // ... or about a SendRecv
  int peer_gave_up_rank_ = -1;
  bool explained_absence_ = false;
  bool extended_ = false;     // this operation's deadline was moved once: every rank had arrived
  std::string verdict_;       // the census of a timed-out operation
  Clock::duration waited_{};  // how long it had run when its (last) deadline passed
  CensusMsg gave_up_out_;     // the notice Fail sends to every peer
  struct Reply {
    CensusMsg msg;
    MPI_Request req = MPI_REQUEST_NULL;
  };
  std::list<Reply> replies_;  // census answers in flight (stable addresses)
  bool census_started_ = false;
  CensusMsg census_out_;
  std::vector<CensusMsg> census_in_;  // what each rank answered the census now running
  std::vector<CensusMsg> mpi_in_;     // MPI's receive buffers (a late answer may still land)
  std::vector<MPI_Request> census_reqs_;
  // The census's datagrams (null where none could be opened: MPI alone), the census round they
  // answer, and the answers of the round now running.
  std::unique_ptr<DatagramChannel> datagrams_;
  uint32_t census_round_ = 0;
  std::vector<bool> datagram_answered_;
  std::vector<CensusMsg> datagram_in_;
};

// --- MpiTransport ------------------------------------------------------------------------------

int MpiTransport::rank() const { return comm_.rank_; }
int MpiTransport::size() const { return comm_.size_; }

Transport::Request MpiTransport::NewSlot(bool recv, int peer) {
  if (!free_.empty()) {
    const Request r = free_.back();
    free_.pop_back();
    is_recv_[r] = recv;
    peers_[r] = peer;
    return r;
  }
  requests_.push_back(MPI_REQUEST_NULL);
  is_recv_.push_back(recv);
  peers_.push_back(peer);
  return static_cast<Request>(requests_.size() - 1);
}

Status MpiTransport::Isend(const void* buf, size_t bytes, int peer, int tag, Request* req) {
  const Request slot = NewSlot(false, peer);
  const int rc = MPI_Isend(buf, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_.comm_, &requests_[slot]);
  if (rc != MPI_SUCCESS) return comm_.MpiFailure("MPI_Isend", rc);
  *req = slot;
  return OkStatus();
}

Status MpiTransport::Irecv(void* buf, size_t bytes, int peer, int tag, Request* req) {
  const Request slot = NewSlot(true, peer);
  const int rc = MPI_Irecv(buf, static_cast<int>(bytes), MPI_BYTE, peer, tag, comm_.comm_, &requests_[slot]);
  if (rc != MPI_SUCCESS) return comm_.MpiFailure("MPI_Irecv", rc);
  *req = slot;
  return OkStatus();
}

Status MpiTransport::Wait(Request* req) {
  if (*req == kNoRequest) return OkStatus();
  comm_.waiting_peer_.store(peers_[*req], std::memory_order_relaxed);
  const Status s = comm_.WaitRequest(&requests_[*req], "MPI_Test (ring/tree message)");
  comm_.waiting_peer_.store(-1, std::memory_order_relaxed);
  if (s.ok()) {
    free_.push_back(*req);
    *req = kNoRequest;
  }
  return s;
}

void MpiTransport::CancelPending() {
  std::vector<MPI_Request*> recvs;
  for (size_t i = 0; i < requests_.size(); ++i) {
    if (is_recv_[i]) recvs.push_back(&requests_[i]);
  }
  CancelReceives(recvs);
  requests_.clear();
  is_recv_.clear();
  peers_.clear();
  free_.clear();
}

// --- Lifetime ------------------------------------------------------------------------------------

Status MpiCommunicator::Init() {
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  if (rc != MPI_SUCCESS)
    return Internal("MPI_Comm_dup failed on " + ThisHostname() + ": " + MpiErrorString(rc));
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  rc = MPI_Comm_dup(comm_, &census_comm_);
  if (rc != MPI_SUCCESS)
    return Internal("MPI_Comm_dup failed on " + ThisHostname() + ": " + MpiErrorString(rc));
  MPI_Comm_set_errhandler(census_comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);

  MPI_Comm node = MPI_COMM_NULL;
  info_.rank = rank_;
  info_.world_size = size_;
  if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
    MPI_Comm_rank(node, &info_.local_rank);
    MPI_Comm_size(node, &info_.local_size);
    MPI_Comm_free(&node);
  }
  StatusOr<std::vector<std::string>> hosts =
      AllGatherStrings(ThisHostname(), size_, [this](const void* send, void* recv, size_t bytes) -> Status {
        const int rc = MPI_Allgather(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes),
                                     MPI_BYTE, comm_);
        if (rc == MPI_SUCCESS) return OkStatus();
        return Internal("MPI_Allgather of host names failed on " + ThisHostname() + ": " +
                        MpiErrorString(rc));
      });
  if (!hosts.ok()) return hosts.status();
  hosts_ = std::move(hosts).value();
  info_.host = hosts_[static_cast<size_t>(rank_)];
  FJORD_RETURN_IF_ERROR(OpenDatagrams());
  thread_ = std::thread(&MpiCommunicator::ThreadMain, this);
  return OkStatus();
}

Status MpiCommunicator::OpenDatagrams() {
  StatusOr<std::unique_ptr<DatagramChannel>> channel = FailedPrecondition("test hook census_datagrams=off");
  if (TestHook("census_datagrams") != "off")
    channel = DatagramChannel::Open(GetEnv("OMPI_MCA_btl_tcp_if_include").value_or(""));
  DatagramEndpoint mine;
  if (channel.ok()) {
    mine = (*channel)->local();
  } else {
    std::fprintf(stderr,
                 "fjord: %s: no census datagrams (%s): the census to and from this rank travels over MPI "
                 "alone, behind TCP's resends after an outage (docs/RELIABILITY.md, \"Timeouts\")\n",
                 Me().c_str(), channel.status().message().c_str());
  }
  std::vector<DatagramEndpoint> all(static_cast<size_t>(size_));
  const int rc = MPI_Allgather(&mine, sizeof(mine), MPI_BYTE, all.data(), sizeof(mine), MPI_BYTE, comm_);
  if (rc != MPI_SUCCESS)
    return Internal("MPI_Allgather of census addresses failed on " + Me() + ": " + MpiErrorString(rc));
  if (channel.ok()) {
    datagrams_ = std::move(channel).value();
    datagrams_->SetPeers(rank_, all);
  }
  return OkStatus();
}

MpiCommunicator::~MpiCommunicator() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();  // runs (or fails) what is still queued first
  }
  transport_.reset();
  if (failed_flag_) {
    runtime_->SkipFinalize();
  } else {
    // Census answers are eager messages and complete at once; do not wait forever regardless.
    const Clock::time_point until = Clock::now() + milliseconds(500);
    for (Reply& r : replies_) {
      int flag = 0;
      while (r.req != MPI_REQUEST_NULL && MPI_Test(&r.req, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS &&
             !flag && Clock::now() < until) {
        std::this_thread::yield();
      }
    }
    if (census_comm_ != MPI_COMM_NULL) MPI_Comm_free(&census_comm_);
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  std::lock_guard<std::mutex> lock(MpiRuntime::mu);
  --MpiRuntime::live_comms;
  runtime_.reset();  // the last one finalizes MPI
}

void MpiCommunicator::Abort(const std::string& message, int exit_code) {
  std::fprintf(stderr, "fjord: rank %d (host %s) aborts the job: %s\n", rank_, HostOf(rank_).c_str(),
               message.c_str());
  std::fflush(nullptr);
  std::this_thread::sleep_for(kAbortGrace);
  std::thread([exit_code, who = Me()] {
    std::this_thread::sleep_for(kAbortWatchdog);
    std::fprintf(stderr,
                 "fjord: %s: MPI_Abort did not end this rank within %.0f s (mpirun unreachable?): "
                 "exiting with %d\n",
                 who.c_str(), duration<double>(kAbortWatchdog).count(), exit_code);
    std::fflush(stderr);
    std::_Exit(exit_code);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // not reached
}

std::string MpiCommunicator::FlightReport(const std::string& why) const {
  const std::string dump = recorder_.Dump(Me());
  if (options_.flight_dir.empty()) return why + "\n" + dump;
  // One file per rank, replaced whole (a later report of the same rank supersedes an earlier one);
  // private to the tenant like every run file (the rank's umask, docs/SOVEREIGNTY.md).
  const std::string path = options_.flight_dir + "/rank-" + std::to_string(rank_) + ".txt";
  std::error_code ec;
  std::filesystem::create_directories(options_.flight_dir, ec);
  const std::string text = why + "\n" + dump;
  const Status s = ec ? Internal(ec.message()) : WriteFileAtomic(path, {{text.data(), text.size()}});
  if (!s.ok()) {
    return why + "\nfjord: " + Me() + ": cannot write " + path + " (" + s.message() + "); the dump:\n" + dump;
  }
  return why + "\nfjord: " + Me() + ": flight recorder written to " + path + "\n";
}

// --- Issue side ----------------------------------------------------------------------------------

Status MpiCommunicator::Validate(const OpDesc& d) const {
  FJORD_RETURN_IF_ERROR(ValidateOp(d, rank_, size_));
  if (d.kind == OpKind::kAllToAll && d.count > static_cast<size_t>(INT_MAX)) {
    return InvalidArgument("AllToAll: " + std::to_string(d.count) +
                           " elements per block is more than MPI's " + std::to_string(INT_MAX));
  }
  return OkStatus();
}

void MpiCommunicator::NewOp(const OpDesc& d, bool start_now, OpInfo* op) {
  op->desc = d;
  op->bytes = d.Bytes(size_);
  switch (d.kind) {
    case OpKind::kAllReduce:
      op->algorithm = options_.algorithm;
      if (op->algorithm == Algorithm::kAuto)
        op->algorithm = op->bytes <= tree_max_bytes_ ? Algorithm::kTree : Algorithm::kRing;
      break;
    case OpKind::kReduceScatter:
    case OpKind::kAllGather:
      op->algorithm = options_.algorithm == Algorithm::kMpi && d.count <= static_cast<size_t>(INT_MAX)
                          ? Algorithm::kMpi
                          : Algorithm::kRing;
      break;
    default:
      op->algorithm = Algorithm::kMpi;
  }
  FlightEntry e;
  if (d.is_collective()) {
    op->seq = e.seq = ++next_seq_;
    issued_seq_.store(op->seq);
  } else {
    op->p2p = e.p2p = ++next_p2p_;
    issued_p2p_.store(op->p2p);
  }
  e.kind = d.kind;
  e.bytes = op->bytes;
  e.dtype = d.dtype;
  e.op = d.op;
  e.reduction = d.is_reduction();
  e.algorithm = AlgorithmName(op->algorithm);
  e.issued = Clock::now();
  if (start_now) {
    e.started = e.issued;
    e.state = OpState::kRunning;
    op->started = true;
  }
  last_issue_us_.store(std::chrono::duration_cast<microseconds>(e.issued - origin_).count());
  op->record = recorder_.Add(e);
}

Status MpiCommunicator::RunSync(const OpDesc& d) {
  FJORD_RETURN_IF_ERROR(Validate(d));
  std::unique_lock<std::mutex> lock(mu_);
  if (failed_) return failure_;
  if (queue_.empty() && !busy_) {
    // Idle: run on this thread.
    busy_ = true;
    OpInfo op;
    NewOp(d, /*start_now=*/true, &op);
    lock.unlock();
    const Status s = Execute(op);
    lock.lock();
    busy_ = false;
    const bool queued = !queue_.empty();  // async calls from other threads meanwhile
    lock.unlock();
    if (queued) cv_.notify_all();
    return s;
  }
  auto op = std::make_shared<PendingOp>();
  NewOp(d, /*start_now=*/false, &op->info);
  queue_.push_back(op);
  lock.unlock();
  cv_.notify_all();
  return op->Wait();
}

StatusOr<std::unique_ptr<CommHandle>> MpiCommunicator::RunAsync(const OpDesc& d) {
  FJORD_RETURN_IF_ERROR(Validate(d));
  std::shared_ptr<PendingOp> op;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failed_) return failure_;
    op = std::make_shared<PendingOp>();
    NewOp(d, /*start_now=*/false, &op->info);
    queue_.push_back(op);
  }
  cv_.notify_all();
  return std::unique_ptr<CommHandle>(std::make_unique<OpHandle>(std::move(op)));
}

void MpiCommunicator::ThreadMain() {
  pthread_setname_np(pthread_self(), "fjord-comm");
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (!queue_.empty() && !busy_) {
      std::shared_ptr<PendingOp> op = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      op->Complete(Execute(op->info));
      lock.lock();
      busy_ = false;
      continue;
    }
    if (stop_ && queue_.empty() && !busy_) return;
    if (!busy_) {
      busy_ = true;
      lock.unlock();
      ServiceCensus();
      lock.lock();
      busy_ = false;
    }
    cv_.wait_for(lock, kIdlePoll, [&] { return stop_ || (!queue_.empty() && !busy_); });
  }
}

// --- Executor --------------------------------------------------------------------------------------

Status MpiCommunicator::Execute(OpInfo& op) {
  if (failed_flag_.load(std::memory_order_acquire)) {
    recorder_.MarkEnded(op.record, OpState::kSkipped);
    std::lock_guard<std::mutex> lock(mu_);
    return Status(failure_.code(), "not run, the communicator failed earlier: " + failure_.message());
  }
  if (!op.started) recorder_.MarkStarted(op.record, AlgorithmName(op.algorithm));
  running_seq_.store(op.seq);
  started_ = Clock::now();
  deadline_ = started_ + options_.timeout;
  next_census_poll_ = started_ + kCensusPollInWait;
  current_ = &op;
  extended_ = false;
  verdict_.clear();
  failure_kind_ = FailureKind::kNone;
  Status s;
  if ((peer_gave_up_seq_ != 0 && op.seq >= peer_gave_up_seq_) || (peer_gave_up_p2p_ && op.p2p != 0)) {
    failure_kind_ = FailureKind::kPeerGaveUp;
    s = Internal("a peer gave up");
  } else {
    s = Dispatch(op);
    if (!s.ok() && failure_kind_ == FailureKind::kNone) failure_kind_ = FailureKind::kOther;
    if (!s.ok() && transport_) transport_->CancelPending();
  }
  current_ = nullptr;
  running_seq_.store(0);
  if (!s.ok()) return Fail(op, s);
  if (op.seq != 0) {
    completed_seq_.store(op.seq);
    last_done_us_.store(std::chrono::duration_cast<microseconds>(Clock::now() - origin_).count());
  }
  recorder_.MarkEnded(op.record, OpState::kDone);
  return OkStatus();
}

Status MpiCommunicator::Dispatch(const OpInfo& op) {
  const OpDesc& d = op.desc;
  const int tag = 1 + static_cast<int>(op.seq % kTagSpan);
  if (!transport_) transport_ = std::make_unique<MpiTransport>(*this);
  MpiTransport& transport = *transport_;
  switch (d.kind) {
    case OpKind::kAllReduce:
      switch (op.algorithm) {
        case Algorithm::kRing:
          return RingAllReduce(transport, d.send, d.recv, d.count, d.dtype, d.op, tag, ring_, scratch_);
        case Algorithm::kTree:
          return TreeAllReduce(transport, d.send, d.recv, d.count, d.dtype, d.op, tag, scratch_);
        default:
          return MpiAllReduce(d);
      }
    case OpKind::kReduceScatter:
      if (op.algorithm == Algorithm::kMpi) return MpiReduceScatter(d);
      return RingReduceScatter(transport, d.send, d.recv, d.count, d.dtype, d.op, tag, ring_, scratch_);
    case OpKind::kAllGather:
      if (op.algorithm == Algorithm::kMpi) return MpiAllGather(d);
      return RingAllGather(transport, d.send, d.recv, d.count, d.dtype, tag, ring_, scratch_);
    case OpKind::kBroadcast:
      return MpiBroadcast(d);
    case OpKind::kAllToAll:
      return MpiAllToAll(d);
    case OpKind::kSendRecv:
      return MpiSendRecv(d);
    case OpKind::kBarrier:
      return MpiBarrier();
  }
  return Internal("unknown operation");
}

Status MpiCommunicator::MpiFailure(const char* call, int rc) {
  failure_kind_ = FailureKind::kMpiError;
  return Internal(std::string(call) + " failed: " + MpiErrorString(rc));
}

Status MpiCommunicator::WaitRequest(MPI_Request* req, const char* call, MPI_Status* status) {
  const Clock::time_point begin = Clock::now();
  for (;;) {
    int flag = 0;
    MPI_Status st;
    const int rc = MPI_Test(req, &flag, &st);
    if (rc != MPI_SUCCESS) return MpiFailure(call, rc);
    if (flag) {
      if (status != nullptr) *status = st;
      return OkStatus();
    }
    const Clock::time_point now = Clock::now();
    if (now >= next_census_poll_) {
      ServiceCensus();
      next_census_poll_ = now + kCensusPollInWait;
      const OpInfo& op = *current_;
      if ((peer_gave_up_seq_ != 0 && op.seq >= peer_gave_up_seq_) || (peer_gave_up_p2p_ && op.p2p != 0)) {
        failure_kind_ = FailureKind::kPeerGaveUp;
        return Internal("a peer gave up");
      }
    }
    if (now >= deadline_) {
      // Late is not lost: when every rank answers the census and has issued this operation, the
      // network was down for a while and TCP has not resent yet (its retransmission backoff doubles
      // up to 2x the outage). Wait once more, as long again; a rank that does not answer, or has
      // not arrived, ends the operation now (docs/RELIABILITY.md, "Timeouts").
      bool all_arrived = false;
      waited_ = now - started_;
      verdict_ = RunCensus(*current_, &all_arrived);
      if (all_arrived && !extended_ && current_->seq != 0) {
        extended_ = true;
        deadline_ = Clock::now() + options_.timeout;
        std::fprintf(stderr,
                     "fjord: %s is late on %s after %s, but every rank arrived (the network may be "
                     "recovering): waiting %s more\n",
                     Describe(*current_).c_str(), Me().c_str(), Seconds(now - started_).c_str(),
                     Seconds(options_.timeout).c_str());
        std::fflush(stderr);
        continue;
      }
      failure_kind_ = FailureKind::kTimeout;
      return Internal("timed out");
    }
    Backoff(now - begin);
  }
}

// --- MPI-library paths -----------------------------------------------------------------------------

Status MpiCommunicator::MpiAllReduce(const OpDesc& d) {
  const size_t es = DataTypeSize(d.dtype);
  const bool in_place = d.send == d.recv;
  for (size_t begin = 0; begin < d.count; begin += kMaxMpiElems) {
    const int len = static_cast<int>(std::min(kMaxMpiElems, d.count - begin));
    const void* in = in_place ? MPI_IN_PLACE : static_cast<const std::byte*>(d.send) + begin * es;
    MPI_Request req = MPI_REQUEST_NULL;
    const int rc = MPI_Iallreduce(in, static_cast<std::byte*>(d.recv) + begin * es, len, MpiType(d.dtype),
                                  runtime_->Op(d.dtype, d.op), comm_, &req);
    if (rc != MPI_SUCCESS) return MpiFailure("MPI_Iallreduce", rc);
    FJORD_RETURN_IF_ERROR(WaitRequest(&req, "MPI_Iallreduce"));
  }
  if (d.op == ReduceOp::kAvg) FinishAverage(d.recv, d.count, d.dtype, size_);
  return OkStatus();
}

Status MpiCommunicator::MpiReduceScatter(const OpDesc& d) {
  const size_t bytes = d.count * DataTypeSize(d.dtype);
  if (d.count == 0) return OkStatus();
  // MPI's in-place layout differs from ours (result at the start of the buffer): go via scratch.
  const bool overlaps = d.recv == static_cast<const std::byte*>(d.send) + static_cast<size_t>(rank_) * bytes;
  void* out = d.recv;
  if (overlaps) {
    out = scratch_.Get(bytes);
    if (out == nullptr) return Internal("ReduceScatter: cannot allocate scratch memory");
  }
  MPI_Request req = MPI_REQUEST_NULL;
  const int rc = MPI_Ireduce_scatter_block(d.send, out, static_cast<int>(d.count), MpiType(d.dtype),
                                           runtime_->Op(d.dtype, d.op), comm_, &req);
  if (rc != MPI_SUCCESS) return MpiFailure("MPI_Ireduce_scatter_block", rc);
  FJORD_RETURN_IF_ERROR(WaitRequest(&req, "MPI_Ireduce_scatter_block"));
  if (overlaps) std::memcpy(d.recv, out, bytes);
  if (d.op == ReduceOp::kAvg) FinishAverage(d.recv, d.count, d.dtype, size_);
  return OkStatus();
}

Status MpiCommunicator::MpiAllGather(const OpDesc& d) {
  const size_t bytes = d.count * DataTypeSize(d.dtype);
  if (d.count == 0) return OkStatus();
  const bool in_place = d.send == static_cast<const std::byte*>(d.recv) + static_cast<size_t>(rank_) * bytes;
  MPI_Request req = MPI_REQUEST_NULL;
  const int count = static_cast<int>(d.count);
  const int rc = MPI_Iallgather(in_place ? MPI_IN_PLACE : d.send, count, MpiType(d.dtype), d.recv, count,
                                MpiType(d.dtype), comm_, &req);
  if (rc != MPI_SUCCESS) return MpiFailure("MPI_Iallgather", rc);
  return WaitRequest(&req, "MPI_Iallgather");
}

Status MpiCommunicator::MpiBroadcast(const OpDesc& d) {
  const size_t es = DataTypeSize(d.dtype);
  for (size_t begin = 0; begin < d.count; begin += kMaxMpiElems) {
    const int len = static_cast<int>(std::min(kMaxMpiElems, d.count - begin));
    MPI_Request req = MPI_REQUEST_NULL;
    const int rc =
        MPI_Ibcast(static_cast<std::byte*>(d.recv) + begin * es, len, MpiType(d.dtype), d.root, comm_, &req);
    if (rc != MPI_SUCCESS) return MpiFailure("MPI_Ibcast", rc);
    FJORD_RETURN_IF_ERROR(WaitRequest(&req, "MPI_Ibcast"));
  }
  return OkStatus();
}

Status MpiCommunicator::MpiAllToAll(const OpDesc& d) {
  if (d.count == 0) return OkStatus();
  MPI_Request req = MPI_REQUEST_NULL;
  const int count = static_cast<int>(d.count);
  const int rc = MPI_Ialltoall(d.send, count, MpiType(d.dtype), d.recv, count, MpiType(d.dtype), comm_, &req);
  if (rc != MPI_SUCCESS) return MpiFailure("MPI_Ialltoall", rc);
  return WaitRequest(&req, "MPI_Ialltoall");
}

Status MpiCommunicator::MpiSendRecv(const OpDesc& d) {
  const size_t es = DataTypeSize(d.dtype);
  // Messages of at most kMaxMpiElems, the last one short; an empty message when the count is 0,
  // so that the receiver can tell 0 from a different count (a longer message than expected is an
  // MPI truncation error).
  auto pieces = [](size_t count) { return std::max<size_t>(1, (count + kMaxMpiElems - 1) / kMaxMpiElems); };
  const size_t recv_pieces = pieces(d.recv_count), send_pieces = pieces(d.count);
  std::vector<MPI_Request> recvs(recv_pieces, MPI_REQUEST_NULL), sends(send_pieces, MPI_REQUEST_NULL);
  struct Cancel {
    std::vector<MPI_Request>& recvs;
    ~Cancel() {
      std::vector<MPI_Request*> pending;
      for (MPI_Request& r : recvs) pending.push_back(&r);
      CancelReceives(pending);
    }
  } cancel_on_failure{recvs};
  for (size_t i = 0; i < recv_pieces; ++i) {
    const size_t begin = i * kMaxMpiElems;
    const int len = static_cast<int>(std::min(kMaxMpiElems, d.recv_count - begin));
    const int rc = MPI_Irecv(static_cast<std::byte*>(d.recv) + begin * es, len, MpiType(d.dtype), d.source,
                             kTagSendRecv, comm_, &recvs[i]);
    if (rc != MPI_SUCCESS) return MpiFailure("MPI_Irecv", rc);
  }
  for (size_t i = 0; i < send_pieces; ++i) {
    const size_t begin = i * kMaxMpiElems;
    const int len = static_cast<int>(std::min(kMaxMpiElems, d.count - begin));
    const int rc = MPI_Isend(static_cast<const std::byte*>(d.send) + begin * es, len, MpiType(d.dtype),
                             d.root, kTagSendRecv, comm_, &sends[i]);
    if (rc != MPI_SUCCESS) return MpiFailure("MPI_Isend", rc);
  }
  for (size_t i = 0; i < recv_pieces; ++i) {
    MPI_Status st;
    FJORD_RETURN_IF_ERROR(WaitRequest(&recvs[i], "MPI_Irecv (SendRecv)", &st));
    int got = 0;
    MPI_Get_count(&st, MpiType(d.dtype), &got);
    const size_t expected = std::min(kMaxMpiElems, d.recv_count - i * kMaxMpiElems);
    if (static_cast<size_t>(got) != expected) {
      failure_kind_ = FailureKind::kOther;
      return Internal("received " + std::to_string(got) + " elements from rank " + std::to_string(d.source) +
                      " where " + std::to_string(expected) + " were expected (recv_count " +
                      std::to_string(d.recv_count) + "); the sender's send_count differs");
    }
  }
  for (MPI_Request& r : sends) FJORD_RETURN_IF_ERROR(WaitRequest(&r, "MPI_Isend (SendRecv)"));
  return OkStatus();
}

Status MpiCommunicator::MpiBarrier() {
  MPI_Request req = MPI_REQUEST_NULL;
  const int rc = MPI_Ibarrier(comm_, &req);
  if (rc != MPI_SUCCESS) return MpiFailure("MPI_Ibarrier", rc);
  return WaitRequest(&req, "MPI_Ibarrier");
}

// --- Census and failure report ---------------------------------------------------------------------

CensusMsg MpiCommunicator::MyCensus(uint64_t seq) const {
  CensusMsg m;
  m.from = rank_;
  m.seq = static_cast<int64_t>(seq);
  m.issued = static_cast<int64_t>(issued_seq_.load());
  m.completed = static_cast<int64_t>(completed_seq_.load());
  m.running = static_cast<int64_t>(running_seq_.load());
  m.p2p_issued = static_cast<int64_t>(issued_p2p_.load());
  m.idle_us =
      std::chrono::duration_cast<microseconds>(Clock::now() - origin_).count() - last_issue_us_.load();
  m.done_us = std::chrono::duration_cast<microseconds>(Clock::now() - origin_).count() - last_done_us_.load();
  if (seq != 0) {
    if (std::optional<FlightEntry> e = recorder_.FindSeq(seq)) {
      m.kind_at_seq = static_cast<int64_t>(e->kind);
      m.bytes_at_seq = static_cast<int64_t>(e->bytes);
    }
  }
  return m;
}

void MpiCommunicator::ServiceCensus() {
  for (auto it = replies_.begin(); it != replies_.end();) {
    int flag = 0;
    MPI_Test(&it->req, &flag, MPI_STATUS_IGNORE);
    it = flag ? replies_.erase(it) : std::next(it);
  }
  // A peer that failed: its operation (and every later one) will not complete here either.
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kTagGaveUp, census_comm_, &flag, &st) != MPI_SUCCESS || !flag) break;
    CensusMsg notice;
    if (MPI_Recv(&notice, sizeof(notice), MPI_BYTE, st.MPI_SOURCE, kTagGaveUp, census_comm_,
                 MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      break;
    }
    if (peer_gave_up_rank_ < 0) {
      peer_gave_up_rank_ = st.MPI_SOURCE;
      if (notice.seq != 0) {
        peer_gave_up_seq_ = static_cast<uint64_t>(notice.seq);
      } else {
        peer_gave_up_p2p_ = true;
      }
    }
  }
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kTagCensusRequest, census_comm_, &flag, &st) != MPI_SUCCESS || !flag)
      break;
    CensusMsg request;
    if (MPI_Recv(&request, sizeof(request), MPI_BYTE, st.MPI_SOURCE, kTagCensusRequest, census_comm_,
                 MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      break;
    }
    Reply& reply = replies_.emplace_back();
    reply.msg = AnswerCensus(request, st.MPI_SOURCE);
    MPI_Isend(&reply.msg, sizeof(reply.msg), MPI_BYTE, st.MPI_SOURCE, kTagCensusReply, census_comm_,
              &reply.req);
  }
  if (datagrams_ == nullptr) return;
  DatagramChannel::Received d;
  while (datagrams_->Receive(&d)) {
    CensusMsg m;
    if (d.bytes != sizeof(m)) continue;
    std::memcpy(&m, d.payload.data(), sizeof(m));
    if (d.kind == kDatagramCensusRequest) {
      const CensusMsg answer = AnswerCensus(m, d.from);
      datagrams_->Reply(d, kDatagramCensusReply, d.round, &answer, sizeof(answer));
    } else if (d.kind == kDatagramCensusReply && d.round == census_round_ &&
               static_cast<size_t>(d.from) < datagram_answered_.size()) {
      m.from = d.from;
      datagram_in_[static_cast<size_t>(d.from)] = m;
      datagram_answered_[static_cast<size_t>(d.from)] = true;
    }
  }
}

CensusMsg MpiCommunicator::AnswerCensus(const CensusMsg& request, int from) {
  const CensusMsg answer = MyCensus(static_cast<uint64_t>(request.seq));
  // A rank that has not called the collective yet says so, so that its log explains itself.
  const bool just_done =
      microseconds(answer.done_us) < std::min<Clock::duration>(milliseconds(1000), options_.timeout / 2);
  if (request.seq != 0 && answer.issued < request.seq && answer.running == 0 && !just_done &&
      !explained_absence_ && !failed_flag_) {
    explained_absence_ = true;
    const std::string text = FlightReport(
        "fjord: " + Me() + " has not issued collective #" + std::to_string(request.seq) + " that rank " +
        std::to_string(from) + " (host " + HostOf(from) + ") timed out in; its last collective is #" +
        std::to_string(answer.issued) + ", issued " + Seconds(microseconds(answer.idle_us)) +
        " ago: this rank's caller is busy elsewhere or stuck");
    std::fputs(text.c_str(), stderr);
    std::fflush(stderr);
  }
  return answer;
}

// The census asks every rank at once over both paths: a datagram to each of its addresses, resent
// every kDatagramResend until it answers, and one MPI message. The first answer counts.
std::string MpiCommunicator::RunCensus(const OpInfo& op, bool* all_arrived) {
  const Clock::duration window = CensusWindow(options_.timeout);
  const size_t n = static_cast<size_t>(size_);
  std::vector<bool> answered(n, false);
  if (!census_started_) {
    // Buffers are members: a late answer may still arrive after we stop waiting.
    census_started_ = true;
    census_out_ = MyCensus(op.seq);
    mpi_in_.assign(n, CensusMsg{});
    census_reqs_.assign(n, MPI_REQUEST_NULL);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      MPI_Irecv(&mpi_in_[p], sizeof(CensusMsg), MPI_BYTE, p, kTagCensusReply, census_comm_, &census_reqs_[p]);
      MPI_Request send = MPI_REQUEST_NULL;
      MPI_Isend(&census_out_, sizeof(CensusMsg), MPI_BYTE, p, kTagCensusRequest, census_comm_, &send);
      MPI_Request_free(&send);  // eager and tiny; census_out_ outlives it
    }
  }
  const CensusMsg request = MyCensus(op.seq);
  ++census_round_;
  datagram_answered_.assign(n, false);
  datagram_in_.assign(n, CensusMsg{});
  census_in_.assign(n, CensusMsg{});
  census_in_[static_cast<size_t>(rank_)] = request;
  answered[static_cast<size_t>(rank_)] = true;
  const Clock::time_point begin = Clock::now(), until = begin + window;
  Clock::time_point resend = begin;
  for (;;) {
    if (datagrams_ != nullptr && Clock::now() >= resend) {
      for (int p = 0; p < size_; ++p) {
        if (!answered[p])
          datagrams_->Send(p, kDatagramCensusRequest, census_round_, &request, sizeof(request));
      }
      resend = Clock::now() + kDatagramResend;
    }
    bool all = true;
    for (int p = 0; p < size_; ++p) {
      if (answered[p]) continue;
      int flag = 0;
      if (datagram_answered_[p]) {
        census_in_[p] = datagram_in_[p];
        flag = 1;
      } else if (census_reqs_[p] == MPI_REQUEST_NULL ||
                 (MPI_Test(&census_reqs_[p], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag)) {
        census_in_[p] = mpi_in_[p];  // answered now, or to an earlier census that this one continues
        flag = 1;
      }
      answered[p] = flag != 0;
      all = all && answered[p];
    }
    if (all) break;
    ServiceCensus();
    const Clock::time_point now = Clock::now();
    if (now >= until) break;
    Backoff(now - begin);
  }
  // MPI's answers may still be on their way where datagrams were faster: the next census goes on
  // waiting for those instead of posting new receives into the same buffers.
  bool mpi_done = true;
  for (int p = 0; p < size_; ++p) {
    int flag = 0;
    if (census_reqs_[p] != MPI_REQUEST_NULL) MPI_Test(&census_reqs_[p], &flag, MPI_STATUS_IGNORE);
    mpi_done = mpi_done && census_reqs_[p] == MPI_REQUEST_NULL;
  }
  if (mpi_done) census_started_ = false;
  std::string verdict = Verdict(op, answered);
  if (std::find(answered.begin(), answered.end(), false) == answered.end() && all_arrived != nullptr)
    *all_arrived = verdict.starts_with(kAllArrived);
  return verdict;
}

// "1, 2, 5" (at most 16 named, then "and N more").
std::string RankList(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < 16; ++i) out += (i ? ", " : "") + items[i];
  if (items.size() > 16) out += ", and " + std::to_string(items.size() - 16) + " more";
  return out;
}

std::string MpiCommunicator::Verdict(const OpInfo& op, const std::vector<bool>& answered) const {
  const Clock::duration window = CensusWindow(options_.timeout);
  std::vector<std::string> absent, mismatched, silent, arrived, behind;
  for (int p = 0; p < size_; ++p) {
    const CensusMsg& m = census_in_[static_cast<size_t>(p)];
    const std::string host = HostOf(p);
    if (!answered[p]) {
      silent.push_back(std::to_string(p) + " (host " + host + ")");
    } else if (op.seq == 0) {
      // SendRecv: only the two peers matter; report their state.
      if (p != static_cast<int>(op.desc.root) && p != op.desc.source) continue;
      if (p == rank_) continue;
      absent.push_back(std::to_string(p) + " (host " + host + ": " + std::to_string(m.p2p_issued) +
                       " SendRecv calls issued, last collective #" + std::to_string(m.issued) +
                       ", last call " + Seconds(microseconds(m.idle_us)) + " ago)");
    } else if (m.issued < static_cast<int64_t>(op.seq) && m.running != 0 && m.running == m.issued) {
      // Still in the collective before: waiting on the network too (its data is late), not elsewhere.
      behind.push_back(std::to_string(p) + " (host " + host + ": in #" + std::to_string(m.running) + ")");
    } else if (m.issued < static_cast<int64_t>(op.seq) && m.completed == m.issued &&
               microseconds(m.done_us) <
                   std::min<Clock::duration>(milliseconds(1000), options_.timeout / 2)) {
      // Finished the collective before just now: its late data came in the same TCP stream as this
      // census, and it is about to arrive.
      behind.push_back(std::to_string(p) + " (host " + host + ": finished #" + std::to_string(m.completed) +
                       " " + Seconds(microseconds(m.done_us)) + " ago)");
    } else if (m.issued < static_cast<int64_t>(op.seq)) {
      absent.push_back(std::to_string(p) + " (host " + host + ": last issued #" + std::to_string(m.issued) +
                       ", " + Seconds(microseconds(m.idle_us)) + " ago)");
    } else if (m.kind_at_seq >= 0 && (m.kind_at_seq != static_cast<int64_t>(op.desc.kind) ||
                                      m.bytes_at_seq != static_cast<int64_t>(op.bytes))) {
      mismatched.push_back(std::to_string(p) + " (host " + host + ": #" + std::to_string(op.seq) + " is " +
                           OpKindName(static_cast<OpKind>(m.kind_at_seq)) + " of " +
                           std::to_string(m.bytes_at_seq) + " bytes there)");
    } else {
      arrived.push_back(std::to_string(p));
    }
  }
  std::string out;
  if (op.seq == 0) {
    out = absent.empty() ? "peers answered" : "peer state: " + RankList(absent);
  } else {
    if (!absent.empty()) out += "ranks not arrived: " + RankList(absent);
    if (!mismatched.empty()) {
      out += std::string(out.empty() ? "" : "; ") + "ranks that issued a different collective as #" +
             std::to_string(op.seq) + ": " + RankList(mismatched) +
             " (the ranks disagree on the order of collectives)";
    }
  }
  if (!silent.empty()) {
    out += std::string(out.empty() ? "" : "; ") + "ranks not answering within " + Seconds(window) + ": " +
           RankList(silent) + " (stopped, dead or stuck without their communication thread)";
  }
  if (op.seq != 0) {
    if (absent.empty() && mismatched.empty() && silent.empty()) {
      out += std::string(kAllArrived) +
             (behind.empty() ? "" : " or are still in an earlier collective (" + RankList(behind) + ")") +
             ", but MPI made no progress (check the network and the MPI transport settings)";
    } else if (!behind.empty()) {
      out += "; ranks still in an earlier collective: " + RankList(behind);
    }
    out += "; arrived: " + (arrived.empty() ? std::string("none") : RankList(arrived));
  }
  return out;
}

std::string MpiCommunicator::Describe(const OpInfo& op) const {
  const OpDesc& d = op.desc;
  if (d.kind == OpKind::kSendRecv) {
    return "SendRecv p2p." + std::to_string(op.p2p) + " (" + std::to_string(op.bytes) + " bytes to rank " +
           std::to_string(d.root) + ", " + std::to_string(d.recv_count * DataTypeSize(d.dtype)) +
           " bytes from rank " + std::to_string(d.source) + ")";
  }
  std::string what = std::to_string(op.bytes) + " bytes";
  if (d.kind != OpKind::kBarrier) what += std::string(", ") + DataTypeName(d.dtype);
  if (d.is_reduction()) what += std::string(" ") + ReduceOpName(d.op);
  if (d.kind == OpKind::kBroadcast) what += ", root " + std::to_string(d.root);
  what += std::string(", ") + AlgorithmName(op.algorithm);
  return std::string("collective ") + OpKindName(d.kind) + " #" + std::to_string(op.seq) + " (" + what + ")";
}

Status MpiCommunicator::Fail(OpInfo& op, const Status& cause) {
  const std::string elapsed =
      Seconds(failure_kind_ == FailureKind::kTimeout ? waited_ : Clock::now() - started_);
  std::string message;
  OpState state = OpState::kFailed;
  switch (failure_kind_) {
    case FailureKind::kTimeout:
      state = OpState::kTimedOut;
      message = "fjord: " + Describe(op) + " timed out after " + elapsed + " on " + Me() + ": " +
                (verdict_.empty() ? RunCensus(op) : verdict_);
      break;
    case FailureKind::kPeerGaveUp:
      message = "fjord: " + Describe(op) + " failed on " + Me() + " after " + elapsed + ": rank " +
                std::to_string(peer_gave_up_rank_) + " (host " + HostOf(peer_gave_up_rank_) +
                ") gave up on it; " + RunCensus(op);
      break;
    default:
      message = "fjord: " + Describe(op) + " failed on " + Me() + ": " + cause.message();
      break;
  }
  recorder_.MarkEnded(op.record, state);
  if (failure_kind_ == FailureKind::kTimeout || failure_kind_ == FailureKind::kPeerGaveUp) {
    // Tell every peer: those still waiting in this operation end now instead of at their deadline.
    gave_up_out_ = MyCensus(op.seq);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      MPI_Request send = MPI_REQUEST_NULL;
      MPI_Isend(&gave_up_out_, sizeof(CensusMsg), MPI_BYTE, p, kTagGaveUp, census_comm_, &send);
      MPI_Request_free(&send);  // eager and tiny; gave_up_out_ outlives it
    }
  }
  const std::string report = FlightReport(message);
  std::fputs(report.c_str(), stderr);
  std::fflush(stderr);
  failed_flag_ = true;
  runtime_->SkipFinalize();
  std::lock_guard<std::mutex> lock(mu_);
  failed_ = true;
  failure_ = Status(cause.code(), message);
  return failure_;
}

}  // namespace

StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(const CommOptions& options) {
  std::unique_ptr<MpiCommunicator> comm;
  {
    std::lock_guard<std::mutex> lock(MpiRuntime::mu);
    FJORD_ASSIGN_OR_RETURN(std::shared_ptr<MpiRuntime> runtime, MpiRuntime::Acquire());
    if (MpiRuntime::live_comms > 0 && !runtime->multiple()) {
      return FailedPrecondition(
          "MPI provides MPI_THREAD_SERIALIZED, not MPI_THREAD_MULTIPLE: only one fjord communicator can "
          "exist at a "
          "time; destroy the other first");
    }
    ++MpiRuntime::live_comms;
    comm = std::make_unique<MpiCommunicator>(options, std::move(runtime));
  }
  FJORD_RETURN_IF_ERROR(comm->Init().WithContext("creating the MPI communicator"));
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace fjord
