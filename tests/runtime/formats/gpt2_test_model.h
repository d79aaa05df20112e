// A GPT-2 parameter buffer as the runtime lays it out, built independently of runtime/model/gpt.cc so
// the format tests need only fjord_formats.
#pragma once

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "runtime/formats/gpt2_params.h"

namespace fjord::testing_util {

// A model in the caller's terms: slots laid out as ParamLayout does (layer-major, each tensor
// 16-float aligned, gaps between tensors), random weights, zero padded vocabulary rows.
struct TestModel {
  Gpt2Dims dims;
  std::vector<ParamSlot> slots;
  std::vector<float> params;
  const ParamSlot& slot(const std::string& name) const {
    for (const ParamSlot& s : slots) {
      if (s.name == name) return s;
    }
    ADD_FAILURE() << "no slot " << name;
    return slots[0];
  }
  const float* at(const std::string& name) const { return params.data() + slot(name).offset; }
};

inline TestModel MakeModel(const Gpt2Dims& d, uint32_t seed) {
  TestModel m;
  m.dims = d;
  size_t total = 0;
  auto add = [&](const std::string& name, std::vector<int> shape) {
    m.slots.push_back({name, shape, total});
    size_t n = 1;
    for (int s : shape) n *= s;
    total = (total + n + 15) / 16 * 16;
  };
  const int C = d.n_embd;
  add("wte.weight", {d.padded_vocab, C});
  add("wpe.weight", {d.max_seq_len, C});
  for (int l = 0; l < d.n_layer; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C});
    add(p + "ln_1.bias", {C});
    add(p + "attn.c_attn.weight", {3 * C, C});
    add(p + "attn.c_attn.bias", {3 * C});
    add(p + "attn.c_proj.weight", {C, C});
    add(p + "attn.c_proj.bias", {C});
    add(p + "ln_2.weight", {C});
    add(p + "ln_2.bias", {C});
    add(p + "mlp.c_fc.weight", {4 * C, C});
    add(p + "mlp.c_fc.bias", {4 * C});
    add(p + "mlp.c_proj.weight", {C, 4 * C});
    add(p + "mlp.c_proj.bias", {C});
  }
  add("ln_f.weight", {C});
  add("ln_f.bias", {C});
  m.params.assign(total, 0.0f);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (const ParamSlot& s : m.slots) {
    size_t n = 1;
    for (int x : s.shape) n *= x;
    if (s.name == "wte.weight") n = static_cast<size_t>(d.vocab_size) * C;  // padded rows stay zero
    for (size_t i = 0; i < n; ++i) m.params[s.offset + i] = normal(rng);
  }
  return m;
}

}  // namespace fjord::testing_util
