// `fjord prep --tokenizer hf` and `fjord sample --tokenizer hf|llmc` end to end. The shards must
// hold exactly the ids of the library's HF tokenizer (itself checked against Hugging Face's
// `tokenizers` in tests/runtime/data/hf_tokenizer_test.cc), and sampling decodes with it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "runtime/data/bpe_tokenizer.h"
#include "runtime/data/hf_tokenizer.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::RunFjord;
using testing::RunResult;

class TokenizerCliTest : public testing::TempDirTest {
 protected:
  TokenizerCliTest() : TempDirTest("fjord_tokcli_") {}

  // `fjord sample ARGS` with stdout alone: the text (the checkpoint line goes to stderr).
  static RunResult SampleStdout(const std::string& args) {
    return testing::Shell("{ " + std::string(FJORD_BINARY) + " sample" + args + " 2>/dev/null; }");
  }

  // A byte-level tokenizer.json: the 256 byte tokens in byte order, three merges that make
  // "Ġfjo", and <|endoftext|> as a special added token (vocabulary 260).
  void WriteTokenizer(const std::string& dir) {
    auto ch = [](int b) {
      std::string s;
      AppendUtf8Char(Gpt2BytesToUnicode()[b], &s);
      return s;
    };
    std::string vocab;
    for (int b = 0; b < 256; ++b) vocab += JsonQuote(ch(b)) + ": " + std::to_string(b) + ", ";
    const std::string G = ch(' ');
    vocab +=
        JsonQuote(G + "f") + ": 256, \"jo\": 257, " + JsonQuote(G + "fjo") + ": 258, \"<|endoftext|>\": 259";
    fs::create_directories(dir);
    std::ofstream(dir + "/tokenizer.json")
        << "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,\n"
           "\"added_tokens\": [{\"id\": 259, \"content\": \"<|endoftext|>\", \"single_word\": false, "
           "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],\n"
           "\"normalizer\": null,\n"
           "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": "
           "true, "
           "\"use_regex\": true},\n"
           "\"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": "
           "false, "
           "\"use_regex\": true},\n"
           "\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
           "\"use_regex\": true},\n"
           "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"byte_fallback\": false, "
           "\"vocab\": {"
        << vocab << "}, \"merges\": [" << JsonQuote(G + " f") << ", \"j o\", " << JsonQuote(G + "f jo")
        << "]}}\n";
  }

  // The tokens of an llm.c shard (256 x int32 header, uint16 tokens).
  static std::vector<int32_t> ShardTokens(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_GE(bytes.size(), 1024u) << path;
    std::vector<int32_t> out;
    for (size_t i = 1024; i + 1 < bytes.size(); i += 2) {
      uint16_t t;
      std::memcpy(&t, bytes.data() + i, 2);
      out.push_back(t);
    }
    return out;
  }
};

TEST_F(TokenizerCliTest, PrepWithHfWritesItsIdsAndSampleDecodesWithIt) {
  WriteTokenizer(Path("tok"));
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += "the fjord keeps its data home, æøå " + std::to_string(i % 7) +
            (i % 10 == 9 ? "<|endoftext|>" : "\n");
  }
  std::ofstream(Path("corpus.txt")) << text;
  RunResult r =
      RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data") + " --tokenizer hf --vocab " +
               Path("tok") + " --delimiter none --eot none --val-fraction 0");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  StatusOr<std::unique_ptr<Tokenizer>> tok = MakeHfTokenizer(Path("tok"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const std::vector<int32_t> expected = (*tok)->Encode(text);
  // The whole file is one document (--delimiter none) without an end-of-text id before it (--eot none),
  // so the shard holds exactly the tokenizer's encoding of the file.
  EXPECT_EQ(ShardTokens(Path("data/train_000000.bin")), expected);
  // Not trivial: the merges and the special token were used.
  EXPECT_EQ(std::count(expected.begin(), expected.end(), 258), 200);
  EXPECT_EQ(std::count(expected.begin(), expected.end(), 259), 20);

  std::ofstream(Path("job.textproto"))
      << "model { n_layer: 1 n_head: 2 n_embd: 16 seq_len: 16 vocab_size: 260 }\n"
         "train { micro_batch: 4 steps: 3 lr: 1e-2 }\n"
         "data { train: \""
      << Path("data/train_*.bin") << "\" }\nrun_dir: \"" << Path("run") << "\"\n";
  r = RunFjord("train " + Path("job.textproto") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  r = SampleStdout(" --checkpoint " + Path("run") + " --tokenizer hf --vocab " + Path("tok") +
                   " --prompt 'the fjord' --tokens 12 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The greedy continuation, decoded by the library from the ids the model picks, follows the prompt.
  EXPECT_EQ(r.output.rfind("the fjord", 0), 0u) << r.output;
  EXPECT_GT(r.output.size(), std::string("the fjord\n").size());

  // llm.c's gpt2_tokenizer.bin of the same vocabulary (token bytes, end-of-text 259) samples the same
  // greedy text from an empty prompt: both start from <|endoftext|>, which only llmc prints.
  std::string bin;
  uint32_t header[256] = {20240328, 2, 260, 259};
  bin.assign(reinterpret_cast<const char*>(header), sizeof(header));
  for (int32_t id = 0; id < 260; ++id) {
    const std::string bytes = id < 259 ? (*tok)->Decode({id}) : "<|endoftext|>";
    bin += static_cast<char>(bytes.size());
    bin += bytes;
  }
  std::ofstream(Path("gpt2_tokenizer.bin"), std::ios::binary) << bin;
  r = SampleStdout(" --checkpoint " + Path("run") + " --tokenizer hf --vocab " + Path("tok") +
                   " --tokens 12 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string from_hf = r.output;
  r = SampleStdout(" --checkpoint " + Path("run") + " --tokenizer llmc --vocab " + Path("") +
                   " --tokens 12 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string from_llmc = r.output;
  for (size_t p; (p = from_llmc.find("<|endoftext|>")) != std::string::npos;) from_llmc.erase(p, 13);
  EXPECT_EQ(from_llmc, from_hf);
  EXPECT_GT(from_hf.size(), 1u);
  r = RunFjord("sample --checkpoint " + Path("run") + " --tokenizer llmc --vocab " +
               Path("gpt2_tokenizer.bin") + " --prompt hello");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("only decodes"));

  // A tokenizer larger than the model's vocabulary would feed it ids it does not have.
  if (fs::exists(std::string(FJORD_SOURCE_DIR) + "/../shared/data/gpt2/vocab.json")) {
    r = RunFjord("sample --checkpoint " + Path("run") + " --tokenizer gpt2 --vocab " + FJORD_SOURCE_DIR +
                 "/../shared/data/gpt2 --prompt x --tokens 2");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.output, HasSubstr("has 50257 tokens but the checkpoint's model has a vocabulary of 260"));
  }
}

TEST_F(TokenizerCliTest, DecodeOnlyAndMisnamedTokenizersAreRefused) {
  std::ofstream(Path("corpus.txt")) << "some text\n";
  RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d") + " --tokenizer hf");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--tokenizer hf needs --vocab DIR"));
  r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d") + " --tokenizer hf --vocab " +
               Path("nope"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr(Path("nope") + " does not exist; copy the model's tokenizer.json"));
  r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d") + " --tokenizer bpe --vocab x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("unknown tokenizer \"bpe\"; known tokenizers: byte"));
  // llm.c's tokenizer file has no merges: it cannot prep.
  uint32_t header[256] = {20240328, 2, 1, 0};
  std::ofstream(Path("t.bin"), std::ios::binary).write(reinterpret_cast<const char*>(header), sizeof(header))
      << "\x01x";
  r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d") + " --tokenizer llmc --vocab " +
               Path("t.bin"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("only decodes"));
  EXPECT_FALSE(fs::exists(Path("d")));
}

}  // namespace
}  // namespace fjord
