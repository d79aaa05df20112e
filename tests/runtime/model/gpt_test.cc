// The whole model against the double-precision reference in gpt_reference.h: forward loss,
// every parameter gradient (central finite differences in double), initial loss, gradient
// accumulation, the gradient-ready callback, and the ability to fit a fixed batch.
#include "runtime/model/gpt.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "runtime/model/optimizer.h"
#include "tests/runtime/model/gpt_reference.h"
#include "tests/runtime/model/gpt_test_util.h"

namespace fjord {
namespace {

using testing::ParamsAsDouble;
using testing::RandomizeParams;
using testing::RandomTokens;
using testing::TinyConfig;

TEST(GptTest, ForwardLossMatchesDoubleReference) {
  const GptConfig c = TinyConfig();
  const int B = 2, T = 7;
  Gpt model(c, B, T, CpuOps());
  RandomizeParams(model, 1);
  auto tokens = RandomTokens(B * T, c.vocab_size, 2), targets = RandomTokens(B * T, c.vocab_size, 3);
  const float loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
  const double ref =
      testing::ReferenceGptLoss(c, model.layout(), ParamsAsDouble(model), tokens, targets, B, T);
  ASSERT_GT(ref, 0.1);
  // fp32 forward through ~20 ops of width <= 48: relative error of a few 1e-6 is expected.
  EXPECT_NEAR(loss, ref, 1e-5 * std::abs(ref));
}

TEST(GptTest, EveryGradientMatchesFiniteDifferencesInDouble) {
  const GptConfig c = TinyConfig();
  const int B = 2, T = 5;
  Gpt model(c, B, T, CpuOps());
  RandomizeParams(model, 4);
  auto tokens = RandomTokens(B * T, c.vocab_size, 5), targets = RandomTokens(B * T, c.vocab_size, 6);
  model.ZeroGrads();
  model.Forward(tokens.data(), targets.data(), B, T, 1.0f);
  model.Backward();
  std::vector<double> p = ParamsAsDouble(model);
  const double h = 1e-5;
  int checked = 0;
  double max_grad = 0.0;
  for (const ParamTensor& t : model.layout().tensors()) {
    size_t n = t.size();
    if (t.offset == model.layout().wte())
      n = static_cast<size_t>(c.vocab_size) * c.n_embd;  // padded rows: below
    for (size_t i = 0; i < n; ++i) {
      const size_t k = t.offset + i;
      const double saved = p[k];
      p[k] = saved + h;
      const double up = testing::ReferenceGptLoss(c, model.layout(), p, tokens, targets, B, T);
      p[k] = saved - h;
      const double down = testing::ReferenceGptLoss(c, model.layout(), p, tokens, targets, B, T);
      p[k] = saved;
      const double fd = (up - down) / (2 * h);
      max_grad = std::max(max_grad, std::abs(fd));
      // The analytic gradient is computed in fp32: allow fp32 rounding of a sum of O(100)
      // terms relative to the gradient's scale; FD truncation error in double is ~1e-10.
      ASSERT_NEAR(model.grads()[k], fd, 2e-5 + 2e-3 * std::abs(fd)) << t.name << "[" << i << "]";
      ++checked;
    }
  }
  // Padded vocabulary rows get no gradient.
  for (size_t i = static_cast<size_t>(c.vocab_size) * c.n_embd;
       i < static_cast<size_t>(c.padded_vocab) * c.n_embd; ++i)
    ASSERT_EQ(model.grads()[model.layout().wte() + i], 0.0f);
  EXPECT_GT(checked, 2000);
  EXPECT_GT(max_grad, 1e-2);  // the check was not run on vanishing gradients
}

TEST(GptTest, InitialLossIsNearLogVocab) {
  const GptConfig c = testing::MakeConfig(2, 4, 64, 32, 256);
  const int B = 4, T = 32;
  Gpt model(c, B, T, CpuOps());
  model.InitGpt2(7);
  auto tokens = RandomTokens(B * T, c.vocab_size, 8), targets = RandomTokens(B * T, c.vocab_size, 9);
  const float loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
  // GPT-2 init gives logits of std ~0.02 * sqrt(C) ~ 0.16, so the softmax is nearly uniform.
  EXPECT_NEAR(loss, std::log(256.0), 0.05);
}

TEST(GptTest, AccumulatedMicroBatchesEqualOneBigBatch) {
  const GptConfig c = TinyConfig();
  const int T = 6;
  auto tokens = RandomTokens(4 * T, c.vocab_size, 10), targets = RandomTokens(4 * T, c.vocab_size, 11);
  Gpt big(c, 4, T, CpuOps()), small(c, 2, T, CpuOps());
  RandomizeParams(big, 12);
  RandomizeParams(small, 12);
  big.ZeroGrads();
  big.Forward(tokens.data(), targets.data(), 4, T, 1.0f);
  big.Backward();
  small.ZeroGrads();
  for (int micro = 0; micro < 2; ++micro) {
    small.Forward(tokens.data() + micro * 2 * T, targets.data() + micro * 2 * T, 2, T, 0.5f);
    small.Backward();
  }
  double norm = 0.0;
  for (size_t i = 0; i < big.num_params(); ++i) {
    norm += static_cast<double>(big.grads()[i]) * big.grads()[i];
    ASSERT_NEAR(small.grads()[i], big.grads()[i], 1e-6 + 1e-4 * std::abs(big.grads()[i])) << i;
  }
  EXPECT_GT(norm, 0.0);
}

TEST(GptTest, GradReadyRangesCoverAllParamsInDecreasingOrder) {
  const GptConfig c = TinyConfig();
  Gpt model(c, 1, 4, CpuOps());
  RandomizeParams(model, 13);
  auto tokens = RandomTokens(4, c.vocab_size, 14);
  model.ZeroGrads();
  model.Forward(tokens.data(), tokens.data(), 1, 4, 1.0f);
  std::vector<std::pair<size_t, size_t>> ranges;
  std::vector<float> snapshot;
  model.Backward([&](size_t begin, size_t end) { ranges.emplace_back(begin, end); });
  ASSERT_EQ(ranges.size(), static_cast<size_t>(c.n_layer) + 2);
  EXPECT_EQ(ranges.front().second, model.num_params());
  EXPECT_EQ(ranges.back().first, 0u);
  for (size_t i = 1; i < ranges.size(); ++i) EXPECT_EQ(ranges[i].second, ranges[i - 1].first);
}

TEST(GptTest, GradientsAreFinalWhenReported) {
  // Gradients reported ready must not change afterwards: snapshot each range when reported and
  // compare with the values at the end of backward.
  const GptConfig c = TinyConfig();
  Gpt model(c, 2, 5, CpuOps());
  RandomizeParams(model, 15);
  auto tokens = RandomTokens(10, c.vocab_size, 16);
  model.ZeroGrads();
  model.Forward(tokens.data(), tokens.data(), 2, 5, 1.0f);
  std::vector<std::pair<size_t, std::vector<float>>> snapshots;
  model.Backward([&](size_t begin, size_t end) {
    snapshots.emplace_back(begin, std::vector<float>(model.grads() + begin, model.grads() + end));
  });
  for (const auto& [begin, values] : snapshots)
    for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(values[i], model.grads()[begin + i]) << begin + i;
}

TEST(GptTest, OverfitsOneBatch) {
  const GptConfig c = testing::FitConfig();
  const int B = 4, T = 16;
  Gpt model(c, B, T, CpuOps());
  model.InitGpt2(17);
  auto tokens = RandomTokens(B * T + 1, c.vocab_size, 18);
  std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
  AdamW optimizer(model.layout(), 0, model.num_params(), CpuOps());
  float loss = 0.0f;
  for (int step = 1; step <= 300; ++step) {
    model.ZeroGrads();
    loss = model.Forward(inputs.data(), targets.data(), B, T, 1.0f);
    model.Backward();
    optimizer.Step(model.params(), model.grads(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, step);
    if (loss < 0.05f) break;
  }
  EXPECT_LT(loss, 0.05f);
}

TEST(GptTest, LayoutIsGpt2SizedAndAligned) {
  const GptConfig c = testing::MakeConfig(12, 12, 768, 1024, 50257);
  ASSERT_EQ(c.padded_vocab, 50304);
  ParamLayout layout(c);
  // GPT-2 124M has 124,439,808 parameters with vocab 50257; padding adds 47 rows of 768.
  size_t count = 0;
  for (const ParamTensor& t : layout.tensors()) {
    count += t.size();
    EXPECT_EQ(t.offset % 16, 0u) << t.name;
  }
  EXPECT_EQ(count, 124439808u + 47u * 768u);
}

}  // namespace
}  // namespace fjord
