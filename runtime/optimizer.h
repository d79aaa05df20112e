// AdamW over a contiguous range of the flat parameter buffer: all of it (plain data-parallel)
// or this rank's ZeRO-1 shard. Weight decay applies per tensor (matrices and embeddings only),
// so a shard that cuts through a tensor still decays exactly the elements the unsharded
// optimizer would.
#pragma once

#include <cstddef>

#include "kernels/ops.h"
#include "runtime/gpt.h"

namespace fjord {

class AdamW {
 public:
  // Owns m and v for parameters [begin, end) of a buffer laid out as `layout` says.
  AdamW(const ParamLayout& layout, size_t begin, size_t end, const Ops& ops);

  // One step t >= 1: for each tensor element in [begin, end), g = grads * grad_scale, update
  // m, v and params (ops.h's adamw_update). Padding between tensors is never touched.
  void Step(float* params, const float* grads, float lr, float beta1, float beta2, float eps, float weight_decay,
            float grad_scale, int t);

  size_t begin() const { return begin_; }
  size_t end() const { return end_; }
  float* m() { return m_.data(); }  // m of parameter begin() + i at index i
  float* v() { return v_.data(); }

  static size_t MemoryBytes(size_t count) { return 2 * count * sizeof(float); }

 private:
  const ParamLayout& layout_;
  size_t begin_, end_;
  const Ops& ops_;
  OpContext ctx_;
  HostBuffer m_, v_;
};

}  // namespace fjord
