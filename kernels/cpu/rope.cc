// Rotary position embeddings (Llama) on the q and k heads of the packed qkv rows, Hugging Face's
// rotate_half layout: channel i of a head pairs with channel i + hs/2 (kernels/ops.h). The angles'
// cos and sin come precomputed in freqs[T, hs/2, 2] (runtime/model/gpt.cc builds the table once,
// on the host, so both backends read the same fp32 values). Rows are independent: split over
// (b, t). Each output is computed in fp32 and rounded once; the v heads are copied (forward) or
// their gradient added (backward).
#include <cstddef>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {

template <typename floatX>
void rope_forward(const OpContext& ctx, floatX* out, const floatX* inp, const float* freqs, int B, int T,
                  int NH, int NKV, int hs) {
  const int half = hs / 2;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t rotated = static_cast<size_t>(NH + NKV) * hs;  // q and k heads come first
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const size_t row = (static_cast<size_t>(b) * T + t) * R;
      const float* f = freqs + static_cast<size_t>(t) * hs;
      for (int h = 0; h < NH + NKV; ++h) {
        const floatX* x = inp + row + static_cast<size_t>(h) * hs;
        floatX* o = out + row + static_cast<size_t>(h) * hs;
        for (int i = 0; i < half; ++i) {
          const float c = f[2 * i], s = f[2 * i + 1];
          const float x1 = ToFloat(x[i]), x2 = ToFloat(x[i + half]);
          o[i] = FromFloat<floatX>(x1 * c - x2 * s);
          o[i + half] = FromFloat<floatX>(x2 * c + x1 * s);
        }
      }
      for (size_t k = rotated; k < R; ++k) out[row + k] = inp[row + k];
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, rope_forward)

template <typename floatX>
void rope_backward(const OpContext& ctx, floatX* dinp, const floatX* dout, const float* freqs, int B, int T,
                   int NH, int NKV, int hs) {
  const int half = hs / 2;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t rotated = static_cast<size_t>(NH + NKV) * hs;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const size_t row = (static_cast<size_t>(b) * T + t) * R;
      const float* f = freqs + static_cast<size_t>(t) * hs;
      for (int h = 0; h < NH + NKV; ++h) {
        const floatX* d = dout + row + static_cast<size_t>(h) * hs;
        floatX* di = dinp + row + static_cast<size_t>(h) * hs;
        for (int i = 0; i < half; ++i) {
          const float c = f[2 * i], s = f[2 * i + 1];
          const float d1 = ToFloat(d[i]), d2 = ToFloat(d[i + half]);
          di[i] = FromFloat<floatX>(ToFloat(di[i]) + (d1 * c + d2 * s));
          di[i + half] = FromFloat<floatX>(ToFloat(di[i + half]) + (d2 * c - d1 * s));
        }
      }
      for (size_t k = rotated; k < R; ++k)
        dinp[row + k] = FromFloat<floatX>(ToFloat(dinp[row + k]) + ToFloat(dout[row + k]));
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, rope_backward)

}  // namespace fjord::cpu
