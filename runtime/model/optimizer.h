// AdamW over a contiguous range of the flat parameter buffer: all of it (plain data-parallel)
// or this rank's ZeRO-1 shard. Weight decay applies per tensor (matrices and embeddings only),
// so a shard that cuts through a tensor still decays exactly the elements the unsharded
// optimizer would.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "runtime/model/gpt.h"
#include "runtime/model/zero_units.h"

namespace fjord {

class Arena;
class Device;

class AdamW {
 public:
  // Owns m and v for parameters [begin, end) of a buffer laid out as `layout` says, in host
  // memory; `ops` must be a host backend (CpuOps()).
  AdamW(const ParamLayout& layout, size_t begin, size_t end, const Ops& ops);
  // The same with m and v on arena.device(), taking ArenaBytes(end - begin) from `arena`.
  AdamW(const ParamLayout& layout, size_t begin, size_t end, Arena& arena);
  // ZeRO-2: m and v for the layout ranges a rank owns (ZeroUnits::Owned), range r's parameters at
  // m[r.local...]; `count` floats (ZeroUnits::shard_floats). Step then reads the gradients as the
  // shard (grads[r.local + i]), params and working by layout offset as before.
  // ZeRO-3 (params_local): params and working are this rank's shards too, indexed as m; the bf16
  // rounding still hashes the layout offset, so the values equal the unsharded optimizer's.
  AdamW(const ParamLayout& layout, std::vector<ZeroUnits::Range> ranges, size_t count, Arena& arena,
        bool params_local = false);

  // One step t >= 1: for each tensor element in [begin, end), g = grads * grad_scale, update
  // m, v and params (ops.h's adamw_update). With `working` (a bf16 copy of the whole buffer,
  // indexed as params) it also rounds each updated element into working with `seed` and the
  // element's buffer index, in the same pass: what cast_to_bf16 of the buffer would write there.
  // Padding (between tensors and after the last) is never touched. params, grads and working
  // are in the optimizer's memory (device pointers on CUDA).
  void Step(float* params, const float* grads, float lr, float beta1, float beta2, float eps,
            float weight_decay, float grad_scale, int t, bf16* working = nullptr, uint64_t seed = 0);

  size_t count() const { return count_; }  // floats of m (and of v)
  float* m() { return m_; }  // m of the first owned parameter at index 0 (the optimizer's memory)
  float* v() { return v_; }

  // Copies m and v (count() floats each) to / from host memory.
  void StateToHost(float* m, float* v) const;
  void LoadState(const float* m, const float* v);

  static size_t MemoryBytes(size_t count) { return 2 * count * sizeof(float); }
  static size_t ArenaBytes(size_t count);

 private:
  const ParamLayout& layout_;
  std::vector<ZeroUnits::Range> ranges_;  // one range at local 0 for [begin, end)
  size_t count_;
  bool grads_local_;   // grads indexed as m (ZeRO-2's shard), else by layout offset
  bool params_local_;  // params and working indexed as m (ZeRO-3's shards), else by layout offset
  Device& device_;
  const Ops& ops_;
  const OpContext& ctx_;
  HostBuffer own_m_, own_v_;  // the first constructor's
  float* m_ = nullptr;
  float* v_ = nullptr;
};

}  // namespace fjord
