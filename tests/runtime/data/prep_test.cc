// fjord prep (runtime/data/prep.h). The oracles are built in the test from the documents it writes:
// the token stream the old in-memory path would give (each document encoded whole, in order, the
// end-of-text id before each), the shards of a one-thread run, and compressed inputs made by the
// system's gzip and zstd programs.
#include "runtime/data/prep.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "runtime/data/bpe_tokenizer.h"
#include "runtime/data/data.h"
#include "runtime/tenancy/manifest.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class PrepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("fjord_prep_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::string Write(const std::string& name, const std::string& bytes) {
    std::ofstream out(Path(name), std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good());
    return Path(name);
  }
  static std::string ReadBytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // Options for the byte tokenizer: no validation, no end-of-text id, small shards.
  PrepOptions Options(const std::string& input, const std::string& out = "out") {
    PrepOptions o;
    o.input = input;
    o.out_dir = Path(out);
    o.val_fraction = 0;
    o.shard_tokens = 1 << 20;  // few files: each shard is fsynced
    o.eot = kEotNone;
    o.delimiter = "";  // one document per file, unless a test says otherwise
    return o;
  }

  // The tokens of `files`, concatenated.
  static std::vector<int32_t> Tokens(const std::vector<std::string>& files, int vocab = 65536) {
    std::vector<int32_t> out;
    for (const std::string& f : files) {
      StatusOr<std::vector<uint32_t>> shard = ReadShard(f, vocab);
      EXPECT_TRUE(shard.ok()) << shard.status().message();
      if (shard.ok()) out.insert(out.end(), shard->begin(), shard->end());
    }
    return out;
  }
  static std::string Text(const std::vector<std::string>& files) {
    std::string text;
    for (int32_t t : Tokens(files)) text.push_back(static_cast<char>(t));
    return text;
  }
  // All shard files of a prep, concatenated byte for byte (train then val).
  static std::string ShardBytes(const PrepResult& r) {
    std::string bytes;
    for (const auto* files : {&r.train_files, &r.val_files}) {
      for (const std::string& f : *files) bytes += fs::path(f).filename().string() + ":" + ReadBytes(f);
    }
    return bytes;
  }
  std::vector<std::string> ShardsOnDisk(const std::string& out = "out") const {
    std::vector<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(Path(out), ec), end; !ec && it != end; it.increment(ec)) {
      names.push_back(it->path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

// `n` documents of random words (and some non-ASCII), each ending with the delimiter.
std::vector<std::string> Documents(size_t n, const std::string& delimiter, uint32_t seed) {
  static const char* kWords[] = {"fjord", "river",     "Tromsø", "ørret", "the",
                                 "a",     "sovereign", "data",   "12",    "!"};
  std::mt19937 rng(seed);
  std::vector<std::string> docs;
  for (size_t i = 0; i < n; ++i) {
    std::string doc;
    const size_t words = 1 + rng() % 40;
    for (size_t w = 0; w < words; ++w) doc += std::string(w ? " " : "") + kWords[rng() % 10];
    docs.push_back(doc + "." + delimiter);
  }
  return docs;
}

std::string Join(const std::vector<std::string>& docs) {
  std::string text;
  for (const std::string& d : docs) text += d;
  return text;
}

bool Have(const std::string& program) {
  return std::system(("command -v " + program + " >/dev/null 2>&1").c_str()) == 0;
}

std::string Gpt2Dir() { return std::string(FJORD_SOURCE_DIR) + "/../shared/data/gpt2"; }

TEST_F(PrepTest, OneDocumentPerFileConcatenatesBackToTheInput) {
  std::mt19937 rng(11);
  std::string text;
  for (int i = 0; i < 1000; ++i) text.push_back(static_cast<char>(rng() & 0xFF));  // any bytes
  PrepOptions o = Options(Write("in.txt", text));
  o.shard_tokens = 100;
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->documents, 1);
  EXPECT_EQ(r->train_tokens, 1000);
  ASSERT_EQ(r->train_files.size(), 10u);
  EXPECT_EQ(r->train_files[9], Path("out/train_000009.bin"));
  EXPECT_TRUE(r->val_files.empty());
  EXPECT_EQ(Text(r->train_files), text);
}

TEST_F(PrepTest, DocumentsKeepTheirDelimiterAndFollowTheEndOfTextId) {
  PrepOptions o = Options(Write("in.txt", "a\n\nbb\n\n\n\nccc"));
  o.delimiter = "\n\n";
  o.eot = 7;
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  // Documents "a\n\n", "bb\n\n", "\n\n", "ccc"; none is empty, each follows id 7.
  EXPECT_EQ(r->documents, 4);
  EXPECT_EQ(Text(r->train_files),
            "\x07"
            "a\n\n\x07"
            "bb\n\n\x07\n\n\x07"
            "ccc");
}

TEST_F(PrepTest, ValidationTakesWholeDocumentsEvenlyOrTheFirstN) {
  const std::vector<std::string> docs = Documents(50, "\n", 3);
  const std::string input = Write("in.txt", Join(docs));
  for (double fraction : {0.1, 0.25, 0.5}) {
    SCOPED_TRACE(fraction);
    fs::remove_all(Path("out"));
    PrepOptions o = Options(input);
    o.delimiter = "\n";
    o.val_fraction = fraction;
    StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
    ASSERT_TRUE(r.ok()) << r.status().message();
    std::string train, val;
    int64_t val_docs = 0;
    for (size_t i = 0; i < docs.size(); ++i) {  // prep.h: floor((i + 1) f) > floor(i f)
      const bool is_val = std::floor((i + 1) * fraction) > std::floor(i * fraction);
      (is_val ? val : train) += docs[i];
      val_docs += is_val;
    }
    EXPECT_EQ(val_docs, static_cast<int64_t>(std::floor(50 * fraction)));
    EXPECT_EQ(r->val_documents, val_docs);
    EXPECT_EQ(Text(r->train_files), train);
    EXPECT_EQ(Text(r->val_files), val);
  }
  fs::remove_all(Path("out"));
  PrepOptions o = Options(input);
  o.delimiter = "\n";
  o.val_docs = 3;
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(Text(r->val_files), docs[0] + docs[1] + docs[2]);
  EXPECT_EQ(Text(r->train_files), Join(std::vector<std::string>(docs.begin() + 3, docs.end())));
}

// GPT-2 BPE on many documents: the shards are the same bytes for 1, 2, 3 and 7 threads, and hold
// exactly the old path's tokens: each document encoded whole, in order, 50256 before each.
TEST_F(PrepTest, ShardsAreIdenticalForAnyThreadCountAndMatchTheInMemoryOracle) {
  StatusOr<std::unique_ptr<Tokenizer>> gpt2 = MakeGpt2Tokenizer(Gpt2Dir());
  if (!gpt2.ok()) GTEST_SKIP() << "no GPT-2 tokenizer files: " << gpt2.status().message();
  ASSERT_EQ((*gpt2)->end_of_text(), std::optional<int32_t>(50256));
  const std::vector<std::string> docs = Documents(400, "\n\n", 5);
  const std::string input = Write("in.txt", Join(docs));
  std::vector<int32_t> train, val;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::vector<int32_t>& part = i % 10 == 9 ? val : train;  // val_fraction 0.1
    part.push_back(50256);
    const std::vector<int32_t> ids = (*gpt2)->Encode(docs[i]);
    part.insert(part.end(), ids.begin(), ids.end());
  }
  std::string reference;
  for (int threads : {1, 2, 3, 7}) {
    SCOPED_TRACE(threads);
    const std::string out = "out" + std::to_string(threads);
    PrepOptions o = Options(input, out);
    o.delimiter = "\n\n";
    o.val_fraction = 0.1;
    o.eot = kEotAuto;
    o.shard_tokens = 1000;
    o.threads = threads;
    o.batch_bytes = 2000;  // several batches, each split over the threads
    StatusOr<PrepResult> r = PrepareShards(o, **gpt2);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(Tokens(r->train_files), train);
    EXPECT_EQ(Tokens(r->val_files), val);
    if (threads == 1) reference = ShardBytes(*r);
    EXPECT_EQ(ShardBytes(*r), reference);
  }
}

TEST_F(PrepTest, JsonLinesAndCompressedInputsGiveTheSameShardsAsText) {
  const std::vector<std::string> docs = Documents(30, "", 7);
  std::string jsonl;
  for (const std::string& d : docs) jsonl += "{\"id\": 1, \"text\": \"" + d + "\"}\n";
  jsonl += "\n";  // a blank line is no document
  PrepOptions text_options = Options("");
  text_options.inputs = {};
  for (size_t i = 0; i < docs.size(); ++i)
    text_options.inputs.push_back(Write("d" + std::to_string(100 + i) + ".txt", docs[i]));
  text_options.eot = 1;
  StatusOr<PrepResult> text = PrepareShards(text_options, *MakeByteTokenizer());
  ASSERT_TRUE(text.ok()) << text.status().message();
  EXPECT_EQ(text->documents, 30);

  std::vector<std::string> inputs = {Write("in.jsonl", jsonl)};
  if (Have("gzip")) {
    ASSERT_EQ(std::system(("gzip -k -c " + Path("in.jsonl") + " > " + Path("in.jsonl.gz")).c_str()), 0);
    inputs.push_back(Path("in.jsonl.gz"));
  }
  if (Have("zstd")) {
    ASSERT_EQ(std::system(("zstd -q -c " + Path("in.jsonl") + " > " + Path("in.jsonl.zst")).c_str()), 0);
    inputs.push_back(Path("in.jsonl.zst"));
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    SCOPED_TRACE(inputs[k]);
    PrepOptions o = Options(inputs[k], "json" + std::to_string(k));
    o.jsonl = true;
    o.eot = 1;
    StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->documents, 30);
    EXPECT_EQ(Tokens(r->train_files), Tokens(text->train_files));
  }
  if (inputs.size() < 3) GTEST_SKIP() << "gzip or zstd is not installed: compressed inputs not checked";
}

TEST_F(PrepTest, GlobsAndSeveralInputsAreReadInOrderAndAnEmptyFileIsSkipped) {
  Write("b.txt", "bbb");
  Write("a.txt", "aa");
  Write("c.txt", "");  // an empty document: no tokens, not even the end-of-text id
  PrepOptions o = Options(Path("*.txt"));
  o.inputs = {Write("z.dat", "zz"), Path("a.txt")};
  o.eot = '|';
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->documents, 4);
  EXPECT_EQ(Text(r->train_files), "|aa|bbb|zz|aa");
}

TEST_F(PrepTest, InvalidUtf8IsKeptAsBytes) {
  const std::string bytes = "caf\xC3\xA9 \xFF\xFE broken \xE2\x82 end";
  StatusOr<PrepResult> r = PrepareShards(Options(Write("in.txt", bytes)), *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(Text(r->train_files), bytes);
  StatusOr<std::unique_ptr<Tokenizer>> gpt2 = MakeGpt2Tokenizer(Gpt2Dir());
  if (!gpt2.ok()) GTEST_SKIP() << "no GPT-2 tokenizer files: " << gpt2.status().message();
  PrepOptions o = Options(Path("in.txt"), "gpt2");
  o.shard_tokens = 1000;
  r = PrepareShards(o, **gpt2);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::vector<int32_t> ids = Tokens(r->train_files);
  EXPECT_EQ((*gpt2)->Decode(ids), bytes);
}

TEST_F(PrepTest, JsonLineWithoutTheFieldIsRefusedNamingFileAndLineAndNothingIsLeft) {
  std::string jsonl;
  for (int i = 0; i < 300; ++i) jsonl += "{\"text\": \"document number " + std::to_string(i) + "\"}\n";
  jsonl += "{\"body\": \"no text here\"}\n";
  PrepOptions o = Options(Write("in.jsonl", jsonl));
  o.jsonl = true;
  o.shard_tokens = 1000;  // shards are written before the bad line is read:
  o.batch_bytes = 256;    // many small batches
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr(Path("in.jsonl") + ":301: no field \"text\" in this JSON line"));
  EXPECT_THAT(r.status().message(), HasSubstr("--json-field NAME"));
  EXPECT_TRUE(ShardsOnDisk().empty()) << "the shards written before the error are removed";
  EXPECT_TRUE(fs::exists(Path("out")));

  Write("in.jsonl", "{\"text\": 5}\n");
  r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(":1: field \"text\" is a number, not a string"));
  Write("in.jsonl", "{\"text\": \"ok\"}\nnot json\n");
  r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(Path("in.jsonl") + ":2:"));
  EXPECT_THAT(r.status().message(), HasSubstr("not a JSON line"));
}

TEST_F(PrepTest, CompressedInputThatEndsEarlyIsRefusedNamingIt) {
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "line " + std::to_string(i * 7919 % 10007) + "\n";
  Write("in.txt", text);
  int checked = 0;
  for (const auto& [program, suffix] :
       {std::pair<std::string, std::string>{"gzip", ".gz"}, {"zstd", ".zst"}}) {
    if (!Have(program)) continue;
    SCOPED_TRACE(program);
    const std::string full = Path("in.txt" + suffix);
    ASSERT_EQ(std::system((program + " -q -c " + Path("in.txt") + " > " + full).c_str()), 0);
    const std::string bytes = ReadBytes(full);
    const std::string cut = Write("cut.txt" + suffix, bytes.substr(0, bytes.size() / 2));
    PrepOptions o = Options(cut, "out" + suffix);
    o.delimiter = "\n";
    StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr(program + " input " + cut));
    EXPECT_THAT(r.status().message(), HasSubstr("re-create or re-download it"));
    EXPECT_TRUE(ShardsOnDisk("out" + suffix).empty());
    // The whole file is fine and gives the text back.
    o = Options(full, "whole" + suffix);
    r = PrepareShards(o, *MakeByteTokenizer());
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(Text(r->train_files), text);
    ++checked;
  }
  if (checked < 2) GTEST_SKIP() << "gzip or zstd is not installed";
}

// Tokens above 65535 go into version 2 (uint32) shards, which the loader reads.
class WideTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "wide"; }
  int vocab_size() const override { return 70000; }
  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(65000 + c);
    return ids;
  }
  std::string Decode(const std::vector<int32_t>&) const override { return ""; }
  std::optional<int32_t> end_of_text() const override { return 69999; }
};

TEST_F(PrepTest, AVocabularyAboveUint16WritesVersion2Shards) {
  PrepOptions o = Options(Write("in.txt", "abc\ndef\n"));
  o.delimiter = "\n";
  o.eot = kEotAuto;
  StatusOr<PrepResult> r = PrepareShards(o, WideTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::string bytes = ReadBytes(r->train_files[0]);
  ASSERT_GE(bytes.size(), 8u);
  EXPECT_EQ(bytes[4], 2) << "header[1] is the version";
  EXPECT_EQ(bytes.size(), 1024u + 4 * 10);
  const std::vector<int32_t> want = {69999, 65097, 65098, 65099, 65010, 69999, 65100, 65101, 65102, 65010};
  EXPECT_EQ(Tokens(r->train_files, 70000), want);
  StatusOr<DataLoader> loader = DataLoader::Open(Path("out/train_*.bin"), "data.train", 70000, 4, 1, false);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  std::vector<int32_t> in(4), tg(4);
  ASSERT_TRUE(loader->Fill(0, 1, in.data(), tg.data()).ok());
  EXPECT_EQ(in, std::vector<int32_t>(want.begin(), want.begin() + 4));
}

TEST_F(PrepTest, TenantPrepWritesTheManifestLastWithEveryShardsDigest) {
  PrepOptions o = Options(Write("in.txt", Join(Documents(40, "\n", 9))));
  o.delimiter = "\n";
  o.val_fraction = 0.2;
  o.tenant = "acme";
  o.allowed_jurisdictions = {"NO"};
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_TRUE(r.ok()) << r.status().message();
  StatusOr<proto::DataManifest> m = ReadDataManifest(Path("out"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  ASSERT_EQ(m->shard_size(), static_cast<int>(r->train_files.size() + r->val_files.size()));
  for (const proto::ShardDigest& s : m->shard()) {
    StatusOr<std::string> digest = Sha256File(Path("out/" + s.name()), "shard");
    ASSERT_TRUE(digest.ok());
    EXPECT_EQ(s.sha256(), *digest) << s.name();
    EXPECT_EQ(s.bytes(), static_cast<int64_t>(fs::file_size(Path("out/" + s.name()))));
  }
  StatusOr<std::string> source = Sha256File(Path("in.txt"), "input");
  ASSERT_TRUE(source.ok());
  EXPECT_EQ(m->source_sha256(), *source);
}

TEST_F(PrepTest, ProgressLineIsPrintedUnlessQuiet) {
  PrepOptions o = Options(Write("in.txt", Join(Documents(20, "\n", 1))));
  o.delimiter = "\n";
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(PrepareShards(o, *MakeByteTokenizer()).ok());
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  fs::remove_all(Path("out"));
  o.progress = true;
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(PrepareShards(o, *MakeByteTokenizer()).ok());
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr("MB read, 20 documents, "));
  EXPECT_THAT(err, HasSubstr("MB/s"));
}

// Refusals: each builds the bad input and checks the message.
TEST_F(PrepTest, MissingInputIsNotFound) {
  StatusOr<PrepResult> r = PrepareShards(Options(Path("nope.txt")), *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("input " + Path("nope.txt") + ": no such file"));
  EXPECT_FALSE(fs::exists(Path("out")));
  r = PrepareShards(Options(""), *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("no input: give --input FILE"));
}

TEST_F(PrepTest, InputsWithoutAnyDocumentAreRefusedAndLeaveNoShard) {
  Write("a.txt", "");
  Write("b.txt", "");
  StatusOr<PrepResult> r = PrepareShards(Options(Path("*.txt")), *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("2 input file(s) hold 0 non-empty document(s)"));
  EXPECT_THAT(r.status().message(), HasSubstr("nothing to tokenize"));
  EXPECT_TRUE(ShardsOnDisk().empty());
}

TEST_F(PrepTest, ValidationWithoutAWholeDocumentIsRefused) {
  PrepOptions o = Options(Write("in.txt", "one single document without delimiter"));
  o.val_fraction = 0.1;
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("1 non-empty document(s)"));
  EXPECT_THAT(r.status().message(), HasSubstr("0 document(s) (0 tokens) went to validation"));
  EXPECT_THAT(r.status().message(), HasSubstr("validation takes whole documents, so give more documents"));
  EXPECT_TRUE(ShardsOnDisk().empty());
}

TEST_F(PrepTest, TinyTrainPartIsRefused) {
  PrepOptions o = Options(Write("in.txt", "a"));
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("the train part needs at least 2 tokens"));
}

TEST_F(PrepTest, BadOptionsAreRefusedBeforeAnythingIsWritten) {
  const std::string input = Write("in.txt", "some text");
  struct Case {
    std::function<void(PrepOptions&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {[](PrepOptions& o) { o.val_fraction = 1.0; }, "val_fraction 1 is outside [0, 1)"},
      {[](PrepOptions& o) { o.val_fraction = std::nan(""); }, "is outside [0, 1)"},
      {[](PrepOptions& o) { o.shard_tokens = 0; }, "shard_tokens 0 is outside [1, 2147483647]"},
      {[](PrepOptions& o) { o.shard_tokens = 1ll << 31; }, "shard_tokens 2147483648 is outside"},
      {[](PrepOptions& o) { o.threads = 0; }, "threads 0 is outside [1, 256]"},
      {[](PrepOptions& o) { o.batch_bytes = 0; }, "batch_bytes 0 must be at least 1"},
      {[](PrepOptions& o) { o.eot = 256; },
       "the end-of-text id 256 is outside tokenizer \"byte\"'s ids [0, 256)"},
      {[](PrepOptions& o) { o.jsonl = true, o.json_field = ""; }, "--json-field is empty"},
      {[](PrepOptions& o) { o.out_dir = ""; }, "the output directory is empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    PrepOptions o = Options(input);
    c.edit(o);
    StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr(c.message));
    EXPECT_FALSE(fs::exists(Path("out")));
  }
}

TEST_F(PrepTest, LeftoverShardsAreRefusedNotMixed) {
  PrepOptions o = Options(Write("in.txt", std::string(300, 'x')));
  o.shard_tokens = 100;
  ASSERT_TRUE(PrepareShards(o, *MakeByteTokenizer()).ok());
  StatusOr<PrepResult> r = PrepareShards(o, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr(Path("out/train_000000.bin") + " (and 2 more shards) is left from an earlier prep"));
  EXPECT_THAT(r.status().message(), HasSubstr("delete the old shards or choose an empty output directory"));
  EXPECT_EQ(ShardsOnDisk().size(), 3u);
}

TEST_F(PrepTest, OutputDirThatIsAFileIsRefused) {
  Write("out", "not a directory");
  StatusOr<PrepResult> r = PrepareShards(Options(Write("in.txt", "text")), *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("cannot create the output directory " + Path("out")));
}

TEST_F(PrepTest, InputThatIsADirectoryIsRefused) {
  fs::create_directories(Path("texts"));
  StatusOr<PrepResult> r = PrepareShards(Options(Path("texts")), *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("input " + Path("texts") + " is not a regular file"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

}  // namespace
}  // namespace fjord
