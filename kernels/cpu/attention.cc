// Causal multi-head self-attention with flash semantics: no T x T matrix is stored.
//
// The forward pass keeps only lse = log-sum-exp of each row's scaled scores; the backward pass
// recomputes p = exp(s - lse) row by row, which costs one extra q.k per score but keeps memory at
// O(T) per head, as on the GPU. The forward pass is split over (batch, query head); the backward
// pass over (batch, key/value head): dk and dv of position j receive contributions from every query
// row i >= j of every query head sharing that k/v head (grouped-query attention), so splitting
// finer would race; different groups write disjoint channels of dqkv. Each thread holds one row of scores (T
// floats). Dot products run over hs contiguous values and accumulate in float. Outputs accumulate in fp32
// scratch owned by the thread (one out row in the forward pass; the head's whole slice of dqkv, loaded with
// its current values, in the backward pass) and are stored once, so with bf16 each element is rounded once;
// for float the values are the same as accumulating in place.
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
                       int NH, int NKV) {
  const int hs = C / NH;
  const int group = NH / NKV;  // query heads per key/value head
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;  // qkv row
  const size_t K0 = static_cast<size_t>(NH) * hs, V0 = static_cast<size_t>(NH + NKV) * hs;
#pragma omp parallel
  {
    std::vector<float> p(T);
    std::vector<float> acc(hs);  // the out row being summed
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int h = 0; h < NH; ++h) {
        const floatX* row0 = qkv + static_cast<size_t>(b) * T * R;
        const floatX* qbase = row0 + static_cast<size_t>(h) * hs;
        const floatX* kbase = row0 + K0 + static_cast<size_t>(h / group) * hs;
        const floatX* vbase = row0 + V0 + static_cast<size_t>(h / group) * hs;
        for (int i = 0; i < T; ++i) {
          const floatX* q = qbase + i * R;
          float max = -std::numeric_limits<float>::infinity();
          for (int j = 0; j <= i; ++j) {
            p[j] = Dot(q, kbase + j * R, hs) * scale;
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
            const floatX* v = vbase + j * R;
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

// Work is split over (batch, key/value head): the group of query heads sharing a k/v head all write
// its dk and dv, so the group is one unit. Scratch holds, per position j, the dq of each query head
// of the group, then dk, then dv: (group + 2) hs floats.
template <typename floatX>
void attention_backward(const OpContext& ctx, floatX* dqkv, const floatX* dout, const floatX* qkv,
                        const floatX* out, const float* lse, int B, int T, int C, int NH, int NKV) {
  const int hs = C / NH;
  const int group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t K0 = static_cast<size_t>(NH) * hs, V0 = static_cast<size_t>(NH + NKV) * hs;
  const size_t G = static_cast<size_t>(group + 2) * hs;
#pragma omp parallel
  {
    std::vector<float> ds(T);
    std::vector<float> grad(T * G);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b) {
      for (int g = 0; g < NKV; ++g) {
        const size_t row0 = static_cast<size_t>(b) * T * R;
        // Where part `part` of the scratch row lives in a qkv row: the group's query heads, k, v.
        auto column = [&](int part) {
          return part < group ? static_cast<size_t>(g * group + part) * hs
                              : (part == group ? K0 : V0) + static_cast<size_t>(g) * hs;
        };
        for (int j = 0; j < T; ++j)
          for (int part = 0; part < group + 2; ++part)
            for (int d = 0; d < hs; ++d)
              grad[j * G + part * hs + d] = ToFloat(dqkv[row0 + j * R + column(part) + d]);
        const floatX* kbase = qkv + row0 + K0 + static_cast<size_t>(g) * hs;
        const floatX* vbase = qkv + row0 + V0 + static_cast<size_t>(g) * hs;
        for (int hq = 0; hq < group; ++hq) {
          const int h = g * group + hq;
          const floatX* qbase = qkv + row0 + static_cast<size_t>(h) * hs;
          const float* row_lse = lse + (static_cast<size_t>(b) * NH + h) * T;
          for (int i = 0; i < T; ++i) {
            const size_t io = (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
            const floatX* q = qbase + i * R;
            const floatX* dy = dout + io;
            // D = sum_j p_ij dP_ij = dout_i . out_i, the softmax Jacobian's diagonal correction.
            const float D = Dot(dy, out + io, hs);
            for (int j = 0; j <= i; ++j) {
              const floatX* k = kbase + j * R;
              const floatX* v = vbase + j * R;
              const float p = Exp(Dot(q, k, hs) * scale - row_lse[i]);
              const float dp = Dot(dy, v, hs);
              ds[j] = p * (dp - D) * scale;
              float* dv = grad.data() + j * G + (group + 1) * hs;
#pragma omp simd
              for (int d = 0; d < hs; ++d) dv[d] += p * ToFloat(dy[d]);
            }
            float* dq = grad.data() + i * G + hq * hs;
            for (int j = 0; j <= i; ++j) {
              const floatX* k = kbase + j * R;
              float* dk = grad.data() + j * G + group * hs;
              const float gj = ds[j];
#pragma omp simd
              for (int d = 0; d < hs; ++d) {
                dq[d] += gj * ToFloat(k[d]);
                dk[d] += gj * ToFloat(q[d]);
              }
            }
          }
        }
        for (int j = 0; j < T; ++j)
          for (int part = 0; part < group + 2; ++part)
            for (int d = 0; d < hs; ++d)
              dqkv[row0 + j * R + column(part) + d] = FromFloat<floatX>(grad[j * G + part * hs + d]);
      }
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, attention_backward)

}  // namespace fjord::cpu
