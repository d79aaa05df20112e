// Fully connected layer on the GPU: the three GEMMs on cuBLASLt, the bias gradient in a kernel, and
// the MLP's GEMM + GELU fused into one cuBLASLt call where cuBLASLt allows.
//
// Layout mapping. cuBLASLt is column-major; a row-major [R, S] matrix with leading dimension S is,
// byte for byte, the column-major [S, R] matrix (its transpose), so every row-major product is run
// as the column-major product of transposes, and nothing is copied:
//   forward  out[N,OC] = inp[N,C] @ W[OC,C]^T   ->  out^T[OC,N] = op_T(W^T[C,OC]) @ inp^T[C,N]
//            m = OC, n = N, k = C; A = weight (stored C x OC, ld C, transposed), B = inp (stored
//            C x N, ld C), D = out (OC x N, ld OC). The bias epilogue adds bias[row of D] = bias[oc].
//   dinp     dinp[N,C] += dout[N,OC] @ W[OC,C]   ->  dinp^T[C,N] += W^T[C,OC] @ dout^T[OC,N]
//            m = C, n = N, k = OC; A = weight (C x OC, ld C), B = dout (OC x N, ld OC), beta = 1.
//   dweight  dW[OC,C] += dout^T[OC,N] @ inp[N,C] ->  dW^T[C,OC] += inp^T[C,N] @ op_T(dout^T[OC,N])
//            m = C, n = OC, k = N; A = inp (C x N, ld C), B = dout (stored OC x N, ld OC,
//            transposed), beta = 1.
// Accumulation (+=) is beta = 1 with C == D, which cuBLASLt supports in place.
//
// Precision and data types. Every GEMM computes in CUBLAS_COMPUTE_32F with fp32 alpha and beta
// (scale type CUDA_R_32F); the operand types follow the storage type floatX (kernels/ops.h):
//   floatX = float  A, B, C, D and bias CUDA_R_32F. COMPUTE_32F never uses TF32 (that would be
//                   CUBLAS_COMPUTE_32F_FAST_TF32): the CPU twin is the oracle and fp32 GEMMs agree
//                   with it to ~sqrt(K) ulp, TF32 only to ~1e-3.
//   floatX = bf16   A and B CUDA_R_16BF (tensor cores: exact products, fp32 accumulation).
//                   forward out and dinp: C = D CUDA_R_16BF, so D is rounded once from fp32, and
//                   dinp's beta = 1 reads the bf16 prior and adds to it in fp32 before that one
//                   rounding; the forward bias is bf16 too (BIAS_DATA_TYPE set to D's type).
//                   dweight: C = D CUDA_R_32F with bf16 A and B (a mixed combination cuBLASLt
//                   supports), so parameter gradients accumulate over micro-steps in fp32.
//
// Epilogues. One Gemm helper serves every GEMM; its Epilogue argument says what cuBLASLt applies to
// the fp32 result before D is stored. The bias and the GELU's auxiliary output are of D's type: bf16
// for bf16 D, fp32 for fp32 D (BIAS_DATA_TYPE is set to it; EPILOGUE_AUX_DATA_TYPE is left at its
// default, D's type, because cublasLt's documentation reserves setting it for fp8 kernels and says
// cublasLtMatmul may refuse it with CUBLAS_STATUS_INVALID_VALUE otherwise).
//   none           D = product (+ beta D). Every GEMM of matmul_backward.
//   BIAS           D = product + bias[row]: matmul_forward with a bias. When the heuristic offers no
//                  algorithm for it, the bias is broadcast into out first and the GEMM accumulates
//                  onto it (the CPU twin's order; with bf16 the broadcast copies bf16 values exactly,
//                  and bias + product is still rounded once).
//   GELU_AUX_BIAS  aux = product + bias and D = GELU(product + bias): matmul_gelu_forward, with
//                  aux = pre (leading dimension OC) and D = out, in the forward layout above.
//                  cublasLt.h requires the aux leading dimension to be a multiple of 8 and at least
//                  m, and takes the aux pointer's alignment from its value (there is no
//                  MIN_ALIGNMENT preference for it). We also ask for a 16-byte aligned pre, so that
//                  every column of aux starts 16-byte aligned like the model's tensors, rather than
//                  rely on the heuristic to turn down a misaligned one. When OC % 8 != 0, pre is
//                  misaligned, or the heuristic offers no algorithm (it may offer none for fp32 D
//                  under COMPUTE_32F), the op runs matmul_forward into pre, then gelu_forward: the
//                  CPU twin's definition. Precision when fused: pre is the BIAS path's value
//                  (rounded once), but cuBLASLt takes the GELU of the fp32 value before that rounding,
//                  with its own fp32 evaluation of the tanh form, while the twin takes GeluForward of
//                  the stored pre. So out can differ from the twin's by a little more than the one
//                  rounding: |GELU'| <= 1.13 times (pre's difference before rounding plus, in bf16,
//                  half an ulp of pre), plus the two GELU evaluations' difference, plus the rounding
//                  of out; tests/cuda/cuda_matmul_test.cc derives the bound it checks. gelu_backward
//                  reads the stored pre on either path, so backward is unchanged.
//
// Bias gradient: dbias is a deterministic column sum of dout over N rows in a kernel rather than
// the BGRADB epilogue, which overwrites rather than accumulates and is not offered for every fp32
// layout; it reads floatX dout and sums in fp32. Pass 1 splits the rows into R chunks (grid of
// column blocks x chunks), pass 2 adds the R partials of each column in chunk order; the partials
// live in ctx.workspace (R x OC floats, up to kMaxChunks x OC), reused after the GEMMs on the same
// stream. With no or too small a workspace R shrinks, down to 1 (one pass straight into dbias). The
// sum order depends only on (N, OC, workspace_bytes), so results are bitwise reproducible for a
// given configuration.
//
// Alignment: cuBLASLt's heuristic assumes 256-byte aligned operands unless told otherwise, so each
// call passes the actual alignment of A, B, C and D (down to 2 bytes, a bf16 element); the model's
// tensors are 64-byte aligned.
// Algorithm choice depends on the workspace offered (ctx.workspace_bytes; 32 MiB suits Hopper), and
// so may the last bits of the results. Descriptors are created per call (a few microseconds of host
// time); caching them per shape is left for when profiles ask for it. The column-sum kernels use at
// most 32 registers and 1 KB of shared memory on sm_90, no spills, for both storage types (their
// shared memory holds fp32 partial sums either way).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::cuda {
namespace {

// "CUBLAS_STATUS_X: <text>" for a cuBLAS(Lt) status code.
std::string DescribeCublasStatus(cublasStatus_t status) {
  return std::string(cublasLtGetStatusName(status)) + ": " + cublasLtGetStatusString(status);
}

// Aborts with a report when the cuBLASLt call `stmt` does not return CUBLAS_STATUS_SUCCESS. This file
// is the only cuBLASLt user so far; the macro moves to cuda_check.cuh when a second one appears.
#define FJORD_CUBLAS_CHECK(stmt) \
  FJORD_API_CHECK_GEN(stmt, cublasStatus_t, CUBLAS_STATUS_SUCCESS, DescribeCublasStatus)

using cuda_detail::kWarpSize;

constexpr int kBiasBlock = 256;
constexpr int kColumnRows = 8;      // threadIdx.y extent of the column-sum kernel
constexpr int kMaxChunks = 64;      // row chunks of the column sum, i.e. partials per column
constexpr size_t kChunkRows = 256;  // target rows per chunk
// The GELU epilogue's aux matrix: its leading dimension must be a multiple of this (cublasLt.h,
// CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD), and we ask for this pointer alignment (header comment).
constexpr int kAuxLdMultiple = 8;
constexpr uintptr_t kAuxAlignment = 16;

// RAII owners of the cuBLASLt descriptors; copies deleted.
class MatmulDesc {
 public:
  MatmulDesc() { FJORD_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F)); }
  ~MatmulDesc() { (void)cublasLtMatmulDescDestroy(desc_); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  template <typename T>
  void Set(cublasLtMatmulDescAttributes_t attr, const T& value) {
    FJORD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, attr, &value, sizeof(value)));
  }
  cublasLtMatmulDesc_t get() const { return desc_; }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
};

// A column-major matrix of `type` as stored: rows x cols with leading dimension ld.
class Layout {
 public:
  Layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
    FJORD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_, type, rows, cols, ld));
  }
  ~Layout() { (void)cublasLtMatrixLayoutDestroy(layout_); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
  cublasLtMatrixLayout_t get() const { return layout_; }

 private:
  cublasLtMatrixLayout_t layout_ = nullptr;
};

class Preference {
 public:
  Preference() { FJORD_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref_)); }
  ~Preference() { (void)cublasLtMatmulPreferenceDestroy(pref_); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  template <typename T>
  void Set(cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
    FJORD_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref_, attr, &value, sizeof(value)));
  }
  cublasLtMatmulPreference_t get() const { return pref_; }

 private:
  cublasLtMatmulPreference_t pref_ = nullptr;
};

// Largest power of two (2 to 256) dividing the address: what the heuristic may assume. fp32
// operands are always at least 4-byte aligned; a bf16 operand may be only 2-byte aligned.
uint32_t AlignmentOf(const void* p) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 2 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// cuBLASLt's data type and a short name (for messages) of each storage type.
template <typename T>
struct GemmType;
template <>
struct GemmType<float> {
  static constexpr cudaDataType_t kType = CUDA_R_32F;
  static constexpr const char* kName = "fp32";
};
template <>
struct GemmType<bf16> {
  static constexpr cudaDataType_t kType = CUDA_R_16BF;
  static constexpr const char* kName = "bf16";
};

// What cuBLASLt applies to the accumulator before storing D (see "Epilogues" above). Both epilogues
// used here add a bias: bias[i] to row i of D, i < m.
template <typename TD>
struct Epilogue {
  cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
  const TD* bias = nullptr;
  TD* aux = nullptr;   // GELU_AUX_BIAS: receives the GELU's input, m x n column-major
  int64_t aux_ld = 0;  // in elements
};

// The BIAS epilogue, or none for a null bias.
template <typename TD>
Epilogue<TD> BiasEpilogue(const TD* bias) {
  return bias != nullptr ? Epilogue<TD>{CUBLASLT_EPILOGUE_BIAS, bias} : Epilogue<TD>{};
}

// One column-major GEMM D[m,n] = epilogue(op(A)[m,k] @ op(B)[k,n] + beta D) (C == D), in fp32
// compute whatever the types: A and B are of type TAB; C, D, the bias and the aux output of type
// TD. A is stored m x k (k x m when trans_a), B k x n (n x k when trans_b). Returns false, without
// running anything, when an epilogue was asked for and the heuristic offers no algorithm with it;
// aborts on any other failure.
template <typename TAB, typename TD>
bool Gemm(const OpContext& ctx, bool trans_a, bool trans_b, uint64_t m, uint64_t n, uint64_t k, const TAB* A,
          int64_t lda, const TAB* B, int64_t ldb, float beta, TD* D, int64_t ldd,
          const Epilogue<TD>& epilogue) {
  FJORD_CHECK(ctx.blas != nullptr, "matmul ops need OpContext::blas set to a cublasLtHandle_t");
  cublasLtHandle_t handle = static_cast<cublasLtHandle_t>(ctx.blas);
  MatmulDesc desc;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  desc.Set(CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  desc.Set(CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  const bool with_epilogue = epilogue.kind != CUBLASLT_EPILOGUE_DEFAULT;
  if (with_epilogue) {
    desc.Set(CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue.kind);
    desc.Set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, epilogue.bias);
    // D's type is the default for the bias; set anyway, so that its type is stated where its
    // pointer is passed.
    desc.Set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(GemmType<TD>::kType));
  }
  if (epilogue.aux != nullptr) {
    // The aux output takes D's type by default; EPILOGUE_AUX_DATA_TYPE stays unset (header comment).
    desc.Set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<void*>(epilogue.aux));
    desc.Set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, epilogue.aux_ld);
  }
  const Layout a_layout(GemmType<TAB>::kType, trans_a ? k : m, trans_a ? m : k, lda);
  const Layout b_layout(GemmType<TAB>::kType, trans_b ? n : k, trans_b ? k : n, ldb);
  const Layout d_layout(GemmType<TD>::kType, m, n, ldd);

  const size_t workspace_bytes = ctx.workspace != nullptr ? ctx.workspace_bytes : 0;
  Preference pref;
  pref.Set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_bytes));
  pref.Set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, AlignmentOf(A));
  pref.Set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, AlignmentOf(B));
  pref.Set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, AlignmentOf(D));
  pref.Set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, AlignmentOf(D));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle, desc.get(), a_layout.get(), b_layout.get(), d_layout.get(),
                                     d_layout.get(), pref.get(), 1, &heuristic, &found);
  // NOT_SUPPORTED is the heuristic's way of saying "no algorithm" for some configurations.
  if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)
    FatalError(__FILE__, __LINE__, "cublasLtMatmulAlgoGetHeuristic failed: " + DescribeCublasStatus(status));
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    if (with_epilogue) return false;
    FatalError(__FILE__, __LINE__,
               std::string("cuBLASLt offers no algorithm for A/B ") + GemmType<TAB>::kName + ", C/D " +
                   GemmType<TD>::kName + " (fp32 compute), m=" + std::to_string(m) +
                   " n=" + std::to_string(n) + " k=" + std::to_string(k) + " (transa " +
                   std::to_string(trans_a) + ", transb " + std::to_string(trans_b) + ", alignments A/B/D " +
                   std::to_string(AlignmentOf(A)) + "/" + std::to_string(AlignmentOf(B)) + "/" +
                   std::to_string(AlignmentOf(D)) + " bytes, workspace " + std::to_string(workspace_bytes) +
                   " bytes): " + DescribeCublasStatus(status));
  }
  const float alpha = 1.0f;
  FJORD_CUBLAS_CHECK(cublasLtMatmul(handle, desc.get(), &alpha, A, a_layout.get(), B, b_layout.get(), &beta,
                                    D, d_layout.get(), D, d_layout.get(), &heuristic.algo, ctx.workspace,
                                    workspace_bytes, ctx.stream));
  return true;
}

// out[r, j] = bias[j] for r < N, j < OC (the fallback when the bias epilogue is not offered): a
// copy, exact in either storage type.
template <typename floatX>
__global__ void BroadcastBiasKernel(floatX* out, const floatX* bias, size_t N, int OC) {
  const size_t n = N * OC;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x)
    out[i] = bias[i % OC];
}

// Column sums of dout[N,OC] over the rows of chunk blockIdx.y ([y * chunk_rows, ...)).
// blockDim = (32, kColumnRows); block x owns columns [32 x, 32 x + 32). With `partials` null the
// chunk is all rows and the sum is added to dbias; otherwise it is stored in partials[y * OC + c].
// dout is read with ToFloat; all sums are fp32.
template <typename floatX>
__global__ void ColumnSumKernel(float* dbias, float* partials, const floatX* dout, size_t N, int OC,
                                size_t chunk_rows) {
  __shared__ float part[kColumnRows][kWarpSize + 1];
  const int c = blockIdx.x * kWarpSize + threadIdx.x;
  const size_t begin = blockIdx.y * chunk_rows;
  const size_t end = begin + chunk_rows < N ? begin + chunk_rows : N;
  float acc = 0.0f;
  if (c < OC)
    for (size_t r = begin + threadIdx.y; r < end; r += kColumnRows) acc += ToFloat(dout[r * OC + c]);
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < OC) {
    float total = 0.0f;
    for (int y = 0; y < kColumnRows; ++y) total += part[y][threadIdx.x];
    if (partials == nullptr)
      dbias[c] += total;
    else
      partials[blockIdx.y * static_cast<size_t>(OC) + c] = total;
  }
}

// dbias[c] += sum over chunks y (in order) of partials[y * OC + c].
__global__ void AddPartialsKernel(float* dbias, const float* partials, int chunks, int OC) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= OC) return;
  float total = 0.0f;
  for (int y = 0; y < chunks; ++y) total += partials[y * static_cast<size_t>(OC) + c];
  dbias[c] += total;
}

template <typename floatX>
void BiasGradient(const OpContext& ctx, float* dbias, const floatX* dout, size_t N, int OC) {
  size_t chunks = (N + kChunkRows - 1) / kChunkRows;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  const size_t fit = ctx.workspace != nullptr ? ctx.workspace_bytes / (sizeof(float) * OC) : 0;
  if (chunks > fit) chunks = fit;
  if (chunks < 2) chunks = 1;
  const size_t chunk_rows = (N + chunks - 1) / chunks;
  float* partials = chunks > 1 ? static_cast<float*>(ctx.workspace) : nullptr;
  const dim3 grid((OC + kWarpSize - 1) / kWarpSize, static_cast<unsigned int>(chunks));
  ColumnSumKernel<<<grid, dim3(kWarpSize, kColumnRows), 0, ctx.stream>>>(dbias, partials, dout, N, OC,
                                                                         chunk_rows);
  FJORD_CUDA_CHECK_LAUNCH();
  if (partials != nullptr) {
    AddPartialsKernel<<<(OC + kBiasBlock - 1) / kBiasBlock, kBiasBlock, 0, ctx.stream>>>(
        dbias, partials, static_cast<int>(chunks), OC);
    FJORD_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

template <typename floatX>
void matmul_forward(const OpContext& ctx, floatX* out, const floatX* inp, const floatX* weight,
                    const floatX* bias, size_t N, int C, int OC) {
  if (N == 0) return;
  if (Gemm<floatX, floatX>(ctx, /*trans_a=*/true, /*trans_b=*/false, OC, N, C, weight, C, inp, C, 0.0f, out,
                           OC, BiasEpilogue(bias)))
    return;
  // No algorithm with the bias epilogue: bias first, then accumulate the product onto it.
  BroadcastBiasKernel<<<cuda_detail::GridFor(N * OC, kBiasBlock), kBiasBlock, 0, ctx.stream>>>(out, bias, N,
                                                                                               OC);
  FJORD_CUDA_CHECK_LAUNCH();
  Gemm<floatX, floatX>(ctx, true, false, OC, N, C, weight, C, inp, C, 1.0f, out, OC, Epilogue<floatX>{});
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, matmul_forward)

template <typename floatX>
void matmul_backward(const OpContext& ctx, floatX* dinp, float* dweight, float* dbias, const floatX* dout,
                     const floatX* inp, const floatX* weight, size_t N, int C, int OC) {
  if (N == 0) return;
  if (dinp != nullptr)
    Gemm<floatX, floatX>(ctx, false, false, C, N, OC, weight, C, dout, OC, 1.0f, dinp, C, Epilogue<floatX>{});
  Gemm<floatX, float>(ctx, false, true, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C, Epilogue<float>{});
  if (dbias != nullptr) BiasGradient(ctx, dbias, dout, N, OC);
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, matmul_backward)

template <typename floatX>
void matmul_gelu_forward(const OpContext& ctx, floatX* out, floatX* pre, const floatX* inp,
                         const floatX* weight, const floatX* bias, size_t N, int C, int OC) {
  if (N == 0) return;
  // The bias is part of the contract; unchecked, a null one would fault in the epilogue on the
  // device (asynchronously) or be dropped silently by the fallback.
  FJORD_CHECK(bias != nullptr, "matmul_gelu_forward needs a bias");
  const bool aux_allowed = OC % kAuxLdMultiple == 0 && reinterpret_cast<uintptr_t>(pre) % kAuxAlignment == 0;
  if (aux_allowed &&
      Gemm<floatX, floatX>(ctx, /*trans_a=*/true, /*trans_b=*/false, OC, N, C, weight, C, inp, C, 0.0f, out,
                           OC, Epilogue<floatX>{CUBLASLT_EPILOGUE_GELU_AUX_BIAS, bias, pre, OC}))
    return;
  // Not fusable here: the two ops, which are the CPU twin's definition.
  matmul_forward(ctx, pre, inp, weight, bias, N, C, OC);
  gelu_forward(ctx, out, pre, N * static_cast<size_t>(OC));
}
FJORD_INSTANTIATE_MODEL_OP(fjord::cuda, matmul_gelu_forward)

}  // namespace fjord::cuda
