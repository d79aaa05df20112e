// Fused softmax + cross-entropy + its gradient, in place over the logits.
//
// The logits (N x Vp, Vp ~ 50k) are the largest activation of a training step, so each row is
// walked three times and nothing else is allocated: a max pass, a pass that stores exp(x - max)
// in place while summing it, and a pass that scales those into dloss * (p - onehot). Rows are
// independent and split across threads. The loss is taken as log(sum) + max - x[target] rather
// than -log(p[target]), so a confidently wrong target does not underflow to -log(0). The row sum
// (values in (0, 1], ~50k of them) accumulates in double. exp is the vectorisable Exp of
// kernels/pointwise_math.h: with N x V ~ 13M of them per step, libm's scalar expf would dominate.
// When no gradient is wanted, logits are left untouched.
#include <cmath>
#include <cstddef>
#include <limits>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {

void fused_classifier(const OpContext& ctx, float* logits, float* losses, const int32_t* targets, size_t N,
                      int V, int Vp, float dloss, int write_dlogits) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    float* x = logits + r * Vp;
    const int target = targets[r];
    float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
    for (int i = 0; i < V; ++i) max = x[i] > max ? x[i] : max;
    const float target_logit = x[target];

    double sum = 0.0;
    if (write_dlogits) {
#pragma omp simd reduction(+ : sum)
      for (int i = 0; i < V; ++i) {
        const float e = Exp(x[i] - max);
        x[i] = e;
        sum += e;
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int i = 0; i < V; ++i) sum += Exp(x[i] - max);
    }
    losses[r] = static_cast<float>(std::log(sum) + (static_cast<double>(max) - target_logit));

    if (write_dlogits) {
      const float factor = static_cast<float>(dloss / sum);
#pragma omp simd
      for (int i = 0; i < V; ++i) x[i] *= factor;
      x[target] -= dloss;
      for (int i = V; i < Vp; ++i) x[i] = 0.0f;
    }
  }
}

}  // namespace fjord::cpu
