#include "runtime/train/unit_reducer.h"

#include <algorithm>
#include <chrono>

#include "common/check.h"
#include "runtime/device/device.h"

namespace fjord {

UnitReducer::UnitReducer(Communicator& comm, Gpt& model, const ZeroUnits& units, Arena& arena, bool overlap,
                         const ReducePath& path)
    : comm_(comm), model_(model), units_(units), overlap_(overlap), path_(path) {
  shard_ = arena.Floats(units.shard_floats());
  embeddings_.floats = units.embeddings_window();
  embeddings_.window = arena.Floats(embeddings_.floats);
  for (Slot& s : layers_) {
    s.floats = units.layer_window();
    s.window = arena.Floats(s.floats);
  }
  if (path_.stage_through_host) {
    FJORD_CHECK(path_.device != nullptr, "host staging needs the device");
    for (Slot* s : {&embeddings_, &layers_[0], &layers_[1]}) {
      s->staging =
          static_cast<float*>(path_.device->AllocateHost(std::max<size_t>(s->floats, 1) * sizeof(float)));
      FJORD_CHECK(s->staging != nullptr, "cannot allocate " + std::to_string(s->floats * sizeof(float)) +
                                             " bytes of pinned host memory to stage gradients");
    }
  }
}

UnitReducer::~UnitReducer() {
  // Reduce-scatters still in flight write the windows (arena) and the staging memory: wait for
  // them before those are zeroed and freed (as GradReducer's destructor).
  for (Slot* s : {&embeddings_, &layers_[0], &layers_[1]}) {
    if (s->pending) (void)s->pending->Wait();
    if (s->staging != nullptr) {
      std::fill(s->staging, s->staging + s->floats, 0.0f);  // tenant hygiene
      path_.device->FreeHost(s->staging);
    }
  }
}

size_t UnitReducer::ArenaBytes(const ZeroUnits::Sizes& sizes) {
  return Arena::Rounded(sizes.shard * sizeof(float)) +
         Arena::Rounded(sizes.embeddings_window * sizeof(float)) +
         2 * Arena::Rounded(sizes.layer_window * sizeof(float));
}

void UnitReducer::ZeroShard() {
  model_.ops().f32.fill_zero(model_.device().context(), shard_, units_.shard_floats());
}

void UnitReducer::Assign(Slot& slot, int model_slot, size_t unit) {
  const ZeroUnits::Unit& u = units_.units()[unit];
  model_.ops().f32.fill_zero(model_.device().context(), slot.window, u.padded());
  slot.unit = unit;
  model_.SetGradWindow(model_slot, u.begin, u.end, slot.window);
}

Status UnitReducer::Begin() {
  Assign(embeddings_, 0, 0);
  next_layer_slot_ = 0;
  Assign(layers_[next_layer_slot_], 1, units_.units().size() - 1);  // the tail, done first
  return OkStatus();
}

Status UnitReducer::Launch(Slot& slot) {
  const ZeroUnits::Unit& u = units_.units()[slot.unit];
  const size_t mine = u.piece * static_cast<size_t>(comm_.rank());
  float* data = slot.window;
  if (slot.staging != nullptr) {
    path_.device->StageToHost(slot.staging, slot.window, u.padded() * sizeof(float));
    data = slot.staging;
  } else if (path_.device != nullptr && path_.comm_stream != nullptr) {
    path_.device->OrderAfterCompute(path_.comm_stream);
  }
  StatusOr<std::unique_ptr<CommHandle>> handle =
      comm_.ReduceScatterAsync(data, data + mine, u.piece, DataType::kF32, ReduceOp::kAvg);
  if (!handle.ok()) return handle.status().WithContext("gradient unit " + std::to_string(slot.unit));
  slot.pending = std::move(handle).value();
  return overlap_ ? OkStatus() : Complete(slot);
}

Status UnitReducer::Complete(Slot& slot) {
  if (!slot.pending) return OkStatus();
  const Status status = slot.pending->Wait();
  slot.pending.reset();
  if (!status.ok()) return status;
  const ZeroUnits::Unit& u = units_.units()[slot.unit];
  const size_t mine = u.piece * static_cast<size_t>(comm_.rank());
  float* piece = slot.window + mine;
  if (slot.staging != nullptr) path_.device->Upload(piece, slot.staging + mine, u.piece * sizeof(float));
  float* into = shard_ + u.shard_offset;
  model_.ops().f32.residual_forward(model_.device().context(), into, into, piece, u.piece);
  return OkStatus();
}

void UnitReducer::OnReady(size_t begin, size_t /*end*/) {
  if (!error_.ok()) return;
  const size_t unit = units_.UnitStartingAt(begin);
  if (unit == 0) {
    error_ = Launch(embeddings_);
    return;
  }
  Slot& done = layers_[next_layer_slot_];
  FJORD_CHECK(done.unit == unit, "unit " + std::to_string(unit) + " completed while unit " +
                                     std::to_string(done.unit) + " was being written");
  error_ = Launch(done);
  if (!error_.ok() || unit == 1) return;  // below layer 0 are the embeddings, in their own window
  next_layer_slot_ ^= 1;
  Slot& next = layers_[next_layer_slot_];
  const auto start = std::chrono::steady_clock::now();
  error_ = Complete(next);
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (error_.ok()) Assign(next, 1, unit - 1);
}

Status UnitReducer::Finish() {
  Status status = error_;
  for (Slot* s : {&layers_[0], &layers_[1], &embeddings_}) {
    Status c = Complete(*s);
    if (status.ok() && !c.ok()) status = c;
  }
  error_ = OkStatus();
  return status;
}

double UnitReducer::TakeWaitSeconds() {
  const double s = wait_seconds_;
  wait_seconds_ = 0.0;
  return s;
}

Status UnitReducer::AllGatherParams(float* params) {
  const size_t rank = static_cast<size_t>(comm_.rank());
  // Decreasing order: the last piece of unit u reaches into unit u + 1, whose values are then
  // already the gathered ones, so the piece carries them unchanged.
  for (size_t i = units_.units().size(); i-- > 0;) {
    const ZeroUnits::Unit& u = units_.units()[i];
    float* base = params + u.begin;
    if (path_.stage_through_host) {
      float* host = i == 0 ? embeddings_.staging : layers_[0].staging;
      path_.device->StageToHost(host + rank * u.piece, base + rank * u.piece, u.piece * sizeof(float));
      FJORD_RETURN_IF_ERROR(comm_.AllGather(host + rank * u.piece, host, u.piece, DataType::kF32));
      path_.device->Upload(base, host, u.padded() * sizeof(float));
      continue;
    }
    if (path_.device != nullptr && path_.comm_stream != nullptr)
      path_.device->OrderAfterCompute(path_.comm_stream);
    FJORD_RETURN_IF_ERROR(comm_.AllGather(base + rank * u.piece, base, u.piece, DataType::kF32));
  }
  return OkStatus();
}

}  // namespace fjord
