#include "runtime/optimizer.h"

#include <algorithm>

namespace fjord {

AdamW::AdamW(const ParamLayout& layout, size_t begin, size_t end, const Ops& ops)
    : layout_(layout), begin_(begin), end_(end), ops_(ops), m_(end - begin), v_(end - begin) {}

void AdamW::Step(float* params, const float* grads, float lr, float beta1, float beta2, float eps,
                 float weight_decay, float grad_scale, int t) {
  for (const ParamTensor& tensor : layout_.tensors()) {
    const size_t lo = std::max(begin_, tensor.offset);
    const size_t hi = std::min(end_, tensor.offset + tensor.size());
    if (lo >= hi) continue;
    ops_.adamw_update(ctx_, params + lo, grads + lo, m_.data() + (lo - begin_), v_.data() + (lo - begin_), hi - lo,
                      lr, beta1, beta2, eps, tensor.weight_decay ? weight_decay : 0.0f, grad_scale, t);
  }
}

}  // namespace fjord
