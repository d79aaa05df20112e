// `fjord train` with train.recompute: BLOCK end to end on the CPU, through the binary, for GPT-2 and
// Llama in fp32 and bf16 (the CPU's emulation), with gradient accumulation: a run preempted half
// way and resumed with recompute gives, step for step, the losses of the same job run straight
// through without recompute (the oracle), printed to the last digit in metrics.jsonl.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::LossTexts;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

class RecomputeTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("fjord_recompute_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
         "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::mt19937_64 rng(7);
    static const char* kWords[] = {"nordlys ", "fjell ", "elv ",  "kraft ",
                                   "modell ",  "data ",  "blir ", "her.\n"};  // a line is a document
    std::string text;
    while (text.size() < 20000) text += kWords[rng() % 8];
    std::ofstream(dir_ / "corpus.txt") << text;
    RunResult r = RunFjord("prep --input " + P("corpus.txt") + " --out " + P("data"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string rest =
        "train { micro_batch: 2 global_batch: 6 steps: 12 lr: 3e-3 warmup_steps: 2 threads: 1 }\n"
        "checkpoint { every_steps: 3 keep_last: 2 }\n"
        "data { train: \"" +
        P("data/train_*.bin") + "\" }\n";
    std::ofstream(dir_ / "gpt2.textproto")
        << "model { n_layer: 3 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
        << rest;
    std::ofstream(dir_ / "llama.textproto")
        << "model { arch: LLAMA n_layer: 3 n_head: 4 n_kv_head: 2 n_embd: 32 intermediate_size: 88 seq_len: "
           "32\n"
           "        vocab_size: 256 rope_theta: 500000 attention_bias: true }\n"
        << rest;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string P(const std::string& name) const { return (dir_ / name).string(); }
  std::string Train(const std::string& job, const std::string& run, const std::string& extra) const {
    return " train " + P(job) + " --quiet --set run_dir=" + P(run) + " " + extra;
  }

  fs::path dir_;
};

TEST_F(RecomputeTrainTest, APreemptedRecomputeRunResumesToTheLossesWithoutRecompute) {
  for (const char* job : {"gpt2.textproto", "llama.textproto"}) {
    for (const std::string dtype : {"FP32", "BF16"}) {
      SCOPED_TRACE(std::string(job) + " " + dtype);
      const std::string set = "--set model.dtype=" + dtype;
      fs::remove_all(P("none"));
      fs::remove_all(P("block"));
      RunResult r = RunFjord(Train(job, "none", set + " --set train.recompute=NONE"));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      const std::vector<std::string> none = LossTexts(P("none/metrics.jsonl"));
      ASSERT_EQ(none.size(), 12u);
      r = Shell("FJORD_TEST_HOOK=signal_after_step=6 " + std::string(FJORD_BINARY) +
                Train(job, "block", set + " --set train.recompute=BLOCK"));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      ASSERT_EQ(LossTexts(P("block/metrics.jsonl")).size(), 6u);
      r = RunFjord(Train(job, "block", set + " --set train.recompute=BLOCK --resume"));
      ASSERT_EQ(r.exit_code, 0) << r.output;
      EXPECT_EQ(LossTexts(P("block/metrics.jsonl")), none);
    }
  }
}

}  // namespace
}  // namespace fjord
