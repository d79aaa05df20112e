#include "runtime/train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "common/env.h"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/pointwise_math.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"
#include "runtime/data/data.h"
#include "runtime/device/device.h"
#include "common/file_util.h"
#include "runtime/model/gpt.h"
#include "runtime/train/grad_reducer.h"
#include "runtime/model/mfu.h"
#include "runtime/model/optimizer.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/formats/tensorboard.h"

#ifdef FJORD_HAVE_NCCL
#include "collectives/nccl/nccl_communicator.h"
#endif

namespace fjord {
namespace fs = std::filesystem;

float LearningRate(const proto::TrainSpec& train, int step) {
  const float lr = train.lr();
  const int warmup = train.warmup_steps();
  if (step < warmup) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const int decay_steps = train.steps() - warmup;
  if (decay_steps <= 1) return lr;
  const double ratio = static_cast<double>(step - warmup) / static_cast<double>(decay_steps - 1);
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return static_cast<float>(train.min_lr() + coeff * (lr - train.min_lr()));
}

int ConfigureThreads(int threads, int local_ranks) {
  int n = threads;
  if (std::optional<long> env = GetEnvInt("OMP_NUM_THREADS"); env && *env > 0) n = static_cast<int>(*env);
  if (n <= 0) {
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    n = std::max(1, n / std::max(1, local_ranks));
  }
  omp_set_num_threads(n);
  return n;
}

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string GiB(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Mean loss over the first `batches` batches of the validation stream, in order; batch i is
// scored by rank i % world, so every world size averages the same batches.
StatusOr<float> Evaluate(Gpt& model, const DataLoader& val, int B, int T, int batches, Communicator& comm,
                         std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  float sum = 0.0f;
  for (int i = comm.rank(); i < batches; i += comm.size()) {
    val.Fill(static_cast<uint64_t>(i) * B, B, inputs.data(), targets.data());
    sum += model.Forward(inputs.data(), targets.data(), B, T, 0.0f);
  }
  if (comm.size() > 1) FJORD_RETURN_IF_ERROR(comm.AllReduce(&sum, &sum, 1, DataType::kF32, ReduceOp::kSum));
  return sum / static_cast<float>(batches);
}

// FJORD_TEST_HOOK=sleep_in_step=RANK:STEP:SECONDS makes rank RANK sleep inside step STEP (1-based),
// between its backward pass and the gradient reduction: the other ranks then wait in a collective.
struct SleepHook {
  int rank = -1, step = -1, seconds = 0;
};

SleepHook ParseSleepHook() {
  SleepHook hook;
  if (std::optional<std::string> value = TestHook("sleep_in_step")) {
    std::sscanf(value->c_str(), "%d:%d:%d", &hook.rank, &hook.step, &hook.seconds);
  }
  return hook;
}

// SIGTERM / SIGINT / SIGUSR1: the first asks training to stop after the current step with a checkpoint;
// the second zeroes the host arenas (runtime/device/device.h) and ends the process at once. The handler
// also wakes the signal watcher (below) through a pipe, the only async-signal-safe way to hand it
// over: the byte is the signal, with kFromPeer set when another process sent it.
std::atomic<int> g_stop_signals{0};
int g_signal_pipe[2] = {-1, -1};
constexpr unsigned char kFromPeer = 0x80;

void OnStopSignal(int sig, siginfo_t* info, void*) {
  if (g_stop_signals.fetch_add(1) >= 1) {
    ZeroHostArenasNow(sig);
    std::_Exit(128 + sig);
  }
  if (g_signal_pipe[1] >= 0) {
    const bool from_other = info != nullptr && info->si_code == SI_USER && info->si_pid != getpid();
    const unsigned char byte = static_cast<unsigned char>(sig) | (from_other ? kFromPeer : 0);
    [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
  }
}

// The signal watcher says, on stderr, what the rank was doing when it was told to stop. This is
// how the survivors of a killed rank name the collective they were in: when a rank dies, Open
// MPI's daemons end the others with SIGTERM and, about a second later, SIGKILL (Slurm's
// --kill-on-bad-exit likewise), so the communicator's own timeout never fires. The watcher
// reports the oldest unfinished collective and the peer it waits for; when none is in flight yet
// (the rank was computing), it looks again for up to half a second, since the next collective of
// the step is where a rank that lost a peer gets stuck. Under preemption (all ranks signalled)
// the same line says where each rank was when the checkpoint-and-exit began.
//
// A rank whose peer died cannot reach its checkpoint, and the SIGKILL that follows would leave
// its arena unzeroed (SIGHUP needs nothing here: the arena's own handler zeroes and ends the
// rank). So when a SIGTERM or SIGINT from another process (mpirun's
// daemon; not a raise() of its own, not SIGUSR1, the preemption signal) finds the rank in a
// collective waiting for a peer, and that collective is still the one in flight kStuck later,
// the watcher zeroes the host arenas and ends the rank with 128 + signal: the job is being torn
// down, and a checkpoint is not coming.
constexpr auto kStuck = std::chrono::milliseconds(300);
// "AllReduce #6 (4 bytes float avg, tree)" of Communicator::InFlight(): the operation, without how
// long it has run.
std::string InFlightOp(const std::string& in_flight) { return in_flight.substr(0, in_flight.find(", running for")); }
struct SignalWatch {
  std::mutex mu;
  const Communicator* comm = nullptr;  // set while Train runs
  std::string who = "?";               // "rank R (host H)", kept after Train returns
  std::atomic<int> step{0};
};
SignalWatch g_watch;

void WatchSignals() {
  for (;;) {
    unsigned char byte = 0;
    const ssize_t n = read(g_signal_pipe[0], &byte, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return;
    const int sig = byte & ~kFromPeer;
    const bool teardown = (byte & kFromPeer) != 0 && sig != SIGUSR1;
    std::string what, who;
    bool alone = true;
    for (int tries = 0; tries < 50 && what.empty(); ++tries) {
      if (tries > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::lock_guard<std::mutex> lock(g_watch.mu);
      who = g_watch.who;
      if (g_watch.comm == nullptr) break;  // Train has returned (or not begun)
      what = g_watch.comm->InFlight();
      alone = g_watch.comm->size() == 1;
      if (alone) break;  // no peer to lose
    }
    std::fprintf(stderr, "fjord train: %s: signal %d (%s) during step %d; %s\n", who.c_str(), sig, strsignal(sig),
                 g_watch.step.load() + 1,
                 what.empty() ? "no collective in flight" : ("in " + what).c_str());
    std::fflush(stderr);
    if (!teardown || alone || what.find(", waiting for rank ") == std::string::npos) continue;
    std::this_thread::sleep_for(kStuck);
    std::string now;
    {
      std::lock_guard<std::mutex> lock(g_watch.mu);
      if (g_watch.comm == nullptr) continue;  // Train returned: its arena was released
      now = g_watch.comm->InFlight();
    }
    if (InFlightOp(now) != InFlightOp(what)) continue;  // the collective moved on: the peers are alive
    std::fprintf(stderr,
                 "fjord train: %s: still in %s %lld ms after signal %d: a peer has ended and the job is being "
                 "torn down; zeroing the arena and exiting without a checkpoint\n",
                 who.c_str(), what.c_str(), static_cast<long long>(kStuck.count()), sig);
    std::fflush(stderr);
    ZeroHostArenasNow(sig);
    std::_Exit(128 + sig);
  }
}

void InstallStopHandlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (pipe2(g_signal_pipe, O_CLOEXEC) == 0) std::thread(WatchSignals).detach();
  });
  struct sigaction action = {};
  action.sa_sigaction = OnStopSignal;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  // SIGUSR1: what mpirun and srun forward to every rank (fjord launch turns its SIGTERM into it;
  // Slurm sends it ahead of a time limit with --signal=USR1@SECONDS).
  sigaction(SIGUSR1, &action, nullptr);
}

// Registers the communicator with the signal watcher for the lifetime of Train.
class WatchScope {
 public:
  explicit WatchScope(const Communicator& comm) {
    const RankInfo info = comm.rank_info();
    std::lock_guard<std::mutex> lock(g_watch.mu);
    g_watch.comm = &comm;
    g_watch.who = "rank " + std::to_string(info.rank) + " (host " + info.host + ")";
  }
  ~WatchScope() {
    std::lock_guard<std::mutex> lock(g_watch.mu);
    g_watch.comm = nullptr;
  }
  WatchScope(const WatchScope&) = delete;
  WatchScope& operator=(const WatchScope&) = delete;
};

// "name[index]" of the first non-finite value in grads[begin, end), or "" when all are finite.
std::string FirstNonFinite(const Gpt& model, const float* grads, size_t begin, size_t end) {
  for (const ParamTensor& t : model.layout().tensors()) {
    const size_t lo = std::max(begin, t.offset), hi = std::min(end, t.offset + t.size());
    for (size_t i = lo; i < hi; ++i) {
      if (!std::isfinite(grads[i])) return t.name + "[" + std::to_string(i - t.offset) + "]";
    }
  }
  return "";
}

}  // namespace

CommOptions CommOptionsFor(const proto::JobSpec& job) {
  CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(job.parallel().comm_timeout() * 1000.0));
  StatusOr<Algorithm> algo = ParseAlgorithm(job.parallel().algo());
  options.algorithm = algo.ok() ? *algo : Algorithm::kAuto;
  return options;
}

Precision ResolvePrecision(proto::ModelSpec::DType dtype, bool cuda_device) {
  if (dtype == proto::ModelSpec::BF16) return Precision::kBf16;
  if (dtype == proto::ModelSpec::FP32) return Precision::kFp32;
  return cuda_device ? Precision::kBf16 : Precision::kFp32;
}

StatusOr<bool> ResolveAttention(proto::ModelSpec::Attention attention, int compute_capability,
                                Precision precision, int C, int NH) {
  if (attention != proto::ModelSpec::TENSOR_CORE) return false;
  std::string why;
  if (compute_capability == 0) {
    why = "this rank trains on the CPU";
  } else if (compute_capability < 80) {
    why = "the GPU is sm_" + std::to_string(compute_capability) + "; bf16 mma.sync needs sm_80 or newer";
  } else if (precision != Precision::kBf16) {
    why = "the model runs in fp32 (model.dtype); the kernels are bf16 only: set model.dtype: BF16";
  } else if (!cuda::experimental::AttentionForwardTensorCoreSupported(C, NH)) {
    why = "the head size n_embd / n_head is " + (NH > 0 ? std::to_string(C / NH) : std::string("undefined")) +
          "; the kernels support 64 and 128";
  }
  if (why.empty()) return true;
  return FailedPrecondition("model.attention: TENSOR_CORE cannot run here: " + why +
                            " (or set model.attention: SIMT or ATTENTION_AUTO)");
}

uint64_t RoundSeed(uint64_t train_seed, int step) {
  return Mix64(Mix64(train_seed) ^ static_cast<uint64_t>(step)) | 1;
}

StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options) {
  FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, CreateCommunicator(CommOptionsFor(job)));
  return Train(job, options, *comm);
}

StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options, Communicator& comm) {
  const proto::TrainSpec& train = job.train();
  GptConfig config = GptConfig::FromSpec(job.model());
  const int rank = comm.rank(), world = comm.size();
  const bool lead = rank == 0;
  const bool zero = job.parallel().zero_stage() == 1 && world > 1;
  const int B = train.micro_batch();
  const int T = TrainSeqLen(job);
  int accum = train.grad_accum();
  if (train.global_batch() > 0) {
    if (train.global_batch() % (B * world) != 0) {
      return InvalidArgument("train.global_batch = " + std::to_string(train.global_batch()) +
                             " is not divisible by train.micro_batch x world size = " + std::to_string(B) + " x " +
                             std::to_string(world) + " = " + std::to_string(B * world) +
                             ": choose a global batch that is a multiple of it, or change the rank count");
    }
    accum = train.global_batch() / (B * world);
  }
  const uint64_t global_batch = static_cast<uint64_t>(B) * accum * world;

  // ZeRO-1 shards: the buffers are padded to a multiple of 16 x world floats so every shard has
  // the same length and starts 64-byte aligned.
  const size_t multiple = zero ? 16 * static_cast<size_t>(world) : 16;
  const size_t num_params = ParamCount(config);  // closed form: the layout is built after CheckMemory
  const size_t buffer = (num_params + multiple - 1) / multiple * multiple;
  const size_t shard = zero ? buffer / world : buffer;

  // The device (job spec `device`), the precision on it (model.dtype) and how gradients travel
  // (parallel.comm_backend).
  const RankInfo where = comm.rank_info();
  FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Device> device,
                         CreateDevice(job.device(), where, CudaWorkspaceBytes(B, T)));
  config.precision = ResolvePrecision(job.model().dtype(), device->is_cuda());
  {
    StatusOr<bool> tc = ResolveAttention(job.model().attention(), device->compute_capability(),
                                         config.precision, config.n_embd, config.n_head);
    if (!tc.ok()) {
      return tc.status().WithContext("rank " + std::to_string(rank) + " on host " + where.host + " (" +
                                     device->description() + ")");
    }
    config.tensor_core_attention = *tc;
  }
  proto::ParallelSpec::CommBackend backend = job.parallel().comm_backend();
  if (backend == proto::ParallelSpec::AUTO) {
    backend = device->is_cuda() ? proto::ParallelSpec::NCCL : proto::ParallelSpec::MPI;
  }
  if (backend == proto::ParallelSpec::NCCL && !device->is_cuda()) {
    return FailedPrecondition("parallel.comm_backend: NCCL needs a CUDA device, but rank " + std::to_string(rank) +
                              " on host " + where.host + " trains on the CPU (device: " +
                              proto::Device_Name(job.device()) +
                              "): set parallel.comm_backend: MPI (or AUTO), or device: CUDA on GPU nodes");
  }
  // The arena (made below) is declared before the NCCL communicator so that it is destroyed after
  // it on every way out: the communicator's destructor waits for the collectives still in flight,
  // which write gradient buckets in the arena, so the arena is zeroed after the last write
  // (tenant hygiene on error returns too).
  std::unique_ptr<Arena> arena;
  std::unique_ptr<Communicator> nccl;
  if (backend == proto::ParallelSpec::NCCL && world > 1) {
#ifdef FJORD_HAVE_NCCL
    StatusOr<std::unique_ptr<Communicator>> made = CreateNcclCommunicator(CommOptionsFor(job), comm);
    if (!made.ok()) {
      return made.status().WithContext("parallel.comm_backend: NCCL" +
                                       std::string(job.parallel().comm_backend() == proto::ParallelSpec::AUTO
                                                       ? " (AUTO on a CUDA device)" : "") +
                                       "; with several ranks per GPU set parallel.comm_backend: MPI");
    }
    nccl = std::move(made).value();
#else
    return FailedPrecondition("parallel.comm_backend: NCCL, but this fjord was built without NCCL (rank " +
                              std::to_string(rank) + " on host " + where.host +
                              "): set parallel.comm_backend: MPI, or rebuild with NCCL (NCCL_ROOT)");
#endif
  }
  Communicator& grad_comm = nccl ? *nccl : comm;
  FJORD_RETURN_IF_ERROR(Gpt::CheckMemory(config, B, T, 2, zero ? world : 1, *device,
                                         "lower train.micro_batch or train.seq_len (and raise train.grad_accum), "
                                         "or use a smaller model (model.n_layer, model.n_embd)")
                            .WithContext("rank " + std::to_string(rank) + " on host " + where.host));

  // Tenancy gate 3: the data policy for the loaders, the seal for checkpoints (without a Tenancy,
  // still the job's checkpoint.encryption_key_file).
  if (options.tenancy == nullptr && !job.tenant().id().empty()) {
    return FailedPrecondition("tenant " + job.tenant().id() +
                              "'s job reached training without its gates (no Tenancy): start it with fjord train "
                              "or fjord launch, which check this node's identity first");
  }
  const DataPolicy* data_policy = options.tenancy ? &options.tenancy->data_policy() : nullptr;
  CheckpointSeal seal;
  if (options.tenancy) {
    seal = options.tenancy->checkpoint_seal();
  } else {
    FJORD_ASSIGN_OR_RETURN(seal, CheckpointSealFor(job));
  }
  FJORD_ASSIGN_OR_RETURN(DataLoader train_data,
                         DataLoader::Open(job.data().train(), "data.train", config.vocab_size, T, train.seed(),
                                          /*shuffle=*/true, data_policy));
  if (train_data.sequences_per_epoch() < global_batch) {
    return FailedPrecondition(
        "data.train holds " + std::to_string(train_data.sequences_per_epoch()) + " sequences of " +
        std::to_string(T + 1) + " tokens per epoch, fewer than one global batch of " + std::to_string(global_batch) +
        " (train.micro_batch " + std::to_string(B) + " x grad_accum " + std::to_string(accum) + " x world size " +
        std::to_string(world) + "): use fewer ranks or a smaller batch, or give more data");
  }
  std::unique_ptr<DataLoader> val_data;
  if (!job.data().val().empty()) {
    FJORD_ASSIGN_OR_RETURN(DataLoader v, DataLoader::Open(job.data().val(), "data.val", config.vocab_size, T,
                                                          train.seed(), /*shuffle=*/false, data_policy));
    val_data = std::make_unique<DataLoader>(std::move(v));
  }

  Fd metrics(-1);  // never written through a symbolic link planted at its name
  const std::string metrics_path = (fs::path(job.run_dir()) / "metrics.jsonl").string();
  auto open_metrics = [&](int how) {
    metrics = Fd(::open(metrics_path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | how, 0644));
    const int err = errno;
    return metrics.get() >= 0 ? OkStatus()
                              : FailedPrecondition("cannot write " + metrics_path + ": " + std::strerror(err) +
                                                   (err == ELOOP ? "; it is a symbolic link: remove it" : ""));
  };
  if (lead) {
    std::error_code ec;
    fs::create_directories(job.run_dir(), ec);
    if (ec) return Internal("cannot create run_dir " + job.run_dir() + ": " + ec.message());
    // A resumed run keeps the lines of the steps its checkpoint covers (rewritten below).
    FJORD_RETURN_IF_ERROR(open_metrics(job.checkpoint().resume() ? O_APPEND : O_TRUNC));
  }

  TrainResult result;
  const int threads = ConfigureThreads(train.threads(), RankInfoFromEnvironment().local_size);
  // One arena for everything the step touches on the device, zeroed before it is freed.
  const size_t optimizer_count = zero ? shard : num_params;
  const size_t arena_bytes = Gpt::ArenaBytes(config, B, T, multiple) + AdamW::ArenaBytes(optimizer_count);
  FJORD_ASSIGN_OR_RETURN(
      arena, Arena::Create(*device, arena_bytes, "model, gradients, activations and AdamW state"));
  if (lead && !options.quiet && !options.json_lines) {
    const char* gradients_over = world == 1 ? ""
                                 : nccl    ? ", gradients over NCCL"
                                 : device->is_cuda() ? ", gradients over MPI (host staging)"
                                                     : "";
    std::printf(
        "fjord train: device %s (device: %s), %s (model.dtype: %s), %s attention (model.attention: %s), "
        "arena %s (%zu bytes)%s\n",
        device->description().c_str(), proto::Device_Name(job.device()).c_str(),
        PrecisionName(config.precision), proto::ModelSpec::DType_Name(job.model().dtype()).c_str(),
        !device->is_cuda()             ? "cpu"
        : config.tensor_core_attention ? "tensor-core"
                                       : "simt",
        proto::ModelSpec::Attention_Name(job.model().attention()).c_str(), GiB(arena_bytes).c_str(),
        arena_bytes, gradients_over);
    std::fflush(stdout);
  }
  Gpt model(config, B, T, *arena, multiple);
  if (train.init_from().empty()) {
    model.InitGpt2(train.seed());
  } else {
    FJORD_ASSIGN_OR_RETURN(std::string init_dir, ResolveCheckpointDir(train.init_from()));
    // Gate 3 for checkpoints: whose it is, where it may be opened, how to read it.
    StatusOr<CheckpointSeal> init_seal =
        options.tenancy ? options.tenancy->CheckCheckpoint(init_dir, CheckpointUse::kInitFrom)
                        : CheckCheckpointTenant(init_dir, seal, nullptr, CheckpointUse::kInitFrom);
    if (!init_seal.ok()) return init_seal.status().WithContext("train.init_from");
    FJORD_RETURN_IF_ERROR(LoadCheckpointWeights(init_dir, model, &*init_seal).WithContext("train.init_from"));
  }
  std::unique_ptr<TensorBoardWriter> tensorboard;
  if (lead && train.tensorboard()) {
    FJORD_ASSIGN_OR_RETURN(tensorboard, TensorBoardWriter::Open(job.run_dir()));
  }
  const size_t shard_begin = zero ? shard * rank : 0;
  AdamW optimizer(model.layout(), shard_begin, shard_begin + optimizer_count, *arena);
  const size_t bucket_floats = static_cast<size_t>(job.parallel().bucket_mb() * 1024.0 * 1024.0 / sizeof(float));
  ReducePath path;
  if (device->is_cuda() && world > 1) {
    path.device = device.get();
    path.stage_through_host = !nccl;
#ifdef FJORD_HAVE_NCCL
    if (nccl) {
      FJORD_ASSIGN_OR_RETURN(path.comm_stream, NcclStream(*nccl));
    }
#endif
  }
  GradReducer reducer(grad_comm, model.grads(), model.buffer_size(), bucket_floats, path);
  const bool overlap = job.parallel().overlap() && world > 1 && !zero;
  // MFU: the model's FLOPs per token against the peak of all ranks (each rank's as rank 0's).
  const double flops_per_token = ModelFlopsPerToken(config, T);
  const RankPeak rank_peak =
      device->is_cuda() ? GpuRankPeak(job, device->description()) : CpuRankPeak(job, threads);
  const double peak_flops = rank_peak.flops * world;
  if (lead && !options.quiet && !options.json_lines) {
    std::printf("fjord train: %zu parameters, %d layers, n_embd %d, vocab %d (padded %d), %d rank(s) x batch %d x "
                "%d x accum %d, %d threads/rank, %s of model memory/rank, %llu train tokens%s\n",
                model.num_params(), config.n_layer, config.n_embd, config.vocab_size, config.padded_vocab, world, B,
                T, accum, threads, GiB(Gpt::MemoryBytes(config, B, T) + AdamW::MemoryBytes(shard)).c_str(), static_cast<unsigned long long>(train_data.num_tokens()),
                world == 1 ? "" : zero ? ", ZeRO-1" : overlap ? ", overlapped bucket all-reduce" : ", all-reduce");
    std::printf("fjord train: %.4g model FLOPs/token; MFU against %.4g TFLOP/s/rank (%s)\n", flops_per_token,
                rank_peak.flops / 1e12, rank_peak.source.c_str());
    std::fflush(stdout);
  }
  const SleepHook hook = ParseSleepHook();
  const Clock::time_point train_start = Clock::now();
  if (hook.rank >= 0 && hook.rank == rank) {
    std::fprintf(stderr, "fjord: TEST HOOK active on rank %d: sleep %d s in step %d (FJORD_TEST_HOOK)\n", rank,
                 hook.seconds, hook.step);
  }

  // Resume: the newest checkpoint that verifies; damaged newer ones are named and skipped.
  const std::string checkpoints_dir = job.checkpoint().dir().empty()
                                          ? (fs::path(job.run_dir()) / "checkpoints").string()
                                          : job.checkpoint().dir();
  int start_step = 0;
  uint64_t start_sequence = 0;
  if (job.checkpoint().resume()) {
    std::vector<std::string> skipped;
    StatusOr<std::string> dir = NewestGoodCheckpoint(checkpoints_dir, &skipped);
    for (const std::string& note : skipped) {
      if (lead) std::fprintf(stderr, "fjord train: skipping damaged checkpoint %s; falling back to an older one\n",
                             note.c_str());
    }
    if (dir.ok()) {
      // Gate 3 first: a tenant record holds manifest.json's digest, so the state read next is checked.
      StatusOr<CheckpointSeal> resume_seal =
          options.tenancy ? options.tenancy->CheckCheckpoint(*dir, CheckpointUse::kResume)
                          : CheckCheckpointTenant(*dir, seal, nullptr, CheckpointUse::kResume);
      if (!resume_seal.ok()) return resume_seal.status().WithContext("resuming");
      FJORD_ASSIGN_OR_RETURN(CheckpointState state, ReadCheckpointState(*dir));
      FJORD_RETURN_IF_ERROR(LoadCheckpointWeights(*dir, model, &*resume_seal).WithContext("resuming"));
      std::vector<float> full_m(num_params), full_v(num_params);
      FJORD_RETURN_IF_ERROR(
          LoadCheckpointOptimizer(*dir, model, full_m.data(), full_v.data(), &*resume_seal).WithContext("resuming"));
      const size_t own_end = std::min(optimizer.end(), num_params);
      std::vector<float> own_m(optimizer.end() - optimizer.begin()), own_v(own_m.size());
      for (size_t i = optimizer.begin(); i < own_end; ++i) {
        own_m[i - optimizer.begin()] = full_m[i];
        own_v[i - optimizer.begin()] = full_v[i];
      }
      optimizer.LoadState(own_m.data(), own_v.data());
      start_step = state.step;
      model.RoundWorkingParams(RoundSeed(train.seed(), start_step));  // as the run being resumed did
      start_sequence = state.sequences_consumed;
      if (lead && !options.quiet && !options.json_lines) {
        std::printf("fjord train: resuming from %s (step %d, written by %d rank(s)%s) on %d rank(s)\n", dir->c_str(),
                    state.step, state.world_size, state.zero_stage == 1 ? " with ZeRO-1" : "", world);
      }
    } else if (!skipped.empty()) {
      return FailedPrecondition("--resume: every checkpoint in " + checkpoints_dir +
                                " is damaged (see above); remove them to start fresh");
    } else if (lead && !options.quiet && !options.json_lines) {
      std::printf("fjord train: no checkpoint in %s to resume from; starting at step 0\n", checkpoints_dir.c_str());
    }
  }
  if (lead && start_step > 0) {
    // Continue the metrics of the run being resumed, dropping lines of steps after the checkpoint.
    metrics.Close();
    std::string kept;
    {
      std::ifstream old(metrics_path);
      for (std::string line; std::getline(old, line);) {
        int s = 0;
        if (std::sscanf(line.c_str(), "{\"step\": %d", &s) == 1 && s <= start_step) kept += line + "\n";
      }
    }
    FJORD_RETURN_IF_ERROR(WriteFileAtomic(metrics_path, {{kept.data(), kept.size()}}));
    FJORD_RETURN_IF_ERROR(open_metrics(O_APPEND));
  }

  // Writes the checkpoint after `steps_done` steps (every rank takes part: ZeRO-1 gathers the
  // AdamW shards), then prunes old ones. Rank 0 writes.
  auto checkpoint = [&](int steps_done) -> Status {
    std::vector<float> full_m, full_v, own_m, own_v;
    const float* m = optimizer.m();
    const float* v = optimizer.v();
    if (device->is_cuda()) {  // host copies; the file format is the same on every device
      own_m.resize(optimizer.end() - optimizer.begin());
      own_v.resize(own_m.size());
      optimizer.StateToHost(own_m.data(), own_v.data());
      m = own_m.data();
      v = own_v.data();
    }
    if (zero) {
      full_m.resize(buffer);
      full_v.resize(buffer);
      FJORD_RETURN_IF_ERROR(comm.AllGather(m, full_m.data(), shard, DataType::kF32));
      FJORD_RETURN_IF_ERROR(comm.AllGather(v, full_v.data(), shard, DataType::kF32));
      m = full_m.data();
      v = full_v.data();
    }
    if (!lead) return OkStatus();
    CheckpointState state;
    state.step = steps_done;
    state.sequences_consumed = start_sequence + static_cast<uint64_t>(steps_done - start_step) * global_batch;
    state.world_size = world;
    state.zero_stage = zero ? 1 : 0;
    state.seed = train.seed();
    model.SyncParamsToHost();
    FJORD_ASSIGN_OR_RETURN(result.checkpoint_dir, SaveCheckpoint(checkpoints_dir, state, job, model, m, v, &seal));
    if (options.tenancy) FJORD_RETURN_IF_ERROR(options.tenancy->RecordCheckpointWritten(result.checkpoint_dir));
    if (!options.quiet && !options.json_lines) {
      std::printf("fjord train: checkpoint %s\n", result.checkpoint_dir.c_str());
      std::fflush(stdout);
    }
    return PruneCheckpoints(checkpoints_dir, job.checkpoint().keep_last());
  };

  InstallStopHandlers();
  const WatchScope watch_scope(comm);
  static const std::optional<std::string> nan_hook = TestHook("nan_in_step");
  // signal_after_step=N: this process sends itself SIGTERM at the end of step N (preemption).
  static const std::optional<std::string> signal_hook = TestHook("signal_after_step");
  // fail_in_step=RANK:STEP: rank RANK returns an error in step STEP before the gradient reduction
  // (fjord train then aborts the job; its peers are waiting in that reduction).
  static const std::optional<std::string> fail_hook = TestHook("fail_in_step");
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const int steps = train.steps();
  result.start_step = start_step;
  for (int step = start_step; step < steps; ++step) {
    g_watch.step.store(step);
    const Clock::time_point t0 = Clock::now();
    const float lr = LearningRate(train, step);
    const uint64_t step_first = start_sequence + static_cast<uint64_t>(step - start_step) * global_batch;
    model.ZeroGrads();
    float loss = 0.0f;
    for (int micro = 0; micro < accum; ++micro) {
      const uint64_t first =
          step_first + (static_cast<uint64_t>(micro) * world + static_cast<uint64_t>(rank)) * B;
      train_data.Fill(first, B, inputs.data(), targets.data());
      loss += model.Forward(inputs.data(), targets.data(), B, T, 1.0f / static_cast<float>(accum));
      const bool reduce_now = micro + 1 == accum && overlap;
      if (reduce_now) {
        model.Backward([&reducer](size_t begin, size_t end) { reducer.OnReady(begin, end); });
      } else {
        model.Backward();
      }
    }
    loss /= static_cast<float>(accum);
    if (nan_hook && std::atoi(nan_hook->c_str()) == step + 1 && rank == 0) {
      const float nan = NAN;
      device->Upload(model.grads() + model.layout().lnf_w(), &nan, sizeof(float));
    }
    if (hook.rank == rank && hook.step == step + 1) std::this_thread::sleep_for(std::chrono::seconds(hook.seconds));
    if (int fail_rank = -1, fail_step = -1;
        fail_hook && std::sscanf(fail_hook->c_str(), "%d:%d", &fail_rank, &fail_step) == 2 && fail_rank == rank &&
        fail_step == step + 1) {
      return Internal("test hook fail_in_step: rank " + std::to_string(rank) + " fails in step " +
                      std::to_string(step + 1));
    }

    // Everything from here to the end of the parameter update waits on other ranks: the
    // communication backward did not hide.
    const Clock::time_point comm_start = Clock::now();
    double comm_seconds = 0.0;
    float sum_squares = 0.0f;
    if (world > 1) {
      if (zero) {
        FJORD_RETURN_IF_ERROR(reducer.ReduceScatterShard(shard_begin, shard));
        sum_squares = model.SumSquares(model.grads() + shard_begin, shard);
        FJORD_RETURN_IF_ERROR(comm.AllReduce(&sum_squares, &sum_squares, 1, DataType::kF32, ReduceOp::kSum));
      } else {
        FJORD_RETURN_IF_ERROR(reducer.Finish());
        sum_squares = model.GradSumSquares();
      }
      FJORD_RETURN_IF_ERROR(comm.AllReduce(&loss, &loss, 1, DataType::kF32, ReduceOp::kAvg));
    } else {
      sum_squares = model.GradSumSquares();
    }
    comm_seconds += Seconds(comm_start, Clock::now());
    const float grad_norm = std::sqrt(sum_squares);
    const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
    if (!finite && train.on_nonfinite() == proto::ABORT) {
      std::vector<float> host_grads;
      const float* grads = model.grads();
      if (device->is_cuda()) {
        host_grads.resize(model.buffer_size());
        device->Download(host_grads.data(), grads, host_grads.size() * sizeof(float));
        grads = host_grads.data();
      }
      std::string where = FirstNonFinite(model, grads, zero ? shard_begin : 0,
                                         zero ? std::min(shard_begin + shard, num_params) : num_params);
      return FailedPrecondition(
          "step " + std::to_string(step + 1) + ": loss " + std::to_string(loss) + ", gradient norm " +
          std::to_string(grad_norm) + " is not finite" +
          (where.empty() ? std::string(" (this rank's gradients are finite)")
                         : " (first non-finite gradient on rank " + std::to_string(rank) + ": " + where + ")") +
          "; no update was applied and the checkpoints in " + checkpoints_dir +
          " are intact. Lower train.lr or raise train.warmup_steps, or set train.on_nonfinite: SKIP_STEP");
    }
    // bf16: the working copy is rounded from the master weights with this seed after every step,
    // skipped ones too, so the rounding after step k depends on k alone (resume replays it).
    const uint64_t round_seed = RoundSeed(train.seed(), step + 1);
    if (finite) {
      const float clip =
          train.grad_clip() > 0.0f && grad_norm > train.grad_clip() ? train.grad_clip() / grad_norm : 1.0f;
      // AdamW writes the working copy of every tensor element it updates, in the update's pass. The
      // padding between and after tensors is +0 in the master weights and rounds to bf16 +0
      // whatever the seed, which the working copy already holds: without ZeRO nothing is left.
      optimizer.Step(model.params(), model.grads(), lr, train.beta1(), train.beta2(), train.eps(),
                     train.weight_decay(), clip, step + 1, model.working_params_bf16(), round_seed);
    } else {
      ++result.skipped_steps;
      model.RoundWorkingParams(round_seed);
    }
    if (zero && finite) {
      const Clock::time_point gather_start = Clock::now();
      FJORD_RETURN_IF_ERROR(reducer.AllGatherShard(model.params(), shard_begin, shard));
      comm_seconds += Seconds(gather_start, Clock::now());
      // The other ranks' shards, rounded with the seed and buffer indices their owners used, so
      // every rank's working copy is the whole-buffer cast.
      model.RoundWorkingParams(round_seed, 0, shard_begin);
      model.RoundWorkingParams(round_seed, shard_begin + shard, model.buffer_size());
    }
    device->Synchronize();  // the update is enqueued on a CUDA device; the step ends when it is done
    const double seconds = Seconds(t0, Clock::now());
    const double tokens_per_s = static_cast<double>(global_batch) * T / seconds;
    result.losses.push_back(loss);

    const bool last = step + 1 == steps;
    float val_loss = NAN;
    if (val_data && train.eval_every() > 0 && ((step + 1) % train.eval_every() == 0 || last)) {
      FJORD_ASSIGN_OR_RETURN(val_loss, Evaluate(model, *val_data, B, T, train.eval_batches(), comm, inputs, targets));
      result.val_losses.push_back(val_loss);
    }
    const bool every = job.checkpoint().every_steps() > 0 && (step + 1) % job.checkpoint().every_steps() == 0;
    if (signal_hook && std::atoi(signal_hook->c_str()) == step + 1) raise(SIGTERM);
    int stop = g_stop_signals.load() > 0 ? 1 : 0;
    if (world > 1) FJORD_RETURN_IF_ERROR(comm.AllReduce(&stop, &stop, 1, DataType::kI32, ReduceOp::kMax));
    if (lead) {
    const double mfu = Mfu(flops_per_token, tokens_per_s, peak_flops);
    char line[768];
    int n = std::snprintf(line, sizeof(line),
                          "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                          "\"ms\": %.3f, \"exposed_comm_ms\": %.3f, \"flops_per_token\": %.0f",
                          step + 1, loss, lr, grad_norm, tokens_per_s, seconds * 1000.0, comm_seconds * 1000.0,
                          flops_per_token);
    if (!std::isnan(mfu)) {
      n += std::snprintf(line + n, sizeof(line) - n, ", \"peak_flops\": %.6e, \"mfu\": %.6g", peak_flops, mfu);
    }
    if (!std::isnan(val_loss)) n += std::snprintf(line + n, sizeof(line) - n, ", \"val_loss\": %.6f", val_loss);
    n += std::snprintf(line + n, sizeof(line) - n, ", \"epoch\": %llu",
                       static_cast<unsigned long long>(step_first / train_data.sequences_per_epoch()));
    if (!finite) n += std::snprintf(line + n, sizeof(line) - n, ", \"skipped\": true");
    std::snprintf(line + n, sizeof(line) - n, "}\n");
    if (metrics.get() >= 0) (void)WriteAll(metrics.get(), line, std::strlen(line), metrics_path);
    if (tensorboard) {
      const std::pair<const char*, float> scalars[] = {
          {"train/loss", loss}, {"train/lr", lr}, {"train/grad_norm", grad_norm},
          {"perf/tokens_per_s", static_cast<float>(tokens_per_s)},
          {"perf/exposed_comm_ms", static_cast<float>(comm_seconds * 1000.0)}};
      for (const auto& [tag, value] : scalars) FJORD_RETURN_IF_ERROR(tensorboard->AddScalar(tag, step + 1, value));
      if (!std::isnan(mfu)) {
        FJORD_RETURN_IF_ERROR(tensorboard->AddScalar("perf/mfu", step + 1, static_cast<float>(mfu)));
      }
      if (!std::isnan(val_loss)) FJORD_RETURN_IF_ERROR(tensorboard->AddScalar("val/loss", step + 1, val_loss));
      FJORD_RETURN_IF_ERROR(tensorboard->Flush());
    }

    if (options.json_lines) {
      std::fputs(line, stdout);
      std::fflush(stdout);
    } else if (!options.quiet && ((step + 1) % train.log_every() == 0 || last || !std::isnan(val_loss))) {
      const double elapsed = Seconds(train_start, Clock::now());
      const double eta = elapsed / (step + 1 - start_step) * (steps - step - 1);
      std::printf("step %5d/%d | loss %.4f", step + 1, steps, loss);
      if (!std::isnan(val_loss)) std::printf(" | val %.4f", val_loss);
      std::printf(" | lr %.2e | norm %.3f | %7.1f ms | %8.0f tok/s | MFU %s", lr, grad_norm, seconds * 1000.0,
                  tokens_per_s, FormatMfu(mfu).c_str());
      if (world > 1) std::printf(" | comm %.1f ms", comm_seconds * 1000.0);
      std::printf(" | eta %dm%02ds\n", static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
      std::fflush(stdout);
    }
    }  // lead
    result.checkpoint_dir.clear();
    if (every || last || stop) FJORD_RETURN_IF_ERROR(checkpoint(step + 1));
    if (stop) {
      result.stopped_by_signal = true;
      if (lead) {
        std::fprintf(stderr, "fjord train: stopped by a signal after step %d; checkpoint %s; continue with --resume\n",
                     step + 1, result.checkpoint_dir.c_str());
      }
      return result;
    }
  }
  return result;
}

}  // namespace fjord
