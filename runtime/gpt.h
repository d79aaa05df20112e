// The GPT-2 model: parameter layout, activations, forward and backward, written once against
// the backend-neutral op table of kernels/ops.h.
//
// Architecture (GPT-2 exactly): token + learned position embeddings, n_layer pre-LayerNorm
// blocks (attention, then a 4x MLP with tanh GELU, each added to the residual stream), a final
// LayerNorm, and a classifier tied to the token embedding. The vocabulary is padded to a
// multiple of 128 for the classifier GEMM; padded logits never enter the softmax.
//
// Memory: all parameters live in one contiguous buffer and all parameter gradients in another,
// laid out layer-major in forward order: [wte, wpe, layer 0 ... layer L-1, lnf]. The backward
// pass therefore completes gradients from the end of the buffer towards its start, so later
// issues can reduce contiguous buckets while backward continues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/ops.h"
#include "proto/job.pb.h"

namespace fjord {

struct GptConfig {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int max_seq_len = 0;  // learned positions
  int vocab_size = 0;
  int padded_vocab = 0;  // vocab_size rounded up to a multiple of 128

  static GptConfig FromSpec(const proto::ModelSpec& spec);
};

// One parameter tensor inside the flat parameter buffer.
struct ParamTensor {
  std::string name;          // e.g. "h.3.attn.c_attn.weight" (GPT-2 naming)
  size_t offset = 0;         // in floats, into the parameter buffer
  std::vector<int> shape;    // row-major
  bool weight_decay = false;  // AdamW decays matrices and embeddings only
  size_t size() const;
};

// Offsets (in floats) of every tensor, in layer-major forward order.
class ParamLayout {
 public:
  struct Layer {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, attproj_w, attproj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w,
        fcproj_b;
    size_t begin, end;  // [begin, end) of the whole layer
  };

  explicit ParamLayout(const GptConfig& config);

  size_t num_params() const { return total_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const Layer& layer(int l) const { return layers_[l]; }
  size_t wte() const { return wte_; }
  size_t wpe() const { return wpe_; }
  size_t lnf_w() const { return lnf_w_; }
  size_t lnf_b() const { return lnf_b_; }

 private:
  size_t Add(const std::string& name, std::vector<int> shape, bool decay);

  std::vector<ParamTensor> tensors_;
  std::vector<Layer> layers_;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
  size_t total_ = 0;
};

// A 64-byte aligned float buffer on the host; move-only.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t n);
  ~HostBuffer();
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

// Called during Backward when the gradients of params [begin, end) are complete and will not be
// written again by this backward pass. Ranges arrive in decreasing address order.
using GradReadyFn = std::function<void(size_t begin, size_t end)>;

// The model with its parameters, gradients and activations for batches of up to max_batch
// sequences of up to max_seq tokens. The optimizer state lives in AdamW (runtime/optimizer.h),
// so it can be sharded. Not thread-safe; one instance per rank.
class Gpt {
 public:
  // Allocates everything up front; the byte count is available from MemoryBytes(). The
  // parameter and gradient buffers hold buffer_size() floats: num_params() rounded up to a
  // multiple of `buffer_multiple` (zero padding), so they split into equal shards.
  Gpt(const GptConfig& config, int max_batch, int max_seq, const Ops& ops, size_t buffer_multiple = 1);

  // Bytes this model allocates for (config, max_batch, max_seq): parameters, gradients and
  // activations with their gradients. Static so a job can be refused before allocation.
  static size_t MemoryBytes(const GptConfig& config, int max_batch, int max_seq);

  // GPT-2 initialisation from `seed`: N(0, 0.02) for matrices and embeddings, residual
  // projections scaled by 1/sqrt(2 n_layer), zero biases, unit LayerNorm weights; padded
  // vocabulary rows zero.
  void InitGpt2(uint64_t seed);

  // Runs the model on tokens[B*T] (B <= max_batch, T <= max_seq). With targets[B*T] it returns
  // the mean cross-entropy and, when dloss_scale > 0, leaves the loss gradient (scaled by
  // dloss_scale / (B*T) per position) ready for Backward. Without targets it returns 0 and
  // leaves logits for Logits().
  float Forward(const int32_t* tokens, const int32_t* targets, int B, int T, float dloss_scale);

  // Accumulates parameter gradients of the last Forward (which must have had targets and
  // dloss_scale > 0) into grads(). Calls on_ready, if set, as layers complete.
  void Backward(const GradReadyFn& on_ready = nullptr);

  // Sets every parameter gradient to zero (start of an accumulation).
  void ZeroGrads();

  // Sum of squares of all parameter gradients.
  float GradSumSquares();

  // Logits [B, T, padded_vocab] of the last Forward without targets.
  const float* Logits() const;

  const GptConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  size_t num_params() const { return layout_.num_params(); }
  size_t buffer_size() const { return params_.size(); }
  const Ops& ops() const { return ops_; }
  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  float* grads() { return grads_.data(); }
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }

 private:
  struct Acts;  // offsets of activation tensors inside acts_
  float* A(size_t offset) { return acts_.data() + offset; }
  float* G(size_t offset) { return dacts_.data() + offset; }
  float* P(size_t offset) { return params_.data() + offset; }
  float* D(size_t offset) { return grads_.data() + offset; }

  GptConfig config_;
  ParamLayout layout_;
  const Ops& ops_;
  OpContext ctx_;
  int max_batch_, max_seq_;
  int B_ = 0, T_ = 0;
  bool has_dlogits_ = false;
  HostBuffer params_, grads_;
  HostBuffer acts_, dacts_;
  std::vector<int32_t> tokens_;
  std::vector<size_t> act_offsets_;  // see Acts in gpt.cc
};

}  // namespace fjord
