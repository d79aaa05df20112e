// Checkpoints: one directory per step, written under a temporary name and renamed into place,
// so a reader sees a complete checkpoint or none.
//
//   RUN_DIR/checkpoints/step_000020/
//     model.bin       weights (header of 256 int32, then float32 parameters in layout order)
//     optimizer.bin   AdamW state (same header, then m and v) and the step counter
//     job.textproto   the resolved job spec the run used
//
// The directory grows with later features (RNG and loader position, manifest of digests,
// tenant record) without changing what is already there.
#pragma once

#include <string>

#include "common/status.h"
#include "proto/job.pb.h"
#include "runtime/gpt.h"

namespace fjord {

inline constexpr int32_t kModelMagic = 20261128;
inline constexpr int32_t kModelVersion = 1;

// Writes the checkpoint of `model` after optimizer step `step` (1-based count of completed
// steps) into `checkpoints_dir`/step_NNNNNN and returns that path. adam_m and adam_v hold the
// AdamW moments of all num_params() parameters (gathered from the shards under ZeRO-1).
StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir, int step, const proto::JobSpec& job,
                                     const Gpt& model, const float* adam_m, const float* adam_v);

// A checkpoint directory resolved from what a user passes: a step directory (it has
// model.bin), or a run directory / checkpoints directory whose newest step_* is taken.
StatusOr<std::string> ResolveCheckpointDir(const std::string& path);

// Reads job.textproto of a checkpoint (validated like any job spec).
StatusOr<proto::JobSpec> LoadCheckpointJob(const std::string& dir);

// Loads the weights of the checkpoint in `dir` into `model`, whose config must match the
// header; a mismatch or a short file is refused naming the file and the field.
Status LoadCheckpointWeights(const std::string& dir, Gpt& model);

}  // namespace fjord
