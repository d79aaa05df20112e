// Hugging Face tokenizer.json. Oracle: the `tokenizers` library itself (the venv of
// scripts/install-deps.sh): hf_tokenizer_oracle.py trains byte-level and byte-fallback tokenizers
// offline in the shapes of Llama 3, Qwen 2, GPT-2, Llama 2 and Mistral on multilingual text, and
// records its ids and decodings; fjord's must be equal on the training text, a held-out text and
// short edge cases. GPT-2's real files (../shared/data/gpt2) are compared on tinyshakespeare through
// both fjord tokenizers (gpt2 and hf). llm.c's gpt2_tokenizer.bin is written by an independent
// Python writer here and must decode as GPT-2's files do. Refusals are checked without Python.
#include "runtime/data/hf_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/data/bpe_tokenizer.h"
#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::WriteBytes;

const std::string kSharedData = std::string(FJORD_SOURCE_DIR) + "/../shared/data";

// The venv's Python when it can import `tokenizers`; else a one-line reason to skip.
std::optional<std::string> OraclePython(std::string* why) {
  const std::string python = FJORD_PYTHON;
  if (fs::exists(python) && std::system((python + " -c 'import tokenizers' >/dev/null 2>&1").c_str()) == 0) {
    return python;
  }
  *why = "Python test stack missing (" + python +
         " cannot import tokenizers); install it: bash scripts/install-deps.sh";
  return std::nullopt;
}

std::vector<int32_t> Ids(const JsonValue& array) {
  std::vector<int32_t> ids;
  for (const JsonValue& v : array.array()) ids.push_back(static_cast<int32_t>(*v.AsInt64()));
  return ids;
}

// The first position where two id sequences differ, for a readable failure.
std::string FirstDifference(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto show = [&](const std::vector<int32_t>& v) {
    std::string s;
    for (size_t k = i; k < v.size() && k < i + 8; ++k) s += std::to_string(v[k]) + " ";
    return s;
  };
  return "sizes " + std::to_string(got.size()) + " vs " + std::to_string(want.size()) +
         "; first difference at " + std::to_string(i) + ": fjord [" + show(got) + "] tokenizers [" +
         show(want) + "]";
}

// Runs the oracle once for all tests of the suite.
class HfOracleTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string why;
    const std::optional<std::string> python = OraclePython(&why);
    if (!python) {
      skip_ = why;
      return;
    }
    dir_ = (fs::path(::testing::TempDir()) / ("fjord_hf_oracle_" + std::to_string(::getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string command =
        *python + " " + FJORD_SOURCE_DIR + "/tests/runtime/data/hf_tokenizer_oracle.py " + dir_;
    if (fs::exists(kSharedData + "/gpt2/vocab.json") && fs::exists(kSharedData + "/tinyshakespeare.txt")) {
      command += " " + kSharedData + "/gpt2 " + kSharedData + "/tinyshakespeare.txt";
    }
    std::string output;
    const int rc = testing_util::RunCaptured(command, dir_ + "/oracle.log", &output);
    ASSERT_EQ(rc, 0) << command << "\n" << output;
    StatusOr<std::string> text = ReadWholeFile(dir_ + "/cases.json", "oracle cases");
    ASSERT_TRUE(text.ok()) << text.status().message();
    StatusOr<JsonValue> json = ParseJson(*text, dir_ + "/cases.json");
    ASSERT_TRUE(json.ok()) << json.status().message();
    cases_ = new JsonValue(std::move(*json));
  }
  static void TearDownTestSuite() {
    delete cases_;
    cases_ = nullptr;
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_NE(cases_, nullptr) << "the oracle did not run (see the first failure)";
  }

  const JsonValue* Suite(const std::string& name) {
    for (const JsonValue& s : cases_->Find("suites")->array()) {
      if (s.Find("name")->text() == name) return &s;
    }
    return nullptr;
  }

  // Every case of the suite: fjord's ids equal tokenizers', decoding them gives tokenizers'
  // text, and where tokenizers round-trips (decode(encode(t)) == t) so does fjord.
  void CheckSuite(const std::string& name, const Tokenizer& tok, int min_round_trips) {
    const JsonValue* suite = Suite(name);
    ASSERT_NE(suite, nullptr) << name;
    int round_trips = 0;
    const auto& cases = suite->Find("cases")->array();
    ASSERT_GT(cases.size(), 10u);
    for (size_t i = 0; i < cases.size(); ++i) {
      const std::string& text = cases[i].Find("text")->text();
      const std::vector<int32_t> want = Ids(*cases[i].Find("ids"));
      const std::vector<int32_t> got = tok.Encode(text);
      ASSERT_EQ(got, want) << name << " case " << i << " " << JsonQuote(text.substr(0, 200)) << ": "
                           << FirstDifference(got, want);
      const std::string& decoded = cases[i].Find("decoded")->text();
      EXPECT_EQ(tok.Decode(want), decoded) << name << " case " << i;
      if (decoded == text) {
        EXPECT_EQ(tok.Decode(got), text);
        ++round_trips;
      }
    }
    // The suite is not trivial: the long texts are long, and most texts round-trip.
    EXPECT_GT(cases[0].Find("ids")->array().size(), 1000u);
    EXPECT_GE(round_trips, min_round_trips) << name;
  }

  std::unique_ptr<Tokenizer> Load(const std::string& name) {
    StatusOr<std::unique_ptr<Tokenizer>> tok = MakeHfTokenizer(dir_ + "/" + name);
    EXPECT_TRUE(tok.ok()) << tok.status().message();
    if (!tok.ok()) return nullptr;
    EXPECT_EQ((*tok)->name(), "hf");
    return std::move(*tok);
  }

  static std::string skip_, dir_;
  static JsonValue* cases_;
};
std::string HfOracleTest::skip_, HfOracleTest::dir_;
JsonValue* HfOracleTest::cases_ = nullptr;

TEST_F(HfOracleTest, Llama3ByteLevelWithSplitRegexAndBos) {
  std::unique_ptr<Tokenizer> tok = Load("llama3");
  ASSERT_NE(tok, nullptr);
  CheckSuite("llama3", *tok, 30);
}

TEST_F(HfOracleTest, Qwen2ByteLevelWithNfc) {
  std::unique_ptr<Tokenizer> tok = Load("qwen2");
  ASSERT_NE(tok, nullptr);
  CheckSuite("qwen2", *tok, 30);
}

TEST_F(HfOracleTest, Gpt2StyleByteLevelWithPrefixSpace) {
  std::unique_ptr<Tokenizer> tok = Load("gpt2-style");
  ASSERT_NE(tok, nullptr);
  CheckSuite("gpt2-style", *tok, 0);  // the prefix space never round-trips
}

TEST_F(HfOracleTest, Llama2ByteFallbackWithLegacyNormalizer) {
  std::unique_ptr<Tokenizer> tok = Load("llama2");
  ASSERT_NE(tok, nullptr);
  CheckSuite("llama2", *tok, 30);
}

TEST_F(HfOracleTest, MistralByteFallbackWithMetaspace) {
  std::unique_ptr<Tokenizer> tok = Load("mistral");
  ASSERT_NE(tok, nullptr);
  CheckSuite("mistral", *tok, 30);
}

TEST_F(HfOracleTest, Gpt2RealFilesOnTinyShakespeareThroughBothTokenizers) {
  if (Suite("gpt2") == nullptr) GTEST_SKIP() << "GPT-2's files or tinyshakespeare not in " << kSharedData;
  std::unique_ptr<Tokenizer> hf = Load("gpt2");
  ASSERT_NE(hf, nullptr);
  EXPECT_EQ(hf->vocab_size(), 50257);
  CheckSuite("gpt2", *hf, 3);
  StatusOr<std::unique_ptr<Tokenizer>> gpt2 = MakeGpt2Tokenizer(kSharedData + "/gpt2");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status().message();
  CheckSuite("gpt2", **gpt2, 3);
}

// ---- llm.c's gpt2_tokenizer.bin ---------------------------------------------------------------

// An independent writer of llm.c's format, from its description: header of 256 little-endian
// uint32 (magic 20240328, version, vocab size, eot), then per token a uint8 length and its bytes.
// The token bytes come from GPT-2's vocab.json through bytes_to_unicode, written out in Python.
constexpr char kLlmcWriter[] = R"PY(
import json, struct, sys
vocab_dir, out, version = sys.argv[1], sys.argv[2], int(sys.argv[3])
bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs = bs[:]
n = 0
for b in range(256):
    if b not in bs:
        bs.append(b)
        cs.append(256 + n)
        n += 1
char_to_byte = {chr(c): b for b, c in zip(bs, cs)}
vocab = json.load(open(vocab_dir + "/vocab.json", encoding="utf-8"))
tokens = [None] * len(vocab)
for token, i in vocab.items():
    tokens[i] = bytes(char_to_byte[c] for c in token) if all(c in char_to_byte for c in token) else token.encode()
header = [0] * 256
header[0], header[1], header[2] = 20240328, version, len(tokens)
if version == 2:
    header[3] = vocab["<|endoftext|>"]
with open(out, "wb") as f:
    f.write(struct.pack("<256I", *header))
    for t in tokens:
        f.write(struct.pack("<B", len(t)) + t)
)PY";

class LlmcTokenizerTest : public testing_util::ScratchDirTest {};

TEST_F(LlmcTokenizerTest, DecodesAsGpt2sFilesDo) {
  if (!fs::exists(kSharedData + "/gpt2/vocab.json")) GTEST_SKIP() << "GPT-2's files not in " << kSharedData;
  const std::optional<std::string> python = testing_util::PythonWithNumpy();
  if (!python) GTEST_SKIP() << "python3 not found (bash scripts/install-deps.sh)";
  WriteBytes(Path("writer.py"), kLlmcWriter);
  StatusOr<std::unique_ptr<Tokenizer>> gpt2 = MakeGpt2Tokenizer(kSharedData + "/gpt2");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status().message();
  for (int version : {1, 2}) {
    const std::string bin = Path("v" + std::to_string(version) + ".bin");
    std::string output;
    ASSERT_EQ(testing_util::RunCaptured(*python + " " + Path("writer.py") + " " + kSharedData + "/gpt2 " +
                                            bin + " " + std::to_string(version),
                                        Path("log"), &output),
              0)
        << output;
    StatusOr<std::unique_ptr<Tokenizer>> llmc = MakeLlmcTokenizer(bin);
    ASSERT_TRUE(llmc.ok()) << llmc.status().message();
    EXPECT_EQ((*llmc)->name(), "llmc");
    EXPECT_FALSE((*llmc)->can_encode());
    ASSERT_EQ((*llmc)->vocab_size(), (*gpt2)->vocab_size());
    EXPECT_EQ((*llmc)->end_of_text(), (*gpt2)->end_of_text());
    EXPECT_EQ((*llmc)->end_of_text(), std::optional<int32_t>(50256));
    for (int32_t id = 0; id < (*gpt2)->vocab_size(); ++id) {
      ASSERT_EQ((*llmc)->Decode({id}), (*gpt2)->Decode({id})) << "token " << id;
      ASSERT_FALSE((*llmc)->Decode({id}).empty());
    }
    const std::string text = "Tromsø – fjord, 2026: the llm.c tokenizer decodes GPT-2's ids.\n";
    const std::vector<int32_t> ids = (*gpt2)->Encode(text);
    EXPECT_EQ((*llmc)->Decode(ids), text);
  }
}

TEST_F(LlmcTokenizerTest, RefusesDamagedFilesNamingTheField) {
  std::string good;
  uint32_t header[256] = {20240328, 2, 2, 1};
  good.assign(reinterpret_cast<const char*>(header), sizeof(header));
  good += std::string(
      "\x01"
      "a"
      "\x02"
      "bc",
      5);
  WriteBytes(Path("good.bin"), good);
  StatusOr<std::unique_ptr<Tokenizer>> ok = MakeLlmcTokenizer(Path("good.bin"));
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ((*ok)->Decode({1, 0, 7}), "bca\xEF\xBF\xBD");

  auto refuse = [&](std::string bytes, const std::vector<std::string>& parts) {
    WriteBytes(Path("bad.bin"), bytes);
    StatusOr<std::unique_ptr<Tokenizer>> t = MakeLlmcTokenizer(Path("bad.bin"));
    ASSERT_FALSE(t.ok());
    for (const std::string& p : parts) EXPECT_THAT(t.status().message(), HasSubstr(p));
  };
  std::string bad = good;
  bad[0] = 1;
  refuse(bad, {Path("bad.bin"), "header[0] (magic)"});
  bad = good;
  bad[4] = 3;
  refuse(bad, {"header[1] (version) is 3"});
  refuse(good.substr(0, good.size() - 1), {"ends inside token 1", "truncated"});
  refuse(good + "x", {"1 bytes after the last"});
  refuse(good.substr(0, 100), {"shorter than llm.c's 1024-byte header"});
  bad = good;
  bad[12] = 5;
  refuse(bad, {"end-of-text token 5 (header[3])"});
  StatusOr<std::unique_ptr<Tokenizer>> missing = MakeLlmcTokenizer(Path("nowhere"));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("gpt2_tokenizer.bin"));
}

// ---- Refusals ----------------------------------------------------------------------------------

class HfRefusalTest : public testing_util::ScratchDirTest {
 protected:
  // A minimal valid byte-fallback tokenizer.json, with `edit` applied to its text.
  std::string Json(const std::map<std::string, std::string>& replace = {}) {
    std::string s = R"({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": true}],
  "normalizer": NORMALIZER,
  "pre_tokenizer": PRETOKENIZER,
  "post_processor": null,
  "decoder": null,
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false,
            "vocab": {"<s>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]}
})";
    std::map<std::string, std::string> all = {{"NORMALIZER", "null"}, {"PRETOKENIZER", "null"}};
    for (const auto& [k, v] : replace) all[k] = v;
    for (const auto& [k, v] : all) {
      const size_t p = s.find(k);
      if (p != std::string::npos) s.replace(p, k.size(), v);
    }
    return s;
  }
  Status LoadText(const std::string& text) {
    WriteBytes(Path("tokenizer.json"), text);
    return MakeHfTokenizer(dir_.string()).status();
  }
  static std::string Edit(std::string s, const std::string& from, const std::string& to) {
    const size_t p = s.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    if (p != std::string::npos) s.replace(p, from.size(), to);
    return s;
  }
};

TEST_F(HfRefusalTest, TheMinimalFileLoadsAndEncodes) {
  ASSERT_TRUE(LoadText(Json()).ok()) << LoadText(Json()).message();
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeHfTokenizer(Path("tokenizer.json"));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->Encode("ab<s>ba"), (std::vector<int32_t>{3, 0, 2, 1}));
  EXPECT_EQ((*t)->vocab_size(), 4);
}

TEST_F(HfRefusalTest, NamesTheFieldOfWhatIsNotSupported) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {Edit(Json(), R"("type": "BPE")", R"("type": "WordPiece")"),
       {"model.type", "\"WordPiece\" is not supported"}},
      {Json({{"NORMALIZER", R"({"type": "Lowercase"})"}}), {"normalizer.type", "\"Lowercase\""}},
      {Json({{"NORMALIZER",
              R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "StripAccents"}]})"}}),
       {"normalizer.normalizers[1].type", "\"StripAccents\""}},
      {Json({{"PRETOKENIZER", R"({"type": "Whitespace"})"}}), {"pre_tokenizer.type", "\"Whitespace\""}},
      {Json({{"PRETOKENIZER",
              R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Contiguous", "invert": false})"}}),
       {"pre_tokenizer.behavior", "\"Contiguous\""}},
      {Json({{"PRETOKENIZER", R"({"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated"})"}}),
       {"pre_tokenizer.pattern.Regex", "does not compile"}},
      {Edit(Json(), R"("truncation": null)", R"("truncation": {"max_length": 512})"), {"truncation"}},
      {Edit(Json(), R"("dropout": null)", R"("dropout": 0.1)"), {"model.dropout"}},
      {Edit(Json(), R"("lstrip": false)", R"("lstrip": true)"), {"added_tokens[0].lstrip"}},
      {Edit(Json(), R"("decoder": null)", R"("decoder": {"type": "WordPiece"})"),
       {"decoder.type", "\"WordPiece\""}},
      {Edit(Json(), R"("post_processor": null)", R"("post_processor": {"type": "BertProcessing"})"),
       {"post_processor.type", "\"BertProcessing\""}},
      {Edit(Json(), R"(["a b"])", R"(["a c"])"), {"model.merges[0]", "\"c\" is not in model.vocab"}},
      {Edit(Json(), R"("ab": 3)", R"("ab": 7)"), {"has id 7", "without gaps"}},
      {Edit(Json(), R"("b": 2)", R"("b": 1)"), {"also belongs to"}},
      {Edit(Json(), R"("unk_token": null)", R"("unk_token": "<unk>")"),
       {"model.unk_token", "not in model.vocab"}},
      {"[1, 2]", {"expected a JSON object"}},
      {"{\"model\": ", {"tokenizer.json:1:"}},
  };
  for (const auto& [text, parts] : cases) {
    const Status s = LoadText(text);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    EXPECT_THAT(s.message(), HasSubstr(Path("tokenizer.json"))) << text;
    for (const std::string& p : parts) EXPECT_THAT(s.message(), HasSubstr(p)) << text;
  }
}

TEST_F(HfRefusalTest, AMissingFileSaysWhatToCopy) {
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeHfTokenizer(dir_.string());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(t.status().message(), AllOf(HasSubstr(Path("tokenizer.json")), HasSubstr("copy the model's")));
}

TEST(TokenizerFactory, NamesWithFilesNeedVocab) {
  for (const char* name : {"gpt2", "hf", "llmc"}) {
    StatusOr<std::unique_ptr<Tokenizer>> t = MakeTokenizer(name);
    ASSERT_FALSE(t.ok()) << name;
    EXPECT_THAT(t.status().message(), HasSubstr("give --vocab")) << name;
  }
}

}  // namespace
}  // namespace fjord
