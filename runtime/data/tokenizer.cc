#include "runtime/data/tokenizer.h"

namespace fjord {
namespace {

constexpr char kReplacementCharacter[] = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int vocab_size() const override { return 256; }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size());
    for (char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string text;
    text.reserve(ids.size());
    for (int32_t id : ids) {
      if (id >= 0 && id < 256) {
        text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
      } else {
        text += kReplacementCharacter;
      }
    }
    return text;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer() { return std::make_unique<ByteTokenizer>(); }

StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name) {
  if (name == "byte") return MakeByteTokenizer();
  return InvalidArgument("unknown tokenizer \"" + name +
                         "\"; known tokenizers: byte (one token per byte, vocab 256)");
}

}  // namespace fjord
