// A Hugging Face `tokenizer.json` with a BPE model: the byte-level BPE of GPT-2, Llama 3 and
// Qwen 2 (ByteLevel pre-tokenizer, or a Split regex followed by ByteLevel) and the BPE with byte
// fallback of Llama 2 and Mistral (Metaspace, or the Prepend/Replace normalizers of the "legacy"
// files, with <0xNN> byte tokens).
//
// Encode follows the `tokenizers` library's Tokenizer::encode(text, add_special_tokens=true):
//   1. added tokens (added_tokens) are found in the raw text, leftmost-longest, and kept whole;
//      those marked "normalized" are found again in each remaining piece after normalization;
//   2. the normalizer: Prepend, Replace (string or regex), NFC/NFD/NFKC/NFKD, Sequence;
//   3. the pre-tokenizer: ByteLevel (with GPT-2's regex when use_regex), Split (regex or string;
//      behavior Isolated, Removed, MergedWithPrevious or MergedWithNext), Metaspace, Sequence;
//   4. the BPE model: characters looked up in the vocabulary (byte_fallback: a missing character
//      becomes its <0xNN> tokens; else unk_token, fused when fuse_unk), then the merges applied
//      one at a time, lowest rank first and leftmost among equals, as `tokenizers` does
//      (ignore_merges: a word that is itself in the vocabulary is one token);
//   5. the post-processor: TemplateProcessing's "single" template (BOS/EOS), ByteLevel (no change
//      to ids), Sequence.
// Regexes (Split, Replace, and ByteLevel's own) run on PCRE2 with Unicode properties, where
// `tokenizers` uses Oniguruma; both implement the same Perl syntax for these patterns.
//
// Decode follows Tokenizer::decode(ids, skip_special_tokens=true): special added tokens are
// skipped, then the decoder (ByteLevel, Metaspace, ByteFallback, Fuse, Replace, Strip, Sequence;
// without a decoder the tokens are joined with spaces as `tokenizers` does). One difference: where
// the bytes are not valid UTF-8 (a character cut between tokens) Decode returns them raw, where
// `tokenizers` writes U+FFFD, so decoding a prefix of a sequence gives a prefix of its text.
//
// Anything else (another model type, normalizer, pre-tokenizer, post-processor or decoder,
// truncation, padding, dropout, continuing_subword_prefix, lstrip/rstrip/single_word added tokens)
// is refused at load, the message naming the JSON field and its line.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "runtime/data/tokenizer.h"

namespace fjord {

// Loads DIR/tokenizer.json (or `path` itself when it names a file). Every id in [0, N) must belong
// to exactly one token of model.vocab or added_tokens, N being vocab_size(). The result is
// immutable and thread-safe; name() is "hf".
StatusOr<std::unique_ptr<Tokenizer>> MakeHfTokenizer(const std::string& path);

}  // namespace fjord
