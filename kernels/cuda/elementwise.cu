// Elementwise ops on the GPU: GELU, residual add, zero fill.
//
// Memory-bound one-pass kernels with grid-stride loops: any n works, no alignment is assumed, and
// one launch configuration serves every size. GELU evaluates the per-element formula the CPU twin
// uses (kernels/pointwise_math.h), so the two differ only by expf's last-bit rounding.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

__global__ void GeluForwardKernel(float* out, const float* inp, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = GeluForward(inp[i]);
}

__global__ void GeluBackwardKernel(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    dinp[i] += GeluDerivative(inp[i]) * dout[i];
}

__global__ void ResidualForwardKernel(float* out, const float* a, const float* b, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = a[i] + b[i];
}

__global__ void ResidualBackwardKernel(float* da, float* db, const float* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const float d = dout[i];
    da[i] += d;
    db[i] += d;
  }
}

__global__ void CastToBf16Kernel(uint16_t* out, const float* inp, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = ToBf16(inp[i], seed, i);
}

__global__ void CastFromBf16Kernel(float* out, const uint16_t* inp, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = FromBf16(inp[i]);
}

}  // namespace

void cast_to_bf16(const OpContext& ctx, uint16_t* out, const float* inp, size_t n, uint64_t seed) {
  if (n == 0) return;
  CastToBf16Kernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n, seed);
  FJORD_CUDA_CHECK_LAUNCH();
}

void cast_from_bf16(const OpContext& ctx, float* out, const uint16_t* inp, size_t n) {
  if (n == 0) return;
  CastFromBf16Kernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

void gelu_forward(const OpContext& ctx, float* out, const float* inp, size_t n) {
  if (n == 0) return;
  GeluForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

void gelu_backward(const OpContext& ctx, float* dinp, const float* inp, const float* dout, size_t n) {
  if (n == 0) return;
  GeluBackwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(dinp, inp, dout, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

void residual_forward(const OpContext& ctx, float* out, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  ResidualForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, a, b, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

void residual_backward(const OpContext& ctx, float* da, float* db, const float* dout, size_t n) {
  if (n == 0) return;
  ResidualBackwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(da, db, dout, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

void fill_zero(const OpContext& ctx, float* x, size_t n) {
  if (n == 0) return;
  FJORD_CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), ctx.stream));
}

}  // namespace fjord::cuda
