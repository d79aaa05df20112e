// The flight recorder's ring buffer and its text dump (design in flight_recorder.h).
#include "collectives/flight_recorder.h"

#include <cinttypes>
#include <cstdio>
#include <ctime>

namespace fjord {

const char* OpStateName(OpState state) {
  switch (state) {
    case OpState::kQueued:
      return "queued";
    case OpState::kRunning:
      return "running";
    case OpState::kDone:
      return "done";
    case OpState::kFailed:
      return "failed";
    case OpState::kTimedOut:
      return "timed out";
    case OpState::kSkipped:
      return "skipped";
  }
  return "?";
}

FlightRecorder::FlightRecorder(size_t capacity)
    : entries_(capacity), origin_(Clock::now()), wall_origin_(std::chrono::system_clock::now()) {}

FlightEntry* FlightRecorder::Slot(uint64_t id) {
  if (entries_.empty() || id >= next_id_ || next_id_ - id > entries_.size()) return nullptr;
  return &entries_[id % entries_.size()];
}

uint64_t FlightRecorder::Add(const FlightEntry& entry) {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  if (!entries_.empty()) entries_[id % entries_.size()] = entry;
  return id;
}

void FlightRecorder::MarkStarted(uint64_t id, const char* algorithm) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = Slot(id)) {
    e->started = Clock::now();
    e->algorithm = algorithm;
    e->state = OpState::kRunning;
  }
}

void FlightRecorder::MarkEnded(uint64_t id, OpState state) {
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = Slot(id)) {
    e->ended = Clock::now();
    e->state = state;
  }
}

std::optional<FlightEntry> FlightRecorder::FindSeq(uint64_t seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const FlightEntry& e : entries_) {
    if (e.seq == seq && seq != 0) return e;
  }
  return std::nullopt;
}

std::optional<FlightEntry> FlightRecorder::OldestUnfinished() const {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t shown = std::min<uint64_t>(next_id_, entries_.size());
  for (uint64_t id = next_id_ - shown; id < next_id_; ++id) {
    const FlightEntry& e = entries_[id % entries_.size()];
    if (e.state == OpState::kQueued || e.state == OpState::kRunning) return e;
  }
  return std::nullopt;
}

std::string FlightRecorder::Describe(const FlightEntry& e) const {
  char name[32];
  if (e.seq != 0) {
    std::snprintf(name, sizeof(name), "#%" PRIu64, e.seq);
  } else {
    std::snprintf(name, sizeof(name), "p2p.%" PRIu64, e.p2p);
  }
  const bool running = e.state == OpState::kRunning;
  const double since = std::chrono::duration<double>(Clock::now() - (running ? e.started : e.issued)).count();
  char line[256];
  std::snprintf(line, sizeof(line), "%s %s (%zu bytes %s %s, %s), %s for %.2f s", OpKindName(e.kind), name,
                e.bytes, e.kind == OpKind::kBarrier ? "-" : DataTypeName(e.dtype),
                e.reduction ? ReduceOpName(e.op) : "-", e.algorithm,
                running ? "running" : OpStateName(e.state), since);
  return line;
}

std::string FlightRecorder::Dump(const std::string& who) const {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t shown = std::min<uint64_t>(next_id_, entries_.size());
  char line[512];
  std::string out;
  const std::time_t wall = std::chrono::system_clock::to_time_t(wall_origin_);
  std::tm tm{};
  localtime_r(&wall, &tm);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(wall_origin_.time_since_epoch()).count() % 1000;
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
  std::snprintf(line, sizeof(line),
                "fjord: flight recorder of %s: last %zu of %" PRIu64
                " operations; times in s since %s.%03lld\n",
                who.c_str(), shown, next_id_, when, static_cast<long long>(ms));
  out += line;
  if (entries_.empty()) return out + "  (disabled: CommOptions.flight_recorder_entries is 0)\n";
  std::snprintf(line, sizeof(line), "  %-10s %-14s %12s %-9s %-4s %-5s %10s %10s %10s  %s\n", "seq", "op",
                "bytes", "dtype", "red", "algo", "issued", "started", "ended", "state");
  out += line;
  auto secs = [&](Clock::time_point t, char* buf, size_t size) {
    if (t == Clock::time_point{}) {
      std::snprintf(buf, size, "-");
    } else {
      std::snprintf(buf, size, "%.6f", std::chrono::duration<double>(t - origin_).count());
    }
  };
  for (uint64_t id = next_id_ - shown; id < next_id_; ++id) {
    const FlightEntry& e = entries_[id % entries_.size()];
    char name[32], issued[32], started[32], ended[32];
    if (e.seq != 0) {
      std::snprintf(name, sizeof(name), "#%" PRIu64, e.seq);
    } else {
      std::snprintf(name, sizeof(name), "p2p.%" PRIu64, e.p2p);
    }
    secs(e.issued, issued, sizeof(issued));
    secs(e.started, started, sizeof(started));
    secs(e.ended, ended, sizeof(ended));
    std::snprintf(line, sizeof(line), "  %-10s %-14s %12zu %-9s %-4s %-5s %10s %10s %10s  %s\n", name,
                  OpKindName(e.kind), e.bytes, e.kind == OpKind::kBarrier ? "-" : DataTypeName(e.dtype),
                  e.reduction ? ReduceOpName(e.op) : "-", e.algorithm, issued, started, ended,
                  OpStateName(e.state));
    out += line;
  }
  return out;
}

}  // namespace fjord
