// Elementwise ops on the GPU: GELU, SwiGLU, residual add, zero fill, the bf16 casts.
//
// Memory-bound one-pass kernels with grid-stride loops: any n works, no alignment is assumed, and
// one launch configuration serves every size. GELU evaluates the per-element formula the CPU twin
// uses (kernels/pointwise_math.h), so the two differ only by expf's last-bit rounding (which can
// flip the final rounding to bf16 by one ulp).
//
// Storage type: the model ops are templates over floatX (kernels/ops.h). Each element is read
// with ToFloat, computed in fp32 and written once with FromFloat<floatX> (round to nearest even,
// bit-identical with the CPU twin; __float2bfloat16_rn would differ in NaN payloads), so with
// floatX = float the kernels are the fp32 ones unchanged. The bf16 instances move one 2-byte
// element per thread per iteration (64-byte warp transactions); a tuning pass should give each
// thread 8 consecutive elements (one 16-byte load or store) when n and the pointers allow it.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

template <typename floatX>
__global__ void GeluForwardKernel(floatX* out, const floatX* inp, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = FromFloat<floatX>(GeluForward(ToFloat(inp[i])));
}

template <typename floatX>
__global__ void GeluBackwardKernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    dinp[i] = FromFloat<floatX>(ToFloat(dinp[i]) + GeluDerivative(ToFloat(inp[i])) * ToFloat(dout[i]));
}

template <typename floatX>
__global__ void ResidualForwardKernel(floatX* out, const floatX* a, const floatX* b, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = FromFloat<floatX>(ToFloat(a[i]) + ToFloat(b[i]));
}

template <typename floatX>
__global__ void ResidualBackwardKernel(floatX* da, floatX* db, const floatX* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const float d = ToFloat(dout[i]);
    da[i] = FromFloat<floatX>(ToFloat(da[i]) + d);
    db[i] = FromFloat<floatX>(ToFloat(db[i]) + d);
  }
}

// One thread per element of out[N, H]; gate and up of row r are inp[r, 0:H] and inp[r, H:2H].
template <typename floatX>
__global__ void SwigluForwardKernel(floatX* out, const floatX* inp, size_t N, int H) {
  const size_t n = N * H;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t r = i / H, c = i % H;
    const floatX* gate = inp + r * 2 * H;
    out[i] = FromFloat<floatX>(SiluForward(ToFloat(gate[c])) * ToFloat(gate[H + c]));
  }
}

template <typename floatX>
__global__ void SwigluBackwardKernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t N, int H) {
  const size_t n = N * H;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t r = i / H, c = i % H;
    const size_t g = r * 2 * H + c, u = g + H;
    const float gv = ToFloat(inp[g]), d = ToFloat(dout[i]);
    dinp[g] = FromFloat<floatX>(ToFloat(dinp[g]) + SiluDerivative(gv) * ToFloat(inp[u]) * d);
    dinp[u] = FromFloat<floatX>(ToFloat(dinp[u]) + SiluForward(gv) * d);
  }
}

__global__ void CastToBf16Kernel(bf16* out, const float* inp, size_t n, uint64_t seed, size_t index0) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i].bits = ToBf16(inp[i], seed, index0 + i);
}

__global__ void CastFromBf16Kernel(float* out, const bf16* inp, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = FromBf16(inp[i].bits);
}

}  // namespace

void cast_to_bf16(const OpContext& ctx, bf16* out, const float* inp, size_t n, uint64_t seed, size_t index0) {
  if (n == 0) return;
  CastToBf16Kernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n, seed, index0);
  FJORD_CUDA_CHECK_LAUNCH();
}

void cast_from_bf16(const OpContext& ctx, float* out, const bf16* inp, size_t n) {
  if (n == 0) return;
  CastFromBf16Kernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n);
  FJORD_CUDA_CHECK_LAUNCH();
}

template <typename floatX>
void gelu_forward(const OpContext& ctx, floatX* out, const floatX* inp, size_t n) {
  if (n == 0) return;
  GeluForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, n);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, gelu_forward)

template <typename floatX>
void gelu_backward(const OpContext& ctx, floatX* dinp, const floatX* inp, const floatX* dout, size_t n) {
  if (n == 0) return;
  GeluBackwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(dinp, inp, dout, n);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, gelu_backward)

template <typename floatX>
void residual_forward(const OpContext& ctx, floatX* out, const floatX* a, const floatX* b, size_t n) {
  if (n == 0) return;
  ResidualForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, a, b, n);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, residual_forward)

template <typename floatX>
void residual_backward(const OpContext& ctx, floatX* da, floatX* db, const floatX* dout, size_t n) {
  if (n == 0) return;
  ResidualBackwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(da, db, dout, n);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, residual_backward)

template <typename floatX>
void swiglu_forward(const OpContext& ctx, floatX* out, const floatX* inp, size_t N, int H) {
  const size_t n = N * H;
  if (n == 0) return;
  SwigluForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, N, H);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, swiglu_forward)

template <typename floatX>
void swiglu_backward(const OpContext& ctx, floatX* dinp, const floatX* inp, const floatX* dout, size_t N,
                     int H) {
  const size_t n = N * H;
  if (n == 0) return;
  SwigluBackwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(dinp, inp, dout, N, H);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, swiglu_backward)

// All-zero bytes are +0 in both float and bf16.
template <typename floatX>
void fill_zero(const OpContext& ctx, floatX* x, size_t n) {
  if (n == 0) return;
  FJORD_CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(floatX), ctx.stream));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, fill_zero)

}  // namespace fjord::cuda
