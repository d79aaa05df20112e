// Causal self-attention forward for bf16 on tensor cores (flash-attention-2 style), EXPERIMENTAL.
//
// Status: not used by training. The op table (kernels/cuda/ops.cu) still points attention_forward
// at the SIMT kernel of kernels/cuda/attention.cu; this one is called only by its test
// (tests/cuda/cuda_attention_tc_test.cc, against the CPU twin and the SIMT kernel) and by
// cuda_ops_bench's row `attention_forward tc bf16`, next to `attention_forward bf16`. It replaces
// the SIMT forward for bf16 once a GPU run shows both: its test passing and its bench row faster.
// (The backward pass stays SIMT either way; of the forward's results it reads out and lse, which
// this kernel produces to the same contract.)
//
// Work split: one block per (64-row query tile, head, batch), 4 warps, each warp owning 16 query
// rows (the M of one MMA); query tiles are launched longest first. The block walks the 64-key
// tiles up to the causal diagonal. Per key tile, each warp computes its 16 x 64 scores
// S = Q K^T with mma.sync m16n8k16 (bf16 inputs, fp32 accumulators), scales them by 1/sqrt(hs),
// masks keys j > i on the diagonal tile (the only tile with masked keys, and the only one that can
// hold keys past T), runs the online softmax on the fp32 scores, and adds P V into its fp32
// output accumulator with the same MMA. The accumulator layout of S (row g = lane / 4 and g + 8,
// columns 2 (lane % 4) + {0, 1} of each n8 tile) is exactly the A-operand layout of the P V MMA
// for two adjacent n8 tiles, so P goes from the S registers to the next MMA without shared memory.
// A row's max and sum are reduced over the 4 lanes (a quad) that hold it; the running sum l stays
// a per-lane partial sum until the end (the rescaling factor is the same on all 4 lanes), and
// out = acc / l and lse = m + log(l) are written for rows < T only.
//
// Shared memory: the K and V tiles as bf16, 64 rows of hs + 8 elements each (the 16-byte pad
// shifts consecutive rows by 4 banks, so the 8 rows an ldmatrix phase reads hit all 32 banks).
// The Q tile is staged once through the V buffer and moved into registers (the A fragments of all
// hs / 16 k-steps) before the first key tile overwrites it. 18 KB at hs = 64, 34 KB at hs = 128,
// under the 48 KB default. Tiles are staged with 16-byte loads and stores (rows past T as zeros,
// so masked keys multiply finite values); fragments are read with ldmatrix (.trans for V, whose
// B operand is k = key-major). The loads are synchronous (no cp.async double buffering): blocks
// resident on the same SM overlap one another's loads; pipelining is the next tuning step.
//
// Precision, against the contract of kernels/ops.h: qkv is read exactly (bf16 into the MMA, each
// product exact in fp32), scores, the softmax (Exp of kernels/pointwise_math.h, as the CPU twin and
// the SIMT kernel use), l, lse and the output accumulate in fp32, and each out element is rounded
// once with FromFloat<bf16>. The one relaxation, as in every tensor-core flash kernel: the
// probabilities p are rounded to bf16 (to nearest even, relative error <= 2^-9) before the P V
// MMA, while l sums the unrounded fp32 p. So out differs from the fp32 algorithm by at most
// 2^-9 sum_j (p_j / l) |v_j| <= 2^-9 max |v| per element, plus summation order; lse is unaffected.
// The test derives its tolerance from this.
//
// Requirements (AttentionForwardTensorCoreSupported and the launcher's checks): hs = C / NH of 64
// or 128; any B, T; qkv 16-byte aligned (with hs and C multiples of 8, every staged row then is);
// out 4-byte aligned (pairs of bf16 are stored as one 32-bit word); an sm_80+ device.
//
// Resources (nvcc 13, -O3 -Xptxas -v, sm_90 and sm_80 alike): hs = 64 uses 168 registers (the cap
// of __launch_bounds__(128, 3)), hs = 128 uses 253 (cap of (128, 2)), no spills, no stack; with
// 18 KB / 34 KB of shared memory per block, registers bound occupancy at 3 blocks (12 warps) per
// SM for hs = 64 and 2 blocks (8 warps) for hs = 128. Unbounded, hs = 64 would take ~190
// registers; capped at 128 (4 blocks) it spills 24-40 bytes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda::experimental {
namespace {

using cuda_detail::kWarpSize;

constexpr int kTile = 64;           // query rows per block, and keys per key tile
constexpr int kWarps = kTile / 16;  // each warp owns 16 query rows
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kPad = 8;  // bf16 of padding per shared-memory row (16 bytes, keeps rows 16-byte aligned)

// Blocks per SM the register allocation must allow (__launch_bounds__); see Resources above.
constexpr int MinBlocks(int hs) { return hs <= 64 ? 3 : 2; }

size_t SmemBytes(int hs) { return sizeof(bf16) * 2 * kTile * (hs + kPad); }

// D += A B for one m16n8k16 MMA: A 16 x 16 row-major, B 16 x 8 column-major, bf16 pairs packed in
// 32-bit registers (lower half first), D fp32. Fragment layouts are those of the PTX ISA.
__device__ inline void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix
// l / 8, and receives in r[m] row l / 4, columns 2 (l % 4) + {0, 1} of matrix m, or with kTrans
// column l / 4, rows 2 (l % 4) + {0, 1}. The "memory" clobber keeps it after the stores and the
// barrier that fill the tile.
template <bool kTrans>
__device__ inline void LdMatrixX4(uint32_t (&r)[4], const bf16* row) {
  const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
}

// Two probabilities as a bf16 pair for an A fragment: rounded to nearest even (the relaxation the
// header comment accounts for), `lo` in the lower half.
__device__ inline uint32_t PackProbabilities(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

// Copies rows [row0, row0 + kTile) of one head's q, k or v slice (kHs values at
// src + row * row_stride) into dst (row stride kHs + kPad) with 16-byte loads and stores; rows at
// or beyond T are zeros.
template <int kHs>
__device__ inline void StageTile(bf16* dst, const bf16* src, size_t row_stride, int row0, int T) {
  constexpr int kChunks = kHs / 8;  // 16-byte chunks per row
  constexpr int kPerThread = kTile * kChunks / kThreads;
  static_assert(kPerThread * kThreads == kTile * kChunks, "every thread stages the same number of chunks");
  uint4 chunk[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {  // all loads first, so they are in flight together
    const int idx = k * kThreads + threadIdx.x;
    const int row = row0 + idx / kChunks;
    chunk[k] = row < T ? *reinterpret_cast<const uint4*>(src + row * row_stride + (idx % kChunks) * 8)
                       : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int idx = k * kThreads + threadIdx.x;
    *reinterpret_cast<uint4*>(dst + (idx / kChunks) * (kHs + kPad) + (idx % kChunks) * 8) = chunk[k];
  }
}

// Grid: (query tiles, NH, B); blockIdx.x = 0 is the last (longest) query tile.
template <int kHs>
__global__ void __launch_bounds__(kThreads, MinBlocks(kHs))
    AttentionForwardTcKernel(bf16* out, float* lse, const bf16* qkv, int T, int C, int NH, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16 mma.sync needs sm_80; the launcher refuses older devices before launching
#else
  constexpr int kStride = kHs + kPad;
  constexpr int kKSteps = kHs / 16;     // k-steps of Q K^T over the head dimension
  constexpr int kDimTiles = kHs / 8;    // n8 tiles of an output row
  constexpr int kKeyTiles = kTile / 8;  // n8 tiles of a score row
  extern __shared__ uint4 smem[];       // uint4: 16-byte aligned
  bf16* k_s = reinterpret_cast<bf16*>(smem);
  bf16* v_s = k_s + kTile * kStride;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int t = lane % 4;  // a fragment's column pair 2t, 2t + 1 ...
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int row = q0 + warp * 16 + lane / 4;  // ... of rows `row` and `row + 8`
  const size_t C3 = size_t{3} * C;
  const bf16* base = qkv + static_cast<size_t>(b) * T * C3 + static_cast<size_t>(h) * kHs;
  // ldmatrix row addresses for A fragments (Q) and, transposed, V's B fragments: matrices
  // (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) of a 16 x 16 block.
  const int ld_row = lane % 8 + (lane / 8) % 2 * 8;
  const int ld_col = lane / 16 * 8;

  StageTile<kHs>(v_s, base, C3, q0, T);
  __syncthreads();
  uint32_t q_frag[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks)
    LdMatrixX4<false>(q_frag[ks], v_s + (warp * 16 + ld_row) * kStride + ks * 16 + ld_col);

  // Per row (index r: rows `row` and `row + 8`): running max m, this lane's part of the running
  // sum l, and the output accumulator in the C-fragment layout of the kDimTiles n8 tiles.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[dt][i] = 0.0f;

  for (int k0 = 0; k0 <= q0; k0 += kTile) {
    __syncthreads();  // the previous K and V tiles (first time: the Q tile) are no longer read
    StageTile<kHs>(k_s, base + C, C3, k0, T);
    StageTile<kHs>(v_s, base + 2 * C, C3, k0, T);
    __syncthreads();

    // S = Q K^T. K's B fragments: matrix m of each ldmatrix is keys 8 nt .. 8 nt + 7 by head
    // dimensions 32 kp + 8 m .., i.e. the two registers of k-steps 2 kp and 2 kp + 1.
    float s[kKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#pragma unroll
      for (int kp = 0; kp < kKSteps / 2; ++kp) {
        uint32_t k_frag[4];
        LdMatrixX4<false>(k_frag, k_s + (nt * 8 + lane % 8) * kStride + kp * 32 + lane / 8 * 8);
        Mma(s[nt], q_frag[2 * kp], k_frag[0], k_frag[1]);
        Mma(s[nt], q_frag[2 * kp + 1], k_frag[2], k_frag[3]);
      }
    }

    // Scale, mask (diagonal tile only; -inf marks a masked key), and the online softmax. Every row
    // sees key k0 <= q0 <= row unmasked, so the tile's max is finite.
    const bool diagonal = k0 == q0;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int key = k0 + nt * 8 + 2 * t + i % 2;
        const int r = i / 2;
        s[nt][i] = diagonal && key > row + 8 * r ? -INFINITY : s[nt][i] * scale;
        tile_max[r] = fmaxf(tile_max[r], s[nt][i]);
      }
    float correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(m[r], tile_max[r]);
      correction[r] = m[r] == -INFINITY ? 0.0f : Exp(m[r] - m_new);
      m[r] = m_new;
      l[r] *= correction[r];
    }
    // p = exp(s - m) in fp32 for l, then rounded to bf16 pairs in the A-fragment layout of P V: the
    // C fragments of score tiles 2 kk and 2 kk + 1 are the A fragment of keys 16 kk .. 16 kk + 15.
    // Masked keys get exactly 0 (Exp clamps its argument, so Exp(-inf) is not 0).
    uint32_t p_frag[kTile / 16][4];
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt) {
      float p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        p[i] = s[nt][i] == -INFINITY ? 0.0f : Exp(s[nt][i] - m[i / 2]);
        l[i / 2] += p[i];
      }
      p_frag[nt / 2][nt % 2 * 2] = PackProbabilities(p[0], p[1]);
      p_frag[nt / 2][nt % 2 * 2 + 1] = PackProbabilities(p[2], p[3]);
    }
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[dt][i] *= correction[i / 2];

#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < kDimTiles / 2; ++dp) {
        // O += P V for keys 16 kk .. 16 kk + 15: V's B fragments for output tiles 2 dp and
        // 2 dp + 1 come from one transposed ldmatrix of the 16 keys x 16 dimensions block.
        uint32_t v_frag[4];
        LdMatrixX4<true>(v_frag, v_s + (kk * 16 + ld_row) * kStride + dp * 16 + ld_col);
        Mma(o[2 * dp], p_frag[kk], v_frag[0], v_frag[1]);
        Mma(o[2 * dp + 1], p_frag[kk], v_frag[2], v_frag[3]);
      }
    }
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row + 8 * r;
    if (i >= T) continue;
    const float inv = 1.0f / l[r];
    bf16* out_row = out + (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * kHs;
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt) {
      const bf16 lo = FromFloat<bf16>(o[dt][2 * r] * inv), hi = FromFloat<bf16>(o[dt][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(out_row + dt * 8 + 2 * t) = lo.bits | static_cast<uint32_t>(hi.bits) << 16;
    }
    if (t == 0) lse[(static_cast<size_t>(b) * NH + h) * T + i] = m[r] + logf(l[r]);
  }
#endif
}

template <int kHs>
void Launch(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH) {
  const dim3 grid((T + kTile - 1) / kTile, NH, B);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHs));
  AttentionForwardTcKernel<kHs>
      <<<grid, kThreads, SmemBytes(kHs), ctx.stream>>>(out, lse, qkv, T, C, NH, scale);
  FJORD_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool AttentionForwardTensorCoreSupported(int C, int NH) {
  if (C <= 0 || NH <= 0 || C % NH != 0) return false;
  const int hs = C / NH;
  return hs == 64 || hs == 128;
}

void attention_forward_tc(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C,
                          int NH) {
  FJORD_CHECK(AttentionForwardTensorCoreSupported(C, NH),
              "tensor-core attention supports head sizes 64 and 128 (C=" + std::to_string(C) +
                  ", NH=" + std::to_string(NH) + ")");
  FJORD_CHECK(reinterpret_cast<uintptr_t>(qkv) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0,
              "tensor-core attention needs qkv 16-byte aligned and out 4-byte aligned");
  if (B == 0 || T == 0) return;
  int device = 0, major = 0;
  FJORD_CUDA_CHECK(cudaGetDevice(&device));
  FJORD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FJORD_CHECK(major >= 8, "tensor-core attention needs an sm_80 or newer device (bf16 mma.sync)");
  if (C / NH == 64)
    Launch<64>(ctx, out, lse, qkv, B, T, C, NH);
  else
    Launch<128>(ctx, out, lse, qkv, B, T, C, NH);
}

}  // namespace fjord::cuda::experimental
