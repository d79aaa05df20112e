// An experimental tensor-core forward pass of causal attention for bf16 (kernels/cuda/attention_tc.cu
// says how it works and what decides whether it replaces the SIMT kernel). It is not in the op
// table: only its test (tests/cuda/cuda_attention_tc_test.cc) and cuda_ops_bench call it.
#pragma once

#include "kernels/ops.h"

namespace fjord::cuda::experimental {

// Whether attention_forward_tc supports these shapes: head size C / NH of 64 or 128, any B and T.
// A pure function of its arguments (no device query), so callers can ask it anywhere. The call
// additionally needs an sm_80+ device, qkv 16-byte aligned and out 4-byte aligned (true of
// cudaMalloc'd buffers and of any offset into them by a multiple of 8 elements).
bool AttentionForwardTensorCoreSupported(int C, int NH);

// The attention_forward op of kernels/ops.h for bf16 (same arguments, outputs and contract, except
// that the probabilities are rounded to bf16 before the product with V; see attention_tc.cu).
// Aborts when the shape is not supported, a pointer is misaligned, or the device is below sm_80.
void attention_forward_tc(const OpContext& ctx, bf16* out, float* lse, const bf16* qkv, int B, int T, int C,
                          int NH);

}  // namespace fjord::cuda::experimental
