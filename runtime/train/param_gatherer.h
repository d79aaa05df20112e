// ZeRO-3's parameter path (parallel.zero_stage: 3; docs/ARCHITECTURE.md "Data parallelism"): the
// fp32 master parameters, and in bf16 their working copy, live only as this rank's shard of the
// unit map (runtime/model/zero_units.h); the gradients take ZeRO-2's path (UnitReducer).
//
// The model has no parameter buffer (GptConfig::param_shard_ranks). It asks for each unit before
// reading it (Gpt::SetParamsNeeded); Need() then all-gathers the unit's pieces of the working
// shard (bf16: the pieces each owner rounded, so every rank reads what stage 0 reads) into a
// window and points the model at it, and starts the gather of the unit the model names next into
// the other of two alternating layer windows, so it runs while the current unit computes. The
// embeddings have a window of their own that stays gathered until Invalidate(): they are read at
// both ends of every pass (the encoder, and the tied classifier at the end of the forward and the
// start of the backward). The tail takes a layer window; it is the last unit of the forward and
// the first of the backward, so it is gathered once for both. After AdamW updated the shard,
// Invalidate() marks every window stale: the next forward gathers again; nothing is gathered
// after the step.
//
// Memory: the master shard (shard_floats fp32), in bf16 the working shard (shard_floats bf16),
// the embeddings' window and two layer windows in the working precision, from the trainer's arena
// (ArenaBytes; the memory plan counts exactly these). With a CUDA device and a host communicator
// (MPI) every window is staged through pinned host memory of its size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "collectives/communicator.h"
#include "common/status.h"
#include "runtime/model/gpt.h"
#include "runtime/model/zero_units.h"
#include "runtime/train/grad_reducer.h"

namespace fjord {

class Arena;

class ParamGatherer {
 public:
  // Sets itself as the model's ParamsNeededFn; the model must outlive it or reset the callback.
  ParamGatherer(Communicator& comm, Gpt& model, const ZeroUnits& units, Arena& arena, bool overlap,
                const ReducePath& path = {});
  ~ParamGatherer();
  ParamGatherer(const ParamGatherer&) = delete;
  ParamGatherer& operator=(const ParamGatherer&) = delete;

  // Arena bytes the constructor takes for `sizes` in precision `p`.
  static size_t ArenaBytes(const ZeroUnits::Sizes& sizes, Precision p);

  float* master() { return master_; }  // this rank's fp32 shard (backend memory), AdamW's params
  bf16* working_bf16() { return precision_ == Precision::kBf16 ? static_cast<bf16*>(working_) : nullptr; }

  // This rank's pieces of a layout-indexed host buffer (num_params floats or more) into the master
  // shard, the working shard rounded to nearest even (as Gpt::SyncParamsToDevice); Invalidate()s.
  void LoadFull(const float* full);
  // bf16: the working shard rounded from the master shard with `seed`, each element hashed with
  // its layout offset (Gpt::RoundWorkingParams's values). fp32: nothing.
  void RoundWorking(uint64_t seed);
  // The shard changed: every window is stale.
  void Invalidate();

  // The model's callback (see Gpt's ParamsNeededFn).
  void Need(size_t unit_begin, size_t next_begin);
  // The first error of a gather since the last call (the pass that saw it read stale windows, so
  // its results must be discarded); clears it.
  Status TakeStatus();
  // Seconds spent waiting for gathers inside Need since the last call: the gathers the model's
  // computation did not hide (exposed communication).
  double TakeWaitSeconds();

 private:
  struct Slot {
    char* window = nullptr;   // backend memory
    char* staging = nullptr;  // pinned host copy (stage_through_host)
    size_t bytes = 0;
    size_t unit = SIZE_MAX;  // the unit it holds or is receiving; SIZE_MAX: none
    bool ready = false;
    std::unique_ptr<CommHandle> pending;
  };
  Status Launch(Slot& slot, size_t unit);
  Status Complete(Slot& slot);
  void Ensure(Slot& slot, int model_slot);  // waits for slot's gather, points the model at it
  size_t ElementBytes() const { return precision_ == Precision::kBf16 ? sizeof(bf16) : sizeof(float); }

  Communicator& comm_;
  Gpt& model_;
  const ZeroUnits& units_;
  bool overlap_;
  ReducePath path_;
  Precision precision_;
  float* master_ = nullptr;
  void* working_ = nullptr;  // master_ in fp32
  Slot embeddings_, layers_[2];
  int last_slot_ = 0;  // the layer window read last
  Status error_;
  double wait_seconds_ = 0.0;
};

}  // namespace fjord
