// ZeRO-2's gradient path (parallel.zero_stage: 2; docs/ARCHITECTURE.md "Data parallelism"): the
// fp32 gradients live only as this rank's shard of the unit map (runtime/model/zero_units.h).
//
// The model has no gradient buffer (GptConfig::grad_shard_ranks). Before each backward pass
// Begin() points the gradients of the embeddings and of the tail at two zeroed windows; when the
// backward callback reports a unit complete, OnReady launches its reduce-scatter (average, in
// place, asynchronous) and points the next unit below at the other of two alternating layer
// windows, first waiting for that window's previous reduce-scatter and adding its piece into the
// shard. The embeddings keep their own window for the whole pass (a tied classifier writes their
// gradient at its start, the embedding lookup at its end). Finish() waits for what is in flight.
// With gradient accumulation every micro-step reduce-scatters and the shard holds the sum of the
// averaged micro-steps. AllGatherParams brings every rank the updated parameters after AdamW
// updated its shard, unit by unit, in place.
//
// Memory: the shard (shard_floats), the embeddings' window and two layer windows, from the
// trainer's arena (ArenaBytes; the memory plan counts exactly these). With a CUDA device and a
// host communicator (MPI), each window is staged through pinned host memory of its size; with
// NCCL the collectives read the device windows after the compute work that wrote them.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"
#include "runtime/model/gpt.h"
#include "runtime/model/zero_units.h"
#include "runtime/train/grad_reducer.h"

namespace fjord {

class Arena;

class UnitReducer {
 public:
  UnitReducer(Communicator& comm, Gpt& model, const ZeroUnits& units, Arena& arena, bool overlap,
              const ReducePath& path = {});
  ~UnitReducer();
  UnitReducer(const UnitReducer&) = delete;
  UnitReducer& operator=(const UnitReducer&) = delete;

  // Arena bytes the constructor takes for `sizes` (the shard and three windows).
  static size_t ArenaBytes(const ZeroUnits::Sizes& sizes);

  // Start of a step: the shard to zero.
  void ZeroShard();
  // Before each Backward: the windows of the embeddings and the tail, zeroed, set on the model.
  Status Begin();
  // The backward callback. Errors are kept for Finish().
  void OnReady(size_t begin, size_t end);
  // After each Backward: waits for every reduce-scatter and adds its piece into the shard.
  Status Finish();
  // After the update of the shard's parameters in `params` (layout-indexed, the model's buffer):
  // every unit's pieces all-gathered in place, from the last unit to the first (the last piece of a
  // unit may reach into the next unit's range, which is then already gathered).
  Status AllGatherParams(float* params);

  float* shard() { return shard_; }  // this rank's averaged gradients (backend memory)
  // Seconds spent waiting for a window's previous reduce-scatter inside the backward callback
  // since the last call: communication the backward pass did not hide.
  double TakeWaitSeconds();

 private:
  struct Slot {
    float* window = nullptr;   // backend memory
    float* staging = nullptr;  // pinned host copy (stage_through_host)
    size_t floats = 0;
    size_t unit = 0;
    std::unique_ptr<CommHandle> pending;
  };
  Status Launch(Slot& slot);
  Status Complete(Slot& slot);  // waits for slot's reduce-scatter and adds its piece to the shard
  void Assign(Slot& slot, int model_slot, size_t unit);

  Communicator& comm_;
  Gpt& model_;
  const ZeroUnits& units_;
  bool overlap_;
  ReducePath path_;
  float* shard_ = nullptr;
  Slot embeddings_, layers_[2];
  int next_layer_slot_ = 0;
  Status error_;
  double wait_seconds_ = 0.0;
};

}  // namespace fjord
