// The op set of the GPT model, declared once for every backend.
//
// Each op is declared here, once, through FJORD_OP_LIST. kernels/cpu/ defines them in namespace
// fjord::cpu (the plain, obviously right oracle) and kernels/cuda/ defines the same signatures in
// namespace fjord::cuda. The model calls ops through an `Ops` table of function pointers, so it
// is written once and runs on either backend; a twin whose signature drifts fails to compile.
//
// Conventions shared by all ops:
// - Tensors are raw row-major float pointers owned by the caller, on the backend's device.
//   B = batch, T = sequence length, C = channels, NH = heads, V = vocabulary, Vp = V padded.
//   N is a row count, n an element count.
// - Backward ops ACCUMULATE (+=) into every gradient they write, parameter and activation
//   alike, so gradient accumulation over micro-steps and the residual stream's fan-out need no
//   extra passes; the caller zeroes gradient buffers when it starts a new accumulation. The one
//   exception is fused_classifier, which overwrites logits with dlogits in place.
// - Kernels know nothing of configs, ranks or files. Shapes are trusted: the model validates
//   them once when it is built. Launch failures are fatal (common/check.h).
#pragma once

#include <cstddef>
#include <cstdint>

struct CUstream_st;

namespace fjord {

// Per-call execution context: which stream and library handles a backend uses. The CPU backend
// ignores it; the CUDA backend requires `stream` and `blas` to be set by the runtime.
struct OpContext {
  CUstream_st* stream = nullptr;  // CUDA stream the op is enqueued on
  void* blas = nullptr;           // cublasLtHandle_t
  void* workspace = nullptr;      // GEMM workspace, owned by the runtime
  size_t workspace_bytes = 0;
};

// X(name, params...) for each op; the OpContext parameter is added by the users of the list.
#define FJORD_OP_LIST(X)                                                                          \
  /* out[B,T,C] = wte[tokens[b,t], :] + wpe[t, :]; tokens in [0, V). */                          \
  X(encoder_forward, float* out, const int32_t* tokens, const float* wte, const float* wpe, int B, \
    int T, int C)                                                                                 \
  /* dwte[tokens[b,t], :] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:]. Deterministic. */       \
  X(encoder_backward, float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,  \
    int T, int C)                                                                                 \
  /* Per row r of inp[N,C]: out = (x - mean) * rstd * weight + bias, eps 1e-5; saves mean[N] and \
     rstd[N] for the backward pass. */                                                           \
  X(layernorm_forward, float* out, float* mean, float* rstd, const float* inp, const float* weight, \
    const float* bias, size_t N, int C)                                                           \
  X(layernorm_backward, float* dinp, float* dweight, float* dbias, const float* dout,            \
    const float* inp, const float* weight, const float* mean, const float* rstd, size_t N, int C) \
  /* out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias may be null. */                      \
  X(matmul_forward, float* out, const float* inp, const float* weight, const float* bias,        \
    size_t N, int C, int OC)                                                                      \
  /* dinp += dout @ weight; dweight += dout^T @ inp; dbias += column sums of dout. dbias may be  \
     null (no bias); dinp may be null (input needs no gradient). */                               \
  X(matmul_backward, float* dinp, float* dweight, float* dbias, const float* dout,               \
    const float* inp, const float* weight, size_t N, int C, int OC)                               \
  /* Causal multi-head self-attention. qkv[B,T,3C] holds q, k, v (each C = NH * hs, head-major   \
     inside C). out[B,T,C] = softmax(q k^T / sqrt(hs), causal) v. Saves lse[B,NH,T], the         \
     log-sum-exp of each row of scaled scores, instead of the T x T probabilities, so no backend \
     ever materialises T x T per head outside a tile. */                                          \
  X(attention_forward, float* out, float* lse, const float* qkv, int B, int T, int C, int NH)    \
  /* dqkv += gradient of out w.r.t. qkv, recomputing probabilities from qkv and lse. */          \
  X(attention_backward, float* dqkv, const float* dout, const float* qkv, const float* out,      \
    const float* lse, int B, int T, int C, int NH)                                                \
  /* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) elementwise over n values. */          \
  X(gelu_forward, float* out, const float* inp, size_t n)                                         \
  X(gelu_backward, float* dinp, const float* inp, const float* dout, size_t n)                    \
  /* out = a + b; backward: da += dout, db += dout. */                                            \
  X(residual_forward, float* out, const float* a, const float* b, size_t n)                       \
  X(residual_backward, float* da, float* db, const float* dout, size_t n)                        \
  /* Fused softmax + cross-entropy over the first V of Vp columns of logits[N,Vp]:               \
     losses[r] = -log softmax(logits[r, :V])[targets[r]]. When write_dlogits is non-zero, logits  \
     is overwritten in place with dloss * (softmax - onehot(target)), padded columns set to 0;   \
     no probabilities are stored. targets in [0, V). */                                           \
  X(fused_classifier, float* logits, float* losses, const int32_t* targets, size_t N, int V,     \
    int Vp, float dloss, int write_dlogits)                                                        \
  /* AdamW (decoupled weight decay, bias-corrected moments) on n parameters, step t >= 1:        \
     g = grads * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;                          \
     params -= lr (mhat / (sqrt(vhat) + eps) + weight_decay params). */                          \
  X(adamw_update, float* params, const float* grads, float* m, float* v, size_t n, float lr,     \
    float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t)             \
  /* out[0] = sum of x[i]^2 over n values (accumulated in higher precision where the backend    \
     can). */                                                                                     \
  X(sum_squares, float* out, const float* x, size_t n)                                            \
  /* x[0:n] = 0. */                                                                               \
  X(fill_zero, float* x, size_t n)                                                                \
  /* bf16 (bit patterns: sign, 8 exponent, 7 mantissa bits) from fp32 over n values. seed == 0:   \
     round to nearest, ties to even. seed != 0: stochastic rounding, up with probability equal   \
     to the distance from the value below over the gap, from a hash of (seed, i), so results are \
     the same on every backend. NaN stays NaN (quiet), infinities stay infinite; finite values   \
     beyond the largest bf16 round to infinity as the rounding says. */                          \
  X(cast_to_bf16, uint16_t* out, const float* inp, size_t n, uint64_t seed)                      \
  /* out = the fp32 value of each bf16 in inp (exact). */                                        \
  X(cast_from_bf16, float* out, const uint16_t* inp, size_t n)

#define FJORD_DECLARE_OP(name, ...) void name(const OpContext& ctx, __VA_ARGS__);
#define FJORD_OP_POINTER(name, ...) void (*name)(const OpContext& ctx, __VA_ARGS__);

namespace cpu {
FJORD_OP_LIST(FJORD_DECLARE_OP)
}  // namespace cpu

#ifdef FJORD_HAVE_CUDA
namespace cuda {
FJORD_OP_LIST(FJORD_DECLARE_OP)
}  // namespace cuda
#endif

// A backend's op table. The model holds one and calls through it.
struct Ops {
  const char* name;
  FJORD_OP_LIST(FJORD_OP_POINTER)
};

// The CPU backend's table (always available).
const Ops& CpuOps();

#ifdef FJORD_HAVE_CUDA
// The CUDA backend's table (kernels/cuda/ops.cu), a process-wide constant; thread-safe to call.
// Every pointer an op takes is a device pointer, scalars excepted, including sum_squares' `out`.
// Each call enqueues work on ctx.stream and returns without waiting; ctx.blas must hold a
// cublasLtHandle_t for the matmul ops, and ctx.workspace (device memory, used in stream order)
// serves the GEMMs and as scratch: encoder_backward needs 16 B*T bytes plus a sort's small
// temporary storage (aborting with the required size when it has less); matmul_backward's bias
// gradient uses it when present. attention_* support head sizes C / NH up to 128.
const Ops& CudaOps();
#endif

}  // namespace fjord
