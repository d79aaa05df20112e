// Checkpoints: one directory per step, written under a temporary name, fsynced and renamed into
// place, so a reader (or a crash at any point) sees a complete checkpoint or none.
//
//   CHECKPOINTS_DIR/step_000020/
//     model.bin       weights: header of 256 int32 (magic, version, model dims, step), then the
//                     float32 parameters in layout order
//     optimizer.bin   the same header, then AdamW m and v for all parameters (gathered from the
//                     ZeRO-1 shards), so any world size can resume from it
//     job.textproto   the resolved job spec the run used
//     manifest.json   step, data position, world size and ZeRO stage of the writer, seed, the job
//                     spec's sha256, when it was written, and the size and sha256 of every file above
//     tenant.textproto, tenant.seal   with a tenant or a key (runtime/tenancy/tenancy.h): whose checkpoint
//                     it is, and the digests of all four files above; written last
//
// There is no RNG state beyond the seed: initialisation is seeded and the data stream is a pure
// function of (seed, sequence index), so the data position is a sequence count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "proto/job.pb.h"
#include "runtime/model/gpt.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

inline constexpr int32_t kModelMagic = 20261128;
inline constexpr int32_t kModelVersion = 1;

// What a checkpoint records besides tensors.
struct CheckpointState {
  int step = 0;                     // optimizer steps completed
  uint64_t sequences_consumed = 0;  // sequences of the global data stream used so far
  int world_size = 1;               // of the run that wrote it
  int zero_stage = 0;
  uint64_t seed = 0;
  // Read back from the manifest only (SaveCheckpoint computes them):
  std::string job_sha256;   // of job.textproto
  std::string written_utc;  // when it was written (RFC 3339); "" in checkpoints older than the field
};

// Writes the checkpoint of `model` into `checkpoints_dir`/step_NNNNNN (state.step) and returns
// that path. adam_m and adam_v hold the AdamW moments of all num_params() parameters (host
// memory). The weights come from model.host_params() (on a CUDA device, SyncParamsToHost() first),
// or from `params` (num_params() host floats by layout offset; ZeRO-3's model has no buffer).
StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir, const CheckpointState& state,
                                     const proto::JobSpec& job, const Gpt& model, const float* adam_m,
                                     const float* adam_v, const CheckpointSeal* seal = nullptr,
                                     const float* params = nullptr);

// Removes complete step_* checkpoints beyond the newest `keep_last` (0 keeps all) and stale
// temporary directories of this process. Called only after a new checkpoint is complete.
Status PruneCheckpoints(const std::string& checkpoints_dir, int keep_last);

// The step_* directories of `checkpoints_dir` (complete names only, no temporaries), newest first.
std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir);

// Checks a checkpoint directory: manifest.json present and well-formed, every listed file
// present with the recorded size and sha256. A refusal names the file and the reason.
Status VerifyCheckpoint(const std::string& dir);

// The state recorded in a (verified) checkpoint's manifest.
StatusOr<CheckpointState> ReadCheckpointState(const std::string& dir);

// "DIR (step N, job sha256 0123456789ab, written 2026-12-07T19:50:01.123Z)": which checkpoint a
// command loaded, for its users to see (a manifest that does not read gives its error instead).
std::string DescribeCheckpoint(const std::string& dir);

// The newest checkpoint in `checkpoints_dir` that verifies; damaged newer ones are skipped and
// described in *skipped (one line each: path and reason). NotFound when there is none at all.
StatusOr<std::string> NewestGoodCheckpoint(const std::string& checkpoints_dir,
                                           std::vector<std::string>* skipped);

// A checkpoint directory resolved from what a user passes: a step directory (it has
// model.bin), or a run directory / checkpoints directory whose newest step_* is taken.
StatusOr<std::string> ResolveCheckpointDir(const std::string& path);

// Reads job.textproto of a checkpoint (validated like any job spec).
StatusOr<proto::JobSpec> LoadCheckpointJob(const std::string& dir);

// Loads the weights of the checkpoint in `dir` into `model` (its host view, then uploaded to its
// device), whose config must match the header; a mismatch or a short file is refused naming the
// file and the field.
// With `seal` (from Tenancy::CheckCheckpoint), sealed files are decrypted and authenticated.
// With `into` (num_params() host floats) the weights go there instead, and the model is not
// touched (ZeRO-3: the trainer packs this rank's shard from them).
Status LoadCheckpointWeights(const std::string& dir, Gpt& model, const CheckpointSeal* seal = nullptr,
                             float* into = nullptr);

// Loads the AdamW moments (num_params() floats each) of the checkpoint in `dir`.
Status LoadCheckpointOptimizer(const std::string& dir, const Gpt& model, float* adam_m, float* adam_v,
                               const CheckpointSeal* seal = nullptr);

}  // namespace fjord
