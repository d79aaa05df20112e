// `fjord export --format hf` end to end: a model trained by the fjord binary, exported, must
// compute in Hugging Face's semantics the loss `fjord eval` computes on the same tokens. The HF
// side is tests/runtime/formats/hf_gpt2_forward.py, an independent numpy float64 forward of
// GPT2LMHeadModel (transformers is not packaged for Debian 12); it refuses names and shapes it
// does not expect. Negative controls show the comparison can fail: a transposed square tensor
// (shapes still right) moves the loss; a tensor in fjord's orientation and a misnamed one are refused.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/formats/safetensors.h"
#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::AppendLe;
using testing_util::RunCaptured;
using testing_util::WriteBytes;

// Model seq_len 16 with train.seq_len 15: eval scores windows of 16 tokens (15 inputs, 15 targets),
// and HF takes the same 16 tokens as input_ids = labels within its n_positions of 16, so its shifted
// loss scores exactly the same 15 predictions per window.
constexpr int kB = 4, kT = 15, kBatches = 2, kVocab = 300;

class HfGpt2ForwardTest : public testing_util::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    const std::optional<std::string> python = testing_util::PythonWithNumpy();
    if (!python)
      GTEST_SKIP() << "python3 with numpy not found (scripts/install-deps.sh installs python3-numpy)";
    python_ = *python;
  }

  // Runs `command`; returns its exit status and sets *output (stdout and stderr).
  int Run(const std::string& command, std::string* output) {
    return RunCaptured(command, Path("run_" + std::to_string(runs_++) + ".log"), output);
  }

  int Fjord(const std::string& args, std::string* output) {
    return Run(std::string(FJORD_BINARY) + " " + args, output);
  }

  // The oracle's exit status on model directory `dir` and the token rows; *output gets its output.
  int Oracle(const std::string& dir, std::string* output) {
    return Run(python_ + " " + FJORD_SOURCE_DIR + "/tests/runtime/formats/hf_gpt2_forward.py " + dir + " " +
                   Path("tokens.txt"),
               output);
  }

  std::string python_;
  int runs_ = 0;
};

// The number after `"key": ` in a JSON line; NaN when absent.
double JsonNumber(const std::string& text, const std::string& key) {
  const size_t k = text.find("\"" + key + "\": ");
  return k == std::string::npos ? NAN : std::stod(text.substr(k + key.size() + 4));
}

// Rewrites the safetensors file at `path` after `edit` has changed tensor `name` (its ref and its
// values, as float32).
void EditTensor(const std::string& path, const std::string& name,
                const std::function<void(SafetensorsTensorRef&, std::vector<float>&)>& edit) {
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  std::vector<std::vector<float>> storage;
  std::vector<SafetensorsTensorRef> refs;
  bool found = false;
  for (const SafetensorsTensor& t : st->tensors()) {
    storage.emplace_back(t.num_elements());
    ASSERT_TRUE(TensorToFloat32(t, "", storage.back().data()).ok());
    refs.push_back({t.name, Dtype::kF32, t.shape, nullptr});
    if (t.name == name) {
      edit(refs.back(), storage.back());
      found = true;
    }
  }
  ASSERT_TRUE(found) << name;
  for (size_t i = 0; i < refs.size(); ++i) refs[i].data = storage[i].data();
  ASSERT_TRUE(WriteSafetensors(path, refs, st->metadata()).ok());
}

// Transposes a 2-D tensor's values; the shape is swapped too unless keep_shape (square only).
std::function<void(SafetensorsTensorRef&, std::vector<float>&)> Transpose(bool keep_shape) {
  return [keep_shape](SafetensorsTensorRef& ref, std::vector<float>& values) {
    const int64_t rows = ref.shape.at(0), cols = ref.shape.at(1);
    std::vector<float> transposed(values.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) transposed[c * rows + r] = values[r * cols + c];
    values = transposed;
    if (!keep_shape) ref.shape = {cols, rows};
  };
}

TEST_F(HfGpt2ForwardTest, ExportComputesFjordEvalLossUnderHuggingFaceSemantics) {
  // Train: 2 layers, vocab 300 (padded to 384 inside fjord, so the export must drop padded rows).
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the fjord keeps its data home " + std::to_string(i % 5) + "\n";
  WriteBytes(Path("corpus.txt"), text);
  std::string out;
  ASSERT_EQ(Fjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"), &out), 0) << out;
  std::string job =
      "model { n_layer: 2 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 300 }\n"
      "train { micro_batch: 4 steps: 30 lr: 1e-2 seq_len: 15 }\n";
  job += "data { train: \"" + Path("data/train_*.bin") + "\" }\n";
  job += "run_dir: \"" + Path("run") + "\"\n";
  WriteBytes(Path("job.textproto"), job);
  ASSERT_EQ(Fjord("train " + Path("job.textproto") + " --quiet", &out), 0) << out;
  ASSERT_EQ(Fjord("export --checkpoint " + Path("run") + " --out " + Path("hf") + " --format hf", &out), 0)
      << out;

  // Eval data: one shard of exactly kBatches * kB * kT + 1 tokens. eval reads it unshuffled
  // (runtime/data/data.h, shuffle off): W = (N - 1) / T = 8 windows, window i = tokens [i*T, i*T + T],
  // batches of micro_batch 4 in order, so 2 batches score every window once and nothing else.
  // Corpus text (which the model learned) with every 9th token above the byte range: wte rows
  // 256..299 never occur as inputs in training, but they are in the export, in both softmaxes and
  // here in the inputs too.
  const int n = kBatches * kB * kT + 1;
  std::vector<int> tokens(n);
  for (int i = 0; i < n; ++i) {
    tokens[i] = i % 9 == 8 ? 256 + (i * 7) % (kVocab - 256) : static_cast<unsigned char>(text[i]);
  }
  std::string shard;
  AppendLe<int32_t>(&shard, 20240520);  // llm.c shard header: magic, version, token count, zeros
  AppendLe<int32_t>(&shard, 1);
  AppendLe<int32_t>(&shard, n);
  shard.resize(256 * 4, '\0');
  for (int t : tokens) AppendLe<uint16_t>(&shard, static_cast<uint16_t>(t));
  WriteBytes(Path("eval.bin"), shard);
  std::string rows;
  for (int w = 0; w < kBatches * kB; ++w) {
    for (int i = 0; i <= kT; ++i) rows += std::to_string(tokens[w * kT + i]) + (i == kT ? "\n" : " ");
  }
  WriteBytes(Path("tokens.txt"), rows);

  const std::string eval_args =
      "eval --checkpoint " + Path("run") + " --data " + Path("eval.bin") + " --batches 2";
  ASSERT_EQ(Fjord(eval_args, &out), 0) << out;
  const double fjord_loss = JsonNumber(out, "loss");
  EXPECT_EQ(JsonNumber(out, "tokens"), kBatches * kB * kT) << out;
  std::string hf;
  ASSERT_EQ(Oracle(Path("hf"), &hf), 0) << hf;
  const double hf_loss = JsonNumber(hf, "loss");
  EXPECT_EQ(JsonNumber(hf, "predictions"), kBatches * kB * kT) << hf;
  EXPECT_EQ(JsonNumber(hf, "sequences"), kBatches * kB) << hf;
  // Not trivial: a finite loss from trained weights, well away from a uniform model's ln(300).
  ASSERT_TRUE(std::isfinite(fjord_loss) && fjord_loss > 0.0) << out;
  EXPECT_GT(std::abs(fjord_loss - std::log(static_cast<double>(kVocab))), 0.1);

  // Tolerance: fjord eval prints the loss with 6 decimals (rounding error <= 5e-7) from a float32
  // forward (eps 6e-8; 2 layers of width 32, sums of at most 128 terms), the oracle computes in
  // float64. The float32 error on a loss of a few nats is of order 1e-6 at most (observed: 1e-7).
  // 5e-7 + 2e-6 * |loss| (7.5e-6 here) keeps a margin for other compilers and BLAS builds and is
  // still 4-5 orders of magnitude below what a layout bug costs (negative control below: 0.5 nat).
  const double tolerance = 5e-7 + 2e-6 * std::abs(hf_loss);
  EXPECT_NEAR(fjord_loss, hf_loss, tolerance) << "fjord eval: " << out << "oracle: " << hf;

  // Negative control 1: attn.c_proj.weight is square, so an exporter that forgot Conv1D's
  // transposition for it would still write the right shapes; only the loss can tell.
  const std::string bad = Path("hf_transposed");
  std::filesystem::copy(Path("hf"), bad);
  for (const char* layer : {"0", "1"}) {
    ASSERT_NO_FATAL_FAILURE(EditTensor(bad + "/model.safetensors",
                                       "transformer.h." + std::string(layer) + ".attn.c_proj.weight",
                                       Transpose(/*keep_shape=*/true)));
  }
  ASSERT_EQ(Oracle(bad, &out), 0) << out;
  EXPECT_GT(std::abs(JsonNumber(out, "loss") - fjord_loss), 1000 * tolerance) << out;

  // Negative controls 2 and 3: a non-square weight in fjord's orientation, and a name HF does not
  // have, are refused naming the tensor.
  const std::string layout = Path("hf_fjord_layout");
  std::filesystem::copy(Path("hf"), layout);
  ASSERT_NO_FATAL_FAILURE(EditTensor(layout + "/model.safetensors", "transformer.h.0.mlp.c_fc.weight",
                                     Transpose(/*keep_shape=*/false)));
  EXPECT_EQ(Oracle(layout, &out), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("hf_gpt2_forward: error:"), HasSubstr("transformer.h.0.mlp.c_fc.weight"),
                         HasSubstr("has shape [128, 32], expected [32, 128]")));
  const std::string renamed = Path("hf_renamed");
  std::filesystem::copy(Path("hf"), renamed);
  ASSERT_NO_FATAL_FAILURE(EditTensor(
      renamed + "/model.safetensors", "transformer.h.1.ln_2.bias",
      [](SafetensorsTensorRef& ref, std::vector<float>&) { ref.name = "transformer.h.1.ln2.bias"; }));
  EXPECT_EQ(Oracle(renamed, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("unexpected tensor \"transformer.h.1.ln2.bias\""));
}

}  // namespace
}  // namespace fjord
