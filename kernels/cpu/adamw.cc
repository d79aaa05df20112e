// AdamW: one fused pass over params, grads and both moments.
//
// The update is memory-bound (four arrays read, three written), so it is a single streaming loop
// split across threads; the bias corrections are computed once per call, in double, and the
// per-element formula is shared with the CUDA twin (kernels/pointwise_math.h).
#include <cstddef>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {

void adamw_update(const OpContext& ctx, float* params, const float* grads, float* m, float* v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  int t) {
  const AdamWStep step = MakeAdamWStep(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    float mi = m[i];
    float vi = v[i];
    params[i] = AdamWElement(step, params[i], grads[i], mi, vi);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace fjord::cpu
