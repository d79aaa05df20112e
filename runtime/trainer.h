// The training loop of one rank: data, forward/backward with gradient accumulation, clipping,
// AdamW with warmup + cosine decay, validation, metrics and the final checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "proto/job.pb.h"

namespace fjord {

// Learning rate at optimizer step `step` (0-based): linear warmup from lr/warmup to lr over
// warmup_steps, then cosine decay from lr to min_lr, reaching min_lr at the last step.
float LearningRate(const proto::TrainSpec& train, int step);

struct TrainOptions {
  bool quiet = false;  // no progress lines on stdout (metrics.jsonl is still written)
};

struct TrainResult {
  std::vector<float> losses;      // training loss per optimizer step
  std::vector<float> val_losses;  // one per evaluation
  std::string checkpoint_dir;     // where the final checkpoint was written ("" if steps == 0)
};

// Trains the model the (validated) job describes. Refuses, before allocating, a job whose model
// and batch do not fit in this machine's memory or whose data is too short for one sequence.
StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options);

// Sets the OpenMP thread count of the CPU kernels (GEMMs included: kernels/cpu/matmul.cc runs
// single-threaded OpenBLAS on blocks of the OpenMP team): OMP_NUM_THREADS when set, else
// `threads` when > 0, else the cores this process may run on. Returns the count used.
int ConfigureThreads(int threads);

}  // namespace fjord
