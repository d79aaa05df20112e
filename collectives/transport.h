// What the hand-written collective algorithms (ring.h, tree.h) need from a backend: non-blocking
// point-to-point messages between the ranks of one group, and scratch memory.
//
// Design: the algorithms are written against this interface instead of MPI so that they stay
// free of MPI types, and so that tests can run them in one process over a thread transport for
// many world sizes and tiny chunk sizes. The MPI backend implements it with MPI_Isend/Irecv on
// its duplicated communicator; its Wait() is where the deadline, the census of a hang and MPI
// errors live, so an algorithm only propagates the Status it gets.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

#include "common/status.h"

namespace fjord {

class Transport {
 public:
  using Request = int;
  static constexpr Request kNoRequest = -1;
  // Algorithms never post a message larger than this (MPI counts are int).
  static constexpr size_t kMaxMessageBytes = size_t{1} << 30;

  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Post a send / receive of `bytes` bytes (<= kMaxMessageBytes) to / from rank `peer`.
  // Messages between two ranks with the same tag match in posting order (as in MPI). The
  // buffer must stay untouched until Wait() on the request returns.
  virtual Status Isend(const void* buf, size_t bytes, int peer, int tag, Request* req) = 0;
  virtual Status Irecv(void* buf, size_t bytes, int peer, int tag, Request* req) = 0;
  // Waits until *req completes, then sets it to kNoRequest; returns at once for kNoRequest.
  // An error (timeout, peer failure, transport error) leaves the group unusable.
  virtual Status Wait(Request* req) = 0;
};

// Grow-only scratch memory for the algorithms, 64-byte aligned, not zeroed. One per
// communicator; used by one operation at a time.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // At least `bytes` bytes, valid until the next Get; nullptr when memory is exhausted.
  std::byte* Get(size_t bytes) {
    if (bytes > capacity_) {
      const size_t rounded = (bytes + 63) / 64 * 64;
      data_.reset(static_cast<std::byte*>(std::aligned_alloc(64, rounded)));
      capacity_ = data_ ? rounded : 0;
      if (!data_) return nullptr;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t capacity_ = 0;
};

}  // namespace fjord
