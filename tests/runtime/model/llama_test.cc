// The Llama branch of the model (GptConfig::arch kLlama) against the independent double-precision
// forward of llama_reference.h: the loss, every parameter gradient by central finite differences
// in double, on tiny configurations with grouped-query attention 4:2, rope_theta 500000 with
// Llama 3.1 scaling and an untied lm_head, with and without q/k/v biases, and tied. Also the layout
// (Hugging Face's names, in an order that keeps the gradient-ready ranges contiguous), the rotary
// frequencies against transformers' formula, the bf16 model against the reference with bf16
// storage emulated, and that it can fit a batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/pointwise_math.h"
#include "runtime/model/gpt.h"
#include "runtime/model/optimizer.h"
#include "tests/runtime/model/gpt_test_util.h"
#include "tests/runtime/model/llama_reference.h"

namespace fjord {
namespace {

using testing::ParamsAsDouble;
using testing::RandomizeParams;
using testing::RandomTokens;

// 2 layers, 4 query heads and 2 key/value heads of 4 channels, SwiGLU width 24, 7 positions,
// vocabulary 37 (padded to 128). rope_theta 500000 and llama3 scaling with a short original context
// (64), so that at head size 4 one frequency is kept and the other divided by factor.
GptConfig TinyLlama(bool bias, bool tied = false, Precision precision = Precision::kFp32) {
  GptConfig c = testing::MakeConfig(2, 4, 16, 7, 37, precision);
  c.arch = GptConfig::Arch::kLlama;
  c.n_kv_head = 2;
  c.intermediate_size = 24;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 500000.0;
  c.rope_llama3 = true;
  c.rope_factor = 8.0;
  c.rope_low_freq_factor = 1.0;
  c.rope_high_freq_factor = 4.0;
  c.rope_original_max_position = 64;
  c.attention_bias = bias;
  c.tie_embeddings = tied;
  return c;
}

// The same with head size 8 (n_embd 32), so that llama3 scaling has all three branches.
GptConfig WiderLlama(bool bias) {
  GptConfig c = TinyLlama(bias);
  c.n_embd = 32;
  c.rope_original_max_position = 256;
  return c;
}

// Random weights as in gpt_test_util.h, with lm_head's padded rows zero too.
void Randomize(Gpt& model, uint64_t seed) {
  RandomizeParams(model, seed);
  const GptConfig& c = model.config();
  float* p = model.host_params();
  for (size_t i = static_cast<size_t>(c.vocab_size) * c.n_embd;
       i < static_cast<size_t>(c.padded_vocab) * c.n_embd; ++i)
    p[model.layout().lm_head() + i] = 0.0f;
  model.SyncParamsToDevice();
}

// Head size 8 with rope_theta 10 and llama3 scaling (original context 16, high_freq_factor 2):
// wavelengths 6.3, 11, 20 and 35 positions, so within 7 positions one frequency is kept, one
// interpolated and two divided by factor, all with angles large enough to move the loss. The
// Llama 3 settings above barely rotate 7 positions at head size 4; this one makes a wrong
// rotation or scaling visible in the loss.
GptConfig FastRotaryLlama(bool bias) {
  GptConfig c = WiderLlama(bias);
  c.rope_theta = 10.0;
  c.rope_original_max_position = 16;
  c.rope_high_freq_factor = 2.0;
  return c;
}

struct Variant {
  const char* name;
  GptConfig config;
  bool rotary_sensitive;  // the loss moves by more than the tolerance without llama3 scaling
};

std::vector<Variant> Variants() {
  return {{"untied, no bias", TinyLlama(false), false},
          {"untied, attention_bias", TinyLlama(true), false},
          {"tied", TinyLlama(false, true), false},
          {"head size 8, rope_theta 10, attention_bias", FastRotaryLlama(true), true}};
}

TEST(LlamaTest, RopeInvFreqMatchesTransformersFormula) {
  // Llama 3.1 8B's rotary settings (head size 128) and the tiny ones of these tests.
  GptConfig big = TinyLlama(false);
  big.n_head = 32;
  big.n_embd = 4096;
  big.rope_original_max_position = 8192;
  for (const GptConfig& c : {big, TinyLlama(false), WiderLlama(false), FastRotaryLlama(false)}) {
    const std::vector<float> got = RopeInvFreq(c);
    const std::vector<double> ref = testing::ReferenceRopeInvFreq(c);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) EXPECT_NEAR(got[i], ref[i], 1e-6 * ref[i]) << i;
  }
}

TEST(LlamaTest, RopeScalingBranchesAreExercised) {
  // At head size 8 (original context 256, or 16 with high_freq_factor 2 at rope_theta 10): a high
  // frequency kept, one interpolated, two divided by factor; otherwise a wrong branch could pass
  // the whole-model tests unnoticed.
  for (const GptConfig& c : {WiderLlama(false), FastRotaryLlama(false)}) {
    GptConfig unscaled = c;
    unscaled.rope_llama3 = false;
    const std::vector<double> scaled = testing::ReferenceRopeInvFreq(c),
                              plain = testing::ReferenceRopeInvFreq(unscaled);
    ASSERT_EQ(scaled.size(), 4u);
    EXPECT_EQ(scaled[0], plain[0]);
    EXPECT_GT(scaled[1], plain[1] / c.rope_factor * 1.01);
    EXPECT_LT(scaled[1], plain[1] * 0.99);
    EXPECT_NEAR(scaled[2], plain[2] / c.rope_factor, 1e-15);
    EXPECT_NEAR(scaled[3], plain[3] / c.rope_factor, 1e-15);
  }
}

TEST(LlamaTest, LayoutHasHuggingFaceNamesAndPackedGroups) {
  const GptConfig c = TinyLlama(true);
  const ParamLayout layout(c);
  std::vector<std::string> names;
  for (const ParamTensor& t : layout.tensors()) names.push_back(t.name);
  const std::string l1 = "model.layers.1.";
  for (const std::string& n :
       {std::string("model.embed_tokens.weight"), l1 + "input_layernorm.weight",
        l1 + "self_attn.q_proj.weight", l1 + "self_attn.k_proj.weight", l1 + "self_attn.v_proj.weight",
        l1 + "self_attn.q_proj.bias", l1 + "self_attn.k_proj.bias", l1 + "self_attn.v_proj.bias",
        l1 + "self_attn.o_proj.weight", l1 + "post_attention_layernorm.weight", l1 + "mlp.gate_proj.weight",
        l1 + "mlp.up_proj.weight", l1 + "mlp.down_proj.weight", std::string("model.norm.weight"),
        std::string("lm_head.weight")})
    EXPECT_EQ(std::count(names.begin(), names.end(), n), 1) << n;
  EXPECT_EQ(names.size(), 1 + 2 * 12 + 2u);
  // q, k, v (and their biases), gate and up follow each other without a gap: one GEMM each.
  const auto& t = layout.tensors();
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    const bool packed = t[i].name.ends_with("q_proj.weight") || t[i].name.ends_with("k_proj.weight") ||
                        t[i].name.ends_with("q_proj.bias") || t[i].name.ends_with("k_proj.bias") ||
                        t[i].name.ends_with("gate_proj.weight");
    if (packed) {
      EXPECT_EQ(t[i + 1].offset, t[i].offset + t[i].size()) << t[i].name;
    }
    EXPECT_GE(t[i + 1].offset, t[i].offset + t[i].size()) << t[i].name;
    EXPECT_EQ(t[i].weight_decay, t[i].shape.size() == 2) << t[i].name;
  }
  EXPECT_EQ(layout.num_params(), ParamCount(c));
  EXPECT_EQ(ParamLayout(TinyLlama(false, true)).num_params(), ParamCount(TinyLlama(false, true)));
  EXPECT_EQ(layout.wpe(), ParamLayout::kNone);
}

TEST(LlamaTest, ForwardLossMatchesDoubleReference) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    const GptConfig& c = v.config;
    const int B = 2, T = 7;
    Gpt model(c, B, T, CpuOps());
    Randomize(model, 1);
    auto tokens = RandomTokens(B * T, c.vocab_size, 2), targets = RandomTokens(B * T, c.vocab_size, 3);
    const float loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
    const double ref =
        testing::ReferenceLlamaLoss(c, model.layout(), ParamsAsDouble(model), tokens, targets, B, T);
    ASSERT_GT(ref, 0.1);
    EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref));
    if (!v.rotary_sensitive) continue;
    // Here the check sees the rotary embedding: without llama3 scaling, or with a rotation by
    // pairs (i, i + 1) instead of (i, i + hs/2), the loss moves by far more than the tolerance.
    GptConfig unscaled = c;
    unscaled.rope_llama3 = false;
    const double other =
        testing::ReferenceLlamaLoss(unscaled, model.layout(), ParamsAsDouble(model), tokens, targets, B, T);
    EXPECT_GT(std::abs(other - ref), 100 * 1e-5 * std::abs(ref));
  }
}

TEST(LlamaTest, EveryGradientMatchesFiniteDifferencesInDouble) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    const GptConfig& c = v.config;
    const int B = 2, T = 5;
    Gpt model(c, B, T, CpuOps());
    Randomize(model, 4);
    auto tokens = RandomTokens(B * T, c.vocab_size, 5), targets = RandomTokens(B * T, c.vocab_size, 6);
    model.ZeroGrads();
    model.Forward(tokens.data(), targets.data(), B, T, 1.0f);
    model.Backward();
    std::vector<double> p = ParamsAsDouble(model);
    const double h = 1e-5;
    int checked = 0;
    double max_grad = 0.0;
    const size_t real_rows = static_cast<size_t>(c.vocab_size) * c.n_embd;
    for (const ParamTensor& t : model.layout().tensors()) {
      const bool vocab = t.offset == model.layout().wte() || t.offset == model.layout().lm_head();
      const size_t n = vocab ? real_rows : t.size();
      for (size_t i = 0; i < n; ++i) {
        const size_t k = t.offset + i;
        const double saved = p[k];
        p[k] = saved + h;
        const double up = testing::ReferenceLlamaLoss(c, model.layout(), p, tokens, targets, B, T);
        p[k] = saved - h;
        const double down = testing::ReferenceLlamaLoss(c, model.layout(), p, tokens, targets, B, T);
        p[k] = saved;
        const double fd = (up - down) / (2 * h);
        max_grad = std::max(max_grad, std::abs(fd));
        ASSERT_NEAR(model.grads()[k], fd, 2e-5 + 2e-3 * std::abs(fd)) << t.name << "[" << i << "]";
        ++checked;
      }
      for (size_t i = n; i < t.size(); ++i)
        ASSERT_EQ(model.grads()[t.offset + i], 0.0f) << t.name << " padded";
    }
    EXPECT_GT(checked, 3000);
    EXPECT_GT(max_grad, 1e-2);
  }
}

TEST(LlamaTest, GradReadyRangesCoverAllParamsInDecreasingOrder) {
  const GptConfig c = TinyLlama(true);
  Gpt model(c, 1, 4, CpuOps());
  Randomize(model, 13);
  auto tokens = RandomTokens(4, c.vocab_size, 14);
  model.ZeroGrads();
  model.Forward(tokens.data(), tokens.data(), 1, 4, 1.0f);
  std::vector<std::pair<size_t, std::vector<float>>> snapshots;
  model.Backward([&](size_t begin, size_t end) {
    snapshots.emplace_back(begin, std::vector<float>(model.grads() + begin, model.grads() + end));
  });
  ASSERT_EQ(snapshots.size(), static_cast<size_t>(c.n_layer) + 2);
  EXPECT_EQ(snapshots.front().first + snapshots.front().second.size(), model.num_params());
  EXPECT_EQ(snapshots.back().first, 0u);
  for (size_t i = 1; i < snapshots.size(); ++i)
    EXPECT_EQ(snapshots[i].first + snapshots[i].second.size(), snapshots[i - 1].first);
  // Final when reported.
  for (const auto& [begin, values] : snapshots)
    for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(values[i], model.grads()[begin + i]) << begin + i;
}

// bf16 storage, emulated in the reference at the points the model stores values (as
// gpt_bf16_test.cc does for GPT-2): loss within the bf16 roundings of the activations.
TEST(LlamaTest, Bf16LossMatchesReferenceWithBf16Storage) {
  const GptConfig c = TinyLlama(true, false, Precision::kBf16);
  const int B = 2, T = 7;
  Gpt model(c, B, T, CpuOps());
  Randomize(model, 21);
  auto tokens = RandomTokens(B * T, c.vocab_size, 22), targets = RandomTokens(B * T, c.vocab_size, 23);
  const float loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
  auto round = [](double x) { return static_cast<double>(ToFloat(FromFloat<bf16>(static_cast<float>(x)))); };
  const double ref =
      testing::ReferenceLlamaLoss(c, model.layout(), ParamsAsDouble(model), tokens, targets, B, T, round);
  const double fp32 =
      testing::ReferenceLlamaLoss(c, model.layout(), ParamsAsDouble(model), tokens, targets, B, T);
  // Each op rounds once where the reference rounds once; fp32 arithmetic inside ops and a few
  // ties of double-rounding leave far less than the bf16 effect itself (checked below).
  EXPECT_NEAR(loss, ref, 2e-3 * std::abs(ref));
  EXPECT_GT(std::abs(fp32 - ref), 2 * std::abs(loss - ref));
}

TEST(LlamaTest, OverfitsOneBatch) {
  GptConfig c = TinyLlama(false);
  c.n_embd = 32;
  c.max_seq_len = 16;
  c.vocab_size = 64;
  c.padded_vocab = 128;
  const int B = 4, T = 16;
  Gpt model(c, B, T, CpuOps());
  model.InitGpt2(17);
  auto tokens = RandomTokens(B * T + 1, c.vocab_size, 18);
  std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
  AdamW optimizer(model.layout(), 0, model.num_params(), CpuOps());
  float loss = 0.0f;
  for (int step = 1; step <= 400; ++step) {
    model.ZeroGrads();
    loss = model.Forward(inputs.data(), targets.data(), B, T, 1.0f);
    model.Backward();
    optimizer.Step(model.params(), model.grads(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, step);
    if (loss < 0.05f) break;
  }
  EXPECT_LT(loss, 0.05f);
}

}  // namespace
}  // namespace fjord
