// Validation of communicator calls, shared by every backend (design in op.h).
#include "collectives/op.h"

#include <cstdint>
#include <limits>
#include <string>

#include "collectives/reduce.h"

namespace fjord {
namespace {

bool ValidDataType(DataType dtype) { return DataTypeSize(dtype) != 0; }

// [a, a + a_bytes) and [b, b + b_bytes) share a byte.
bool Overlap(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

Status Refuse(const OpDesc& op, const std::string& what) {
  return InvalidArgument(std::string(OpKindName(op.kind)) + ": " + what);
}

}  // namespace

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kAllReduce:
      return "AllReduce";
    case OpKind::kReduceScatter:
      return "ReduceScatter";
    case OpKind::kAllGather:
      return "AllGather";
    case OpKind::kBroadcast:
      return "Broadcast";
    case OpKind::kAllToAll:
      return "AllToAll";
    case OpKind::kSendRecv:
      return "SendRecv";
    case OpKind::kBarrier:
      return "Barrier";
  }
  return "?";
}

size_t OpDesc::Bytes(int world_size) const {
  const size_t es = DataTypeSize(dtype);
  const size_t n = static_cast<size_t>(world_size);
  switch (kind) {
    case OpKind::kAllReduce:
    case OpKind::kBroadcast:
    case OpKind::kSendRecv:
      return count * es;
    case OpKind::kReduceScatter:
    case OpKind::kAllGather:
    case OpKind::kAllToAll:
      return count * es * n;
    case OpKind::kBarrier:
      return 0;
  }
  return 0;
}

Status ValidateOp(const OpDesc& op, int rank, int world_size) {
  if (op.kind == OpKind::kBarrier) return OkStatus();
  if (!ValidDataType(op.dtype))
    return Refuse(op, "unknown data type " + std::to_string(static_cast<int>(op.dtype)));
  if (op.is_reduction())
    FJORD_RETURN_IF_ERROR(CheckReduction(op.dtype, op.op).WithContext(OpKindName(op.kind)));
  const size_t es = DataTypeSize(op.dtype);
  const size_t n = static_cast<size_t>(world_size);
  // Keep every byte count below 2^62 so no size computation overflows.
  const size_t limit = (size_t{1} << 62) / es / n;
  if (op.count > limit || op.recv_count > limit) {
    return Refuse(op, "count " + std::to_string(std::max(op.count, op.recv_count)) + " is too large");
  }
  const size_t bytes = op.count * es;
  switch (op.kind) {
    case OpKind::kAllReduce:
      if (bytes > 0 && (op.send == nullptr || op.recv == nullptr))
        return Refuse(op, "null buffer with count > 0");
      if (op.send != op.recv && Overlap(op.send, bytes, op.recv, bytes)) {
        return Refuse(
            op,
            "send and recv overlap but are not the same buffer (only in place, send == recv, is allowed)");
      }
      return OkStatus();
    case OpKind::kReduceScatter: {
      if (bytes > 0 && (op.send == nullptr || op.recv == nullptr))
        return Refuse(op, "null buffer with recv_count > 0");
      const auto* in_place = static_cast<const std::byte*>(op.send) + static_cast<size_t>(rank) * bytes;
      if (op.recv != in_place && Overlap(op.send, bytes * n, op.recv, bytes)) {
        return Refuse(
            op, "recv overlaps send but is not send + rank * recv_count (the only allowed in-place layout)");
      }
      return OkStatus();
    }
    case OpKind::kAllGather: {
      if (bytes > 0 && (op.send == nullptr || op.recv == nullptr))
        return Refuse(op, "null buffer with send_count > 0");
      const auto* in_place = static_cast<const std::byte*>(op.recv) + static_cast<size_t>(rank) * bytes;
      if (op.send != in_place && Overlap(op.send, bytes, op.recv, bytes * n)) {
        return Refuse(
            op, "send overlaps recv but is not recv + rank * send_count (the only allowed in-place layout)");
      }
      return OkStatus();
    }
    case OpKind::kBroadcast:
      if (op.root < 0 || op.root >= world_size) {
        return Refuse(op, "root " + std::to_string(op.root) + " is not a rank (size is " +
                              std::to_string(world_size) + ")");
      }
      if (bytes > 0 && op.recv == nullptr) return Refuse(op, "null buffer with count > 0");
      return OkStatus();
    case OpKind::kAllToAll:
      if (bytes > 0 && (op.send == nullptr || op.recv == nullptr))
        return Refuse(op, "null buffer with count > 0");
      if (Overlap(op.send, bytes * n, op.recv, bytes * n)) return Refuse(op, "send and recv overlap");
      return OkStatus();
    case OpKind::kSendRecv: {
      const size_t recv_bytes = op.recv_count * es;
      if (op.root < 0 || op.root >= world_size) {
        return Refuse(op, "dest " + std::to_string(op.root) + " is not a rank (size is " +
                              std::to_string(world_size) + ")");
      }
      if (op.source < 0 || op.source >= world_size) {
        return Refuse(op, "source " + std::to_string(op.source) + " is not a rank (size is " +
                              std::to_string(world_size) + ")");
      }
      if ((bytes > 0 && op.send == nullptr) || (recv_bytes > 0 && op.recv == nullptr)) {
        return Refuse(op, "null buffer with a count > 0");
      }
      if (Overlap(op.send, bytes, op.recv, recv_bytes)) return Refuse(op, "send and recv overlap");
      return OkStatus();
    }
    case OpKind::kBarrier:
      return OkStatus();
  }
  return Refuse(op, "unknown operation");
}

}  // namespace fjord
