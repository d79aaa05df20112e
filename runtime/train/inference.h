// Using a trained model: evaluating its loss on token shards and sampling text from it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/status.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

// What fjord eval measures: batches of micro_batch sequences of seq_len tokens, read in order.
struct EvalOptions {
  static constexpr int kAll = -1;
  int batches = 0;      // > 0: at most this many; kAll: the whole split; 0: the job's train.eval_batches
  int micro_batch = 0;  // sequences per batch; 0: the checkpoint's train.micro_batch
  int seq_len = 0;      // tokens per sequence; 0: the checkpoint's training sequence length
};

struct EvalResult {
  double loss = 0.0;   // mean cross-entropy in nats per token
  int64_t tokens = 0;  // tokens scored
  int batches = 0;
  int micro_batch = 0, seq_len = 0;
  int requested_batches = 0;  // what was asked for (kAll: the whole split)
  bool capped = false;        // the split held fewer than requested_batches batches
  std::string checkpoint;     // the step directory evaluated
};

// Mean loss of the checkpoint at `checkpoint` (see ResolveCheckpointDir) on the shards of
// `data_glob`, read in order from the start, over the batches `options` asks for (capped at the
// whole split, which EvalResult says). Never counts a sequence twice. Refuses batches < -1,
// micro_batch < 0, and a seq_len beyond the model's positions.
// A tenant's checkpoint passes OpenCheckpointOutsideJob with `access` (--key, --audit-log) first.
StatusOr<EvalResult> EvaluateCheckpoint(const std::string& checkpoint, const std::string& data_glob,
                                        const EvalOptions& options, const CheckpointAccess& access = {});

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
  // Called with the step directory once its weights are loaded, before the first token (may be empty).
  std::function<void(const std::string& dir)> on_loaded;
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
