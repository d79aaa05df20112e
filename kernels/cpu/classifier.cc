// Fused softmax + cross-entropy + its gradient, in place over the logits.
//
// The logits (N x Vp, Vp ~ 50k) are the largest activation of a training step, so each row is
// walked three times and, for float, nothing else is allocated: a max pass, a pass that stores
// exp(x - max) in place while summing it, and a pass that scales those into dloss * (p - onehot).
// Rows are independent and split across threads. The loss is taken as log(sum) + max - x[target]
// rather than -log(p[target]), so a confidently wrong target does not underflow to -log(0). The
// row sum (values in (0, 1], ~50k of them) accumulates in double. exp is the vectorisable Exp of
// kernels/pointwise_math.h: with N x V ~ 13M of them per step, libm's scalar expf would dominate.
// When no gradient is wanted, logits are left untouched.
// With bf16 logits the same fp32 arithmetic runs on the exact bf16 values, but the exps are kept
// in an fp32 row per thread instead of in place, so that each dlogit (the target's included) is
// rounded to bf16 once, from its fp32 value.
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {

template <typename floatX>
void fused_classifier(const OpContext& ctx, floatX* logits, float* losses, const int32_t* targets, size_t N,
                      int V, int Vp, float dloss, int write_dlogits) {
  constexpr bool kExpInPlace = std::is_same_v<floatX, float>;
#pragma omp parallel
  {
    std::vector<float> exp_row(kExpInPlace || !write_dlogits ? 0 : V);
#pragma omp for schedule(static)
    for (size_t r = 0; r < N; ++r) {
      floatX* x = logits + r * Vp;
      float* e;  // exp(x - max) of the row, for the dlogits
      if constexpr (kExpInPlace) {
        e = x;
      } else {
        e = exp_row.data();
      }
      const int target = targets[r];
      float max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max)
      for (int i = 0; i < V; ++i) max = ToFloat(x[i]) > max ? ToFloat(x[i]) : max;
      const float target_logit = ToFloat(x[target]);

      double sum = 0.0;
      if (write_dlogits) {
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; ++i) {
          const float ei = Exp(ToFloat(x[i]) - max);
          e[i] = ei;
          sum += ei;
        }
      } else {
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; ++i) sum += Exp(ToFloat(x[i]) - max);
      }
      losses[r] = static_cast<float>(std::log(sum) + (static_cast<double>(max) - target_logit));

      if (write_dlogits) {
        const float factor = static_cast<float>(dloss / sum);
        // Read before the loop: for float, e is x and the loop overwrites it.
        const float target_p = e[target] * factor;
#pragma omp simd
        for (int i = 0; i < V; ++i) x[i] = FromFloat<floatX>(e[i] * factor);
        x[target] = FromFloat<floatX>(target_p - dloss);
        for (int i = V; i < Vp; ++i) x[i] = FromFloat<floatX>(0.0f);
      }
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, fused_classifier)

}  // namespace fjord::cpu
