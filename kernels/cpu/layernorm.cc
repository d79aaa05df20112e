// LayerNorm over the last dimension, alone or fused with the residual add that precedes it, and
// RMSNorm (Llama), the same structure without the mean and the bias.
//
// Rows are independent, so forward and dinp are split over rows. dweight and dbias are sums over
// all rows; rather than per-thread partial buffers combined afterwards, a second pass splits over
// channel blocks and each thread owns its columns, re-reading inp and dout (N x C is small next to
// the GEMMs around it). Both passes are race-free and deterministic for any thread count.
// Every sum (row statistics, the two row means of the backward pass, the column sums) accumulates
// in double: it costs nothing at these sizes and makes this twin a sharp oracle for the GPU, whose
// float reductions run in a different order. The variance is the two-pass (centred) one.
// residual_layernorm_forward stores each residual row (a + b, rounded as residual_forward rounds)
// and normalises the stored row with layernorm_forward's own row routine while it is in L1, so it
// equals residual_forward followed by layernorm_forward bit for bit.
// With bf16, values are read exactly into the same fp32/double arithmetic and each out or dinp
// element is rounded once (dinp after its += in fp32); mean, rstd, dweight and dbias stay fp32.
#include <cmath>
#include <cstddef>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {
constexpr float kEps = 1e-5f;
constexpr int kChannelBlock = 16;  // one cache line of (fp32 gradient) floats per thread-owned block

// One row of layernorm_forward: o = (x - mean) * rstd * weight + bias over C values. Both forward
// ops call it, so the fused op's statistics and outputs are those of layernorm_forward by
// construction.
template <typename floatX>
void NormalizeRow(floatX* o, float& mean, float& rstd, const floatX* x, const floatX* weight,
                  const floatX* bias, int C) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += ToFloat(x[c]);
  const double md = sum / C;
  double var = 0.0;
#pragma omp simd reduction(+ : var)
  for (int c = 0; c < C; ++c) var += (ToFloat(x[c]) - md) * (ToFloat(x[c]) - md);
  const float m = static_cast<float>(md);
  const float s = static_cast<float>(1.0 / std::sqrt(var / C + kEps));
#pragma omp simd
  for (int c = 0; c < C; ++c)
    o[c] = FromFloat<floatX>((ToFloat(x[c]) - m) * s * ToFloat(weight[c]) + ToFloat(bias[c]));
  mean = m;
  rstd = s;
}
}  // namespace

template <typename floatX>
void layernorm_forward(const OpContext& ctx, floatX* out, float* mean, float* rstd, const floatX* inp,
                       const floatX* weight, const floatX* bias, size_t N, int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) NormalizeRow(out + r * C, mean[r], rstd[r], inp + r * C, weight, bias, C);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, layernorm_forward)

// Normalises the stored (with bf16, rounded) residual row rather than the fp32 sums, because
// that is what layernorm_forward of `residual` would read.
template <typename floatX>
void residual_layernorm_forward(const OpContext& ctx, floatX* residual, floatX* out, float* mean, float* rstd,
                                const floatX* a, const floatX* b, const floatX* weight, const floatX* bias,
                                size_t N, int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const floatX* ar = a + r * C;
    const floatX* br = b + r * C;
    floatX* x = residual + r * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) x[c] = FromFloat<floatX>(ToFloat(ar[c]) + ToFloat(br[c]));
    NormalizeRow(out + r * C, mean[r], rstd[r], x, weight, bias, C);
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, residual_layernorm_forward)

template <typename floatX>
void layernorm_backward(const OpContext& ctx, floatX* dinp, float* dweight, float* dbias, const floatX* dout,
                        const floatX* inp, const floatX* weight, const float* mean, const float* rstd,
                        size_t N, int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const floatX* x = inp + r * C;
    const floatX* d = dout + r * C;
    floatX* di = dinp + r * C;
    const float m = mean[r];
    const float s = rstd[r];
    // With norm = (x - m) s and dnorm = weight * dout:
    // dx = s (dnorm - mean(dnorm) - norm * mean(dnorm * norm)).
    double dnorm_sum = 0.0;
    double dnorm_norm_sum = 0.0;
#pragma omp simd reduction(+ : dnorm_sum, dnorm_norm_sum)
    for (int c = 0; c < C; ++c) {
      const float norm = (ToFloat(x[c]) - m) * s;
      const float dnorm = ToFloat(weight[c]) * ToFloat(d[c]);
      dnorm_sum += dnorm;
      dnorm_norm_sum += dnorm * norm;
    }
    const float dnorm_mean = static_cast<float>(dnorm_sum / C);
    const float dnorm_norm_mean = static_cast<float>(dnorm_norm_sum / C);
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float norm = (ToFloat(x[c]) - m) * s;
      const float dnorm = ToFloat(weight[c]) * ToFloat(d[c]);
      di[c] = FromFloat<floatX>(ToFloat(di[c]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s);
    }
  }

  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int width = c0 + kChannelBlock < C ? kChannelBlock : C - c0;
    double dw[kChannelBlock] = {};
    double db[kChannelBlock] = {};
    for (size_t r = 0; r < N; ++r) {
      const floatX* x = inp + r * C + c0;
      const floatX* d = dout + r * C + c0;
      const float m = mean[r];
      const float s = rstd[r];
      for (int j = 0; j < width; ++j) {
        dw[j] += (ToFloat(x[j]) - m) * s * ToFloat(d[j]);
        db[j] += ToFloat(d[j]);
      }
    }
    for (int j = 0; j < width; ++j) {
      dweight[c0 + j] += static_cast<float>(dw[j]);
      dbias[c0 + j] += static_cast<float>(db[j]);
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, layernorm_backward)

// RMSNorm: o = x * s * weight, s = 1 / sqrt(mean(x^2) + eps); the sum of squares in double.
template <typename floatX>
void rmsnorm_forward(const OpContext& ctx, floatX* out, float* rstd, const floatX* inp, const floatX* weight,
                     size_t N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const floatX* x = inp + r * C;
    floatX* o = out + r * C;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += static_cast<double>(ToFloat(x[c])) * ToFloat(x[c]);
    const float s = static_cast<float>(1.0 / std::sqrt(ss / C + eps));
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = FromFloat<floatX>(ToFloat(x[c]) * s * ToFloat(weight[c]));
    rstd[r] = s;
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, rmsnorm_forward)

// With norm = x s and dnorm = weight * dout: dx = s (dnorm - norm * mean(dnorm * norm)); dweight sums
// norm * dout over rows, by channel blocks as in layernorm_backward.
template <typename floatX>
void rmsnorm_backward(const OpContext& ctx, floatX* dinp, float* dweight, const floatX* dout,
                      const floatX* inp, const floatX* weight, const float* rstd, size_t N, int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const floatX* x = inp + r * C;
    const floatX* d = dout + r * C;
    floatX* di = dinp + r * C;
    const float s = rstd[r];
    double dnorm_norm_sum = 0.0;
#pragma omp simd reduction(+ : dnorm_norm_sum)
    for (int c = 0; c < C; ++c) dnorm_norm_sum += ToFloat(weight[c]) * ToFloat(d[c]) * (ToFloat(x[c]) * s);
    const float dnorm_norm_mean = static_cast<float>(dnorm_norm_sum / C);
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float norm = ToFloat(x[c]) * s;
      const float dnorm = ToFloat(weight[c]) * ToFloat(d[c]);
      di[c] = FromFloat<floatX>(ToFloat(di[c]) + (dnorm - norm * dnorm_norm_mean) * s);
    }
  }

  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int width = c0 + kChannelBlock < C ? kChannelBlock : C - c0;
    double dw[kChannelBlock] = {};
    for (size_t r = 0; r < N; ++r) {
      const floatX* x = inp + r * C + c0;
      const floatX* d = dout + r * C + c0;
      const float s = rstd[r];
      for (int j = 0; j < width; ++j) dw[j] += ToFloat(x[j]) * s * ToFloat(d[j]);
    }
    for (int j = 0; j < width; ++j) dweight[c0 + j] += static_cast<float>(dw[j]);
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, rmsnorm_backward)

}  // namespace fjord::cpu
