// GPT-2 byte-level BPE. Oracles: pre-tokenizer splits written out by hand from the regex's
// semantics; a vocabulary learned in the test by a tiny BPE trainer with its own
// bytes_to_unicode; and encoder.py's bpe() loop transcribed literally (string symbols, O(n^2)),
// against which the library's heap-based merge loop is compared.
#include "runtime/data/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using testing_util::WriteBytes;

std::vector<std::string> Split(const std::string& text) {
  std::vector<std::string> out;
  for (std::string_view p : Gpt2PreTokenize(text)) out.emplace_back(p);
  return out;
}

TEST(Gpt2PreTokenize, MatchesTheRegexOnHandWrittenExamples) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"Hello world", {"Hello", " world"}},
      {"I'm here, it's 2024!", {"I", "'m", " here", ",", " it", "'s", " 2024", "!"}},
      {"we'll they're you've he'd don't",
       {"we", "'ll", " they", "'re", " you", "'ve", " he", "'d", " don", "'t"}},
      {"'S 'x ''s", {"'", "S", " '", "x", " ''", "s"}},  // contractions are lowercase; runs of ' are greedy
      {"a  b", {"a", " ", " b"}},                        // the last space of a run joins the word
      {"a\n\nb", {"a", "\n", "\n", "b"}},                // only U+0020 attaches to a word
      {"x   ", {"x", "   "}},                            // trailing whitespace stays one run
      {"  leading", {" ", " leading"}},
      {"tab\tx", {"tab", "\t", "x"}},
      {"end.\n", {"end", ".", "\n"}},
      {"abc123def", {"abc", "123", "def"}},
      {" 123 4", {" 123", " 4"}},
      {"(a+b)*c", {"(", "a", "+", "b", ")*", "c"}},
      {"hi !!", {"hi", " !!"}},
      {"Tromsø – fjord", {"Tromsø", " –", " fjord"}},  // en dash is punctuation
      {"naïve café", {"naïve", " café"}},
      {"Ωμέγα 3²", {"Ωμέγα", " 3²"}},  // superscript two is \p{N}
      {"Привет мир", {"Привет", " мир"}},
      {"日本語のテキスト", {"日本語のテキスト"}},
      {"e\xCC\x81", {"e", "\xCC\x81"}},  // combining acute (Mn) is neither L nor N
      {"a\xC2\xA0"
       "b",
       {"a", "\xC2\xA0", "b"}},  // NBSP is whitespace but not U+0020
      {"\xFF\xFE"
       "ab",
       {"\xFF\xFE", "ab"}},  // invalid bytes: one class, one run
      {"x \n y", {"x", " \n", " y"}},
      {"", {}},
  };
  for (const auto& [text, expected] : cases) EXPECT_THAT(Split(text), ElementsAreArray(expected)) << text;
}

TEST(Gpt2PreTokenize, PiecesAreNonEmptyAndConcatenateToAnyInput) {
  std::mt19937 rng(7);
  const std::string alphabet[] = {
      "a", "Z", "7", " ", "  ", "\n", "'", "'s", ".", "ø", "–", "\xE6\x97\xA5", "\xFF", "\xC3", "\t"};
  for (int trial = 0; trial < 500; ++trial) {
    std::string text;
    const int n = rng() % 40;
    for (int i = 0; i < n; ++i) text += alphabet[rng() % std::size(alphabet)];
    std::string joined;
    for (std::string_view p : Gpt2PreTokenize(text)) {
      ASSERT_FALSE(p.empty()) << text;
      joined += p;
    }
    ASSERT_EQ(joined, text);
  }
}

// ---- A vocabulary learned in the test ---------------------------------------------------------

// GPT-2's bytes_to_unicode, transcribed from encoder.py: the byte order of the base vocabulary.
std::vector<std::pair<int, char32_t>> BytesToUnicodeInVocabOrder() {
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
  std::vector<char32_t> cs(bs.begin(), bs.end());
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  }
  std::vector<std::pair<int, char32_t>> out;
  for (size_t i = 0; i < bs.size(); ++i) out.push_back({bs[i], cs[i]});
  return out;
}

std::string Utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
  return s;
}

// A piece's bytes as byte-alphabet symbols.
std::vector<std::string> Symbols(std::string_view piece) {
  static const std::map<int, std::string> kByteChar = [] {
    std::map<int, std::string> m;
    for (auto [b, c] : BytesToUnicodeInVocabOrder()) m[b] = Utf8(c);
    return m;
  }();
  std::vector<std::string> out;
  for (char ch : piece) out.push_back(kByteChar.at(static_cast<unsigned char>(ch)));
  return out;
}

// JSON string with non-ASCII as \uXXXX escapes, as Python's json.dumps writes vocab.json.
std::string JsonAscii(const std::string& utf8) {
  std::string out = "\"";
  for (size_t i = 0; i < utf8.size();) {
    const unsigned char b = utf8[i];
    char32_t c = b;
    int len = 1;
    if (b >= 0xC0) {
      c = ((b & 0x1F) << 6) | (utf8[i + 1] & 0x3F);
      len = 2;
    }
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
    i += len;
  }
  return out + "\"";
}

struct Vocabulary {
  std::vector<std::string> tokens;  // id -> token (byte-alphabet UTF-8)
  std::vector<std::pair<std::string, std::string>> merges;
  std::map<std::string, int> ids;
  std::map<std::pair<std::string, std::string>, int> ranks;

  void AddToken(const std::string& t) {
    if (ids.count(t)) return;
    ids[t] = static_cast<int>(tokens.size());
    tokens.push_back(t);
  }
  void AddMerge(const std::string& a, const std::string& b) {
    ranks[{a, b}] = static_cast<int>(merges.size());
    merges.push_back({a, b});
    AddToken(a + b);
  }
  void Write(const std::string& dir, const std::string& vocab_name = "vocab.json",
             const std::string& merges_name = "merges.txt") const {
    std::string v = "{";
    for (size_t i = 0; i < tokens.size(); ++i)
      v += (i ? ", " : "") + JsonAscii(tokens[i]) + ": " + std::to_string(i);
    WriteBytes(dir + "/" + vocab_name, v + "}");
    std::string m = "#version: 0.2\n";
    for (const auto& [a, b] : merges) m += a + " " + b + "\n";
    WriteBytes(dir + "/" + merges_name, m);
  }
};

Vocabulary BaseVocabulary() {
  Vocabulary v;
  for (auto [b, c] : BytesToUnicodeInVocabOrder()) v.AddToken(Utf8(c));
  return v;
}

// Learns `count` merges on `corpus`: most frequent adjacent pair, ties to the smaller pair.
Vocabulary Learn(const std::string& corpus, int count) {
  Vocabulary v = BaseVocabulary();
  std::map<std::vector<std::string>, int> words;
  for (std::string_view piece : Gpt2PreTokenize(corpus)) ++words[Symbols(piece)];
  for (int k = 0; k < count; ++k) {
    std::map<std::pair<std::string, std::string>, int> freq;
    for (const auto& [w, n] : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) freq[{w[i], w[i + 1]}] += n;
    }
    auto best = freq.end();
    for (auto it = freq.begin(); it != freq.end(); ++it) {
      if (best == freq.end() || it->second > best->second) best = it;
    }
    if (best == freq.end() || best->second < 2) break;
    const auto [a, b] = best->first;
    v.AddMerge(a, b);
    std::map<std::vector<std::string>, int> next;
    for (const auto& [w, n] : words) {
      std::vector<std::string> m;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          m.push_back(a + b);
          ++i;
        } else {
          m.push_back(w[i]);
        }
      }
      next[m] += n;
    }
    words = std::move(next);
  }
  v.AddToken("<|endoftext|>");
  return v;
}

// encoder.py's bpe() on one piece, literally: string symbols, global minimum rank, then a
// left-to-right merge of every occurrence.
std::vector<int32_t> ReferenceEncodePiece(const Vocabulary& v, std::string_view piece) {
  std::vector<std::string> word = Symbols(piece);
  while (word.size() > 1) {
    int best = -1;
    std::pair<std::string, std::string> bigram;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      const auto it = v.ranks.find({word[i], word[i + 1]});
      if (it != v.ranks.end() && (best < 0 || it->second < best)) {
        best = it->second;
        bigram = it->first;
      }
    }
    if (best < 0) break;
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == bigram.first && word[i + 1] == bigram.second) {
        merged.push_back(word[i] + word[i + 1]);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word = std::move(merged);
  }
  std::vector<int32_t> ids;
  for (const std::string& s : word) ids.push_back(v.ids.at(s));
  return ids;
}

std::vector<int32_t> ReferenceEncode(const Vocabulary& v, const std::string& text) {
  std::vector<int32_t> ids;
  for (std::string_view piece : Gpt2PreTokenize(text)) {
    const std::vector<int32_t> p = ReferenceEncodePiece(v, piece);
    ids.insert(ids.end(), p.begin(), p.end());
  }
  return ids;
}

constexpr char kCorpus[] =
    "the cat sat on the mat. the dog ate the bone, and then the other dog ate the rest.\n"
    "there the three thin thieves thought that the theatre was theirs; they'll see.\n"
    "In Tromsø the fjord is cold – the fjord is deep, and the fjords are many. 1234 12 123\n"
    "Hello, hello world! The world's the thing. Whether the weather is hot or the weather is not.\n";

class BpeTest : public testing_util::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    vocab_ = Learn(std::string(kCorpus) + kCorpus, 120);
    vocab_.Write(dir_.string());
    StatusOr<std::unique_ptr<Tokenizer>> t = MakeGpt2Tokenizer(dir_.string());
    ASSERT_TRUE(t.ok()) << t.status().message();
    tok_ = std::move(t.value());
  }

  std::string LoadError() {
    StatusOr<std::unique_ptr<Tokenizer>> t = MakeGpt2Tokenizer(dir_.string());
    EXPECT_FALSE(t.ok());
    return t.ok() ? "" : t.status().message();
  }

  Vocabulary vocab_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(BpeTest, NameAndVocabularySize) {
  EXPECT_EQ(tok_->name(), "gpt2");
  EXPECT_EQ(tok_->vocab_size(), static_cast<int>(vocab_.tokens.size()));
  EXPECT_GT(vocab_.merges.size(), 60u);  // the trainer learned something
}

TEST_F(BpeTest, LearnedMergesApply) {
  ASSERT_TRUE(vocab_.ids.count("th") && vocab_.ids.count("the"));
  EXPECT_THAT(tok_->Encode("the"), ElementsAreArray({vocab_.ids.at("the")}));
  const std::string space_the = Utf8(0x120) + "the";  // U+0120 stands for the space byte
  ASSERT_TRUE(vocab_.ids.count(space_the));
  EXPECT_THAT(tok_->Encode(" the"), ElementsAreArray({vocab_.ids.at(space_the)}));
  // A word never seen splits into smaller learned pieces, never into nothing.
  EXPECT_GT(tok_->Encode("xylophone").size(), 1u);
}

TEST_F(BpeTest, EncodeMatchesEncoderPyAndDecodeInvertsIt) {
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  const std::vector<std::string> texts = {
      kCorpus,
      "the theatre, the thin thieves; THE END.",
      "   leading and trailing spaces   ",
      "lines\n\n\nwith\r\nbreaks\tand\ttabs",
      "digits 0 12 345 6789 3.14159 -42 1e10",
      "punctuation!?... (brackets) [more] {and} \"quotes\" 'single' don't they're",
      "Tromsø – fjord, Ålesund, naïve café, Привет мир, 日本語",
      "aaaaaaaaaaaaaaaaa thethethethe eeeeeeee",
      all_bytes,
      "broken \xC3 utf8 \xFF\xFE here",
      "<|endoftext|>",
  };
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = tok_->Encode(text);
    EXPECT_EQ(ids, ReferenceEncode(vocab_, text)) << text;
    EXPECT_EQ(tok_->Decode(ids), text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok_->vocab_size());
  }
}

TEST_F(BpeTest, SpecialTokensAreOrdinaryTextWhenEncodingAndDecodeToTheirText) {
  const int eot = vocab_.ids.at("<|endoftext|>");
  const std::vector<int32_t> ids = tok_->Encode("<|endoftext|>");
  EXPECT_GT(ids.size(), 1u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), eot), 0);
  EXPECT_EQ(tok_->Decode({eot}), "<|endoftext|>");
  EXPECT_EQ(tok_->Decode({vocab_.ids.at("the"), -1, tok_->vocab_size(), eot}),
            "the\xEF\xBF\xBD\xEF\xBF\xBD<|endoftext|>");
}

TEST_F(BpeTest, LongPiecesEncodeQuicklyAndRoundTrip) {
  const std::string runs =
      std::string(200000, ' ') + "x" + std::string(100000, 'e') + std::string(50000, '7');
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok_->Encode(runs);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(tok_->Decode(ids), runs);
  EXPECT_LT(seconds, 5.0) << "merging must not be quadratic in the piece length";
  const std::string medium = std::string(600, 'e') + " " + std::string(333, ' ') + "the";
  EXPECT_EQ(tok_->Encode(medium), ReferenceEncode(vocab_, medium));
}

// Ranks that no trainer would produce (a pair built from a merged token ranks before the merge
// that builds it) separate "merge every occurrence of the best pair, then look again" from
// "always take the best pair next".
TEST_F(BpeTest, MergeOrderFollowsEncoderPyEvenForUntrainedRanks) {
  Vocabulary v = BaseVocabulary();
  v.AddToken("ab");
  v.AddToken("aa");
  v.AddMerge("ab", "a");  // rank 0: needs "ab", which only rank 1 creates
  v.AddMerge("a", "b");
  v.AddMerge("a", "a");
  v.AddMerge("aa", "a");
  v.AddToken("<|endoftext|>");
  v.Write(dir_.string());
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeGpt2Tokenizer(dir_.string());
  ASSERT_TRUE(t.ok()) << t.status().message();
  for (const std::string text : {"abab", "ababa", "aaaa", "aaaaa", "abaab", "aabab", "baaab"}) {
    EXPECT_EQ(t.value()->Encode(text), ReferenceEncode(v, text)) << text;
  }
  EXPECT_THAT(t.value()->Encode("abab"), ElementsAreArray({v.ids.at("ab"), v.ids.at("ab")}));
}

TEST_F(BpeTest, ReadsOpenAIFileNames) {
  const std::string dir = (dir_ / "openai").string();
  std::filesystem::create_directories(dir);
  vocab_.Write(dir, "encoder.json", "vocab.bpe");
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeGpt2Tokenizer(dir);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t.value()->Encode(kCorpus), tok_->Encode(kCorpus));
}

TEST_F(BpeTest, RefusesMissingFilesNamingWhatIsExpected) {
  std::filesystem::remove(dir_ / "merges.txt");
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr("vocab.json but not"), HasSubstr("merges.txt"), HasSubstr("come as a pair")));
  std::filesystem::remove(dir_ / "vocab.json");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(dir_.string()), HasSubstr("neither vocab.json + merges.txt nor "
                                                                     "encoder.json + vocab.bpe")));
}

TEST_F(BpeTest, RefusesBadVocabulariesNamingFileLineAndToken) {
  const std::string vocab = (dir_ / "vocab.json").string();
  WriteBytes(vocab, "{\"a\": 0,\n \"b\" 1}");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(vocab + ":2:6"), HasSubstr("expected ':'")));
  WriteBytes(vocab, "[1, 2]");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(vocab + ":1:1"), HasSubstr("non-empty JSON object")));
  WriteBytes(vocab, "{\"a\": 0,\n \"b\": 5}");
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr(vocab + ":2:7"), HasSubstr("token \"b\" has id 5"), HasSubstr("0..1")));
  WriteBytes(vocab, "{\"a\": 0, \"b\": 0}");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr("token \"b\" reuses id 0")));
  WriteBytes(vocab, "{\"a\": 0, \"b\": 1}");
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr(vocab), HasSubstr("no token for byte 0"), HasSubstr("all 256 single-byte")));
}

TEST_F(BpeTest, RefusesBadMergesNamingFileAndLine) {
  const std::string merges = (dir_ / "merges.txt").string();
  WriteBytes(merges, "#version: 0.2\nt h\nth\n");
  EXPECT_THAT(LoadError(),
              AllOf(HasSubstr(merges + ":3:"), HasSubstr("expected \"LEFT RIGHT\""), HasSubstr("\"th\"")));
  WriteBytes(merges, "t h\na b c\n");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(merges + ":2:"), HasSubstr("expected \"LEFT RIGHT\"")));
  WriteBytes(merges, "t h\nq z\n");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(merges + ":2:"), HasSubstr("token \"qz\" is not in"),
                                 HasSubstr("do not belong together")));
  WriteBytes(merges, "t h\n\nt h\n");
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(merges + ":3:"), HasSubstr("repeats line 1")));
  WriteBytes(merges, "t h\r\nth e\r\n");  // CRLF line ends are fine
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeGpt2Tokenizer(dir_.string());
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_THAT(t.value()->Encode("the"), ElementsAreArray({vocab_.ids.at("the")}));
}

}  // namespace
}  // namespace fjord
