// Symbols are token ids from the start (each byte's single-character token), so a merge is a
// lookup of the id pair. The merge loop keeps the symbols in a linked list and candidate pairs
// in a min-heap ordered by (rank, position): all pairs of the lowest rank are merged left to
// right as one batch and the pairs a batch creates are queued only after it, which reproduces
// encoder.py's loop exactly in O(n log n) instead of O(n^2) for long pieces (runs of spaces,
// digits or punctuation).
#include "runtime/data/bpe_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <iterator>
#include <queue>
#include <unordered_map>

#include "common/file_util.h"
#include "common/json.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

// ---- UTF-8 and character classes -------------------------------------------------------------

enum class CharClass { kLetter, kNumber, kSpace, kOther };

struct Range {
  char32_t lo, hi;
};

// Approximate \p{L} (see the header): sorted, non-overlapping.
constexpr Range kLetters[] = {
    {0x41, 0x5A},     {0x61, 0x7A},      {0xAA, 0xAA},     {0xB5, 0xB5},     {0xBA, 0xBA},
    {0xC0, 0xD6},     {0xD8, 0xF6},      {0xF8, 0x2C1},    {0x2C6, 0x2D1},   {0x2E0, 0x2E4},
    {0x2EC, 0x2EC},   {0x2EE, 0x2EE},    {0x370, 0x374},   {0x376, 0x377},   {0x37A, 0x37D},
    {0x37F, 0x37F},   {0x386, 0x386},    {0x388, 0x38A},   {0x38C, 0x38C},   {0x38E, 0x3A1},
    {0x3A3, 0x3F5},   {0x3F7, 0x481},    {0x48A, 0x52F},   {0x531, 0x556},   {0x559, 0x559},
    {0x560, 0x588},   {0x5D0, 0x5EA},    {0x5EF, 0x5F2},   {0x620, 0x64A},   {0x66E, 0x66F},
    {0x671, 0x6D3},   {0x6D5, 0x6D5},    {0x6E5, 0x6E6},   {0x6EE, 0x6EF},   {0x6FA, 0x6FC},
    {0x6FF, 0x6FF},   {0x904, 0x939},    {0x93D, 0x93D},   {0x950, 0x950},   {0x958, 0x961},
    {0x971, 0x980},   {0xE01, 0xE30},    {0xE32, 0xE33},   {0xE40, 0xE46},   {0x10A0, 0x10C5},
    {0x10D0, 0x10FA}, {0x10FC, 0x1248},  {0x1E00, 0x1FBC}, {0x1FBE, 0x1FBE}, {0x1FC2, 0x1FCC},
    {0x1FD0, 0x1FDB}, {0x1FE0, 0x1FEC},  {0x1FF2, 0x1FFC}, {0x2071, 0x2071}, {0x207F, 0x207F},
    {0x2090, 0x209C}, {0x2102, 0x2102},  {0x2107, 0x2107}, {0x210A, 0x2113}, {0x2115, 0x2115},
    {0x2119, 0x211D}, {0x2124, 0x2124},  {0x2126, 0x2126}, {0x2128, 0x2128}, {0x212A, 0x212D},
    {0x212F, 0x2139}, {0x2C00, 0x2CE4},  {0x2D00, 0x2D25}, {0x3005, 0x3006}, {0x3031, 0x3035},
    {0x303B, 0x303C}, {0x3041, 0x3096},  {0x309D, 0x309F}, {0x30A1, 0x30FA}, {0x30FC, 0x30FF},
    {0x3105, 0x312F}, {0x3131, 0x318E},  {0x31A0, 0x31BF}, {0x31F0, 0x31FF}, {0x3400, 0x4DBF},
    {0x4E00, 0x9FFF}, {0xA000, 0xA48C},  {0xA640, 0xA66E}, {0xA722, 0xA788}, {0xA78B, 0xA7CA},
    {0xAC00, 0xD7A3}, {0xF900, 0xFA6D},  {0xFB00, 0xFB06}, {0xFF21, 0xFF3A}, {0xFF41, 0xFF5A},
    {0xFF66, 0xFFBE}, {0x20000, 0x2FA1D}};

// Approximate \p{N}: decimal digits of several scripts and the common No/Nl forms.
constexpr Range kNumbers[] = {{0x30, 0x39},     {0xB2, 0xB3},     {0xB9, 0xB9},     {0xBC, 0xBE},
                              {0x660, 0x669},   {0x6F0, 0x6F9},   {0x966, 0x96F},   {0x9E6, 0x9EF},
                              {0xE50, 0xE59},   {0x2070, 0x2070}, {0x2074, 0x2079}, {0x2080, 0x2089},
                              {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B}, {0x24EA, 0x24FF},
                              {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029}, {0x3038, 0x303A},
                              {0x3192, 0x3195}, {0x3220, 0x3229}, {0x3248, 0x324F}, {0x3251, 0x325F},
                              {0x3280, 0x3289}, {0x32B1, 0x32BF}, {0xFF10, 0xFF19}};

// Unicode White_Space.
constexpr Range kSpaces[] = {{0x09, 0x0D},     {0x20, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},
                             {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F},
                             {0x205F, 0x205F}, {0x3000, 0x3000}};

template <size_t N>
constexpr bool SortedAndDisjoint(const Range (&ranges)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (ranges[i].lo > ranges[i].hi || (i > 0 && ranges[i - 1].hi >= ranges[i].lo)) return false;
  }
  return true;
}
static_assert(SortedAndDisjoint(kLetters) && SortedAndDisjoint(kNumbers) && SortedAndDisjoint(kSpaces),
              "InRanges binary-searches these tables");

template <size_t N>
bool InRanges(const Range (&ranges)[N], char32_t c) {
  const Range* it = std::upper_bound(std::begin(ranges), std::end(ranges), c,
                                     [](char32_t v, const Range& r) { return v < r.lo; });
  return it != std::begin(ranges) && c <= (it - 1)->hi;
}

CharClass Classify(char32_t c) {
  if (c < 0x80) {  // fast path
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
    if (c >= '0' && c <= '9') return CharClass::kNumber;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (InRanges(kLetters, c)) return CharClass::kLetter;
  if (InRanges(kNumbers, c)) return CharClass::kNumber;
  if (InRanges(kSpaces, c)) return CharClass::kSpace;
  return CharClass::kOther;
}

constexpr char32_t kInvalid = 0xFFFFFFFF;

// Decodes the character at s[i]; sets *len (>= 1). Malformed, overlong or surrogate sequences
// decode as kInvalid of length 1.
char32_t DecodeUtf8(std::string_view s, size_t i, size_t* len) {
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
    return kInvalid;
  }
  if (i + n > s.size()) return kInvalid;
  for (int k = 1; k < n; ++k) {
    const unsigned char b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  *len = n;
  return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {  // the byte alphabet stays below U+0800; larger code points are not produced here
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
// U+0100 onwards in byte order, so every byte has a visible, non-space character.
std::vector<char32_t> BytesToUnicode() {
  std::vector<char32_t> map(256);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

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
  int32_t end_of_text() const override { return end_of_text_; }

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
  int32_t end_of_text_ = -1;  // the id of "<|endoftext|>" when the vocabulary has it
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
  const std::vector<char32_t> byte_to_char = BytesToUnicode();
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
      if (token == "<|endoftext|>") tok->end_of_text_ = static_cast<int32_t>(*id);
      // The token's bytes: each character of the byte alphabet is one byte. Tokens with other
      // characters (added special tokens) decode to their own text.
      std::string bytes;
      bool byte_level = true;
      for (size_t i = 0; i < token.size() && byte_level;) {
        size_t len;
        const char32_t c = DecodeUtf8(token, i, &len);
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
      AppendUtf8(byte_to_char[b], &ch);
      const auto it = vocab.find(ch);
      if (it == vocab.end()) {
        return InvalidArgument(vocab_path + ": no token for byte " + std::to_string(b) + " (" +
                               JsonQuote(ch) +
                               "); a GPT-2 byte-level vocabulary has all 256 single-byte tokens");
      }
      tok->byte_token_[b] = it->second;
    }
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

}  // namespace

std::vector<std::string_view> Gpt2PreTokenize(std::string_view text) {
  struct Char {
    size_t begin;
    char32_t cp;
    CharClass cls;
  };
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const char32_t cp = DecodeUtf8(text, i, &len);
    chars.push_back({i, cp, cp == kInvalid ? CharClass::kOther : Classify(cp)});
    i += len;
  }
  const size_t n = chars.size();
  auto byte_at = [&](size_t i) { return i < n ? chars[i].begin : text.size(); };
  auto run_end = [&](size_t i, CharClass cls) {
    while (i < n && chars[i].cls == cls) ++i;
    return i;
  };
  auto is = [&](size_t i, char c) { return i < n && chars[i].cp == static_cast<char32_t>(c); };

  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < n;) {
    size_t end = i;
    if (is(i, '\'') && (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd'))) {
      end = i + 2;  // 's 't 'm 'd
    } else if (is(i, '\'') && ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
                               (is(i + 1, 'l') && is(i + 2, 'l')))) {
      end = i + 3;  // 're 've 'll
    } else {
      // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional ASCII space, then a run.
      const size_t k = is(i, ' ') ? i + 1 : i;
      if (k < n && chars[k].cls != CharClass::kSpace) {
        end = run_end(k, chars[k].cls);
      } else {
        // "\s+(?!\S)|\s+": a whitespace run, leaving its last character to the next piece when
        // a non-space follows (so " word" keeps its space), unless the run is one character.
        const size_t e = run_end(i, CharClass::kSpace);
        end = (e == n || e - i == 1) ? e : e - 1;
      }
    }
    pieces.push_back(text.substr(byte_at(i), byte_at(end) - byte_at(i)));
    i = end;
  }
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
