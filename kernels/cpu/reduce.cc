// Sum of squares, for the global gradient norm.
//
// Accumulates in double: the gradient vector has millions of elements of very different sizes,
// and a float running sum would drop the small ones once it is large. The OpenMP reduction makes
// the result depend on the thread count's partition but not on timing.
#include <cstddef>

#include "kernels/ops.h"

namespace fjord::cpu {

void sum_squares(const OpContext& ctx, float* out, const float* x, size_t n) {
  double acc = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : acc)
  for (size_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  out[0] = static_cast<float>(acc);
}

}  // namespace fjord::cpu
