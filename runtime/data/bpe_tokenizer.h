// GPT-2's byte-level BPE tokenizer, read from the files OpenAI and Hugging Face publish:
// vocab.json + merges.txt (Hugging Face names) or encoder.json + vocab.bpe (OpenAI's names for
// the same content).
//
// Encoding follows GPT-2's encoder.py: the text is split by the pre-tokenizer regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// each piece's UTF-8 bytes become one symbol per byte (bytes_to_unicode names them), and the
// merge of lowest rank among adjacent symbols is applied everywhere (left to right, without
// overlap) until no ranked pair remains. Encode is "ordinary": "<|endoftext|>" in the text is
// encoded as text; callers that separate documents append the id themselves.
//
// The regex runs on PCRE2 with Unicode properties (runtime/data/regex.h), as Hugging Face's
// `tokenizers` runs it on Oniguruma; the two agree on GPT-2's real files (hf_tokenizer_test). Bytes
// that are not valid UTF-8 match no branch and become pieces of their own.
//
// Decode concatenates the tokens' bytes and returns them raw (possibly invalid UTF-8 when a
// multi-byte character is cut between tokens), so Decode(Encode(s)) == s for every byte string.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/text.h"  // AppendUtf8Char
#include "runtime/data/tokenizer.h"

namespace fjord {

// GPT-2's bytes_to_unicode: byte b is written as the character Gpt2BytesToUnicode()[b] in
// byte-level vocabularies (printable Latin-1 bytes as themselves, the other 68 from U+0100 on).
const std::vector<char32_t>& Gpt2BytesToUnicode();

// Returned by DecodeUtf8Char for a byte that does not start a valid UTF-8 sequence.
inline constexpr char32_t kInvalidUtf8 = 0xFFFFFFFF;
// The character at s[i]; sets *len >= 1. Malformed, overlong or surrogate sequences decode as
// kInvalidUtf8 of length 1.
char32_t DecodeUtf8Char(std::string_view s, size_t i, size_t* len);

// GPT-2's pre-tokenizer regex (encoder.py's; `tokenizers`' ByteLevel with use_regex).
inline constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The pre-tokenizer pieces of `text`, in order; they concatenate to `text`.
std::vector<std::string_view> Gpt2PreTokenize(std::string_view text);

// Loads the tokenizer files from `dir`. The vocabulary must give ids 0..N-1 exactly once and
// contain the 256 single-byte tokens; every merge line must be "LEFT RIGHT" with LEFT, RIGHT and
// LEFTRIGHT in the vocabulary. Refusals name the file and line. The result is immutable and
// thread-safe; name() is "gpt2" and vocab_size() is N.
StatusOr<std::unique_ptr<Tokenizer>> MakeGpt2Tokenizer(const std::string& dir);

// llm.c's gpt2_tokenizer.bin (`path`, or DIR/gpt2_tokenizer.bin): a header of 256 little-endian
// uint32 (magic 20240328, version 1 or 2, vocabulary size, end-of-text id in version 2; GPT-2's
// 50256 in version 1), then per token a uint8 length and that many bytes. It has no merges, so the
// tokenizer only decodes (can_encode() is false); name() is "llmc". Refusals name the file and the
// header field or token.
StatusOr<std::unique_ptr<Tokenizer>> MakeLlmcTokenizer(const std::string& path);

}  // namespace fjord
