#include "runtime/train/grad_reducer.h"

#include <algorithm>

#include "common/check.h"
#include "runtime/device/device.h"

namespace fjord {

GradReducer::GradReducer(Communicator& comm, float* grads, size_t count, size_t bucket_floats,
                         const ReducePath& path)
    : comm_(comm), grads_(grads), count_(count), path_(path), ready_from_(count) {
  if (path_.stage_through_host) {
    FJORD_CHECK(path_.device != nullptr, "host staging needs the device");
    staging_ = static_cast<float*>(path_.device->AllocateHost(std::max<size_t>(count, 1) * sizeof(float)));
    FJORD_CHECK(staging_ != nullptr, "cannot allocate " + std::to_string(count * sizeof(float)) +
                                         " bytes of pinned host memory to stage gradients");
  }
  bucket_floats = std::max<size_t>(bucket_floats, 1);
  for (size_t end = count; end > 0;) {
    const size_t begin = end > bucket_floats ? end - bucket_floats : 0;
    buckets_.emplace_back(begin, end);
    end = begin;
  }
}

GradReducer::~GradReducer() {
  // Buckets still in flight (an error return in the middle of a step) are written by the
  // communicator's thread into the gradients (arena) and the staging memory: wait for them (each
  // ends by the communicator's timeout at the latest) before those are zeroed and freed, or the
  // last write lands after the zeroing.
  for (std::unique_ptr<CommHandle>& handle : pending_) (void)handle->Wait();
  if (staging_ != nullptr) {
    std::fill(staging_, staging_ + count_, 0.0f);  // tenant hygiene, as for device memory
    path_.device->FreeHost(staging_);
  }
}

Status GradReducer::Launch(size_t index) {
  const auto [begin, end] = buckets_[index];
  float* data = grads_ + begin;
  if (staging_ != nullptr) {
    path_.device->StageToHost(staging_ + begin, data, (end - begin) * sizeof(float));
    data = staging_ + begin;
  } else if (path_.device != nullptr && path_.comm_stream != nullptr) {
    path_.device->OrderAfterCompute(path_.comm_stream);
  }
  StatusOr<std::unique_ptr<CommHandle>> handle =
      comm_.AllReduceAsync(data, data, end - begin, DataType::kF32, ReduceOp::kAvg);
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
  if (status.ok() && staging_ != nullptr) path_.device->Upload(grads_, staging_, count_ * sizeof(float));
  next_ = 0;
  ready_from_ = buckets_.empty() ? 0 : buckets_.front().second;
  error_ = OkStatus();
  return status;
}

Status GradReducer::ReduceScatterShard(size_t shard_begin, size_t shard) {
  if (staging_ != nullptr) {
    path_.device->StageToHost(staging_, grads_, shard * comm_.size() * sizeof(float));
    FJORD_RETURN_IF_ERROR(
        comm_.ReduceScatter(staging_, staging_ + shard_begin, shard, DataType::kF32, ReduceOp::kAvg));
    path_.device->Upload(grads_ + shard_begin, staging_ + shard_begin, shard * sizeof(float));
    return OkStatus();
  }
  if (path_.device != nullptr && path_.comm_stream != nullptr)
    path_.device->OrderAfterCompute(path_.comm_stream);
  return comm_.ReduceScatter(grads_, grads_ + shard_begin, shard, DataType::kF32, ReduceOp::kAvg);
}

Status GradReducer::AllGatherShard(float* buffer, size_t shard_begin, size_t shard) {
  if (staging_ != nullptr) {
    // The gradients' staging copy is free again here (the update has read the gradients).
    path_.device->StageToHost(staging_ + shard_begin, buffer + shard_begin, shard * sizeof(float));
    FJORD_RETURN_IF_ERROR(comm_.AllGather(staging_ + shard_begin, staging_, shard, DataType::kF32));
    path_.device->Upload(buffer, staging_, shard * comm_.size() * sizeof(float));
    return OkStatus();
  }
  if (path_.device != nullptr && path_.comm_stream != nullptr)
    path_.device->OrderAfterCompute(path_.comm_stream);
  return comm_.AllGather(buffer + shard_begin, buffer, shard, DataType::kF32);
}

}  // namespace fjord
