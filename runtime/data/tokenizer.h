// Tokenizers turn text into token ids and back. The interface is small on purpose: a GPT-2
// byte-level BPE (reading vocab.json / merges.txt) implements the same one later.
#pragma once

#include <cstdint>
#include <memory>
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
  // The id fjord prep puts before each document ("<|endoftext|>", GPT-2's 50256), or -1 when the
  // tokenizer has none (then documents are joined as they are unless prep is given --eot ID).
  virtual int32_t end_of_text() const { return -1; }
  // Ids outside [0, vocab_size()) decode to U+FFFD rather than failing, so sampling a model
  // with a padded vocabulary never crashes.
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
};

// One token per byte: vocab 256, lossless on any input.
std::unique_ptr<Tokenizer> MakeByteTokenizer();

// The tokenizer with this name ("byte"); an unknown name is an error that lists the known ones.
StatusOr<std::unique_ptr<Tokenizer>> MakeTokenizer(const std::string& name);

}  // namespace fjord
