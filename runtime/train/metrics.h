// What one training step reports, and the three places it goes. The trainer fills one StepMetrics
// per optimizer step and hands it to rank 0's MetricsSink, which writes it as a line of
// run_dir/metrics.jsonl, as TensorBoard scalars, and on stdout as the progress line (or, with
// --json, as the same JSON line). A resumed run reads metrics.jsonl back through the same struct
// (ParseStepMetrics) to keep the lines its checkpoint covers.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/file_util.h"
#include "common/status.h"
#include "runtime/formats/tensorboard.h"

namespace fjord {

// One optimizer step as reported. Values are doubles so that a line read back prints the same text.
struct StepMetrics {
  int step = 0;                      // 1-based
  double loss = 0.0;                 // training loss, mean over ranks
  double lr = 0.0;                   // learning rate of the step
  double grad_norm = 0.0;            // global gradient norm before clipping
  double tokens_per_s = 0.0;         // global batch tokens over the step's wall time
  double ms = 0.0;                   // the step's wall time
  double exposed_comm_ms = 0.0;      // waiting on other ranks that backward did not hide
  double flops_per_token = 0.0;      // model FLOPs per token (runtime/model/mfu.h)
  std::optional<double> peak_flops;  // the ranks' peak FLOP/s, when known; then mfu is set too
  std::optional<double> mfu;         // model FLOPs utilisation against peak_flops
  std::optional<double> val_loss;    // the steps that evaluated
  uint64_t epoch = 0;                // epoch of the step's first sequence
  bool skipped = false;              // non-finite, not applied (train.on_nonfinite: SKIP_STEP)
  std::optional<double> tokens;      // tokens of the step, all ranks (global batch x sequence length)
  // Energy (job spec `energy`), set on the step that closes a window: the window is steps
  // energy_from_step .. step, summed over energy_ranks ranks (runtime/device/energy.h).
  std::optional<double> energy_from_step;
  std::optional<double> energy_ranks;
  std::optional<double> energy_measured_ranks;  // ranks whose counters covered the window
  std::optional<double> energy_j;               // joules the counters measured (when any rank did)
  std::optional<double> energy_estimated_j;     // joules estimated (energy.rank_power_w), when any
  std::optional<double> j_per_token;            // (measured + estimated) / the window's tokens, and
  std::optional<double> avg_power_w;            // / its seconds: only when every rank is counted
  // The straggler report (parallel.straggler_every_steps), on the step that closes its window: the
  // slowest rank, its host, what it is slow in (straggler_kind "compute" or "communication"), its
  // median time per step in that over steps straggler_from_step .. step (straggler_compute_ms or
  // straggler_comm_ms) and the median of the other ranks' (ms).
  std::optional<double> straggler_rank;
  std::string straggler_host;
  std::optional<double> straggler_from_step;
  std::string straggler_kind;
  std::optional<double> straggler_compute_ms;
  std::optional<double> straggler_comm_ms;
  std::optional<double> straggler_median_ms;

  bool operator==(const StepMetrics&) const = default;
};

// `m` as one line of metrics.jsonl, newline included: keys in the order above, optional ones only
// when set, "skipped" only when true.
std::string StepMetricsJson(const StepMetrics& m);

// The progress line's energy part for a step that closed a window: " | J/tok 0.0123", " | J/tok
// ~0.0123 (est.)" when part of it is estimated, " | J/tok - (1 of 2 ranks measured)", or " | J/tok
// not measured"; "" for a step that closed none.
std::string EnergyProgress(const StepMetrics& m);

// Reads a line StepMetricsJson wrote. Refuses, naming `source` and the field, a line that is not a
// JSON object, a field it does not know or of the wrong type, and a missing required field.
StatusOr<StepMetrics> ParseStepMetrics(std::string_view line, const std::string& source);

// Rank 0's outputs of the per-step metrics. Not thread-safe; one per Train.
class MetricsSink {
 public:
  struct Options {
    bool quiet = false;       // no progress lines (metrics.jsonl and TensorBoard are still written)
    bool json_lines = false;  // the JSON line on stdout instead of the progress line
    int steps = 0;            // train.steps: the last step always prints
    int log_every = 1;        // train.log_every: progress lines every N steps (and at evaluations)
    int world = 1;            // more than one rank: the progress line shows exposed communication
    bool energy = false;      // energy is measured (job spec energy.measure): the line shows J/tok
  };
  explicit MetricsSink(const Options& options) : options_(options) {}

  // Opens run_dir/metrics.jsonl (never through a symbolic link planted at its name): appended to
  // when `append` (a resumed run), else truncated. FailedPrecondition naming the file when it
  // cannot be written.
  Status OpenJsonl(const std::string& run_dir, bool append);
  // Keeps only the lines of steps up to `step` (a resumed run continues the one it resumes; the
  // steps after its checkpoint are run again). A line that does not read back is dropped, with a
  // note on stderr. The file is replaced atomically and reopened for appending.
  Status KeepThrough(int step);
  // Starts the TensorBoard event file in run_dir (train.tensorboard).
  Status OpenTensorBoard(const std::string& run_dir);
  // The progress line's ETA counts from `start`, over the steps after `start_step`.
  void StartClock(std::chrono::steady_clock::time_point start, int start_step);

  // Writes `m` to metrics.jsonl (write errors ignored, as a full disk must not stop training),
  // then to TensorBoard (flushed; its errors are returned), then on stdout.
  Status Record(const StepMetrics& m);

 private:
  Status ReopenJsonl(int how);  // O_APPEND or O_TRUNC
  void PrintProgress(const StepMetrics& m) const;

  Options options_;
  std::string jsonl_path_;
  Fd jsonl_{-1};
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  std::chrono::steady_clock::time_point start_;
  int start_step_ = 0;
  std::string energy_;  // " | J/tok ..." of the last window closed
};

}  // namespace fjord
