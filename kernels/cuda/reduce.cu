// Sum of squares on the GPU, deterministic: two passes, no atomics.
//
// Pass 1 runs a grid whose size depends only on n; each block reduces its grid-stride share in
// double, in a fixed order, into one partial. Pass 2, a single block, reduces the partials in a
// fixed order and writes the float result. So the same input gives bit-identical results on every
// run and every GPU model, which float atomics would not. The partials live in a __device__ array
// of this module (no allocation, no workspace contract): calls on the same device must therefore
// be ordered (one stream, or synchronised streams); concurrent calls would race on it.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 512;
constexpr int kMaxPartials = 1024;
constexpr size_t kElementsPerBlock = size_t{kBlock} * 16;  // enough work per block to hide latency

__device__ double g_partials[kMaxPartials];

__global__ void SumSquaresPartialKernel(const float* x, size_t n) {
  __shared__ double scratch[cuda_detail::kWarpSize];
  double acc = 0.0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const double xi = x[i];
    acc += xi * xi;
  }
  acc = cuda_detail::BlockSum(acc, scratch);
  if (threadIdx.x == 0) g_partials[blockIdx.x] = acc;
}

__global__ void SumSquaresFinalKernel(float* out, int partials) {
  __shared__ double scratch[cuda_detail::kWarpSize];
  double acc = 0.0;
  for (int i = threadIdx.x; i < partials; i += blockDim.x) acc += g_partials[i];
  acc = cuda_detail::BlockSum(acc, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<float>(acc);
}

}  // namespace

void sum_squares(const OpContext& ctx, float* out, const float* x, size_t n) {
  int partials = 0;
  if (n > 0) {
    const size_t blocks = (n + kElementsPerBlock - 1) / kElementsPerBlock;
    partials = static_cast<int>(blocks < kMaxPartials ? blocks : kMaxPartials);
    SumSquaresPartialKernel<<<partials, kBlock, 0, ctx.stream>>>(x, n);
    FJORD_CUDA_CHECK_LAUNCH();
  }
  SumSquaresFinalKernel<<<1, kBlock, 0, ctx.stream>>>(out, partials);
  FJORD_CUDA_CHECK_LAUNCH();
}

}  // namespace fjord::cuda
