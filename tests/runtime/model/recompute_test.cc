// Activation recomputation (GptConfig::recompute, train.recompute: BLOCK) against the model without
// it, which is the oracle: on the CPU every loss and the whole gradient buffer must be bit-identical
// (memcmp), for GPT-2 and Llama (grouped-query attention, q/k/v biases, untied lm_head), fp32 and
// bf16, over a gradient accumulation of micro-batches of different shapes, with the gradient-ready
// ranges in the same order. And the memory it saves: the arena shrinks by exactly what a hand count
// of the activations of a block says (element counts per tensor, at sizes with no alignment padding).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "runtime/model/gpt.h"
#include "tests/runtime/model/gpt_test_util.h"

namespace fjord {
namespace {

using testing::MakeConfig;
using testing::RandomizeParams;
using testing::RandomTokens;

// 3 blocks, so that the two alternating residual-gradient slots are each reused.
GptConfig Gpt2(Precision p) { return MakeConfig(3, 2, 12, 7, 37, p); }

GptConfig Llama(Precision p) {
  GptConfig c = MakeConfig(3, 4, 16, 7, 37, p);
  c.arch = GptConfig::Arch::kLlama;
  c.n_kv_head = 2;
  c.intermediate_size = 24;
  c.rope_theta = 500000.0;
  c.attention_bias = true;
  c.tie_embeddings = false;
  return c;
}

struct Pass {
  std::vector<float> losses;
  std::vector<float> grads;
  std::vector<std::pair<size_t, size_t>> ready;
};

// Three micro-steps into one gradient accumulation: 3 x 7, 2 x 5 and 1 x 7 tokens.
Pass Accumulate(GptConfig c, bool recompute) {
  c.recompute = recompute;
  Gpt model(c, 3, 7, CpuOps(), 16);
  RandomizeParams(model, 11);
  model.ZeroGrads();
  Pass run;
  const std::pair<int, int> shapes[] = {{3, 7}, {2, 5}, {1, 7}};
  uint64_t seed = 100;
  for (auto [B, T] : shapes) {
    const std::vector<int32_t> tokens = RandomTokens(static_cast<size_t>(B) * T, c.vocab_size, seed++);
    const std::vector<int32_t> targets = RandomTokens(static_cast<size_t>(B) * T, c.vocab_size, seed++);
    run.losses.push_back(model.Forward(tokens.data(), targets.data(), B, T, 1.0f / 3));
    model.Backward([&](size_t begin, size_t end) { run.ready.emplace_back(begin, end); });
  }
  run.grads.assign(model.grads(), model.grads() + model.buffer_size());
  return run;
}

TEST(RecomputeTest, LossesAndGradientsAreBitIdentical) {
  struct Case {
    const char* name;
    GptConfig config;
  };
  const Case cases[] = {{"GPT-2 fp32", Gpt2(Precision::kFp32)},
                        {"GPT-2 bf16", Gpt2(Precision::kBf16)},
                        {"Llama fp32", Llama(Precision::kFp32)},
                        {"Llama bf16", Llama(Precision::kBf16)}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const Pass none = Accumulate(k.config, false);
    const Pass block = Accumulate(k.config, true);
    ASSERT_EQ(none.losses.size(), block.losses.size());
    for (size_t i = 0; i < none.losses.size(); ++i) {
      EXPECT_EQ(std::memcmp(&none.losses[i], &block.losses[i], sizeof(float)), 0)
          << "micro-step " << i << ": " << none.losses[i] << " vs " << block.losses[i];
    }
    ASSERT_EQ(none.grads.size(), block.grads.size());
    size_t differing = 0, first = 0;
    for (size_t i = 0; i < none.grads.size(); ++i) {
      if (std::memcmp(&none.grads[i], &block.grads[i], sizeof(float)) != 0 && differing++ == 0) first = i;
    }
    EXPECT_EQ(differing, 0u) << "gradient elements differ; the first at " << first << ": "
                             << none.grads[first] << " vs " << block.grads[first];
    EXPECT_EQ(none.ready, block.ready);
    // The gradients carry signal (a comparison of zeros would prove nothing).
    double sum = 0.0;
    for (float g : none.grads) sum += static_cast<double>(g) * g;
    EXPECT_GT(sum, 0.0);
  }
}

// Bytes of one block's activations by hand from the tensor shapes (docs/ARCHITECTURE.md): stored
// tensors in `s` bytes per element, statistics (norm mean/rstd, attention log-sum-exp) in fp32. The
// residual-stream tensor (the block's output, the next block's input) is what recompute keeps.
struct BlockCount {
  size_t stored = 0;  // bytes of the non-residual stored tensors and statistics
  size_t residual = 0;
};

BlockCount HandCount(const GptConfig& c, size_t B, size_t T) {
  const size_t BT = B * T, C = c.n_embd, s = c.precision == Precision::kBf16 ? 2 : 4;
  BlockCount k;
  k.residual = BT * C * s;
  if (c.llama()) {
    const size_t qkv = static_cast<size_t>(c.n_head + 2 * c.n_kv_head) * c.head_size(),
                 I = c.intermediate_size;
    // ln1, qkv, qkv after rope, atty, attproj, res2, ln2, gate|up, swiglu, down
    k.stored = BT * (C + qkv + qkv + C + C + C + C + 2 * I + I + C) * s;
    k.stored += BT * (1 + 1 + c.n_head) * 4;  // two rstd, lse
  } else {
    // ln1, qkv, atty, attproj, res2, ln2, fch, fch_gelu, fcproj
    k.stored = BT * (C + 3 * C + C + C + C + C + 4 * C + 4 * C + C) * s;
    k.stored += BT * (4 + c.n_head) * 4;  // two means, two rstd, lse
  }
  return k;
}

TEST(RecomputeTest, ArenaShrinksByTheClosedForm) {
  // B x T = 64 positions and even widths: every tensor a multiple of 256 bytes, so no padding.
  const size_t B = 4, T = 16;
  GptConfig gpt2 = MakeConfig(6, 4, 32, 16, 100, Precision::kFp32);
  GptConfig llama = Llama(Precision::kFp32);
  llama.n_layer = 6;
  llama.max_seq_len = 16;
  llama.n_embd = 32;
  llama.intermediate_size = 48;
  for (GptConfig c : {gpt2, llama}) {
    for (Precision p : {Precision::kFp32, Precision::kBf16}) {
      c.precision = p;
      SCOPED_TRACE(std::string(c.llama() ? "Llama " : "GPT-2 ") + PrecisionName(p));
      const size_t L = c.n_layer;
      c.recompute = false;
      const size_t none = Gpt::ArenaBytes(c, B, T, 16);
      c.recompute = true;
      const size_t block = Gpt::ArenaBytes(c, B, T, 16);
      const BlockCount k = HandCount(c, B, T);
      // Activations: L - 1 fewer copies of the stored tensors (the residuals all stay). Their
      // gradients: L - 1 fewer stored tensors and L - 2 fewer residual-stream gradients (two stay).
      const size_t saved = (L - 1) * k.stored + (L - 1) * k.stored + (L - 2) * k.residual;
      EXPECT_EQ(none - block, saved) << none << " vs " << block;
      // And the model allocates exactly that arena (the constructor carves ArenaBytes).
      Gpt model(c, B, T, CpuOps(), 16);
      EXPECT_EQ(model.config().recompute, true);
    }
  }
}

}  // namespace
}  // namespace fjord
