#include "runtime/train/trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/train/config.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;

proto::TrainSpec Schedule(float lr, float min_lr, int warmup, int steps) {
  proto::TrainSpec t;
  t.set_lr(lr);
  t.set_min_lr(min_lr);
  t.set_warmup_steps(warmup);
  t.set_steps(steps);
  return t;
}

TEST(LearningRateTest, WarmupIsLinearThenCosineReachesMinLr) {
  const proto::TrainSpec t = Schedule(1e-3f, 1e-4f, 10, 110);
  for (int s = 0; s < 10; ++s) EXPECT_FLOAT_EQ(LearningRate(t, s), 1e-3f * (s + 1) / 10.0f) << s;
  EXPECT_FLOAT_EQ(LearningRate(t, 10), 1e-3f);
  EXPECT_FLOAT_EQ(LearningRate(t, 109), 1e-4f);
  // Closed form at an interior step: min + 0.5 (1 + cos(pi * r)) (max - min), r = 40 / 99.
  const double r = 40.0 / 99.0;
  EXPECT_NEAR(LearningRate(t, 50), 1e-4 + 0.5 * (1 + std::cos(M_PI * r)) * 9e-4, 1e-9);
  for (int s = 11; s < 110; ++s) EXPECT_LE(LearningRate(t, s), LearningRate(t, s - 1)) << s;
}

TEST(TrainTest, RefusesAJobThatDoesNotFitInMemory) {
  StatusOr<proto::JobSpec> job = ParseJobSpec(
      "model { n_layer: 48 n_head: 25 n_embd: 1600 seq_len: 1024 }\n"
      "train { micro_batch: 512 }\n data { train: \"unused.bin\" }\n",
      "big.textproto", {});
  ASSERT_TRUE(job.ok()) << job.status().message();
  StatusOr<TrainResult> r = Train(*job, TrainOptions{.quiet = true});
  ASSERT_FALSE(r.ok());
  // The memory plan's refusal (runtime/model/memory_plan.h): what this host has, the model, and the
  // largest term with the settings that make it (what would fit depends on this host's memory).
  EXPECT_THAT(r.status().message(), HasSubstr("available (MemAvailable)"));
  EXPECT_THAT(r.status().message(), HasSubstr("model has 1557686400 parameters"));  // GPT-2 1.5B
  EXPECT_THAT(r.status().message(), HasSubstr("the largest part is activations"));
  EXPECT_THAT(r.status().message(), HasSubstr("train.micro_batch = 512"));
  EXPECT_THAT(r.status().message(), HasSubstr("nothing was allocated"));
}

// A tenant job reaches its data only behind its gates (Tenancy::Start, after the rank gate): Train
// called without a Tenancy refuses it before opening any data.
TEST(TrainTest, RefusesATenantJobWithoutItsGates) {
  StatusOr<proto::JobSpec> job = ParseJobSpec(
      "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
      "data { train: \"unused_*.bin\" }\ntenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" "
      "}\n",
      "acme.textproto", {});
  ASSERT_TRUE(job.ok()) << job.status().message();
  StatusOr<TrainResult> r = Train(*job, TrainOptions{.quiet = true});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("tenant acme's job reached training without its gates"));
}

}  // namespace
}  // namespace fjord
