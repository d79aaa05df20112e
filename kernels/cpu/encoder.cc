// Token + position embedding.
//
// The backward pass scatters rows of dout into dwte at token ids that repeat within a batch, so a
// split over tokens would race. Instead each thread owns a block of channels and walks every
// (b, t) in order: writes never collide and the summation order is fixed, so the result is
// deterministic whatever the thread count. C is small (hundreds), so the block is a cache line.
// With bf16 the forward sum is taken in fp32 and rounded once; the gradients are fp32 either way.
#include <cstddef>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {
constexpr int kChannelBlock = 16;  // one 64-byte cache line of (fp32 gradient) floats per block
}  // namespace

template <typename floatX>
void encoder_forward(const OpContext& ctx, floatX* out, const int32_t* tokens, const floatX* wte,
                     const floatX* wpe, int B, int T, int C) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const size_t bt = static_cast<size_t>(b) * T + t;
      floatX* o = out + bt * C;
      const floatX* e = wte + static_cast<size_t>(tokens[bt]) * C;
      if (wpe == nullptr) {  // no learned positions: a copy of the embedding row
        for (int c = 0; c < C; ++c) o[c] = e[c];
        continue;
      }
      const floatX* p = wpe + static_cast<size_t>(t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = FromFloat<floatX>(ToFloat(e[c]) + ToFloat(p[c]));
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, encoder_forward)

template <typename floatX>
void encoder_backward(const OpContext& ctx, float* dwte, float* dwpe, const floatX* dout,
                      const int32_t* tokens, int B, int T, int C) {
  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
    for (int t = 0; t < T; ++t) {
      float* dp = dwpe != nullptr ? dwpe + static_cast<size_t>(t) * C : nullptr;
      for (int b = 0; b < B; ++b) {
        const size_t bt = static_cast<size_t>(b) * T + t;
        const floatX* d = dout + bt * C;
        float* de = dwte + static_cast<size_t>(tokens[bt]) * C;
        for (int c = c0; c < c1; ++c) {
          const float dc = ToFloat(d[c]);
          de[c] += dc;
          if (dp != nullptr) dp[c] += dc;
        }
      }
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, encoder_backward)

}  // namespace fjord::cpu
