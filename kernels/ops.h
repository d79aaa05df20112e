// The op set of the GPT model, declared once for every backend.
//
// Each op is declared here, once, through FJORD_MODEL_OP_LIST (function templates over the
// storage type floatX, instantiated for float and bf16) and FJORD_OP_LIST (fp32 functions).
// kernels/cpu/ defines them in namespace fjord::cpu (the plain, obviously right oracle) and
// kernels/cuda/ defines the same signatures in namespace fjord::cuda. The model calls ops through
// an `Ops` table of function pointers, so it is written once and runs on either backend in either
// precision; a twin whose signature drifts fails to compile.
//
// Conventions shared by all ops:
// - Tensors are raw row-major pointers owned by the caller, on the backend's device.
//   B = batch, T = sequence length, C = channels, NH = heads, V = vocabulary, Vp = V padded.
//   N is a row count, n an element count.
// - Precision. The model ops (FJORD_MODEL_OP_LIST) exist for two storage types `floatX` of
//   activations, their gradients and the parameters they read: float (model.dtype FP32) and bf16
//   (model.dtype BF16, mixed precision). Everything else is fp32 whatever floatX is: parameter
//   gradients (so accumulation over micro-steps and the all-reduce never round to bf16), the
//   LayerNorm statistics, the attention log-sum-exp and the losses. With bf16, an op reads its
//   bf16 inputs exactly, computes in fp32 (every reduction, dot product and softmax accumulates
//   in fp32 or wider) and rounds each floatX output once, to nearest with ties to even; an output
//   that accumulates (+=) is read, added to in fp32 and rounded once. With float the ops are the
//   fp32 ops they always were. The optimizer ops (FJORD_OP_LIST) are fp32 only: AdamW updates
//   the fp32 master weights and can write the bf16 copy the model ops read in the same pass;
//   cast_to_bf16 derives that copy where no update runs.
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

// A bfloat16 value as its bit pattern: sign, 8 exponent bits, 7 mantissa bits (the top half of
// the fp32 with the same sign and exponent). Layout-compatible with CUDA's __nv_bfloat16;
// conversions are ToFloat / FromFloat in kernels/pointwise_math.h.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be two bytes");

// Per-call execution context: which stream, library handles and kernel variants a backend uses.
// The CPU backend ignores it; the CUDA backend requires `stream` and `blas` to be set by the
// runtime.
struct OpContext {
  CUstream_st* stream = nullptr;  // CUDA stream the op is enqueued on
  void* blas = nullptr;           // cublasLtHandle_t
  void* workspace = nullptr;      // GEMM workspace, owned by the runtime
  size_t workspace_bytes = 0;
  // CUDA, bf16 only: attention_forward / attention_backward run the tensor-core kernels of
  // kernels/cuda/attention_tc.cuh instead of the SIMT ones (job spec model.attention). The caller
  // checks their requirements first (ResolveAttention in runtime/train/trainer.h); the kernels abort
  // on a shape or device they do not support.
  bool tensor_core_attention = false;
};

// X(name, params...) for each model op, `floatX` being the storage type (see Precision above);
// the OpContext parameter is added by the users of the list.
#define FJORD_MODEL_OP_LIST(X, floatX)                                                                       \
  /* out[B,T,C] = wte[tokens[b,t], :] + wpe[t, :]; tokens in [0, V). wpe may be null (no learned             \
     positions, Llama): out = wte[tokens[b,t], :]. */                                                        \
  X(encoder_forward, floatX* out, const int32_t* tokens, const floatX* wte, const floatX* wpe, int B, int T, \
    int C)                                                                                                   \
  /* dwte[tokens[b,t], :] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:] (skipped when dwpe is null).        \
     Deterministic. */                                                                                       \
  X(encoder_backward, float* dwte, float* dwpe, const floatX* dout, const int32_t* tokens, int B, int T,     \
    int C)                                                                                                   \
  /* Per row r of inp[N,C]: out = (x - mean) * rstd * weight + bias, eps 1e-5; saves mean[N] and             \
     rstd[N] for the backward pass. */                                                                       \
  X(layernorm_forward, floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,       \
    const floatX* bias, size_t N, int C)                                                                     \
  X(layernorm_backward, floatX* dinp, float* dweight, float* dbias, const floatX* dout, const floatX* inp,   \
    const floatX* weight, const float* mean, const float* rstd, size_t N, int C)                             \
  /* residual[N,C] = a + b (exactly residual_forward), then out, mean, rstd = layernorm_forward              \
     of the stored residual: bitwise that composition, but each row of a and b is read once and              \
     residual is not read back by a second op. residual must not alias a, b or out. */                       \
  X(residual_layernorm_forward, floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,    \
    const floatX* b, const floatX* weight, const floatX* bias, size_t N, int C)                              \
  /* out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]; bias may be null. */                                  \
  X(matmul_forward, floatX* out, const floatX* inp, const floatX* weight, const floatX* bias, size_t N,      \
    int C, int OC)                                                                                           \
  /* dinp += dout @ weight; dweight += dout^T @ inp; dbias += column sums of dout. dbias may be              \
     null (no bias); dinp may be null (input needs no gradient). */                                          \
  X(matmul_backward, floatX* dinp, float* dweight, float* dbias, const floatX* dout, const floatX* inp,      \
    const floatX* weight, size_t N, int C, int OC)                                                           \
  /* The MLP's first layer: pre = matmul_forward(inp, weight, bias) (bias required) and                      \
     out = gelu_forward(pre), keeping pre for gelu_backward; out and pre must not overlap. The               \
     CPU twin is exactly that composition, GELU of the stored (rounded) pre. A backend may fuse              \
     the GELU into the GEMM's epilogue and take it from the unrounded fp32 value with its own                \
     GELU evaluation (kernels/cuda/matmul.cu says by how much out can then differ). */                       \
  X(matmul_gelu_forward, floatX* out, floatX* pre, const floatX* inp, const floatX* weight,                  \
    const floatX* bias, size_t N, int C, int OC)                                                             \
  /* Causal self-attention with grouped-query heads. qkv[B,T,(NH + 2 NKV) hs] holds NH query heads,          \
     then NKV key heads, then NKV value heads (hs = C / NH channels each, head-major); NKV divides NH        \
     and query head h attends with key/value head h / (NH / NKV) (Hugging Face's repeat_kv), which is        \
     read in place, never repeated in memory. NKV == NH is multi-head attention (GPT-2: qkv[B,T,3C]).        \
     out[B,T,C] = softmax(q k^T / sqrt(hs), causal) v. Saves lse[B,NH,T], the log-sum-exp of each row        \
     of scaled scores, instead of the T x T probabilities, so no backend ever materialises T x T per         \
     head outside a tile. */                                                                                 \
  X(attention_forward, floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int NH, int NKV)     \
  /* dqkv += gradient of out w.r.t. qkv, recomputing probabilities from qkv and lse. */                      \
  X(attention_backward, floatX* dqkv, const floatX* dout, const floatX* qkv, const floatX* out,              \
    const float* lse, int B, int T, int C, int NH, int NKV)                                                  \
  /* RMSNorm (Llama): per row of inp[N,C], out = x * rstd * weight with rstd = 1 / sqrt(mean(x^2) + eps),    \
     saving rstd[N] for the backward pass. */                                                                \
  X(rmsnorm_forward, floatX* out, float* rstd, const floatX* inp, const floatX* weight, size_t N, int C,     \
    float eps)                                                                                               \
  X(rmsnorm_backward, floatX* dinp, float* dweight, const floatX* dout, const floatX* inp,                   \
    const floatX* weight, const float* rstd, size_t N, int C)                                                \
  /* Rotary position embeddings on the q and k heads of inp[B,T,(NH + 2 NKV) hs] (attention's layout),       \
     Hugging Face's rotate_half convention: for i < hs/2, with (c, s) = freqs[t, i, 0..1],                   \
     out[i] = x[i] c - x[i + hs/2] s and out[i + hs/2] = x[i + hs/2] c + x[i] s; the v heads are copied.     \
     freqs[T, hs/2, 2] (cos, sin of t * inv_freq[i]) is fp32 and computed by the caller. hs even. */         \
  X(rope_forward, floatX* out, const floatX* inp, const float* freqs, int B, int T, int NH, int NKV, int hs) \
  /* dinp += the rotation's transpose applied to dout (q, k heads), dinp += dout (v heads). */               \
  X(rope_backward, floatX* dinp, const floatX* dout, const float* freqs, int B, int T, int NH, int NKV,      \
    int hs)                                                                                                  \
  /* SwiGLU (Llama's MLP): inp[N, 2H] = [gate | up] per row; out[N,H] = silu(gate) * up,                     \
     silu(g) = g / (1 + e^-g). */                                                                            \
  X(swiglu_forward, floatX* out, const floatX* inp, size_t N, int H)                                         \
  X(swiglu_backward, floatX* dinp, const floatX* inp, const floatX* dout, size_t N, int H)                   \
  /* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) elementwise over n values. */                     \
  X(gelu_forward, floatX* out, const floatX* inp, size_t n)                                                  \
  X(gelu_backward, floatX* dinp, const floatX* inp, const floatX* dout, size_t n)                            \
  /* out = a + b; backward: da += dout, db += dout. */                                                       \
  X(residual_forward, floatX* out, const floatX* a, const floatX* b, size_t n)                               \
  X(residual_backward, floatX* da, floatX* db, const floatX* dout, size_t n)                                 \
  /* Fused softmax + cross-entropy over the first V of Vp columns of logits[N,Vp]:                           \
     losses[r] = -log softmax(logits[r, :V])[targets[r]]. When write_dlogits is non-zero, logits             \
     is overwritten in place with dloss * (softmax - onehot(target)), padded columns set to 0;               \
     no probabilities are stored. targets in [0, V). */                                                      \
  X(fused_classifier, floatX* logits, float* losses, const int32_t* targets, size_t N, int V, int Vp,        \
    float dloss, int write_dlogits)                                                                          \
  /* x[0:n] = 0. */                                                                                          \
  X(fill_zero, floatX* x, size_t n)

// X(name, params...) for each fp32-only op (the optimizer's and the casts).
#define FJORD_OP_LIST(X)                                                                                   \
  /* AdamW (decoupled weight decay, bias-corrected moments) on n parameters, step t >= 1:                  \
     g = grads * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;                                   \
     params -= lr (mhat / (sqrt(vhat) + eps) + weight_decay params). When params_bf16 is non-null          \
     it also writes the bf16 working copy of the new params in the same pass: exactly                      \
     cast_to_bf16(params_bf16, params, n, seed, index0) after the update, so a caller updating a           \
     range of a larger buffer passes the range's offset as index0 and rounds as a cast of the              \
     whole buffer would. Null: params, m and v only. */                                                    \
  X(adamw_update, float* params, const float* grads, float* m, float* v, size_t n, float lr, float beta1,  \
    float beta2, float eps, float weight_decay, float grad_scale, int t, bf16* params_bf16, uint64_t seed, \
    size_t index0)                                                                                         \
  /* out[0] = sum of x[i]^2 over n values (accumulated in higher precision where the backend               \
     can). */                                                                                              \
  X(sum_squares, float* out, const float* x, size_t n)                                                     \
  /* bf16 from fp32 over n values. seed == 0: round to nearest, ties to even. seed != 0:                   \
     stochastic rounding, up with probability equal to the distance from the value below over              \
     the gap, from a hash of (seed, index0 + i), so results are the same on every backend and a            \
     range of a buffer cast on its own (index0 = its offset) rounds as in a cast of the whole.             \
     NaN stays NaN (quiet), infinities stay infinite; finite values beyond the largest bf16                \
     round to infinity as the rounding says. */                                                            \
  X(cast_to_bf16, bf16* out, const float* inp, size_t n, uint64_t seed, size_t index0)                     \
  /* out = the fp32 value of each bf16 in inp (exact). */                                                  \
  X(cast_from_bf16, float* out, const bf16* inp, size_t n)

#define FJORD_DECLARE_OP(name, ...) void name(const OpContext& ctx, __VA_ARGS__);
#define FJORD_DECLARE_MODEL_OP(name, ...) \
  template <typename floatX>              \
  void name(const OpContext& ctx, __VA_ARGS__);
#define FJORD_OP_POINTER(name, ...) void (*name)(const OpContext& ctx, __VA_ARGS__);

// In a backend's source file after the definition of model op `name` (a function template in
// namespace `ns`): its two instantiations, float and bf16.
#define FJORD_INSTANTIATE_MODEL_OP(ns, name)          \
  template decltype(ns::name<float>) ns::name<float>; \
  template decltype(ns::name<::fjord::bf16>) ns::name<::fjord::bf16>;

namespace cpu {
FJORD_MODEL_OP_LIST(FJORD_DECLARE_MODEL_OP, floatX)
FJORD_OP_LIST(FJORD_DECLARE_OP)
}  // namespace cpu

#ifdef FJORD_HAVE_CUDA
namespace cuda {
FJORD_MODEL_OP_LIST(FJORD_DECLARE_MODEL_OP, floatX)
FJORD_OP_LIST(FJORD_DECLARE_OP)
}  // namespace cuda
#endif

// The model ops of one backend for one storage type.
template <typename floatX>
struct ModelOps {
  FJORD_MODEL_OP_LIST(FJORD_OP_POINTER, floatX)
};

// A backend's op table. The model holds one and calls through it.
struct Ops {
  const char* name;
  ModelOps<float> f32;   // model.dtype FP32
  ModelOps<bf16> bf16x;  // model.dtype BF16
  FJORD_OP_LIST(FJORD_OP_POINTER)

  // f32 or bf16x by type, for code written once over floatX.
  template <typename floatX>
  const ModelOps<floatX>& model() const;
};

template <>
inline const ModelOps<float>& Ops::model<float>() const {
  return f32;
}
template <>
inline const ModelOps<bf16>& Ops::model<bf16>() const {
  return bf16x;
}

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
