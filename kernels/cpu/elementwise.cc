// Elementwise ops: GELU, SwiGLU, residual add, zero fill.
//
// Each is one pass over memory, split across threads in contiguous chunks. GELU's formula lives
// in kernels/pointwise_math.h so the CUDA twin computes exactly the same expression. Outputs may
// alias inputs at the same index (out == inp, in place); each element is read before it is written.
// With bf16 each element is read exactly, computed in fp32 and rounded once on store (an
// accumulated gradient after its += in fp32).
#include <omp.h>

#include <cstring>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr size_t kParallelThreshold = size_t{1} << 14;
}  // namespace

template <typename floatX>
void gelu_forward(const OpContext& ctx, floatX* out, const floatX* inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) out[i] = FromFloat<floatX>(GeluForward(ToFloat(inp[i])));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, gelu_forward)

template <typename floatX>
void gelu_backward(const OpContext& ctx, floatX* dinp, const floatX* inp, const floatX* dout, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i)
    dinp[i] = FromFloat<floatX>(ToFloat(dinp[i]) + GeluDerivative(ToFloat(inp[i])) * ToFloat(dout[i]));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, gelu_backward)

template <typename floatX>
void swiglu_forward(const OpContext& ctx, floatX* out, const floatX* inp, size_t N, int H) {
#pragma omp parallel for schedule(static) if (N * H >= kParallelThreshold)
  for (size_t r = 0; r < N; ++r) {
    const floatX* gate = inp + r * 2 * H;
    const floatX* up = gate + H;
    floatX* o = out + r * H;
    for (int c = 0; c < H; ++c) o[c] = FromFloat<floatX>(SiluForward(ToFloat(gate[c])) * ToFloat(up[c]));
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, swiglu_forward)

template <typename floatX>
void swiglu_backward(const OpContext& ctx, floatX* dinp, const floatX* inp, const floatX* dout, size_t N,
                     int H) {
#pragma omp parallel for schedule(static) if (N * H >= kParallelThreshold)
  for (size_t r = 0; r < N; ++r) {
    const floatX* gate = inp + r * 2 * H;
    const floatX* up = gate + H;
    floatX* dgate = dinp + r * 2 * H;
    floatX* dup = dgate + H;
    const floatX* d = dout + r * H;
    for (int c = 0; c < H; ++c) {
      const float g = ToFloat(gate[c]), dc = ToFloat(d[c]);
      dgate[c] = FromFloat<floatX>(ToFloat(dgate[c]) + SiluDerivative(g) * ToFloat(up[c]) * dc);
      dup[c] = FromFloat<floatX>(ToFloat(dup[c]) + SiluForward(g) * dc);
    }
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, swiglu_backward)

template <typename floatX>
void residual_forward(const OpContext& ctx, floatX* out, const floatX* a, const floatX* b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) out[i] = FromFloat<floatX>(ToFloat(a[i]) + ToFloat(b[i]));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, residual_forward)

template <typename floatX>
void residual_backward(const OpContext& ctx, floatX* da, floatX* db, const floatX* dout, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) {
    const float d = ToFloat(dout[i]);
    da[i] = FromFloat<floatX>(ToFloat(da[i]) + d);
    db[i] = FromFloat<floatX>(ToFloat(db[i]) + d);
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, residual_backward)

// All-zero bytes are +0 in both float and bf16, so a memset of the storage is the fill.
template <typename floatX>
void fill_zero(const OpContext& ctx, floatX* x, size_t n) {
  if (n < kParallelThreshold) {
    std::memset(x, 0, n * sizeof(floatX));
    return;
  }
#pragma omp parallel
  {
    // Thread-owned contiguous slices so each thread's memset touches its own pages.
    const size_t threads = static_cast<size_t>(omp_get_num_threads());
    const size_t id = static_cast<size_t>(omp_get_thread_num());
    const size_t chunk = (n + threads - 1) / threads;
    const size_t begin = id * chunk < n ? id * chunk : n;
    const size_t end = begin + chunk < n ? begin + chunk : n;
    std::memset(x + begin, 0, (end - begin) * sizeof(floatX));
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, fill_zero)

void cast_to_bf16(const OpContext&, bf16* out, const float* inp, size_t n, uint64_t seed, size_t index0) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) out[i].bits = ToBf16(inp[i], seed, index0 + i);
}

void cast_from_bf16(const OpContext&, float* out, const bf16* inp, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) out[i] = ToFloat(inp[i]);
}

}  // namespace fjord::cpu
