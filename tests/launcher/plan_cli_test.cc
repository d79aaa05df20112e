// `fjord plan JOB --ranks N [--device NAME]` through the binary: the per-rank terms against the
// bytes-per-parameter arithmetic (oracle: the GPT-2 parameter count in closed form,
// V_p C + T C + L (12 C^2 + 13 C) + 2 C, at widths where fjord's padding adds nothing: fp32 weights
// and gradients 4 bytes each, AdamW's two moments 8, divided by the ranks at ZeRO stage 1; bf16 adds
// a 2-byte working copy), a job that does not fit (exit 1, the largest term, the settings that
// would fit), bad arguments (exit 2), and `fjord train` refusing such a job before allocating.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <regex>
#include <string>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::RunFjord;
using testing::RunResult;
using testing::WriteText;

uint64_t Gpt2Params(uint64_t L, uint64_t C, uint64_t T, uint64_t V) {
  const uint64_t Vp = (V + 127) / 128 * 128;
  return Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
}

// The byte count of a term line ("  optimizer state   123  0.00 GiB").
uint64_t Term(const std::string& out, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("\n  " + name + " +(\\d+) "))) return 0;
  return std::stoull(m[1]);
}

class PlanCliTest : public testing::TempDirTest {
 protected:
  PlanCliTest() : TempDirTest("fjord_plan_") {}
  void SetUp() override {
    TempDirTest::SetUp();
    WriteText(Path("job.textproto"),
              "model { n_layer: 4 n_head: 4 n_embd: 128 seq_len: 64 vocab_size: 256 }\n"
              "train { micro_batch: 2 }\n"
              "data { train: \"" +
                  Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n");
  }
};

TEST_F(PlanCliTest, TermsMatchBytesPerParameter) {
  const uint64_t P = Gpt2Params(4, 128, 64, 256);
  ASSERT_EQ(P % 256, 0u);
  for (const std::string dtype : {"FP32", "BF16"}) {
    for (int ranks : {1, 4}) {
      for (int stage : {0, 1}) {
        SCOPED_TRACE(dtype + " ranks " + std::to_string(ranks) + " stage " + std::to_string(stage));
        const RunResult r = RunFjord("plan " + Path("job.textproto") + " --ranks " + std::to_string(ranks) +
                                     " --device h200 --set model.dtype=" + dtype +
                                     " --set parallel.zero_stage=" + std::to_string(stage));
        ASSERT_EQ(r.exit_code, 0) << r.output;
        EXPECT_EQ(Term(r.output, "parameters"), (dtype == "BF16" ? 6 : 4) * P) << r.output;
        EXPECT_EQ(Term(r.output, "gradients"), 4 * P) << r.output;
        EXPECT_EQ(Term(r.output, "optimizer state"), 8 * P / (stage == 1 ? ranks : 1)) << r.output;
        EXPECT_GT(Term(r.output, "activations"), 0u) << r.output;
        EXPECT_THAT(r.output, HasSubstr("verdict: fits")) << r.output;
        EXPECT_THAT(r.output, HasSubstr("H200")) << r.output;
      }
    }
  }
}

// ZeRO-2 on 4 ranks, at widths where no unit needs padding (embeddings (V_p + T) C, a layer
// 12 C^2 + 13 C, the tail 2 C: each a multiple of 16 x 4 floats): AdamW 8 P / 4 bytes, gradients
// 4 P / 4 plus the three fp32 windows, one of the embeddings and two of a layer (the largest unit).
TEST_F(PlanCliTest, ZeroTwoShardsTheGradientsBesideThreeUnitWindows) {
  const uint64_t P = Gpt2Params(4, 128, 64, 256);
  const uint64_t embeddings = (256 + 64) * 128, layer = 12 * 128 * 128 + 13 * 128;
  const RunResult r =
      RunFjord("plan " + Path("job.textproto") + " --ranks 4 --device h200 --set parallel.zero_stage=2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Term(r.output, "optimizer state"), 8 * P / 4) << r.output;
  EXPECT_EQ(Term(r.output, "gradients"), 4 * P / 4 + 4 * (embeddings + 2 * layer)) << r.output;
  EXPECT_EQ(Term(r.output, "parameters"), 6 * P) << r.output;  // bf16 on an H200: fp32 master + working copy
  EXPECT_THAT(r.output, HasSubstr("ZeRO stage 2"));
}

// ZeRO-3 on the same widths: the parameters too become 1/4 per rank, fp32 master 4 P / 4 and bf16
// working copy 2 P / 4 (bf16 on an H200), plus three bf16 gather windows (the embeddings' and two
// of a layer); gradients and AdamW as at stage 2. Each buffer starts on a 256-byte boundary: the
// bf16 shard (2 P / 4 = 417152 bytes here) takes 417280.
TEST_F(PlanCliTest, ZeroThreeShardsTheParametersBesideThreeGatherWindows) {
  const uint64_t P = Gpt2Params(4, 128, 64, 256);
  const uint64_t embeddings = (256 + 64) * 128, layer = 12 * 128 * 128 + 13 * 128;
  const auto aligned = [](uint64_t bytes) { return (bytes + 255) / 256 * 256; };
  const RunResult r =
      RunFjord("plan " + Path("job.textproto") + " --ranks 4 --device h200 --set parallel.zero_stage=3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Term(r.output, "parameters"),
            aligned(4 * P / 4) + aligned(2 * P / 4) + aligned(2 * embeddings) + 2 * aligned(2 * layer))
      << r.output;
  EXPECT_EQ(Term(r.output, "gradients"), 4 * P / 4 + 4 * (embeddings + 2 * layer)) << r.output;
  EXPECT_EQ(Term(r.output, "optimizer state"), 8 * P / 4) << r.output;
  EXPECT_THAT(r.output, HasSubstr("ZeRO stage 3"));
}

TEST_F(PlanCliTest, RecomputeShrinksTheActivationsOnly) {
  RunResult none = RunFjord("plan " + Path("job.textproto") + " --ranks 1");
  RunResult block = RunFjord("plan " + Path("job.textproto") + " --ranks 1 --set train.recompute=BLOCK");
  ASSERT_EQ(none.exit_code, 0) << none.output;
  ASSERT_EQ(block.exit_code, 0) << block.output;
  EXPECT_LT(Term(block.output, "activations"), Term(none.output, "activations"));
  EXPECT_EQ(Term(block.output, "parameters"), Term(none.output, "parameters"));
  EXPECT_THAT(block.output, HasSubstr("recompute BLOCK"));
}

TEST_F(PlanCliTest, AJobThatDoesNotFitNamesTheLargestTermAndTheFix) {
  // GPT-2 124M at 128 sequences of 1024 in bf16: about 100 GB of activations without recompute,
  // about a quarter with it; an H100 holds 80 GB.
  const RunResult r = RunFjord("plan " + Path("job.textproto") +
                               " --ranks 8 --device h100 --set model.n_layer=12 --set model.n_head=12 --set "
                               "model.n_embd=768 --set model.seq_len=1024 --set model.vocab_size=50257 --set "
                               "train.micro_batch=128 --set model.dtype=BF16");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("verdict: does not fit"));
  EXPECT_THAT(r.output, HasSubstr("the largest part is activations"));
  EXPECT_THAT(r.output, HasSubstr("train.recompute: BLOCK"));
  EXPECT_THAT(r.output, HasSubstr("train.micro_batch: 64"));
}

TEST_F(PlanCliTest, BadArgumentsAreUsageErrors) {
  RunResult r = RunFjord("plan " + Path("job.textproto") + " --ranks 2 --device a100");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("h200 (141 GB) or cpu"));
  r = RunFjord("plan " + Path("job.textproto") + " --ranks 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--ranks 0"));
  r = RunFjord("plan " + Path("missing.textproto") + " --ranks 1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
}

TEST_F(PlanCliTest, TrainRefusesAJobThatDoesNotFitBeforeAllocating) {
  // 2^20 sequences per micro-step: petabytes of activations on any host.
  std::string text;
  for (int i = 0; i < 200; ++i) text += "abcabcabd " + std::to_string(i % 7) + "\n";
  WriteText(Path("corpus.txt"), text);
  RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("train " + Path("job.textproto") + " --set train.micro_batch=1048576");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the largest part is activations"));
  EXPECT_THAT(r.output, HasSubstr("available (MemAvailable)"));
  EXPECT_THAT(r.output, HasSubstr("train.micro_batch: "));
  EXPECT_THAT(r.output, HasSubstr("nothing was allocated"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("bad_alloc")));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
}

TEST_F(PlanCliTest, TheTrainersArenaIsThePlansTotalOnTheCpu) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "abcabcabd " + std::to_string(i % 7) + "\n";
  WriteText(Path("corpus.txt"), text);
  RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string recompute : {"NONE", "BLOCK"}) {
    SCOPED_TRACE(recompute);
    const std::string set = " --set train.recompute=" + recompute + " --set model.dtype=FP32";
    const RunResult plan = RunFjord("plan " + Path("job.textproto") + " --ranks 1 --device cpu" + set);
    ASSERT_EQ(plan.exit_code, 0) << plan.output;
    fs::remove_all(Path("run"));
    const RunResult train =
        RunFjord("train " + Path("job.textproto") + set + " --set train.steps=1 --set train.threads=1");
    ASSERT_EQ(train.exit_code, 0) << train.output;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(train.output, m, std::regex(R"(arena [0-9.]+ GiB \((\d+) bytes\))")))
        << train.output;
    // Every term is the arena's but the process itself (outside the arena, an allowance on the CPU).
    EXPECT_GT(Term(plan.output, "process"), 0u) << plan.output;
    EXPECT_EQ(std::stoull(m[1]), Term(plan.output, "total") - Term(plan.output, "process"))
        << plan.output << train.output;
  }
}

TEST_F(PlanCliTest, LaunchRefusesAJobThatDoesNotFitBeforeStartingRanks) {
  const std::string launch = "launch " + Path("job.textproto") + " --inventory " + Path("inv.textproto") +
                             " --np 2 --set device=CPU --set train.micro_batch=1048576";
  // Both ranks on one node: they share its memory (measured on the launch host, nodes like it).
  WriteText(Path("inv.textproto"),
            "node { hostname: \"n1\" address: \"10.0.0.1\" jurisdiction: \"NO\" site: \"osl1\" slots: 2 }\n"
            "lease_dir: \"" +
                Path("leases") + "\"\n");
  // A refused dry run writes nothing at all (issue 21), not even its audit record.
  RunResult r = RunFjord(launch + " --dry-run");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the memory plan of " + Path("job.textproto")));
  EXPECT_FALSE(fs::exists(Path("run")));
  // The launch itself: refused the same way before any rank is placed or started (no hostfile, no job
  // copy), and the refusal is in the audit log.
  r = RunFjord(launch);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the memory plan of " + Path("job.textproto")));
  EXPECT_THAT(r.output, HasSubstr("the largest part is activations"));
  EXPECT_THAT(r.output, HasSubstr("2 rank(s)"));
  EXPECT_THAT(r.output, HasSubstr("shared by its 2 ranks"));
  EXPECT_FALSE(fs::exists(Path("run/launch")));
  EXPECT_THAT(testing::ReadText(Path("run/audit.jsonl")), HasSubstr("\"event\":\"launch_refused\""));
}

}  // namespace
}  // namespace fjord
