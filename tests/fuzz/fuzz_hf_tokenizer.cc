// Fuzzes MakeHfTokenizer (runtime/data/hf_tokenizer.h): a Hugging Face tokenizer.json, then, when
// it is accepted, Encode and Decode on a fixed multilingual text. MakeHfTokenizer takes a path, so
// each input is written to a scratch file first. An accepted tokenizer must only produce ids in
// [0, vocab_size()), and decoding them must not fail.
#include <cstdint>
#include <string>

#include "runtime/data/hf_tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fjord::fuzz::ScratchDir("hf_tokenizer") + "/tokenizer.json";
  fjord::fuzz::WriteFile(path, fjord::fuzz::AsText(data, size));
  fjord::StatusOr<std::unique_ptr<fjord::Tokenizer>> tok = fjord::MakeHfTokenizer(path);
  if (!tok.ok()) return 0;
  const std::string text = "Blåbær på Åndalsnes, 12 345 🎉  <s>ab</s>\tΩμέγα 東京 \xFF";
  const std::vector<int32_t> ids = (*tok)->Encode(text);
  for (int32_t id : ids) {
    FJORD_FUZZ_EXPECT(id >= 0 && id < (*tok)->vocab_size(), "id " + std::to_string(id) + " out of range");
  }
  (void)(*tok)->Decode(ids);
  return 0;
}
