// Fused softmax + cross-entropy + its gradient on the GPU, in place over the logits.
//
// One block per row: a row (Vp ~ 50k floats) is long enough to keep 512 threads busy, and a block
// reduction keeps each row's max and sum in one place without atomics, so results are
// deterministic. Three coalesced passes as in the CPU twin (kernels/cpu/classifier.cc): max, then
// the sum of Exp(x - max) accumulated in double, then dlogits = dloss * (p - onehot) written in
// place with padded columns zeroed. The third pass recomputes Exp instead of storing it in the
// second, so with write_dlogits == 0 the logits are only read. The row is re-read from L2 in passes
// 2 and 3; merging passes 1 and 2 with an online max is the next step if profiles ask for it.
// Formulas are the CPU twin's: Exp of kernels/pointwise_math.h, loss = log(sum) + max - x[target]
// in double, factor = dloss / sum rounded to float, then e * factor (no FMA with the - dloss).
// Storage type: logits are floatX (kernels/ops.h), read with ToFloat; the max, the sums and the
// loss are computed as for float, and each dlogit is computed in fp32 and rounded once with
// FromFloat<floatX>. The bf16 instance reads 2-byte elements, one per thread per iteration; a
// tuning pass should read 8 per thread (16 bytes) and merge passes 1 and 2 (online max).
// Resources (sm_90, ptxas -v of nvcc 13): 32 registers, no spills, 384 bytes of shared memory, for
// both storage types: 4 blocks of 512 per SM.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

using cuda_detail::kWarpSize;

constexpr int kBlock = 512;

// Max over the block (blockDim.x a multiple of 32); every thread gets the result. NaNs are ignored
// unless all values are NaN, like the CPU twin's compare-and-select.
__device__ inline float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <typename floatX>
__global__ void __launch_bounds__(kBlock)
    FusedClassifierKernel(floatX* logits, float* losses, const int32_t* targets, int V, int Vp, float dloss,
                          int write_dlogits) {
  __shared__ float max_scratch[kWarpSize];
  __shared__ double sum_scratch[kWarpSize];
  const size_t row = blockIdx.x;
  floatX* x = logits + row * Vp;
  const int target = targets[row];
  // Read before any thread can overwrite it in the last pass (the reductions below synchronise).
  const float target_logit = ToFloat(x[target]);

  float max = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kBlock) max = fmaxf(max, ToFloat(x[i]));
  max = BlockMax(max, max_scratch);

  double sum = 0.0;
  for (int i = threadIdx.x; i < V; i += kBlock) sum += Exp(ToFloat(x[i]) - max);
  sum = cuda_detail::BlockSum(sum, sum_scratch);
  if (threadIdx.x == 0)
    losses[row] = static_cast<float>(log(sum) + (static_cast<double>(max) - target_logit));
  if (!write_dlogits) return;

  const float factor = static_cast<float>(dloss / sum);
  for (int i = threadIdx.x; i < Vp; i += kBlock) {
    float g = 0.0f;
    if (i < V) {
      g = __fmul_rn(Exp(ToFloat(x[i]) - max), factor);  // rounded before the subtraction, as on the CPU
      if (i == target) g -= dloss;
    }
    x[i] = FromFloat<floatX>(g);
  }
}

}  // namespace

template <typename floatX>
void fused_classifier(const OpContext& ctx, floatX* logits, float* losses, const int32_t* targets, size_t N,
                      int V, int Vp, float dloss, int write_dlogits) {
  if (N == 0) return;
  FJORD_CHECK(N <= 0x7fffffffu, "fused_classifier: N = " + std::to_string(N) + " rows exceed the grid limit");
  FusedClassifierKernel<<<static_cast<unsigned int>(N), kBlock, 0, ctx.stream>>>(logits, losses, targets, V,
                                                                                 Vp, dloss, write_dlogits);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, fused_classifier)

}  // namespace fjord::cuda
