// `fjord train` with model.arch LLAMA end to end on the CPU, through the binary: it learns (the
// loss falls well below its start on a byte-level corpus), a preempted run resumes bit for bit in
// fp32 and in bf16 (the CPU's emulation), a checkpoint written by 2 ranks continues on 1, a GPT-2
// checkpoint is refused under a Llama job naming the field, and the GPT-2-only exporters refuse
// a Llama checkpoint. The oracle for "resumed correctly" is the same job run straight through.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::LossTexts;
using testing::Mpirun;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

class LlamaTrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("fjord_llama_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
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
    // The whole-model test's shape family: GQA 4:2, rope_theta 500000 with llama3 scaling, untied,
    // q/k/v biases.
    std::ofstream(dir_ / "job.textproto")
        << "model { arch: LLAMA n_layer: 2 n_head: 4 n_kv_head: 2 n_embd: 32 intermediate_size: 88 seq_len: "
           "32\n"
           "        vocab_size: 256 rope_theta: 500000 attention_bias: true\n"
           "        rope_scaling { rope_type: LLAMA3 factor: 8 low_freq_factor: 1 high_freq_factor: 4\n"
           "                       original_max_position_embeddings: 16 } }\n"
           "train { micro_batch: 2 global_batch: 8 steps: 20 lr: 3e-3 warmup_steps: 2 threads: 1 }\n"
           "checkpoint { every_steps: 5 keep_last: 3 }\n"
           "data { train: \"" +
               P("data/train_*.bin") + "\" }\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string P(const std::string& name) const { return (dir_ / name).string(); }
  std::string Train(const std::string& run, const std::string& extra = "") const {
    return " train " + P("job.textproto") + " --quiet --set run_dir=" + P(run) + " " + extra;
  }

  fs::path dir_;
};

TEST_F(LlamaTrainTest, LearnsAndAPreemptedRunResumesBitIdentically) {
  for (const std::string& dtype : {std::string("FP32"), std::string("BF16")}) {
    SCOPED_TRACE(dtype);
    const std::string set = "--set model.dtype=" + dtype;
    fs::remove_all(P("straight"));
    fs::remove_all(P("resumed"));
    RunResult r = RunFjord(Train("straight", set));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<std::string> straight = LossTexts(P("straight/metrics.jsonl"));
    ASSERT_EQ(straight.size(), 20u);
    // From about log(256) = 5.5 on a corpus of 8 words: 20 steps take it well down.
    EXPECT_LT(std::stod(straight.back()), std::stod(straight.front()) - 1.5);
    r = Shell("FJORD_TEST_HOOK=signal_after_step=10 " + std::string(FJORD_BINARY) + Train("resumed", set));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_EQ(LossTexts(P("resumed/metrics.jsonl")).size(), 10u);
    r = RunFjord(Train("resumed", set + " --resume"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(LossTexts(P("resumed/metrics.jsonl")), straight);
  }
}

TEST_F(LlamaTrainTest, ResumesOnAnotherWorldSize) {
  // 2 ranks (ZeRO-1) write the checkpoint at step 10; 1 rank continues. Same global batch, so the
  // data continues from the same position; only the fp32 reduction order differs.
  RunResult r = RunFjord(Train("one"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=10") +
            Train("mixed", "--set parallel.zero_stage=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord(Train("mixed", "--resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> one = LossTexts(P("one/metrics.jsonl")),
                                 mixed = LossTexts(P("mixed/metrics.jsonl"));
  ASSERT_EQ(mixed.size(), 20u);
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_NEAR(std::stod(mixed[i]), std::stod(one[i]), 1e-4 * std::stod(one[i])) << "step " << i + 1;
}

// Llama 3's vocabulary is 128,256 ids: above 65,536 the shards hold uint32 tokens (llm.c's header,
// version 2). The shard is written here byte by byte from that layout (not by fjord), with ids that
// exist only above uint16; the oracle for the first step is the closed form ln(V): at initialisation
// the logits are nearly zero, so the softmax is nearly uniform over all V ids. Bound: a logit is
// h . w with h of unit RMS (RMSNorm) and w ~ N(0, 0.02^2) over n_embd = 32 channels, so each target's
// logit has std 0.02 * sqrt(32) = 0.11 and the mean over 5 target ids 0.05; 0.3 is 6 of those, and
// still tells 128,256 from 65,536 ids (ln ratio 0.67).
TEST_F(LlamaTrainTest, AVocabularyAboveUint16TrainsFromVersion2Shards) {
  constexpr int kVocab = 128256;
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = 2;
  std::vector<uint32_t> tokens;
  for (int i = 0; i < 4000; ++i) tokens.push_back(kVocab - 1 - 997 * (i % 5));  // 5 ids, all > 65535
  header[2] = static_cast<int32_t>(tokens.size());
  fs::create_directories(P("wide"));
  {
    std::ofstream out(P("wide/train_000000.bin"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), 256 * 4);
    out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  }
  RunResult r = RunFjord(Train("wide_run", "--set model.vocab_size=" + std::to_string(kVocab) +
                                               " --set data.train=" + P("wide/train_*.bin") +
                                               " --set train.lr=1e-2 --set train.log_every=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> losses = testing::Losses(P("wide_run/metrics.jsonl"));
  ASSERT_EQ(losses.size(), 20u);
  EXPECT_NEAR(losses[0], std::log(static_cast<double>(kVocab)), 0.3);
  // Five ids in a fixed cycle are learnable: the loss falls far below ln(V).
  EXPECT_LT(losses.back(), losses[0] - 2.0) << r.output;
  // And a vocabulary that does not hold the shard's ids is refused naming the shard.
  r = RunFjord(Train("narrow_run", "--set model.vocab_size=65536 --set data.train=" + P("wide/train_*.bin")));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train_000000.bin"));
}

TEST_F(LlamaTrainTest, EvalReproducesTheTrainersValLossAndSampleRuns) {
  RunResult r = RunFjord(Train("run",
                               "--set train.steps=10 --set train.eval_every=10 --set train.eval_batches=2 "
                               "--set data.val=" +
                                   P("data/val_*.bin")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  double val = -1;
  std::ifstream metrics(P("run/metrics.jsonl"));
  for (std::string line; std::getline(metrics, line);) {
    const size_t k = line.find("\"val_loss\": ");
    if (k != std::string::npos && line.compare(k + 12, 4, "null") != 0) val = std::stod(line.substr(k + 12));
  }
  ASSERT_GT(val, 0.0);
  r = RunFjord("eval --checkpoint " + P("run") + " --data '" + P("data/val_*.bin") + "' --batches 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t k = r.output.find("{\"loss\": ");
  ASSERT_NE(k, std::string::npos) << r.output;
  EXPECT_NEAR(std::stod(r.output.substr(k + 9)), val, 1e-5);
  // stdout alone: the prompt, then the text (the checkpoint line goes to stderr).
  r = testing::Shell("{ " + std::string(FJORD_BINARY) + " sample --checkpoint " + P("run") +
                     " --prompt fjell --tokens 20 --temperature 0 2>/dev/null; }");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::StartsWith("fjell"));
  EXPECT_GE(r.output.size(), 25u);
}

TEST_F(LlamaTrainTest, AGpt2CheckpointIsRefusedNamingTheArchitecture) {
  std::ofstream(dir_ / "gpt2.textproto")
      << "model { n_layer: 2 n_head: 4 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
         "train { micro_batch: 2 steps: 2 threads: 1 }\n"
         "data { train: \"" +
             P("data/train_*.bin") + "\" }\n";
  RunResult r = RunFjord("train " + P("gpt2.textproto") + " --quiet --set run_dir=" + P("run"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("train " + P("gpt2.textproto") + " --quiet --set run_dir=" + P("run") +
               " --resume --set model.arch=LLAMA --set model.intermediate_size=64 --set train.steps=4");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("model.arch (0 GPT2, 1 LLAMA) is 0 in the checkpoint but 1 in the model"));
}

// llm.c's file holds GPT-2 only; --format hf writes LlamaForCausalLM (hf_llama_oracle_test checks
// it against transformers).
TEST_F(LlamaTrainTest, LlmcExportersRefuseALlamaCheckpointAndWriteNothing) {
  RunResult r = RunFjord(Train("run", "--set train.steps=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string& format : {std::string("llmc"), std::string("llmc-bf16")}) {
    r = RunFjord("export --checkpoint " + P("run/checkpoints/step_000001") + " --format " + format +
                 " --out " + P("out_" + format));
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output,
                HasSubstr("model.arch is LLAMA, but --format " + format +
                          " writes llm.c's GPT-2 file only; export a Llama-family model with --format hf"));
    EXPECT_FALSE(fs::exists(P("out_" + format)));
  }
  r = RunFjord("export --checkpoint " + P("run/checkpoints/step_000001") + " --format hf --out " +
               P("out_hf"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(P("out_hf/model.safetensors")));
  r = RunFjord("import --from " + P("out_hf") + " --out " + P("imported"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// What the Llama family does not compute is refused by the command, naming the config.json field
// (or the tensor), with exit 1 and no checkpoint written.
TEST_F(LlamaTrainTest, HfImportRefusalsExitOneAndWriteNothing) {
  RunResult r = RunFjord(Train("run", "--set train.steps=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("export --checkpoint " + P("run/checkpoints/step_000001") + " --out " + P("hf"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string config = testing::ReadText(P("hf/config.json"));
  const auto refused = [&](const std::string& what) {
    RunResult i = RunFjord("import --format hf --from " + P("hf") + " --out " + P("imported"));
    EXPECT_EQ(i.exit_code, 1) << i.output;
    EXPECT_THAT(i.output, HasSubstr(what));
    EXPECT_FALSE(fs::exists(P("imported"))) << what;
  };
  // The job has q/k/v biases: the export is a Qwen2ForCausalLM, which writes its window fields.
  ASSERT_THAT(config, HasSubstr("\"use_sliding_window\": false,\n  \"sliding_window\": null,"));
  std::string window = config;
  window.replace(window.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  window.replace(window.find("\"sliding_window\": null"), 22, "\"sliding_window\": 8");
  testing::WriteText(P("hf/config.json"), window);
  refused("sliding_window 8 is shorter than max_position_embeddings");
  std::string moe = config;
  moe.replace(moe.find("\"use_cache\""), 0, "\"num_local_experts\": 8,\n  ");
  testing::WriteText(P("hf/config.json"), moe);
  refused("num_local_experts 8: mixtures of experts are not supported");
  std::string rope = config;  // fjord writes "rope_scaling": ... on one line
  const size_t at = rope.find("\"rope_scaling\": ");
  rope.replace(at, rope.find('\n', at) - at,
               "\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0},");
  testing::WriteText(P("hf/config.json"), rope);
  refused("rope_scaling.rope_type \"dynamic\" is not supported");
  testing::WriteText(P("hf/config.json"), config);
  fs::rename(P("hf/model.safetensors"), P("hf/model-00001-of-00001.safetensors"));
  testing::WriteText(P("hf/model.safetensors.index.json"),
                     "{\"weight_map\": {\"model.norm.weight\": \"x.safetensors\"}}");
  refused("x.safetensors");
}

}  // namespace
}  // namespace fjord
