// Causal multi-head self-attention with flash semantics: no T x T matrix is stored.
//
// The forward pass keeps only lse = log-sum-exp of each row's scaled scores; the backward pass
// recomputes p = exp(s - lse) row by row, which costs one extra q.k per score but keeps memory at
// O(T) per head, as on the GPU. Work is split over (batch, head): within one head, dk and dv of
// position j receive contributions from every query row i >= j, so splitting finer would race;
// different heads write disjoint channels of dqkv. Each thread holds one row of scores (T floats).
// Dot products run over hs contiguous floats and accumulate in float.
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {

inline float Dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

}  // namespace

void attention_forward(const OpContext& ctx, float* out, float* lse, const float* qkv, int B, int T, int C,
                       int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t C3 = static_cast<size_t>(3) * C;
#pragma omp parallel
  {
    std::vector<float> p(T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const float* base = qkv + static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hs;
        for (int i = 0; i < T; ++i) {
          const float* q = base + i * C3;
          float max = -std::numeric_limits<float>::infinity();
          for (int j = 0; j <= i; ++j) {
            p[j] = Dot(q, base + j * C3 + C, hs) * scale;
            max = p[j] > max ? p[j] : max;
          }
          float sum = 0.0f;
          for (int j = 0; j <= i; ++j) {
            p[j] = Exp(p[j] - max);
            sum += p[j];
          }
          const float inv = 1.0f / sum;
          float* o = out + (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
          for (int d = 0; d < hs; ++d) o[d] = 0.0f;
          for (int j = 0; j <= i; ++j) {
            const float w = p[j] * inv;
            const float* v = base + j * C3 + 2 * C;
#pragma omp simd
            for (int d = 0; d < hs; ++d) o[d] += w * v[d];
          }
          lse[(static_cast<size_t>(b) * NH + h) * T + i] = max + std::log(sum);
        }
      }
    }
  }
}

void attention_backward(const OpContext& ctx, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* lse, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t C3 = static_cast<size_t>(3) * C;
#pragma omp parallel
  {
    std::vector<float> ds(T);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const size_t head = static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hs;
        const float* base = qkv + head;
        float* dbase = dqkv + head;
        const float* row_lse = lse + (static_cast<size_t>(b) * NH + h) * T;
        for (int i = 0; i < T; ++i) {
          const size_t io = (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
          const float* q = base + i * C3;
          const float* dy = dout + io;
          // D = sum_j p_ij dP_ij = dout_i . out_i, the softmax Jacobian's diagonal correction.
          const float D = Dot(dy, out + io, hs);
          for (int j = 0; j <= i; ++j) {
            const float* k = base + j * C3 + C;
            const float* v = base + j * C3 + 2 * C;
            const float p = Exp(Dot(q, k, hs) * scale - row_lse[i]);
            const float dp = Dot(dy, v, hs);
            ds[j] = p * (dp - D) * scale;
            float* dv = dbase + j * C3 + 2 * C;
#pragma omp simd
            for (int d = 0; d < hs; ++d) dv[d] += p * dy[d];
          }
          float* dq = dbase + i * C3;
          for (int j = 0; j <= i; ++j) {
            const float* k = base + j * C3 + C;
            float* dk = dbase + j * C3 + C;
            const float g = ds[j];
#pragma omp simd
            for (int d = 0; d < hs; ++d) {
              dq[d] += g * k[d];
              dk[d] += g * q[d];
            }
          }
        }
      }
    }
  }
}

}  // namespace fjord::cpu
