// Weights to and from Hugging Face transformers' Llama family: LlamaForCausalLM,
// MistralForCausalLM and Qwen2ForCausalLM (config.json + model.safetensors, or shards listed by
// model.safetensors.index.json, which save_pretrained writes above its max_shard_size).
//
// fjord's Llama layout (runtime/model/gpt.h) already uses Hugging Face's names, shapes ([out, in])
// and rotate_half layout of q/k, so tensors map by name with no transposition or permutation;
// the only difference is the vocabulary padding: model.embed_tokens.weight and lm_head.weight are
// [padded_vocab, C] in fjord and [vocab_size, C] in the file (padded rows zeroed on import,
// dropped on export). A tied lm_head is not written (as save_pretrained does) and, when present on
// import, must equal the embedding.
//
// config.json: everything that changes the function is read or refused naming the field:
// sliding windows shorter than max_position_embeddings (Mistral's sliding_window, Qwen 2's
// use_sliding_window), mixtures of experts, rope scaling other than "llama3" (or "default"),
// head_dim other than hidden_size / num_attention_heads, activations other than SiLU, MLP biases,
// Llama's attention_bias (it adds an o_proj bias fjord does not model; Qwen 2's q/k/v biases are
// supported). Export writes LlamaForCausalLM, or Qwen2ForCausalLM when the model has q/k/v biases
// (a Mistral model without a sliding window is the same function as a Llama one).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/formats/gpt2_params.h"

namespace fjord {

struct HfLlamaConfig {
  std::string model_type = "llama";  // "llama", "mistral", "qwen2"
  int n_layer = 0;                   // num_hidden_layers
  int n_head = 0;                    // num_attention_heads
  int n_kv_head = 0;                 // num_key_value_heads
  int n_embd = 0;                    // hidden_size
  int intermediate_size = 0;
  int max_position_embeddings = 0;
  int vocab_size = 0;
  int padded_vocab = 0;  // vocab_size rounded up to 128 (fjord's layout)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool rope_llama3 = false;
  double rope_factor = 8.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int rope_original_max_position = 8192;
  bool attention_bias = false;  // q/k/v biases (Qwen 2)
  bool tie_embeddings = false;
};

// Reads DIR/config.json, refusing (FILE:LINE:COL: field: why; what to do) what fjord's Llama
// does not compute.
StatusOr<HfLlamaConfig> ReadHfLlamaConfig(const std::string& dir);

// Fills the tensors at `slots` (fjord's Llama layout for `config`) from DIR's safetensors, single
// or sharded, F32/F16/BF16; every slot must be found exactly once, and no other weight may be in
// the files. Padded embedding/lm_head rows are zeroed; bytes outside the slots are untouched.
Status ImportHfLlama(const std::string& dir, const HfLlamaConfig& config, const std::vector<ParamSlot>& slots,
                     float* params, size_t buffer_floats);

// Writes DIR/config.json and DIR/model.safetensors (F32, one file), each atomically.
Status ExportHfLlama(const std::string& dir, const HfLlamaConfig& config, const std::vector<ParamSlot>& slots,
                     const float* params, size_t buffer_floats);

}  // namespace fjord
