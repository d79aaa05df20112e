// Using a trained model: evaluating its loss on token shards and sampling text from it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

struct EvalResult {
  double loss = 0.0;   // mean cross-entropy in nats per token
  int64_t tokens = 0;  // tokens scored
  int batches = 0;
};

// Mean loss of the checkpoint at `checkpoint` (see ResolveCheckpointDir) on the shards of
// `data_glob`, read in order from the start, over at most `batches` batches of the checkpoint's
// micro_batch x seq_len (0: the job's train.eval_batches). Never counts a sequence twice.
// A tenant's checkpoint passes OpenCheckpointOutsideJob with `access` (--key, --audit-log) first.
StatusOr<EvalResult> EvaluateCheckpoint(const std::string& checkpoint, const std::string& data_glob,
                                        int batches, const CheckpointAccess& access = {});

struct SampleOptions {
  std::string prompt;
  int tokens = 256;          // tokens to generate
  float temperature = 1.0f;  // 0 = greedy
  int top_k = 0;             // 0 = the whole vocabulary
  float top_p = 1.0f;        // nucleus: sample from the smallest set of tokens with this much mass
  uint64_t seed = 1337;
  // The tokenizer (MakeTokenizer's names) and its files; "" = gpt2 with a vocab_dir, else byte.
  std::string tokenizer;
  std::string vocab_dir;
};

// Generates options.tokens tokens after the prompt with the checkpoint's model and the tokenizer
// of options.tokenizer / vocab_dir, calling on_text with each piece of text as it is produced
// (the text that the new token adds to the decoding of all tokens so far, so tokenizers whose
// decoders join tokens, such as Metaspace's, stream the same text they decode at once). An empty
// prompt starts from the tokenizer's end-of-text token where it has one, else from "\n". A
// decode-only tokenizer (llmc) takes no prompt. Returns the generated text (without the prompt). A tenant's
// checkpoint passes OpenCheckpointOutsideJob with `access` first.
StatusOr<std::string> SampleCheckpoint(const std::string& checkpoint, const SampleOptions& options,
                                       const std::function<void(const std::string&)>& on_text,
                                       const CheckpointAccess& access = {});

}  // namespace fjord
