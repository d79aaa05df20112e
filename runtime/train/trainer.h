// The training loop of one rank: data, forward/backward with gradient accumulation, clipping,
// AdamW with warmup + cosine decay, validation, metrics and the final checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"
#include "proto/job.pb.h"
#include "runtime/model/gpt.h"
#include "runtime/model/memory_plan.h"

namespace fjord {

// Learning rate at optimizer step `step` (0-based): linear warmup from lr/warmup to lr over
// warmup_steps, then cosine decay from lr to min_lr, reaching min_lr at the last step.
float LearningRate(const proto::TrainSpec& train, int step);

struct TrainOptions {
  bool quiet = false;       // no progress lines on stdout (metrics.jsonl is still written)
  bool json_lines = false;  // print each step's metrics JSON line on stdout instead of progress lines
  // Tenancy context of this rank (Tenancy::Start), owned by the caller. null: only for a job without
  // tenant (a tenant job is refused), whose loaders then refuse every shard a manifest governs, with no
  // audit log; checkpoints are sealed only as the job spec's checkpoint.encryption_key_file says.
  const class Tenancy* tenancy = nullptr;
  // What to do when run_dir (or checkpoint.dir) holds an earlier run's metrics.jsonl, TensorBoard
  // files or checkpoints and the job does not resume: refuse, naming them and the ways on (the
  // default), or remove them first (fjord train --overwrite). The audit log is never removed.
  bool overwrite = false;
  // On resume, every setting that differs from the checkpoint's job is printed with what it does to
  // the run. A change of the global batch (e.g. another world size without train.global_batch) or of
  // the learning-rate schedule (train.lr, min_lr, warmup_steps, steps) is refused unless this is set
  // (fjord train --accept-changes).
  bool accept_changes = false;
  // Check the job, its data, the batch plan, memory and run_dir, print the plan (rank 0), and return
  // without building the model, training or writing anything of the run (fjord train --dry-run).
  bool dry_run = false;
};

struct TrainResult {
  std::vector<float> losses;       // training loss per optimizer step (mean over ranks)
  std::vector<float> val_losses;   // one per evaluation
  std::string checkpoint_dir;      // where rank 0 wrote the last checkpoint ("" if none)
  int start_step = 0;              // > 0 when resumed from a checkpoint
  int skipped_steps = 0;           // non-finite steps skipped (train.on_nonfinite: SKIP_STEP)
  bool stopped_by_signal = false;  // SIGTERM/SIGINT: stopped after a step with a checkpoint
};

// The communicator options a job asks for (parallel.comm_timeout, parallel.algo).
CommOptions CommOptionsFor(const proto::JobSpec& job);

// model.dtype on a device: AUTO is bf16 on a CUDA device and fp32 on the CPU.
Precision ResolvePrecision(proto::ModelSpec::DType dtype, bool cuda_device);

// What the memory plan (runtime/model/memory_plan.h) of `job` on `ranks` ranks needs: the
// architecture, the precision on that device, train.recompute, train.micro_batch, the training
// sequence length, parallel.zero_stage and whether gradients travel over NCCL. `fjord plan`,
// `fjord launch` and the trainer all plan from it.
MemoryPlanInputs JobPlanInputs(const proto::JobSpec& job, int ranks, bool cuda_device);

// The stochastic-rounding seed of the bf16 working parameters after `step` optimizer steps of a
// run seeded `train_seed` (Gpt::RoundWorkingParams): never 0, the same on every rank, and a
// function of the step alone so that a resumed run rounds as the uninterrupted one did.
uint64_t RoundSeed(uint64_t train_seed, int step);

// model.attention for a model of n_embd C and n_head NH on a device (compute_capability as
// Device::compute_capability, 0 for the CPU) at `precision`: whether the tensor-core attention
// kernels run (GptConfig::tensor_core_attention). ATTENTION_AUTO and SIMT: false. TENSOR_CORE:
// true where they can run (CUDA, sm_80 or newer, bf16, head size 64 or 128), else
// FailedPrecondition saying which requirement failed and what to set instead. Grouped-query
// attention (model.n_kv_head) runs on both kinds of kernels.
StatusOr<bool> ResolveAttention(proto::ModelSpec::Attention attention, int compute_capability,
                                Precision precision, int C, int NH);

// Trains the model the (validated) job describes on the ranks of `comm`: each rank takes its
// slice of every global batch (micro_batch x grad_accum x world sequences, the same sequences
// whatever the world size), gradients are averaged over ranks in buckets overlapped with
// backward (with ZeRO-1 reduce-scattered after it; with ZeRO-2 reduce-scattered unit by unit
// during it into each rank's gradient shard, runtime/train/unit_reducer.h), and rank 0 writes
// metrics and checkpoints.
// Refuses, before allocating, a job whose model and batch do not fit in memory, whose
// train.global_batch does not divide by micro_batch x world, or whose data holds fewer
// sequences than one global batch. A failed collective ends training with its error.
StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options, Communicator& comm);

// Train on a communicator made for this process (CreateCommunicator).
StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options);

// Told by the trainer's signal watcher (a thread, never the signal handler) how a rank is ending:
// `how` is "signal N" when a signal from another process (mpirun's daemon tearing the job down, a
// kill) reaches it, or "parent_lost" when the process that started it (Open MPI's orted, srun's
// step daemon) has died, or "waiting" (sig 0, not an end) when a collective has waited for the same
// peer for 0.3 s (a peer that may be lost: the note that survives a SIGKILL of this rank in the
// job's teardown); `detail` says what the rank was doing; `exiting`: the watcher ends the
// process right after the call (else the rank may still finish its step and end normally). The
// launcher records it (the rank's end record, rank 0's job_end with the signal).
using SignalEndHook = void (*)(int sig, const std::string& how, const std::string& detail, bool exiting);
void SetSignalEndHook(SignalEndHook hook);

// A file the signal handler itself writes ("signal N") on the first signal from another process,
// before the watcher thread runs: the record that survives when the SIGKILL that follows a teardown
// comes before the watcher was scheduled. "" (the default): none. Set it before training.
void SetSignalEndFile(const std::string& path);

// Sets the OpenMP thread count of the CPU kernels (GEMMs included: kernels/cpu/matmul.cc runs
// single-threaded OpenBLAS on blocks of the OpenMP team): OMP_NUM_THREADS when set, else
// `threads` when > 0, else the cores this process may run on. Returns the count used.
// With local_ranks > 1 (ranks sharing this node) the cores are divided between them.
int ConfigureThreads(int threads, int local_ranks = 1);

}  // namespace fjord
