// The flight recorder: a per-rank ring buffer of the last operations of one communicator (seq,
// op, bytes, dtype, algorithm, issue / start / end time, state), dumped to stderr on a timeout
// or an error so that a hang can be diagnosed after the fact, from every rank's view.
//
// Design: entries are written when an operation is issued (so a call that never started still
// shows up, "queued"), then updated in place when it starts and ends; an entry that has been
// overwritten by newer ones is simply no longer updated. Times print as seconds since the
// communicator was created, and that moment's wall-clock time is in the header, so the dumps of
// different ranks can be lined up. All methods are thread-safe (one mutex; a few hundred
// nanoseconds per operation).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "collectives/op.h"

namespace fjord {

enum class OpState { kQueued, kRunning, kDone, kFailed, kTimedOut, kSkipped };
const char* OpStateName(OpState state);  // "queued", "running", "done", "failed", "timed out", "skipped"

struct FlightEntry {
  using Clock = std::chrono::steady_clock;
  uint64_t seq = 0;  // collective sequence number; 0 for SendRecv
  uint64_t p2p = 0;  // SendRecv number; 0 for collectives
  OpKind kind = OpKind::kBarrier;
  size_t bytes = 0;
  DataType dtype = DataType::kU8;
  ReduceOp op = ReduceOp::kSum;
  bool reduction = false;
  const char* algorithm = "-";  // a string literal: "ring", "tree", "mpi", "copy", ...
  Clock::time_point issued{}, started{}, ended{};
  OpState state = OpState::kQueued;
};

class FlightRecorder {
 public:
  using Clock = FlightEntry::Clock;
  explicit FlightRecorder(size_t capacity);
  FlightRecorder(const FlightRecorder&) = delete;
  FlightRecorder& operator=(const FlightRecorder&) = delete;

  // Records a new entry; returns its id for the updates below.
  uint64_t Add(const FlightEntry& entry);
  void MarkStarted(uint64_t id, const char* algorithm);
  void MarkEnded(uint64_t id, OpState state);
  // The entry of collective `seq`, if it is still in the buffer.
  std::optional<FlightEntry> FindSeq(uint64_t seq) const;
  // The oldest entry still queued or running, if any: what this rank is stuck in when it hangs.
  std::optional<FlightEntry> OldestUnfinished() const;
  // One phrase for an entry: "allreduce #57 (3145728 bytes f32 sum, ring), running for 0.84 s"
  // ("queued for" when it has not started).
  std::string Describe(const FlightEntry& entry) const;

  // Header line naming `who` (e.g. "rank 0 (host a)"), then one line per entry, oldest first.
  std::string Dump(const std::string& who) const;

 private:
  FlightEntry* Slot(uint64_t id);  // nullptr when overwritten or disabled

  mutable std::mutex mu_;
  std::vector<FlightEntry> entries_;
  uint64_t next_id_ = 0;
  const Clock::time_point origin_;
  const std::chrono::system_clock::time_point wall_origin_;
};

}  // namespace fjord
