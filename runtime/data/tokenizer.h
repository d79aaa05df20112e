// Tokenizers turn text into token ids and back. The interface is small on purpose: a GPT-2
// byte-level BPE (reading vocab.json / merges.txt) implements the same one later.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fjord {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Short name recorded in shard manifests and checkpoints ("byte", "gpt2").
  virtual std::string name() const = 0;
  // Number of distinct token ids this tokenizer produces (ids are in [0, vocab_size())).
  virtual int vocab_size() const = 0;
  // Must be thread-safe: fjord prep encodes documents on several threads at once.
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;
  // Ids outside [0, vocab_size()) decode to U+FFFD rather than failing, so sampling a model
  // with a padded vocabulary never crashes.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  // False for a decode-only vocabulary (llm.c's gpt2_tokenizer.bin has no merges); Encode then
  // returns nothing and callers must not use it.
  virtual bool can_encode() const { return true; }
  // The token that separates documents, where the vocabulary has one (GPT-2's <|endoftext|>):
  // `fjord sample` starts from it on an empty prompt, as llm.c does, and fjord prep puts it before
  // each document (GPT-2's 50256; none: documents are joined as they are unless prep is given --eot ID).
  virtual std::optional<int32_t> end_of_text() const { return std::nullopt; }
};

// One token per byte: vocab 256, lossless on any input.
std::unique_ptr<Tokenizer> MakeByteTokenizer();

// The tokenizer with this name, its files read from `vocab` where it has files:
//   byte  one token per byte (no files)
//   gpt2  GPT-2's BPE files in the directory `vocab` (bpe_tokenizer.h)
//   hf    a Hugging Face tokenizer.json, `vocab` being the file or its directory (hf_tokenizer.h)
//   llmc  llm.c's gpt2_tokenizer.bin, the file or its directory; decode only (bpe_tokenizer.h)
// An unknown name is an error that lists the known ones; a name with files and no `vocab` is an
// error that says what to give.
StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name, const std::string& vocab = "");

}  // namespace fjord
