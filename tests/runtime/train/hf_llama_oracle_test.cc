// Hugging Face import/export of the Llama family (runtime/formats/hf_llama.h through
// runtime/train/model_io.h, what `fjord import/export --format hf` run) against the real stack:
// hf_llama_oracle.py makes tiny random LlamaForCausalLM (GQA, untied, rope_theta 500000, llama3
// scaling), MistralForCausalLM and Qwen2ForCausalLM (q/k/v biases; tied and untied) checkpoints with
// transformers' own save_pretrained (single file and sharded, fp32, bf16 and fp16) and records
// transformers' loss, logits and PyTorch autograd's gradient norms. fjord imports each and must
// give the same loss (1e-5 relative), logits of sequence 0 (1e-4) and the norm of every
// parameter's gradient (1e-4 relative); a fjord-updated model exported with --format hf loads with
// from_pretrained and gives fjord's loss. Refusals (config fields, tensors, shards) need no Python.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/formats/hf_llama.h"
#include "runtime/formats/safetensors.h"
#include "runtime/model/gpt.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/model_io.h"
#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  const std::string dir =
      (fs::path(::testing::TempDir()) / ("fjord_hf_llama_" + name + "_" + std::to_string(::getpid())))
          .string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The venv's Python when it can import transformers; else a one-line reason to skip.
std::optional<std::string> OraclePython(std::string* why) {
  const std::string python = FJORD_PYTHON;
  if (fs::exists(python) &&
      std::system((python + " -c 'import transformers, torch, safetensors' >/dev/null 2>&1").c_str()) == 0) {
    return python;
  }
  *why = "Python test stack missing (" + python +
         " cannot import transformers, torch, safetensors); install it: bash scripts/install-deps.sh";
  return std::nullopt;
}

class HfLlamaOracleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string why;
    const std::optional<std::string> python = OraclePython(&why);
    if (!python) {
      skip_ = why;
      return;
    }
    python_ = *python;
    dir_ = TempDir("oracle");
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
  }

  // Runs the oracle for one case (CTest runs each test in a process of its own, so each makes
  // only its own model) and returns its reference.
  StatusOr<JsonValue> Oracle(const std::string& name) {
    const std::string out = dir_ + "/" + name + ".oracle";
    const std::string command =
        python_ + " " + FJORD_SOURCE_DIR + "/tests/runtime/train/hf_llama_oracle.py make " + out + " " + name;
    std::string output;
    fs::create_directories(out);
    if (testing_util::RunCaptured(command, out + ".log", &output) != 0) {
      return Internal(command + " failed:\n" + output);
    }
    FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(out + "/reference.json", "oracle reference"));
    FJORD_ASSIGN_OR_RETURN(JsonValue json, ParseJson(text, out + "/reference.json"));
    if (json.Find("cases")->array().size() != 1) return Internal("the oracle has no case " + name);
    return JsonValue(json.Find("cases")->array()[0]);
  }

  // Imports the case, checks loss, logits and gradients; with `export_check`, takes one SGD step
  // from fjord's gradients, exports the result and checks transformers' loss of it.
  void Check(const std::string& name, bool export_check) {
    StatusOr<JsonValue> oracle = Oracle(name);
    ASSERT_TRUE(oracle.ok()) << oracle.status().message();
    const JsonValue& c = *oracle;
    const std::string ckpt = dir_ + "/" + name + ".fjord";
    fs::remove_all(ckpt);
    Status imported = ImportModel(c.Find("dir")->text(), ModelFormat::kHuggingFace, ckpt);
    ASSERT_TRUE(imported.ok()) << imported.message();
    StatusOr<proto::JobSpec> job = LoadCheckpointJob(ckpt);
    ASSERT_TRUE(job.ok()) << job.status().message();
    const GptConfig config = GptConfig::FromSpec(job->model());
    ASSERT_TRUE(config.llama());

    const JsonValue& rows = *c.Find("tokens");
    const int B = static_cast<int>(rows.array().size());
    const int T = static_cast<int>(rows.array()[0].array().size()) - 1;
    std::vector<int32_t> tokens, targets;
    for (const JsonValue& row : rows.array()) {
      for (int t = 0; t < T; ++t) {
        tokens.push_back(static_cast<int32_t>(*row.array()[t].AsInt64()));
        targets.push_back(static_cast<int32_t>(*row.array()[t + 1].AsInt64()));
      }
    }
    Gpt model(config, B, T, CpuOps());
    Status loaded = LoadCheckpointWeights(ckpt, model);
    ASSERT_TRUE(loaded.ok()) << loaded.message();

    // Logits of sequence 0.
    model.Forward(tokens.data(), nullptr, B, T, 0.0f);
    const std::vector<JsonValue>& want_logits = c.Find("logits0")->array();
    const int V = config.vocab_size;
    ASSERT_EQ(want_logits.size(), static_cast<size_t>(T) * V);
    double worst = 0;
    for (int t = 0; t < T; ++t) {
      for (int v = 0; v < V; ++v) {
        const double want = want_logits[static_cast<size_t>(t) * V + v].number();
        const double got = model.Logits()[static_cast<size_t>(t) * config.padded_vocab + v];
        worst = std::max(worst, std::abs(got - want));
      }
    }
    EXPECT_LE(worst, 1e-4) << name << ": largest logit difference from transformers";

    // Loss and every parameter's gradient norm.
    model.ZeroGrads();
    const double loss = model.Forward(tokens.data(), targets.data(), B, T, 1.0f);
    const double want_loss = c.Find("loss")->number();
    EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss) << name << ": loss (transformers " << want_loss << ")";
    model.Backward();
    const JsonValue& norms = *c.Find("grad_norms");
    size_t compared = 0;
    for (const ParamTensor& p : model.layout().tensors()) {
      const JsonValue* want = norms.Find(p.name);
      ASSERT_NE(want, nullptr) << name << ": PyTorch has no parameter " << p.name;
      double sum = 0;
      for (size_t i = 0; i < p.size(); ++i)
        sum += static_cast<double>(model.grads()[p.offset + i]) * model.grads()[p.offset + i];
      const double got = std::sqrt(sum);
      EXPECT_NEAR(got, want->number(), 1e-4 * want->number()) << name << ": gradient norm of " << p.name;
      ++compared;
    }
    EXPECT_EQ(compared, norms.object().size()) << name << ": PyTorch has parameters fjord lacks";
    if (!export_check) return;

    // One SGD step on fjord's gradients (a fjord-trained model), then export and reload.
    for (size_t i = 0; i < model.num_params(); ++i) model.params()[i] -= 0.5f * model.grads()[i];
    const float fjord_loss = model.Forward(tokens.data(), targets.data(), B, T, 0.0f);
    EXPECT_GT(std::abs(fjord_loss - loss), 1e-3) << "the step did not change the model";
    const std::vector<float> zeros(model.num_params(), 0.0f);
    StatusOr<std::string> trained = SaveCheckpoint(dir_ + "/" + name + ".trained", CheckpointState{}, *job,
                                                   model, zeros.data(), zeros.data());
    ASSERT_TRUE(trained.ok()) << trained.status().message();
    const std::string out = dir_ + "/" + name + ".export";
    Status exported = ExportModel(*trained, out, ModelFormat::kHuggingFace);
    ASSERT_TRUE(exported.ok()) << exported.message();
    std::string rows_json = "[";
    for (size_t r = 0; r < rows.array().size(); ++r) {
      rows_json += r ? ",[" : "[";
      for (size_t t = 0; t < rows.array()[r].array().size(); ++t)
        rows_json += (t ? "," : "") + rows.array()[r].array()[t].text();
      rows_json += "]";
    }
    testing_util::WriteBytes(dir_ + "/" + name + ".tokens.json", rows_json + "]");
    const std::string command = python_ + " " + FJORD_SOURCE_DIR +
                                "/tests/runtime/train/hf_llama_oracle.py loss " + out + " " + dir_ + "/" +
                                name + ".tokens.json";
    std::string output;
    ASSERT_EQ(testing_util::RunCaptured(command, dir_ + "/" + name + ".loss.log", &output), 0) << output;
    const size_t brace = output.rfind('{');
    ASSERT_NE(brace, std::string::npos) << output;
    StatusOr<JsonValue> result = ParseJson(output.substr(brace), command);
    ASSERT_TRUE(result.ok()) << result.status().message();
    const double hf_loss = result->Find("loss")->number();
    EXPECT_NEAR(hf_loss, fjord_loss, 1e-5 * fjord_loss) << name << ": transformers' loss of fjord's export";
    EXPECT_EQ(result->Find("class")->text(), config.attention_bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
  }

  static inline std::string skip_, python_, dir_;
};

TEST_F(HfLlamaOracleTest, LlamaGqaLlama3RopeShardedFp32) { Check("llama_fp32_sharded", true); }
TEST_F(HfLlamaOracleTest, LlamaBf16SingleFile) { Check("llama_bf16_single", false); }
TEST_F(HfLlamaOracleTest, MistralFp32SingleFile) { Check("mistral_fp32_single", true); }
TEST_F(HfLlamaOracleTest, MistralBf16Sharded) { Check("mistral_bf16_sharded", false); }
TEST_F(HfLlamaOracleTest, MistralFp16SingleFile) { Check("mistral_fp16_single", false); }
TEST_F(HfLlamaOracleTest, Qwen2BiasesFp32SingleFile) { Check("qwen2_fp32_single", true); }
TEST_F(HfLlamaOracleTest, Qwen2BiasesBf16Sharded) { Check("qwen2_bf16_sharded", false); }
TEST_F(HfLlamaOracleTest, Qwen2TiedEmbeddings) { Check("qwen2_tied_fp32_single", true); }

// --- Refusals, without Python ---------------------------------------------------------------

// A valid tiny Llama config.json with `extra` members added (keys the base lacks).
std::string Config(const std::string& extra = "", const std::string& model_type = "llama") {
  return "{\"model_type\": \"" + model_type +
         "\", \"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
         "\"num_key_value_heads\": 1, \"intermediate_size\": 12, \"max_position_embeddings\": 16, "
         "\"vocab_size\": 10" +
         (extra.empty() ? "" : ", " + extra) + "}";
}

std::string ConfigError(const std::string& json) {
  const std::string dir = TempDir("config");
  testing_util::WriteBytes(dir + "/config.json", json);
  StatusOr<HfLlamaConfig> c = ReadHfLlamaConfig(dir);
  fs::remove_all(dir);
  return c.ok() ? "" : c.status().message();
}

TEST(HfLlamaConfigTest, ReadsTheFieldsAndDefaults) {
  const std::string dir = TempDir("config_ok");
  testing_util::WriteBytes(
      dir + "/config.json",
      Config("\"rope_theta\": 500000.0, \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": true, "
             "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, "
             "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
             "\"original_max_position_embeddings\": 8192}"));
  StatusOr<HfLlamaConfig> c = ReadHfLlamaConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->n_kv_head, 1);
  EXPECT_EQ(c->padded_vocab, 128);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_TRUE(c->rope_llama3);
  EXPECT_EQ(c->rope_factor, 32.0);
  EXPECT_TRUE(c->tie_embeddings);
  EXPECT_FALSE(c->attention_bias);
  testing_util::WriteBytes(dir + "/config.json", Config("", "qwen2"));
  c = ReadHfLlamaConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->attention_bias) << "Qwen2Attention always has q/k/v biases";
  EXPECT_FALSE(c->tie_embeddings);
  EXPECT_EQ(c->rms_norm_eps, 1e-6) << "transformers' default";
  fs::remove_all(dir);
}

TEST(HfLlamaConfigTest, RefusesWhatTheFamilyDoesNotComputeNamingTheField) {
  EXPECT_THAT(ConfigError(Config("\"sliding_window\": 4", "mistral")),
              AllOf(HasSubstr("config.json:1:"), HasSubstr("sliding_window 4"),
                    HasSubstr("max_position_embeddings 16")));
  EXPECT_EQ(ConfigError(Config("\"sliding_window\": null", "mistral")), "");
  EXPECT_EQ(ConfigError(Config("\"sliding_window\": 4096", "mistral")), "");
  EXPECT_THAT(ConfigError(Config("\"use_sliding_window\": true, \"sliding_window\": 4", "qwen2")),
              HasSubstr("sliding_window 4"));
  EXPECT_EQ(ConfigError(Config("\"use_sliding_window\": false, \"sliding_window\": 4", "qwen2")), "");
  EXPECT_THAT(ConfigError(Config("\"num_local_experts\": 8")),
              AllOf(HasSubstr("num_local_experts"), HasSubstr("experts")));
  EXPECT_THAT(ConfigError(Config("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}")),
              AllOf(HasSubstr("rope_scaling.rope_type \"yarn\""), HasSubstr("llama3")));
  EXPECT_THAT(ConfigError(Config("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}")),
              HasSubstr("rope_type \"linear\""));
  EXPECT_THAT(ConfigError(Config("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 4.0}")),
              HasSubstr("needs \"low_freq_factor\""));
  EXPECT_THAT(ConfigError(Config("\"head_dim\": 8")), AllOf(HasSubstr("head_dim 8"), HasSubstr("(4)")));
  EXPECT_EQ(ConfigError(Config("\"head_dim\": 4")), "");
  EXPECT_THAT(ConfigError(Config("\"attention_bias\": true")), HasSubstr("o_proj bias"));
  EXPECT_THAT(ConfigError(Config("\"mlp_bias\": true")), HasSubstr("mlp_bias"));
  EXPECT_THAT(ConfigError(Config("\"hidden_act\": \"gelu\"")), HasSubstr("hidden_act \"gelu\""));
  EXPECT_THAT(ConfigError(Config("\"pretraining_tp\": 2")), HasSubstr("pretraining_tp 2"));
  EXPECT_THAT(ConfigError(Config("", "mixtral")),
              AllOf(HasSubstr("model_type is \"mixtral\""), HasSubstr("qwen2")));
  EXPECT_THAT(ConfigError(Config("\"architectures\": [\"LlamaForSequenceClassification\"]")),
              HasSubstr("LlamaForSequenceClassification"));
  EXPECT_THAT(ConfigError("{\"model_type\": \"llama\", \"hidden_size\": 8}"),
              HasSubstr("missing \"num_hidden_layers\""));
  EXPECT_THAT(
      ConfigError("{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 1, "
                  "\"num_attention_heads\": 2, \"num_key_value_heads\": 3, \"intermediate_size\": 12, "
                  "\"max_position_embeddings\": 16, \"vocab_size\": 10}"),
      AllOf(HasSubstr("num_key_value_heads 3"), HasSubstr("does not divide")));
}

// A tiny Llama written by fjord's own exporter, then damaged one way per check.
class HfLlamaTensorRefusal : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("tensors");
    testing_util::WriteBytes(dir_ + "/config.json", Config());
    StatusOr<HfLlamaConfig> c = ReadHfLlamaConfig(dir_);
    ASSERT_TRUE(c.ok()) << c.status().message();
    hf_ = *c;
    config_.arch = GptConfig::Arch::kLlama;
    config_.n_layer = 1;
    config_.n_head = 2;
    config_.n_kv_head = 1;
    config_.n_embd = 8;
    config_.intermediate_size = 12;
    config_.max_seq_len = 16;
    config_.vocab_size = 10;
    config_.padded_vocab = 128;
    config_.tie_embeddings = false;
    ParamLayout layout(config_);
    slots_ = SlotsOf(layout);
    params_.assign(layout.num_params(), 0.5f);
    ASSERT_TRUE(ExportHfLlama(dir_, hf_, slots_, params_.data(), params_.size()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string ImportError() {
    std::vector<float> into(params_.size(), 0.0f);
    Status s = ImportHfLlama(dir_, hf_, slots_, into.data(), into.size());
    return s.ok() ? "" : s.message();
  }
  void Rewrite(const std::vector<SafetensorsTensorRef>& refs, const std::string& file = "model.safetensors") {
    ASSERT_TRUE(WriteSafetensors(dir_ + "/" + file, refs).ok());
  }
  std::vector<SafetensorsTensorRef> Refs() {
    StatusOr<Safetensors> st = ReadSafetensors(dir_ + "/model.safetensors");
    std::vector<SafetensorsTensorRef> refs;
    for (const SafetensorsTensor& t : st->tensors()) {
      refs.push_back({t.name, t.dtype, t.shape, params_.data()});  // values do not matter here
    }
    return refs;
  }

  std::string dir_;
  HfLlamaConfig hf_;
  GptConfig config_;
  std::vector<ParamSlot> slots_;
  std::vector<float> params_;
};

TEST_F(HfLlamaTensorRefusal, TheExportReadsBackExactly) {
  std::vector<float> into(params_.size(), 0.0f);
  for (size_t i = 0; i < params_.size(); ++i) params_[i] = 0.001f * static_cast<float>(i);
  ASSERT_TRUE(ExportHfLlama(dir_, hf_, slots_, params_.data(), params_.size()).ok());
  ASSERT_TRUE(ImportHfLlama(dir_, hf_, slots_, into.data(), into.size()).ok());
  for (const ParamSlot& s : slots_) {
    size_t n = 1;
    for (int d : s.shape) n *= d;
    const size_t real = s.name.find("embed_tokens") != std::string::npos || s.name == "lm_head.weight"
                            ? static_cast<size_t>(hf_.vocab_size) * hf_.n_embd
                            : n;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(into[s.offset + i], i < real ? params_[s.offset + i] : 0.0f) << s.name << " element " << i;
    }
  }
}

TEST_F(HfLlamaTensorRefusal, MissingExtraMisshapenTensors) {
  std::vector<SafetensorsTensorRef> refs = Refs();
  const std::string first = refs[0].name;
  Rewrite({refs.begin() + 1, refs.end()});
  EXPECT_THAT(ImportError(), AllOf(HasSubstr("\"" + first + "\" is missing")));
  refs.push_back({"model.layers.0.mlp.experts.0.weight", Dtype::kF32, {2}, params_.data()});
  Rewrite(refs);
  EXPECT_THAT(ImportError(), HasSubstr("unexpected tensor \"model.layers.0.mlp.experts.0.weight\""));
  refs.pop_back();
  refs.back().shape = {7};
  Rewrite(refs);
  EXPECT_THAT(ImportError(), AllOf(HasSubstr("has shape [7]"), HasSubstr("expected")));
}

TEST_F(HfLlamaTensorRefusal, ShardsDisagreeingWithTheirIndex) {
  std::vector<SafetensorsTensorRef> refs = Refs();
  fs::remove(dir_ + "/model.safetensors");
  EXPECT_THAT(ImportError(), HasSubstr("neither model.safetensors nor model.safetensors.index.json"));
  const size_t half = refs.size() / 2;
  Rewrite({refs.begin(), refs.begin() + half}, "a.safetensors");
  Rewrite({refs.begin() + half, refs.end()}, "b.safetensors");
  auto index = [&](const std::string& last_file) {
    std::string map;
    for (size_t i = 0; i < refs.size(); ++i) {
      const std::string file = i + 1 == refs.size() ? last_file
                               : i < half           ? "a.safetensors"
                                                    : "b.safetensors";
      map += (i ? ", " : "") + JsonQuote(refs[i].name) + ": " + JsonQuote(file);
    }
    testing_util::WriteBytes(dir_ + "/model.safetensors.index.json", "{\"weight_map\": {" + map + "}}");
  };
  index("b.safetensors");
  EXPECT_EQ(ImportError(), "") << "a valid two-shard checkpoint";
  index("a.safetensors");
  EXPECT_THAT(ImportError(), HasSubstr("different saves"));
  index("../b.safetensors");
  EXPECT_THAT(ImportError(), HasSubstr("must name a file in the same directory"));
}

}  // namespace
}  // namespace fjord
