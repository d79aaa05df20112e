// AdamW: one fused pass over params, grads and both moments.
//
// The update is memory-bound (four arrays read, three written), so it is a single streaming loop
// split across threads; the bias corrections are computed once per call, in double, and the
// per-element formula is shared with the CUDA twin (kernels/pointwise_math.h). With a bf16 output
// the same loop also rounds each new parameter to the working copy, saving a separate cast's
// second read of the master weights.
#include <cstddef>
#include <cstdint>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {

// One loop body for both forms; the rounding is a template parameter rather than a branch per
// element, so the fp32-only loop compiles to the same vectorised loop it always was.
template <bool kRound>
void Update(const AdamWStep& step, float* params, const float* grads, float* m, float* v, size_t n,
            bf16* params_bf16, uint64_t seed, size_t index0) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    float mi = m[i];
    float vi = v[i];
    const float p = AdamWElement(step, params[i], grads[i], mi, vi);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if constexpr (kRound) params_bf16[i].bits = ToBf16(p, seed, index0 + i);
  }
}

}  // namespace

void adamw_update(const OpContext& ctx, float* params, const float* grads, float* m, float* v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                  bf16* params_bf16, uint64_t seed, size_t index0) {
  const AdamWStep step = MakeAdamWStep(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
  if (params_bf16 == nullptr) {
    Update<false>(step, params, grads, m, v, n, nullptr, seed, index0);
  } else {
    Update<true>(step, params, grads, m, v, n, params_bf16, seed, index0);
  }
}

}  // namespace fjord::cpu
