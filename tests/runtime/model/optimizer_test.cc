// AdamW over a shard of the parameter buffer: the union of the shards' updates equals the
// unsharded update exactly (same per-element arithmetic), weight decay follows tensors, and the
// bf16 working copy AdamW writes is the one a cast of the whole buffer would.
#include "runtime/model/optimizer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
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
    for (int t = 1; t <= 3; ++t)
      part.Step(sharded.data(), g.data(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, t);
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

// The trainer's two bf16 paths against its old one (AdamW, then cast the whole buffer): without
// ZeRO, AdamW over every tensor writes the working copy and the padding is left as it is; with
// ZeRO-1, each rank's AdamW writes its shard (cut inside tensors) and the rank casts the rest after
// the all-gather. Every copy must equal the whole-buffer cast bit for bit, over several steps.
TEST(AdamWTest, WorkingCopyWrittenInTheStepIsTheWholeBufferCast) {
  GptConfig c = Config();
  c.precision = Precision::kBf16;
  constexpr int kRanks = 3;
  constexpr float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, scale = 0.5f;
  // Padded to equal shards as the trainer pads for ZeRO-1; InitGpt2 leaves the padding zero.
  auto make = [&] {
    auto model = std::make_unique<Gpt>(c, 1, c.max_seq_len, CpuOps(), 16 * kRanks);
    model->InitGpt2(5);
    return model;
  };
  std::unique_ptr<Gpt> reference = make(), unsharded = make();
  const size_t n = reference->num_params(), size = reference->buffer_size(), shard = size / kRanks;
  ASSERT_GT(size, n);
  std::vector<std::unique_ptr<Gpt>> ranks;
  std::vector<std::unique_ptr<AdamW>> shards;
  for (int r = 0; r < kRanks; ++r) {
    ranks.push_back(make());
    shards.push_back(std::make_unique<AdamW>(ranks[r]->layout(), r * shard, (r + 1) * shard, CpuOps()));
  }
  AdamW reference_opt(reference->layout(), 0, n, CpuOps()),
      unsharded_opt(unsharded->layout(), 0, n, CpuOps());
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> g(size);
  for (float& x : g) x = normal(rng);
  auto working = [](const Gpt& model) {
    const bf16* w = static_cast<const bf16*>(model.working_params());
    std::vector<uint16_t> bits(model.buffer_size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = w[i].bits;
    return bits;
  };
  for (int t = 1; t <= 3; ++t) {
    const uint64_t seed = 0x5eed0000 + t;
    reference_opt.Step(reference->params(), g.data(), lr, beta1, beta2, eps, wd, scale, t);
    reference->RoundWorkingParams(seed);
    const std::vector<uint16_t> expected = working(*reference);

    unsharded_opt.Step(unsharded->params(), g.data(), lr, beta1, beta2, eps, wd, scale, t,
                       unsharded->working_params_bf16(), seed);
    ASSERT_EQ(working(*unsharded), expected) << "step " << t;

    for (int r = 0; r < kRanks; ++r) {
      shards[r]->Step(ranks[r]->params(), g.data(), lr, beta1, beta2, eps, wd, scale, t,
                      ranks[r]->working_params_bf16(), seed);
    }
    for (int r = 0; r < kRanks; ++r) {
      // The all-gather: every shard from its owner.
      for (int owner = 0; owner < kRanks; ++owner) {
        if (owner == r) continue;
        std::memcpy(ranks[r]->params() + owner * shard, ranks[owner]->params() + owner * shard,
                    shard * sizeof(float));
      }
      ASSERT_EQ(std::memcmp(ranks[r]->params(), reference->params(), size * sizeof(float)), 0)
          << "step " << t;
      ranks[r]->RoundWorkingParams(seed, 0, r * shard);
      ranks[r]->RoundWorkingParams(seed, (r + 1) * shard, size);
      ASSERT_EQ(working(*ranks[r]), expected) << "rank " << r << ", step " << t;
    }
  }
}

}  // namespace
}  // namespace fjord
