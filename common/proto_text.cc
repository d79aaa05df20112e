#include "common/proto_text.h"

#include <google/protobuf/io/tokenizer.h>

#include <algorithm>

namespace fjord {
namespace {

namespace pb = google::protobuf;

// Keeps protobuf's first error as "LINE:COLUMN: message" (1-based).
class CollectingErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectingErrors(std::string_view text) : text_(text) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first_.empty()) return;
    // Protobuf reports an unknown field at the token after it; point at the name itself.
    const std::string key = "has no field named \"";
    if (size_t k = message.find(key); k != std::string::npos) {
      const std::string name =
          message.substr(k + key.size(), message.find('"', k + key.size()) - k - key.size());
      size_t begin = 0;
      for (int i = 0; i < line && begin != std::string_view::npos; ++i) {
        begin = text_.find('\n', begin);
        if (begin != std::string_view::npos) ++begin;
      }
      if (begin != std::string_view::npos) {
        const size_t at = text_.substr(begin, static_cast<size_t>(std::max(column, 0))).rfind(name);
        if (at != std::string_view::npos) column = static_cast<int>(at);
      }
    }
    std::string m = message;
    while (!m.empty() && m.back() == '.') m.pop_back();
    first_ = std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + m;
  }
  const std::string& first() const { return first_; }

 private:
  std::string_view text_;
  std::string first_;
};

}  // namespace

Status ParseTextProto(std::string_view text, const std::string& source, pb::Message* out,
                      const std::string& schema, pb::TextFormat::ParseInfoTree* tree) {
  pb::TextFormat::Parser parser;
  CollectingErrors errors(text);
  parser.RecordErrorsTo(&errors);
  if (tree != nullptr) parser.WriteLocationsTo(tree);
  if (!parser.ParseFromString(std::string(text), out)) {
    return InvalidArgument(
        source + ":" + (errors.first().empty() ? std::string("1:1: cannot parse") : errors.first()) +
        ". The file is protobuf text format of " + out->GetDescriptor()->full_name() + " (" + schema + ")");
  }
  return OkStatus();
}

std::string FieldLocation(const std::string& source, const pb::TextFormat::ParseInfoTree* tree,
                          const pb::Message& message, const std::string& name, int index) {
  const pb::FieldDescriptor* f = message.GetDescriptor()->FindFieldByName(name);
  if (tree == nullptr || f == nullptr) return source;
  const pb::TextFormat::ParseLocation loc = tree->GetLocation(f, index);
  if (loc.line < 0) return source;
  return source + ":" + std::to_string(loc.line + 1) + ":" + std::to_string(loc.column + 1);
}

}  // namespace fjord
