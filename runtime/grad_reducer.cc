#include "runtime/grad_reducer.h"

#include <algorithm>

namespace fjord {

GradReducer::GradReducer(Communicator& comm, float* grads, size_t count, size_t bucket_floats)
    : comm_(comm), grads_(grads), ready_from_(count) {
  bucket_floats = std::max<size_t>(bucket_floats, 1);
  for (size_t end = count; end > 0;) {
    const size_t begin = end > bucket_floats ? end - bucket_floats : 0;
    buckets_.emplace_back(begin, end);
    end = begin;
  }
}

Status GradReducer::Launch(size_t index) {
  const auto [begin, end] = buckets_[index];
  StatusOr<std::unique_ptr<CommHandle>> handle =
      comm_.AllReduceAsync(grads_ + begin, grads_ + begin, end - begin, DataType::kF32, ReduceOp::kAvg);
  if (!handle.ok()) return handle.status().WithContext("gradient bucket " + std::to_string(index));
  pending_.push_back(std::move(handle).value());
  return OkStatus();
}

void GradReducer::OnReady(size_t begin, size_t end) {
  ready_from_ = std::min(ready_from_, begin);
  while (error_.ok() && next_ < buckets_.size() && buckets_[next_].first >= ready_from_) {
    error_ = Launch(next_++);
  }
}

Status GradReducer::Finish() {
  while (error_.ok() && next_ < buckets_.size()) error_ = Launch(next_++);
  Status status = error_;
  for (std::unique_ptr<CommHandle>& handle : pending_) {
    Status s = handle->Wait();
    if (status.ok() && !s.ok()) status = s;
  }
  pending_.clear();
  next_ = 0;
  ready_from_ = buckets_.empty() ? 0 : buckets_.front().second;
  error_ = OkStatus();
  return status;
}

}  // namespace fjord
