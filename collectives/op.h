// One communicator call as data: what every backend validates, queues, executes and records.
//
// Design: the backends turn each public call into an OpDesc first, so validation (the rules of
// communicator.h: ranges, dtype/op pairs, allowed overlaps) is written once and a refused call
// never reaches the wire. The flight recorder stores the same description.
#pragma once

#include <cstddef>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

enum class OpKind { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kAllToAll, kSendRecv, kBarrier };

const char* OpKindName(OpKind kind);  // "AllReduce", "ReduceScatter", ...

struct OpDesc {
  OpKind kind = OpKind::kBarrier;
  const void* send = nullptr;  // Broadcast: the buffer
  void* recv = nullptr;        // Broadcast: the buffer
  // AllReduce: count; ReduceScatter: recv_count; AllGather: send_count; Broadcast: count;
  // AllToAll: elements per block; SendRecv: send_count.
  size_t count = 0;
  size_t recv_count = 0;  // SendRecv only
  DataType dtype = DataType::kU8;
  ReduceOp op = ReduceOp::kSum;  // reductions only
  int root = 0;                  // Broadcast: root; SendRecv: dest
  int source = 0;                // SendRecv only

  bool is_reduction() const { return kind == OpKind::kAllReduce || kind == OpKind::kReduceScatter; }
  bool is_collective() const { return kind != OpKind::kSendRecv; }
  // The size the flight recorder and error messages quote: the whole buffer one rank passes
  // (AllReduce and Broadcast: count; ReduceScatter and AllToAll: the send buffer; AllGather: the
  // recv buffer; SendRecv: what it sends), in bytes.
  size_t Bytes(int world_size) const;
};

// InvalidArgument naming the call and what is wrong, or OK. `rank` and `world_size` are this
// communicator's.
Status ValidateOp(const OpDesc& op, int rank, int world_size);

}  // namespace fjord
