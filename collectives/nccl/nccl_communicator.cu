// The NCCL backend (design in nccl_communicator.h) and fjord bench's device memory. A .cu file
// for one kernel: the division that finishes kAvg on the device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "collectives/bench/bench.h"
#include "collectives/flight_recorder.h"
#include "collectives/nccl/nccl_communicator.h"
#include "collectives/op.h"

// Feature gates: NCCL's bf16 type (2.10) and point-to-point calls (2.7).
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
#define FJORD_NCCL_HAS_BF16 1
#else
#define FJORD_NCCL_HAS_BF16 0
#endif
#if NCCL_VERSION_CODE < NCCL_VERSION(2, 7, 0)
#error "fjord's NCCL backend needs NCCL 2.7 or newer (ncclSend / ncclRecv)"
#endif

namespace fjord {
namespace {

using Clock = std::chrono::steady_clock;

std::string CudaErrorText(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// Returns Internal naming the statement, where it ran and what CUDA / NCCL said. `where_` is a
// std::string in scope ("rank R on HOST, GPU D").
#define FJORD_CUDA_TRY(stmt)                                                                                \
  do {                                                                                                      \
    const cudaError_t fjord_cuda_err_ = (stmt);                                                             \
    if (fjord_cuda_err_ != cudaSuccess)                                                                     \
      return Internal(std::string(#stmt) + " failed on " + where_ + ": " + CudaErrorText(fjord_cuda_err_)); \
  } while (0)
#define FJORD_NCCL_TRY(stmt)                                               \
  do {                                                                     \
    const ncclResult_t fjord_nccl_res_ = (stmt);                           \
    if (fjord_nccl_res_ != ncclSuccess)                                    \
      return Internal(std::string(#stmt) + " failed on " + where_ + ": " + \
                      ncclGetErrorString(fjord_nccl_res_));                \
  } while (0)

// --- Kernels ------------------------------------------------------------------------------------

__device__ inline float DivideValue(float x, int n) { return x / static_cast<float>(n); }
__device__ inline int32_t DivideValue(int32_t x, int n) { return x / n; }
__device__ inline __half DivideValue(__half x, int n) {
  return __float2half_rn(__half2float(x) / static_cast<float>(n));
}
__device__ inline __nv_bfloat16 DivideValue(__nv_bfloat16 x, int n) {
  return __float2bfloat16_rn(__bfloat162float(x) / static_cast<float>(n));
}

template <typename T>
__global__ void DivideKernel(T* buf, size_t count, int n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    buf[i] = DivideValue(buf[i], n);
  }
}

template <typename T>
cudaError_t LaunchDivide(void* buf, size_t count, int n, cudaStream_t stream) {
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<size_t>((count + threads - 1) / threads, 4096));
  DivideKernel<T><<<blocks, threads, 0, stream>>>(static_cast<T*>(buf), count, n);
  return cudaGetLastError();
}

// --- Types ---------------------------------------------------------------------------------------

StatusOr<ncclDataType_t> NcclType(DataType dtype) {
  switch (dtype) {
    case DataType::kF32:
      return ncclFloat32;
    case DataType::kF16:
      return ncclFloat16;
    case DataType::kBF16:
#if FJORD_NCCL_HAS_BF16
      return ncclBfloat16;
#else
      return InvalidArgument("bfloat16 needs NCCL 2.10 or newer; this fjord was built against an older NCCL");
#endif
    case DataType::kI32:
      return ncclInt32;
    case DataType::kU8:
      return ncclUint8;
  }
  return InvalidArgument("unknown data type");
}

ncclRedOp_t NcclOp(ReduceOp op) { return op == ReduceOp::kMax ? ncclMax : ncclSum; }

// What a handle needs, also after its communicator is gone: the NCCL communicator (to poll its
// asynchronous errors and abort it on timeout), whether it failed, and the flight recorder.
struct CommState {
  explicit CommState(size_t entries) : recorder(entries) {}
  std::mutex mu;
  ncclComm_t comm = nullptr;  // guarded by mu; null once destroyed or aborted
  bool failed = false;        // guarded by mu
  Status failure;             // guarded by mu
  FlightRecorder recorder;    // thread-safe itself
};

class NcclCommunicator;

class NcclHandle final : public CommHandle {
 public:
  NcclHandle(std::shared_ptr<CommState> state, cudaEvent_t event, std::string what, std::string where,
             Clock::time_point issued, std::chrono::milliseconds timeout, uint64_t record)
      : state_(std::move(state)),
        event_(event),
        what_(std::move(what)),
        where_(std::move(where)),
        issued_(issued),
        timeout_(timeout),
        record_(record) {}
  NcclHandle(const NcclHandle&) = delete;
  NcclHandle& operator=(const NcclHandle&) = delete;
  ~NcclHandle() override {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }

  Status Wait() override {
    if (done_) return result_;
    const Clock::time_point deadline = std::max(issued_, Clock::now()) + timeout_;
    for (int spins = 0;; ++spins) {
      StatusOr<bool> t = Test();
      if (!t.ok() || *t) return result_;
      if (Clock::now() >= deadline) return TimedOut();
      if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  StatusOr<bool> Test() override {
    if (!done_) Poll();
    if (!done_) return false;
    if (!result_.ok()) return result_;
    return true;
  }

 private:
  void Poll() {
    const cudaError_t e = cudaEventQuery(event_);
    if (e == cudaSuccess) return Finish(OkStatus(), OpState::kDone);
    if (e != cudaErrorNotReady) {
      return Finish(Internal(what_ + " failed on " + where_ + ": " + CudaErrorText(e)), OpState::kFailed);
    }
    // "Not ready" is not a failure, but the runtime may keep it as this thread's last error, where
    // the next cudaGetLastError (the launch checks of the ops, LaunchDivide) would report it as one.
    // Clear it, and only it: an error of some other call stays for its own check.
    if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->failed) return Finish(state_->failure, OpState::kFailed);
    if (state_->comm != nullptr) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(state_->comm, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        state_->failed = true;
        // (void): nvcc warns about the discarded result of assigning a [[nodiscard]] type.
        (void)(state_->failure =
                   Internal(what_ + " failed on " + where_ + ": NCCL reports " + ncclGetErrorString(async) +
                            " (a peer failed or the network broke)"));
        ncclCommAbort(state_->comm);
        state_->comm = nullptr;
        return Finish(state_->failure, OpState::kFailed);
      }
    }
  }

  void Finish(const Status& s, OpState state) {
    done_ = true;
    result_ = s;
    state_->recorder.MarkEnded(record_, state);
  }

  Status TimedOut() {
    std::lock_guard<std::mutex> lock(state_->mu);
    const std::string message = "fjord: " + what_ + " timed out after " +
                                std::to_string(timeout_.count() / 1000.0) + " s on " + where_ +
                                ": NCCL cannot tell which ranks did not arrive; check that every rank issued "
                                "it (the flight recorders of "
                                "all ranks, printed with their errors, show each rank's last collectives)";
    if (!state_->failed) {
      state_->failed = true;
      (void)(state_->failure = Internal(message));
      if (state_->comm != nullptr) {
        ncclCommAbort(state_->comm);
        state_->comm = nullptr;
      }
    }
    done_ = true;
    result_ = state_->failure;
    state_->recorder.MarkEnded(record_, OpState::kTimedOut);
    return result_;
  }

  std::shared_ptr<CommState> state_;
  cudaEvent_t event_ = nullptr;
  std::string what_, where_;
  Clock::time_point issued_;
  std::chrono::milliseconds timeout_;
  uint64_t record_;
  bool done_ = false;
  Status result_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const CommOptions& options, Communicator& bootstrap)
      : options_(options),
        bootstrap_(bootstrap),
        state_(std::make_shared<CommState>(options.flight_recorder_entries)) {}
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  ~NcclCommunicator() override {
    if (stream_ != nullptr) {
      cudaSetDevice(device_);
      cudaStreamSynchronize(stream_);
    }
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->comm != nullptr) {
        if (state_->failed) {
          ncclCommAbort(state_->comm);
        } else {
          ncclCommDestroy(state_->comm);
        }
        state_->comm = nullptr;
      }
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  Status Init();

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  RankInfo rank_info() const override { return info_; }
  const char* backend() const override { return "nccl"; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  const std::string& where() const { return where_; }

  Status AllReduce(const void* send, void* recv, size_t count, DataType dtype, ReduceOp op) override {
    return Sync(AllReduceAsync(send, recv, count, dtype, op));
  }
  StatusOr<std::unique_ptr<CommHandle>> AllReduceAsync(const void* send, void* recv, size_t count,
                                                       DataType dtype, ReduceOp op) override {
    OpDesc d;
    d.kind = OpKind::kAllReduce, d.send = send, d.recv = recv, d.count = count, d.dtype = dtype, d.op = op;
    return Issue(d);
  }
  Status ReduceScatter(const void* send, void* recv, size_t recv_count, DataType dtype,
                       ReduceOp op) override {
    return Sync(ReduceScatterAsync(send, recv, recv_count, dtype, op));
  }
  StatusOr<std::unique_ptr<CommHandle>> ReduceScatterAsync(const void* send, void* recv, size_t recv_count,
                                                           DataType dtype, ReduceOp op) override {
    OpDesc d;
    d.kind = OpKind::kReduceScatter, d.send = send, d.recv = recv, d.count = recv_count, d.dtype = dtype,
    d.op = op;
    return Issue(d);
  }
  Status AllGather(const void* send, void* recv, size_t send_count, DataType dtype) override {
    return Sync(AllGatherAsync(send, recv, send_count, dtype));
  }
  StatusOr<std::unique_ptr<CommHandle>> AllGatherAsync(const void* send, void* recv, size_t send_count,
                                                       DataType dtype) override {
    OpDesc d;
    d.kind = OpKind::kAllGather, d.send = send, d.recv = recv, d.count = send_count, d.dtype = dtype;
    return Issue(d);
  }
  Status Broadcast(void* buffer, size_t count, DataType dtype, int root) override {
    return Sync(BroadcastAsync(buffer, count, dtype, root));
  }
  StatusOr<std::unique_ptr<CommHandle>> BroadcastAsync(void* buffer, size_t count, DataType dtype,
                                                       int root) override {
    OpDesc d;
    d.kind = OpKind::kBroadcast, d.send = buffer, d.recv = buffer, d.count = count, d.dtype = dtype,
    d.root = root;
    return Issue(d);
  }
  Status AllToAll(const void* send, void* recv, size_t count, DataType dtype) override {
    return Sync(AllToAllAsync(send, recv, count, dtype));
  }
  StatusOr<std::unique_ptr<CommHandle>> AllToAllAsync(const void* send, void* recv, size_t count,
                                                      DataType dtype) override {
    OpDesc d;
    d.kind = OpKind::kAllToAll, d.send = send, d.recv = recv, d.count = count, d.dtype = dtype;
    return Issue(d);
  }
  Status SendRecv(const void* send, size_t send_count, int dest, void* recv, size_t recv_count, int source,
                  DataType dtype) override {
    OpDesc d;
    d.kind = OpKind::kSendRecv, d.send = send, d.recv = recv, d.count = send_count, d.recv_count = recv_count;
    d.dtype = dtype, d.root = dest, d.source = source;
    return Sync(Issue(d));
  }
  // Waits for this rank's queued operations, then meets the other ranks on the bootstrap.
  Status Barrier() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      FJORD_RETURN_IF_ERROR(Failed());
      FJORD_CUDA_TRY(cudaSetDevice(device_));
      FJORD_CUDA_TRY(cudaStreamSynchronize(stream_));
    }
    return bootstrap_.Barrier();
  }
  StatusOr<std::unique_ptr<CommHandle>> BarrierAsync() override { return CompletedHandle(Barrier()); }

  std::string FlightRecord() const override { return state_->recorder.Dump(where_); }
  std::string InFlight() const override {
    // NCCL does not say which peer a collective waits for; the operation is what we can name.
    const std::optional<FlightEntry> e = state_->recorder.OldestUnfinished();
    return e ? state_->recorder.Describe(*e) : "";
  }

  [[noreturn]] void Abort(const std::string& message, int exit_code) override {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->comm != nullptr) ncclCommAbort(state_->comm);
      state_->comm = nullptr;
      state_->failed = true;
    }
    bootstrap_.Abort(message, exit_code);
    std::_Exit(exit_code);  // not reached
  }

 private:
  Status Failed() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->failed ? state_->failure : OkStatus();
  }

  static Status Sync(StatusOr<std::unique_ptr<CommHandle>> handle) {
    if (!handle.ok()) return handle.status();
    return (*handle)->Wait();
  }

  std::string Describe(const OpDesc& d, uint64_t seq, uint64_t p2p) const;
  Status Enqueue(const OpDesc& d, ncclDataType_t type);
  StatusOr<std::unique_ptr<CommHandle>> Issue(const OpDesc& d);

  const CommOptions options_;
  Communicator& bootstrap_;
  std::shared_ptr<CommState> state_;
  int rank_ = 0, size_ = 1, device_ = 0;
  RankInfo info_;
  std::string where_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;  // one issuer at a time
  uint64_t seq_ = 0, p2p_ = 0;
};

Status NcclCommunicator::Init() {
  rank_ = bootstrap_.rank();
  size_ = bootstrap_.size();
  info_ = bootstrap_.rank_info();
  where_ = "rank " + std::to_string(rank_) + " on " + info_.host;

  // Every rank checks its GPU first, and all agree, so nobody waits for a rank that cannot come.
  int devices = 0;
  std::string problem;
  const cudaError_t count_err = cudaGetDeviceCount(&devices);
  if (count_err != cudaSuccess || devices == 0) {
    problem = "no CUDA device is visible on " + where_ +
              (count_err != cudaSuccess ? " (" + CudaErrorText(count_err) + ")" : std::string()) +
              ": the nccl backend needs one GPU per rank; use --backend mpi on machines without one";
  } else if (info_.local_size > devices) {
    problem = std::to_string(info_.local_size) + " ranks run on host " + info_.host + " but it has " +
              std::to_string(devices) + " visible GPU(s): NCCL needs one GPU per rank; start at most " +
              std::to_string(devices) + " rank(s) per node, or use --backend mpi";
  } else {
    device_ = info_.local_rank;
    const cudaError_t set_err = cudaSetDevice(device_);
    if (set_err != cudaSuccess)
      problem = "cudaSetDevice(" + std::to_string(device_) + ") failed on " + where_ + ": " +
                CudaErrorText(set_err);
  }
  int32_t bad = problem.empty() ? -1 : rank_;
  FJORD_RETURN_IF_ERROR(bootstrap_.AllReduce(&bad, &bad, 1, DataType::kI32, ReduceOp::kMax));
  if (!problem.empty()) return FailedPrecondition(problem);
  if (bad >= 0) {
    return FailedPrecondition("rank " + std::to_string(bad) +
                              " cannot use a GPU (its own message says why); the "
                              "nccl backend was not started");
  }
  where_ += ", GPU " + std::to_string(device_);

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  // A flag that is 1 on failure, so the max over ranks (the only order-free reduction besides
  // the sum) carries rank 0's failure to everyone.
  int32_t id_failed = 0;
  if (rank_ == 0 && ncclGetUniqueId(&id) != ncclSuccess) id_failed = 1;
  FJORD_RETURN_IF_ERROR(bootstrap_.AllReduce(&id_failed, &id_failed, 1, DataType::kI32, ReduceOp::kMax));
  FJORD_RETURN_IF_ERROR(bootstrap_.Broadcast(&id, sizeof(id), DataType::kU8, 0));
  if (id_failed) return Internal("ncclGetUniqueId failed on rank 0; NCCL_DEBUG=WARN says why");
  FJORD_CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  ncclComm_t comm = nullptr;
  FJORD_NCCL_TRY(ncclCommInitRank(&comm, size_, id, rank_));
  state_->comm = comm;
  return OkStatus();
}

std::string NcclCommunicator::Describe(const OpDesc& d, uint64_t seq, uint64_t p2p) const {
  const size_t bytes = d.Bytes(size_);
  if (d.kind == OpKind::kSendRecv) {
    return "SendRecv p2p." + std::to_string(p2p) + " (" + std::to_string(bytes) + " bytes to rank " +
           std::to_string(d.root) + ", " + std::to_string(d.recv_count * DataTypeSize(d.dtype)) +
           " bytes from rank " + std::to_string(d.source) + ")";
  }
  std::string what = std::to_string(bytes) + " bytes, " + DataTypeName(d.dtype);
  if (d.is_reduction()) what += std::string(" ") + ReduceOpName(d.op);
  if (d.kind == OpKind::kBroadcast) what += ", root " + std::to_string(d.root);
  return std::string("collective ") + OpKindName(d.kind) + " #" + std::to_string(seq) + " (" + what +
         ", nccl)";
}

Status NcclCommunicator::Enqueue(const OpDesc& d, ncclDataType_t type) {
  ncclComm_t comm = state_->comm;
  const size_t es = DataTypeSize(d.dtype);
  switch (d.kind) {
    case OpKind::kAllReduce:
      FJORD_NCCL_TRY(ncclAllReduce(d.send, d.recv, d.count, type, NcclOp(d.op), comm, stream_));
      break;
    case OpKind::kReduceScatter:
      FJORD_NCCL_TRY(ncclReduceScatter(d.send, d.recv, d.count, type, NcclOp(d.op), comm, stream_));
      break;
    case OpKind::kAllGather:
      FJORD_NCCL_TRY(ncclAllGather(d.send, d.recv, d.count, type, comm, stream_));
      break;
    case OpKind::kBroadcast:
      FJORD_NCCL_TRY(ncclBroadcast(d.recv, d.recv, d.count, type, d.root, comm, stream_));
      break;
    case OpKind::kAllToAll: {
      FJORD_NCCL_TRY(ncclGroupStart());
      for (int p = 0; p < size_; ++p) {
        const size_t offset = static_cast<size_t>(p) * d.count * es;
        FJORD_NCCL_TRY(ncclSend(static_cast<const char*>(d.send) + offset, d.count, type, p, comm, stream_));
        FJORD_NCCL_TRY(ncclRecv(static_cast<char*>(d.recv) + offset, d.count, type, p, comm, stream_));
      }
      FJORD_NCCL_TRY(ncclGroupEnd());
      break;
    }
    case OpKind::kSendRecv:
      if (d.root == rank_ && d.source == rank_) {
        if (d.count != d.recv_count) {
          return InvalidArgument("SendRecv: rank " + std::to_string(rank_) + " sends " +
                                 std::to_string(d.count) + " elements to itself but expects " +
                                 std::to_string(d.recv_count));
        }
        if (d.count > 0)
          FJORD_CUDA_TRY(cudaMemcpyAsync(d.recv, d.send, d.count * es, cudaMemcpyDeviceToDevice, stream_));
        break;
      }
      // Zero-element sides are left out on both ends alike (the counts must match anyway).
      FJORD_NCCL_TRY(ncclGroupStart());
      if (d.count > 0) FJORD_NCCL_TRY(ncclSend(d.send, d.count, type, d.root, comm, stream_));
      if (d.recv_count > 0) FJORD_NCCL_TRY(ncclRecv(d.recv, d.recv_count, type, d.source, comm, stream_));
      FJORD_NCCL_TRY(ncclGroupEnd());
      break;
    case OpKind::kBarrier:
      break;
  }
  if (d.is_reduction() && d.op == ReduceOp::kAvg && size_ > 1 && d.count > 0) {
    switch (d.dtype) {
      case DataType::kF32:
        FJORD_CUDA_TRY(LaunchDivide<float>(d.recv, d.count, size_, stream_));
        break;
      case DataType::kF16:
        FJORD_CUDA_TRY(LaunchDivide<__half>(d.recv, d.count, size_, stream_));
        break;
      case DataType::kBF16:
        FJORD_CUDA_TRY(LaunchDivide<__nv_bfloat16>(d.recv, d.count, size_, stream_));
        break;
      case DataType::kI32:
        FJORD_CUDA_TRY(LaunchDivide<int32_t>(d.recv, d.count, size_, stream_));
        break;
      case DataType::kU8:
        return InvalidArgument("kAvg on uint8 is refused");
    }
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<CommHandle>> NcclCommunicator::Issue(const OpDesc& d) {
  FJORD_RETURN_IF_ERROR(ValidateOp(d, rank_, size_));
  FJORD_ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(d.dtype));
  std::lock_guard<std::mutex> lock(mu_);
  FJORD_RETURN_IF_ERROR(Failed());
  FJORD_CUDA_TRY(cudaSetDevice(device_));
  FlightEntry e;
  if (d.is_collective()) {
    e.seq = ++seq_;
  } else {
    e.p2p = ++p2p_;
  }
  e.kind = d.kind;
  e.bytes = d.Bytes(size_);
  e.dtype = d.dtype;
  e.op = d.op;
  e.reduction = d.is_reduction();
  e.issued = Clock::now();
  const uint64_t record = state_->recorder.Add(e);
  state_->recorder.MarkStarted(record, "nccl");
  const std::string what = Describe(d, e.seq, e.p2p);
  const Status enqueued = Enqueue(d, type);
  if (!enqueued.ok()) {
    state_->recorder.MarkEnded(record, OpState::kFailed);
    return enqueued.WithContext(what);
  }
  cudaEvent_t event = nullptr;
  FJORD_CUDA_TRY(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  const cudaError_t rec = cudaEventRecord(event, stream_);
  if (rec != cudaSuccess) {
    cudaEventDestroy(event);
    return Internal("cudaEventRecord failed on " + where_ + " after " + what + ": " + CudaErrorText(rec));
  }
  return std::unique_ptr<CommHandle>(
      std::make_unique<NcclHandle>(state_, event, what, where_, e.issued, options_.timeout, record));
}

// --- fjord bench's device memory -------------------------------------------------------------------

class NcclBenchMemory final : public BenchMemory {
 public:
  explicit NcclBenchMemory(NcclCommunicator& comm) : comm_(comm), where_(comm.where()) {}
  NcclBenchMemory(const NcclBenchMemory&) = delete;
  NcclBenchMemory& operator=(const NcclBenchMemory&) = delete;
  ~NcclBenchMemory() override {
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
  }

  Status Init() {
    FJORD_CUDA_TRY(cudaSetDevice(comm_.device()));
    FJORD_CUDA_TRY(cudaEventCreate(&start_));
    FJORD_CUDA_TRY(cudaEventCreate(&stop_));
    cudaDeviceProp prop;
    FJORD_CUDA_TRY(cudaGetDeviceProperties(&prop, comm_.device()));
    char bus[32] = {};
    cudaDeviceGetPCIBusId(bus, sizeof(bus), comm_.device());
    describe_ = "cuda:" + std::to_string(comm_.device()) + " " + prop.name + " (" + bus + ")";
    return OkStatus();
  }

  StatusOr<void*> Allocate(size_t bytes) override {
    FJORD_CUDA_TRY(cudaSetDevice(comm_.device()));
    void* p = nullptr;
    const size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    FJORD_CUDA_TRY(cudaMalloc(&p, rounded));
    sizes_.emplace_back(p, rounded);
    return p;
  }
  void Free(void* buffer) override {
    cudaSetDevice(comm_.device());
    for (auto it = sizes_.begin(); it != sizes_.end(); ++it) {
      if (it->first == buffer) {
        cudaMemset(buffer, 0, it->second);
        sizes_.erase(it);
        break;
      }
    }
    cudaDeviceSynchronize();
    cudaFree(buffer);
  }
  Status Upload(void* buffer, const void* host, size_t bytes) override {
    if (bytes == 0) return OkStatus();
    FJORD_CUDA_TRY(cudaMemcpyAsync(buffer, host, bytes, cudaMemcpyHostToDevice, comm_.stream()));
    FJORD_CUDA_TRY(cudaStreamSynchronize(comm_.stream()));
    return OkStatus();
  }
  Status Download(void* host, const void* buffer, size_t bytes) override {
    if (bytes == 0) return OkStatus();
    FJORD_CUDA_TRY(cudaMemcpyAsync(host, buffer, bytes, cudaMemcpyDeviceToHost, comm_.stream()));
    FJORD_CUDA_TRY(cudaStreamSynchronize(comm_.stream()));
    return OkStatus();
  }
  Status StartTimer() override {
    FJORD_CUDA_TRY(cudaEventRecord(start_, comm_.stream()));
    return OkStatus();
  }
  StatusOr<double> StopTimer() override {
    FJORD_CUDA_TRY(cudaEventRecord(stop_, comm_.stream()));
    FJORD_CUDA_TRY(cudaEventSynchronize(stop_));
    float ms = 0;
    FJORD_CUDA_TRY(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) / 1e3;
  }
  bool queued() const override { return true; }
  std::string Describe() const override { return describe_; }

 private:
  NcclCommunicator& comm_;
  std::string where_;
  std::string describe_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::vector<std::pair<void*, size_t>> sizes_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const CommOptions& options,
                                                               Communicator& bootstrap) {
  if (options.timeout.count() <= 0) {
    return InvalidArgument("communicator timeout must be positive, got " +
                           std::to_string(options.timeout.count()) + " ms");
  }
  auto comm = std::make_unique<NcclCommunicator>(options, bootstrap);
  FJORD_RETURN_IF_ERROR(comm->Init().WithContext("creating the NCCL communicator"));
  return std::unique_ptr<Communicator>(std::move(comm));
}

StatusOr<CUstream_st*> NcclStream(Communicator& nccl) {
  auto* comm = dynamic_cast<NcclCommunicator*>(&nccl);
  if (comm == nullptr)
    return InvalidArgument(std::string("NcclStream needs the nccl backend, not ") + nccl.backend());
  return comm->stream();
}

StatusOr<std::unique_ptr<BenchMemory>> CreateNcclBenchMemory(Communicator& nccl) {
  auto* comm = dynamic_cast<NcclCommunicator*>(&nccl);
  if (comm == nullptr) {
    return InvalidArgument(std::string("device memory needs the nccl backend, not ") + nccl.backend());
  }
  auto memory = std::make_unique<NcclBenchMemory>(*comm);
  FJORD_RETURN_IF_ERROR(memory->Init());
  return std::unique_ptr<BenchMemory>(std::move(memory));
}

}  // namespace fjord
