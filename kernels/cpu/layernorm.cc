// LayerNorm over the last dimension.
//
// Rows are independent, so forward and dinp are split over rows. dweight and dbias are sums over
// all rows; rather than per-thread partial buffers combined afterwards, a second pass splits over
// channel blocks and each thread owns its columns, re-reading inp and dout (N x C is small next to
// the GEMMs around it). Both passes are race-free and deterministic for any thread count.
// Every sum (row statistics, the two row means of the backward pass, the column sums) accumulates
// in double: it costs nothing at these sizes and makes this twin a sharp oracle for the GPU, whose
// float reductions run in a different order. The variance is the two-pass (centred) one.
#include <cmath>
#include <cstddef>

#include "kernels/ops.h"

namespace fjord::cpu {
namespace {
constexpr float kEps = 1e-5f;
constexpr int kChannelBlock = 16;  // one cache line of floats per thread-owned block
}  // namespace

void layernorm_forward(const OpContext& ctx, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, size_t N, int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const float* x = inp + r * C;
    float* o = out + r * C;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const double md = sum / C;
    double var = 0.0;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; ++c) var += (x[c] - md) * (x[c] - md);
    const float m = static_cast<float>(md);
    const float s = static_cast<float>(1.0 / std::sqrt(var / C + kEps));
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * weight[c] + bias[c];
    mean[r] = m;
    rstd[r] = s;
  }
}

void layernorm_backward(const OpContext& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd, size_t N,
                        int C) {
#pragma omp parallel for schedule(static)
  for (size_t r = 0; r < N; ++r) {
    const float* x = inp + r * C;
    const float* d = dout + r * C;
    float* di = dinp + r * C;
    const float m = mean[r];
    const float s = rstd[r];
    // With norm = (x - m) s and dnorm = weight * dout:
    // dx = s (dnorm - mean(dnorm) - norm * mean(dnorm * norm)).
    double dnorm_sum = 0.0;
    double dnorm_norm_sum = 0.0;
#pragma omp simd reduction(+ : dnorm_sum, dnorm_norm_sum)
    for (int c = 0; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = weight[c] * d[c];
      dnorm_sum += dnorm;
      dnorm_norm_sum += dnorm * norm;
    }
    const float dnorm_mean = static_cast<float>(dnorm_sum / C);
    const float dnorm_norm_mean = static_cast<float>(dnorm_norm_sum / C);
#pragma omp simd
    for (int c = 0; c < C; ++c) {
      const float norm = (x[c] - m) * s;
      const float dnorm = weight[c] * d[c];
      di[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
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
      const float* x = inp + r * C + c0;
      const float* d = dout + r * C + c0;
      const float m = mean[r];
      const float s = rstd[r];
      for (int j = 0; j < width; ++j) {
        dw[j] += (x[j] - m) * s * d[j];
        db[j] += d[j];
      }
    }
    for (int j = 0; j < width; ++j) {
      dweight[c0 + j] += static_cast<float>(dw[j]);
      dbias[c0 + j] += static_cast<float>(db[j]);
    }
  }
}

}  // namespace fjord::cpu
