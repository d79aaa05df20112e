// AdamW on the GPU: one fused, memory-bound pass over params, grads and both moments, and, in
// bf16, the stochastically rounded working copy of the new params (the hash of ToBf16, so it
// matches a separate cast_to_bf16 of the same values bit for bit).
//
// The step constants (bias corrections in double) are computed once on the host and passed by
// value; the per-element update is the CPU twin's AdamWElement (kernels/pointwise_math.h), so the
// backends differ only where nvcc contracts a multiply-add into an FMA.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

// params_bf16 is uniform across the grid, so the branch costs no divergence.
__global__ void AdamWKernel(float* params, const float* grads, float* m, float* v, size_t n, AdamWStep step,
                            bf16* params_bf16, uint64_t seed, size_t index0) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    float mi = m[i];
    float vi = v[i];
    const float p = AdamWElement(step, params[i], grads[i], mi, vi);
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (params_bf16 != nullptr) params_bf16[i].bits = ToBf16(p, seed, index0 + i);
  }
}

}  // namespace

void adamw_update(const OpContext& ctx, float* params, const float* grads, float* m, float* v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                  bf16* params_bf16, uint64_t seed, size_t index0) {
  if (n == 0) return;
  const AdamWStep step = MakeAdamWStep(lr, beta1, beta2, eps, weight_decay, grad_scale, t);
  AdamWKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(params, grads, m, v, n, step,
                                                                          params_bf16, seed, index0);
  FJORD_CUDA_CHECK_LAUNCH();
}

}  // namespace fjord::cuda
