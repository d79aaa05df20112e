// Token + position embedding on the GPU (forward only so far).
//
// One thread per output element in a grid-stride loop: consecutive threads read consecutive
// channels of one wte row and one wpe row, so loads and stores coalesce for any C, aligned or not.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

__global__ void EncoderForwardKernel(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                                     int T, int C, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t bt = i / C;
    const int c = static_cast<int>(i % C);
    const int t = static_cast<int>(bt % T);
    out[i] = wte[static_cast<size_t>(tokens[bt]) * C + c] + wpe[static_cast<size_t>(t) * C + c];
  }
}

}  // namespace

void encoder_forward(const OpContext& ctx, float* out, const int32_t* tokens, const float* wte,
                     const float* wpe, int B, int T, int C) {
  const size_t n = static_cast<size_t>(B) * T * C;
  if (n == 0) return;
  EncoderForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, tokens, wte, wpe, T,
                                                                                   C, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

}  // namespace fjord::cuda
