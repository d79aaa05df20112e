// Regular expressions for the tokenizers' pre-tokenizers, on PCRE2 (Debian's libpcre2): the
// patterns of GPT-2, Llama 3 and Qwen 2 need Unicode properties (\p{L}, \p{N}) and lookahead.
// Patterns compile in UTF mode with Unicode semantics for \s \d \w (UCP), as Oniguruma treats them
// in Hugging Face's `tokenizers`. Invalid UTF-8 in a subject never matches and is not an error
// (PCRE2_MATCH_INVALID_UTF): such bytes end up in the gaps between matches.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

struct pcre2_real_code_8;

namespace fjord {

class Regex {
 public:
  // The compiled `pattern`, or InvalidArgument "the regular expression P does not compile at
  // offset N: why" for the caller to prefix with where the pattern came from.
  static StatusOr<std::shared_ptr<const Regex>> Compile(const std::string& pattern);

  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();

  // The non-empty matches in `s`, left to right without overlap, as [begin, end) byte offsets.
  // Thread-safe (match data is per call).
  std::vector<std::pair<size_t, size_t>> Matches(std::string_view s) const;

 private:
  Regex() = default;
  pcre2_real_code_8* code_ = nullptr;
  bool jit_ = false;
};

}  // namespace fjord
