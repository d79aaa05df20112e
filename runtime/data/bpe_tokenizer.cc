// Symbols are token ids from the start (each byte's single-character token), so a merge is a
// lookup of the id pair. The merge loop keeps the symbols in a linked list and candidate pairs
// in a min-heap ordered by (rank, position): all pairs of the lowest rank are merged left to
// right as one batch and the pairs a batch creates are queued only after it, which reproduces
// encoder.py's loop exactly in O(n log n) instead of O(n^2) for long pieces (runs of spaces,
// digits or punctuation).
#include "runtime/data/bpe_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <queue>
#include <unordered_map>

#include "common/check.h"
#include "common/file_util.h"
#include "common/json.h"
#include "runtime/data/regex.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

}  // namespace

char32_t DecodeUtf8Char(std::string_view s, size_t i, size_t* len) {
  const unsigned char b0 = static_cast<unsigned char>(s[i]);
  *len = 1;
  if (b0 < 0x80) return b0;
  int n;
  char32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalidUtf8;
  }
  if (i + n > s.size()) return kInvalidUtf8;
  for (int k = 1; k < n; ++k) {
    const unsigned char b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return kInvalidUtf8;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalidUtf8;
  *len = n;
  return cp;
}

const std::vector<char32_t>& Gpt2BytesToUnicode() {
  static const std::vector<char32_t> map = [] {
    std::vector<char32_t> m(256);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      m[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return m;
  }();
  return map;
}

namespace {

// ---- The tokenizer ---------------------------------------------------------------------------

struct Merge {
  int rank;
  int32_t merged;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "gpt2"; }
  int vocab_size() const override { return static_cast<int>(token_bytes_.size()); }
  std::optional<int32_t> end_of_text() const override { return eot_; }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 1);
    for (std::string_view piece : Gpt2PreTokenize(text)) EncodePiece(piece, &ids);
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id >= 0 && id < vocab_size()) {
        out += token_bytes_[id];
      } else {
        out += "\xEF\xBF\xBD";  // U+FFFD
      }
    }
    return out;
  }

  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& vocab_path,
                                                   const std::string& merges_path);

 private:
  void EncodePiece(std::string_view piece, std::vector<int32_t>* out) const;

  std::vector<std::string> token_bytes_;  // id -> the bytes it decodes to
  int32_t byte_token_[256] = {};          // byte -> its single-character token
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> eot_;  // <|endoftext|>
};

void Gpt2Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>* out) const {
  const int n = static_cast<int>(piece.size());
  if (n == 1) {
    out->push_back(byte_token_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  struct Symbol {
    int32_t id;
    int prev, next;  // -1 at the ends
    bool alive;
  };
  std::vector<Symbol> sym(n);
  for (int i = 0; i < n; ++i)
    sym[i] = {byte_token_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, true};

  using Candidate = std::pair<int, int>;  // (rank, left symbol index)
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int left) {
    if (left < 0 || sym[left].next < 0) return;
    const auto it = merges_.find(PairKey(sym[left].id, sym[sym[left].next].id));
    if (it != merges_.end()) heap.push({it->second.rank, left});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);

  std::vector<int> merged_at;
  while (!heap.empty()) {
    const int rank = heap.top().first;
    merged_at.clear();
    while (!heap.empty() && heap.top().first == rank) {
      const int left = heap.top().second;
      heap.pop();
      // Stale when the left symbol was consumed or either side changed since it was queued.
      if (!sym[left].alive || sym[left].next < 0) continue;
      const int right = sym[left].next;
      const auto it = merges_.find(PairKey(sym[left].id, sym[right].id));
      if (it == merges_.end() || it->second.rank != rank) continue;
      sym[left].id = it->second.merged;
      sym[right].alive = false;
      sym[left].next = sym[right].next;
      if (sym[right].next >= 0) sym[sym[right].next].prev = left;
      merged_at.push_back(left);
    }
    for (int left : merged_at) {
      if (!sym[left].alive) continue;
      push(sym[left].prev);
      push(left);
    }
  }
  for (int i = 0; i >= 0; i = sym[i].next) out->push_back(sym[i].id);
}

StatusOr<std::unique_ptr<Tokenizer>> Gpt2Tokenizer::Load(const std::string& vocab_path,
                                                         const std::string& merges_path) {
  auto tok = std::make_unique<Gpt2Tokenizer>();
  const std::vector<char32_t>& byte_to_char = Gpt2BytesToUnicode();
  std::unordered_map<char32_t, int> char_to_byte;
  for (int b = 0; b < 256; ++b) char_to_byte[byte_to_char[b]] = b;

  // vocab.json: {"token": id, ...}
  std::unordered_map<std::string, int32_t> vocab;
  {
    FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(vocab_path, "GPT-2 vocabulary"));
    FJORD_ASSIGN_OR_RETURN(JsonValue json, ParseJson(text, vocab_path));
    auto at = [&](const JsonValue& v) {
      return vocab_path + ":" + std::to_string(v.line()) + ":" + std::to_string(v.column()) + ": ";
    };
    if (!json.is_object() || json.object().empty()) {
      return InvalidArgument(at(json) + "expected a non-empty JSON object mapping each token to its id");
    }
    const size_t n = json.object().size();
    tok->token_bytes_.resize(n);
    std::vector<bool> used(n, false);
    vocab.reserve(n);
    for (const auto& [token, id_value] : json.object()) {
      const std::optional<int64_t> id = id_value.AsInt64();
      if (!id || *id < 0 || *id >= static_cast<int64_t>(n)) {
        return InvalidArgument(at(id_value) + "token " + JsonQuote(token) + " has id " + id_value.text() +
                               "; ids must be the integers 0.." + std::to_string(n - 1) +
                               " (one per token), so the file is corrupt");
      }
      if (used[*id]) {
        return InvalidArgument(at(id_value) + "token " + JsonQuote(token) + " reuses id " +
                               std::to_string(*id) + "; every id must belong to one token");
      }
      used[*id] = true;
      vocab.emplace(token, static_cast<int32_t>(*id));
      // The token's bytes: each character of the byte alphabet is one byte. Tokens with other
      // characters (added special tokens) decode to their own text.
      std::string bytes;
      bool byte_level = true;
      for (size_t i = 0; i < token.size() && byte_level;) {
        size_t len;
        const char32_t c = DecodeUtf8Char(token, i, &len);
        const auto it = char_to_byte.find(c);
        if (it == char_to_byte.end())
          byte_level = false;
        else
          bytes.push_back(static_cast<char>(it->second));
        i += len;
      }
      tok->token_bytes_[*id] = byte_level ? bytes : token;
    }
    for (int b = 0; b < 256; ++b) {
      std::string ch;
      AppendUtf8Char(byte_to_char[b], &ch);
      const auto it = vocab.find(ch);
      if (it == vocab.end()) {
        return InvalidArgument(vocab_path + ": no token for byte " + std::to_string(b) + " (" +
                               JsonQuote(ch) +
                               "); a GPT-2 byte-level vocabulary has all 256 single-byte tokens");
      }
      tok->byte_token_[b] = it->second;
    }
    if (const auto it = vocab.find("<|endoftext|>"); it != vocab.end()) tok->eot_ = it->second;
  }

  // merges.txt: an optional "#version" line, then "LEFT RIGHT" per line in rank order.
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(merges_path, "GPT-2 merges"));
  std::unordered_map<uint64_t, int> first_line;
  int line_no = 0, rank = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.substr(0, 8) == "#version")) continue;
    const std::string where = merges_path + ":" + std::to_string(line_no) + ": ";
    const size_t space = line.find(' ');
    if (space == 0 || space == std::string_view::npos || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      return InvalidArgument(where + "expected \"LEFT RIGHT\" (two tokens separated by one space), got " +
                             JsonQuote(line));
    }
    const std::string left(line.substr(0, space)), right(line.substr(space + 1));
    const auto l = vocab.find(left), r = vocab.find(right), m = vocab.find(left + right);
    for (const auto& [it, token] : {std::pair{l, left}, std::pair{r, right}, std::pair{m, left + right}}) {
      if (it == vocab.end()) {
        return InvalidArgument(where + "token " + JsonQuote(token) + " is not in " + vocab_path +
                               "; the merges and the vocabulary do not belong together");
      }
    }
    const uint64_t key = PairKey(l->second, r->second);
    if (const auto [it, fresh] = first_line.emplace(key, line_no); !fresh) {
      return InvalidArgument(where + "merge " + JsonQuote(line) + " repeats line " +
                             std::to_string(it->second) + "; each pair may be merged once");
    }
    tok->merges_[key] = {rank++, m->second};
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

// llm.c's gpt2_tokenizer.bin: each token's bytes, no merges.
class LlmcTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "llmc"; }
  int vocab_size() const override { return static_cast<int>(token_bytes_.size()); }
  bool can_encode() const override { return false; }
  std::optional<int32_t> end_of_text() const override { return eot_; }
  std::vector<int32_t> Encode(std::string_view) const override { return {}; }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids) out += id >= 0 && id < vocab_size() ? token_bytes_[id] : "\xEF\xBF\xBD";
    return out;
  }

  std::vector<std::string> token_bytes_;
  int32_t eot_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> MakeLlmcTokenizer(const std::string& path) {
  const std::string file = fs::is_directory(path) ? path + "/gpt2_tokenizer.bin" : path;
  if (!fs::exists(file)) {
    return NotFound(
        "llm.c tokenizer: " + file +
        " does not exist; llm.c's train_gpt2.py writes gpt2_tokenizer.bin next to its checkpoints");
  }
  FJORD_ASSIGN_OR_RETURN(const std::string bytes, ReadWholeFile(file, "llm.c tokenizer"));
  constexpr size_t kHeader = 256 * sizeof(uint32_t);
  if (bytes.size() < kHeader) {
    return InvalidArgument(file + ": " + std::to_string(bytes.size()) +
                           " bytes, shorter than llm.c's 1024-byte header; the file is truncated or not a "
                           "gpt2_tokenizer.bin");
  }
  uint32_t header[256];
  std::memcpy(header, bytes.data(), kHeader);
  if (header[0] != 20240328) {
    return InvalidArgument(file + ": header[0] (magic) is " + std::to_string(header[0]) +
                           ", not llm.c's 20240328; this is not a gpt2_tokenizer.bin");
  }
  if (header[1] != 1 && header[1] != 2) {
    return InvalidArgument(file + ": header[1] (version) is " + std::to_string(header[1]) +
                           "; fjord reads versions 1 and 2 of llm.c's tokenizer file");
  }
  const uint32_t n = header[2];
  if (n == 0 || n > (1u << 24)) {
    return InvalidArgument(file + ": header[2] (vocab size) is " + std::to_string(n) + ", expected 1..2^24");
  }
  auto tok = std::make_unique<LlmcTokenizer>();
  tok->eot_ = header[1] == 2 ? static_cast<int32_t>(header[3]) : 50256;  // version 1 is GPT-2's own
  if (static_cast<uint32_t>(tok->eot_) >= n) {
    return InvalidArgument(file + ": the end-of-text token " + std::to_string(tok->eot_) +
                           (header[1] == 2 ? " (header[3])" : " (GPT-2's, for version 1)") +
                           " is outside the vocabulary of " + std::to_string(n) + " tokens");
  }
  tok->token_bytes_.reserve(n);
  size_t pos = kHeader;
  for (uint32_t id = 0; id < n; ++id) {
    if (pos >= bytes.size() || pos + 1 + static_cast<unsigned char>(bytes[pos]) > bytes.size()) {
      return InvalidArgument(file + ": ends inside token " + std::to_string(id) + " of " + std::to_string(n) +
                             " (byte offset " + std::to_string(pos) + "); the file is truncated");
    }
    const size_t len = static_cast<unsigned char>(bytes[pos]);
    if (len == 0) {
      return InvalidArgument(file + ": token " + std::to_string(id) + " (byte offset " + std::to_string(pos) +
                             ") has length 0; every token has at least one byte");
    }
    tok->token_bytes_.emplace_back(bytes, pos + 1, len);
    pos += 1 + len;
  }
  if (pos != bytes.size()) {
    return InvalidArgument(file + ": " + std::to_string(bytes.size() - pos) +
                           " bytes after the last of the " + std::to_string(n) +
                           " tokens (header[2]); the file is corrupt");
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

std::vector<std::string_view> Gpt2PreTokenize(std::string_view text) {
  static const std::shared_ptr<const Regex> regex = [] {
    StatusOr<std::shared_ptr<const Regex>> r = Regex::Compile(kGpt2Pattern);
    FJORD_CHECK(r.ok(), r.status().message());
    return *r;
  }();
  // The matches and, for invalid UTF-8 that no branch matches, the gaps between them.
  std::vector<std::string_view> pieces;
  size_t last = 0;
  for (auto [b, e] : regex->Matches(text)) {
    if (b > last) pieces.push_back(text.substr(last, b - last));
    pieces.push_back(text.substr(b, e - b));
    last = e;
  }
  if (last < text.size()) pieces.push_back(text.substr(last));
  return pieces;
}

StatusOr<std::unique_ptr<Tokenizer>> MakeGpt2Tokenizer(const std::string& dir) {
  for (const auto& [vocab, merges] :
       {std::pair{"vocab.json", "merges.txt"}, std::pair{"encoder.json", "vocab.bpe"}}) {
    const std::string v = dir + "/" + vocab, m = dir + "/" + merges;
    if (fs::exists(v) || fs::exists(m)) {
      if (!fs::exists(v) || !fs::exists(m)) {
        return NotFound("GPT-2 tokenizer in " + dir + ": found " + (fs::exists(v) ? v : m) + " but not " +
                        (fs::exists(v) ? m : v) + "; the two files come as a pair");
      }
      return Gpt2Tokenizer::Load(v, m);
    }
  }
  return NotFound("GPT-2 tokenizer: " + dir +
                  " has neither vocab.json + merges.txt nor encoder.json + vocab.bpe; copy GPT-2's tokenizer "
                  "files (from the gpt2 model on the Hugging Face hub, or OpenAI's release) into it");
}

}  // namespace fjord
