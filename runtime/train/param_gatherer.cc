#include "runtime/train/param_gatherer.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "common/check.h"
#include "runtime/device/device.h"

namespace fjord {

ParamGatherer::ParamGatherer(Communicator& comm, Gpt& model, const ZeroUnits& units, Arena& arena,
                             bool overlap, const ReducePath& path)
    : comm_(comm),
      model_(model),
      units_(units),
      overlap_(overlap),
      path_(path),
      precision_(model.precision()) {
  const size_t shard = units.shard_floats();
  master_ = arena.Floats(shard);
  working_ = master_;
  if (precision_ == Precision::kBf16) {
    working_ = arena.Bytes(shard * sizeof(bf16));
    model_.ops().model<bf16>().fill_zero(model_.device().context(), static_cast<bf16*>(working_), shard);
  }
  embeddings_.bytes = units.embeddings_window() * ElementBytes();
  embeddings_.window = static_cast<char*>(arena.Bytes(embeddings_.bytes));
  for (Slot& s : layers_) {
    s.bytes = units.layer_window() * ElementBytes();
    s.window = static_cast<char*>(arena.Bytes(s.bytes));
  }
  if (path_.stage_through_host) {
    FJORD_CHECK(path_.device != nullptr, "host staging needs the device");
    for (Slot* s : {&embeddings_, &layers_[0], &layers_[1]}) {
      s->staging = static_cast<char*>(path_.device->AllocateHost(std::max<size_t>(s->bytes, 1)));
      FJORD_CHECK(s->staging != nullptr, "cannot allocate " + std::to_string(s->bytes) +
                                             " bytes of pinned host memory to stage parameters");
    }
  }
  model_.SetParamsNeeded([this](size_t unit_begin, size_t next_begin) { Need(unit_begin, next_begin); });
}

ParamGatherer::~ParamGatherer() {
  model_.SetParamsNeeded(nullptr);
  // Gathers still in flight write the windows and the staging memory: wait for them first.
  for (Slot* s : {&embeddings_, &layers_[0], &layers_[1]}) {
    if (s->pending) (void)s->pending->Wait();
    if (s->staging != nullptr) {
      std::fill(s->staging, s->staging + s->bytes, 0);  // tenant hygiene
      path_.device->FreeHost(s->staging);
    }
  }
}

size_t ParamGatherer::ArenaBytes(const ZeroUnits::Sizes& sizes, Precision p) {
  const size_t element = p == Precision::kBf16 ? sizeof(bf16) : sizeof(float);
  return Arena::Rounded(sizes.shard * sizeof(float)) +
         (p == Precision::kBf16 ? Arena::Rounded(sizes.shard * sizeof(bf16)) : 0) +
         Arena::Rounded(sizes.embeddings_window * element) + 2 * Arena::Rounded(sizes.layer_window * element);
}

void ParamGatherer::LoadFull(const float* full) {
  Invalidate();
  std::vector<float> shard(units_.shard_floats());
  units_.Pack(full, comm_.rank(), shard.data());
  model_.device().Upload(master_, shard.data(), shard.size() * sizeof(float));
  RoundWorking(0);
}

void ParamGatherer::RoundWorking(uint64_t seed) {
  if (precision_ != Precision::kBf16) return;
  bf16* working = static_cast<bf16*>(working_);
  for (const ZeroUnits::Range& r : units_.Owned(comm_.rank())) {
    model_.ops().cast_to_bf16(model_.device().context(), working + r.local, master_ + r.local,
                              r.end - r.begin, seed, r.begin);
  }
}

void ParamGatherer::Invalidate() {
  int model_slot = 0;
  for (Slot* s : {&embeddings_, &layers_[0], &layers_[1]}) {
    const Status status = Complete(*s);
    if (error_.ok() && !status.ok()) error_ = status;
    s->unit = SIZE_MAX;
    s->ready = false;
    model_.SetParamWindow(model_slot++, 0, 0, nullptr);
  }
}

Status ParamGatherer::Launch(Slot& slot, size_t unit) {
  const ZeroUnits::Unit& u = units_.units()[unit];
  const size_t element = ElementBytes();
  const size_t mine = u.piece * static_cast<size_t>(comm_.rank()) * element;
  const char* piece = static_cast<const char*>(working_) + u.shard_offset * element;
  const DataType dtype = precision_ == Precision::kBf16 ? DataType::kBF16 : DataType::kF32;
  slot.unit = unit;
  slot.ready = false;
  StatusOr<std::unique_ptr<CommHandle>> handle = [&]() -> StatusOr<std::unique_ptr<CommHandle>> {
    if (slot.staging != nullptr) {
      path_.device->StageToHost(slot.staging + mine, piece, u.piece * element);
      return comm_.AllGatherAsync(slot.staging + mine, slot.staging, u.piece, dtype);
    }
    if (path_.device != nullptr && path_.comm_stream != nullptr)
      path_.device->OrderAfterCompute(path_.comm_stream);
    return comm_.AllGatherAsync(piece, slot.window, u.piece, dtype);
  }();
  if (!handle.ok()) return handle.status().WithContext("gathering parameter unit " + std::to_string(unit));
  slot.pending = std::move(handle).value();
  return overlap_ ? OkStatus() : Complete(slot);
}

Status ParamGatherer::Complete(Slot& slot) {
  if (!slot.pending) return OkStatus();
  const Status status = slot.pending->Wait();
  slot.pending.reset();
  if (!status.ok()) return status.WithContext("gathering parameter unit " + std::to_string(slot.unit));
  if (slot.staging != nullptr) {
    const ZeroUnits::Unit& u = units_.units()[slot.unit];
    path_.device->Upload(slot.window, slot.staging, u.padded() * ElementBytes());
  }
  slot.ready = true;
  return OkStatus();
}

void ParamGatherer::Ensure(Slot& slot, int model_slot) {
  const auto start = std::chrono::steady_clock::now();
  const Status status = Complete(slot);
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // On an error the window is set all the same (stale values, never read outside it): the pass
  // completes and the trainer discards it through TakeStatus.
  if (error_.ok() && !status.ok()) error_ = status;
  const ZeroUnits::Unit& u = units_.units()[slot.unit];
  model_.SetParamWindow(model_slot, u.begin, u.end, slot.window);
}

void ParamGatherer::Need(size_t unit_begin, size_t next_begin) {
  const size_t unit = units_.UnitStartingAt(unit_begin);
  int free_slot = 0;  // the layer window the next unit may be gathered into
  if (unit == 0) {
    if (embeddings_.unit != 0) {
      const Status status = Launch(embeddings_, 0);
      if (error_.ok() && !status.ok()) error_ = status;
    }
    Ensure(embeddings_, 0);
    free_slot = layers_[0].unit == SIZE_MAX || !layers_[0].ready ? 0 : 1;
  } else {
    int s = layers_[0].unit == unit ? 0 : layers_[1].unit == unit ? 1 : -1;
    if (s < 0) {
      // Not prefetched: the window that does not hold the unit read last (a stale prefetch there
      // is waited for and dropped).
      s = layers_[0].unit == SIZE_MAX ? 0 : layers_[1].unit == SIZE_MAX ? 1 : last_slot_ ^ 1;
      Status status = Complete(layers_[s]);
      if (status.ok()) status = Launch(layers_[s], unit);
      if (error_.ok() && !status.ok()) error_ = status;
    }
    Ensure(layers_[s], 1 + s);
    last_slot_ = s;
    free_slot = s ^ 1;
  }
  if (next_begin == ParamLayout::kNone) return;
  const size_t next = units_.UnitStartingAt(next_begin);
  if (next == 0 || layers_[0].unit == next || layers_[1].unit == next) return;
  Slot& into = layers_[free_slot];
  model_.SetParamWindow(1 + free_slot, 0, 0, nullptr);  // its old unit is not read any more
  Status status = Complete(into);
  if (status.ok()) status = Launch(into, next);
  if (error_.ok() && !status.ok()) error_ = status;
}

Status ParamGatherer::TakeStatus() {
  Status status = error_;
  error_ = OkStatus();
  return status;
}

double ParamGatherer::TakeWaitSeconds() {
  const double s = wait_seconds_;
  wait_seconds_ = 0.0;
  return s;
}

}  // namespace fjord
