// Mixed precision (model.dtype BF16) on the CPU twins: the model against the double reference
// with bf16 storage emulated at the points the model stores (tests/runtime/model/gpt_reference.h), the
// working copy of the parameters, gradients against the fp32 model, fitting a batch, and the
// precision/seed rules of the trainer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/pointwise_math.h"
#include "runtime/model/gpt.h"
#include "runtime/model/optimizer.h"
#include "runtime/train/trainer.h"
#include "tests/runtime/model/gpt_reference.h"
#include "tests/runtime/model/gpt_test_util.h"

namespace fjord {
namespace {

using testing::RandomizeParams;
using testing::RandomTokens;
using testing::TinyConfig;

// x rounded to the nearest bf16 (8 significant bits), ties to even, computed exactly in double
// (no detour through float, which could round twice).
double RoundToBf16(double x) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  int e = 0;
  const double f = std::frexp(x, &e);  // |f| in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(f, 8)), e - 8);
}

double Bf16Value(bf16 b) { return FromBf16(b.bits); }

TEST(GptBf16Test, PrecisionAndItsNames) {
  EXPECT_STREQ(PrecisionName(Precision::kFp32), "fp32");
  EXPECT_STREQ(PrecisionName(Precision::kBf16), "bf16");
  // AUTO follows the device: bf16 only where it is native (a CUDA device).
  EXPECT_EQ(ResolvePrecision(proto::ModelSpec::DTYPE_AUTO, false), Precision::kFp32);
  EXPECT_EQ(ResolvePrecision(proto::ModelSpec::DTYPE_AUTO, true), Precision::kBf16);
  EXPECT_EQ(ResolvePrecision(proto::ModelSpec::BF16, false), Precision::kBf16);
  EXPECT_EQ(ResolvePrecision(proto::ModelSpec::FP32, true), Precision::kFp32);
}

// model.attention: each requirement of the tensor-core kernels refused on its own (the others
// met), with the reason in the message; AUTO and SIMT never select them, wherever they run.
TEST(GptBf16Test, AttentionChoiceAndItsRefusals) {
  using proto::ModelSpec;
  const Precision bf = Precision::kBf16, fp = Precision::kFp32;
  for (ModelSpec::Attention a : {ModelSpec::ATTENTION_AUTO, ModelSpec::SIMT}) {
    for (int cc : {0, 75, 90}) {
      StatusOr<bool> tc = ResolveAttention(a, cc, bf, 768, 12);
      ASSERT_TRUE(tc.ok()) << tc.status().message();
      EXPECT_FALSE(*tc);
      tc = ResolveAttention(a, cc, fp, 100, 3);  // head size 33: the SIMT kernels take it
      ASSERT_TRUE(tc.ok()) << tc.status().message();
      EXPECT_FALSE(*tc);
    }
  }
  for (int cc : {80, 86, 90, 100}) {
    for (auto [C, NH] : {std::pair{768, 12}, std::pair{1024, 8}, std::pair{64, 1}}) {
      StatusOr<bool> tc = ResolveAttention(ModelSpec::TENSOR_CORE, cc, bf, C, NH);
      ASSERT_TRUE(tc.ok()) << cc << " " << C << "/" << NH << ": " << tc.status().message();
      EXPECT_TRUE(*tc);
    }
  }
  struct Refusal {
    int cc;
    Precision p;
    int C, NH;
    const char* why;
  };
  for (const Refusal& r :
       {Refusal{0, bf, 768, 12, "this rank trains on the CPU"},
        Refusal{75, bf, 768, 12, "the GPU is sm_75; bf16 mma.sync needs sm_80 or newer"},
        Refusal{90, fp, 768, 12,
                "the model runs in fp32 (model.dtype); the kernels are bf16 only: set model.dtype: BF16"},
        Refusal{90, bf, 768, 24, "the head size n_embd / n_head is 32; the kernels support 64 and 128"},
        Refusal{90, bf, 1536, 6, "the head size n_embd / n_head is 256"},
        Refusal{90, bf, 96, 1, "the head size n_embd / n_head is 96"}}) {
    StatusOr<bool> tc = ResolveAttention(ModelSpec::TENSOR_CORE, r.cc, r.p, r.C, r.NH);
    ASSERT_FALSE(tc.ok()) << r.why;
    EXPECT_EQ(tc.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(
        tc.status().message().find(std::string("model.attention: TENSOR_CORE cannot run here: ") + r.why),
        std::string::npos)
        << tc.status().message();
    EXPECT_NE(tc.status().message().find("set model.attention: SIMT or ATTENTION_AUTO"), std::string::npos);
  }
}

TEST(GptBf16Test, RoundSeedIsNonZeroPerStepAndPerRun) {
  // 0 would mean "round to nearest" to cast_to_bf16; every step must draw afresh, and two runs
  // with different seeds must not share their draws.
  std::vector<uint64_t> seen;
  for (uint64_t run : {1ull, 1337ull}) {
    for (int step = 0; step < 1000; ++step) {
      const uint64_t s = RoundSeed(run, step);
      ASSERT_NE(s, 0u);
      ASSERT_EQ(s, RoundSeed(run, step));  // a function of (run, step) alone: resume replays it
      seen.push_back(s);
    }
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::adjacent_find(seen.begin(), seen.end()), seen.end());
}

TEST(GptBf16Test, WorkingParamsAreTheMasterWeightsRounded) {
  const GptConfig c = TinyConfig(Precision::kBf16);
  Gpt model(c, 1, 7, CpuOps());
  RandomizeParams(model, 1);
  ASSERT_NE(model.working_params(), static_cast<const void*>(model.params()));
  const bf16* w = static_cast<const bf16*>(model.working_params());
  // SyncParamsToDevice rounds to nearest: the oracle brackets each master weight between the
  // bf16 values below and above it and wants the nearer one (ties cannot occur for these draws
  // unless exactly representable, and then both agree).
  for (size_t i = 0; i < model.num_params(); ++i) {
    ASSERT_EQ(Bf16Value(w[i]), RoundToBf16(model.params()[i])) << i;
  }
  // Stochastic rounding with a seed picks one of the two neighbours for every element, and
  // moves some of them away from the nearest.
  model.RoundWorkingParams(RoundSeed(7, 3));
  size_t moved = 0;
  for (size_t i = 0; i < model.num_params(); ++i) {
    const double m = model.params()[i], got = Bf16Value(w[i]);
    const double ulp = std::ldexp(1.0, std::ilogb(m) - 7);
    ASSERT_LT(std::abs(got - m), ulp) << i;
    if (got != RoundToBf16(m)) ++moved;
  }
  EXPECT_GT(moved, model.num_params() / 20);
  // In fp32 the ops read the master weights themselves.
  Gpt fp32(TinyConfig(Precision::kFp32), 1, 7, CpuOps());
  EXPECT_EQ(fp32.working_params(), static_cast<const void*>(fp32.params()));
}

TEST(GptBf16Test, ForwardMatchesTheReferenceWithBf16Storage) {
  const int B = 2, T = 7;
  Gpt model(TinyConfig(Precision::kBf16), B, T, CpuOps());
  RandomizeParams(model, 1);
  Gpt fp32(TinyConfig(Precision::kFp32), B, T, CpuOps());
  RandomizeParams(fp32, 1);
  const std::vector<double> p(model.params(), model.params() + model.num_params());
  double worst_emulated = 0.0, smallest_precision_effect = 1e300;
  for (uint64_t seed = 2; seed < 8; ++seed) {
    auto tokens = RandomTokens(B * T, 37, seed), targets = RandomTokens(B * T, 37, seed + 100);
    const double loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
    const double loss32 = fp32.Forward(tokens.data(), targets.data(), B, T, 0.0f);
    const double emulated =
        testing::ReferenceGptLoss(model.config(), model.layout(), p, tokens, targets, B, T, RoundToBf16);
    const double exact = testing::ReferenceGptLoss(model.config(), model.layout(), p, tokens, targets, B, T);
    ASSERT_NEAR(loss32, exact, 1e-5 * exact);
    worst_emulated = std::max(worst_emulated, std::abs(loss - emulated));
    smallest_precision_effect = std::min(smallest_precision_effect, std::abs(emulated - exact));
  }
  // The model computes each op in fp32 and the reference in double, and both round each stored
  // value to bf16; they differ only where a value lies within fp32 error (~1e-7 relative) of a
  // bf16 rounding boundary, which flips one stored value by one bf16 step (2^-8 relative) about
  // once per 2^16 values. The effect of bf16 storage itself (emulated vs exact) is rounding of
  // every stored value. So the model must sit far closer to the emulation than the emulation
  // sits to exact arithmetic: a model that rounded at other points, or not at all, would not.
  EXPECT_LT(worst_emulated, 0.1 * smallest_precision_effect)
      << "bf16 model vs emulated reference " << worst_emulated << ", emulated vs exact "
      << smallest_precision_effect;
  EXPECT_GT(smallest_precision_effect, 0.0);
}

// The bf16 model's parameter gradients against the fp32 model's on the same master weights.
TEST(GptBf16Test, GradientsTrackTheFp32Model) {
  const int B = 2, T = 7;
  Gpt model(TinyConfig(Precision::kBf16), B, T, CpuOps());
  Gpt fp32(TinyConfig(Precision::kFp32), B, T, CpuOps());
  RandomizeParams(model, 4);
  RandomizeParams(fp32, 4);
  auto tokens = RandomTokens(B * T, 37, 5), targets = RandomTokens(B * T, 37, 6);
  for (Gpt* m : {&model, &fp32}) {
    m->ZeroGrads();
    m->Forward(tokens.data(), targets.data(), B, T, 1.0f);
    m->Backward();
  }
  // Per tensor: relative L2 distance and cosine. Each activation gradient is rounded to bf16
  // (relative 2^-9 on average per value, 2^-8 at most) at about 20 points per layer, and the
  // weights are themselves rounded (the fp32 model sees different weights), so a few percent
  // of relative distance is bf16's honest error; a wrong index or a dropped accumulation gives
  // O(1). Parameter gradients are fp32 sums, so the bound does not grow with the batch.
  for (const ParamTensor& t : model.layout().tensors()) {
    double diff = 0.0, norm = 0.0, dot = 0.0, norm16 = 0.0;
    bool identical = true;
    for (size_t i = 0; i < t.size(); ++i) {
      const double a = model.grads()[t.offset + i], b = fp32.grads()[t.offset + i];
      diff += (a - b) * (a - b);
      norm += b * b;
      norm16 += a * a;
      dot += a * b;
      identical = identical && a == b;
    }
    if (norm == 0.0) continue;  // padded or unused rows
    EXPECT_LT(std::sqrt(diff / norm), 0.05) << t.name;
    EXPECT_GT(dot / std::sqrt(norm * norm16), 0.9995) << t.name;
    EXPECT_FALSE(identical) << t.name << ": bf16 gradients equal fp32's bit for bit; is bf16 running at all?";
  }
}

TEST(GptBf16Test, OverfitsOneBatchLikeFp32) {
  GptConfig c = testing::FitConfig();
  const int B = 4, T = 16;
  auto tokens = RandomTokens(B * T + 1, c.vocab_size, 18);
  std::vector<int32_t> inputs(tokens.begin(), tokens.end() - 1), targets(tokens.begin() + 1, tokens.end());
  std::vector<float> final_loss;
  for (Precision precision : {Precision::kFp32, Precision::kBf16}) {
    c.precision = precision;
    Gpt model(c, B, T, CpuOps());
    model.InitGpt2(17);
    AdamW optimizer(model.layout(), 0, model.num_params(), CpuOps());
    float loss = 0.0f, first = 0.0f;
    for (int step = 1; step <= 150; ++step) {
      model.ZeroGrads();
      loss = model.Forward(inputs.data(), targets.data(), B, T, 1.0f);
      if (step == 1) first = loss;
      model.Backward();
      optimizer.Step(model.params(), model.grads(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, step);
      model.RoundWorkingParams(RoundSeed(17, step));
    }
    EXPECT_LT(loss, 0.1f * first) << PrecisionName(precision);
    final_loss.push_back(loss);
  }
  // Both memorise the batch; bf16 may end a little higher (its weights move in steps of 2^-8
  // relative), but not far: within 0.1 nats of fp32 at a loss that started at ln 64 = 4.2.
  EXPECT_LT(final_loss[1], final_loss[0] + 0.1f);
}

TEST(GptBf16Test, MemoryHalvesTheActivations) {
  GptConfig c = testing::MakeConfig(4, 4, 64, 64, 37);
  const int B = 4, T = 64;
  const size_t n = ParamLayout(c).num_params();
  const size_t fp32 = Gpt::MemoryBytes(c, B, T);
  c.precision = Precision::kBf16;
  const size_t bf16_bytes = Gpt::MemoryBytes(c, B, T);
  // Closed form. fp32 = 8 n (parameters, gradients) + 4 A + S, with A the activation values and
  // activation-gradient values stored in the model's precision and S the bytes of the statistics
  // that stay fp32 in both (LayerNorm mean and rstd, the attention log-sum-exp, the losses; the
  // gradient region mirrors the activations before the logits, statistics included).
  // bf16 = 8 n + 2 n (the working copy) + 2 A + S. Every tensor here is a multiple of 64 bytes,
  // so alignment adds nothing and the identity is exact.
  const size_t BT = static_cast<size_t>(B) * T, L = c.n_layer, NH = c.n_head;
  const size_t stats = 4 * (L * (4 + NH) * BT + 3 * BT) + 4 * (L * (4 + NH) * BT + 2 * BT);
  const size_t four_a = fp32 - 8 * n - stats;
  EXPECT_EQ(bf16_bytes, 10 * n + four_a / 2 + stats);
  EXPECT_LT(bf16_bytes, fp32);
}

}  // namespace
}  // namespace fjord
