// Fully connected layer: out = inp @ weight^T + bias, on OpenBLAS.
//
// All three GEMMs go to cblas_sgemm in row-major order with transpose flags, so no operand is
// copied or transposed in memory, and beta = 1 gives the accumulate (+=) contract of backward ops.
// The forward bias is written first and the GEMM accumulates onto it (one pass over out).
//
// Threading: the other CPU kernels run on OpenMP, and OpenMP workers spin-wait between parallel
// regions; OpenBLAS's own (pthread) workers then fight them for the cores, which measured 2x
// slower on a whole training step. So OpenBLAS is set to one thread and each GEMM is split into
// per-thread blocks of its larger output dimension, run on the same OpenMP team as everything
// else. Each output element is still one sgemm's full-length dot product; only its block differs.
// dbias is a column sum, split over column blocks so each thread owns its outputs, in double.
//
// bf16: there is no bf16 GEMM here. The operands are widened (exactly) to fp32 copies and the
// fp32 op runs on them, so every product, bias add and += happens in fp32 as for float, and each
// out or dinp element is rounded to bf16 once at the end; dweight and dbias are fp32 anyway. The
// copies are made per call: this path is the oracle for the CUDA bf16 GEMMs, not a fast path.
//
// matmul_gelu_forward is matmul_forward into pre, then gelu_forward from the stored pre: the CPU
// has no GEMM epilogue to fuse the GELU into, so this op exists to be the oracle of the CUDA one
// (which fuses it into cuBLASLt's epilogue) and to let the model make one call on either backend.
// It is that composition bit for bit, in both storage types (tests/kernels/matmul_test.cc).
#include <cblas.h>
#include <omp.h>

#include <cstddef>
#include <memory>
#include <type_traits>

#include "kernels/ops.h"

namespace fjord::cpu {
namespace {

constexpr int kColumnBlock = 64;
// Blocks handed to threads are multiples of this, so GEMM micro-kernels see full tiles.
constexpr size_t kGemmAlign = 16;

// OpenBLAS must not start threads of its own (see the file comment). Done once, before the first
// GEMM; openblas_set_num_threads is process-wide and this library is its only caller.
void UseSingleThreadedBlas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

// Row-major C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, split over OpenMP threads along M or N
// (whichever is larger); each thread calls single-threaded sgemm on its block.
void ParallelSgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, size_t M, size_t N, size_t K,
                   const float* A, size_t lda, const float* B, size_t ldb, float beta, float* C, size_t ldc) {
  UseSingleThreadedBlas();
  const bool split_m = M >= N;
  const size_t extent = split_m ? M : N;
#pragma omp parallel
  {
    const size_t threads = static_cast<size_t>(omp_get_num_threads());
    const size_t id = static_cast<size_t>(omp_get_thread_num());
    size_t chunk = (extent + threads - 1) / threads;
    chunk = (chunk + kGemmAlign - 1) / kGemmAlign * kGemmAlign;
    const size_t begin = id * chunk < extent ? id * chunk : extent;
    const size_t end = begin + chunk < extent ? begin + chunk : extent;
    if (begin < end) {
      const size_t len = end - begin;
      const float* a = A;
      const float* b = B;
      float* c = C;
      if (split_m) {
        a += trans_a == CblasNoTrans ? begin * lda : begin;  // rows of op(A)
        c += begin * ldc;
      } else {
        b += trans_b == CblasNoTrans ? begin : begin * ldb;  // columns of op(B)
        c += begin;
      }
      cblas_sgemm(CblasRowMajor, trans_a, trans_b, static_cast<blasint>(split_m ? len : M),
                  static_cast<blasint>(split_m ? N : len), static_cast<blasint>(K), 1.0f, a,
                  static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
                  static_cast<blasint>(ldc));
    }
  }
}

void MatmulForwardF32(float* out, const float* inp, const float* weight, const float* bias, size_t N, int C,
                      int OC) {
  float beta = 0.0f;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < N; ++r) {
      float* o = out + r * OC;
#pragma omp simd
      for (int j = 0; j < OC; ++j) o[j] = bias[j];
    }
    beta = 1.0f;
  }
  // out[N,OC] (+)= inp[N,C] @ weight[OC,C]^T
  ParallelSgemm(CblasNoTrans, CblasTrans, N, OC, C, inp, C, weight, C, beta, out, OC);
}

void MatmulBackwardF32(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                       const float* weight, size_t N, int C, int OC) {
  // dinp[N,C] += dout[N,OC] @ weight[OC,C]
  if (dinp != nullptr)
    ParallelSgemm(CblasNoTrans, CblasNoTrans, N, C, OC, dout, OC, weight, C, 1.0f, dinp, C);
  // dweight[OC,C] += dout[N,OC]^T @ inp[N,C]
  ParallelSgemm(CblasTrans, CblasNoTrans, OC, C, N, dout, OC, inp, C, 1.0f, dweight, C);
  if (dbias != nullptr) {
    const int blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < blocks; ++blk) {
      const int j0 = blk * kColumnBlock;
      const int width = j0 + kColumnBlock < OC ? kColumnBlock : OC - j0;
      double acc[kColumnBlock] = {};
      for (size_t r = 0; r < N; ++r) {
        const float* d = dout + r * OC + j0;
#pragma omp simd
        for (int j = 0; j < width; ++j) acc[j] += d[j];
      }
      for (int j = 0; j < width; ++j) dbias[j0 + j] += static_cast<float>(acc[j]);
    }
  }
}

// An fp32 copy of n bf16 values (exact, cast_from_bf16), or null for a null x.
std::unique_ptr<float[]> Widen(const bf16* x, size_t n) {
  if (x == nullptr) return nullptr;
  auto wide = std::make_unique_for_overwrite<float[]>(n);
  cast_from_bf16(OpContext{}, wide.get(), x, n);
  return wide;
}

}  // namespace

template <typename floatX>
void matmul_forward(const OpContext& ctx, floatX* out, const floatX* inp, const floatX* weight,
                    const floatX* bias, size_t N, int C, int OC) {
  if constexpr (std::is_same_v<floatX, float>) {
    MatmulForwardF32(out, inp, weight, bias, N, C, OC);
  } else {
    const auto inp32 = Widen(inp, N * C), weight32 = Widen(weight, static_cast<size_t>(OC) * C),
               bias32 = Widen(bias, OC);
    const auto out32 = std::make_unique_for_overwrite<float[]>(N * OC);
    MatmulForwardF32(out32.get(), inp32.get(), weight32.get(), bias32.get(), N, C, OC);
    cast_to_bf16(ctx, out, out32.get(), N * OC, /*seed=*/0, /*index0=*/0);  // to nearest, once
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, matmul_forward)

template <typename floatX>
void matmul_backward(const OpContext& ctx, floatX* dinp, float* dweight, float* dbias, const floatX* dout,
                     const floatX* inp, const floatX* weight, size_t N, int C, int OC) {
  if constexpr (std::is_same_v<floatX, float>) {
    MatmulBackwardF32(dinp, dweight, dbias, dout, inp, weight, N, C, OC);
  } else {
    // dinp is widened with its current values, so the fp32 += lands on them before the rounding.
    const auto dinp32 = Widen(dinp, N * C), dout32 = Widen(dout, N * OC), inp32 = Widen(inp, N * C),
               weight32 = Widen(weight, static_cast<size_t>(OC) * C);
    MatmulBackwardF32(dinp32.get(), dweight, dbias, dout32.get(), inp32.get(), weight32.get(), N, C, OC);
    if (dinp != nullptr) cast_to_bf16(ctx, dinp, dinp32.get(), N * C, /*seed=*/0, /*index0=*/0);
  }
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, matmul_backward)

template <typename floatX>
void matmul_gelu_forward(const OpContext& ctx, floatX* out, floatX* pre, const floatX* inp,
                         const floatX* weight, const floatX* bias, size_t N, int C, int OC) {
  matmul_forward(ctx, pre, inp, weight, bias, N, C, OC);
  gelu_forward(ctx, out, pre, N * static_cast<size_t>(OC));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cpu, matmul_gelu_forward)

}  // namespace fjord::cpu
