// Bucketed gradient reduction overlapped with the backward pass.
//
// The gradient buffer is cut into buckets of about bucket_floats, from its end towards its
// start, because the backward pass completes gradients in that order (runtime/gpt.h). When the
// backward callback reports that everything at and above a bucket's start is final, the bucket
// is all-reduced (average over ranks) asynchronously, in place, while backward goes on with
// lower addresses. Finish() launches what is left and waits for all of it; the time spent there
// is the communication the backward pass did not hide.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

class GradReducer {
 public:
  // Reduces grads[0, count) over `comm` in buckets of at most bucket_floats (>= 1).
  GradReducer(Communicator& comm, float* grads, size_t count, size_t bucket_floats);

  // The backward callback: gradients [begin, end) are final; ranges arrive in decreasing order.
  // Launches every bucket that is now complete. Errors are kept for Finish().
  void OnReady(size_t begin, size_t end);

  // Launches the buckets not launched yet (all of them when overlap is off) and waits for every
  // launched bucket. Returns the first error. Resets for the next step.
  Status Finish();

  size_t num_buckets() const { return buckets_.size(); }
  const std::vector<std::pair<size_t, size_t>>& buckets() const { return buckets_; }

 private:
  Status Launch(size_t index);

  Communicator& comm_;
  float* grads_;
  std::vector<std::pair<size_t, size_t>> buckets_;  // [begin, end), highest first
  size_t next_ = 0;                                 // first bucket not launched
  size_t ready_from_;                               // everything >= this is final
  std::vector<std::unique_ptr<CommHandle>> pending_;
  Status error_;
};

}  // namespace fjord
