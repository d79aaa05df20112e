// Shared pieces of the whole-model tests (gpt_test.cc, gpt_bf16_test.cc): a tiny configuration
// with awkward sizes, seeded tokens and seeded parameters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "runtime/model/gpt.h"

namespace fjord::testing {

// A GPT-2 shape: the vocabulary padded to a multiple of 128 as GptConfig::FromSpec pads it.
inline GptConfig MakeConfig(int n_layer, int n_head, int n_embd, int seq_len, int vocab,
                            Precision precision = Precision::kFp32) {
  GptConfig c;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_embd = n_embd;
  c.max_seq_len = seq_len;
  c.vocab_size = vocab;
  c.padded_vocab = (vocab + 127) / 128 * 128;
  c.precision = precision;
  return c;
}

// 2 layers, 2 heads of 6 channels, 7 positions; vocabulary 37 padded to 128, which exercises
// the padded classifier columns.
inline GptConfig TinyConfig(Precision precision = Precision::kFp32) {
  return MakeConfig(2, 2, 12, 7, 37, precision);
}

// The model the fit-one-batch tests train: big enough to memorise 4 x 16 tokens in a few hundred
// AdamW steps, small enough to take a second.
inline GptConfig FitConfig(Precision precision = Precision::kFp32) {
  return MakeConfig(2, 2, 32, 16, 64, precision);
}

inline std::vector<int32_t> RandomTokens(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

// Random master weights larger than GPT-2's init so every path carries signal (LayerNorm weights
// away from 1, non-zero biases); padded vocabulary rows stay zero as in a real model. The same
// seed gives the same weights in every precision; the bf16 working copy is rounded from them.
inline void RandomizeParams(Gpt& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  float* p = model.host_params();
  for (size_t i = 0; i < model.num_params(); ++i) p[i] = normal(rng);
  const GptConfig& c = model.config();
  for (size_t i = static_cast<size_t>(c.vocab_size) * c.n_embd;
       i < static_cast<size_t>(c.padded_vocab) * c.n_embd; ++i)
    p[model.layout().wte() + i] = 0.0f;
  model.SyncParamsToDevice();
}

inline std::vector<double> ParamsAsDouble(const Gpt& model) {
  return std::vector<double>(model.params(), model.params() + model.num_params());
}

}  // namespace fjord::testing
