// Token shards in llm.c's format and the streaming data loader.
//
// Shard format (little-endian): a header of 256 int32 (header[0] = 20240520 magic, header[1] =
// version, header[2] = token count), then `count` tokens. Nothing else. Version 1 (llm.c's GPT-2
// shards) holds uint16 tokens; version 2 (llm.c's Llama-3 shards) holds uint32 tokens, for
// vocabularies above 65,536 ids. fjord prep writes version 1 when the tokenizer's vocab_size fits
// in uint16 and version 2 otherwise; the loader reads both, also mixed in one glob.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "runtime/data/prep.h"  // fjord prep (PrepOptions, PrepareShards) lived here; kept for includers
#include "runtime/data/tokenizer.h"
#include "runtime/tenancy/manifest.h"

namespace fjord {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;        // uint16 tokens
inline constexpr int32_t kShardVersionUint32 = 2;  // uint32 tokens
inline constexpr int kShardHeaderInts = 256;

// The shard version that holds every id of a vocabulary of `vocab_size` ids: 1 up to 65,536, else 2.
int32_t ShardVersionFor(int64_t vocab_size);

// Writes `tokens` as a shard of `version` (1: uint16, 2: uint32) at `path` atomically (temporary
// file in the same directory, then rename), so a reader never sees half a shard. Every token must
// fit the version's width.
Status WriteShard(const std::string& path, const std::vector<int32_t>& tokens,
                  int32_t version = kShardVersion);

// Reads and validates a shard: magic, version, file size == header + count * width, and every token
// < vocab_size. A refusal names the path and, for a bad token, its index and byte offset in the
// file, and says what to do (re-run fjord prep, or fix the job's model.vocab_size).
StatusOr<std::vector<uint32_t>> ReadShard(const std::string& path, int vocab_size);

// ReadShard's checks on a shard already in memory (`bytes`, read from `path`): what the data gate
// uses, so that the bytes whose SHA-256 was verified are the bytes decoded. Same messages.
StatusOr<std::vector<uint32_t>> DecodeShard(std::string_view bytes, const std::string& path, int vocab_size);

// Expands a path or glob to the sorted list of matching files; no match is an error naming the
// pattern (and the field it came from, `what`, e.g. "data.train").
StatusOr<std::vector<std::string>> ExpandShardGlob(const std::string& pattern, const std::string& what);

// Serves sequences of seq_len + 1 tokens (inputs and next-token targets) from a glob's shards,
// reading a shard only when a sequence needs it (and the next one ahead, on a prefetch thread).
//
// Windows: with T = seq_len, shard s of n_s tokens holds w_s = (n_s - 1) / T windows of T + 1
// tokens (stride T); windows never cross shards (llm.c's scheme), so a shard alone serves its
// sequences. A shard shorter than T + 1 tokens serves none. W = sum of w_s is the same in every
// epoch (sequences_per_epoch).
//
// Order: sequence i of the global stream depends only on (seed, i), never on rank, world size,
// the order of calls or what was read before, so any partition of the global batch over ranks
// and micro-steps, and any resume at a sequence index, sees the same tokens. Sequence i belongs to
// epoch e = i / W and is the k = i % W-th window of that epoch:
//   shuffle on:  the epoch visits the shards in a permutation P_e (of the shards with w_s > 0),
//                each shard's windows in a permutation Q_{e,s} of [0, w_s), and shard s's windows
//                start at an offset o_{e,s} drawn from [0, n_s - w_s * T) (at most T choices), so
//                window boundaries move between epochs. P_e and Q_{e,s} are Fisher-Yates shuffles
//                driven by std::mt19937_64 seeded from a SplitMix64 hash of (seed, e) and
//                (seed, e, s) with our own unbiased bounded draw (identical on every standard
//                library); o_{e,s} is a hash of (seed, e, s) modulo the choices.
//                The k-th window is window Q_{e,s}[k - c] of s = P_e[j], where c is the number of
//                windows of the shards before position j in P_e and c <= k < c + w_s.
//   shuffle off: shards in glob order, windows in order, offset 0; every epoch is the same.
// This is llm.c's scheme (shard order and windows inside a shard shuffled per epoch) made a pure
// function of the index (llm.c draws from one running generator, so a resume must replay it) and
// with llm.c's fixed window grid replaced by the per-epoch offset.
//
// Memory: a rank holds the shards the current Fill touches and at most one shard read ahead,
// whatever the number of shards (stats().max_resident_bytes). Open reads only each shard's header.
//
// Verification: the data gate runs in Open without reading shards (runtime/tenancy/manifest.h,
// step 1: the manifests, the shard list, and each shard's token count and size against its header).
// Each later read of a shard takes the whole file into memory once, checks its SHA-256 against the
// manifest (step 2), that the header still matches what Open saw, and every token against the
// vocabulary; only those bytes are then served. A shard truncated, replaced or modified after
// Open is refused at that read, naming it.
//
// Thread-safe: Fill may be called concurrently; copies of a loader share its shards and its
// prefetch thread (which ends with the last copy).
class DataLoader {
 public:
  // Expands `pattern`, runs the data gate's manifest checks (every shard's governing manifest
  // against `policy`: Tenancy::data_policy(); null: a job without tenant and without audit log,
  // which may read only shards no manifest governs) and reads each shard's header. Refuses a
  // dataset where no shard holds seq_len + 1 tokens with a message naming `what`, the files and
  // the sizes.
  static StatusOr<DataLoader> Open(const std::string& pattern, const std::string& what, int vocab_size,
                                   int seq_len, uint64_t seed, bool shuffle,
                                   const DataPolicy* policy = nullptr);

  // Writes sequences [first, first + B) of the global stream: inputs[B*T] and targets[B*T]
  // (targets are inputs shifted by one token). B >= 0; the loader must come from Open. Reads the
  // shards needed (unless already read ahead) and asks the prefetch thread for the next one. A
  // shard that fails its checks at this read is an error naming `what` and the shard.
  Status Fill(uint64_t first, int B, int32_t* inputs, int32_t* targets) const;

  // Windows per epoch, W above (>= 1).
  uint64_t sequences_per_epoch() const;
  uint64_t num_tokens() const;
  const std::vector<std::string>& files() const;
  int seq_len() const;

  struct Stats {
    uint64_t shard_reads = 0;         // whole-shard reads (each verified), prefetched or not
    uint64_t waited_reads = 0;        // reads a Fill had to do or wait for (prefetch not warm)
    uint64_t max_resident_bytes = 0;  // the most shard bytes held at once
    uint64_t max_resident_shards = 0;
  };
  Stats stats() const;

 private:
  class Impl;  // data.cc
  std::shared_ptr<Impl> impl_;
};

}  // namespace fjord
