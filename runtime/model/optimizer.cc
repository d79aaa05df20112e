#include "runtime/model/optimizer.h"

#include <algorithm>
#include <utility>

#include "runtime/device/device.h"

namespace fjord {

AdamW::AdamW(const ParamLayout& layout, size_t begin, size_t end, const Ops& ops)
    : layout_(layout),
      ranges_{{begin, end, 0}},
      count_(end - begin),
      grads_local_(false),
      params_local_(false),
      device_(CpuDevice()),
      ops_(ops),
      ctx_(CpuDevice().context()),
      own_m_(end - begin),
      own_v_(end - begin),
      m_(own_m_.data()),
      v_(own_v_.data()) {}

AdamW::AdamW(const ParamLayout& layout, size_t begin, size_t end, Arena& arena)
    : layout_(layout),
      ranges_{{begin, end, 0}},
      count_(end - begin),
      grads_local_(false),
      params_local_(false),
      device_(arena.device()),
      ops_(arena.device().ops()),
      ctx_(arena.device().context()),
      m_(arena.Floats(end - begin)),
      v_(arena.Floats(end - begin)) {}

AdamW::AdamW(const ParamLayout& layout, std::vector<ZeroUnits::Range> ranges, size_t count, Arena& arena,
             bool params_local)
    : layout_(layout),
      ranges_(std::move(ranges)),
      count_(count),
      grads_local_(true),
      params_local_(params_local),
      device_(arena.device()),
      ops_(arena.device().ops()),
      ctx_(arena.device().context()),
      m_(arena.Floats(count)),
      v_(arena.Floats(count)) {}

size_t AdamW::ArenaBytes(size_t count) { return 2 * Arena::Rounded(count * sizeof(float)); }

void AdamW::StateToHost(float* m, float* v) const {
  device_.Download(m, m_, count_ * sizeof(float));
  device_.Download(v, v_, count_ * sizeof(float));
}

void AdamW::LoadState(const float* m, const float* v) {
  device_.Upload(m_, m, count_ * sizeof(float));
  device_.Upload(v_, v, count_ * sizeof(float));
}

void AdamW::Step(float* params, const float* grads, float lr, float beta1, float beta2, float eps,
                 float weight_decay, float grad_scale, int t, bf16* working, uint64_t seed) {
  const std::vector<ParamTensor>& tensors = layout_.tensors();
  for (const ZeroUnits::Range& r : ranges_) {
    // The first tensor that ends after r.begin (tensors are in offset order).
    auto it = std::upper_bound(tensors.begin(), tensors.end(), r.begin,
                               [](size_t b, const ParamTensor& t) { return b < t.offset + t.size(); });
    for (; it != tensors.end() && it->offset < r.end; ++it) {
      const size_t lo = std::max(r.begin, it->offset);
      const size_t hi = std::min(r.end, it->offset + it->size());
      if (lo >= hi) continue;
      const size_t local = r.local + (lo - r.begin);
      const size_t p = params_local_ ? local : lo;
      ops_.adamw_update(ctx_, params + p, grads + (grads_local_ ? local : lo), m_ + local, v_ + local,
                        hi - lo, lr, beta1, beta2, eps, it->weight_decay ? weight_decay : 0.0f, grad_scale, t,
                        working == nullptr ? nullptr : working + p, seed, lo);
    }
  }
}

}  // namespace fjord
