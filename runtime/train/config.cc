// Job specs. Three sources set a field: the file (we remember file:line:column from protobuf's
// ParseInfoTree), a --set override (we remember it as written), or the schema default. Every
// message about a field names the source that set it, so a user can go straight to the culprit.
#include "runtime/train/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/text_format.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

#include "runtime/tenancy/tenancy.h"

namespace fjord {
namespace {

namespace pb = google::protobuf;
using pb::FieldDescriptor;

// Where each scalar field got its value, by dotted path: "job.textproto:3:5" or
// "--set model.n_layer=2". A path that is absent kept its default.
using Origins = std::map<std::string, std::string>;

struct ParseError {
  int line;    // 0-based, as protobuf reports it
  int column;  // 0-based
  std::string message;
};

class CollectingErrors : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    errors_.push_back({line, column, message});
  }
  const std::vector<ParseError>& errors() const { return errors_; }

 private:
  std::vector<ParseError> errors_;
};

std::string Join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += sep;
    out += parts[i];
  }
  return out;
}

std::string Location(const std::string& source, int line0, int column0) {
  return source + ":" + std::to_string(line0 + 1) + ":" + std::to_string(column0 + 1);
}

std::string FieldNames(const pb::Descriptor* d) {
  std::vector<std::string> names;
  for (int i = 0; i < d->field_count(); ++i) names.push_back(d->field(i)->name());
  return Join(names, ", ");
}

std::string EnumNames(const pb::EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) names.push_back(e->value(i)->name());
  return Join(names, ", ");
}

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// Dotted path of the (first) field of JobSpec whose type is `target`: "model" for ModelSpec,
// "" for JobSpec itself or a type that does not occur.
std::string PathOfType(const pb::Descriptor* target, const pb::Descriptor* at = proto::JobSpec::descriptor(),
                       const std::string& prefix = "") {
  if (at == target) return prefix;
  for (int i = 0; i < at->field_count(); ++i) {
    const FieldDescriptor* f = at->field(i);
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    const std::string found = PathOfType(target, f->message_type(), path);
    if (!found.empty()) return found;
  }
  return "";
}

// The enum type of a field called `name` anywhere in JobSpec, or null.
const pb::EnumDescriptor* EnumOfField(const std::string& name,
                                      const pb::Descriptor* at = proto::JobSpec::descriptor()) {
  for (int i = 0; i < at->field_count(); ++i) {
    const FieldDescriptor* f = at->field(i);
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM && f->name() == name) return f->enum_type();
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      if (const pb::EnumDescriptor* e = EnumOfField(name, f->message_type())) return e;
    }
  }
  return nullptr;
}

// The value of enum `e` that `name` spells in another case ("bf16" -> "BF16"), or null.
const pb::EnumValueDescriptor* EnumValueIgnoringCase(const pb::EnumDescriptor* e, const std::string& name) {
  for (int i = 0; i < e->value_count(); ++i) {
    if (strcasecmp(e->value(i)->name().c_str(), name.c_str()) == 0) return e->value(i);
  }
  return nullptr;
}

// `text` with every enum value written in another case ("dtype: bf16") spelled as the schema
// does ("dtype: BF16"): the same length, so every line and column of later messages holds.
std::string CanonicalEnumCase(std::string_view text) {
  std::string out(text);
  pb::io::ArrayInputStream input(text.data(), static_cast<int>(text.size()));
  struct Quiet : pb::io::ErrorCollector {
    void AddError(int, pb::io::ColumnNumber, const std::string&) override {}
  } quiet;
  pb::io::Tokenizer tokenizer(&input, &quiet);
  tokenizer.set_comment_style(pb::io::Tokenizer::SH_COMMENT_STYLE);
  std::string field, previous;
  std::vector<size_t> line_starts = {0};
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n') line_starts.push_back(i + 1);
  while (tokenizer.Next()) {
    const pb::io::Tokenizer::Token& t = tokenizer.current();
    if (t.type == pb::io::Tokenizer::TYPE_IDENTIFIER && previous == ":" && !field.empty()) {
      const pb::EnumDescriptor* e = EnumOfField(field);
      const pb::EnumValueDescriptor* v = e != nullptr ? EnumValueIgnoringCase(e, t.text) : nullptr;
      if (v != nullptr && v->name() != t.text && static_cast<size_t>(t.line) < line_starts.size()) {
        // The column counts a tab as up to 8; find the token on its line from there back.
        const size_t start = line_starts[t.line];
        const size_t end =
            t.line + 1 < static_cast<int>(line_starts.size()) ? line_starts[t.line + 1] : out.size();
        const size_t at = out.substr(start, end - start).rfind(t.text, static_cast<size_t>(t.column));
        if (at != std::string::npos) out.replace(start + at, t.text.size(), v->name());
      }
    }
    if (previous != ":" || t.text != ":") field = t.type == pb::io::Tokenizer::TYPE_IDENTIFIER ? t.text : "";
    if (t.text == ":" && !previous.empty()) field = previous;
    previous = t.text;
  }
  return out;
}

// Where the innermost block still open at (line0, column0) of `text` began: "model { (line 1)"
// as {name, line0, column0}; name "" when every block is closed. Strings and # comments are skipped.
struct OpenBlock {
  std::string name;
  int line0 = 0, column0 = 0;
};
OpenBlock InnermostOpenBlock(std::string_view text, int line0, int column0) {
  pb::io::ArrayInputStream input(text.data(), static_cast<int>(text.size()));
  struct Quiet : pb::io::ErrorCollector {
    void AddError(int, pb::io::ColumnNumber, const std::string&) override {}
  } quiet;
  pb::io::Tokenizer tokenizer(&input, &quiet);
  tokenizer.set_comment_style(pb::io::Tokenizer::SH_COMMENT_STYLE);
  std::vector<OpenBlock> open;
  std::string previous;
  int previous_line = 0, previous_column = 0;
  while (tokenizer.Next()) {
    const pb::io::Tokenizer::Token& t = tokenizer.current();
    if (t.line > line0 || (t.line == line0 && t.column >= column0)) break;
    if (t.text == "{") open.push_back({previous, previous_line, previous_column});
    if (t.text == "}" && !open.empty()) open.pop_back();
    if (t.text != "{" && t.text != ":") {
      previous = t.text;
      previous_line = t.line;
      previous_column = t.column;
    }
  }
  return open.empty() ? OpenBlock() : open.back();
}

// "Did you mean "n_layer"? Valid fields in model: n_layer, n_head, ..." for an unknown `name` in `d`.
std::string UnknownFieldHint(const pb::Descriptor* d, const std::string& name) {
  std::string hint;
  const FieldDescriptor* best = nullptr;
  size_t best_distance = 3;  // suggest only close misspellings
  for (int i = 0; i < d->field_count(); ++i) {
    const size_t distance = EditDistance(name, d->field(i)->name());
    if (distance < best_distance) {
      best_distance = distance;
      best = d->field(i);
    }
  }
  if (best != nullptr) hint += "Did you mean \"" + best->name() + "\"? ";
  const std::string path = PathOfType(d);
  hint += "Valid fields " + (path.empty() ? std::string("at the top level") : "in " + path) + ": " +
          FieldNames(d) + " (see proto/job.proto).";
  return hint;
}

// Text between `open` and the next `close` after it, or "" when `open` is absent.
std::string Between(const std::string& s, const std::string& open, const std::string& close) {
  const size_t begin = s.find(open);
  if (begin == std::string::npos) return "";
  const size_t start = begin + open.size();
  const size_t end = s.find(close, start);
  return end == std::string::npos ? "" : s.substr(start, end - start);
}

// Line `line0` of `text` up to column `column0` (both 0-based).
std::string_view LineUpTo(std::string_view text, int line0, int column0) {
  size_t begin = 0;
  for (int i = 0; i < line0 && begin != std::string_view::npos; ++i) {
    begin = text.find('\n', begin);
    if (begin != std::string_view::npos) ++begin;
  }
  if (begin == std::string_view::npos) return {};
  std::string_view line = text.substr(begin, static_cast<size_t>(std::max(column0, 0)));
  return line.substr(0, line.find('\n'));
}

// Moves (line0, column0) back to the last occurrence of `token` that starts before it, if any.
void PointAtTokenBefore(std::string_view text, const std::string& token, int* line0, int* column0) {
  size_t offset = 0;
  for (int i = 0; i < *line0 && offset != std::string_view::npos; ++i) {
    offset = text.find('\n', offset);
    if (offset != std::string_view::npos) ++offset;
  }
  if (offset == std::string_view::npos) return;
  const size_t at =
      text.substr(0, std::min(text.size(), offset + static_cast<size_t>(std::max(*column0, 0)))).rfind(token);
  if (at == std::string_view::npos) return;
  const size_t line_start = text.rfind('\n', at);
  *line0 = static_cast<int>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n'));
  *column0 = static_cast<int>(line_start == std::string_view::npos ? at : at - line_start - 1);
}

// The name of the field whose value starts at (line0, column0) of `text`, e.g. "n_layer" for
// "  n_layer: abc" with the column at "abc"; "" when there is none on that line.
std::string FieldBefore(std::string_view text, int line0, int column0) {
  // Columns count a tab as advancing to the next multiple of 8; lines with tabs may get no hint.
  const std::string_view line = LineUpTo(text, line0, column0);
  size_t colon = line.rfind(':');
  if (colon == std::string_view::npos) return "";
  size_t end = colon;
  while (end > 0 && (line[end - 1] == ' ' || line[end - 1] == '\t')) --end;
  size_t start = end;
  while (start > 0 && (std::isalnum(static_cast<unsigned char>(line[start - 1])) || line[start - 1] == '_'))
    --start;
  return std::string(line.substr(start, end - start));
}

std::string TypeDescription(const FieldDescriptor* f);

// "n_layer takes an integer (int32)" when every field of that name in JobSpec has one type.
std::string FieldTypeHint(const std::string& name) {
  std::vector<const FieldDescriptor*> found;
  std::vector<const pb::Descriptor*> pending = {proto::JobSpec::descriptor()};
  while (!pending.empty()) {
    const pb::Descriptor* d = pending.back();
    pending.pop_back();
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      if (f->name() == name) found.push_back(f);
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) pending.push_back(f->message_type());
    }
  }
  if (found.empty()) return "";
  const std::string type = TypeDescription(found.front());
  for (const FieldDescriptor* f : found) {
    if (TypeDescription(f) != type) return "";
  }
  return name + " takes " + type + ". ";
}

// What to do about one of protobuf's text-format parse errors at (line0, column0) of `text`.
std::string ParseErrorHint(const std::string& message, std::string_view text, int line0, int column0) {
  // A block left open: the parser reads on into it and fails at the next top-level field, or at
  // the end of the file.
  const OpenBlock block = InnermostOpenBlock(text, line0, column0);
  const std::string unclosed = block.name.empty()
                                   ? ""
                                   : "A '}' seems to be missing: \"" + block.name + " {\" opened at line " +
                                         std::to_string(block.line0 + 1) + " is not closed before line " +
                                         std::to_string(line0 + 1) + "; add '}' where the block ends.";
  if (message.find("has no field named") != std::string::npos) {
    const std::string type = Between(message, "Message type \"", "\"");
    const std::string name = Between(message, "has no field named \"", "\"");
    const bool top_level_field = proto::JobSpec::descriptor()->FindFieldByName(name) != nullptr;
    if (!unclosed.empty() && top_level_field) return unclosed;
    if (const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(type)) {
      return UnknownFieldHint(d, name);
    }
  }
  if (!unclosed.empty() && message.find("Expected identifier, got: ") != std::string::npos &&
      Between(message + "\n", "got: ", "\n").empty()) {
    // The end of the file inside a block.
    return unclosed +
           " The syntax is protobuf text format (field: value, message { ... }); fields and their "
           "types are in proto/job.proto.";
  }
  if (message.find("Unknown enumeration value") != std::string::npos) {
    const std::string field = Between(message, "for field \"", "\"");
    if (const pb::EnumDescriptor* e = EnumOfField(field)) return "Use one of: " + EnumNames(e) + ".";
  }
  if (message.find("specified multiple times") != std::string::npos) {
    return "Each field may appear once; remove the repeated one (or merge the two blocks).";
  }
  std::string type_hint;
  if (message.rfind("Expected", 0) == 0 || message.find("out of range") != std::string::npos) {
    type_hint = FieldTypeHint(FieldBefore(text, line0, column0));
  }
  return type_hint +
         "Fix the text at that position: the syntax is protobuf text format (field: value, "
         "message { ... }); fields and their types are in proto/job.proto.";
}

// Records where the text set each scalar field of `message` (walking nested blocks).
void RecordLocations(const pb::Message& message, const pb::TextFormat::ParseInfoTree& tree,
                     const std::string& prefix, const std::string& source, Origins* origins) {
  const pb::Descriptor* d = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    if (f->is_repeated()) {
      // Repeated scalars (the residency lists): each element's location, as "path[i]".
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) continue;
      for (int k = 0; k < r->FieldSize(message, f); ++k) {
        const pb::TextFormat::ParseLocation location = tree.GetLocation(f, k);
        if (location.line >= 0) {
          (*origins)[path + "[" + std::to_string(k) + "]"] = Location(source, location.line, location.column);
        }
      }
      continue;
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const pb::TextFormat::ParseInfoTree* nested = tree.GetTreeForNested(f, -1);
      if (nested != nullptr && r->HasField(message, f)) {
        RecordLocations(r->GetMessage(message, f), *nested, path, source, origins);
      }
      continue;
    }
    const pb::TextFormat::ParseLocation location = tree.GetLocation(f, -1);
    if (location.line >= 0) (*origins)[path] = Location(source, location.line, location.column);
  }
}

// Sets every unset singular field to its schema default, creating sub-messages, so that HasField
// is true everywhere and the printed spec is complete.
void MakeDefaultsExplicit(pb::Message* message) {
  const pb::Descriptor* d = message->GetDescriptor();
  const pb::Reflection* r = message->GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      MakeDefaultsExplicit(r->MutableMessage(message, f));
      continue;
    }
    if (r->HasField(*message, f)) continue;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        r->SetInt32(message, f, f->default_value_int32());
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        r->SetInt64(message, f, f->default_value_int64());
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        r->SetUInt32(message, f, f->default_value_uint32());
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        r->SetUInt64(message, f, f->default_value_uint64());
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        r->SetDouble(message, f, f->default_value_double());
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        r->SetFloat(message, f, f->default_value_float());
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        r->SetBool(message, f, f->default_value_bool());
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        r->SetEnum(message, f, f->default_value_enum());
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        r->SetString(message, f, f->default_value_string());
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        break;
    }
  }
}

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    parts.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

// "an integer (int32)", for messages that say what a field takes.
std::string TypeDescription(const FieldDescriptor* f) {
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return "an integer (int32)";
    case FieldDescriptor::CPPTYPE_INT64:
      return "an integer (int64)";
    case FieldDescriptor::CPPTYPE_UINT32:
      return "a non-negative integer (uint32)";
    case FieldDescriptor::CPPTYPE_UINT64:
      return "a non-negative integer (uint64)";
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return "a number (double)";
    case FieldDescriptor::CPPTYPE_FLOAT:
      return "a number (float)";
    case FieldDescriptor::CPPTYPE_BOOL:
      return "true or false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return "one of " + EnumNames(f->enum_type());
    case FieldDescriptor::CPPTYPE_STRING:
      return "a string";
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return "a message";
  }
  return "a value";
}

// The field's schema default in text format ("12", "0.0003", "AUTO", "\"runs/default\"").
std::string DefaultText(const FieldDescriptor* f) {
  const pb::Message* prototype = pb::MessageFactory::generated_factory()->GetPrototype(f->containing_type());
  std::string text;
  pb::TextFormat::PrintFieldValueToString(*prototype, f, -1, &text);
  return text;
}

// True when `value` starts with a quote: the user meant a text-format string literal.
bool IsQuoted(const std::string& value) {
  return !value.empty() && (value.front() == '"' || value.front() == '\'');
}

// Applies one --set override; `written` is "PATH=VALUE" as the user typed it.
Status ApplyOverride(const std::string& written, proto::JobSpec* job, Origins* origins) {
  const std::string where = "--set " + written;
  const size_t eq = written.find('=');
  if (eq == std::string::npos) {
    return InvalidArgument(
        where +
        ": expected PATH=VALUE, e.g. --set train.steps=20 or --set model.n_layer=2 (one argument: "
        "--set train.steps=20, not --set train.steps 20)");
  }
  const std::string path = written.substr(0, eq);
  const std::string value = written.substr(eq + 1);
  const std::vector<std::string> parts = SplitPath(path);
  pb::Message* message = job;
  std::string walked;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* d = message->GetDescriptor();
    const FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return InvalidArgument(where + ": " + (walked.empty() ? std::string("the job spec") : walked) +
                             " has no field \"" + parts[i] + "\". " + UnknownFieldHint(d, parts[i]));
    }
    const std::string here = walked.empty() ? parts[i] : walked + "." + parts[i];
    const bool last = i + 1 == parts.size();
    if (f->is_repeated()) {
      return InvalidArgument(where + ": " + here +
                             " is a repeated field and --set only sets single values; "
                             "edit the job file instead");
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      const pb::Descriptor* sub = f->message_type();
      if (last) {
        return InvalidArgument(where + ": " + here +
                               " is a message (a block of fields), not a value; set one "
                               "of its fields, e.g. --set " +
                               here + "." + sub->field(0)->name() + "=" + DefaultText(sub->field(0)) +
                               "; fields of " + here + ": " + FieldNames(sub));
      }
      message = message->GetReflection()->MutableMessage(message, f);
      walked = here;
      continue;
    }
    if (!last) {
      return InvalidArgument(where + ": " + here + " is " + TypeDescription(f) +
                             " field, not a message, so it has "
                             "no field \"" +
                             parts[i + 1] + "\"; write --set " + here + "=VALUE");
    }
    const pb::EnumValueDescriptor* enum_value = f->cpp_type() == FieldDescriptor::CPPTYPE_ENUM
                                                    ? EnumValueIgnoringCase(f->enum_type(), value)
                                                    : nullptr;
    if (enum_value != nullptr) {
      message->GetReflection()->SetEnum(message, f, enum_value);  // bf16 as BF16
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING && !IsQuoted(value)) {
      message->GetReflection()->SetString(message, f, value);  // a bare value is taken literally
    } else {
      pb::TextFormat::Parser parser;
      CollectingErrors errors;
      parser.RecordErrorsTo(&errors);
      // The tokenizer reports some errors (an unterminated string) yet lets the parse succeed.
      const bool quotes_match = !IsQuoted(value) || (value.size() >= 2 && value.back() == value.front());
      if (!parser.ParseFieldValueFromString(value, f, message) || !errors.errors().empty() || !quotes_match) {
        std::string detail;
        if (!errors.errors().empty()) detail = " (" + errors.errors().front().message + ")";
        std::string hint = "write it like --set " + here + "=" + DefaultText(f);
        if (f->cpp_type() == FieldDescriptor::CPPTYPE_STRING) hint = "quote the whole value or none of it";
        return InvalidArgument(where + ": " + here + " takes " + TypeDescription(f) + "; \"" + value +
                               "\" is not one" + detail + "; " + hint);
      }
    }
    (*origins)[here] = where;
  }
  return OkStatus();
}

// Checks the resolved spec; every refusal starts with where the offending field was set.
class Validator {
 public:
  Validator(const proto::JobSpec& job, const Origins& origins, const std::string& source)
      : job_(job), origins_(origins), source_(source) {}

  // Refuses `path` with "<where>: <path> = <value>[ (default)] <problem>".
  void RefuseValue(const std::string& path, const std::string& problem) {
    errors_.push_back(Where(path) + ": " + path + " = " + Value(path) +
                      (IsDefault(path) ? " (default)" : "") + " " + problem);
  }
  // Refuses `path` with "<where>: <statement>" (for statements that do not start with the value).
  void Refuse(const std::string& path, const std::string& statement) {
    errors_.push_back(Where(path) + ": " + statement);
  }
  // "model.n_head = 12 (job.textproto:3:5)", for fields a message refers to besides its subject.
  std::string Ref(const std::string& path) const {
    auto it = origins_.find(path);
    return path + " = " + Value(path) + " (" + (it == origins_.end() ? "default" : it->second) + ")";
  }
  std::string Value(const std::string& path) const {
    const pb::Message* message = &job_;
    const std::vector<std::string> parts = SplitPath(path);
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const FieldDescriptor* f = message->GetDescriptor()->FindFieldByName(parts[i]);
      message = &message->GetReflection()->GetMessage(*message, f);
    }
    std::string text;
    pb::TextFormat::PrintFieldValueToString(*message, message->GetDescriptor()->FindFieldByName(parts.back()),
                                            -1, &text);
    return text;
  }
  // Whether the job spec or a --set named `path` (its value may still equal the default).
  bool IsSet(const std::string& path) const { return origins_.count(path) != 0; }
  Status Result() const { return errors_.empty() ? OkStatus() : InvalidArgument(Join(errors_, "\n")); }

 private:
  bool IsDefault(const std::string& path) const { return origins_.count(path) == 0; }
  std::string Where(const std::string& path) const {
    auto it = origins_.find(path);
    return it == origins_.end() ? source_ : it->second;
  }

  const proto::JobSpec& job_;
  const Origins& origins_;
  const std::string source_;
  std::vector<std::string> errors_;
};

bool Finite(double x) { return std::isfinite(x); }

// The fields of arch LLAMA (proto/job.proto): refused on a GPT2 job when set to anything but their
// default (the printed spec of every job holds them at their defaults), checked for LLAMA.
void ValidateLlama(const proto::ModelSpec& m, Validator& v) {
  const proto::ModelSpec defaults;
  const proto::ModelSpec::RopeScaling& r = m.rope_scaling();
  const proto::ModelSpec::RopeScaling& rd = defaults.rope_scaling();
  if (m.arch() != proto::ModelSpec::LLAMA) {
    const std::pair<const char*, bool> differs[] = {
        {"model.rms_norm_eps", m.rms_norm_eps() != defaults.rms_norm_eps()},
        {"model.rope_theta", m.rope_theta() != defaults.rope_theta()},
        {"model.rope_scaling.rope_type", r.rope_type() != rd.rope_type()},
        {"model.rope_scaling.factor", r.factor() != rd.factor()},
        {"model.rope_scaling.low_freq_factor", r.low_freq_factor() != rd.low_freq_factor()},
        {"model.rope_scaling.high_freq_factor", r.high_freq_factor() != rd.high_freq_factor()},
        {"model.rope_scaling.original_max_position_embeddings",
         r.original_max_position_embeddings() != rd.original_max_position_embeddings()},
        {"model.intermediate_size", m.intermediate_size() != defaults.intermediate_size()},
        {"model.n_kv_head", m.n_kv_head() != defaults.n_kv_head()},
        {"model.attention_bias", m.attention_bias() != defaults.attention_bias()},
        {"model.tie_embeddings", m.tie_embeddings() != defaults.tie_embeddings()},
    };
    for (const auto& [path, is_different] : differs) {
      if (is_different && v.IsSet(path)) {
        v.RefuseValue(path, std::string("applies to the Llama family only, but ") + v.Ref("model.arch") +
                                " (GPT-2 has LayerNorm, learned positions, a GELU MLP, multi-head attention, "
                                "biases and tied embeddings); set model.arch to LLAMA or remove " +
                                path);
      }
    }
    return;
  }
  if (m.intermediate_size() < 1) {
    v.RefuseValue("model.intermediate_size",
                  "must be at least 1 for model.arch LLAMA (the width of the SwiGLU MLP); set "
                  "model.intermediate_size, e.g. 8192 as in Llama 3.2 1B or 2.75 x model.n_embd");
  }
  if (m.n_kv_head() < 0) {
    v.RefuseValue("model.n_kv_head",
                  "is negative; set model.n_kv_head to a divisor of model.n_head (grouped-query "
                  "attention) or 0 for n_head (multi-head attention)");
  } else if (m.n_kv_head() > 0 && m.n_head() >= 1 && m.n_head() % m.n_kv_head() != 0) {
    v.RefuseValue("model.n_kv_head", "does not divide " + v.Ref("model.n_head") +
                                         ": each key/value head serves n_head / n_kv_head query heads; "
                                         "pick a divisor of model.n_head, e.g. " +
                                         std::to_string(m.n_head() % 2 == 0 ? m.n_head() / 2 : 1));
  }
  if (m.n_head() >= 1 && m.n_embd() >= 1 && m.n_embd() % m.n_head() == 0 &&
      (m.n_embd() / m.n_head()) % 2 != 0) {
    v.RefuseValue("model.n_embd",
                  "gives an odd head size n_embd / n_head = " + std::to_string(m.n_embd() / m.n_head()) +
                      " with " + v.Ref("model.n_head") +
                      ": rotary embeddings rotate pairs of channels (i, i + head_size / 2), "
                      "so the head size must be even; pick model.n_embd and model.n_head "
                      "with an even quotient, e.g. 64 or 128 (what the tensor-core "
                      "attention kernels support)");
  }
  if (!(m.rms_norm_eps() > 0) || !Finite(m.rms_norm_eps())) {
    v.RefuseValue("model.rms_norm_eps",
                  "must be a positive finite number (RMSNorm's epsilon); set model.rms_norm_eps, e.g. "
                  "1e-5 as in Llama 3");
  }
  if (!(m.rope_theta() > 1) || !Finite(m.rope_theta())) {
    v.RefuseValue("model.rope_theta",
                  "must be a finite number above 1 (the rotary base); set model.rope_theta, e.g. "
                  "500000 as in Llama 3 or 10000 as in Llama 2");
  }
  if (r.rope_type() == proto::ModelSpec::RopeScaling::LLAMA3) {
    if (!(r.factor() >= 1) || !Finite(r.factor())) {
      v.RefuseValue("model.rope_scaling.factor",
                    "must be a finite number >= 1 (how much longer wavelengths are stretched); set it, "
                    "e.g. 8 as in Llama 3.1 or 32 as in Llama 3.2");
    }
    if (!(r.low_freq_factor() > 0) || !Finite(r.low_freq_factor()) || !Finite(r.high_freq_factor()) ||
        !(r.high_freq_factor() > r.low_freq_factor())) {
      v.RefuseValue("model.rope_scaling.low_freq_factor",
                    "and " + v.Ref("model.rope_scaling.high_freq_factor") +
                        " must be finite with 0 < low_freq_factor < high_freq_factor (the band of "
                        "wavelengths that is interpolated); set them, e.g. 1 and 4 as in Llama 3.1");
    }
    if (r.original_max_position_embeddings() < 1) {
      v.RefuseValue("model.rope_scaling.original_max_position_embeddings",
                    "must be at least 1 (the context length the model was pre-trained with); set it, "
                    "e.g. 8192 as in Llama 3.1");
    }
  }
}

Status Validate(const proto::JobSpec& job, const Origins& origins, const std::string& source) {
  Validator v(job, origins, source);
  const proto::ModelSpec& m = job.model();
  const proto::TrainSpec& t = job.train();

  if (m.n_layer() < 1) {
    v.RefuseValue("model.n_layer",
                  "must be at least 1 (it is the number of transformer blocks); set model.n_layer "
                  "to 1 or more, e.g. 12 as in GPT-2 124M");
  }
  if (m.n_head() < 1) {
    v.RefuseValue("model.n_head",
                  "must be at least 1 (attention heads per block); set model.n_head to 1 or more, "
                  "e.g. 12 as in GPT-2 124M");
  }
  if (m.n_embd() < 1) {
    v.RefuseValue("model.n_embd",
                  "must be at least 1 (the width of the residual stream); set model.n_embd to a "
                  "positive multiple of model.n_head, e.g. 768 as in GPT-2 124M");
  }
  if (m.n_head() >= 1 && m.n_embd() >= 1 && m.n_embd() % m.n_head() != 0) {
    const int below = m.n_embd() / m.n_head() * m.n_head();
    const int above = below + m.n_head();
    std::string examples =
        below > 0 ? std::to_string(below) + " or " + std::to_string(above) : std::to_string(above);
    v.RefuseValue("model.n_embd", "is not a multiple of " + v.Ref("model.n_head") +
                                      ": each head gets n_embd / n_head "
                                      "channels; pick model.n_embd as a multiple of model.n_head, e.g. " +
                                      examples + ", or change model.n_head");
  }
  if (m.seq_len() < 1) {
    v.RefuseValue("model.seq_len",
                  "must be at least 1 (the number of learned positions); set model.seq_len, e.g. "
                  "1024 as in GPT-2");
  }
  // Token shards hold uint16 ids up to 65,536 entries and uint32 ids above (runtime/data/data.h,
  // version 2), so the bound is not the shards' but a sanity one: 2^24 is 65x Llama 3's 128,256 and
  // catches a typo before it sizes a classifier of gigabytes.
  if (m.vocab_size() < 2 || m.vocab_size() > kMaxVocabSize) {
    v.RefuseValue("model.vocab_size",
                  "is outside [2, " + std::to_string(kMaxVocabSize) +
                      "] (a model needs at least 2 tokens; the upper bound catches a typo); "
                      "set model.vocab_size to the tokenizer's size (256 for byte, 50257 "
                      "for gpt2, 128256 for Llama 3)");
  }

  ValidateLlama(m, v);

  if (t.micro_batch() < 1) {
    v.RefuseValue("train.micro_batch",
                  "must be at least 1 (sequences per micro-step per rank); set "
                  "train.micro_batch to 1 or more");
  }
  if (t.grad_accum() < 1) {
    v.RefuseValue("train.grad_accum",
                  "must be at least 1 (micro-steps per optimizer step; 1 means no "
                  "accumulation); set train.grad_accum to 1 or more");
  }
  if (t.steps() < 0) {
    v.RefuseValue("train.steps", "is negative (it counts optimizer steps); set train.steps to 0 or more");
  }
  const bool lr_ok = t.lr() > 0 && Finite(t.lr());
  if (!lr_ok) {
    v.RefuseValue("train.lr",
                  "must be a positive finite number (the peak learning rate); set train.lr, e.g. "
                  "3e-4");
  }
  if (!(t.min_lr() >= 0) || !Finite(t.min_lr())) {
    v.RefuseValue("train.min_lr",
                  "must be a finite number >= 0 (the learning rate the cosine schedule decays "
                  "to); set train.min_lr between 0 and train.lr, e.g. 0");
  } else if (lr_ok && t.min_lr() > t.lr()) {
    v.RefuseValue("train.min_lr", "is above " + v.Ref("train.lr") +
                                      ": the schedule decays from lr down to "
                                      "min_lr; set train.min_lr between 0 and train.lr, or raise train.lr");
  }
  if (t.warmup_steps() < 0) {
    v.RefuseValue("train.warmup_steps", "is negative; set train.warmup_steps to 0 (no warmup) or more");
  }
  if (!(t.weight_decay() >= 0) || !Finite(t.weight_decay())) {
    v.RefuseValue("train.weight_decay",
                  "must be a finite number >= 0; set train.weight_decay, e.g. 0.1 (0 "
                  "disables weight decay)");
  }
  if (!(t.grad_clip() >= 0) || !Finite(t.grad_clip())) {
    v.RefuseValue("train.grad_clip",
                  "must be a finite number >= 0 (the global gradient-norm threshold); set "
                  "train.grad_clip, e.g. 1.0 (0 disables clipping)");
  }
  if (t.eval_every() < 0) {
    v.RefuseValue("train.eval_every",
                  "is negative; set train.eval_every to 0 (no validation) or a number of "
                  "steps between evaluations");
  }
  if (t.eval_batches() < 1) {
    v.RefuseValue("train.eval_batches",
                  "must be at least 1 (validation batches per evaluation); set "
                  "train.eval_batches to 1 or more, or set train.eval_every to 0 to skip validation");
  }
  if (t.seq_len() < 0) {
    v.RefuseValue("train.seq_len",
                  "is negative; set train.seq_len to 0 (use model.seq_len) or a length up to "
                  "model.seq_len");
  } else if (m.seq_len() >= 1 && t.seq_len() > m.seq_len()) {
    v.RefuseValue("train.seq_len", "is over " + v.Ref("model.seq_len") +
                                       ": a model cannot attend beyond its "
                                       "positions; lower train.seq_len or raise model.seq_len");
  }
  if (!(t.beta1() >= 0 && t.beta1() < 1)) {
    v.RefuseValue("train.beta1", "is outside [0, 1) (AdamW's first-moment decay); set train.beta1, e.g. 0.9");
  }
  if (!(t.beta2() >= 0 && t.beta2() < 1)) {
    v.RefuseValue("train.beta2",
                  "is outside [0, 1) (AdamW's second-moment decay); set train.beta2, e.g. 0.95");
  }
  if (!(t.eps() > 0) || !Finite(t.eps())) {
    v.RefuseValue("train.eps",
                  "must be a positive finite number (it keeps AdamW's denominator away from 0); set "
                  "train.eps, e.g. 1e-8");
  }
  if (t.threads() < 0) {
    v.RefuseValue("train.threads",
                  "is negative; set train.threads to 0 (use the cores available to the rank) or "
                  "a thread count");
  }
  if (t.log_every() < 1) {
    v.RefuseValue("train.log_every",
                  "must be at least 1 (print a progress line every log_every steps); set "
                  "train.log_every to 1 or more");
  }
  if (!(t.peak_tflops() >= 0) || !Finite(t.peak_tflops())) {
    v.RefuseValue("train.peak_tflops",
                  "must be a finite number >= 0 (one rank's peak dense TFLOP/s, for MFU); set "
                  "train.peak_tflops, e.g. 989 for an H100 SXM in bf16, or 0 to look it up");
  }

  if (job.data().train().empty()) {
    v.Refuse("data.train",
             "data.train is empty: give the token shards to train on, e.g. "
             "data { train: \"data/train_*.bin\" } (fjord prep writes them)");
  }
  if (t.eval_every() > 0 && job.data().val().empty()) {
    v.Refuse("data.val",
             "data.val is empty but " + v.Ref("train.eval_every") +
                 " asks for validation: give the "
                 "validation shards, e.g. data { val: \"data/val_*.bin\" } (fjord prep writes them), or set "
                 "train.eval_every to 0");
  }
  if (t.global_batch() < 0) {
    v.RefuseValue("train.global_batch",
                  "is negative; set train.global_batch to 0 (use train.grad_accum) or to the sequences per "
                  "optimizer step over all ranks");
  } else if (t.global_batch() > 0 && t.micro_batch() >= 1 && t.global_batch() % t.micro_batch() != 0) {
    v.RefuseValue("train.global_batch",
                  "is not a multiple of " + v.Ref("train.micro_batch") +
                      ": the global batch is micro_batch x grad_accum x world_size; pick a "
                      "multiple of train.micro_batch");
  }
  const proto::ParallelSpec& par = job.parallel();
  if (!(par.bucket_mb() > 0) || !Finite(par.bucket_mb())) {
    v.RefuseValue("parallel.bucket_mb", "must be a positive number of MiB; set parallel.bucket_mb, e.g. 25");
  }
  if (par.zero_stage() < 0 || par.zero_stage() > 3) {
    v.RefuseValue("parallel.zero_stage",
                  "must be 0 (plain data-parallel), 1 (ZeRO-1: shard the AdamW state), 2 (ZeRO-2: shard the "
                  "AdamW state and the gradients) or 3 (ZeRO-3: shard the parameters too)");
  }
  if (par.algo() != "auto" && par.algo() != "mpi" && par.algo() != "ring" && par.algo() != "tree") {
    v.RefuseValue("parallel.algo", "is not one of auto, mpi, ring, tree; set parallel.algo, e.g. \"auto\"");
  }
  if (!(par.comm_timeout() > 0) || !Finite(par.comm_timeout())) {
    v.RefuseValue("parallel.comm_timeout",
                  "must be a positive number of seconds; set parallel.comm_timeout, e.g. 300");
  } else if (par.comm_timeout() < 0.001) {
    // The communicator counts whole milliseconds: less than one would be a timeout of 0.
    v.RefuseValue(
        "parallel.comm_timeout",
        "is less than the communicator's resolution of 0.001 seconds; set parallel.comm_timeout, e.g. 300");
  }
  if (par.straggler_every_steps() < 0) {
    v.RefuseValue("parallel.straggler_every_steps",
                  "must be 0 (no straggler report) or a number of steps; set it, e.g. 100");
  }
  if (!(par.straggler_factor() > 1) || !Finite(par.straggler_factor())) {
    v.RefuseValue("parallel.straggler_factor",
                  "must be a finite number above 1 (how many times the median makes a straggler); set it, "
                  "e.g. 3");
  }
  const proto::EnergySpec& energy = job.energy();
  if (energy.window_steps() < 1) {
    v.RefuseValue("energy.window_steps",
                  "must be at least 1 (steps per energy window); set energy.window_steps, e.g. 20");
  }
  if (!(energy.rank_power_w() >= 0) || !Finite(energy.rank_power_w())) {
    v.RefuseValue("energy.rank_power_w",
                  "must be a finite number >= 0 (watts of one rank, for an estimate where no counter can be "
                  "read); set energy.rank_power_w, or 0 for no estimate");
  }
  if (energy.measure() && energy.powercap_root().empty()) {
    v.Refuse("energy.powercap_root",
             "energy.powercap_root is empty: give the powercap directory, e.g. \"/sys/class/powercap\", "
             "or set energy.measure: false");
  }
  if (energy.measure() && energy.nvml_library().empty()) {
    v.Refuse("energy.nvml_library",
             "energy.nvml_library is empty: give NVML's library, e.g. \"libnvidia-ml.so.1\", or set "
             "energy.measure: false");
  }
  // Tenancy (docs/SOVEREIGNTY.md): a tenant needs a residency; residency needs a tenant.
  const std::string& tenant = job.tenant().id();
  const proto::ResidencySpec& residency = job.residency();
  if (!tenant.empty() && !IsValidTenantId(tenant)) {
    v.RefuseValue(
        "tenant.id",
        "is not a tenant id: use 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a "
        "letter or digit, e.g. \"acme\"");
  }
  if (!tenant.empty() && residency.allowed_jurisdictions_size() == 0) {
    v.Refuse("tenant.id",
             "tenant.id = \"" + tenant +
                 "\" has no residency: add residency { allowed_jurisdictions: \"NO\" } with the ISO "
                 "3166-1 alpha-2 codes of the countries where its ranks, data and checkpoints may be");
  }
  if (tenant.empty() && (residency.allowed_jurisdictions_size() > 0 || residency.allowed_sites_size() > 0)) {
    const std::string first = residency.allowed_jurisdictions_size() > 0
                                  ? "residency.allowed_jurisdictions[0]"
                                  : "residency.allowed_sites[0]";
    v.Refuse(
        first,
        "residency is set but tenant.id is empty: residency is enforced for a tenant only, so it would be "
        "ignored; add tenant { id: \"...\" } or remove the residency block");
  }
  for (int i = 0; i < residency.allowed_jurisdictions_size(); ++i) {
    const std::string& code = residency.allowed_jurisdictions(i);
    if (std::string problem = JurisdictionProblem(code); !problem.empty()) {
      v.Refuse("residency.allowed_jurisdictions[" + std::to_string(i) + "]",
               "residency.allowed_jurisdictions \"" + code + "\" " + problem);
    }
  }
  for (int i = 0; i < residency.allowed_sites_size(); ++i) {
    const std::string& site = residency.allowed_sites(i);
    if (!IsValidSiteName(site)) {
      v.Refuse(
          "residency.allowed_sites[" + std::to_string(i) + "]",
          "residency.allowed_sites \"" + site +
              "\" is not a site name: use 1 to 64 letters, digits, '.', '_' or '-', as the inventory names "
              "sites");
    }
  }
  if (job.run_dir().empty()) {
    v.Refuse("run_dir",
             "run_dir is empty: fjord writes metrics.jsonl and checkpoints there; set it, e.g. "
             "run_dir: \"runs/my_job\"");
  }
  return v.Result();
}

}  // namespace

StatusOr<proto::JobSpec> ParseJobSpec(std::string_view text, const std::string& source_name,
                                      const std::vector<std::string>& overrides) {
  proto::JobSpec job;
  pb::TextFormat::Parser parser;
  CollectingErrors errors;
  parser.RecordErrorsTo(&errors);
  pb::TextFormat::ParseInfoTree tree;
  parser.WriteLocationsTo(&tree);
  if (!parser.ParseFromString(CanonicalEnumCase(text), &job)) {
    std::vector<std::string> lines;
    for (ParseError e : errors.errors()) {
      // Protobuf reports an unknown field name or enum value at the token after it; point at it.
      std::string culprit = Between(e.message, "has no field named \"", "\"");
      if (culprit.empty()) culprit = Between(e.message, "Unknown enumeration value of \"", "\"");
      if (!culprit.empty()) PointAtTokenBefore(text, culprit, &e.line, &e.column);
      std::string message = e.message;
      if (!message.empty() && message.back() != '.') message += '.';
      lines.push_back(Location(source_name, e.line, e.column) + ": " + message + " " +
                      ParseErrorHint(e.message, text, e.line, e.column));
    }
    if (lines.empty())
      lines.push_back(source_name + ": not a valid job spec (protobuf text format of JobSpec)");
    return InvalidArgument(Join(lines, "\n"));
  }
  Origins origins;
  RecordLocations(job, tree, "", source_name, &origins);
  for (const std::string& o : overrides) FJORD_RETURN_IF_ERROR(ApplyOverride(o, &job, &origins));
  MakeDefaultsExplicit(&job);
  FJORD_RETURN_IF_ERROR(Validate(job, origins, source_name));
  return job;
}

StatusOr<proto::JobSpec> LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) {
    return NotFound("job spec " + path + ": no such file (looked in " + fs::current_path(ec).string() +
                    "); check the path");
  }
  if (fs::is_directory(status)) {
    return InvalidArgument("job spec " + path + " is a directory; give the *.textproto file inside it");
  }
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  const int open_errno = in.is_open() ? 0 : errno;
  std::stringstream text;
  text << in.rdbuf();
  if (!in || in.bad()) {
    return FailedPrecondition("job spec " + path + ": cannot read it (" +
                              (open_errno != 0 ? std::strerror(open_errno) : "read error") +
                              "); check that it is a readable file");
  }
  return ParseJobSpec(text.str(), path, overrides);
}

std::string JobSpecToText(const proto::JobSpec& job) {
  std::string text;
  pb::TextFormat::Printer printer;
  printer.PrintToString(job, &text);
  return text;
}

namespace {

std::string FieldText(const pb::Message& m, const FieldDescriptor* f) {
  const pb::Reflection* r = m.GetReflection();
  std::string out, value;
  if (!f->is_repeated()) {
    pb::TextFormat::PrintFieldValueToString(m, f, -1, &out);
    return out;
  }
  for (int i = 0; i < r->FieldSize(m, f); ++i) {
    pb::TextFormat::PrintFieldValueToString(m, f, i, &value);
    out += (i ? ", " : "") + value;
  }
  return "[" + out + "]";
}

void CollectDifferences(const pb::Message& a, const pb::Message& b, const std::string& prefix,
                        std::vector<FieldChange>* out) {
  const pb::Descriptor* d = a.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string path = prefix + f->name();
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !f->is_repeated()) {
      CollectDifferences(a.GetReflection()->GetMessage(a, f), b.GetReflection()->GetMessage(b, f), path + ".",
                         out);
      continue;
    }
    std::string before = FieldText(a, f), after = FieldText(b, f);
    if (before != after) out->push_back({path, std::move(before), std::move(after)});
  }
}

}  // namespace

std::vector<FieldChange> JobSpecDifferences(const proto::JobSpec& before, const proto::JobSpec& after) {
  std::vector<FieldChange> out;
  CollectDifferences(before, after, "", &out);
  return out;
}

int TrainSeqLen(const proto::JobSpec& job) {
  return job.train().seq_len() > 0 ? job.train().seq_len() : job.model().seq_len();
}

}  // namespace fjord
