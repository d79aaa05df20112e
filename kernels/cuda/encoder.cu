// Token + position embedding on the GPU.
//
// Forward: one thread per output element in a grid-stride loop: consecutive threads read
// consecutive channels of one wte row and one wpe row, so loads and stores coalesce for any C,
// aligned or not.
//
// Backward, deterministic and without float atomics, in the CPU twin's summation order (positions
// in (t, b) order, starting from the prior gradient), so the result is bitwise equal to the CPU's:
// - dwpe: one thread per (t, c) adds dout[b, t, c] for b = 0 .. B-1 in order.
// - dwte: rows of dout that share a token must be summed by one owner. The B*T positions are
//   listed in (t, b) order with their tokens as keys and stably radix-sorted by token (CUB), which
//   puts each token's positions next to each other, still in (t, b) order. Then one block per
//   sorted entry (times a slice of channels) returns at once unless the entry starts a run of
//   equal tokens; the run's owner walks it in order, a thread per channel, loading kUnroll rows
//   ahead to hide latency. The cost of a run is serial in its length: a token filling a whole
//   batch is the worst case (B*T dependent adds per channel), natural text has short runs.
// Scratch: the sort's double buffers (keys and rows: 16 B*T bytes) and CUB's temporary storage
// (queried from CUB; small next to the buffers) live in ctx.workspace. The call needs
// EncoderBackwardWorkspaceBytes(B * T) of it (each piece rounded up to 256 bytes; about 0.2 MB for
// B*T = 8192, far below the usual 32 MiB GEMM workspace) and aborts naming the numbers otherwise.
// The workspace is used only on ctx.stream, in stream order with the GEMMs that share it.
//
// Storage type: out, wte, wpe and dout are floatX (kernels/ops.h), dwte and dwpe fp32. Values are
// read with ToFloat and added in fp32; the forward rounds each sum once with FromFloat<floatX>,
// the backward accumulates the exact bf16 values into the fp32 gradients in the same order as the
// CPU twin, so bf16 results are bitwise equal to the CPU's too. The bf16 instances load 2-byte
// elements one per thread; a tuning pass could give each thread 8 channels (16-byte accesses)
// when C is a multiple of 8.
// Resources (sm_90, ptxas -v of nvcc 13): every kernel here uses at most 32 registers, no spills,
// no shared memory, for both storage types.
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

constexpr int kBlock = 256;

template <typename floatX>
__global__ void EncoderForwardKernel(floatX* out, const int32_t* tokens, const floatX* wte, const floatX* wpe,
                                     int T, int C, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const size_t bt = i / C;
    const int c = static_cast<int>(i % C);
    const int t = static_cast<int>(bt % T);
    const floatX e = wte[static_cast<size_t>(tokens[bt]) * C + c];
    // No learned positions (wpe null, Llama): the embedding row itself, as the CPU twin copies it.
    out[i] =
        wpe == nullptr ? e : FromFloat<floatX>(ToFloat(e) + ToFloat(wpe[static_cast<size_t>(t) * C + c]));
  }
}

constexpr int kChannelBlock = 128;  // channels per block of the dwte kernel
constexpr int kUnroll = 8;          // dout rows in flight per thread in the dwte kernel
constexpr size_t kScratchAlign = 256;

size_t AlignUp(size_t bytes) { return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

// keys[t * B + b] = tokens[b * T + t] and rows[t * B + b] = b * T + t: positions in (t, b) order.
__global__ void TokenKeysKernel(int32_t* keys, int32_t* rows, const int32_t* tokens, int B, int T) {
  const size_t n = static_cast<size_t>(B) * T;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    const int t = static_cast<int>(i / B);
    const int b = static_cast<int>(i % B);
    const int32_t row = b * T + t;
    keys[i] = tokens[row];
    rows[i] = row;
  }
}

// dwpe[t, c] += dout[b, t, c] for b = 0 .. B-1, in order.
template <typename floatX>
__global__ void PositionGradKernel(float* dwpe, const floatX* dout, int B, int T, int C) {
  const size_t n = static_cast<size_t>(T) * C;
  const size_t batch_stride = static_cast<size_t>(T) * C;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += ToFloat(dout[b * batch_stride + i]);
    dwpe[i] = acc;
  }
}

// Grid (n, ceil(C / kChannelBlock)). Block x owns sorted entry x if it starts a run of equal tokens
// and adds the run's dout rows, in sorted order, into dwte[token, c] for its slice of channels.
template <typename floatX>
__global__ void __launch_bounds__(kChannelBlock)
    TokenGradKernel(float* dwte, const floatX* dout, const int32_t* sorted_tokens, const int32_t* sorted_rows,
                    int n, int C) {
  const int first = blockIdx.x;
  const int32_t token = sorted_tokens[first];
  if (first > 0 && sorted_tokens[first - 1] == token) return;  // not the start of a run
  const int c = blockIdx.y * kChannelBlock + threadIdx.x;
  if (c >= C) return;
  float* dst = dwte + static_cast<size_t>(token) * C + c;
  float acc = *dst;
  // The run is a contiguous range of the sorted list: `in` is true for a prefix of each batch.
  for (int j = first;; j += kUnroll) {
    float d[kUnroll];
    bool in[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      in[u] = j + u < n && sorted_tokens[j + u] == token;
      d[u] = in[u] ? ToFloat(dout[static_cast<size_t>(sorted_rows[j + u]) * C + c]) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (in[u]) acc += d[u];
    if (!in[kUnroll - 1]) break;
  }
  *dst = acc;
}

// CUB's temporary storage for sorting n (int32 key, int32 value) pairs in double buffers.
size_t SortTempBytes(int n) {
  size_t bytes = 0;
  cub::DoubleBuffer<int32_t> keys(nullptr, nullptr), rows(nullptr, nullptr);
  FJORD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, rows, n));
  return bytes;
}

// Workspace bytes encoder_backward needs for n = B * T positions.
size_t EncoderBackwardWorkspaceBytes(int n) {
  return 4 * AlignUp(sizeof(int32_t) * static_cast<size_t>(n)) + AlignUp(SortTempBytes(n));
}

}  // namespace

template <typename floatX>
void encoder_forward(const OpContext& ctx, floatX* out, const int32_t* tokens, const floatX* wte,
                     const floatX* wpe, int B, int T, int C) {
  const size_t n = static_cast<size_t>(B) * T * C;
  if (n == 0) return;
  EncoderForwardKernel<<<cuda_detail::GridFor(n, kBlock), kBlock, 0, ctx.stream>>>(out, tokens, wte, wpe, T,
                                                                                   C, n);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, encoder_forward)

template <typename floatX>
void encoder_backward(const OpContext& ctx, float* dwte, float* dwpe, const floatX* dout,
                      const int32_t* tokens, int B, int T, int C) {
  const int n = B * T;
  if (n == 0 || C == 0) return;
  const size_t needed = EncoderBackwardWorkspaceBytes(n);
  const size_t have = ctx.workspace != nullptr ? ctx.workspace_bytes : 0;
  FJORD_CHECK(have >= needed, "encoder_backward needs " + std::to_string(needed) +
                                  " bytes of OpContext::workspace for B*T = " + std::to_string(n) +
                                  " positions, got " + std::to_string(have) +
                                  "; give the context a larger workspace");
  if (dwpe != nullptr) {
    const size_t wpe_elements = static_cast<size_t>(T) * C;
    PositionGradKernel<<<cuda_detail::GridFor(wpe_elements, kChannelBlock), kChannelBlock, 0, ctx.stream>>>(
        dwpe, dout, B, T, C);
    FJORD_CUDA_CHECK_LAUNCH();
  }

  char* scratch = static_cast<char*>(ctx.workspace);
  const size_t list_bytes = AlignUp(sizeof(int32_t) * static_cast<size_t>(n));
  cub::DoubleBuffer<int32_t> keys(reinterpret_cast<int32_t*>(scratch),
                                  reinterpret_cast<int32_t*>(scratch + list_bytes));
  cub::DoubleBuffer<int32_t> rows(reinterpret_cast<int32_t*>(scratch + 2 * list_bytes),
                                  reinterpret_cast<int32_t*>(scratch + 3 * list_bytes));
  void* sort_temp = scratch + 4 * list_bytes;
  size_t sort_temp_bytes = have - 4 * list_bytes;

  TokenKeysKernel<<<cuda_detail::GridFor(n, kChannelBlock), kChannelBlock, 0, ctx.stream>>>(
      keys.Current(), rows.Current(), tokens, B, T);
  FJORD_CUDA_CHECK_LAUNCH();
  // Stable, so each token's positions keep their (t, b) order; the result is in Current().
  FJORD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp, sort_temp_bytes, keys, rows, n, 0,
                                                   static_cast<int>(8 * sizeof(int32_t)), ctx.stream));
  const dim3 grid(static_cast<unsigned int>(n),
                  static_cast<unsigned int>((C + kChannelBlock - 1) / kChannelBlock));
  TokenGradKernel<<<grid, kChannelBlock, 0, ctx.stream>>>(dwte, dout, keys.Current(), rows.Current(), n, C);
  FJORD_CUDA_CHECK_LAUNCH();
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, encoder_backward)

}  // namespace fjord::cuda
