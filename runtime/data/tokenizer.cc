#include "runtime/data/tokenizer.h"

#include "runtime/data/bpe_tokenizer.h"
#include "runtime/data/hf_tokenizer.h"

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

StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name, const std::string& vocab) {
  struct Kind {
    const char* name;
    const char* files;  // nullptr: none
    StatusOr<std::unique_ptr<Tokenizer>> (*make)(const std::string&);
  };
  static const Kind kKinds[] = {
      {"byte", nullptr, nullptr},
      {"gpt2", "DIR with vocab.json + merges.txt (or encoder.json + vocab.bpe)", MakeGpt2Tokenizer},
      {"hf", "a Hugging Face tokenizer.json or its DIR", MakeHfTokenizer},
      {"llmc", "llm.c's gpt2_tokenizer.bin or its DIR (decode only)", MakeLlmcTokenizer},
  };
  for (const Kind& k : kKinds) {
    if (name != k.name) continue;
    if (k.make == nullptr) return MakeByteTokenizer();
    if (vocab.empty()) {
      return InvalidArgument("tokenizer \"" + name + "\" reads its files from --vocab: give --vocab " +
                             k.files);
    }
    return k.make(vocab);
  }
  return InvalidArgument("unknown tokenizer \"" + name +
                         "\"; known tokenizers: byte (one token per byte, vocab 256), gpt2 (GPT-2's "
                         "vocab.json + merges.txt), hf (a Hugging Face tokenizer.json), llmc (llm.c's "
                         "gpt2_tokenizer.bin, for sampling)");
}

}  // namespace fjord
