// A recursive-descent parser over a string_view. Positions are tracked as the parser skips
// whitespace (the only place a raw newline may occur), so each value gets its line and column
// for free. Nesting is capped so a hostile file cannot exhaust the stack.
#include "common/json.h"

#include <cerrno>
#include <cstdlib>
#include <unordered_set>

#include "common/text.h"

namespace fjord {

const char* JsonValue::type_name() const {
  switch (type_) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "boolean";
    case Type::kNumber:
      return "number";
    case Type::kString:
      return "string";
    case Type::kArray:
      return "array";
    case Type::kObject:
      return "object";
  }
  return "?";
}

double JsonValue::number() const {
  return type_ == Type::kNumber ? std::strtod(text_.c_str(), nullptr) : 0.0;
}

std::optional<int64_t> JsonValue::AsInt64() const {
  if (type_ != Type::kNumber || text_.find_first_of(".eE") != std::string::npos) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text_.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return std::nullopt;
  return static_cast<int64_t>(v);
}

std::optional<uint64_t> JsonValue::AsUint64() const {
  if (type_ != Type::kNumber || text_.empty() || text_[0] == '-' ||
      text_.find_first_of(".eE") != std::string::npos) {
    return std::nullopt;
  }
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text_.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return std::nullopt;
  return static_cast<uint64_t>(v);
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  for (const Member& m : object_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

class JsonParser {
 public:
  JsonParser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  StatusOr<JsonValue> ParseDocument() {
    JsonValue v;
    SkipSpace();
    if (!ParseValue(&v, 0)) return error_;
    SkipSpace();
    if (pos_ != s_.size()) {
      Fail("unexpected text after the JSON value");
      return error_;
    }
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  int Column() const { return static_cast<int>(pos_ - line_start_) + 1; }

  bool Fail(const std::string& what) {
    error_ =
        InvalidArgument(source_ + ":" + std::to_string(line_) + ":" + std::to_string(Column()) + ": " + what);
    return false;
  }

  void SkipSpace() {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '\n') {
        ++line_;
        line_start_ = ++pos_;
      } else if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  bool Literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return Fail("invalid literal; expected a JSON value");
    pos_ += word.size();
    return true;
  }

  bool ParseValue(JsonValue* v, int depth) {
    v->line_ = line_;
    v->column_ = Column();
    if (pos_ >= s_.size()) return Fail("unexpected end of text; expected a JSON value");
    switch (s_[pos_]) {
      case '{':
        return depth < kMaxDepth ? ParseObject(v, depth) : Fail("nesting deeper than 64 levels");
      case '[':
        return depth < kMaxDepth ? ParseArray(v, depth) : Fail("nesting deeper than 64 levels");
      case '"':
        v->type_ = JsonValue::Type::kString;
        return ParseString(&v->text_);
      case 't':
        v->type_ = JsonValue::Type::kBool;
        v->bool_ = true;
        return Literal("true");
      case 'f':
        v->type_ = JsonValue::Type::kBool;
        return Literal("false");
      case 'n':
        return Literal("null");
      default:
        v->type_ = JsonValue::Type::kNumber;
        return ParseNumber(&v->text_);
    }
  }

  bool ParseObject(JsonValue* v, int depth) {
    v->type_ = JsonValue::Type::kObject;
    ++pos_;
    std::unordered_set<std::string> keys;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '"') return Fail("expected a string key in object");
      std::string key;
      const size_t key_pos = pos_;
      if (!ParseString(&key)) return false;
      if (!keys.insert(key).second) {
        pos_ = key_pos;
        return Fail("duplicate key " + JsonQuote(key));
      }
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Fail("expected ':' after object key");
      ++pos_;
      SkipSpace();
      v->object_.emplace_back(std::move(key), JsonValue());
      if (!ParseValue(&v->object_.back().second, depth + 1)) return false;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or '}' in object");
    }
  }

  bool ParseArray(JsonValue* v, int depth) {
    v->type_ = JsonValue::Type::kArray;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      SkipSpace();
      v->array_.emplace_back();
      if (!ParseValue(&v->array_.back(), depth + 1)) return false;
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return Fail("expected ',' or ']' in array");
    }
  }

  bool Hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) return Fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_ + i];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v |= c - 'A' + 10;
      else
        return Fail("invalid hex digit in \\u escape");
    }
    pos_ += 4;
    *out = v;
    return true;
  }

  bool ParseString(std::string* out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= s_.size()) return Fail("unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return Fail("control character in string; escape it");
      if (c != '\\') {
        out->push_back(c);
        ++pos_;
        continue;
      }
      if (++pos_ >= s_.size()) return Fail("unterminated string");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("unpaired low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t low = 0;
            if (s_.substr(pos_, 2) != "\\u")
              return Fail("high surrogate not followed by a \\u low surrogate");
            pos_ += 2;
            if (!Hex4(&low)) return false;
            if (low < 0xDC00 || low > 0xDFFF) return Fail("high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          AppendUtf8Char(static_cast<char32_t>(cp), out);
          break;
        }
        default:
          --pos_;
          return Fail("invalid escape in string");
      }
    }
  }

  bool ParseNumber(std::string* out) {
    const size_t begin = pos_;
    auto digits = [&] {
      const size_t start = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ > start;
    };
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    const size_t int_start = pos_;
    if (!digits()) return Fail("expected a JSON value");
    if (s_[int_start] == '0' && pos_ - int_start > 1) return Fail("number with a leading zero");
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (!digits()) return Fail("expected digits after '.' in number");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!digits()) return Fail("expected digits in the exponent of a number");
    }
    out->assign(s_.substr(begin, pos_ - begin));
    return true;
  }

  std::string_view s_;
  const std::string& source_;
  size_t pos_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
  Status error_;
};

StatusOr<JsonValue> ParseJson(std::string_view text, const std::string& source) {
  return JsonParser(text, source).ParseDocument();
}

std::string JsonQuote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out.push_back(kHex[(c >> 4) & 0xF]);
          out.push_back(kHex[c & 0xF]);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace fjord
