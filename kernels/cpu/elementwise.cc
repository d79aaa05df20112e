// Elementwise ops: GELU, residual add, zero fill.
//
// Each is one pass over memory, split across threads in contiguous chunks. GELU's formula lives
// in kernels/pointwise_math.h so the CUDA twin computes exactly the same expression. Outputs may
// alias inputs at the same index (out == inp, in place); each element is read before it is written.
#include <omp.h>

#include <cstring>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cpu {
namespace {
// Below this many elements a parallel region costs more than it saves.
constexpr size_t kParallelThreshold = size_t{1} << 14;
}  // namespace

void gelu_forward(const OpContext& ctx, float* out, const float* inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) out[i] = GeluForward(inp[i]);
}

void gelu_backward(const OpContext& ctx, float* dinp, const float* inp, const float* dout, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) dinp[i] += GeluDerivative(inp[i]) * dout[i];
}

void residual_forward(const OpContext& ctx, float* out, const float* a, const float* b, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void residual_backward(const OpContext& ctx, float* da, float* db, const float* dout, size_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (size_t i = 0; i < n; ++i) {
    const float d = dout[i];
    da[i] += d;
    db[i] += d;
  }
}

void fill_zero(const OpContext& ctx, float* x, size_t n) {
  if (n < kParallelThreshold) {
    std::memset(x, 0, n * sizeof(float));
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
    std::memset(x + begin, 0, (end - begin) * sizeof(float));
  }
}

void cast_to_bf16(const OpContext&, uint16_t* out, const float* inp, size_t n, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) out[i] = ToBf16(inp[i], seed, i);
}

void cast_from_bf16(const OpContext&, float* out, const uint16_t* inp, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) out[i] = FromBf16(inp[i]);
}

}  // namespace fjord::cpu
