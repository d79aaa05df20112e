// AdamW over a shard of the parameter buffer: the union of the shards' updates equals the
// unsharded update exactly (same per-element arithmetic), and weight decay follows tensors.
#include "runtime/optimizer.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace fjord {
namespace {

GptConfig Config() {
  GptConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.max_seq_len = 5;
  c.vocab_size = 20;
  c.padded_vocab = 128;
  return c;
}

TEST(AdamWTest, ShardedStepsEqualTheWholeStepExactly) {
  const GptConfig c = Config();
  const ParamLayout layout(c);
  const size_t n = layout.num_params();
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> p0(n), g(n);
  for (size_t i = 0; i < n; ++i) {
    p0[i] = normal(rng);
    g[i] = normal(rng);
  }
  std::vector<float> whole = p0;
  AdamW all(layout, 0, n, CpuOps());
  for (int t = 1; t <= 3; ++t) all.Step(whole.data(), g.data(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);

  // Three shards with boundaries inside tensors.
  std::vector<float> sharded = p0;
  const size_t cuts[] = {0, n / 3 + 5, 2 * n / 3 + 1, n};
  for (int s = 0; s < 3; ++s) {
    AdamW part(layout, cuts[s], cuts[s + 1], CpuOps());
    for (int t = 1; t <= 3; ++t) part.Step(sharded.data(), g.data(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);
  }
  size_t changed = 0;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(sharded[i], whole[i]) << i;
    changed += whole[i] != p0[i];
  }
  EXPECT_GT(changed, n / 2);
}

TEST(AdamWTest, DecaysMatricesButNotBiasesOrNorms) {
  const GptConfig c = Config();
  const ParamLayout layout(c);
  const size_t n = layout.num_params();
  std::vector<float> p(n, 1.0f), g(n, 0.0f);
  AdamW opt(layout, 0, n, CpuOps());
  opt.Step(p.data(), g.data(), 0.1f, 0.9f, 0.95f, 1e-8f, 0.5f, 1.0f, 1);
  // With zero gradients only decay moves a parameter: p = 1 - lr * wd * 1 = 0.95 exactly when decayed.
  for (const ParamTensor& t : layout.tensors()) {
    const float expected = t.weight_decay ? 1.0f - 0.1f * 0.5f : 1.0f;
    EXPECT_FLOAT_EQ(p[t.offset], expected) << t.name;
    EXPECT_EQ(t.weight_decay, t.shape.size() == 2) << t.name;
  }
}

}  // namespace
}  // namespace fjord
