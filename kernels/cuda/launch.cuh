// Launch-configuration helpers shared by the CUDA kernels: block reductions in a fixed order and
// grid sizing for grid-stride loops.
#pragma once

#include <cstddef>

namespace fjord::cuda_detail {

constexpr int kWarpSize = 32;

// Grid for a grid-stride loop over n elements with `block` threads per block, capped so that huge
// n do not need huge grids (each thread then handles several elements). n must be > 0.
inline unsigned int GridFor(size_t n, int block, size_t max_blocks = 65536) {
  const size_t blocks = (n + block - 1) / block;
  return static_cast<unsigned int>(blocks < max_blocks ? blocks : max_blocks);
}

// Sum over a warp; the butterfly order is fixed, so the result is deterministic.
template <typename T>
__device__ inline T WarpSum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the
// result. Deterministic: warp butterflies, then warp 0 sums the per-warp values the same way.
// `scratch` holds 32 values; the call synchronises the block, so it must be reached by all threads.
template <typename T>
__device__ inline T BlockSum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return WarpSum(v);
}

}  // namespace fjord::cuda_detail
