// Rotary position embeddings on the GPU: the twin of kernels/cpu/rope.cc (Hugging Face's
// rotate_half layout, cos and sin read from the caller's fp32 table freqs[T, hs/2, 2]).
//
// One thread per rotated pair (b, t, head, i < hs/2) of the q and k heads, plus one per v element,
// in a grid-stride loop: the CPU twin's fp32 expressions (no transcendental is evaluated here), each
// output rounded once; the compilers may contract the two-term sums into FMAs differently, so the
// results agree with the CPU's to an ulp or so, not bitwise (tests/cuda/cuda_llama_ops_test.cc).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

// backward = false: out = R x (q, k), out = x (v). backward = true: out += R^T x, out += x (v).
template <bool kBackward, typename floatX>
__global__ void RopeKernel(floatX* out, const floatX* inp, const float* freqs, int T, int NH, int NKV, int hs,
                           size_t rows) {
  const int half = hs / 2;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t pairs = static_cast<size_t>(NH + NKV) * half;  // rotated pairs per row
  const size_t v = static_cast<size_t>(NKV) * hs;             // copied values per row
  const size_t per_row = pairs + v;
  const size_t n = rows * per_row;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t row = i / per_row, k = i % per_row;
    const size_t base = row * R;
    if (k >= pairs) {  // a v channel
      const size_t at = base + static_cast<size_t>(NH + NKV) * hs + (k - pairs);
      out[at] = kBackward ? FromFloat<floatX>(ToFloat(out[at]) + ToFloat(inp[at])) : inp[at];
      continue;
    }
    const int t = static_cast<int>(row % T);
    const int head = static_cast<int>(k / half), j = static_cast<int>(k % half);
    const size_t a = base + static_cast<size_t>(head) * hs + j, b = a + half;
    const float c = freqs[static_cast<size_t>(t) * hs + 2 * j],
                s = freqs[static_cast<size_t>(t) * hs + 2 * j + 1];
    const float x1 = ToFloat(inp[a]), x2 = ToFloat(inp[b]);
    if (kBackward) {
      out[a] = FromFloat<floatX>(ToFloat(out[a]) + (x1 * c + x2 * s));
      out[b] = FromFloat<floatX>(ToFloat(out[b]) + (x2 * c - x1 * s));
    } else {
      out[a] = FromFloat<floatX>(x1 * c - x2 * s);
      out[b] = FromFloat<floatX>(x2 * c + x1 * s);
    }
  }
}

template <bool kBackward, typename floatX>
void Launch(const OpContext& ctx, floatX* out, const floatX* inp, const float* freqs, int B, int T, int NH,
            int NKV, int hs) {
  const size_t rows = static_cast<size_t>(B) * T;
  const size_t n = rows * (static_cast<size_t>(NH + NKV) * (hs / 2) + static_cast<size_t>(NKV) * hs);
  if (n == 0) return;
  RopeKernel<kBackward, floatX>
      <<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, inp, freqs, T, NH, NKV, hs, rows);
  FJORD_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <typename floatX>
void rope_forward(const OpContext& ctx, floatX* out, const floatX* inp, const float* freqs, int B, int T,
                  int NH, int NKV, int hs) {
  Launch<false>(ctx, out, inp, freqs, B, T, NH, NKV, hs);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, rope_forward)

template <typename floatX>
void rope_backward(const OpContext& ctx, floatX* dinp, const floatX* dout, const float* freqs, int B, int T,
                   int NH, int NKV, int hs) {
  Launch<true>(ctx, dinp, dout, freqs, B, T, NH, NKV, hs);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, rope_backward)

}  // namespace fjord::cuda
