// Experimental tensor-core forward and backward passes of causal attention for bf16
// (kernels/cuda/attention_tc.cu says how they work and what decides whether they replace the SIMT
// kernels). The bf16 attention ops of the table call them when OpContext::tensor_core_attention is
// set (job spec model.attention: TENSOR_CORE); their test (tests/cuda/cuda_attention_tc_test.cc)
// and cuda_ops_bench call them directly.
#pragma once

#include "kernels/ops.h"

namespace fjord::cuda::experimental {

// Whether attention_forward_tc supports these shapes: head size C / NH of 64 or 128, any B and T.
// A pure function of its arguments (no device query), so callers can ask it anywhere. The call
// additionally needs an sm_80+ device, qkv 16-byte aligned and out 4-byte aligned (true of
// cudaMalloc'd buffers and of any offset into them by a multiple of 8 elements).
inline bool AttentionForwardTensorCoreSupported(int C, int NH) {
  return C > 0 && NH > 0 && C % NH == 0 && (C / NH == 64 || C / NH == 128);
}

// The attention_forward op of kernels/ops.h for bf16 (same arguments, outputs and contract, except
// that the probabilities are rounded to bf16 before the product with V; see attention_tc.cu).
// Aborts when the shape is not supported, a pointer is misaligned, or the device is below sm_80.
// NKV key/value heads dividing NH: grouped-query attention as kernels/ops.h describes it.
void attention_forward_tc(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C,
                          int NH, int NKV);

// The attention_backward op of kernels/ops.h for bf16 (same arguments and contract: dqkv
// ACCUMULATES, each element read, its fp32 contribution added, rounded once), except that the
// probabilities p and the score gradients ds are rounded to bf16 before their products (see
// attention_tc.cu). Same shape and device requirements as attention_forward_tc; qkv, dout and out
// 16-byte aligned, dqkv 4-byte aligned. Deterministic: no atomics, every dqkv element has one
// writer.
void attention_backward_tc(const OpContext& ctx, bf16* dqkv, const bf16* dout, const bf16* qkv,
                           const bf16* out, const float* lse, int B, int T, int C, int NH, int NKV);

}  // namespace fjord::cuda::experimental
