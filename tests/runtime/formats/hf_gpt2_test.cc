// Hugging Face GPT-2 export and import. Oracles: our tensors indexed by hand against the
// Conv1D convention (hf[k][r] == ours[r][k]), files assembled in the test in HF's naming, and
// an independent reader in Python/numpy that parses the safetensors bytes with struct + json
// and checks every tensor against the raw buffer the test wrote.
#include "runtime/formats/hf_gpt2.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/json.h"
#include "runtime/formats/safetensors.h"
#include "tests/runtime/formats/gpt2_test_model.h"
#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::MakeModel;
using testing_util::ReadBytes;
using testing_util::TestModel;
using testing_util::WriteBytes;

Gpt2Dims TinyDims() { return {2, 2, 8, 16, 50, 128}; }

class HfGpt2Test : public testing_util::ScratchDirTest {
 protected:
  std::string Export(const TestModel& m, const std::string& name = "hf") {
    const std::string dir = Path(name);
    const Status s = ExportHfGpt2(dir, m.dims, m.slots, m.params.data(), m.params.size());
    EXPECT_TRUE(s.ok()) << s.message();
    return dir;
  }

  std::string ImportError(const std::string& dir, const TestModel& m) {
    std::vector<float> out(m.params.size());
    const Status s = ImportHfGpt2(dir, m.dims, m.slots, out.data(), out.size());
    EXPECT_FALSE(s.ok());
    return s.message();
  }

  // Rewrites DIR/model.safetensors after `edit` changes its tensor list (data copied out first).
  void EditWeights(const std::string& dir,
                   const std::function<void(std::vector<SafetensorsTensorRef>&)>& edit) {
    StatusOr<Safetensors> st = ReadSafetensors(dir + "/model.safetensors");
    ASSERT_TRUE(st.ok()) << st.status().message();
    storage_.clear();
    std::vector<SafetensorsTensorRef> refs;
    for (const SafetensorsTensor& t : st->tensors()) {
      storage_.emplace_back(t.data, t.data + t.num_bytes);
      refs.push_back({t.name, t.dtype, t.shape, nullptr});
    }
    for (size_t i = 0; i < refs.size(); ++i) refs[i].data = storage_[i].data();
    edit(refs);
    ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", refs, st->metadata()).ok());
  }

  // Replaces `key`'s value in DIR/config.json (raw JSON text), or removes it when value is empty.
  void EditConfig(const std::string& dir, const std::string& key, const std::string& value) {
    std::string text = ReadBytes(dir + "/config.json");
    const size_t k = text.find("\"" + key + "\":");
    ASSERT_NE(k, std::string::npos) << key;
    const size_t end = text.find('\n', k);
    std::string line = value.empty() ? "" : "\"" + key + "\": " + value + ",";
    text.replace(k, end - k, line);
    // Keep the last member without a trailing comma.
    const size_t close = text.rfind('}');
    const size_t last = text.find_last_not_of(" \n", close - 1);
    if (text[last] == ',') text.erase(last, 1);
    WriteBytes(dir + "/config.json", text);
  }

  std::vector<std::vector<uint8_t>> storage_;
};

TEST_F(HfGpt2Test, ExportWritesConv1DTransposesUnpaddedEmbeddingAndFormatMetadata) {
  const TestModel m = MakeModel(TinyDims(), 1);
  const std::string dir = Export(m);
  StatusOr<Safetensors> st = ReadSafetensors(dir + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status().message();
  EXPECT_EQ(st->metadata().at("format"), "pt");  // transformers refuses files without it
  EXPECT_EQ(st->tensors().size(), 2u + 12u * 2u + 2u);
  EXPECT_EQ(st->Find("lm_head.weight"), nullptr);
  const int C = 8, V = 50;

  auto hf = [&](const std::string& name, std::vector<int64_t> shape) {
    const SafetensorsTensor* t = st->Find("transformer." + name);
    EXPECT_NE(t, nullptr) << name;
    if (!t) return std::vector<float>();
    EXPECT_EQ(t->dtype, Dtype::kF32);
    EXPECT_EQ(t->shape, shape) << name;
    std::vector<float> v(t->num_elements());
    EXPECT_TRUE(TensorToFloat32(*t, "", v.data()).ok());
    return v;
  };
  const std::vector<float> wte = hf("wte.weight", {V, C});
  ASSERT_EQ(wte.size(), static_cast<size_t>(V * C));
  for (size_t i = 0; i < wte.size(); ++i) ASSERT_EQ(wte[i], m.at("wte.weight")[i]);
  double norm = 0;
  for (float x : wte) norm += x * x;
  EXPECT_GT(norm, 0.0);  // not trivially zero

  // [rows, cols] ours -> [cols, rows] HF: hf[k * rows + r] == ours[r * cols + k].
  const struct {
    const char* name;
    int rows, cols;
  } matrices[] = {{"attn.c_attn.weight", 3 * C, C},
                  {"attn.c_proj.weight", C, C},
                  {"mlp.c_fc.weight", 4 * C, C},
                  {"mlp.c_proj.weight", C, 4 * C}};
  for (int l = 0; l < 2; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    for (const auto& mat : matrices) {
      const std::vector<float> t = hf(p + mat.name, {mat.cols, mat.rows});
      const float* ours = m.at(p + mat.name);
      for (int r = 0; r < mat.rows; ++r) {
        for (int k = 0; k < mat.cols; ++k) {
          ASSERT_EQ(t[static_cast<size_t>(k) * mat.rows + r], ours[r * mat.cols + k])
              << p << mat.name << " " << r << "," << k;
        }
      }
    }
    const std::vector<float> bias = hf(p + "attn.c_attn.bias", {3 * C});
    for (int i = 0; i < 3 * C; ++i) ASSERT_EQ(bias[i], m.at(p + "attn.c_attn.bias")[i]);
  }
  const std::vector<float> lnf = hf("ln_f.weight", {C});
  for (int i = 0; i < C; ++i) ASSERT_EQ(lnf[i], m.at("ln_f.weight")[i]);
}

TEST_F(HfGpt2Test, ConfigJsonCarriesGpt2KeysAndSpecialTokensOnlyForGpt2Vocabulary) {
  const std::string dir = Export(MakeModel(TinyDims(), 2));
  StatusOr<JsonValue> config = ParseJson(ReadBytes(dir + "/config.json"), "config.json");
  ASSERT_TRUE(config.ok()) << config.status().message();
  const JsonValue& c = config.value();
  EXPECT_EQ(c.Find("model_type")->text(), "gpt2");
  EXPECT_EQ(c.Find("architectures")->array()[0].text(), "GPT2LMHeadModel");
  EXPECT_EQ(c.Find("n_layer")->AsInt64(), 2);
  EXPECT_EQ(c.Find("n_head")->AsInt64(), 2);
  EXPECT_EQ(c.Find("n_embd")->AsInt64(), 8);
  EXPECT_EQ(c.Find("n_positions")->AsInt64(), 16);
  EXPECT_EQ(c.Find("n_ctx")->AsInt64(), 16);
  EXPECT_EQ(c.Find("vocab_size")->AsInt64(), 50);
  EXPECT_EQ(c.Find("layer_norm_epsilon")->number(), 1e-5);
  EXPECT_EQ(c.Find("activation_function")->text(), "gelu_new");
  EXPECT_TRUE(c.Find("tie_word_embeddings")->bool_value());
  for (const char* p : {"resid_pdrop", "embd_pdrop", "attn_pdrop"}) EXPECT_EQ(c.Find(p)->number(), 0.0) << p;
  EXPECT_TRUE(c.Find("bos_token_id")->is_null());
  EXPECT_TRUE(c.Find("eos_token_id")->is_null());

  const std::string gpt2 = Export(MakeModel({1, 2, 8, 4, 50257, 50304}, 3), "gpt2");
  config = ParseJson(ReadBytes(gpt2 + "/config.json"), "config.json");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->Find("bos_token_id")->AsInt64(), 50256);
  EXPECT_EQ(config->Find("eos_token_id")->AsInt64(), 50256);
  StatusOr<Gpt2Dims> dims = ReadHfGpt2Config(gpt2);
  ASSERT_TRUE(dims.ok()) << dims.status().message();
  EXPECT_EQ(dims->padded_vocab, 50304);
}

TEST_F(HfGpt2Test, ImportRoundTripIsBitExactZeroesPaddedRowsAndKeepsGaps) {
  TestModel m = MakeModel(TinyDims(), 4);
  const std::string dir = Export(m);
  StatusOr<Gpt2Dims> dims = ReadHfGpt2Config(dir);
  ASSERT_TRUE(dims.ok()) << dims.status().message();
  EXPECT_EQ(dims->n_layer, 2);
  EXPECT_EQ(dims->n_head, 2);
  EXPECT_EQ(dims->n_embd, 8);
  EXPECT_EQ(dims->max_seq_len, 16);
  EXPECT_EQ(dims->vocab_size, 50);
  EXPECT_EQ(dims->padded_vocab, 128);

  const float kSentinel = 777.0f;
  std::vector<float> out(m.params.size(), kSentinel);
  const Status s = ImportHfGpt2(dir, *dims, m.slots, out.data(), out.size());
  ASSERT_TRUE(s.ok()) << s.message();
  std::vector<bool> in_slot(out.size(), false);
  for (const ParamSlot& slot : m.slots) {
    size_t n = 1;
    for (int x : slot.shape) n *= x;
    for (size_t i = 0; i < n; ++i) {
      in_slot[slot.offset + i] = true;
      ASSERT_EQ(std::bit_cast<uint32_t>(out[slot.offset + i]),
                std::bit_cast<uint32_t>(m.params[slot.offset + i]))
          << slot.name << "[" << i << "]";
    }
  }
  for (size_t i = 50 * 8; i < 128 * 8; ++i) ASSERT_EQ(out[m.slot("wte.weight").offset + i], 0.0f);
  size_t gaps = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!in_slot[i]) {
      ASSERT_EQ(out[i], kSentinel) << i;
      ++gaps;
    }
  }
  EXPECT_GT(gaps, 0u);  // the layout has alignment gaps, so this checked something
}

// A checkpoint in the shape the original gpt2 upload has: no "transformer." prefix, causal-mask
// buffers, an explicit lm_head equal to wte, and here BF16 data.
TEST_F(HfGpt2Test, ImportAcceptsUnprefixedBf16WithMaskBuffersAndTiedHead) {
  const TestModel m = MakeModel(TinyDims(), 5);
  const std::string dir = Export(m);
  EditWeights(dir, [&](std::vector<SafetensorsTensorRef>& refs) {
    static std::vector<std::vector<uint16_t>> bf16;
    bf16.clear();
    bf16.reserve(refs.size() + 1);
    std::vector<SafetensorsTensorRef> out;
    for (SafetensorsTensorRef& r : refs) {
      size_t n = 1;
      for (int64_t d : r.shape) n *= d;
      const float* f = static_cast<const float*>(r.data);
      bf16.emplace_back(n);
      for (size_t i = 0; i < n; ++i)
        bf16.back()[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(f[i]) >> 16);
      out.push_back(
          {r.name.substr(std::string("transformer.").size()), Dtype::kBF16, r.shape, bf16.back().data()});
      if (r.name == "transformer.wte.weight")
        out.push_back({"lm_head.weight", Dtype::kBF16, r.shape, bf16.back().data()});
    }
    static const std::vector<float> mask(16 * 16, 1.0f);
    out.push_back({"h.0.attn.bias", Dtype::kF32, {1, 1, 16, 16}, mask.data()});
    out.push_back({"h.1.attn.masked_bias", Dtype::kF32, {}, mask.data()});
    refs = out;
  });
  std::vector<float> out(m.params.size(), 0.0f);
  const Status s = ImportHfGpt2(dir, m.dims, m.slots, out.data(), out.size());
  ASSERT_TRUE(s.ok()) << s.message();
  auto truncated = [](float x) { return std::bit_cast<float>(std::bit_cast<uint32_t>(x) & 0xFFFF0000u); };
  const float* qkv = out.data() + m.slot("h.1.attn.c_attn.weight").offset;
  const float* ref = m.at("h.1.attn.c_attn.weight");
  for (int i = 0; i < 24 * 8; ++i) ASSERT_EQ(qkv[i], truncated(ref[i])) << i;
  const float* wpe = out.data() + m.slot("wpe.weight").offset;
  for (int i = 0; i < 16 * 8; ++i) ASSERT_EQ(wpe[i], truncated(m.at("wpe.weight")[i]));
}

TEST_F(HfGpt2Test, ConfigRefusalsNameTheFileTheKeyAndWhatIsSupported) {
  const TestModel m = MakeModel(TinyDims(), 6);
  auto error = [&](const std::string& key, const std::string& value) {
    const std::string dir = Export(m, "c_" + key);
    EditConfig(dir, key, value);
    StatusOr<Gpt2Dims> d = ReadHfGpt2Config(dir);
    EXPECT_FALSE(d.ok()) << key;
    return d.ok() ? "" : d.status().message();
  };
  EXPECT_THAT(error("model_type", "\"llama\""),
              AllOf(HasSubstr("c_model_type/config.json:"), HasSubstr("model_type is \"llama\""),
                    HasSubstr("only \"gpt2\"")));
  EXPECT_THAT(error("n_embd", ""), AllOf(HasSubstr("config.json: missing \"n_embd\"")));
  EXPECT_THAT(error("n_head", "2.5"), AllOf(HasSubstr("\"n_head\" must be a positive integer")));
  EXPECT_THAT(error("n_head", "3"), AllOf(HasSubstr("config.json"), HasSubstr("not divisible by n_head 3")));
  EXPECT_THAT(error("activation_function", "\"gelu\""),
              AllOf(HasSubstr("activation_function \"gelu\" is not supported"), HasSubstr("tanh GELU")));
  EXPECT_THAT(error("layer_norm_epsilon", "1e-6"),
              AllOf(HasSubstr("layer_norm_epsilon 1e-6 is not supported")));
  EXPECT_THAT(error("n_inner", "100"), HasSubstr("n_inner must be null or 4 * n_embd"));
  EXPECT_THAT(error("tie_word_embeddings", "false"), HasSubstr("tie_word_embeddings must be true"));
  EXPECT_THAT(error("n_positions", "\"x\""), HasSubstr("\"n_positions\" must be a positive integer"));
  const std::string dir = Export(m, "scaled");
  std::string text = ReadBytes(dir + "/config.json");
  text.insert(2, "  \"scale_attn_by_inverse_layer_idx\": true,\n");
  WriteBytes(dir + "/config.json", text);
  StatusOr<Gpt2Dims> d = ReadHfGpt2Config(dir);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), AllOf(HasSubstr("scaled/config.json:2:"),
                                          HasSubstr("scale_attn_by_inverse_layer_idx must be false")));
  const std::string unscaled = Export(m, "unscaled");
  text = ReadBytes(unscaled + "/config.json");
  text.insert(2, "  \"scale_attn_weights\": false,\n");
  WriteBytes(unscaled + "/config.json", text);
  d = ReadHfGpt2Config(unscaled);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(),
              AllOf(HasSubstr("unscaled/config.json:2:"), HasSubstr("scale_attn_weights must be true"),
                    HasSubstr("attention scaled by 1/sqrt(head size) only")));
}

TEST_F(HfGpt2Test, ConfigAcceptsNCtxWhenNPositionsIsAbsentAndRefusesMissingFile) {
  const std::string dir = Export(MakeModel(TinyDims(), 7));
  EditConfig(dir, "n_positions", "");
  StatusOr<Gpt2Dims> d = ReadHfGpt2Config(dir);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->max_seq_len, 16);
  d = ReadHfGpt2Config(Path("nowhere"));
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(),
              AllOf(HasSubstr("cannot open Hugging Face config"), HasSubstr("nowhere/config.json")));
}

TEST_F(HfGpt2Test, ImportRefusesMismatchedModelsAndForeignFiles) {
  const TestModel m = MakeModel(TinyDims(), 8);
  const std::string dir = Export(m);

  TestModel deeper = MakeModel({3, 2, 8, 16, 50, 128}, 8);
  EXPECT_THAT(ImportError(dir, deeper),
              AllOf(HasSubstr("cannot import Hugging Face GPT-2 from " + dir),
                    HasSubstr("config.json has n_layer 2 but the model being loaded has 3")));

  const std::string missing = Export(m, "missing");
  EditWeights(missing, [](auto& refs) {
    refs.erase(std::remove_if(refs.begin(), refs.end(),
                              [](auto& r) { return r.name == "transformer.h.1.ln_2.bias"; }),
               refs.end());
  });
  EXPECT_THAT(ImportError(missing, m), AllOf(HasSubstr("missing/model.safetensors"),
                                             HasSubstr("tensor \"transformer.h.1.ln_2.bias\" is missing")));

  const std::string extra = Export(m, "extra");
  static const float one = 1.0f;
  EditWeights(extra, [](auto& refs) {
    refs.push_back({"transformer.h.9.attn.c_attn.bias", Dtype::kF32, {1}, &one});
  });
  EXPECT_THAT(ImportError(extra, m),
              AllOf(HasSubstr("unexpected tensor \"transformer.h.9.attn.c_attn.bias\""),
                    HasSubstr("2 layers has no such weight")));

  const std::string shape = Export(m, "shape");
  EditWeights(shape, [](auto& refs) {
    for (auto& r : refs) {
      if (r.name == "transformer.h.0.mlp.c_fc.weight") r.shape = {32, 8};  // ours, not Conv1D's [8, 32]
    }
  });
  EXPECT_THAT(
      ImportError(shape, m),
      AllOf(HasSubstr("tensor \"transformer.h.0.mlp.c_fc.weight\" has shape [32, 8], expected [8, 32]")));

  const std::string untied = Export(m, "untied");
  static std::vector<float> head(50 * 8, 0.5f);
  EditWeights(untied, [](auto& refs) {
    refs.push_back({"lm_head.weight", Dtype::kF32, {50, 8}, head.data()});
  });
  EXPECT_THAT(ImportError(untied, m), AllOf(HasSubstr("lm_head.weight differs from the token embedding"),
                                            HasSubstr("untied head cannot be imported")));

  const std::string head_shape = Export(m, "head_shape");
  EditWeights(head_shape, [](auto& refs) {
    refs.push_back({"lm_head.weight", Dtype::kF32, {8, 50}, head.data()});  // transposed
  });
  EXPECT_THAT(ImportError(head_shape, m),
              AllOf(HasSubstr("head_shape/model.safetensors: tensor \"lm_head.weight\" has shape [8, 50], "
                              "expected [50, 8]")));

  const std::string foreign = Export(m, "foreign");
  EditWeights(foreign, [](auto& refs) {
    for (auto& r : refs) r.name = "model." + r.name;
  });
  EXPECT_THAT(ImportError(foreign, m), HasSubstr("neither transformer.wte.weight nor wte.weight"));

  const std::string sharded = Export(m, "sharded");
  std::filesystem::remove(sharded + "/model.safetensors");
  WriteBytes(sharded + "/model.safetensors.index.json", "{}");
  EXPECT_THAT(ImportError(sharded, m), AllOf(HasSubstr("sharded"), HasSubstr("max_shard_size")));

  const std::string corrupt = Export(m, "corrupt");
  WriteBytes(corrupt + "/model.safetensors", "short");
  EXPECT_THAT(ImportError(corrupt, m),
              AllOf(HasSubstr("cannot import Hugging Face GPT-2 from " + corrupt + ": "),
                    HasSubstr("corrupt/model.safetensors: 5 bytes")));

  const std::string pytorch = Export(m, "pytorch");
  std::filesystem::remove(pytorch + "/model.safetensors");
  WriteBytes(pytorch + "/pytorch_model.bin", "x");
  EXPECT_THAT(ImportError(pytorch, m),
              AllOf(HasSubstr("not pytorch_model.bin"), HasSubstr("safe_serialization")));
}

TEST_F(HfGpt2Test, LayoutRefusalsNameTheParameter) {
  const TestModel m = MakeModel(TinyDims(), 9);
  auto error = [&](std::vector<ParamSlot> slots, size_t buffer, Gpt2Dims dims) {
    const Status s = ExportHfGpt2(Path("layout"), dims, slots, m.params.data(), buffer);
    EXPECT_FALSE(s.ok());
    return s.message();
  };
  std::vector<ParamSlot> slots = m.slots;
  slots.pop_back();
  EXPECT_THAT(error(slots, m.params.size(), m.dims), AllOf(HasSubstr("cannot export Hugging Face GPT-2 to"),
                                                           HasSubstr("parameter \"ln_f.bias\" is missing")));
  slots = m.slots;
  slots.push_back({"h.2.ln_1.weight", {8}, 0});
  EXPECT_THAT(error(slots, m.params.size(), m.dims),
              HasSubstr("parameter \"h.2.ln_1.weight\" is not a GPT-2 tensor of a 2-layer model"));
  slots = m.slots;
  slots[4].shape = {8, 24};  // h.0.attn.c_attn.weight given in HF's orientation
  EXPECT_THAT(
      error(slots, m.params.size(), m.dims),
      HasSubstr(
          "parameter \"h.0.attn.c_attn.weight\" has shape [8, 24] but the model dimensions imply [24, 8]"));
  slots = m.slots;
  slots[3].offset = slots[2].offset + 4;
  EXPECT_THAT(error(slots, m.params.size(), m.dims),
              HasSubstr("parameters \"h.0.ln_1.weight\" and \"h.0.ln_1.bias\" overlap"));
  EXPECT_THAT(error(m.slots, m.params.size() - 20, m.dims),
              AllOf(HasSubstr("parameter \"ln_f.bias\""), HasSubstr("does not fit the buffer")));
  slots = m.slots;
  slots.push_back(slots[0]);
  EXPECT_THAT(error(slots, m.params.size(), m.dims), HasSubstr("parameter \"wte.weight\" is listed twice"));
  EXPECT_THAT(error(m.slots, m.params.size(), {2, 3, 8, 16, 50, 128}),
              HasSubstr("n_embd 8 is not divisible by n_head 3"));
  EXPECT_THAT(error(m.slots, m.params.size(), {2, 2, 8, 16, 50, 40}),
              HasSubstr("padded_vocab 40 is smaller"));
}

// An independent reader: numpy parses the bytes with struct + json, checks the format rules and
// compares every HF tensor with the raw buffer the test wrote, transposing where Conv1D does.
constexpr char kPythonChecker[] = R"PY(
import json, struct, sys
import numpy as np
out_dir, raw_path, manifest_path, V = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = np.fromfile(raw_path, dtype='<f4')
slots = json.load(open(manifest_path))
blob = open(out_dir + '/model.safetensors', 'rb').read()
(n,) = struct.unpack('<Q', blob[:8])
assert 8 + n <= len(blob) and (8 + n) % 8 == 0, 'header length / alignment'
header = json.loads(blob[8:8 + n].decode('utf-8'))
assert header.pop('__metadata__')['format'] == 'pt'
data = blob[8 + n:]
pos = 0
for begin, end, name in sorted((v['data_offsets'][0], v['data_offsets'][1], k) for k, v in header.items()):
    assert begin == pos, ('gap or overlap', name)
    pos = end
assert pos == len(data), 'trailing bytes'
tensors = {}
for k, v in header.items():
    b, e = v['data_offsets']
    assert v['dtype'] == 'F32' and e - b == 4 * int(np.prod(v['shape'])), k
    tensors[k] = np.frombuffer(data[b:e], dtype='<f4').reshape(v['shape'])
assert set(tensors) == {'transformer.' + s['name'] for s in slots}, 'tensor names'
conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
for s in slots:
    ours = raw[s['offset']:s['offset'] + int(np.prod(s['shape']))].reshape(s['shape'])
    expected = ours.T if s['name'].endswith(conv1d) else ours[:V] if s['name'] == 'wte.weight' else ours
    got = tensors['transformer.' + s['name']]
    assert got.shape == expected.shape and np.array_equal(got, expected), s['name']
    if s['name'].endswith('c_attn.weight'):  # Conv1D: x @ W + b equals our x @ W_ours^T + b
        x = np.linspace(-1, 1, got.shape[0], dtype=np.float64)
        assert np.allclose(x @ got.astype(np.float64), ours.astype(np.float64) @ x)
config = json.load(open(out_dir + '/config.json'))
assert config['model_type'] == 'gpt2' and config['architectures'] == ['GPT2LMHeadModel']
assert config['vocab_size'] == V and config['tie_word_embeddings'] is True
print('checked', len(tensors), 'tensors')
)PY";

TEST_F(HfGpt2Test, IndependentPythonReaderAgrees) {
  const std::optional<std::string> python = testing_util::PythonWithNumpy();
  if (!python) GTEST_SKIP() << "python3 with numpy not found";
  const TestModel m = MakeModel(TinyDims(), 10);
  const std::string dir = Export(m);
  WriteBytes(Path("raw.f32"),
             std::string(reinterpret_cast<const char*>(m.params.data()), m.params.size() * 4));
  std::string manifest = "[";
  for (const ParamSlot& s : m.slots) {
    if (manifest.size() > 1) manifest += ',';
    manifest += "{\"name\":" + JsonQuote(s.name) + ",\"offset\":" + std::to_string(s.offset) + ",\"shape\":[";
    for (size_t i = 0; i < s.shape.size(); ++i) {
      if (i) manifest += ',';
      manifest += std::to_string(s.shape[i]);
    }
    manifest += "]}";
  }
  WriteBytes(Path("manifest.json"), manifest + "]");
  WriteBytes(Path("check.py"), kPythonChecker);
  std::string output;
  const int rc = testing_util::RunCaptured(*python + " " + Path("check.py") + " " + dir + " " +
                                               Path("raw.f32") + " " + Path("manifest.json") + " 50",
                                           Path("python.log"), &output);
  EXPECT_EQ(rc, 0) << output;
  EXPECT_THAT(output, HasSubstr("checked 28 tensors"));
}

}  // namespace
}  // namespace fjord
