// Token shards in llm.c's format and the deterministic data loader.
//
// Shard format (little-endian): a header of 256 int32 (header[0] = 20240520 magic,
// header[1] = 1 version, header[2] = token count), then `count` uint16 tokens. Nothing else.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "runtime/data/tokenizer.h"
#include "runtime/tenancy/manifest.h"

namespace fjord {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr int kShardHeaderInts = 256;

// Writes `tokens` as a shard at `path` atomically (temporary file in the same directory, then
// rename), so a reader never sees half a shard. Tokens must fit in uint16.
Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens);

// Reads and validates a shard: magic, version, file size == header + count * 2, and every token
// < vocab_size. A refusal names the path and, for a bad token, its index and byte offset in the
// file, and says what to do (re-run fjord prep, or fix the job's model.vocab_size).
StatusOr<std::vector<uint16_t>> ReadShard(const std::string& path, int vocab_size);

// ReadShard's checks on a shard already in memory (`bytes`, read from `path`): what the data gate
// uses, so that the bytes whose SHA-256 was verified are the bytes decoded. Same messages.
StatusOr<std::vector<uint16_t>> DecodeShard(std::string_view bytes, const std::string& path, int vocab_size);

// Expands a path or glob to the sorted list of matching files; no match is an error naming the
// pattern (and the field it came from, `what`, e.g. "data.train").
StatusOr<std::vector<std::string>> ExpandShardGlob(const std::string& pattern, const std::string& what);

// Serves sequences of seq_len + 1 tokens (inputs and next-token targets) from the
// concatenation of a glob's shards.
//
// Determinism: sequence i of the global stream depends only on (seed, i), never on rank,
// world size or the order of calls, so any partition of the global batch over ranks and
// micro-steps sees the same tokens. The stream is made of epochs; each epoch cuts the token
// stream into windows of seq_len + 1 tokens (stride seq_len) starting at an epoch-dependent
// offset and visits them in an epoch-dependent random order (or in order when shuffle is off,
// as for validation).
//
// Epochs: sequence i belongs to epoch e = i / W and is window perm_e[i % W] of that epoch, which
// starts at token offset_e + perm_e[i % W] * seq_len. W (sequences_per_epoch) is fixed for the
// whole stream, so the mapping from i to tokens never depends on an earlier epoch:
//   shuffle on:  W = max(1, (N - T) / T) for N tokens and T = seq_len, so that every offset in
//                [0, T) still fits W windows (one window fewer than offset 0 would allow);
//                offset_e is drawn from [0, min(T, N - W*T)) by a hash of (seed, e), and perm_e
//                is a Fisher-Yates shuffle driven by std::mt19937_64 seeded from (seed, e) with
//                our own unbiased bounded draw, so orders are identical across standard libraries.
//   shuffle off: W = (N - 1) / T, offset 0, windows in order; every epoch is the same.
//
// Thread-safe: Fill is const; the permutations of the two most recently used epochs are cached
// behind a mutex (copies of a loader share that cache, which is sound because they share the
// seed and the tokens).
class DataLoader {
 public:
  // Opens and validates every shard of `pattern`. Refuses a dataset with fewer than
  // seq_len + 1 tokens with a message naming `what`, the files and the sizes.
  // The data gate runs first, for every job (runtime/tenancy/manifest.h): every shard's governing manifest
  // is checked against `policy` (Tenancy::data_policy(); null: a job without tenant and without
  // audit log, which may read only shards no manifest governs) before any shard is read, then each
  // shard is read once, its SHA-256 verified against its manifest and those bytes decoded.
  static StatusOr<DataLoader> Open(const std::string& pattern, const std::string& what, int vocab_size,
                                   int seq_len, uint64_t seed, bool shuffle,
                                   const DataPolicy* policy = nullptr);

  // Writes sequences [first, first + B) of the global stream: inputs[B*T] and targets[B*T]
  // (targets are inputs shifted by one token). B >= 0; the loader must come from Open.
  void Fill(uint64_t first, int B, int32_t* inputs, int32_t* targets) const;

  // Windows per epoch, W above (>= 1).
  uint64_t sequences_per_epoch() const;
  uint64_t num_tokens() const { return tokens_.size(); }
  const std::vector<std::string>& files() const { return files_; }
  int seq_len() const { return seq_len_; }

 private:
  class EpochOrders;  // cache of per-epoch window permutations (data.cc)

  // First token of sequence i of the global stream.
  uint64_t SequenceStart(uint64_t i) const;

  std::vector<std::string> files_;
  std::vector<uint16_t> tokens_;  // all shards concatenated
  int seq_len_ = 0;
  uint64_t seed_ = 0;
  bool shuffle_ = true;
  uint64_t windows_ = 0;         // W, sequences per epoch
  uint64_t offset_choices_ = 1;  // epoch offsets are drawn from [0, offset_choices_)
  std::shared_ptr<EpochOrders> orders_;
};

struct PrepOptions {
  std::string input;                   // text file to tokenize
  std::string out_dir;                 // created if missing
  double val_fraction = 0.1;           // the last fraction of the text becomes val_000000.bin
  int64_t shard_tokens = 100'000'000;  // tokens per shard at most
  // Tenancy (`fjord prep --tenant ID --jurisdiction NO[,SE] [--site S]`): with a tenant, prep
  // writes DIR/manifest.textproto naming the tenant, where the shards may be opened and each
  // shard's SHA-256 and token count, and refuses to run on a node whose identity file places it
  // outside those jurisdictions. Empty tenant: no manifest (jurisdictions and sites must be empty).
  std::string tenant = "";
  std::vector<std::string> allowed_jurisdictions = {};  // ISO 3166-1 alpha-2, e.g. {"NO"}
  std::vector<std::string> allowed_sites = {};          // empty = any site
};

struct PrepResult {
  std::vector<std::string> train_files;
  std::vector<std::string> val_files;
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  std::string manifest_path;  // "" without a tenant
};

// `fjord prep`: tokenizes options.input with `tokenizer` and writes DIR/train_NNNNNN.bin and
// DIR/val_NNNNNN.bin. Refuses an empty input, a val_fraction outside [0, 1), and a split that
// leaves the train or val part (when val_fraction > 0) with fewer than 2 tokens.
// Tenancy refusals (before anything is written): an invalid tenant id, a tenant without
// jurisdictions, a code that is not ISO 3166-1 alpha-2, jurisdictions or sites without a tenant,
// a node identity outside the jurisdictions, and (without a tenant) a directory that holds a
// manifest from an earlier tenant prep.
StatusOr<PrepResult> PrepareShards(const PrepOptions& options, const Tokenizer& tokenizer);

}  // namespace fjord
