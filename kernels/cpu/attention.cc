// Causal multi-head self-attention with flash semantics: no T x T matrix is stored.
//
// The forward pass keeps only lse = log-sum-exp of each row's scaled scores; the backward pass
// recomputes p = exp(s - lse) row by row, which costs one extra q.k per score but keeps memory at
// O(T) per head, as on the GPU. Work is split over (batch, head): within one head, dk and dv of
// position j receive contributions from every query row i >= j, so splitting finer would race;
// different heads write disjoint channels of dqkv. Each thread holds one row of scores (T floats).
// Dot products run over hs contiguous values and accumulate in float.
// Outputs accumulate in fp32 scratch owned by the thread (one out row in the forward pass; the
// head's whole slice of dqkv, loaded with its current values, in the backward pass) and are
// stored once, so with bf16 each element is rounded once; for float the values are the same as
// accumulating in place.
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {

template <typename floatX>
inline float Dot(const floatX* a, const floatX* b, int n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += ToFloat(a[i]) * ToFloat(b[i]);
  return acc;
}

}  // namespace

template <typename floatX>
void attention_forward(const OpContext& ctx, floatX* out, float* lse, const floatX* qkv, int B, int T, int C,
                       int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t C3 = static_cast<size_t>(3) * C;
#pragma omp parallel
  {
    std::vector<float> p(T);
    std::vector<float> acc(hs);  // the out row being summed
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const floatX* base = qkv + static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hs;
        for (int i = 0; i < T; ++i) {
          const floatX* q = base + i * C3;
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
          float* o = acc.data();
          for (int d = 0; d < hs; ++d) o[d] = 0.0f;
          for (int j = 0; j <= i; ++j) {
            const float w = p[j] * inv;
            const floatX* v = base + j * C3 + 2 * C;
#pragma omp simd
            for (int d = 0; d < hs; ++d) o[d] += w * ToFloat(v[d]);
          }
          floatX* dst = out + (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
          for (int d = 0; d < hs; ++d) dst[d] = FromFloat<floatX>(o[d]);
          lse[(static_cast<size_t>(b) * NH + h) * T + i] = max + std::log(sum);
        }
      }
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, attention_forward)

template <typename floatX>
void attention_backward(const OpContext& ctx, floatX* dqkv, const floatX* dout, const floatX* qkv,
                        const floatX* out, const float* lse, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t C3 = static_cast<size_t>(3) * C;
  // The head's gradient in scratch: position j's dq, dk, dv at j * G, j * G + hs, j * G + 2 hs.
  const size_t G = static_cast<size_t>(3) * hs;
#pragma omp parallel
  {
    std::vector<float> ds(T);
    std::vector<float> grad(T * G);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const size_t head = static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * hs;
        const floatX* base = qkv + head;
        floatX* dhead = dqkv + head;
        for (int j = 0; j < T; ++j)
          for (int part = 0; part < 3; ++part)
            for (int d = 0; d < hs; ++d) grad[j * G + part * hs + d] = ToFloat(dhead[j * C3 + part * C + d]);
        float* dbase = grad.data();
        const float* row_lse = lse + (static_cast<size_t>(b) * NH + h) * T;
        for (int i = 0; i < T; ++i) {
          const size_t io = (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
          const floatX* q = base + i * C3;
          const floatX* dy = dout + io;
          // D = sum_j p_ij dP_ij = dout_i . out_i, the softmax Jacobian's diagonal correction.
          const float D = Dot(dy, out + io, hs);
          for (int j = 0; j <= i; ++j) {
            const floatX* k = base + j * C3 + C;
            const floatX* v = base + j * C3 + 2 * C;
            const float p = Exp(Dot(q, k, hs) * scale - row_lse[i]);
            const float dp = Dot(dy, v, hs);
            ds[j] = p * (dp - D) * scale;
            float* dv = dbase + j * G + 2 * hs;
#pragma omp simd
            for (int d = 0; d < hs; ++d) dv[d] += p * ToFloat(dy[d]);
          }
          float* dq = dbase + i * G;
          for (int j = 0; j <= i; ++j) {
            const floatX* k = base + j * C3 + C;
            float* dk = dbase + j * G + hs;
            const float g = ds[j];
#pragma omp simd
            for (int d = 0; d < hs; ++d) {
              dq[d] += g * ToFloat(k[d]);
              dk[d] += g * ToFloat(q[d]);
            }
          }
        }
        for (int j = 0; j < T; ++j)
          for (int part = 0; part < 3; ++part)
            for (int d = 0; d < hs; ++d)
              dhead[j * C3 + part * C + d] = FromFloat<floatX>(grad[j * G + part * hs + d]);
      }
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, attention_backward)

}  // namespace fjord::cpu
