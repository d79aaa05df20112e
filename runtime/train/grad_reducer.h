// Bucketed gradient reduction overlapped with the backward pass.
//
// The gradient buffer is cut into buckets of about bucket_floats, from its end towards its
// start, because the backward pass completes gradients in that order (runtime/model/gpt.h). When the
// backward callback reports that everything at and above a bucket's start is final, the bucket
// is all-reduced (average over ranks) asynchronously, in place, while backward goes on with
// lower addresses. Finish() launches what is left and waits for all of it; the time spent there
// is the communication the backward pass did not hide.
//
// Device memory (runtime/device/device.h): with a communicator that reads device memory (NCCL), each
// bucket's collective is ordered after the compute work that wrote it by an event
// (Device::OrderAfterCompute on the communicator's stream), so backward kernels and the
// reduction overlap on the GPU. With a host communicator (MPI) and a CUDA device, each bucket is
// copied to pinned host memory on the device's communication stream as soon as it is final, the
// host reduces it, and Finish() uploads the averaged gradients (host staging: several ranks can
// then share one GPU). On the CPU the communicator reads the gradients in place.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"

struct CUstream_st;

namespace fjord {

class Device;

// How gradients on `device` reach the communicator.
struct ReducePath {
  Device* device = nullptr;            // null: host memory (the CPU device)
  CUstream_st* comm_stream = nullptr;  // a device communicator's stream (NCCL), else null
  bool stage_through_host = false;     // device memory, host communicator: pinned staging
};

class GradReducer {
 public:
  // Reduces grads[0, count) over `comm` in buckets of at most bucket_floats (>= 1).
  GradReducer(Communicator& comm, float* grads, size_t count, size_t bucket_floats,
              const ReducePath& path = {});
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // The backward callback: gradients [begin, end) are final; ranges arrive in decreasing order.
  // Launches every bucket that is now complete. Errors are kept for Finish().
  void OnReady(size_t begin, size_t end);

  // Launches the buckets not launched yet (all of them when overlap is off) and waits for every
  // launched bucket. Returns the first error. Resets for the next step.
  Status Finish();

  // ZeRO-1 on the same path: grads[0, world * shard) is reduce-scattered (average) so that
  // grads[shard_begin, shard_begin + shard) holds this rank's averaged shard; and
  // buffer[shard_begin, + shard) of every rank is all-gathered into buffer (in place, backend
  // memory, e.g. the parameters).
  Status ReduceScatterShard(size_t shard_begin, size_t shard);
  Status AllGatherShard(float* buffer, size_t shard_begin, size_t shard);

  size_t num_buckets() const { return buckets_.size(); }
  const std::vector<std::pair<size_t, size_t>>& buckets() const { return buckets_; }

 private:
  Status Launch(size_t index);

  Communicator& comm_;
  float* grads_;
  size_t count_;
  ReducePath path_;
  float* staging_ = nullptr;                        // pinned host copy of grads (stage_through_host)
  std::vector<std::pair<size_t, size_t>> buckets_;  // [begin, end), highest first
  size_t next_ = 0;                                 // first bucket not launched
  size_t ready_from_;                               // everything >= this is final
  std::vector<std::unique_ptr<CommHandle>> pending_;
  Status error_;
};

}  // namespace fjord
