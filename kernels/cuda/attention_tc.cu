// Causal self-attention forward and backward for bf16 on tensor cores (flash-attention-2 style),
// EXPERIMENTAL.
//
// Status: selectable, not the default. With model.attention: TENSOR_CORE in the job spec (bf16)
// the runtime sets OpContext::tensor_core_attention and the bf16 attention_forward and
// attention_backward of kernels/cuda/attention.cu hand over to these; ATTENTION_AUTO keeps the SIMT
// kernels until a GPU run shows both: the tests here passing (tests/cuda/cuda_attention_tc_test.cc,
// against the CPU twin and the SIMT kernels) and cuda_ops_bench's rows `attention_forward tc bf16`
// and `attention_backward tc bf16` faster than the SIMT rows. The two are independent: the
// backward reads out and lse, which either forward produces to the same contract. Neither has run
// on a GPU yet; the backward's fragment index maps were checked only by a lane-level emulation on
// the host (every dq, dk, dv element written once, exact agreement with attention backward in
// double on hs 64/128, T up to 130).
//
// Forward work split: one block per (64-row query tile, head, batch), 4 warps, each warp owning 16
// query rows (the M of one MMA); query tiles are launched longest first. The block walks the 64-key
// tiles up to the causal diagonal. Per key tile, each warp computes its 16 x 64 scores S = Q K^T
// with mma.sync m16n8k16 (bf16 inputs, fp32 accumulators), scales them by 1/sqrt(hs), masks
// keys j > i on the diagonal tile (the only tile with masked keys, and the only one that can hold keys
// past T), runs the online softmax on the fp32 scores, and adds P V into its fp32 output
// accumulator with the same MMA. The accumulator layout of S (row g = lane / 4 and g + 8, columns
// 2 (lane % 4) + {0, 1} of each n8 tile) is exactly the A-operand layout of the P V MMA for two
// adjacent n8 tiles, so P goes from the S registers to the next MMA without shared memory. A row's
// max and sum are reduced over the 4 lanes (a quad) that hold it; the running sum l stays a
// per-lane partial sum until the end (the rescaling factor is the same on all 4 lanes), and
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
// probabilities p are rounded to bf16 (to nearest even, relative error <= 2^-8, bf16 having 8
// significant bits) before the P V MMA, while l sums the unrounded fp32 p. So out differs from the
// fp32 algorithm by at most 2^-8 sum_j (p_j / l) |v_j| <= 2^-8 max |v| per element, plus summation
// order; lse is unaffected. The test derives its tolerance from this.
//
// Grouped-query attention (kernels/ops.h): qkv rows hold NH query heads, then NKV key and NKV
// value heads; query head h reads key/value head h / (NH / NKV) in place (no repeated copy).
//
// Requirements (AttentionForwardTensorCoreSupported and the launcher's checks): hs = C / NH of 64
// or 128; any B, T; qkv 16-byte aligned (with hs and C multiples of 8, every staged row then is);
// out 4-byte aligned (pairs of bf16 are stored as one 32-bit word); an sm_80+ device.
//
// Resources of the forward (nvcc 13, -O3 -Xptxas -v): hs = 64 uses 168 registers on sm_90 and
// sm_80 (the cap of __launch_bounds__(128, 3)), hs = 128 uses 254 on sm_90 and 252 on sm_80 (cap of
// (128, 2)), no spills, no stack; with 18 KB / 34 KB of shared memory per block, registers bound
// occupancy at 3 blocks (12 warps) per SM for hs = 64 and 2 blocks (8 warps) for hs = 128.
// Unbounded, hs = 64 would take ~190 registers; capped at 128 (4 blocks) it spills 24-40 bytes.
//
// Backward: two kernels, as in the SIMT version, so every dqkv element has exactly one writer (no
// atomics, bitwise reproducible). The price is computing S and dP twice, once per kernel.
//  - dK/dV: one block per (64-key tile, key/value head, batch), 4 warps of 16 keys each, K and V
//    staged once. For each query head of the key/value head's group in turn (grouped-query
//    attention: NH / NKV heads; one for multi-head) the block walks the query tiles from the diagonal to T in
//    steps of StepRows (64 queries at hs = 64, 32 at hs = 128), staging Q, dout and the step's lse and D =
//    dout . out (fp32, from 16-byte loads, a fixed shuffle order). Per step each warp computes the transposed
//    products, rows = its keys: S^T = K Q^T (mma, fp32), P^T = exp(S^T scale - lse) with p exactly 0 where
//    key > query or query >= T, dV += P^T dout, dP^T = V dout^T, dS^T = P^T (dP^T - D),
//    dK += dS^T Q. The C fragments of P^T and dS^T become the A fragments of the next MMA by the
//    forward's trick (rounded to bf16), and Q and dout, k-major for those MMAs, are read with
//    ldmatrix.trans. At the end dK scale and dV are added to the prior dqkv and rounded once.
//  - dQ: one block per (64-query tile, head, batch), longest first, 4 warps of 16 queries; Q, dout,
//    lse and D staged once; the block walks key tiles of StepRows keys up to the diagonal:
//    S = Q K^T, dP = dout V^T, dS = P (dP - D), dQ += dS K (K k-major: ldmatrix.trans); dQ scale
//    added to the prior and rounded once.
// The scale 1/sqrt(hs) multiplies the fp32 accumulators once at the end (the CPU twin multiplies
// each ds; the difference is fp32 rounding). Both kernels read every operand from shared memory
// with ldmatrix (no register-resident tiles: the accumulators need the registers).
// Precision: as the forward's, with two relaxations: p is rounded to bf16 for dV += P^T dout and
// ds for dK += dS^T Q and dQ += dS K (each relative error <= 2^-8, against fp32 p and ds, which
// are computed unrounded); so each dq, dk, dv element differs from the fp32 algorithm by at most
// 2^-8 times the sum of its terms' magnitudes (e.g. 2^-8 sum_i p_ij |dout_i| for dv_j), plus
// summation order; the test derives its per-element tolerance from this.
// Requirements: the forward's, plus dout and out 16-byte aligned (read with 16-byte loads) and
// dqkv 4-byte aligned (pairs read and written as 32-bit words).
// Resources (nvcc 13, -O3 -Xptxas -v), __launch_bounds__(128, 2), no spills, no stack:
//   dK/dV hs = 64: 234 registers on sm_90, 219 on sm_80; hs = 128: 244 / 246;
//   dQ    hs = 64: 232 / 220;                            hs = 128: 210 / 210.
// Dynamic shared memory (the same bound for both kernels): 36.5 KB at hs = 64, 51.5 KB at hs = 128
// (above the 48 KB default: the launcher raises the limit). Registers bound occupancy at 2 blocks
// (8 warps) per SM. With a cap of 168 registers (3 blocks) the hs = 64 kernels spill 16-48 bytes;
// with 64-wide steps at hs = 128 the dQ kernel spills 48 bytes at 254 registers.
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

// ldmatrix row addresses: lane l points at row l % 8 of matrix l / 8, matrices ordered (rows 0-7,
// cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) of a 16 x 16 block.
__device__ inline int LdRow(int lane) { return lane % 8 + (lane / 8) % 2 * 8; }
__device__ inline int LdCol(int lane) { return lane / 16 * 8; }

// The A fragment of the 16 x 16 block at (row0, col0) of a row-major bf16 tile (row stride `stride`).
__device__ inline void LoadA(uint32_t (&a)[4], const bf16* tile, int stride, int row0, int col0) {
  const int lane = threadIdx.x % kWarpSize;
  LdMatrixX4<false>(a, tile + (row0 + LdRow(lane)) * stride + col0 + LdCol(lane));
}

// B fragments of B = X^T, X stored n-major in a row-major tile (n rows of k values: K in Q K^T): the
// n8 tile of rows n0 .. n0 + 7, for the k-steps at k0 (b[0], b[1]) and k0 + 16 (b[2], b[3]).
__device__ inline void LoadBTransposed(uint32_t (&b)[4], const bf16* tile, int stride, int n0, int k0) {
  const int lane = threadIdx.x % kWarpSize;
  LdMatrixX4<false>(b, tile + (n0 + lane % 8) * stride + k0 + lane / 8 * 8);
}

// B fragments of B = X, X stored k-major in a row-major tile (k rows of n values: V in P V): the
// k-step of rows k0 .. k0 + 15, for the n8 tiles at n0 (b[0], b[1]) and n0 + 8 (b[2], b[3]).
__device__ inline void LoadB(uint32_t (&b)[4], const bf16* tile, int stride, int k0, int n0) {
  const int lane = threadIdx.x % kWarpSize;
  LdMatrixX4<true>(b, tile + (k0 + LdRow(lane)) * stride + n0 + LdCol(lane));
}

// Two fp32 values as a bf16 pair for an A fragment: rounded to nearest even (the relaxation the
// header comment accounts for), `lo` in the lower half.
__device__ inline uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &pair, sizeof(bits));
  return bits;
}

// Copies rows [row0, row0 + kRows) of one head's q, k, v or dout slice (kHs values at
// src + row * row_stride) into dst (row stride kHs + kPad) with 16-byte loads and stores; rows at
// or beyond T are zeros.
template <int kHs, int kRows = kTile>
__device__ inline void StageTile(bf16* dst, const bf16* src, size_t row_stride, int row0, int T) {
  constexpr int kChunks = kHs / 8;  // 16-byte chunks per row
  constexpr int kPerThread = kRows * kChunks / kThreads;
  static_assert(kPerThread * kThreads == kRows * kChunks, "every thread stages the same number of chunks");
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
    AttentionForwardTcKernel(bf16* out, float* lse, const bf16* qkv, int T, int C, int NH, int NKV,
                             float scale) {
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
  // Grouped-query attention: the qkv row holds NH query heads, then NKV key and NKV value heads;
  // query head h reads key/value head h / (NH / NKV) in place.
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * kHs;
  const int g = h / (NH / NKV);
  const bf16* row0 = qkv + static_cast<size_t>(b) * T * R;
  const bf16* base = row0 + static_cast<size_t>(h) * kHs;
  const bf16* k_base = row0 + static_cast<size_t>(NH + g) * kHs;
  const bf16* v_base = row0 + static_cast<size_t>(NH + NKV + g) * kHs;

  StageTile<kHs>(v_s, base, R, q0, T);
  __syncthreads();
  uint32_t q_frag[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) LoadA(q_frag[ks], v_s, kStride, warp * 16, ks * 16);

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
    StageTile<kHs>(k_s, k_base, R, k0, T);
    StageTile<kHs>(v_s, v_base, R, k0, T);
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
        LoadBTransposed(k_frag, k_s, kStride, nt * 8, kp * 32);
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
      p_frag[nt / 2][nt % 2 * 2] = PackBf16(p[0], p[1]);
      p_frag[nt / 2][nt % 2 * 2 + 1] = PackBf16(p[2], p[3]);
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
        LoadB(v_frag, v_s, kStride, kk * 16, dp * 16);
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
void Launch(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
            int NKV) {
  const dim3 grid((T + kTile - 1) / kTile, NH, B);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHs));
  AttentionForwardTcKernel<kHs>
      <<<grid, kThreads, SmemBytes(kHs), ctx.stream>>>(out, lse, qkv, T, C, NH, NKV, scale);
  FJORD_CUDA_CHECK_LAUNCH();
}

// ---- Backward ----

// Queries per step of the dK/dV kernel and keys per step of the dQ kernel: 64 at hs = 64; 32 at
// hs = 128, so that the per-warp score and dP accumulators (16 registers each) fit beside the 128
// (dK and dV) or 64 (dQ) accumulator registers without spilling.
__host__ __device__ constexpr int StepRows(int hs) { return hs <= 64 ? 64 : 32; }
// Blocks per SM the backward kernels' register allocation must allow; see Resources above.
constexpr int BackwardMinBlocks(int hs) { return 2; }

// Dynamic shared memory of either backward kernel: its own two 64-row tiles (K and V, or Q and
// dout), the two StepRows-row tiles it walks (Q and dout, or K and V), and lse and D of up to 64
// rows (the walked rows' in the dK/dV kernel, its own in the dQ kernel).
size_t BackwardSmemBytes(int hs) {
  return sizeof(bf16) * (2 * kTile + 2 * StepRows(hs)) * (hs + kPad) + sizeof(float) * 2 * kTile;
}

// acc[nt] += A X^T for one warp's 16 rows: A is rows a_row0 .. a_row0 + 15 of tile a, X the rows
// 8 nt .. 8 nt + 7 of tile x (both row-major, kK values per row, row stride `stride`): S = Q K^T,
// dP = dout V^T and their transposes. Each lane ends with the C-fragment layout of each n8 tile.
template <int kK, int kNTiles>
__device__ inline void MmaABt(float (&acc)[kNTiles][4], const bf16* a, int a_row0, const bf16* x,
                              int stride) {
#pragma unroll
  for (int kp = 0; kp < kK / 32; ++kp) {
    uint32_t a0[4], a1[4];
    LoadA(a0, a, stride, a_row0, kp * 32);
    LoadA(a1, a, stride, a_row0, kp * 32 + 16);
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      uint32_t b[4];
      LoadBTransposed(b, x, stride, nt * 8, kp * 32);
      Mma(acc[nt], a0, b[0], b[1]);
      Mma(acc[nt], a1, b[2], b[3]);
    }
  }
}

// acc[dt] += A X for one warp's 16 rows: A given as the A fragments of kKSteps k-steps, X the rows
// 0 .. 16 kKSteps - 1 of tile x (row-major, 8 kDimTiles values per row): dV += P^T dout,
// dK += dS^T Q, dQ += dS K.
template <int kKSteps, int kDimTiles>
__device__ inline void MmaAB(float (&acc)[kDimTiles][4], const uint32_t (&a)[kKSteps][4], const bf16* x,
                             int stride) {
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
    for (int dp = 0; dp < kDimTiles / 2; ++dp) {
      uint32_t b[4];
      LoadB(b, x, stride, kk * 16, dp * 16);
      Mma(acc[2 * dp], a[kk], b[0], b[1]);
      Mma(acc[2 * dp + 1], a[kk], b[2], b[3]);
    }
  }
}

// The C fragments of n8 tiles 2 kk and 2 kk + 1 as the A fragment of k-step kk (the forward's P
// trick), rounded to bf16.
template <int kNTiles>
__device__ inline void ToAFragments(uint32_t (&a)[kNTiles / 2][4], const float (&c)[kNTiles][4]) {
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    a[nt / 2][nt % 2 * 2] = PackBf16(c[nt][0], c[nt][1]);
    a[nt / 2][nt % 2 * 2 + 1] = PackBf16(c[nt][2], c[nt][3]);
  }
}

__device__ inline float Bf16Lo(uint32_t pair) { return __uint_as_float(pair << 16); }
__device__ inline float Bf16Hi(uint32_t pair) { return __uint_as_float(pair & 0xffff0000u); }

// lse_s[r] = lse and d_s[r] = D = dout . out (fp32) of rows row0 + r, r < kRows, of one head (0 for
// rows at or beyond T). kThreads / kRows adjacent threads share a row: each sums its 16-byte
// chunks of dout and out, then the partial sums meet by shuffles (a fixed order).
template <int kHs, int kRows>
__device__ inline void StageRowStats(float* lse_s, float* d_s, const bf16* dout, const bf16* out,
                                     const float* row_lse, int row0, int T, int C) {
  constexpr int kPerRow = kThreads / kRows;
  constexpr int kChunks = kHs / 8 / kPerRow;  // 16-byte chunks per thread
  static_assert(kPerRow * kRows == kThreads && kChunks * kPerRow * 8 == kHs, "rows split evenly");
  const int r = threadIdx.x / kPerRow;
  const int part = threadIdx.x % kPerRow;
  const int row = row0 + r;
  float acc = 0.0f;
  if (row < T) {
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      const size_t offset = static_cast<size_t>(row) * C + (c * kPerRow + part) * 8;
      const uint4 dy = *reinterpret_cast<const uint4*>(dout + offset);
      const uint4 y = *reinterpret_cast<const uint4*>(out + offset);
      const uint32_t dy_words[4] = {dy.x, dy.y, dy.z, dy.w}, y_words[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        acc += Bf16Lo(dy_words[w]) * Bf16Lo(y_words[w]);
        acc += Bf16Hi(dy_words[w]) * Bf16Hi(y_words[w]);
      }
    }
  }
#pragma unroll
  for (int offset = 1; offset < kPerRow; offset *= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (part == 0) {
    d_s[r] = acc;
    lse_s[r] = row < T ? row_lse[row] : 0.0f;
  }
}

// rows[i * row_stride + d] += scale * acc for the C-fragment elements of this lane (rows `row` and
// `row + 8`, columns 8 dt + 2 (lane % 4) + {0, 1}), rows < T only: each pair read as one 32-bit
// word, the fp32 contribution added, rounded once, written back.
template <int kDimTiles>
__device__ inline void AccumulateRows(bf16* rows, size_t row_stride, int row, int T,
                                      const float (&acc)[kDimTiles][4], float scale) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row + 8 * r;
    if (i >= T) continue;
    bf16* dst = rows + static_cast<size_t>(i) * row_stride + 2 * t;
#pragma unroll
    for (int dt = 0; dt < kDimTiles; ++dt) {
      uint32_t* pair = reinterpret_cast<uint32_t*>(dst + dt * 8);
      const uint32_t prior = *pair;
      const bf16 lo = FromFloat<bf16>(Bf16Lo(prior) + acc[dt][2 * r] * scale);
      const bf16 hi = FromFloat<bf16>(Bf16Hi(prior) + acc[dt][2 * r + 1] * scale);
      *pair = lo.bits | static_cast<uint32_t>(hi.bits) << 16;
    }
  }
}

// Query head h's slices for the backward kernels, batch blockIdx.z: row 0 of its q and of its
// key/value head's k and v (h / (NH / NKV)) in qkv and dqkv (rows R = (NH + 2 NKV) hs apart), row 0
// in out and dout (rows C apart), and the head's lse.
struct HeadSlices {
  const bf16 *q, *k, *v, *dout, *out;
  bf16 *dq, *dk, *dv;
  const float* lse;
  size_t R;
};

template <int kHs>
__device__ inline HeadSlices Head(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                                  const float* lse, int T, int C, int NH, int NKV, int h) {
  const int b = blockIdx.z;
  const int g = h / (NH / NKV);
  const size_t R = static_cast<size_t>(NH + 2 * NKV) * kHs;
  const size_t row0 = static_cast<size_t>(b) * T * R;
  const size_t q = row0 + static_cast<size_t>(h) * kHs;
  const size_t k = row0 + static_cast<size_t>(NH + g) * kHs;
  const size_t v = row0 + static_cast<size_t>(NH + NKV + g) * kHs;
  const size_t rows = static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * kHs;
  return {qkv + q,
          qkv + k,
          qkv + v,
          dout + rows,
          out + rows,
          dqkv + q,
          dqkv + k,
          dqkv + v,
          lse + (static_cast<size_t>(b) * NH + h) * T,
          R};
}

// dK and dV of the block's 64 keys of key/value head blockIdx.y. Grid: (key tiles, NKV, B);
// blockIdx.x = 0 (the most query tiles) first. Every query head of the group adds to the same
// accumulators in turn, so dk and dv keep one writer.
template <int kHs>
__global__ void __launch_bounds__(kThreads, BackwardMinBlocks(kHs))
    AttentionBackwardKvTcKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                                const float* lse, int T, int C, int NH, int NKV, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int kStride = kHs + kPad;
  constexpr int kQueries = StepRows(kHs);
  constexpr int kQueryTiles = kQueries / 8;  // n8 tiles of a key's row of S^T
  constexpr int kDimTiles = kHs / 8;
  extern __shared__ uint4 smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem);
  bf16* v_s = k_s + kTile * kStride;
  bf16* q_s = v_s + kTile * kStride;
  bf16* dy_s = q_s + kQueries * kStride;
  float* lse_s = reinterpret_cast<float*>(dy_s + kQueries * kStride);
  float* d_s = lse_s + kQueries;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int t = lane % 4;
  const int k0 = blockIdx.x * kTile;
  const int key = k0 + warp * 16 + lane / 4;  // the C-fragment rows of this lane: keys `key`, `key + 8`
  const int group = NH / NKV;
  const int g = blockIdx.y;  // the key/value head
  const HeadSlices kv = Head<kHs>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, g * group);

  StageTile<kHs>(k_s, kv.k, kv.R, k0, T);
  StageTile<kHs>(v_s, kv.v, kv.R, k0, T);
  float dk[kDimTiles][4], dv[kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 4; ++i) dk[dt][i] = dv[dt][i] = 0.0f;

  for (int h = g * group; h < (g + 1) * group; ++h) {
    const HeadSlices hd = Head<kHs>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, h);
    // Queries i >= k0 see this key tile.
    for (int q0 = k0; q0 < T; q0 += kQueries) {
      __syncthreads();  // the previous Q, dout, lse and D are no longer read
      StageTile<kHs, kQueries>(q_s, hd.q, hd.R, q0, T);
      StageTile<kHs, kQueries>(dy_s, hd.dout, C, q0, T);
      StageRowStats<kHs, kQueries>(lse_s, d_s, hd.dout, hd.out, hd.lse, q0, T, C);
      __syncthreads();

      // S^T = K Q^T (rows: this warp's 16 keys; columns: the tile's queries), then P^T in place:
      // p = exp(s scale - lse) in fp32, exactly 0 where the key is after the query or the query is
      // past T.
      float s[kQueryTiles][4];
#pragma unroll
      for (int nt = 0; nt < kQueryTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
      MmaABt<kHs>(s, k_s, warp * 16, q_s, kStride);
#pragma unroll
      for (int nt = 0; nt < kQueryTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int local = nt * 8 + 2 * t + i % 2;
          const int query = q0 + local;
          const bool valid = key + 8 * (i / 2) <= query && query < T;
          s[nt][i] = valid ? Exp(s[nt][i] * scale - lse_s[local]) : 0.0f;
        }
      {  // dV += P^T dout, P rounded to bf16
        uint32_t p_frag[kQueryTiles / 2][4];
        ToAFragments(p_frag, s);
        MmaAB(dv, p_frag, dy_s, kStride);
      }
      // dP^T = V dout^T, then dS^T = P^T (dP^T - D) in place (the scale is applied to dK at the end).
      float dp[kQueryTiles][4];
#pragma unroll
      for (int nt = 0; nt < kQueryTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dp[nt][i] = 0.0f;
      MmaABt<kHs>(dp, v_s, warp * 16, dy_s, kStride);
#pragma unroll
      for (int nt = 0; nt < kQueryTiles; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) dp[nt][i] = s[nt][i] * (dp[nt][i] - d_s[nt * 8 + 2 * t + i % 2]);
      {  // dK += dS^T Q, dS rounded to bf16
        uint32_t ds_frag[kQueryTiles / 2][4];
        ToAFragments(ds_frag, dp);
        MmaAB(dk, ds_frag, q_s, kStride);
      }
    }
  }  // query heads of the group

  AccumulateRows(kv.dk, kv.R, key, T, dk, scale);
  AccumulateRows(kv.dv, kv.R, key, T, dv, 1.0f);
#endif
}

// dQ of the block's 64 queries. Grid: (query tiles, NH, B); blockIdx.x = 0 is the last (longest)
// query tile.
template <int kHs>
__global__ void __launch_bounds__(kThreads, BackwardMinBlocks(kHs))
    AttentionBackwardQTcKernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                               const float* lse, int T, int C, int NH, int NKV, float scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int kStride = kHs + kPad;
  constexpr int kKeys = StepRows(kHs);
  constexpr int kKeyTiles = kKeys / 8;  // n8 tiles of a query's row of S
  constexpr int kDimTiles = kHs / 8;
  extern __shared__ uint4 smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* dy_s = q_s + kTile * kStride;
  bf16* k_s = dy_s + kTile * kStride;
  bf16* v_s = k_s + kKeys * kStride;
  float* lse_s = reinterpret_cast<float*>(v_s + kKeys * kStride);
  float* d_s = lse_s + kTile;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int t = lane % 4;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int row = q0 + warp * 16 + lane / 4;  // the C-fragment rows of this lane: `row`, `row + 8`
  const HeadSlices hd = Head<kHs>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, static_cast<int>(blockIdx.y));

  StageTile<kHs>(q_s, hd.q, hd.R, q0, T);
  StageTile<kHs>(dy_s, hd.dout, C, q0, T);
  StageRowStats<kHs, kTile>(lse_s, d_s, hd.dout, hd.out, hd.lse, q0, T, C);
  __syncthreads();
  float lse_r[2], d_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lse_r[r] = lse_s[row - q0 + 8 * r];
    d_r[r] = d_s[row - q0 + 8 * r];
  }
  float dq[kDimTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles; ++dt)
#pragma unroll
    for (int i = 0; i < 4; ++i) dq[dt][i] = 0.0f;

  // Keys up to the block's last query (the causal diagonal lies in the last 64 / kKeys steps).
  for (int k0 = 0; k0 < q0 + kTile && k0 < T; k0 += kKeys) {
    __syncthreads();  // the previous K and V tiles are no longer read
    StageTile<kHs, kKeys>(k_s, hd.k, hd.R, k0, T);
    StageTile<kHs, kKeys>(v_s, hd.v, hd.R, k0, T);
    __syncthreads();

    float s[kKeyTiles][4], dp[kKeyTiles][4];
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[nt][i] = dp[nt][i] = 0.0f;
    MmaABt<kHs>(s, q_s, warp * 16, k_s, kStride);    // S = Q K^T
    MmaABt<kHs>(dp, dy_s, warp * 16, v_s, kStride);  // dP = dout V^T
    // dS = P (dP - D) in place, p = exp(s scale - lse) exactly 0 for keys after the query and rows
    // past T.
#pragma unroll
    for (int nt = 0; nt < kKeyTiles; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i / 2;
        const int key = k0 + nt * 8 + 2 * t + i % 2;
        const bool valid = key <= row + 8 * r && row + 8 * r < T;
        const float p = valid ? Exp(s[nt][i] * scale - lse_r[r]) : 0.0f;
        dp[nt][i] = p * (dp[nt][i] - d_r[r]);
      }
    uint32_t ds_frag[kKeyTiles / 2][4];
    ToAFragments(ds_frag, dp);
    MmaAB(dq, ds_frag, k_s, kStride);  // dQ += dS K, dS rounded to bf16
  }

  AccumulateRows(hd.dq, hd.R, row, T, dq, scale);
#endif
}

template <int kHs>
void LaunchBackward(const OpContext& ctx, bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                    const float* lse, int B, int T, int C, int NH, int NKV) {
  const dim3 grid((T + kTile - 1) / kTile, NH, B);
  const dim3 kv_grid((T + kTile - 1) / kTile, NKV, B);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHs));
  // Above the 48 KB default at hs = 128; setting the limit is harmless below it.
  const int smem = static_cast<int>(BackwardSmemBytes(kHs));
  FJORD_CUDA_CHECK(cudaFuncSetAttribute(AttentionBackwardKvTcKernel<kHs>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  FJORD_CUDA_CHECK(cudaFuncSetAttribute(AttentionBackwardQTcKernel<kHs>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  AttentionBackwardKvTcKernel<kHs>
      <<<kv_grid, kThreads, smem, ctx.stream>>>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, scale);
  FJORD_CUDA_CHECK_LAUNCH();
  AttentionBackwardQTcKernel<kHs>
      <<<grid, kThreads, smem, ctx.stream>>>(dqkv, dout, qkv, out, lse, T, C, NH, NKV, scale);
  FJORD_CUDA_CHECK_LAUNCH();
}

// The checks both passes make before touching the device (shape, then alignment via `aligned`
// and its message), then the device's compute capability.
void CheckCall(int C, int NH, int NKV, bool aligned, const char* alignment) {
  FJORD_CHECK(AttentionForwardTensorCoreSupported(C, NH),
              "tensor-core attention supports head sizes 64 and 128 (C=" + std::to_string(C) +
                  ", NH=" + std::to_string(NH) + ")");
  FJORD_CHECK(NKV > 0 && NH % NKV == 0, "tensor-core attention needs NKV dividing NH (NH=" +
                                            std::to_string(NH) + ", NKV=" + std::to_string(NKV) + ")");
  FJORD_CHECK(aligned, alignment);
}

void CheckDevice() {
  int device = 0, major = 0;
  FJORD_CUDA_CHECK(cudaGetDevice(&device));
  FJORD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FJORD_CHECK(major >= 8, "tensor-core attention needs an sm_80 or newer device (bf16 mma.sync)");
}

}  // namespace

void attention_forward_tc(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C,
                          int NH, int NKV) {
  CheckCall(C, NH, NKV,
            reinterpret_cast<uintptr_t>(qkv) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 4 == 0,
            "tensor-core attention needs qkv 16-byte aligned and out 4-byte aligned");
  if (B == 0 || T == 0) return;
  CheckDevice();
  if (C / NH == 64)
    Launch<64>(ctx, out, lse, qkv, B, T, C, NH, NKV);
  else
    Launch<128>(ctx, out, lse, qkv, B, T, C, NH, NKV);
}

void attention_backward_tc(const OpContext& ctx, bf16* dqkv, const bf16* dout, const bf16* qkv,
                           const bf16* out, const float* lse, int B, int T, int C, int NH, int NKV) {
  const auto address = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  CheckCall(
      C, NH, NKV,
      address(qkv) % 16 == 0 && address(dout) % 16 == 0 && address(out) % 16 == 0 && address(dqkv) % 4 == 0,
      "tensor-core attention backward needs qkv, dout and out 16-byte aligned and dqkv 4-byte aligned");
  if (B == 0 || T == 0) return;
  CheckDevice();
  if (C / NH == 64)
    LaunchBackward<64>(ctx, dqkv, dout, qkv, out, lse, B, T, C, NH, NKV);
  else
    LaunchBackward<128>(ctx, dqkv, dout, qkv, out, lse, B, T, C, NH, NKV);
}

}  // namespace fjord::cuda::experimental
