#include "runtime/model/optimizer.h"

#include <algorithm>

#include "runtime/device/device.h"

namespace fjord {

AdamW::AdamW(const ParamLayout& layout, size_t begin, size_t end, const Ops& ops)
    : layout_(layout),
      begin_(begin),
      end_(end),
      device_(CpuDevice()),
      ops_(ops),
      ctx_(CpuDevice().context()),
      own_m_(end - begin),
      own_v_(end - begin),
      m_(own_m_.data()),
      v_(own_v_.data()) {}

AdamW::AdamW(const ParamLayout& layout, size_t begin, size_t end, Arena& arena)
    : layout_(layout),
      begin_(begin),
      end_(end),
      device_(arena.device()),
      ops_(arena.device().ops()),
      ctx_(arena.device().context()),
      m_(arena.Floats(end - begin)),
      v_(arena.Floats(end - begin)) {}

size_t AdamW::ArenaBytes(size_t count) { return 2 * Arena::Rounded(count * sizeof(float)); }

void AdamW::StateToHost(float* m, float* v) const {
  device_.Download(m, m_, (end_ - begin_) * sizeof(float));
  device_.Download(v, v_, (end_ - begin_) * sizeof(float));
}

void AdamW::LoadState(const float* m, const float* v) {
  device_.Upload(m_, m, (end_ - begin_) * sizeof(float));
  device_.Upload(v_, v, (end_ - begin_) * sizeof(float));
}

void AdamW::Step(float* params, const float* grads, float lr, float beta1, float beta2, float eps,
                 float weight_decay, float grad_scale, int t, bf16* working, uint64_t seed) {
  for (const ParamTensor& tensor : layout_.tensors()) {
    const size_t lo = std::max(begin_, tensor.offset);
    const size_t hi = std::min(end_, tensor.offset + tensor.size());
    if (lo >= hi) continue;
    ops_.adamw_update(ctx_, params + lo, grads + lo, m_ + (lo - begin_), v_ + (lo - begin_), hi - lo, lr,
                      beta1, beta2, eps, tensor.weight_decay ? weight_decay : 0.0f, grad_scale, t,
                      working == nullptr ? nullptr : working + lo, seed, lo);
  }
}

}  // namespace fjord
