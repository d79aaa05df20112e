// LayerNorm on the GPU, alone or fused with the residual add that precedes it, and RMSNorm (Llama)
// with the same kernel shapes (a warp per row; dweight by 32-channel column blocks) minus the mean
// and the bias.
//
// Forward and dinp: one warp per row, which suits GPT-2's C (hundreds to a few thousand): the row
// is read with coalesced lane-strided loads, reduced with warp shuffles, and re-read from cache for
// the second (centred variance) and output passes. dweight and dbias are column sums over all N
// rows: a block owns 32 channels, its 32 x 32 threads stride over rows and then reduce down the
// columns in shared memory in a fixed order. No atomics and no scratch buffer, so the result is
// deterministic; the price is only C / 32 blocks for this pass, which is acceptable next to the
// GEMMs and is the place to optimise (row-chunked partials) if profiles say so.
//
// residual_layernorm_forward keeps the forward's warp per row: its first pass reads a and b,
// stores the rounded residual and sums the stored values; the variance and output passes re-read
// the residual from cache through the device function the plain kernel ends with. It therefore
// equals residual_forward + layernorm_forward bit for bit (same lane-strided sums, same warp
// butterflies, same expressions), while DRAM sees a and b read and residual written once instead
// of residual also read back by a second kernel.
//
// Storage type: out, inp, weight, bias, dinp and dout are floatX (kernels/ops.h); mean, rstd,
// dweight and dbias are fp32. Every value is read with ToFloat and every statistic and sum is
// fp32, as for float; each floatX output is rounded once with FromFloat<floatX> (dinp: the prior
// value read, the gradient added in fp32, then rounded). The row kernels re-read a row from cache
// (twice or three times); with bf16 a tuning pass should keep the row in registers (C / 32 values
// per lane) and use 16-byte loads.
// Resources (sm_90, ptxas -v of nvcc 13), both storage types: at most 32 registers, no spills (the
// fused forward kernel 32, as the plain one); the column-sum kernel holds 8.25 KB of fp32 partials
// in shared memory, the row kernels none.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

using cuda_detail::kWarpSize;
using cuda_detail::WarpSum;

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // warps per block in the row kernels
constexpr int kColumnRows = 32;   // threadIdx.y extent in the column-sum kernel

// The rest of one warp's forward row once each lane has summed its lane-strided elements of x into
// `sum`: mean, the centred variance (x re-read from cache), the outputs and the statistics. Both
// forward kernels end with it, so the fused one reduces and rounds exactly as the plain one.
template <typename floatX>
__device__ void NormalizeRow(floatX* o, float* mean, float* rstd, const floatX* x, const floatX* weight,
                             const floatX* bias, int C, int lane, float sum) {
  const float m = WarpSum(sum) / C;
  float var = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float xc = ToFloat(x[c]);
    var += (xc - m) * (xc - m);
  }
  const float s = 1.0f / sqrtf(WarpSum(var) / C + kEps);
  for (int c = lane; c < C; c += kWarpSize)
    o[c] = FromFloat<floatX>((ToFloat(x[c]) - m) * s * ToFloat(weight[c]) + ToFloat(bias[c]));
  if (lane == 0) {
    *mean = m;
    *rstd = s;
  }
}

template <typename floatX>
__global__ void LayerNormForwardKernel(floatX* out, float* mean, float* rstd, const floatX* inp,
                                       const floatX* weight, const floatX* bias, size_t N, int C) {
  const size_t row = blockIdx.x * size_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;  // whole warps exit together: the shuffles below stay full-warp
  const floatX* x = inp + row * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) sum += ToFloat(x[c]);
  NormalizeRow(out + row * C, mean + row, rstd + row, x, weight, bias, C, lane, sum);
}

// Each lane stores its elements of the residual row and sums the stored (rounded) values in the
// order LayerNormForwardKernel reads them back; the rest re-reads the lane's own stores, which a
// thread always sees.
template <typename floatX>
__global__ void ResidualLayerNormForwardKernel(floatX* residual, floatX* out, float* mean, float* rstd,
                                               const floatX* a, const floatX* b, const floatX* weight,
                                               const floatX* bias, size_t N, int C) {
  const size_t row = blockIdx.x * size_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;  // whole warps exit together: the shuffles below stay full-warp
  const floatX* ar = a + row * C;
  const floatX* br = b + row * C;
  floatX* x = residual + row * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const floatX xc = FromFloat<floatX>(ToFloat(ar[c]) + ToFloat(br[c]));
    x[c] = xc;
    sum += ToFloat(xc);
  }
  NormalizeRow(out + row * C, mean + row, rstd + row, x, weight, bias, C, lane, sum);
}

template <typename floatX>
__global__ void LayerNormBackwardInputKernel(floatX* dinp, const floatX* dout, const floatX* inp,
                                             const floatX* weight, const float* mean, const float* rstd,
                                             size_t N, int C) {
  const size_t row = blockIdx.x * size_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;
  const floatX* x = inp + row * C;
  const floatX* d = dout + row * C;
  const float m = mean[row];
  const float s = rstd[row];
  float dnorm_sum = 0.0f;
  float dnorm_norm_sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) {
    const float dnorm = ToFloat(weight[c]) * ToFloat(d[c]);
    dnorm_sum += dnorm;
    dnorm_norm_sum += dnorm * (ToFloat(x[c]) - m) * s;
  }
  const float dnorm_mean = WarpSum(dnorm_sum) / C;
  const float dnorm_norm_mean = WarpSum(dnorm_norm_sum) / C;
  floatX* di = dinp + row * C;
  for (int c = lane; c < C; c += kWarpSize) {
    const float norm = (ToFloat(x[c]) - m) * s;
    di[c] = FromFloat<floatX>(ToFloat(di[c]) +
                              (ToFloat(weight[c]) * ToFloat(d[c]) - dnorm_mean - norm * dnorm_norm_mean) * s);
  }
}

// blockDim = (32, kColumnRows); block b owns channels [32 b, 32 b + 32).
template <typename floatX>
__global__ void LayerNormBackwardParamKernel(float* dweight, float* dbias, const floatX* dout,
                                             const floatX* inp, const float* mean, const float* rstd,
                                             size_t N, int C) {
  __shared__ float dw_part[kColumnRows][kWarpSize + 1];  // +1: no bank conflicts reading columns
  __shared__ float db_part[kColumnRows][kWarpSize + 1];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  float dw = 0.0f;
  float db = 0.0f;
  if (c < C) {
    for (size_t r = threadIdx.y; r < N; r += kColumnRows) {
      const float d = ToFloat(dout[r * C + c]);
      dw += (ToFloat(inp[r * C + c]) - mean[r]) * rstd[r] * d;
      db += d;
    }
  }
  dw_part[threadIdx.y][threadIdx.x] = dw;
  db_part[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float dw_total = 0.0f;
    float db_total = 0.0f;
    for (int y = 0; y < kColumnRows; ++y) {
      dw_total += dw_part[y][threadIdx.x];
      db_total += db_part[y][threadIdx.x];
    }
    dweight[c] += dw_total;
    dbias[c] += db_total;
  }
}

template <typename floatX>
__global__ void RmsNormForwardKernel(floatX* out, float* rstd, const floatX* inp, const floatX* weight,
                                     size_t N, int C, float eps) {
  const size_t row = blockIdx.x * size_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;  // whole warps exit together
  const floatX* x = inp + row * C;
  float ss = 0.0f;
  for (int c = lane; c < C; c += kWarpSize) ss += ToFloat(x[c]) * ToFloat(x[c]);
  const float s = 1.0f / sqrtf(WarpSum(ss) / C + eps);
  floatX* o = out + row * C;
  for (int c = lane; c < C; c += kWarpSize) o[c] = FromFloat<floatX>(ToFloat(x[c]) * s * ToFloat(weight[c]));
  if (lane == 0) rstd[row] = s;
}

template <typename floatX>
__global__ void RmsNormBackwardInputKernel(floatX* dinp, const floatX* dout, const floatX* inp,
                                           const floatX* weight, const float* rstd, size_t N, int C) {
  const size_t row = blockIdx.x * size_t{kRowsPerBlock} + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= N) return;
  const floatX* x = inp + row * C;
  const floatX* d = dout + row * C;
  const float s = rstd[row];
  float dnorm_norm_sum = 0.0f;
  for (int c = lane; c < C; c += kWarpSize)
    dnorm_norm_sum += ToFloat(weight[c]) * ToFloat(d[c]) * (ToFloat(x[c]) * s);
  const float dnorm_norm_mean = WarpSum(dnorm_norm_sum) / C;
  floatX* di = dinp + row * C;
  for (int c = lane; c < C; c += kWarpSize) {
    const float norm = ToFloat(x[c]) * s;
    di[c] =
        FromFloat<floatX>(ToFloat(di[c]) + (ToFloat(weight[c]) * ToFloat(d[c]) - norm * dnorm_norm_mean) * s);
  }
}

// blockDim = (32, kColumnRows); block b owns channels [32 b, 32 b + 32).
template <typename floatX>
__global__ void RmsNormBackwardParamKernel(float* dweight, const floatX* dout, const floatX* inp,
                                           const float* rstd, size_t N, int C) {
  __shared__ float dw_part[kColumnRows][kWarpSize + 1];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  float dw = 0.0f;
  if (c < C) {
    for (size_t r = threadIdx.y; r < N; r += kColumnRows)
      dw += ToFloat(inp[r * C + c]) * rstd[r] * ToFloat(dout[r * C + c]);
  }
  dw_part[threadIdx.y][threadIdx.x] = dw;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float dw_total = 0.0f;
    for (int y = 0; y < kColumnRows; ++y) dw_total += dw_part[y][threadIdx.x];
    dweight[c] += dw_total;
  }
}

unsigned int RowBlocks(size_t N) {
  return static_cast<unsigned int>((N + kRowsPerBlock - 1) / kRowsPerBlock);
}

}  // namespace

template <typename floatX>
void layernorm_forward(const OpContext& ctx, floatX* out, float* mean, float* rstd, const floatX* inp,
                       const floatX* weight, const floatX* bias, size_t N, int C) {
  if (N == 0) return;
  LayerNormForwardKernel<<<RowBlocks(N), kRowsPerBlock * kWarpSize, 0, ctx.stream>>>(out, mean, rstd, inp,
                                                                                     weight, bias, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, layernorm_forward)

template <typename floatX>
void residual_layernorm_forward(const OpContext& ctx, floatX* residual, floatX* out, float* mean, float* rstd,
                                const floatX* a, const floatX* b, const floatX* weight, const floatX* bias,
                                size_t N, int C) {
  if (N == 0) return;
  ResidualLayerNormForwardKernel<<<RowBlocks(N), kRowsPerBlock * kWarpSize, 0, ctx.stream>>>(
      residual, out, mean, rstd, a, b, weight, bias, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, residual_layernorm_forward)

template <typename floatX>
void layernorm_backward(const OpContext& ctx, floatX* dinp, float* dweight, float* dbias, const floatX* dout,
                        const floatX* inp, const floatX* weight, const float* mean, const float* rstd,
                        size_t N, int C) {
  if (N == 0) return;
  LayerNormBackwardInputKernel<<<RowBlocks(N), kRowsPerBlock * kWarpSize, 0, ctx.stream>>>(
      dinp, dout, inp, weight, mean, rstd, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
  const unsigned int column_blocks = static_cast<unsigned int>((C + kWarpSize - 1) / kWarpSize);
  LayerNormBackwardParamKernel<<<column_blocks, dim3(kWarpSize, kColumnRows), 0, ctx.stream>>>(
      dweight, dbias, dout, inp, mean, rstd, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, layernorm_backward)

template <typename floatX>
void rmsnorm_forward(const OpContext& ctx, floatX* out, float* rstd, const floatX* inp, const floatX* weight,
                     size_t N, int C, float eps) {
  if (N == 0) return;
  RmsNormForwardKernel<<<RowBlocks(N), kRowsPerBlock * kWarpSize, 0, ctx.stream>>>(out, rstd, inp, weight, N,
                                                                                   C, eps);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, rmsnorm_forward)

template <typename floatX>
void rmsnorm_backward(const OpContext& ctx, floatX* dinp, float* dweight, const floatX* dout,
                      const floatX* inp, const floatX* weight, const float* rstd, size_t N, int C) {
  if (N == 0) return;
  RmsNormBackwardInputKernel<<<RowBlocks(N), kRowsPerBlock * kWarpSize, 0, ctx.stream>>>(dinp, dout, inp,
                                                                                         weight, rstd, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
  const unsigned int column_blocks = static_cast<unsigned int>((C + kWarpSize - 1) / kWarpSize);
  RmsNormBackwardParamKernel<<<column_blocks, dim3(kWarpSize, kColumnRows), 0, ctx.stream>>>(dweight, dout,
                                                                                             inp, rstd, N, C);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, rmsnorm_backward)

}  // namespace fjord::cuda
