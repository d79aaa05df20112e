// The one-rank communicator (design in self_communicator.h).
#include "collectives/self_communicator.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "collectives/flight_recorder.h"
#include "collectives/op.h"
#include "collectives/reduce.h"

namespace fjord {
namespace {

class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(const CommOptions& options) : recorder_(options.flight_recorder_entries) {
    info_ = RankInfoFromEnvironment();
    info_.rank = 0;
    info_.world_size = 1;
    info_.local_rank = 0;
    info_.local_size = 1;
  }

  int rank() const override { return 0; }
  int size() const override { return 1; }
  RankInfo rank_info() const override { return info_; }
  const char* backend() const override { return "self"; }

  Status AllReduce(const void* send, void* recv, size_t count, DataType dtype, ReduceOp op) override {
    return Run(
        {.kind = OpKind::kAllReduce, .send = send, .recv = recv, .count = count, .dtype = dtype, .op = op});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllReduceAsync(const void* send, void* recv, size_t count,
                                                       DataType dtype, ReduceOp op) override {
    return Async(AllReduce(send, recv, count, dtype, op));
  }
  Status ReduceScatter(const void* send, void* recv, size_t recv_count, DataType dtype,
                       ReduceOp op) override {
    return Run({.kind = OpKind::kReduceScatter,
                .send = send,
                .recv = recv,
                .count = recv_count,
                .dtype = dtype,
                .op = op});
  }
  StatusOr<std::unique_ptr<CommHandle>> ReduceScatterAsync(const void* send, void* recv, size_t recv_count,
                                                           DataType dtype, ReduceOp op) override {
    return Async(ReduceScatter(send, recv, recv_count, dtype, op));
  }
  Status AllGather(const void* send, void* recv, size_t send_count, DataType dtype) override {
    return Run({.kind = OpKind::kAllGather, .send = send, .recv = recv, .count = send_count, .dtype = dtype});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllGatherAsync(const void* send, void* recv, size_t send_count,
                                                       DataType dtype) override {
    return Async(AllGather(send, recv, send_count, dtype));
  }
  Status Broadcast(void* buffer, size_t count, DataType dtype, int root) override {
    return Run({.kind = OpKind::kBroadcast,
                .send = buffer,
                .recv = buffer,
                .count = count,
                .dtype = dtype,
                .root = root});
  }
  StatusOr<std::unique_ptr<CommHandle>> BroadcastAsync(void* buffer, size_t count, DataType dtype,
                                                       int root) override {
    return Async(Broadcast(buffer, count, dtype, root));
  }
  Status AllToAll(const void* send, void* recv, size_t count, DataType dtype) override {
    return Run({.kind = OpKind::kAllToAll, .send = send, .recv = recv, .count = count, .dtype = dtype});
  }
  StatusOr<std::unique_ptr<CommHandle>> AllToAllAsync(const void* send, void* recv, size_t count,
                                                      DataType dtype) override {
    return Async(AllToAll(send, recv, count, dtype));
  }
  Status SendRecv(const void* send, size_t send_count, int dest, void* recv, size_t recv_count, int source,
                  DataType dtype) override {
    return Run({.kind = OpKind::kSendRecv,
                .send = send,
                .recv = recv,
                .count = send_count,
                .recv_count = recv_count,
                .dtype = dtype,
                .root = dest,
                .source = source});
  }
  Status Barrier() override { return Run({.kind = OpKind::kBarrier}); }
  StatusOr<std::unique_ptr<CommHandle>> BarrierAsync() override { return Async(Barrier()); }

  std::string FlightRecord() const override {
    return recorder_.Dump("rank 0 (host " + info_.host + ", self)");
  }

  [[noreturn]] void Abort(const std::string& message, int exit_code) override {
    std::fprintf(stderr, "fjord: aborting (rank 0 of 1 on %s): %s\n", info_.host.c_str(), message.c_str());
    std::fflush(nullptr);
    std::_Exit(exit_code);
  }

 private:
  static StatusOr<std::unique_ptr<CommHandle>> Async(Status status) {
    if (!status.ok()) return status;
    return CompletedHandle(OkStatus());
  }

  Status Run(const OpDesc& op) {
    FJORD_RETURN_IF_ERROR(ValidateOp(op, 0, 1));
    std::lock_guard<std::mutex> lock(mu_);
    FlightEntry entry;
    if (op.is_collective()) {
      entry.seq = ++seq_;
    } else {
      entry.p2p = ++p2p_;
    }
    entry.kind = op.kind;
    entry.bytes = op.Bytes(1);
    entry.dtype = op.dtype;
    entry.op = op.op;
    entry.reduction = op.is_reduction();
    entry.issued = FlightRecorder::Clock::now();
    const uint64_t id = recorder_.Add(entry);
    recorder_.MarkStarted(id, "copy");
    const size_t es = DataTypeSize(op.dtype);
    if (op.kind == OpKind::kSendRecv && op.count != op.recv_count) {
      recorder_.MarkEnded(id, OpState::kFailed);
      return InvalidArgument("SendRecv: rank 0 sends " + std::to_string(op.count) +
                             " elements to itself but expects " + std::to_string(op.recv_count));
    }
    switch (op.kind) {
      case OpKind::kAllReduce:
      case OpKind::kReduceScatter:
      case OpKind::kAllGather:
      case OpKind::kAllToAll:
      case OpKind::kSendRecv:
        // One rank: the reduction of one value is itself, its average too (divided by 1).
        if (op.count > 0 && op.send != op.recv) std::memcpy(op.recv, op.send, op.count * es);
        break;
      case OpKind::kBroadcast:
      case OpKind::kBarrier:
        break;
    }
    recorder_.MarkEnded(id, OpState::kDone);
    return OkStatus();
  }

  RankInfo info_;
  std::mutex mu_;
  uint64_t seq_ = 0;
  uint64_t p2p_ = 0;
  FlightRecorder recorder_;
};

}  // namespace

std::unique_ptr<Communicator> CreateSelfCommunicator(const CommOptions& options) {
  return std::make_unique<SelfCommunicator>(options);
}

}  // namespace fjord
