// Models too large for the host are refused before anything is allocated (issue 16): train with a
// huge --set model.n_layer, eval / sample / export of a crafted checkpoint whose job spec claims
// 2^31 - 1 layers, and a Hugging Face import of a 100000 x 4096 config. Each exits 1 with the
// parameter count, the bytes needed and the bytes available, names the field, and writes nothing.
// Oracle: the GPT-2 parameter count in closed form, V_p C + T C + L (12 C^2 + 13 C) + 2 C (every
// width here is a multiple of 16, so fjord's 16-float tensor padding adds nothing).
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

unsigned __int128 Gpt2Params(uint64_t L, uint64_t C, uint64_t T, uint64_t V) {
  const uint64_t Vp = (V + 127) / 128 * 128;
  return static_cast<unsigned __int128>(Vp) * C + static_cast<unsigned __int128>(T) * C +
         static_cast<unsigned __int128>(L) * (12 * C * C + 13 * C) + 2 * C;
}

std::string Text(unsigned __int128 v) { return std::to_string(static_cast<uint64_t>(v)); }

struct Refusal {
  unsigned __int128 params = 0, needed = 0, available = 0;
};

// The numbers of "the model has P parameters and needs N bytes ... has A bytes ... available".
Refusal ParseRefusal(const std::string& out) {
  Refusal r;
  std::smatch m;
  if (std::regex_search(out, m, std::regex(R"(the model has (\d+) parameters and needs (\d+) bytes)"))) {
    r.params = std::stoull(m[1]);
    r.needed = std::stoull(m[2]);
  }
  if (std::regex_search(
          out, m, std::regex(R"(this host has (\d+) bytes \([0-9.]+ GiB\) available \(MemAvailable\))"))) {
    r.available = std::stoull(m[1]);
  }
  return r;
}

// Exit 1, the oracle's parameter count, at least `bytes_per_param` bytes per parameter needed,
// fewer bytes available than needed, the field named, no abort.
void ExpectRefused(const RunResult& r, unsigned __int128 params, int bytes_per_param,
                   const std::string& field) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("bad_alloc")));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("FATAL")));
  const Refusal got = ParseRefusal(r.output);
  EXPECT_EQ(Text(got.params), Text(params)) << r.output;
  EXPECT_GE(got.needed, params * bytes_per_param) << r.output;
  EXPECT_GT(got.available, 0u) << r.output;
  EXPECT_LT(got.available, got.needed) << r.output;
  EXPECT_THAT(r.output, HasSubstr(field)) << r.output;
  EXPECT_THAT(r.output, HasSubstr("nothing was allocated")) << r.output;
}

class MemoryLimitsTest : public testing::TempDirTest {
 protected:
  MemoryLimitsTest() : TempDirTest("fjord_mem_") {}

  // Token shards of the byte tokenizer (vocabulary 256) in DIR/data.
  void Prep() {
    std::string text;
    for (int i = 0; i < 200; ++i) text += "abcabcabd " + std::to_string(i % 7) + "\n";
    WriteText(Path("corpus.txt"), text);
    const RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::string JobText(int n_layer, const std::string& run_dir) const {
    return "model { n_layer: " + std::to_string(n_layer) +
           " n_head: 2 n_embd: 64 seq_len: 32 vocab_size: 256 }\n"
           "train { micro_batch: 2 steps: 2 }\n"
           "data { train: \"" +
           Path("data/train_*.bin") +
           "\" }\n"
           "run_dir: \"" +
           run_dir + "\"\n";
  }
};

TEST_F(MemoryLimitsTest, TrainWithHugeNLayerIsRefusedWithTheNumbers) {
  Prep();
  WriteText(Path("job.textproto"), JobText(1, Path("run")));
  const RunResult r = RunFjord("train " + Path("job.textproto") + " --set model.n_layer=2147483647");
  // Weights, gradients and AdamW's two moments: 16 bytes per parameter at least.
  ExpectRefused(r, Gpt2Params(2147483647, 64, 32, 256), 16, "model.n_layer = 2147483647");
  // Only the audit log, which records the refusal: no metrics, no checkpoint.
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
  EXPECT_FALSE(fs::exists(Path("run/checkpoints")));
  EXPECT_THAT(testing::ReadText(Path("run/audit.jsonl")),
              HasSubstr("\"event\":\"job_end\",\"ok\":false,\"error\":\"rank 0 on host "));
}

TEST_F(MemoryLimitsTest, EvalSampleAndExportOfACraftedCheckpointAreRefused) {
  Prep();
  // An untenanted checkpoint whose job spec claims 2^31 - 1 layers; model.bin is never read.
  WriteText(Path("ckpt/job.textproto"), JobText(2147483647, Path("ckpt_run")));
  WriteText(Path("ckpt/model.bin"), std::string(1024, '\0'));
  const unsigned __int128 params = Gpt2Params(2147483647, 64, 32, 256);

  RunResult r = RunFjord("eval --checkpoint " + Path("ckpt") + " --data '" + Path("data/train_*.bin") + "'");
  ExpectRefused(r, params, 8, "model.n_layer = 2147483647");
  r = RunFjord("sample --checkpoint " + Path("ckpt") + " --tokens 3");
  ExpectRefused(r, params, 8, "model.n_layer = 2147483647");
  for (const char* format : {"hf", "llmc"}) {
    r = RunFjord("export --checkpoint " + Path("ckpt") + " --out " + Path(std::string("out_") + format) +
                 " --format " + format);
    ExpectRefused(r, params, 12, "model.n_layer = 2147483647");
    EXPECT_FALSE(fs::exists(Path(std::string("out_") + format)));
  }
  EXPECT_FALSE(fs::exists(Path("ckpt_run")));
}

TEST_F(MemoryLimitsTest, HuggingFaceImportOfAHugeConfigIsRefused) {
  // 100000 layers of width 4096: about 20 trillion parameters. Only config.json is needed to
  // refuse: the weights are never opened.
  WriteText(Path("hf/config.json"),
            R"({"model_type": "gpt2", "n_layer": 100000, "n_head": 32, "n_embd": 4096, "n_positions": 1024,
                "vocab_size": 50257})");
  const RunResult r = RunFjord("import --from " + Path("hf") + " --out " + Path("imported") + " --format hf");
  // Weights, gradients and the zero AdamW state written with them: 12 bytes per parameter.
  ExpectRefused(r, Gpt2Params(100000, 4096, 1024, 50257), 12, "model.n_layer = 100000");
  EXPECT_FALSE(fs::exists(Path("imported")));
  EXPECT_FALSE(fs::exists(Path("imported.import")));
}

}  // namespace
}  // namespace fjord
