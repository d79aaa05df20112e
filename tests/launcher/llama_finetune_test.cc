// examples/llama-finetune end to end on CPU, with a tiny random LlamaForCausalLM that transformers
// makes and saves (tests/runtime/train/hf_llama_oracle.py): `fjord import --format hf`, `fjord eval`
// of the import against transformers' loss on the same shard windows, a fine-tune of tenant acme
// (NO residency, data prepped for the tenant, sealed checkpoints) from train.init_from with the
// example's warm-up, and `fjord export --format hf --key` of the fine-tuned checkpoint, which
// transformers loads and scores as `fjord eval --key` does. Skips in one line without the venv.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/launcher/cli_util.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

class LlamaFinetuneTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    python_ = FJORD_PYTHON;
    if (!fs::exists(python_) ||
        std::system((python_ + " -c 'import transformers, torch, numpy' >/dev/null 2>&1").c_str()) != 0) {
      GTEST_SKIP() << "Python test stack missing (" << python_
                   << " cannot import transformers, torch, numpy); install it: bash scripts/install-deps.sh";
    }
    identity_ = Identity("NO", "osl1");
  }
  RunResult Fjord(const std::string& args) {
    return Shell("FJORD_NODE_IDENTITY=" + identity_ + " " + std::string(FJORD_BINARY) + " " + args);
  }
  RunResult Oracle(const std::string& args) {
    return Shell(python_ + " " + FJORD_SOURCE_DIR + "/tests/runtime/train/hf_llama_oracle.py " + args);
  }
  // The "loss" of the last JSON object in `output`.
  static double Loss(const std::string& output) {
    const size_t brace = output.rfind('{');
    if (brace == std::string::npos) return NAN;
    StatusOr<JsonValue> v = ParseJson(output.substr(brace), "output");
    return v.ok() && v->Find("loss") ? v->Find("loss")->number() : NAN;
  }
  static std::string First(const std::string& dir, const std::string& prefix) {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().filename().string().rfind(prefix, 0) == 0) return e.path().string();
    }
    return "";
  }
  std::string python_, identity_;
};

TEST_F(LlamaFinetuneTest, ImportEvalTenantFineTuneAndExportAgreeWithTransformers) {
  RunResult r = Oracle("make " + Path("hf") + " llama_finetune");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string hf = Path("hf/llama_finetune");
  std::string text;
  for (int i = 0; i < 300; ++i) {
    text += "Linje " + std::to_string(i) + ": fjorden ligger stille, og båten går sør for øya. Ærlig talt!\n";
  }
  WriteText(Path("input.txt"), text);
  r = Fjord("prep --input " + Path("input.txt") + " --out " + Path("pub") + " --val-fraction 0.2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Fjord("prep --input " + Path("input.txt") + " --out " + Path("data/acme") +
            " --val-fraction 0.2 --tenant acme --jurisdiction NO");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Import, and eval on the same windows transformers scores: B 4 (micro_batch's default) x T 64
  // (the imported model.seq_len = max_position_embeddings).
  r = Fjord("import --format hf --from " + hf + " --out " + Path("imported"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Fjord("eval --checkpoint " + Path("imported") + " --data '" + Path("pub/val_*.bin") + "' --batches 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const double imported_loss = Loss(r.output);
  r = Oracle("shardloss " + hf + " " + First(Path("pub"), "val_") + " 4 64 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NEAR(imported_loss, Loss(r.output), 1e-5 * Loss(r.output)) << "fjord eval vs transformers";

  // The example, with the tiny model's shapes and this test's paths.
  WriteText(Path("keys/acme.key"), "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
            0600);
  const std::string sets =
      " --set model.n_layer=2 --set model.n_head=4 --set model.n_kv_head=2 --set model.n_embd=64"
      " --set model.intermediate_size=96 --set model.seq_len=64 --set model.vocab_size=300"
      " --set train.init_from=" +
      Path("imported") +
      " --set train.seq_len=32 --set train.micro_batch=2"
      " --set train.steps=8 --set train.lr=1e-3 --set train.warmup_steps=2 --set train.min_lr=1e-4"
      " --set train.eval_every=0 --set train.log_every=1 --set checkpoint.every_steps=8"
      " --set checkpoint.encryption_key_file=" +
      Path("keys/acme.key") + " --set data.train='" + Path("data/acme/train_*.bin") + "' --set data.val='" +
      Path("data/acme/val_*.bin") + "' --set run_dir=" + Path("run");
  r = Fjord("train " + std::string(FJORD_SOURCE_DIR) + "/examples/llama-finetune/job.textproto" + sets);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> losses = testing::Losses(Path("run/metrics.jsonl"));
  ASSERT_EQ(losses.size(), 8u) << r.output;
  EXPECT_LT(losses.back(), losses.front()) << "the fine-tune learns";

  // Sealed: no key, no eval; with the key, eval and export, and transformers agrees with fjord.
  r = Fjord("eval --checkpoint " + Path("run") + " --data '" + Path("data/acme/val_*.bin") + "' --batches 1");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("key"));
  r = Fjord("eval --checkpoint " + Path("run") + " --data '" + Path("data/acme/val_*.bin") +
            "' --batches 1 --key " + Path("keys/acme.key"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const double tuned_loss = Loss(r.output);
  EXPECT_LT(tuned_loss, imported_loss) << "fine-tuning lowered the held-out loss";
  r = Fjord("sample --checkpoint " + Path("run") + " --key " + Path("keys/acme.key") +
            " --tokenizer byte --prompt 'Fjorden' --tokens 8 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("Fjorden"));
  r = Fjord("export --format hf --checkpoint " + Path("run") + " --out " + Path("exported") + " --key " +
            Path("keys/acme.key"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Oracle("shardloss " + Path("exported") + " " + First(Path("data/acme"), "val_") + " 2 32 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NEAR(tuned_loss, Loss(r.output), 1e-5 * tuned_loss)
      << "transformers on fjord's export vs fjord eval";
}

}  // namespace
}  // namespace fjord
