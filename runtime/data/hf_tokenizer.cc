// The stages of tokenizer.json are built once at load into small tables of closures over plain
// strings: a piece of text flows through added-token splitting, normalization, pre-tokenization
// and the BPE model as std::string, without `tokenizers`' offset bookkeeping (fjord needs ids,
// not offsets). Each stage reproduces the corresponding Rust code of `tokenizers`, which is the
// oracle of tests/runtime/data/hf_tokenizer_test.cc.
#include "runtime/data/hf_tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/data/bpe_tokenizer.h"
#include "runtime/data/regex.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

// ---- Errors that name the field ---------------------------------------------------------------

class Fields {
 public:
  explicit Fields(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }

  Status Error(const JsonValue& at, const std::string& field, const std::string& what) const {
    return InvalidArgument(path_ + ":" + std::to_string(at.line()) + ":" + std::to_string(at.column()) +
                           ": " + field + ": " + what);
  }
  Status Unsupported(const JsonValue& at, const std::string& field, const std::string& value,
                     const std::string& supported) const {
    return Error(at, field,
                 value + " is not supported; fjord reads " + supported +
                     " (docs/ARCHITECTURE.md, \"Tokenizers\"); use the tokenizer with a library that "
                     "implements it, or ask for it to be added");
  }
  // The member `key` of `obj` with type `type` (nullptr when absent and !required).
  StatusOr<const JsonValue*> Get(const JsonValue& obj, const std::string& field, const char* key,
                                 JsonValue::Type type, bool required = true) const {
    const JsonValue* v = obj.Find(key);
    const std::string name = field.empty() ? key : field + "." + key;
    if (v == nullptr || (v->is_null() && !required)) {
      if (required) return Error(obj, name, "missing; a tokenizer.json written by `tokenizers` has it");
      return static_cast<const JsonValue*>(nullptr);
    }
    if (v->type() != type) {
      return Error(*v, name, std::string("expected ") + TypeName(type) + ", got " + v->type_name());
    }
    return v;
  }
  // The string member `key`, or `fallback` when absent or null.
  StatusOr<std::string> String(const JsonValue& obj, const std::string& field, const char* key,
                               std::optional<std::string> fallback = std::nullopt) const {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* v, Get(obj, field, key, JsonValue::Type::kString, !fallback));
    return v ? v->text() : *fallback;
  }
  StatusOr<bool> Bool(const JsonValue& obj, const std::string& field, const char* key, bool fallback) const {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* v, Get(obj, field, key, JsonValue::Type::kBool, false));
    return v ? v->bool_value() : fallback;
  }
  StatusOr<int64_t> Int(const JsonValue& obj, const std::string& field, const char* key) const {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* v, Get(obj, field, key, JsonValue::Type::kNumber));
    const std::optional<int64_t> n = v->AsInt64();
    if (!n || *n < 0 || *n > INT32_MAX)
      return Error(*v, field + "." + key, "expected an integer in [0, 2^31), got " + v->text());
    return *n;
  }

 private:
  static const char* TypeName(JsonValue::Type t) {
    switch (t) {
      case JsonValue::Type::kNull:
        return "null";
      case JsonValue::Type::kBool:
        return "a boolean";
      case JsonValue::Type::kNumber:
        return "a number";
      case JsonValue::Type::kString:
        return "a string";
      case JsonValue::Type::kArray:
        return "an array";
      case JsonValue::Type::kObject:
        return "an object";
    }
    return "?";
  }
  std::string path_;
};

// A pattern of the file, its compile error naming the field.
StatusOr<std::shared_ptr<const Regex>> CompileAt(const std::string& pattern, const Fields& f,
                                                 const JsonValue& at, const std::string& field) {
  StatusOr<std::shared_ptr<const Regex>> regex = Regex::Compile(pattern);
  if (!regex.ok()) return f.Error(at, field, regex.status().message());
  return regex;
}

// A Split/Replace "pattern": {"String": s} or {"Regex": r}. A string is matched literally.
struct Pattern {
  std::string literal;
  std::shared_ptr<const Regex> regex;

  std::vector<std::pair<size_t, size_t>> Matches(std::string_view s) const {
    if (regex) return regex->Matches(s);
    std::vector<std::pair<size_t, size_t>> out;
    if (literal.empty()) return out;
    for (size_t p = s.find(literal); p != std::string_view::npos; p = s.find(literal, p + literal.size())) {
      out.emplace_back(p, p + literal.size());
    }
    return out;
  }
};

StatusOr<Pattern> ParsePattern(const JsonValue& v, const Fields& f, const std::string& field) {
  if (!v.is_object() || v.object().size() != 1 || !v.object()[0].second.is_string()) {
    return f.Error(v, field, "expected {\"String\": \"...\"} or {\"Regex\": \"...\"}");
  }
  const auto& [kind, value] = v.object()[0];
  Pattern p;
  if (kind == "String") {
    p.literal = value.text();
  } else if (kind == "Regex") {
    FJORD_ASSIGN_OR_RETURN(p.regex, CompileAt(value.text(), f, value, field + ".Regex"));
  } else {
    return f.Error(v, field,
                   "expected {\"String\": \"...\"} or {\"Regex\": \"...\"}, got key " + JsonQuote(kind));
  }
  return p;
}

// ---- Pieces of text ---------------------------------------------------------------------------

struct Piece {
  std::string text;
  bool at_start = false;  // begins at offset 0 of the original text (Metaspace's prepend_scheme "first")
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// Splits `piece` at the matches of `pattern`, as NormalizedString::split does.
void SplitPiece(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                SplitBehavior behavior, std::vector<Piece>* out) {
  // Cut points: [begin, end, is_match].
  std::vector<std::tuple<size_t, size_t, bool>> parts;
  size_t last = 0;
  for (auto [b, e] : matches) {
    if (b > last) parts.emplace_back(last, b, false);
    parts.emplace_back(b, e, true);
    last = e;
  }
  if (last < piece.text.size()) parts.emplace_back(last, piece.text.size(), false);
  std::vector<std::pair<size_t, size_t>> spans;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto [b, e, m] : parts) spans.emplace_back(b, e);
      break;
    case SplitBehavior::kRemoved:
      for (auto [b, e, m] : parts)
        if (!m) spans.emplace_back(b, e);
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (auto [b, e, m] : parts) {
        if (m && !spans.empty() && !previous_match) {
          spans.back().second = e;
        } else {
          spans.emplace_back(b, e);
        }
        previous_match = m;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto [b, e, m] : parts) {
        if (!m && !spans.empty() && previous_match) {
          spans.back().second = e;
        } else {
          spans.emplace_back(b, e);
        }
        previous_match = m;
      }
      break;
    }
  }
  for (auto [b, e] : spans) {
    if (e > b) out->push_back({piece.text.substr(b, e - b), piece.at_start && b == 0});
  }
}

std::string ReplaceAll(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches,
                       const std::string& content) {
  std::string out;
  size_t last = 0;
  for (auto [b, e] : matches) {
    out.append(s.substr(last, b - last));
    out += content;
    last = e;
  }
  out.append(s.substr(last));
  return out;
}

std::string Utf8(char32_t c) {
  std::string s;
  AppendUtf8Char(c, &s);
  return s;
}

// ---- The stages -------------------------------------------------------------------------------

using Normalizer = std::function<std::string(std::string)>;
using PreTokenizer = std::function<void(std::vector<Piece>*)>;
using Decoder = std::function<void(std::vector<std::string>*)>;

StatusOr<Normalizer> ParseNormalizer(const JsonValue& v, const Fields& f, const std::string& field) {
  const std::string kSupported = "the normalizers Prepend, Replace, NFC, NFD, NFKC, NFKD and Sequence";
  if (!v.is_object()) return f.Error(v, field, "expected an object or null");
  FJORD_ASSIGN_OR_RETURN(const std::string type, f.String(v, field, "type"));
  if (type == "Sequence") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* list, f.Get(v, field, "normalizers", JsonValue::Type::kArray));
    std::vector<Normalizer> stages;
    for (size_t i = 0; i < list->array().size(); ++i) {
      FJORD_ASSIGN_OR_RETURN(
          Normalizer n,
          ParseNormalizer(list->array()[i], f, field + ".normalizers[" + std::to_string(i) + "]"));
      stages.push_back(std::move(n));
    }
    return Normalizer([stages](std::string s) {
      for (const Normalizer& n : stages) s = n(std::move(s));
      return s;
    });
  }
  if (type == "Prepend") {
    FJORD_ASSIGN_OR_RETURN(const std::string prepend, f.String(v, field, "prepend"));
    return Normalizer([prepend](std::string s) { return s.empty() ? s : prepend + s; });
  }
  if (type == "Replace") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* pattern, f.Get(v, field, "pattern", JsonValue::Type::kObject));
    FJORD_ASSIGN_OR_RETURN(Pattern p, ParsePattern(*pattern, f, field + ".pattern"));
    FJORD_ASSIGN_OR_RETURN(const std::string content, f.String(v, field, "content"));
    return Normalizer([p, content](std::string s) { return ReplaceAll(s, p.Matches(s), content); });
  }
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    UErrorCode error = U_ZERO_ERROR;
    const icu::Normalizer2* n = type == "NFC"    ? icu::Normalizer2::getNFCInstance(error)
                                : type == "NFD"  ? icu::Normalizer2::getNFDInstance(error)
                                : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(error)
                                                 : icu::Normalizer2::getNFKDInstance(error);
    if (U_FAILURE(error)) {
      return f.Error(v, field + ".type", "ICU could not load the " + type + " tables: " + u_errorName(error));
    }
    return Normalizer([n](std::string s) {
      UErrorCode e = U_ZERO_ERROR;
      const icu::UnicodeString out = n->normalize(icu::UnicodeString::fromUTF8(s), e);
      std::string utf8;
      if (U_FAILURE(e)) return s;
      out.toUTF8String(utf8);
      return utf8;
    });
  }
  return f.Unsupported(v, field + ".type", JsonQuote(type), kSupported);
}

StatusOr<PreTokenizer> ParsePreTokenizer(const JsonValue& v, const Fields& f, const std::string& field) {
  const std::string kSupported = "the pre-tokenizers ByteLevel, Split, Metaspace and Sequence";
  if (!v.is_object()) return f.Error(v, field, "expected an object or null");
  FJORD_ASSIGN_OR_RETURN(const std::string type, f.String(v, field, "type"));
  if (type == "Sequence") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* list, f.Get(v, field, "pretokenizers", JsonValue::Type::kArray));
    std::vector<PreTokenizer> stages;
    for (size_t i = 0; i < list->array().size(); ++i) {
      FJORD_ASSIGN_OR_RETURN(
          PreTokenizer p,
          ParsePreTokenizer(list->array()[i], f, field + ".pretokenizers[" + std::to_string(i) + "]"));
      stages.push_back(std::move(p));
    }
    return PreTokenizer([stages](std::vector<Piece>* pieces) {
      for (const PreTokenizer& p : stages) p(pieces);
    });
  }
  if (type == "ByteLevel") {
    FJORD_ASSIGN_OR_RETURN(const bool add_prefix_space, f.Bool(v, field, "add_prefix_space", true));
    FJORD_ASSIGN_OR_RETURN(const bool use_regex, f.Bool(v, field, "use_regex", true));
    std::shared_ptr<const Regex> regex;
    if (use_regex) {
      FJORD_ASSIGN_OR_RETURN(regex, CompileAt(kGpt2Pattern, f, v, field));
    }
    std::vector<std::string> byte_char(256);
    const std::vector<char32_t>& alphabet = Gpt2BytesToUnicode();
    for (int b = 0; b < 256; ++b) byte_char[b] = Utf8(alphabet[b]);
    return PreTokenizer([add_prefix_space, regex, byte_char](std::vector<Piece>* pieces) {
      std::vector<Piece> out;
      for (Piece& p : *pieces) {
        if (p.text.empty()) continue;
        if (add_prefix_space && p.text[0] != ' ') p.text.insert(0, " ");
        if (regex) {
          SplitPiece(p, regex->Matches(p.text), SplitBehavior::kIsolated, &out);
        } else {
          out.push_back(std::move(p));
        }
      }
      for (Piece& p : out) {
        std::string mapped;
        mapped.reserve(p.text.size() * 2);
        for (char c : p.text) mapped += byte_char[static_cast<unsigned char>(c)];
        p.text = std::move(mapped);
      }
      *pieces = std::move(out);
    });
  }
  if (type == "Split") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* pattern, f.Get(v, field, "pattern", JsonValue::Type::kObject));
    FJORD_ASSIGN_OR_RETURN(Pattern p, ParsePattern(*pattern, f, field + ".pattern"));
    FJORD_ASSIGN_OR_RETURN(const JsonValue* behavior_v,
                           f.Get(v, field, "behavior", JsonValue::Type::kString));
    const std::string& name = behavior_v->text();
    SplitBehavior behavior;
    if (name == "Isolated") {
      behavior = SplitBehavior::kIsolated;
    } else if (name == "Removed") {
      behavior = SplitBehavior::kRemoved;
    } else if (name == "MergedWithPrevious") {
      behavior = SplitBehavior::kMergedWithPrevious;
    } else if (name == "MergedWithNext") {
      behavior = SplitBehavior::kMergedWithNext;
    } else {
      return f.Unsupported(*behavior_v, field + ".behavior", JsonQuote(name),
                           "Isolated, Removed, MergedWithPrevious and MergedWithNext");
    }
    FJORD_ASSIGN_OR_RETURN(const bool invert, f.Bool(v, field, "invert", false));
    if (invert) return f.Unsupported(*v.Find("invert"), field + ".invert", "true", "invert: false");
    return PreTokenizer([p, behavior](std::vector<Piece>* pieces) {
      std::vector<Piece> out;
      for (const Piece& piece : *pieces) SplitPiece(piece, p.Matches(piece.text), behavior, &out);
      *pieces = std::move(out);
    });
  }
  if (type == "Metaspace") {
    FJORD_ASSIGN_OR_RETURN(const std::string replacement, f.String(v, field, "replacement"));
    std::string scheme = "always";
    if (v.Find("prepend_scheme") != nullptr) {
      FJORD_ASSIGN_OR_RETURN(scheme, f.String(v, field, "prepend_scheme"));
    } else {  // files before tokenizers 0.14: add_prefix_space
      FJORD_ASSIGN_OR_RETURN(const bool add, f.Bool(v, field, "add_prefix_space", true));
      scheme = add ? "always" : "never";
    }
    if (scheme != "always" && scheme != "first" && scheme != "never") {
      return f.Unsupported(*v.Find("prepend_scheme"), field + ".prepend_scheme", JsonQuote(scheme),
                           "always, first and never");
    }
    FJORD_ASSIGN_OR_RETURN(const bool split, f.Bool(v, field, "split", true));
    const Pattern space{" ", nullptr}, marker{replacement, nullptr};
    return PreTokenizer([replacement, scheme, split, space, marker](std::vector<Piece>* pieces) {
      std::vector<Piece> out;
      for (Piece& p : *pieces) {
        p.text = ReplaceAll(p.text, space.Matches(p.text), replacement);
        const bool starts = p.text.compare(0, replacement.size(), replacement) == 0;
        if (!starts && (scheme == "always" || (scheme == "first" && p.at_start)))
          p.text.insert(0, replacement);
        if (split) {
          SplitPiece(p, marker.Matches(p.text), SplitBehavior::kMergedWithNext, &out);
        } else {
          out.push_back(std::move(p));
        }
      }
      *pieces = std::move(out);
    });
  }
  return f.Unsupported(v, field + ".type", JsonQuote(type), kSupported);
}

// <0xNN> as `tokenizers` spells byte tokens.
std::string ByteTokenName(unsigned char b) {
  static const char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

StatusOr<Decoder> ParseDecoder(const JsonValue& v, const Fields& f, const std::string& field) {
  const std::string kSupported =
      "the decoders ByteLevel, Metaspace, ByteFallback, Fuse, Replace, Strip and Sequence";
  if (!v.is_object()) return f.Error(v, field, "expected an object or null");
  FJORD_ASSIGN_OR_RETURN(const std::string type, f.String(v, field, "type"));
  if (type == "Sequence") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* list, f.Get(v, field, "decoders", JsonValue::Type::kArray));
    std::vector<Decoder> stages;
    for (size_t i = 0; i < list->array().size(); ++i) {
      FJORD_ASSIGN_OR_RETURN(
          Decoder d, ParseDecoder(list->array()[i], f, field + ".decoders[" + std::to_string(i) + "]"));
      stages.push_back(std::move(d));
    }
    return Decoder([stages](std::vector<std::string>* tokens) {
      for (const Decoder& d : stages) d(tokens);
    });
  }
  if (type == "ByteLevel") {
    std::unordered_map<char32_t, char> char_byte;
    const std::vector<char32_t>& alphabet = Gpt2BytesToUnicode();
    for (int b = 0; b < 256; ++b) char_byte[alphabet[b]] = static_cast<char>(b);
    return Decoder([char_byte](std::vector<std::string>* tokens) {
      std::string bytes;
      for (const std::string& t : *tokens) {
        std::string mine;
        bool all = true;
        for (size_t i = 0; i < t.size() && all;) {
          size_t len;
          const auto it = char_byte.find(DecodeUtf8Char(t, i, &len));
          if (it == char_byte.end())
            all = false;
          else
            mine.push_back(it->second);
          i += len;
        }
        bytes += all ? mine : t;
      }
      *tokens = {bytes};
    });
  }
  if (type == "Metaspace") {
    FJORD_ASSIGN_OR_RETURN(const std::string replacement, f.String(v, field, "replacement"));
    std::string scheme = "always";
    if (v.Find("prepend_scheme") != nullptr) {
      FJORD_ASSIGN_OR_RETURN(scheme, f.String(v, field, "prepend_scheme"));
    } else {
      FJORD_ASSIGN_OR_RETURN(const bool add, f.Bool(v, field, "add_prefix_space", true));
      scheme = add ? "always" : "never";
    }
    return Decoder([replacement, scheme](std::vector<std::string>* tokens) {
      for (size_t i = 0; i < tokens->size(); ++i) {
        std::string& t = (*tokens)[i];
        std::string out;
        for (size_t p = 0; p < t.size();) {
          if (!replacement.empty() && t.compare(p, replacement.size(), replacement) == 0) {
            if (!(i == 0 && p == 0 && scheme != "never")) out += ' ';
            p += replacement.size();
          } else {
            out += t[p++];
          }
        }
        t = std::move(out);
      }
    });
  }
  if (type == "ByteFallback") {
    return Decoder([](std::vector<std::string>* tokens) {
      std::vector<std::string> out;
      std::string bytes;
      bool pending = false;
      for (std::string& t : *tokens) {
        const bool is_byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                             std::isxdigit(static_cast<unsigned char>(t[3])) &&
                             std::isxdigit(static_cast<unsigned char>(t[4]));
        if (is_byte) {
          bytes.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
          pending = true;
          continue;
        }
        if (pending) out.push_back(std::move(bytes)), bytes.clear(), pending = false;
        out.push_back(std::move(t));
      }
      if (pending) out.push_back(std::move(bytes));
      *tokens = std::move(out);
    });
  }
  if (type == "Fuse") {
    return Decoder([](std::vector<std::string>* tokens) {
      std::string all;
      for (const std::string& t : *tokens) all += t;
      *tokens = {all};
    });
  }
  if (type == "Replace") {
    FJORD_ASSIGN_OR_RETURN(const JsonValue* pattern, f.Get(v, field, "pattern", JsonValue::Type::kObject));
    FJORD_ASSIGN_OR_RETURN(Pattern p, ParsePattern(*pattern, f, field + ".pattern"));
    FJORD_ASSIGN_OR_RETURN(const std::string content, f.String(v, field, "content"));
    return Decoder([p, content](std::vector<std::string>* tokens) {
      for (std::string& t : *tokens) t = ReplaceAll(t, p.Matches(t), content);
    });
  }
  if (type == "Strip") {
    FJORD_ASSIGN_OR_RETURN(const std::string content, f.String(v, field, "content"));
    FJORD_ASSIGN_OR_RETURN(const int64_t start, f.Int(v, field, "start"));
    FJORD_ASSIGN_OR_RETURN(const int64_t stop, f.Int(v, field, "stop"));
    return Decoder([content, start, stop](std::vector<std::string>* tokens) {
      for (std::string& t : *tokens) {
        size_t b = 0, e = t.size();
        for (int64_t k = 0; k < start && !content.empty() && t.compare(b, content.size(), content) == 0; ++k)
          b += content.size();
        for (int64_t k = 0; k < stop && !content.empty() && e >= b + content.size() &&
                            t.compare(e - content.size(), content.size(), content) == 0;
             ++k)
          e -= content.size();
        t = t.substr(b, e - b);
      }
    });
  }
  return f.Unsupported(v, field + ".type", JsonQuote(type), kSupported);
}

// ---- The tokenizer ----------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
  bool normalized;
};

struct Merge {
  int rank;
  int32_t merged;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class HfTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "hf"; }
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  std::optional<int32_t> end_of_text() const override { return eos_; }

  std::vector<int32_t> Encode(std::string_view text) const override;
  std::string Decode(const std::vector<int32_t>& ids) const override;

  static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);

 private:
  // Added tokens by first byte, longest first.
  using AddedIndex = std::array<std::vector<const AddedToken*>, 256>;

  // Splits `text` at the tokens of `added` (leftmost, then longest); calls piece(text, begins_at_0)
  // for the text between them and token(id) for each.
  void SplitAdded(std::string_view text, bool at_start, const AddedIndex& added,
                  const std::function<void(std::string_view, bool)>& piece,
                  const std::function<void(int32_t)>& token) const;
  void EncodeWord(const std::string& word, std::vector<int32_t>* out) const;

  std::unordered_map<std::string, int32_t> vocab_;  // model.vocab
  std::vector<std::string> id_to_token_;            // model.vocab and added_tokens
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<AddedToken> added_;
  AddedIndex raw_added_, normalized_added_;  // matched before / after normalizing
  std::unordered_set<int32_t> special_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  Decoder decoder_;
  std::vector<std::vector<int32_t>> template_;  // the "single" template: {} stands for the text
  std::optional<std::string> unk_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  std::optional<int32_t> eos_;
};

void HfTokenizer::SplitAdded(std::string_view text, bool at_start, const AddedIndex& added,
                             const std::function<void(std::string_view, bool)>& piece,
                             const std::function<void(int32_t)>& token) const {
  size_t last = 0;
  for (size_t i = 0; i < text.size();) {
    const AddedToken* best = nullptr;
    for (const AddedToken* t : added[static_cast<unsigned char>(text[i])]) {
      if (text.compare(i, t->content.size(), t->content) == 0) {
        best = t;
        break;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    if (i > last) piece(text.substr(last, i - last), at_start && last == 0);
    token(best->id);
    i += best->content.size();
    last = i;
  }
  if (last < text.size()) piece(text.substr(last), at_start && last == 0);
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  auto encode_pieces = [&](std::string_view raw, bool at_start) {
    const std::string normalized = normalizer_ ? normalizer_(std::string(raw)) : std::string(raw);
    SplitAdded(
        normalized, at_start, normalized_added_,
        [&](std::string_view s, bool start) {
          std::vector<Piece> pieces = {{std::string(s), start}};
          if (pre_tokenizer_) pre_tokenizer_(&pieces);
          for (const Piece& p : pieces) EncodeWord(p.text, &ids);
        },
        [&](int32_t id) { ids.push_back(id); });
  };
  std::vector<int32_t> encoded;
  SplitAdded(text, true, raw_added_, encode_pieces, [&](int32_t id) { ids.push_back(id); });
  if (template_.empty()) return ids;
  for (const std::vector<int32_t>& part : template_) {
    if (part.empty()) {
      encoded.insert(encoded.end(), ids.begin(), ids.end());
    } else {
      encoded.insert(encoded.end(), part.begin(), part.end());
    }
  }
  return encoded;
}

void HfTokenizer::EncodeWord(const std::string& word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // The word's symbols, as BPE::merge_word builds them.
  std::vector<int32_t> sym;
  std::optional<int32_t> unk_id;
  if (unk_) unk_id = vocab_.at(*unk_);
  bool unk_pending = false;
  for (size_t i = 0; i < word.size();) {
    size_t len;
    DecodeUtf8Char(word, i, &len);
    const std::string ch = word.substr(i, len);
    i += len;
    if (const auto it = vocab_.find(ch); it != vocab_.end()) {
      if (unk_pending) sym.push_back(*unk_id), unk_pending = false;
      sym.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (unsigned char b : ch) {
        const auto it = vocab_.find(ByteTokenName(b));
        if (it == vocab_.end()) break;
        bytes.push_back(it->second);
      }
      if (bytes.size() == ch.size()) {
        sym.insert(sym.end(), bytes.begin(), bytes.end());
        continue;
      }
    }
    if (unk_id) {
      if (unk_pending && !fuse_unk_) sym.push_back(*unk_id);
      unk_pending = true;
    }  // else: `tokenizers` drops the character
  }
  if (unk_pending) sym.push_back(*unk_id);

  // Word::merge_all: one merge at a time, the lowest (rank, position) first.
  const int n = static_cast<int>(sym.size());
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  using Candidate = std::tuple<int, int, int32_t>;  // rank, position, merged id
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const auto it = merges_.find(PairKey(sym[left], sym[next[left]]));
    if (it != merges_.end()) heap.push({it->second.rank, left, it->second.merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const auto [rank, left, merged] = heap.top();
    heap.pop();
    if (!alive[left] || next[left] < 0) continue;
    const int right = next[left];
    const auto it = merges_.find(PairKey(sym[left], sym[right]));
    if (it == merges_.end() || it->second.merged != merged) continue;  // stale
    sym[left] = merged;
    alive[right] = false;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push(prev[left]);
    push(left);
  }
  for (int i = 0; i >= 0 && n > 0; i = next[i]) out->push_back(sym[i]);
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  std::string out;
  auto flush = [&] {
    if (tokens.empty()) return;
    if (decoder_) {
      decoder_(&tokens);
      for (const std::string& t : tokens) out += t;
    } else {
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    }
    tokens.clear();
  };
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {  // the interface's rule (tokenizers skips such ids)
      flush();
      out += "\xEF\xBF\xBD";
      continue;
    }
    if (special_.count(id) == 0) tokens.push_back(id_to_token_[id]);
  }
  flush();
  return out;
}

StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Load(const std::string& path) {
  FJORD_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path, "Hugging Face tokenizer"));
  FJORD_ASSIGN_OR_RETURN(const JsonValue json, ParseJson(text, path));
  const Fields f(path);
  if (!json.is_object()) return f.Error(json, "(top level)", "expected a JSON object, as tokenizers writes");
  auto tok = std::make_unique<HfTokenizer>();

  for (const char* key : {"truncation", "padding"}) {
    if (const JsonValue* v = json.Find(key); v != nullptr && !v->is_null()) {
      return f.Unsupported(*v, key, "a " + std::string(key) + " setting",
                           std::string(key) + ": null (fjord tokenizes whole documents; set it to null)");
    }
  }

  // model
  FJORD_ASSIGN_OR_RETURN(const JsonValue* model, f.Get(json, "", "model", JsonValue::Type::kObject));
  FJORD_ASSIGN_OR_RETURN(const std::string type, f.String(*model, "model", "type"));
  if (type != "BPE") {
    return f.Unsupported(*model->Find("type"), "model.type", JsonQuote(type),
                         "BPE models (byte-level, or with byte_fallback)");
  }
  if (const JsonValue* d = model->Find("dropout"); d != nullptr && !d->is_null() && d->number() != 0.0) {
    return f.Unsupported(*d, "model.dropout", d->text(),
                         "dropout: null (dropout is for training a tokenizer)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const JsonValue* v = model->Find(key);
        v != nullptr && !v->is_null() && !(v->is_string() && v->text().empty())) {
      return f.Unsupported(*v, std::string("model.") + key, JsonQuote(v->text()),
                           std::string(key) + ": null");
    }
  }
  FJORD_ASSIGN_OR_RETURN(tok->byte_fallback_, f.Bool(*model, "model", "byte_fallback", false));
  FJORD_ASSIGN_OR_RETURN(tok->fuse_unk_, f.Bool(*model, "model", "fuse_unk", false));
  FJORD_ASSIGN_OR_RETURN(tok->ignore_merges_, f.Bool(*model, "model", "ignore_merges", false));
  FJORD_ASSIGN_OR_RETURN(const JsonValue* vocab, f.Get(*model, "model", "vocab", JsonValue::Type::kObject));
  std::unordered_map<int32_t, std::pair<std::string, const JsonValue*>> by_id;
  for (const auto& [token, id_v] : vocab->object()) {
    const std::optional<int64_t> id = id_v.AsInt64();
    if (!id || *id < 0 || *id > INT32_MAX) {
      return f.Error(id_v, "model.vocab[" + JsonQuote(token) + "]",
                     "expected a token id (an integer >= 0), got " + id_v.text());
    }
    if (const auto [it, fresh] = by_id.emplace(static_cast<int32_t>(*id), std::pair{token, &id_v}); !fresh) {
      return f.Error(id_v, "model.vocab[" + JsonQuote(token) + "]",
                     "id " + std::to_string(*id) + " also belongs to " + JsonQuote(it->second.first) +
                         "; every id must belong to one token");
    }
    tok->vocab_.emplace(token, static_cast<int32_t>(*id));
  }
  if (const JsonValue* unk = model->Find("unk_token"); unk != nullptr && !unk->is_null()) {
    if (!unk->is_string() || tok->vocab_.count(unk->text()) == 0) {
      return f.Error(*unk, "model.unk_token", JsonQuote(unk->text()) + " is not in model.vocab");
    }
    tok->unk_ = unk->text();
  }

  // added_tokens: ids in the vocabulary keep their token; others extend it.
  if (const JsonValue* added = json.Find("added_tokens"); added != nullptr && !added->is_null()) {
    if (!added->is_array()) return f.Error(*added, "added_tokens", "expected an array");
    for (size_t i = 0; i < added->array().size(); ++i) {
      const JsonValue& a = added->array()[i];
      const std::string field = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object()) return f.Error(a, field, "expected an object");
      AddedToken t;
      FJORD_ASSIGN_OR_RETURN(const int64_t id, f.Int(a, field, "id"));
      t.id = static_cast<int32_t>(id);
      FJORD_ASSIGN_OR_RETURN(t.content, f.String(a, field, "content"));
      if (t.content.empty()) return f.Error(a, field + ".content", "an added token cannot be empty");
      FJORD_ASSIGN_OR_RETURN(t.special, f.Bool(a, field, "special", false));
      FJORD_ASSIGN_OR_RETURN(t.normalized, f.Bool(a, field, "normalized", !t.special));
      for (const char* key : {"single_word", "lstrip", "rstrip"}) {
        FJORD_ASSIGN_OR_RETURN(const bool on, f.Bool(a, field, key, false));
        if (on) return f.Unsupported(*a.Find(key), field + "." + key, "true", std::string(key) + ": false");
      }
      if (const auto it = by_id.find(t.id); it != by_id.end() && it->second.first != t.content) {
        return f.Error(a, field + ".id",
                       "id " + std::to_string(t.id) + " is " + JsonQuote(it->second.first) +
                           " in model.vocab, not " + JsonQuote(t.content) + "; the file is inconsistent");
      }
      by_id.emplace(t.id, std::pair{t.content, &a});
      tok->added_.push_back(std::move(t));
    }
  }
  const size_t n = by_id.size();
  tok->id_to_token_.resize(n);
  for (auto& [id, token] : by_id) {
    if (static_cast<size_t>(id) >= n) {
      return f.Error(*token.second, "token " + JsonQuote(token.first),
                     "has id " + std::to_string(id) + " but the vocabulary has " + std::to_string(n) +
                         " tokens; ids must be 0.." + std::to_string(n - 1) + " without gaps");
    }
    tok->id_to_token_[id] = token.first;
  }

  // merges: "LEFT RIGHT" strings (tokenizers < 0.20) or [LEFT, RIGHT] pairs.
  FJORD_ASSIGN_OR_RETURN(const JsonValue* merges, f.Get(*model, "model", "merges", JsonValue::Type::kArray));
  for (size_t i = 0; i < merges->array().size(); ++i) {
    const JsonValue& m = merges->array()[i];
    const std::string field = "model.merges[" + std::to_string(i) + "]";
    std::string left, right;
    if (m.is_string()) {
      const size_t space = m.text().find(' ');
      if (space == std::string::npos || m.text().find(' ', space + 1) != std::string::npos) {
        return f.Error(m, field,
                       "expected \"LEFT RIGHT\" (two tokens, one space), got " + JsonQuote(m.text()));
      }
      left = m.text().substr(0, space), right = m.text().substr(space + 1);
    } else if (m.is_array() && m.array().size() == 2 && m.array()[0].is_string() &&
               m.array()[1].is_string()) {
      left = m.array()[0].text(), right = m.array()[1].text();
    } else {
      return f.Error(m, field, "expected \"LEFT RIGHT\" or [\"LEFT\", \"RIGHT\"]");
    }
    const auto l = tok->vocab_.find(left), r = tok->vocab_.find(right), mm = tok->vocab_.find(left + right);
    for (const auto& [it, token] : {std::pair{l, left}, std::pair{r, right}, std::pair{mm, left + right}}) {
      if (it == tok->vocab_.end()) {
        return f.Error(m, field, "token " + JsonQuote(token) + " is not in model.vocab; the file is corrupt");
      }
    }
    if (!tok->merges_.emplace(PairKey(l->second, r->second), Merge{static_cast<int>(i), mm->second}).second) {
      return f.Error(m, field, "the pair " + JsonQuote(left + " " + right) + " is merged twice");
    }
  }

  // normalizer, pre_tokenizer, decoder
  if (const JsonValue* v = json.Find("normalizer"); v != nullptr && !v->is_null()) {
    FJORD_ASSIGN_OR_RETURN(tok->normalizer_, ParseNormalizer(*v, f, "normalizer"));
  }
  if (const JsonValue* v = json.Find("pre_tokenizer"); v != nullptr && !v->is_null()) {
    FJORD_ASSIGN_OR_RETURN(tok->pre_tokenizer_, ParsePreTokenizer(*v, f, "pre_tokenizer"));
  }
  if (const JsonValue* v = json.Find("decoder"); v != nullptr && !v->is_null()) {
    FJORD_ASSIGN_OR_RETURN(tok->decoder_, ParseDecoder(*v, f, "decoder"));
  }

  // Added tokens with "normalized" are matched in normalized text, so their content is normalized too.
  for (AddedToken& t : tok->added_) {
    if (t.special) tok->special_.insert(t.id);
    if (t.normalized && tok->normalizer_) t.content = tok->normalizer_(t.content);
  }
  for (const AddedToken& t : tok->added_) {
    if (t.content.empty()) continue;
    AddedIndex& index = t.normalized ? tok->normalized_added_ : tok->raw_added_;
    index[static_cast<unsigned char>(t.content[0])].push_back(&t);
  }
  for (AddedIndex* index : {&tok->raw_added_, &tok->normalized_added_}) {
    for (auto& bucket : *index) {
      std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* a, const AddedToken* b) {
        return a->content.size() > b->content.size();
      });
    }
  }

  // post_processor: TemplateProcessing's "single" template; ByteLevel leaves ids alone.
  std::function<Status(const JsonValue&, const std::string&)> post = [&](const JsonValue& v,
                                                                         const std::string& field) -> Status {
    if (!v.is_object()) return f.Error(v, field, "expected an object or null");
    FJORD_ASSIGN_OR_RETURN(const std::string ptype, f.String(v, field, "type"));
    if (ptype == "ByteLevel") return OkStatus();
    if (ptype == "Sequence") {
      FJORD_ASSIGN_OR_RETURN(const JsonValue* list, f.Get(v, field, "processors", JsonValue::Type::kArray));
      for (size_t i = 0; i < list->array().size(); ++i) {
        FJORD_RETURN_IF_ERROR(post(list->array()[i], field + ".processors[" + std::to_string(i) + "]"));
      }
      return OkStatus();
    }
    if (ptype != "TemplateProcessing") {
      return f.Unsupported(*v.Find("type"), field + ".type", JsonQuote(ptype),
                           "the post-processors TemplateProcessing, ByteLevel and Sequence");
    }
    if (!tok->template_.empty()) return f.Error(v, field, "a second TemplateProcessing is not supported");
    FJORD_ASSIGN_OR_RETURN(const JsonValue* single, f.Get(v, field, "single", JsonValue::Type::kArray));
    FJORD_ASSIGN_OR_RETURN(const JsonValue* specials,
                           f.Get(v, field, "special_tokens", JsonValue::Type::kObject));
    bool has_sequence = false;
    for (size_t i = 0; i < single->array().size(); ++i) {
      const JsonValue& item = single->array()[i];
      const std::string ifield = field + ".single[" + std::to_string(i) + "]";
      if (const JsonValue* s = item.Find("Sequence"); s != nullptr) {
        FJORD_ASSIGN_OR_RETURN(const std::string which, f.String(*s, ifield + ".Sequence", "id"));
        if (which != "A")
          return f.Error(*s, ifield + ".Sequence.id", "the single template's sequence is \"A\"");
        tok->template_.push_back({});
        has_sequence = true;
      } else if (const JsonValue* st = item.Find("SpecialToken"); st != nullptr) {
        FJORD_ASSIGN_OR_RETURN(const std::string name, f.String(*st, ifield + ".SpecialToken", "id"));
        const JsonValue* entry = specials->Find(name);
        if (entry == nullptr) {
          return f.Error(*st, ifield + ".SpecialToken.id",
                         JsonQuote(name) + " is not in " + field + ".special_tokens");
        }
        FJORD_ASSIGN_OR_RETURN(const JsonValue* ids, f.Get(*entry, field + ".special_tokens." + name, "ids",
                                                           JsonValue::Type::kArray));
        std::vector<int32_t> part;
        for (const JsonValue& id : ids->array()) {
          const std::optional<int64_t> x = id.AsInt64();
          if (!x || *x < 0 || static_cast<size_t>(*x) >= n) {
            return f.Error(id, field + ".special_tokens." + name + ".ids",
                           "expected token ids in [0, " + std::to_string(n) + "), got " + id.text());
          }
          part.push_back(static_cast<int32_t>(*x));
        }
        if (part.empty()) continue;
        tok->template_.push_back(std::move(part));
      } else {
        return f.Error(item, ifield, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
    if (!has_sequence)
      return f.Error(*single, field + ".single", "the template has no {\"Sequence\": {\"id\": \"A\"}}");
    return OkStatus();
  };
  if (const JsonValue* v = json.Find("post_processor"); v != nullptr && !v->is_null()) {
    FJORD_RETURN_IF_ERROR(post(*v, "post_processor"));
  }

  // The end-of-text token `fjord sample` starts from on an empty prompt: a special token named so.
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>"}) {
    if (const auto it = std::find_if(tok->added_.begin(), tok->added_.end(),
                                     [&](const AddedToken& t) { return t.special && t.content == name; });
        it != tok->added_.end()) {
      tok->eos_ = it->id;
      break;
    }
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> MakeHfTokenizer(const std::string& path) {
  const std::string file = fs::is_directory(path) ? path + "/tokenizer.json" : path;
  if (!fs::exists(file)) {
    return NotFound(
        "Hugging Face tokenizer: " + file +
        " does not exist; copy the model's tokenizer.json (from its Hugging Face repository, next to "
        "config.json) into " +
        path);
  }
  return HfTokenizer::Load(file);
}

}  // namespace fjord
