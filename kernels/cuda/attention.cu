// Causal self-attention on the GPU with flash semantics: no T x T matrix leaves shared memory.
//
// All three kernels tile the sequence by kTile = 32 positions, so that one warp's 32 lanes map onto
// the 32 positions of a tile, and give each block kWarps = 8 warps that each own kRows = 4 rows of
// the block's own tile. Head sizes up to kMaxHeadSize = 128 are supported (GPT-2 uses 64): a lane
// holds kDims = ceil(hs / 32) <= 4 channels of each of its warp's rows in registers, so kernels are
// instantiated for kDims 1, 2, 4; any hs <= 128 works (channels beyond hs are masked), and T need
// not be a multiple of the tile (rows past T are loaded as zeros and never stored).
//
// Grouped-query attention (NKV key/value heads, kernels/ops.h): qkv rows are (NH + 2 NKV) hs wide and
// query head h reads key/value head h / (NH / NKV) in place; NKV == NH is GPT-2's multi-head case,
// computed exactly as before (the same loops, sums and order).
//
// Forward: one block per (query tile, head, batch), query tiles launched largest-work first. The
// block walks the key tiles up to the diagonal with K and V staged in shared memory; lane l scores
// key l of the tile against each of its warp's rows (a full hs-long dot product, so one warp-wide
// max and sum per tile instead of per key), then the online-softmax update rescales the running
// sum and output, and P @ V broadcasts p from the owning lane by shuffle while each lane
// accumulates its channels. Saves lse = max + log(sum) per row.
//
// Backward: two kernels, so every output element has exactly one writer and no atomics are needed
// (bitwise reproducible). dK/dV: one block per (key tile, key/value head, batch) walks, for each
// query head of its group in turn, the query tiles from the diagonal to T; lane l takes query l of each tile,
// recomputes p = exp(s - lse) and ds = p (dP - D) scale with D = dout . out recomputed per query row, and
// each lane accumulates its channels of dk and dv for its warp's 4 keys. dQ: one block per (query tile, head,
// batch) walks the key tiles like the forward pass and accumulates dq = sum ds k. The price of no atomics is
// computing s and dP twice (once per kernel); the T x T work of each is the same as forward's.
//
// Shared memory: tiles whose rows are read one row per lane use a row stride of hs | 1 (odd), so
// the 32 lanes hit 32 different banks; tiles read row-broadcast use stride hs. hs = 128 needs
// 49 KB (forward) and 66 KB (backward) of dynamic shared memory, above the 48 KB default, so the
// launchers raise the kernels' limit (sm_80 allows 163 KB, sm_90 227 KB).
//
// Formulas mirror the CPU twin (kernels/cpu/attention.cc): scores are dot(q, k) * scale, exp is
// Exp of kernels/pointwise_math.h, masked keys get p = 0 exactly (Exp clamps, so -inf would not
// give 0). The online softmax (running max) and the different summation orders make results
// differ from the CPU's in the last bits only.
//
// Storage type: qkv, out, dout and dqkv are floatX (kernels/ops.h), lse is fp32. LoadTile converts
// each element with ToFloat as it stages a tile, so shared memory holds fp32 tiles and everything
// after the load (scores, softmax, accumulators) is the fp32 algorithm for either type; RowDot
// reads out and dout with ToFloat too. Each output element is rounded once with FromFloat<floatX>
// (dq, dk, dv: the prior read, the block's fp32 sum added, then rounded). The bf16 instances load
// one 2-byte element per thread per step; a tuning pass should stage tiles with 16-byte loads (8
// bf16) and, beyond that, keep bf16 tiles in shared memory for tensor-core MMAs, which would
// change the algorithm (and halve the shared memory).
//
// Resources (nvcc 13, -Xptxas -v, sm_90 and sm_80, float and bf16 instances alike): every variant
// fits the 80 registers that __launch_bounds__(256, 3) allows (forward kDims = 1: 64) with no
// spills; dynamic shared memory is 32 x (3 hs + 1) floats forward (24.7 KB at hs = 64) and
// 32 x (4 hs + 4) backward (33 KB), so registers, not shared memory, bound occupancy at 3 blocks
// (24 warps) per SM for hs <= 64.
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

using cuda_detail::kWarpSize;
using cuda_detail::WarpSum;

constexpr int kTile = 32;  // positions per query or key tile: one per lane
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRows = kTile / kWarps;  // rows of the block's own tile per warp
constexpr int kMaxHeadSize = 128;
// Blocks per SM the register allocation must allow: 3 caps registers at 80 per thread, which the
// kernels need for their per-lane accumulators without spilling on sm_90 (at 4, i.e. 64 registers,
// the hs = 128 variants spill).
constexpr int kMinBlocks = 3;
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kRows * kWarps == kTile, "each warp owns kRows rows of the block's tile");

__device__ inline float WarpMax(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Copies rows [row0, row0 + kTile) of one head's slice (hs values at `src + row * row_stride`) into
// the fp32 tile dst[r * dst_stride + d], converting with ToFloat; rows at or beyond T are zeros, so
// masked terms stay finite (0 * v).
template <typename floatX>
__device__ inline void LoadTile(float* dst, int dst_stride, const floatX* src, size_t row_stride, int row0,
                                int T, int hs) {
  for (int idx = threadIdx.x; idx < kTile * hs; idx += kThreads) {
    const int r = idx / hs;
    const int d = idx - r * hs;
    const int row = row0 + r;
    dst[r * dst_stride + d] = row < T ? ToFloat(src[static_cast<size_t>(row) * row_stride + d]) : 0.0f;
  }
}

// Shared-memory floats of the forward kernel: Q (stride hs), K (stride hs|1), V (stride hs).
size_t ForwardSmemBytes(int hs) { return sizeof(float) * kTile * (2 * hs + (hs | 1)); }
// Of each backward kernel: two tiles read row-broadcast (stride hs), two read one row per lane
// (stride hs|1), and per-row lse and D of the walked tiles (backward dK/dV only; the dQ kernel keeps
// its own rows' lse and D in registers, the extra 2 x kTile floats are unused there).
size_t BackwardSmemBytes(int hs) { return sizeof(float) * kTile * (2 * hs + 2 * (hs | 1) + 2); }

// Grid: (query tiles, NH, B); blockIdx.x = 0 is the last (longest) tile.
template <int kDims, typename floatX>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    AttentionForwardKernel(floatX* out, float* lse, const floatX* qkv, int T, int C, int NH, int NKV, int hs,
                           float scale) {
  extern __shared__ float smem[];
  const int ks = hs | 1;
  float* q_s = smem;              // [kTile][hs]
  float* k_s = q_s + kTile * hs;  // [kTile][ks]
  float* v_s = k_s + kTile * ks;  // [kTile][hs]
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;  // qkv row
  const int g = h / (NH / NKV);                             // this head's key/value head
  const floatX* row0 = qkv + static_cast<size_t>(b) * T * R;
  const floatX* base = row0 + static_cast<size_t>(h) * hs;
  const floatX* k_base = row0 + static_cast<size_t>(NH + g) * hs;
  const floatX* v_base = row0 + static_cast<size_t>(NH + NKV + g) * hs;

  LoadTile(q_s, hs, base, R, q0, T, hs);

  float m[kRows], l[kRows], o[kRows][kDims];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int k = 0; k < kDims; ++k) o[r][k] = 0.0f;
  }

  const int key_end = min(q0 + kTile, T);  // causal: keys [0, key_end) can be seen by this tile
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // the previous tile's K and V are no longer read
    LoadTile(k_s, ks, k_base, R, k0, T, hs);
    LoadTile(v_s, hs, v_base, R, k0, T, hs);
    __syncthreads();

    // s[r] = q_row . k_lane
    float s[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = 0.0f;
    const float* k_row = k_s + lane * ks;
    const float* q_rows = q_s + warp * kRows * hs;
#pragma unroll 4
    for (int d = 0; d < hs; ++d) {
      const float kd = k_row[d];
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r] += q_rows[r * hs + d] * kd;
    }

    // Online softmax. Key k0 <= every row of this tile, so each row has at least one valid key per
    // tile and m stays finite after the first tile.
    const int j = k0 + lane;
    float p[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = q0 + warp * kRows + r;
      const bool valid = j <= i && j < T;
      const float score = s[r] * scale;
      const float m_new = fmaxf(m[r], WarpMax(valid ? score : -INFINITY));
      p[r] = valid ? Exp(score - m_new) : 0.0f;
      const float correction = m[r] == -INFINITY ? 0.0f : Exp(m[r] - m_new);
      l[r] = l[r] * correction + WarpSum(p[r]);
      m[r] = m_new;
#pragma unroll
      for (int k = 0; k < kDims; ++k) o[r][k] *= correction;
    }

    // o[r] += sum_j p[r]_j v_j; keys past T have p = 0 and are skipped.
    const int keys = min(kTile, T - k0);
    for (int jj = 0; jj < keys; ++jj) {
      float v[kDims];
#pragma unroll
      for (int k = 0; k < kDims; ++k) {
        const int d = lane + k * kWarpSize;
        v[k] = d < hs ? v_s[jj * hs + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float pj = __shfl_sync(kFullMask, p[r], jj);
#pragma unroll
        for (int k = 0; k < kDims; ++k) o[r][k] += pj * v[k];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = q0 + warp * kRows + r;
    if (i >= T) continue;
    const float inv = 1.0f / l[r];
    floatX* o_row = out + (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
#pragma unroll
    for (int k = 0; k < kDims; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) o_row[d] = FromFloat<floatX>(o[r][k] * inv);
    }
    if (lane == 0) lse[(static_cast<size_t>(b) * NH + h) * T + i] = m[r] + logf(l[r]);
  }
}

// D = dout_i . out_i for row i of head h (the softmax Jacobian's diagonal term), by one warp;
// every lane gets the result. 0 for rows past T.
template <typename floatX>
__device__ inline float RowDot(const floatX* dout, const floatX* out, int i, int T, size_t row_offset, int C,
                               int hs) {
  if (i >= T) return 0.0f;
  const floatX* dy = dout + row_offset + static_cast<size_t>(i) * C;
  const floatX* y = out + row_offset + static_cast<size_t>(i) * C;
  float acc = 0.0f;
  for (int d = threadIdx.x % kWarpSize; d < hs; d += kWarpSize) acc += ToFloat(dy[d]) * ToFloat(y[d]);
  return WarpSum(acc);
}

// dk, dv of the block's key tile. Grid: (key tiles, NH, B); blockIdx.x = 0 (the most query tiles)
// first.
template <int kDims, typename floatX>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    AttentionBackwardKVKernel(floatX* dqkv, const floatX* dout, const floatX* qkv, const floatX* out,
                              const float* lse, int T, int C, int NH, int NKV, int hs, float scale) {
  extern __shared__ float smem[];
  const int qs = hs | 1;
  float* k_s = smem;                 // [kTile][hs], this block's keys
  float* v_s = k_s + kTile * hs;     // [kTile][hs]
  float* q_s = v_s + kTile * hs;     // [kTile][qs], the walked query tile
  float* dy_s = q_s + kTile * qs;    // [kTile][qs]
  float* lse_s = dy_s + kTile * qs;  // [kTile]
  float* d_s = lse_s + kTile;        // [kTile]
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int g = blockIdx.y;  // the key/value head
  const int b = blockIdx.z;
  const int k0 = blockIdx.x * kTile;
  const int group = NH / NKV;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const size_t row0 = static_cast<size_t>(b) * T * R;
  const size_t k_head = row0 + static_cast<size_t>(NH + g) * hs;
  const size_t v_head = row0 + static_cast<size_t>(NH + NKV + g) * hs;

  LoadTile(k_s, hs, qkv + k_head, R, k0, T, hs);
  LoadTile(v_s, hs, qkv + v_head, R, k0, T, hs);

  float dk[kRows][kDims], dv[kRows][kDims];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int k = 0; k < kDims; ++k) dk[r][k] = dv[r][k] = 0.0f;

  const float* k_rows = k_s + warp * kRows * hs;
  const float* v_rows = v_s + warp * kRows * hs;
  // Every query head of the group, in order, adds to the same dk, dv accumulators.
  for (int h = g * group; h < (g + 1) * group; ++h) {
    const size_t head = row0 + static_cast<size_t>(h) * hs;
    const size_t row_offset = static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;  // out, dout
    const float* row_lse = lse + (static_cast<size_t>(b) * NH + h) * T;
    // Queries i >= k0 see this tile; the first such tile is the diagonal one (same tiling).
    for (int q0 = k0; q0 < T; q0 += kTile) {
      __syncthreads();  // the previous query tile is no longer read (and K, V are loaded)
      LoadTile(q_s, qs, qkv + head, R, q0, T, hs);
      LoadTile(dy_s, qs, dout + row_offset, C, q0, T, hs);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int row = warp * kRows + r;
        const float D = RowDot(dout, out, q0 + row, T, row_offset, C, hs);
        if (lane == 0) {
          d_s[row] = D;
          lse_s[row] = q0 + row < T ? row_lse[q0 + row] : 0.0f;
        }
      }
      __syncthreads();

      // Lane l <-> query i = q0 + l: s[r] = q_i . k_r, dp[r] = dout_i . v_r.
      float s[kRows], dp[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) s[r] = dp[r] = 0.0f;
      const float* q_row = q_s + lane * qs;
      const float* dy_row = dy_s + lane * qs;
#pragma unroll 4
      for (int d = 0; d < hs; ++d) {
        const float qd = q_row[d];
        const float dyd = dy_row[d];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          s[r] += qd * k_rows[r * hs + d];
          dp[r] += dyd * v_rows[r * hs + d];
        }
      }
      const int i = q0 + lane;
      const float lse_i = lse_s[lane];
      const float D_i = d_s[lane];
      float p[kRows], ds[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int j = k0 + warp * kRows + r;
        const bool valid = j <= i && i < T;
        p[r] = valid ? Exp(s[r] * scale - lse_i) : 0.0f;
        ds[r] = p[r] * (dp[r] - D_i) * scale;
      }

      // dv[r] += sum_i p[r]_i dout_i; dk[r] += sum_i ds[r]_i q_i, over the queries of the tile.
      const int queries = min(kTile, T - q0);
      for (int ii = 0; ii < queries; ++ii) {
        float q[kDims], dy[kDims];
#pragma unroll
        for (int k = 0; k < kDims; ++k) {
          const int d = lane + k * kWarpSize;
          q[k] = d < hs ? q_s[ii * qs + d] : 0.0f;
          dy[k] = d < hs ? dy_s[ii * qs + d] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          const float pi = __shfl_sync(kFullMask, p[r], ii);
          const float dsi = __shfl_sync(kFullMask, ds[r], ii);
#pragma unroll
          for (int k = 0; k < kDims; ++k) {
            dv[r][k] += pi * dy[k];
            dk[r][k] += dsi * q[k];
          }
        }
      }
    }
  }  // query heads of the group

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = k0 + warp * kRows + r;
    if (j >= T) continue;
    floatX* dk_row = dqkv + k_head + static_cast<size_t>(j) * R;
    floatX* dv_row = dqkv + v_head + static_cast<size_t>(j) * R;
#pragma unroll
    for (int k = 0; k < kDims; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) {
        dk_row[d] = FromFloat<floatX>(ToFloat(dk_row[d]) + dk[r][k]);
        dv_row[d] = FromFloat<floatX>(ToFloat(dv_row[d]) + dv[r][k]);
      }
    }
  }
}

// dq of the block's query tile. Grid: (query tiles, NH, B); blockIdx.x = 0 is the last tile.
template <int kDims, typename floatX>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    AttentionBackwardQKernel(floatX* dqkv, const floatX* dout, const floatX* qkv, const floatX* out,
                             const float* lse, int T, int C, int NH, int NKV, int hs, float scale) {
  extern __shared__ float smem[];
  const int ks = hs | 1;
  float* q_s = smem;               // [kTile][hs], this block's queries
  float* dy_s = q_s + kTile * hs;  // [kTile][hs]
  float* k_s = dy_s + kTile * hs;  // [kTile][ks], the walked key tile
  float* v_s = k_s + kTile * ks;   // [kTile][ks]
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * hs;
  const int g = h / (NH / NKV);
  const size_t row0 = static_cast<size_t>(b) * T * R;
  const size_t head = row0 + static_cast<size_t>(h) * hs;
  const size_t k_head = row0 + static_cast<size_t>(NH + g) * hs;
  const size_t v_head = row0 + static_cast<size_t>(NH + NKV + g) * hs;
  const size_t row_offset = static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;
  const float* row_lse = lse + (static_cast<size_t>(b) * NH + h) * T;

  LoadTile(q_s, hs, qkv + head, R, q0, T, hs);
  LoadTile(dy_s, hs, dout + row_offset, C, q0, T, hs);
  float lse_r[kRows], D_r[kRows], dq[kRows][kDims];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = q0 + warp * kRows + r;
    D_r[r] = RowDot(dout, out, i, T, row_offset, C, hs);
    lse_r[r] = i < T ? row_lse[i] : 0.0f;
#pragma unroll
    for (int k = 0; k < kDims; ++k) dq[r][k] = 0.0f;
  }

  const float* q_rows = q_s + warp * kRows * hs;
  const float* dy_rows = dy_s + warp * kRows * hs;
  const int key_end = min(q0 + kTile, T);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();
    LoadTile(k_s, ks, qkv + k_head, R, k0, T, hs);
    LoadTile(v_s, ks, qkv + v_head, R, k0, T, hs);
    __syncthreads();

    // Lane l <-> key j = k0 + l: s[r] = q_r . k_j, dp[r] = dout_r . v_j.
    float s[kRows], dp[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) s[r] = dp[r] = 0.0f;
    const float* k_row = k_s + lane * ks;
    const float* v_row = v_s + lane * ks;
#pragma unroll 4
    for (int d = 0; d < hs; ++d) {
      const float kd = k_row[d];
      const float vd = v_row[d];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        s[r] += q_rows[r * hs + d] * kd;
        dp[r] += dy_rows[r * hs + d] * vd;
      }
    }
    const int j = k0 + lane;
    float ds[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i = q0 + warp * kRows + r;
      const bool valid = j <= i && i < T;
      const float p = valid ? Exp(s[r] * scale - lse_r[r]) : 0.0f;
      ds[r] = p * (dp[r] - D_r[r]) * scale;
    }

    // dq[r] += sum_j ds[r]_j k_j.
    const int keys = min(kTile, T - k0);
    for (int jj = 0; jj < keys; ++jj) {
      float kv[kDims];
#pragma unroll
      for (int k = 0; k < kDims; ++k) {
        const int d = lane + k * kWarpSize;
        kv[k] = d < hs ? k_s[jj * ks + d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float dsj = __shfl_sync(kFullMask, ds[r], jj);
#pragma unroll
        for (int k = 0; k < kDims; ++k) dq[r][k] += dsj * kv[k];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = q0 + warp * kRows + r;
    if (i >= T) continue;
    floatX* dq_row = dqkv + head + static_cast<size_t>(i) * R;
#pragma unroll
    for (int k = 0; k < kDims; ++k) {
      const int d = lane + k * kWarpSize;
      if (d < hs) dq_row[d] = FromFloat<floatX>(ToFloat(dq_row[d]) + dq[r][k]);
    }
  }
}

// hs = C / NH, refusing shapes the kernels do not support.
int HeadSize(int C, int NH, int NKV) {
  FJORD_CHECK(NKV > 0 && NH % NKV == 0, "attention needs NKV dividing NH (NH=" + std::to_string(NH) +
                                            ", NKV=" + std::to_string(NKV) + ")");
  FJORD_CHECK(NH > 0 && C % NH == 0, "attention needs C divisible by NH (C=" + std::to_string(C) +
                                         ", NH=" + std::to_string(NH) + ")");
  const int hs = C / NH;
  FJORD_CHECK(hs <= kMaxHeadSize, "CUDA attention supports head sizes up to " + std::to_string(kMaxHeadSize) +
                                      " (C / NH = " + std::to_string(hs) + ")");
  return hs;
}

// Runs Launcher<kDims>::Run(args...) for the smallest kDims (channels per lane) covering hs; Run is
// a template over the storage type, deduced from the arguments.
template <template <int> class Launcher, typename... Args>
void DispatchHeadSize(int hs, Args... args) {
  if (hs <= 32)
    Launcher<1>::Run(args...);
  else if (hs <= 64)
    Launcher<2>::Run(args...);
  else
    Launcher<4>::Run(args...);
}

// Raises the kernel's dynamic shared memory limit when `bytes` is above the 48 KB default.
template <typename Kernel>
void AllowSmem(Kernel kernel, size_t bytes) {
  constexpr size_t kDefaultSmem = 48 * 1024;
  if (bytes > kDefaultSmem)
    FJORD_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <int kDims>
struct ForwardLauncher {
  template <typename floatX>
  static void Run(const OpContext& ctx, floatX* out, float* lse, const floatX* qkv, int B, int T, int C,
                  int NH, int NKV, int hs, float scale) {
    const size_t smem = ForwardSmemBytes(hs);
    AllowSmem(AttentionForwardKernel<kDims, floatX>, smem);
    const dim3 grid((T + kTile - 1) / kTile, NH, B);
    AttentionForwardKernel<kDims, floatX>
        <<<grid, kThreads, smem, ctx.stream>>>(out, lse, qkv, T, C, NH, NKV, hs, scale);
    FJORD_CUDA_CHECK_LAUNCH();
  }
};

template <int kDims>
struct BackwardLauncher {
  template <typename floatX>
  static void Run(const OpContext& ctx, floatX* dqkv, const floatX* dout, const floatX* qkv,
                  const floatX* out, const float* lse, int B, int T, int C, int NH, int NKV, int hs,
                  float scale) {
    const size_t smem = BackwardSmemBytes(hs);
    const dim3 kv_grid((T + kTile - 1) / kTile, NKV, B);
    AllowSmem(AttentionBackwardKVKernel<kDims, floatX>, smem);
    AttentionBackwardKVKernel<kDims, floatX>
        <<<kv_grid, kThreads, smem, ctx.stream>>>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, hs, scale);
    FJORD_CUDA_CHECK_LAUNCH();
    const dim3 grid((T + kTile - 1) / kTile, NH, B);
    AllowSmem(AttentionBackwardQKernel<kDims, floatX>, smem);
    AttentionBackwardQKernel<kDims, floatX>
        <<<grid, kThreads, smem, ctx.stream>>>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, hs, scale);
    FJORD_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace

template <typename floatX>
void attention_forward(const OpContext& ctx, floatX* out, float* lse, const floatX* qkv, int B, int T, int C,
                       int NH, int NKV) {
  if constexpr (std::is_same_v<floatX, bf16>) {
    if (ctx.tensor_core_attention)
      return experimental::attention_forward_tc(ctx, out, lse, qkv, B, T, C, NH, NKV);
  }
  const int hs = HeadSize(C, NH, NKV);
  if (B == 0 || T == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  DispatchHeadSize<ForwardLauncher>(hs, ctx, out, lse, qkv, B, T, C, NH, NKV, hs, scale);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, attention_forward)

template <typename floatX>
void attention_backward(const OpContext& ctx, floatX* dqkv, const floatX* dout, const floatX* qkv,
                        const floatX* out, const float* lse, int B, int T, int C, int NH, int NKV) {
  if constexpr (std::is_same_v<floatX, bf16>) {
    if (ctx.tensor_core_attention) {
      return experimental::attention_backward_tc(ctx, dqkv, dout, qkv, out, lse, B, T, C, NH, NKV);
    }
  }
  const int hs = HeadSize(C, NH, NKV);
  if (B == 0 || T == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  DispatchHeadSize<BackwardLauncher>(hs, ctx, dqkv, dout, qkv, out, lse, B, T, C, NH, NKV, hs, scale);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, attention_backward)

}  // namespace fjord::cuda
