// Minimal JSON for the interchange formats fjord reads and writes: safetensors headers, Hugging
// Face config.json and GPT-2's vocab.json.
//
// The parser reads a whole document (RFC 8259) into a tree. Object members keep their file order
// (safetensors and vocab files are compared and reported in that order) and duplicate keys are
// refused, since every format here treats a repeated key as a corrupt file. Each value remembers
// the line and column where it starts, so callers name the exact place in their errors. Numbers
// keep their source text, so 64-bit offsets and ids convert exactly. Writers build their output
// as text with JsonQuote; a document model for writing is not worth its weight here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace fjord {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Member = std::pair<std::string, JsonValue>;

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  // "null", "boolean", "number", "string", "array", "object": for error messages.
  const char* type_name() const;

  // Valid for the matching type only (false / empty otherwise).
  bool bool_value() const { return bool_; }
  // The decoded UTF-8 of a string; the source text of a number.
  const std::string& text() const { return text_; }
  double number() const;
  // The exact value of an integer literal (no fraction or exponent) that fits; nullopt else.
  std::optional<int64_t> AsInt64() const;
  std::optional<uint64_t> AsUint64() const;
  const std::vector<JsonValue>& array() const { return array_; }
  const std::vector<Member>& object() const { return object_; }
  // The member named `key` of an object, or nullptr (also for non-objects).
  const JsonValue* Find(std::string_view key) const;

  // 1-based position of the value's first character in the parsed text.
  int line() const { return line_; }
  int column() const { return column_; }

 private:
  friend class JsonParser;
  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string text_;
  std::vector<JsonValue> array_;
  std::vector<Member> object_;
  int line_ = 0, column_ = 0;
};

// Parses `text` as one JSON value (surrounding whitespace allowed). Errors read
// "SOURCE:LINE:COLUMN: what was expected", with `source` naming the file for the user.
StatusOr<JsonValue> ParseJson(std::string_view text, const std::string& source);

// `s` (UTF-8) as a JSON string literal with its quotes; control characters, quote and backslash
// escaped, everything else copied as is.
std::string JsonQuote(std::string_view s);

// `items` (any range of strings) as a JSON array of JsonQuote'd strings, without spaces:
// ["NO","SE"].
template <typename Strings>
std::string JsonQuoteList(const Strings& items) {
  std::string out = "[";
  for (const auto& item : items) {
    if (out.size() > 1) out += ',';
    out += JsonQuote(item);
  }
  return out + "]";
}

}  // namespace fjord
