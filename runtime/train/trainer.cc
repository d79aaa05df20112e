#include "runtime/train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <syslog.h>
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
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/env.h"
#include "common/json.h"
#include "common/text.h"
#include "kernels/cuda/attention_tc.cuh"
#include "kernels/pointwise_math.h"
#include "runtime/data/data.h"
#include "runtime/device/device.h"
#include "runtime/device/energy.h"
#include "runtime/model/gpt.h"
#include "runtime/model/memory_plan.h"
#include "runtime/model/mfu.h"
#include "runtime/model/optimizer.h"
#include "runtime/model/zero_units.h"
#include "runtime/tenancy/audit.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"
#include "runtime/train/grad_reducer.h"
#include "runtime/train/metrics.h"
#include "runtime/train/param_gatherer.h"
#include "runtime/train/unit_reducer.h"

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

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string GiB(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Mean loss over the first `batches` batches of the validation stream, in order; batch i is
// scored by rank i % world, so every world size averages the same batches. With `lockstep`
// (ZeRO-3: every forward gathers parameters, a collective) every rank runs the same number of
// forwards: a rank left without a batch in the last round scores batch 0 again and discards it.
StatusOr<float> Evaluate(Gpt& model, const DataLoader& val, int B, int T, int batches, Communicator& comm,
                         std::vector<int32_t>& inputs, std::vector<int32_t>& targets, bool lockstep) {
  float sum = 0.0f;
  const int rounds = lockstep ? (batches + comm.size() - 1) / comm.size() : 0;
  for (int k = 0, i = comm.rank(); i < batches || k < rounds; ++k, i += comm.size()) {
    const bool scored = i < batches;
    FJORD_RETURN_IF_ERROR(
        val.Fill(scored ? static_cast<uint64_t>(i) * B : 0, B, inputs.data(), targets.data()));
    const float loss = model.Forward(inputs.data(), targets.data(), B, T, 0.0f);
    if (scored) sum += loss;
  }
  if (comm.size() > 1) FJORD_RETURN_IF_ERROR(comm.AllReduce(&sum, &sum, 1, DataType::kF32, ReduceOp::kSum));
  return sum / static_cast<float>(batches);
}

// SIGTERM / SIGINT / SIGUSR1: the first asks training to stop after the current step with a checkpoint;
// the second zeroes the host arenas (runtime/device/device.h) and ends the process at once. The handler
// also wakes the signal watcher (below) through a pipe, the only async-signal-safe way to hand it
// over: the byte is the signal, with kFromPeer set when another process sent it.
std::atomic<int> g_stop_signals{0};
int g_signal_pipe[2] = {-1, -1};
constexpr unsigned char kFromPeer = 0x80;
// The second signal: the arenas are zeroed; the watcher records the end and exits (the handler
// exits itself if the watcher has not within kFatalGrace).
constexpr unsigned char kFatal = 0x40;
constexpr long kFatalGraceMs = 500;
std::atomic<SignalEndHook> g_end_hook{nullptr};
// The parent (orted, slurmstepd) when a launcher started this rank, else 0; its death sends
// SIGUSR2 (PR_SET_PDEATHSIG).
std::atomic<pid_t> g_parent{0};

// SetSignalEndFile's path, for the handler (open, write and close are async-signal-safe).
char g_end_file[4096] = {0};

void WriteSignalEndFile(int sig) {
  if (g_end_file[0] == 0) return;
  char text[32] = "signal ";
  size_t n = 7;
  if (sig >= 10) text[n++] = static_cast<char>('0' + sig / 10);
  text[n++] = static_cast<char>('0' + sig % 10);
  text[n++] = '\n';
  const int fd = open(g_end_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  [[maybe_unused]] const ssize_t w = write(fd, text, n);
  close(fd);
}

void OnStopSignal(int sig, siginfo_t* info, void*) {
  if (g_stop_signals.fetch_add(1) >= 1) {
    ZeroHostArenasNow(sig);
    if (g_signal_pipe[1] >= 0 && g_end_hook.load() != nullptr) {
      const unsigned char byte = static_cast<unsigned char>(sig) | kFatal;
      if (write(g_signal_pipe[1], &byte, 1) == 1) {
        const struct timespec tick = {0, 10'000'000};
        for (long waited = 0; waited < kFatalGraceMs; waited += 10) nanosleep(&tick, nullptr);
      }
    }
    std::_Exit(128 + sig);
  }
  if (g_signal_pipe[1] >= 0) {
    const bool from_other = info != nullptr && info->si_code == SI_USER && info->si_pid != getpid();
    if (from_other && sig != SIGUSR1) WriteSignalEndFile(sig);
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
std::string InFlightOp(const std::string& in_flight) {
  return in_flight.substr(0, in_flight.find(", running for"));
}
struct SignalWatch {
  std::mutex mu;
  const Communicator* comm = nullptr;  // set while Train runs
  std::string who = "?";               // "rank R (host H)", kept after Train returns
  std::atomic<int> step{0};
};
SignalWatch g_watch;

// The parent that started this rank has died (its PR_SET_PDEATHSIG, or found at start): nothing
// would end the rank or carry its output any more (its stderr was a pipe to the parent), so it says
// so on stderr and in the system log, records it, zeroes its arenas and ends.
[[noreturn]] void ParentLost(SignalEndHook hook) {
  ::signal(SIGPIPE, SIG_IGN);  // stderr may be a pipe to the dead parent
  std::string who;
  {
    std::lock_guard<std::mutex> lock(g_watch.mu);
    who = g_watch.who;
  }
  const std::string message = "its parent process (pid " + std::to_string(g_parent.load()) +
                              ", Open MPI's orted or srun's step daemon) has died during step " +
                              std::to_string(g_watch.step.load() + 1) +
                              ": the job's launcher on this host is gone and nothing would end this rank; "
                              "zeroing the arena and exiting";
  std::fprintf(stderr, "fjord train: %s: %s\n", who.c_str(), message.c_str());
  std::fflush(stderr);
  ::openlog("fjord-train", LOG_PID, LOG_USER);
  ::syslog(LOG_ERR, "%s: %s", who.c_str(), message.c_str());
  ::closelog();
  if (hook != nullptr) hook(SIGUSR2, "parent_lost", who + ": " + message, true);
  ZeroHostArenasNow(SIGUSR2);
  std::_Exit(128 + SIGHUP);
}

// Between signals the watcher looks at the collective in flight every kStallPoll: one still waiting
// for the same peer kStallPolls looks later is reported to the hook as "waiting" (not an end), so
// that the rank's record names the peer it lost even when the job's teardown SIGKILLs it before
// any handler runs.
constexpr int kStallPollMs = 100;
constexpr int kStallPolls = 3;

void NoteStall(std::string& last_op, int& seen, std::string& reported) {
  const SignalEndHook hook = g_end_hook.load();
  std::string now;
  {
    std::lock_guard<std::mutex> lock(g_watch.mu);
    if (g_watch.comm == nullptr || g_watch.comm->size() == 1) return;
    now = g_watch.comm->InFlight();
  }
  const std::string op = now.find(", waiting for rank ") == std::string::npos ? "" : InFlightOp(now);
  if (!reported.empty() && op != reported && hook != nullptr) {
    reported.clear();
    hook(0, "waiting", "", false);  // the stall is over: the note goes
  }
  if (op.empty()) {
    last_op.clear();
    seen = 0;
    return;
  }
  seen = op == last_op ? seen + 1 : 1;
  last_op = op;
  if (seen < kStallPolls || !reported.empty() || hook == nullptr) return;
  reported = op;
  hook(0, "waiting", "in " + now, false);
}

void WatchSignals() {
  std::string last_op, reported;
  int seen = 0;
  for (;;) {
    unsigned char byte = 0;
    struct pollfd in = {g_signal_pipe[0], POLLIN, 0};
    const int ready = poll(&in, 1, kStallPollMs);
    if (ready == 0) {
      NoteStall(last_op, seen, reported);
      continue;
    }
    if (ready < 0 && errno == EINTR) continue;
    const ssize_t n = read(g_signal_pipe[0], &byte, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n != 1) return;
    const int sig = byte & ~(kFromPeer | kFatal);
    const SignalEndHook hook = g_end_hook.load();
    if ((byte & kFatal) != 0) {  // the second signal: the handler has zeroed the arenas and waits
      if (hook != nullptr) {
        hook(sig, "signal " + std::to_string(sig), "a second signal ended the rank at once", true);
      }
      std::_Exit(128 + sig);
    }
    if (sig == SIGUSR2) {
      if (g_parent.load() == 0 || getppid() == g_parent.load()) continue;  // the parent is alive
      ParentLost(hook);
    }
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
    std::fprintf(stderr, "fjord train: %s: signal %d (%s) during step %d; %s\n", who.c_str(), sig,
                 strsignal(sig), g_watch.step.load() + 1,
                 what.empty() ? "no collective in flight" : ("in " + what).c_str());
    std::fflush(stderr);
    if (teardown && hook != nullptr) {
      hook(sig, "signal " + std::to_string(sig), what.empty() ? "no collective in flight" : "in " + what,
           false);
    }
    if (!teardown || alone || what.find(", waiting for rank ") == std::string::npos) continue;
    std::this_thread::sleep_for(kStuck);
    std::string now;
    {
      std::lock_guard<std::mutex> lock(g_watch.mu);
      if (g_watch.comm == nullptr) continue;  // Train returned: its arena was released
      now = g_watch.comm->InFlight();
    }
    if (InFlightOp(now) != InFlightOp(what)) continue;  // the collective moved on: the peers are alive
    const std::string why = "fjord train: " + who + ": still in " + what + " " +
                            std::to_string(kStuck.count()) + " ms after signal " + std::to_string(sig) +
                            ": a peer has ended and the job is being torn down; zeroing the arena and "
                            "exiting without a checkpoint";
    // The flight recorder, as a timeout leaves it: RUN_DIR/flight/rank-R.txt and one line here.
    std::string report = why + "\n";
    {
      std::lock_guard<std::mutex> lock(g_watch.mu);
      if (g_watch.comm != nullptr) report = g_watch.comm->FlightReport(why);
    }
    std::fputs(report.c_str(), stderr);
    std::fflush(stderr);
    ZeroHostArenasNow(sig);
    if (hook != nullptr) hook(sig, "signal " + std::to_string(sig), "in " + what, true);
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
  // Under a launcher (mpirun's orted, srun's step daemon), the parent's death reaches the watcher as
  // SIGUSR2 (ParentLost); a parent already gone is caught here.
  if (g_parent.load() == 0 &&
      (GetEnv("OMPI_COMM_WORLD_SIZE") || GetEnv("PMIX_RANK") || GetEnv("SLURM_PROCID"))) {
    struct sigaction wake = {};
    wake.sa_handler = [](int sig) {
      const unsigned char byte = static_cast<unsigned char>(sig);
      if (g_signal_pipe[1] >= 0) {
        [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
      }
    };
    sigemptyset(&wake.sa_mask);
    sigaction(SIGUSR2, &wake, nullptr);
    // A send to a peer that has died can end the rank with SIGPIPE at once (the default action),
    // before any teardown signal: the handler records it (SetSignalEndFile), then the signal takes
    // its default course. Left alone where something (MPI) already handles or ignores it.
    struct sigaction pipe_now = {};
    if (sigaction(SIGPIPE, nullptr, &pipe_now) == 0 && pipe_now.sa_handler == SIG_DFL) {
      struct sigaction record = {};
      record.sa_handler = [](int sig) {
        WriteSignalEndFile(sig);
        signal(sig, SIG_DFL);
        raise(sig);
      };
      sigemptyset(&record.sa_mask);
      sigaction(SIGPIPE, &record, nullptr);
    }
    const pid_t parent = getppid();
    g_parent = parent;
    prctl(PR_SET_PDEATHSIG, SIGUSR2);
    if (getppid() != parent) raise(SIGUSR2);
  }
}

}  // namespace

void SetSignalEndHook(SignalEndHook hook) { g_end_hook = hook; }

void SetSignalEndFile(const std::string& path) {
  const size_t n = std::min(path.size(), sizeof(g_end_file) - 1);
  std::memcpy(g_end_file, path.data(), n);
  g_end_file[n] = 0;
}

namespace {

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

// Where the job's checkpoints go: checkpoint.dir, else run_dir/checkpoints.
std::string CheckpointsDirOf(const proto::JobSpec& job) {
  return job.checkpoint().dir().empty() ? (fs::path(job.run_dir()) / "checkpoints").string()
                                        : job.checkpoint().dir();
}

// The files an earlier run left in run_dir and the checkpoints directory: metrics.jsonl,
// TensorBoard event files and step_* checkpoints (complete or temporary), sorted.
std::vector<fs::path> EarlierRunFiles(const proto::JobSpec& job) {
  std::vector<fs::path> found;
  std::error_code ec;
  const fs::path run_dir = job.run_dir();
  if (fs::exists(run_dir / "metrics.jsonl", ec)) found.push_back(run_dir / "metrics.jsonl");
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    if (entry.path().filename().string().starts_with("events.out.tfevents.")) found.push_back(entry.path());
  }
  for (const auto& entry : fs::directory_iterator(CheckpointsDirOf(job), ec)) {
    if (entry.path().filename().string().starts_with("step_")) found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

// A run_dir holding another run is refused (a second run would mix its metrics, TensorBoard
// files and checkpoints with the first one's, and eval/sample would pick the newest step of
// either), unless the job resumes it or `overwrite` asks to remove that run's files first.
Status PrepareRunDir(const proto::JobSpec& job, bool overwrite, bool log) {
  if (job.checkpoint().resume()) return OkStatus();
  const std::vector<fs::path> found = EarlierRunFiles(job);
  if (found.empty()) return OkStatus();
  if (!overwrite) {
    std::string list;
    for (size_t i = 0; i < found.size() && i < 6; ++i) list += (i ? ", " : "") + found[i].string();
    if (found.size() > 6) list += " and " + std::to_string(found.size() - 6) + " more";
    return FailedPrecondition(
        "run_dir " + job.run_dir() + " holds an earlier run (" + list +
        "); a new run there would mix with it. Continue that run with --resume, give this run a new "
        "run_dir (--set run_dir=DIR), or pass --overwrite to remove the earlier run's files first (the "
        "audit log is kept)");
  }
  for (const fs::path& path : found) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) {
      return FailedPrecondition("--overwrite: cannot remove " + path.string() + " of the earlier run: " +
                                ec.message() + "; remove it by hand or choose another run_dir");
    }
  }
  if (log) {
    std::printf("fjord train: --overwrite: removed %zu file(s) of the earlier run in %s\n", found.size(),
                job.run_dir().c_str());
  }
  return OkStatus();
}

// The global batch (sequences per optimizer step) of `job` on `world` ranks.
uint64_t GlobalBatchOf(const proto::JobSpec& job, int world) {
  const proto::TrainSpec& t = job.train();
  return t.global_batch() > 0 ? static_cast<uint64_t>(t.global_batch())
                              : static_cast<uint64_t>(t.micro_batch()) * t.grad_accum() * world;
}

// What resuming the checkpoint `dir` (its job `before`, written by `state.world_size` ranks) with
// `after` on `world` ranks changes: each differing field, the world size and global batch, and the
// learning rate of the next step. Printed when `log`; a change of the global batch or the schedule is
// refused unless `accept`.
Status CheckResumeChanges(const std::string& dir, const proto::JobSpec& before, const CheckpointState& state,
                          const proto::JobSpec& after, int world, bool accept, bool log) {
  std::vector<std::string> lines;
  bool schedule = false;
  for (const FieldChange& c : JobSpecDifferences(before, after)) {
    if (c.path == "checkpoint.resume") continue;
    std::string effect;
    if (c.path == "train.lr" || c.path == "train.min_lr" || c.path == "train.warmup_steps" ||
        c.path == "train.steps") {
      schedule = true;
      effect = " (the learning-rate schedule)";
    }
    lines.push_back(c.path + ": " + c.before + " -> " + c.after + effect);
  }
  const uint64_t gb_before = GlobalBatchOf(before, state.world_size), gb_after = GlobalBatchOf(after, world);
  if (state.world_size != world) {
    lines.push_back("world size: " + std::to_string(state.world_size) + " -> " + std::to_string(world) +
                    " ranks");
  }
  const bool batch = gb_before != gb_after;
  if (batch) {
    lines.push_back("global batch: " + std::to_string(gb_before) + " -> " + std::to_string(gb_after) +
                    " sequences per step (train.micro_batch x grad_accum x ranks, or train.global_batch)");
  }
  const float lr_before = LearningRate(before.train(), state.step),
              lr_after = LearningRate(after.train(), state.step);
  if (lr_before != lr_after) {
    char text[96];
    std::snprintf(text, sizeof(text), "learning rate of step %d: %.4g -> %.4g", state.step + 1, lr_before,
                  lr_after);
    lines.push_back(text);
  }
  if (lines.empty()) return OkStatus();
  std::string list;
  for (const std::string& line : lines) list += "\n  " + line;
  if ((batch || schedule) && !accept) {
    std::string choices;
    if (batch) {
      choices = "set train.global_batch: " + std::to_string(gb_before) +
                " (keeps the batch on any number of ranks; grad_accum follows), or ";
    } else {
      choices = "resume with the checkpoint's schedule settings, or ";
    }
    return FailedPrecondition("resuming " + dir + " would change the run:" + list + "\n" + choices +
                              "pass --accept-changes to resume with these changes");
  }
  if (log)
    std::fprintf(stderr, "fjord train: resuming %s with changes to the run:%s\n", dir.c_str(), list.c_str());
  return OkStatus();
}

}  // namespace

CommOptions CommOptionsFor(const proto::JobSpec& job) {
  CommOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(job.parallel().comm_timeout() * 1000.0));
  StatusOr<Algorithm> algo = ParseAlgorithm(job.parallel().algo());
  options.algorithm = algo.ok() ? *algo : Algorithm::kAuto;
  if (!job.run_dir().empty()) options.flight_dir = job.run_dir() + "/flight";
  return options;
}

Precision ResolvePrecision(proto::ModelSpec::DType dtype, bool cuda_device) {
  if (dtype == proto::ModelSpec::BF16) return Precision::kBf16;
  if (dtype == proto::ModelSpec::FP32) return Precision::kFp32;
  return cuda_device ? Precision::kBf16 : Precision::kFp32;
}

MemoryPlanInputs JobPlanInputs(const proto::JobSpec& job, int ranks, bool cuda_device) {
  MemoryPlanInputs in;
  in.config = GptConfig::FromSpec(job.model());
  in.config.precision = ResolvePrecision(job.model().dtype(), cuda_device);
  in.config.recompute = job.train().recompute() == proto::TrainSpec::BLOCK;
  in.micro_batch = job.train().micro_batch();
  in.seq_len = TrainSeqLen(job);
  in.ranks = ranks;
  in.zero_stage = job.parallel().zero_stage();
  const proto::ParallelSpec::CommBackend backend = job.parallel().comm_backend();
  in.nccl = cuda_device && (backend == proto::ParallelSpec::NCCL || backend == proto::ParallelSpec::AUTO);
  return in;
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

namespace {

// The test hooks of a step (FJORD_TEST_HOOK, common/env.h), read once before the loop (each one
// found is announced on stderr) and called at two named points of every step:
//   nan_in_step=STEP                 rank 0 writes a NaN into a gradient of step STEP (1-based)
//   sleep_in_step=RANK:STEP:SECONDS  rank RANK sleeps in step STEP: the other ranks then wait in a
//                                    collective
//   fail_in_step=RANK:STEP           rank RANK returns an error in step STEP (fjord train then aborts
//                                    the job; its peers are waiting in the gradient reduction)
//   signal_after_step=STEP           this process sends itself SIGTERM at the end of step STEP
//                                    (preemption)
//   comm_delay=RANK:MS               rank RANK spends MS ms more in the communication of every step
//                                    (a slow link: the straggler report)
//   compute_delay=RANK:MS            rank RANK spends MS ms more in the compute of every step, before
//                                    its forward (a slow GPU: the straggler report)
class StepHooks {
 public:
  static StepHooks FromEnvironment(int rank) {
    StepHooks hooks;
    hooks.rank_ = rank;
    if (std::optional<std::string> value = TestHook("sleep_in_step")) {
      std::sscanf(value->c_str(), "%d:%d:%d", &hooks.sleep_rank_, &hooks.sleep_step_, &hooks.sleep_seconds_);
    }
    if (hooks.sleep_rank_ >= 0 && hooks.sleep_rank_ == rank) {
      std::fprintf(stderr, "fjord: TEST HOOK active on rank %d: sleep %d s in step %d (FJORD_TEST_HOOK)\n",
                   rank, hooks.sleep_seconds_, hooks.sleep_step_);
    }
    if (std::optional<std::string> value = TestHook("nan_in_step"))
      hooks.nan_step_ = std::atoi(value->c_str());
    if (std::optional<std::string> value = TestHook("signal_after_step")) {
      hooks.signal_step_ = std::atoi(value->c_str());
    }
    if (std::optional<std::string> value = TestHook("comm_delay");
        value && std::sscanf(value->c_str(), "%d:%d", &hooks.delay_rank_, &hooks.delay_ms_) != 2) {
      hooks.delay_rank_ = -1;
    }
    if (std::optional<std::string> value = TestHook("compute_delay");
        value && std::sscanf(value->c_str(), "%d:%d", &hooks.compute_rank_, &hooks.compute_ms_) != 2) {
      hooks.compute_rank_ = -1;
    }
    if (std::optional<std::string> value = TestHook("fail_in_step");
        value && std::sscanf(value->c_str(), "%d:%d", &hooks.fail_rank_, &hooks.fail_step_) != 2) {
      hooks.fail_rank_ = hooks.fail_step_ = -1;
    }
    return hooks;
  }

  // Between backward and the gradient reduction of step `step` (1-based); `gradient` is one
  // gradient element of this rank (backend memory).
  Status AfterBackward(int step, float* gradient, Device& device) const {
    if (nan_step_ == step && rank_ == 0) {
      const float nan = NAN;
      device.Upload(gradient, &nan, sizeof(float));
    }
    if (sleep_rank_ == rank_ && sleep_step_ == step)
      std::this_thread::sleep_for(std::chrono::seconds(sleep_seconds_));
    if (fail_rank_ == rank_ && fail_step_ == step) {
      return Internal("test hook fail_in_step: rank " + std::to_string(rank_) + " fails in step " +
                      std::to_string(step));
    }
    return OkStatus();
  }

  // At the start of every step, before its forward (timed as compute).
  void InCompute() const {
    if (compute_rank_ == rank_ && compute_ms_ > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(compute_ms_));
  }

  // In the communication of every step (timed as exposed_comm_ms).
  void InCommunication() const {
    if (delay_rank_ == rank_ && delay_ms_ > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
  }

  // At the end of step `step`, before the ranks agree whether to stop.
  void BeforeStopVote(int step) const {
    if (signal_step_ == step) raise(SIGTERM);
  }

 private:
  int rank_ = 0;
  int nan_step_ = 0, signal_step_ = 0;  // 0: off (steps are 1-based)
  int sleep_rank_ = -1, sleep_step_ = -1, sleep_seconds_ = 0;
  int fail_rank_ = -1, fail_step_ = -1;
  int delay_rank_ = -1, delay_ms_ = 0;
  int compute_rank_ = -1, compute_ms_ = 0;
};

// The training of one rank, as Train documents it. Setup() is everything before the first step, in
// the order of its checks; Run() is the loop, one line per phase: Step, MaybeEvaluate, the stop
// vote, the metrics, MaybeCheckpoint.
class Trainer {
 public:
  Trainer(const proto::JobSpec& job, const TrainOptions& options, Communicator& comm)
      : job_(job),
        train_(job.train()),
        options_(options),
        comm_(comm),
        rank_(comm.rank()),
        world_(comm.size()),
        lead_(rank_ == 0),
        log_(lead_ && !options.quiet && !options.json_lines),
        zero_(job.parallel().zero_stage() == 1 && world_ > 1),
        zero2_(job.parallel().zero_stage() >= 2),
        zero3_(job.parallel().zero_stage() == 3),
        sink_({.quiet = options.quiet,
               .json_lines = options.json_lines,
               .steps = job.train().steps(),
               .log_every = job.train().log_every(),
               .world = world_,
               .energy = job.energy().measure()}) {}

  Status Setup() {
    FJORD_RETURN_IF_ERROR(PlanBatch());
    FJORD_RETURN_IF_ERROR(OpenDevice());
    FJORD_RETURN_IF_ERROR(OpenData());
    if (options_.dry_run) return DryRun();
    FJORD_RETURN_IF_ERROR(OpenRunDir());
    FJORD_RETURN_IF_ERROR(BuildModel());
    FJORD_RETURN_IF_ERROR(OpenEnergy());
    train_start_ = Clock::now();
    FJORD_RETURN_IF_ERROR(Resume());
    return RecordDevices();
  }

  StatusOr<TrainResult> Run() {
    InstallStopHandlers();
    const WatchScope watch_scope(comm_);
    hooks_ = StepHooks::FromEnvironment(rank_);
    sink_.StartClock(train_start_, start_step_);
    result_.start_step = start_step_;
    FJORD_RETURN_IF_ERROR(StartEnergyWindow(start_step_ + 1));
    for (int step = start_step_; step < train_.steps(); ++step) {
      g_watch.step.store(step);
      FJORD_ASSIGN_OR_RETURN(StepMetrics metrics, Step(step));
      FJORD_RETURN_IF_ERROR(MaybeEvaluate(metrics));
      hooks_.BeforeStopVote(metrics.step);
      FJORD_ASSIGN_OR_RETURN(const bool stop, StopRequested(metrics));
      FJORD_RETURN_IF_ERROR(MaybeCloseEnergyWindow(metrics, stop));
      if (lead_) FJORD_RETURN_IF_ERROR(sink_.Record(metrics));
      FJORD_RETURN_IF_ERROR(MaybeCheckpoint(metrics.step, stop));
      if (stop) {
        result_.stopped_by_signal = true;
        if (lead_) {
          // After the step and checkpoint lines, on their stream (stdout; stderr under --quiet and
          // --json), so that mpirun, which forwards the two streams separately, keeps the order.
          std::FILE* out = log_ ? stdout : stderr;
          std::fprintf(out,
                       "fjord train: stopped by a signal after step %d; checkpoint %s is complete; continue "
                       "with --resume\n",
                       metrics.step, result_.checkpoint_dir.c_str());
          std::fflush(out);
        }
        break;
      }
    }
    return result_;
  }

 private:
  // The batch geometry (train.global_batch must divide by micro_batch x world) and the buffer
  // sizes: with ZeRO-1 the buffers are padded to a multiple of 16 x world floats so every shard has
  // the same length and starts 64-byte aligned.
  Status PlanBatch() {
    config_ = GptConfig::FromSpec(job_.model());
    config_.recompute = train_.recompute() == proto::TrainSpec::BLOCK;
    B_ = train_.micro_batch();
    T_ = TrainSeqLen(job_);
    accum_ = train_.grad_accum();
    if (train_.global_batch() > 0) {
      if (train_.global_batch() % (B_ * world_) != 0) {
        return InvalidArgument("train.global_batch = " + std::to_string(train_.global_batch()) +
                               " is not divisible by train.micro_batch x world size = " + std::to_string(B_) +
                               " x " + std::to_string(world_) + " = " + std::to_string(B_ * world_) +
                               ": choose a global batch that is a multiple of it, or change the rank count");
      }
      accum_ = train_.global_batch() / (B_ * world_);
    }
    global_batch_ = static_cast<uint64_t>(B_) * accum_ * world_;
    multiple_ = zero_ ? 16 * static_cast<size_t>(world_) : 16;
    num_params_ = ParamCount(config_);  // closed form: the layout is built after CheckMemory
    buffer_ = (num_params_ + multiple_ - 1) / multiple_ * multiple_;
    shard_ = zero_ ? buffer_ / world_ : buffer_;
    shard_begin_ = zero_ ? shard_ * rank_ : 0;
    optimizer_count_ = zero_ ? shard_ : num_params_;
    if (zero2_) {  // the unit map (runtime/model/zero_units.h), on any number of ranks
      config_.grad_shard_ranks = world_;
      if (zero3_) config_.param_shard_ranks = world_;
      const ZeroUnits::Sizes sizes = ZeroUnits::SizesFor(config_, world_);
      buffer_ = std::max(buffer_, sizes.buffer);
      shard_ = optimizer_count_ = sizes.shard;
    }
    return OkStatus();
  }

  // The device (job spec `device`), the precision on it (model.dtype), the attention kernels
  // (model.attention), how gradients travel (parallel.comm_backend), and whether it all fits.
  Status OpenDevice() {
    where_ = comm_.rank_info();
    FJORD_ASSIGN_OR_RETURN(device_, CreateDevice(job_.device(), where_, CudaWorkspaceBytes(B_, T_)));
    config_.precision = ResolvePrecision(job_.model().dtype(), device_->is_cuda());
    StatusOr<bool> tc = ResolveAttention(job_.model().attention(), device_->compute_capability(),
                                         config_.precision, config_.n_embd, config_.n_head);
    if (!tc.ok()) {
      return tc.status().WithContext("rank " + std::to_string(rank_) + " on host " + where_.host + " (" +
                                     device_->description() + ")");
    }
    config_.tensor_core_attention = *tc;
    proto::ParallelSpec::CommBackend backend = job_.parallel().comm_backend();
    if (backend == proto::ParallelSpec::AUTO) {
      backend = device_->is_cuda() ? proto::ParallelSpec::NCCL : proto::ParallelSpec::MPI;
    }
    if (backend == proto::ParallelSpec::NCCL && !device_->is_cuda()) {
      return FailedPrecondition("parallel.comm_backend: NCCL needs a CUDA device, but rank " +
                                std::to_string(rank_) + " on host " + where_.host +
                                " trains on the CPU (device: " + proto::Device_Name(job_.device()) +
                                "): set parallel.comm_backend: MPI (or AUTO), or device: CUDA on GPU nodes");
    }
    if (backend == proto::ParallelSpec::NCCL && world_ > 1) {
#ifdef FJORD_HAVE_NCCL
      StatusOr<std::unique_ptr<Communicator>> made = CreateNcclCommunicator(CommOptionsFor(job_), comm_);
      if (!made.ok()) {
        return made.status().WithContext(
            "parallel.comm_backend: NCCL" +
            std::string(job_.parallel().comm_backend() == proto::ParallelSpec::AUTO
                            ? " (AUTO on a CUDA device)"
                            : "") +
            "; with several ranks per GPU set parallel.comm_backend: MPI");
      }
      nccl_ = std::move(made).value();
#else
      return FailedPrecondition("parallel.comm_backend: NCCL, but this fjord was built without NCCL (rank " +
                                std::to_string(rank_) + " on host " + where_.host +
                                "): set parallel.comm_backend: MPI, or rebuild with NCCL (NCCL_ROOT)");
#endif
    }
    const std::string where = "rank " + std::to_string(rank_) + " on host " + where_.host;
    if (device_->is_cuda()) {
      // The host mirror of the parameters; the device itself is the memory plan's below.
      FJORD_RETURN_IF_ERROR(Gpt::CheckMemory(config_, B_, T_, 2, zero_ || zero2_ ? world_ : 1, *device_,
                                             "use a smaller model (model.n_layer, model.n_embd)")
                                .WithContext(where));
    }
    // The memory plan (runtime/model/memory_plan.h, `fjord plan`), before anything is allocated:
    // on the CPU this host's available memory (its cgroup's, where that is less) shared by the
    // ranks on this host, measured by every rank before any allocates (the barrier); the GPU's on
    // an H100 or H200 (other GPUs: Arena::Create).
    StatusOr<PlanDevice> against = PlanDeviceNamed("cpu", where_.local_size);
    if (!device_->is_cuda() && world_ > 1) FJORD_RETURN_IF_ERROR(comm_.Barrier().WithContext(where));
    if (device_->is_cuda()) {
      const std::string d = device_->description();
      against = d.find("H200") != std::string::npos   ? PlanDeviceNamed("h200")
                : d.find("H100") != std::string::npos ? PlanDeviceNamed("h100")
                                                      : StatusOr<PlanDevice>(NotFound(d));
    }
    if (!against.ok()) return OkStatus();
    plan_ = PlanMemory(JobPlanInputs(job_, world_, device_->is_cuda()), *against);
    return plan_.Verdict().WithContext(where);
  }

  // Tenancy gate 3 (the data policy for the loaders, the seal for checkpoints; without a Tenancy,
  // still the job's checkpoint.encryption_key_file), the loaders, then rank 0's run_dir and
  // metrics.jsonl (appended to by a resumed run, which keeps the lines its checkpoint covers).
  Status OpenData() {
    if (options_.tenancy == nullptr && !job_.tenant().id().empty()) {
      return FailedPrecondition(
          "tenant " + job_.tenant().id() +
          "'s job reached training without its gates (no Tenancy): start it with fjord train "
          "or fjord launch, which check this node's identity first");
    }
    const DataPolicy* data_policy = options_.tenancy ? &options_.tenancy->data_policy() : nullptr;
    if (options_.tenancy) {
      seal_ = options_.tenancy->checkpoint_seal();
    } else {
      FJORD_ASSIGN_OR_RETURN(seal_, CheckpointSealFor(job_));
    }
    FJORD_ASSIGN_OR_RETURN(train_data_,
                           DataLoader::Open(job_.data().train(), "data.train", config_.vocab_size, T_,
                                            train_.seed(), /*shuffle=*/true, data_policy));
    if (train_data_->sequences_per_epoch() < global_batch_) {
      return FailedPrecondition(
          "data.train holds " + std::to_string(train_data_->sequences_per_epoch()) + " sequences of " +
          std::to_string(T_ + 1) + " tokens per epoch, fewer than one global batch of " +
          std::to_string(global_batch_) + " (train.micro_batch " + std::to_string(B_) + " x grad_accum " +
          std::to_string(accum_) + " x world size " + std::to_string(world_) +
          "): use fewer ranks or a smaller batch, or give more data");
    }
    if (!job_.data().val().empty()) {
      FJORD_ASSIGN_OR_RETURN(
          DataLoader v, DataLoader::Open(job_.data().val(), "data.val", config_.vocab_size, T_, train_.seed(),
                                         /*shuffle=*/false, data_policy));
      val_data_ = std::make_unique<DataLoader>(std::move(v));
    }
    return OkStatus();
  }

  // Rank 0's run_dir (an earlier run there is refused or removed: PrepareRunDir) and metrics.jsonl.
  Status OpenRunDir() {
    if (!lead_) return OkStatus();
    FJORD_RETURN_IF_ERROR(PrepareRunDir(job_, options_.overwrite, log_));
    std::error_code ec;
    fs::create_directories(job_.run_dir(), ec);
    if (ec) return Internal("cannot create run_dir " + job_.run_dir() + ": " + ec.message());
    return sink_.OpenJsonl(job_.run_dir(), /*append=*/job_.checkpoint().resume());
  }

  // --dry-run: what the job would do, from the checks Setup has passed so far (rank 0 prints).
  Status DryRun() {
    if (!lead_) return OkStatus();
    const std::vector<fs::path> earlier = EarlierRunFiles(job_);
    std::string run_dir = "new";
    if (job_.checkpoint().resume()) {
      StatusOr<std::string> newest = NewestGoodCheckpoint(CheckpointsDirOf(job_), nullptr);
      run_dir = newest.ok() ? "resumes from " + *newest : "nothing to resume; starts at step 0";
    } else if (!earlier.empty()) {
      run_dir = "holds an earlier run (" + std::to_string(earlier.size()) + " files): " +
                (options_.overwrite ? "--overwrite would remove them"
                                    : "training would be refused without --resume or --overwrite");
    }
    const uint64_t per_epoch = train_data_->sequences_per_epoch();
    std::printf(
        "fjord train: --dry-run: the job, its data and its plan check out; nothing was trained or written\n"
        "  batch: %llu sequences of %d tokens per step = micro_batch %d x grad_accum %d x %d rank(s); %d "
        "steps\n"
        "  data.train: %llu tokens, %llu sequences per epoch (%.2f epochs over the run)\n"
        "  data.val: %s\n"
        "  model: %zu parameters, %s of memory per rank (%s)\n"
        "  run_dir %s: %s\n",
        static_cast<unsigned long long>(global_batch_), T_, B_, accum_, world_, train_.steps(),
        static_cast<unsigned long long>(train_data_->num_tokens()),
        static_cast<unsigned long long>(per_epoch),
        static_cast<double>(global_batch_) * train_.steps() / static_cast<double>(per_epoch),
        val_data_ ? (std::to_string(val_data_->num_tokens()) + " tokens").c_str() : "none", num_params_,
        GiB(Gpt::MemoryBytes(config_, B_, T_) + AdamW::MemoryBytes(shard_)).c_str(),
        device_->description().c_str(), job_.run_dir().c_str(), run_dir.c_str());
    std::fflush(stdout);
    return OkStatus();
  }

  // One arena for everything the step touches on the device, zeroed before it is freed; the model
  // in it (initialised, or train.init_from), TensorBoard, AdamW, the gradient reducer, the MFU peak.
  Status BuildModel() {
    threads_ = ConfigureThreads(train_.threads(), RankInfoFromEnvironment().local_size);
    const size_t arena_bytes =
        PlanMemory(JobPlanInputs(job_, world_, device_->is_cuda()), PlanDevice{}).arena_bytes;
    FJORD_ASSIGN_OR_RETURN(
        arena_, Arena::Create(*device_, arena_bytes, "model, gradients, activations and AdamW state"));
    if (log_) {
      const char* gradients_over = world_ == 1          ? ""
                                   : nccl_              ? ", gradients over NCCL"
                                   : device_->is_cuda() ? ", gradients over MPI (host staging)"
                                                        : "";
      std::printf(
          "fjord train: device %s (device: %s), %s (model.dtype: %s), %s attention (model.attention: %s), "
          "arena %s (%zu bytes)%s\n",
          device_->description().c_str(), proto::Device_Name(job_.device()).c_str(),
          PrecisionName(config_.precision), proto::ModelSpec::DType_Name(job_.model().dtype()).c_str(),
          !device_->is_cuda()             ? "cpu"
          : config_.tensor_core_attention ? "tensor-core"
                                          : "simt",
          proto::ModelSpec::Attention_Name(job_.model().attention()).c_str(), GiB(arena_bytes).c_str(),
          arena_bytes, gradients_over);
      std::fflush(stdout);
    }
    model_ = std::make_unique<Gpt>(config_, B_, T_, *arena_, multiple_);
    // ZeRO-3: the model has no parameter buffer; the weights pass through this host buffer into
    // this rank's shard (ParamGatherer::LoadFull below), then it is freed.
    std::vector<float> full;
    if (zero3_) full.assign(buffer_, 0.0f);
    if (train_.init_from().empty()) {
      if (zero3_) {
        model_->InitGpt2(train_.seed(), full.data());
      } else {
        model_->InitGpt2(train_.seed());
      }
    } else {
      FJORD_ASSIGN_OR_RETURN(std::string init_dir, ResolveCheckpointDir(train_.init_from()));
      // Gate 3 for checkpoints: whose it is, where it may be opened, how to read it.
      StatusOr<CheckpointSeal> init_seal =
          options_.tenancy ? options_.tenancy->CheckCheckpoint(init_dir, CheckpointUse::kInitFrom)
                           : CheckCheckpointTenant(init_dir, seal_, nullptr, CheckpointUse::kInitFrom);
      if (!init_seal.ok()) return init_seal.status().WithContext("train.init_from");
      FJORD_RETURN_IF_ERROR(
          LoadCheckpointWeights(init_dir, *model_, &*init_seal, zero3_ ? full.data() : nullptr)
              .WithContext("train.init_from"));
    }
    if (lead_ && train_.tensorboard()) FJORD_RETURN_IF_ERROR(sink_.OpenTensorBoard(job_.run_dir()));
    const size_t bucket_floats =
        static_cast<size_t>(job_.parallel().bucket_mb() * 1024.0 * 1024.0 / sizeof(float));
    ReducePath path;
    if (device_->is_cuda() && world_ > 1) {
      path.device = device_.get();
      path.stage_through_host = !nccl_;
#ifdef FJORD_HAVE_NCCL
      if (nccl_) {
        FJORD_ASSIGN_OR_RETURN(path.comm_stream, NcclStream(*nccl_));
      }
#endif
    }
    if (zero2_) {
      units_ = std::make_unique<ZeroUnits>(model_->layout(), world_);
      optimizer_ = std::make_unique<AdamW>(model_->layout(), units_->Owned(rank_), shard_, *arena_, zero3_);
      unit_reducer_ = std::make_unique<UnitReducer>(nccl_ ? *nccl_ : comm_, *model_, *units_, *arena_,
                                                    job_.parallel().overlap(), path);
      if (zero3_) {
        gatherer_ = std::make_unique<ParamGatherer>(nccl_ ? *nccl_ : comm_, *model_, *units_, *arena_,
                                                    job_.parallel().overlap(), path);
        gatherer_->LoadFull(full.data());
        std::fill(full.begin(), full.end(), 0.0f);  // tenant hygiene
        full = std::vector<float>();
      }
      // What AdamW does not update here (the other ranks' pieces): rounded to bf16 after the gather.
      size_t from = 0;
      for (const ZeroUnits::Range& r : units_->Owned(rank_)) {
        if (from < r.begin) foreign_.emplace_back(from, r.begin);
        from = r.end;
      }
      if (from < model_->buffer_size()) foreign_.emplace_back(from, model_->buffer_size());
    } else {
      optimizer_ =
          std::make_unique<AdamW>(model_->layout(), shard_begin_, shard_begin_ + optimizer_count_, *arena_);
      reducer_ = std::make_unique<GradReducer>(nccl_ ? *nccl_ : comm_, model_->grads(), model_->buffer_size(),
                                               bucket_floats, path);
    }
    overlap_ = job_.parallel().overlap() && world_ > 1 && !zero_;
    // MFU: the model's FLOPs per token against the peak of all ranks (each rank's as rank 0's).
    flops_per_token_ = ModelFlopsPerToken(config_, T_);
    const RankPeak rank_peak =
        device_->is_cuda() ? GpuRankPeak(job_, device_->description()) : CpuRankPeak(job_, threads_);
    peak_flops_ = rank_peak.flops * world_;
    if (log_) {
      std::printf(
          "fjord train: %zu parameters, %d layers, n_embd %d, vocab %d (padded %d), %d rank(s) x batch %d x "
          "%d x accum %d, %d threads/rank, %s of model memory/rank, %llu train tokens%s\n",
          model_->num_params(), config_.n_layer, config_.n_embd, config_.vocab_size, config_.padded_vocab,
          world_, B_, T_, accum_, threads_,
          GiB(Gpt::MemoryBytes(config_, B_, T_) + AdamW::MemoryBytes(shard_)).c_str(),
          static_cast<unsigned long long>(train_data_->num_tokens()),
          zero3_        ? ", ZeRO-3 (parameters gathered and gradients reduce-scattered per unit)"
          : zero2_      ? ", ZeRO-2 (gradients reduce-scattered per unit)"
          : world_ == 1 ? ""
          : zero_       ? ", ZeRO-1"
          : overlap_    ? ", overlapped bucket all-reduce"
                        : ", all-reduce");
      std::printf("fjord train: %.4g model FLOPs/token; MFU against %.4g TFLOP/s/rank (%s)\n",
                  flops_per_token_, rank_peak.flops / 1e12, rank_peak.source.c_str());
      std::fflush(stdout);
    }
    inputs_.resize(static_cast<size_t>(B_) * T_);
    targets_.resize(inputs_.size());
    return OkStatus();
  }

  // --resume: the newest checkpoint that verifies (damaged newer ones are named and skipped), and
  // the metrics of the run being resumed up to it.
  Status Resume() {
    checkpoints_dir_ = CheckpointsDirOf(job_);
    if (!job_.checkpoint().resume()) return OkStatus();
    std::vector<std::string> skipped;
    StatusOr<std::string> dir = NewestGoodCheckpoint(checkpoints_dir_, &skipped);
    for (const std::string& note : skipped) {
      if (lead_) {
        std::fprintf(stderr, "fjord train: skipping damaged checkpoint %s; falling back to an older one\n",
                     note.c_str());
      }
    }
    if (!dir.ok()) {
      if (!skipped.empty()) {
        return FailedPrecondition("--resume: every checkpoint in " + checkpoints_dir_ +
                                  " is damaged (see above); remove them to start fresh");
      }
      if (log_)
        std::printf("fjord train: no checkpoint in %s to resume from; starting at step 0\n",
                    checkpoints_dir_.c_str());
      return OkStatus();
    }
    // Gate 3 first: a tenant record holds manifest.json's digest, so the state read next is checked.
    StatusOr<CheckpointSeal> resume_seal =
        options_.tenancy ? options_.tenancy->CheckCheckpoint(*dir, CheckpointUse::kResume)
                         : CheckCheckpointTenant(*dir, seal_, nullptr, CheckpointUse::kResume);
    if (!resume_seal.ok()) return resume_seal.status().WithContext("resuming");
    FJORD_ASSIGN_OR_RETURN(CheckpointState state, ReadCheckpointState(*dir));
    {
      std::vector<float> full(zero3_ ? buffer_ : 0, 0.0f);
      FJORD_RETURN_IF_ERROR(
          LoadCheckpointWeights(*dir, *model_, &*resume_seal, zero3_ ? full.data() : nullptr)
              .WithContext("resuming"));
      if (zero3_) {
        gatherer_->LoadFull(full.data());
        std::fill(full.begin(), full.end(), 0.0f);  // tenant hygiene
      }
    }
    std::vector<float> full_m(num_params_), full_v(num_params_);
    FJORD_RETURN_IF_ERROR(LoadCheckpointOptimizer(*dir, *model_, full_m.data(), full_v.data(), &*resume_seal)
                              .WithContext("resuming"));
    std::vector<float> own_m(optimizer_->count()), own_v(own_m.size());
    if (zero2_) {
      units_->Pack(full_m.data(), rank_, own_m.data());
      units_->Pack(full_v.data(), rank_, own_v.data());
    } else {
      for (size_t i = shard_begin_; i < std::min(shard_begin_ + optimizer_->count(), num_params_); ++i) {
        own_m[i - shard_begin_] = full_m[i];
        own_v[i - shard_begin_] = full_v[i];
      }
    }
    optimizer_->LoadState(own_m.data(), own_v.data());
    FJORD_ASSIGN_OR_RETURN(const proto::JobSpec resumed_job, LoadCheckpointJob(*dir));
    FJORD_RETURN_IF_ERROR(
        CheckResumeChanges(*dir, resumed_job, state, job_, world_, options_.accept_changes, lead_));
    start_step_ = state.step;
    // As the run being resumed did.
    if (zero3_) {
      gatherer_->RoundWorking(RoundSeed(train_.seed(), start_step_));
    } else {
      model_->RoundWorkingParams(RoundSeed(train_.seed(), start_step_));
    }
    start_sequence_ = state.sequences_consumed;
    if (log_) {
      std::printf("fjord train: resuming from %s (step %d, written by %d rank(s)%s) on %d rank(s)\n",
                  dir->c_str(), state.step, state.world_size,
                  state.zero_stage > 0 ? (" with ZeRO-" + std::to_string(state.zero_stage)).c_str() : "",
                  world_);
    }
    return lead_ && start_step_ > 0 ? sink_.KeepThrough(start_step_) : OkStatus();
  }

  // One optimizer step (0-based `step`): forward and backward over the micro-batches, the gradient
  // reduction, the non-finite check (train.on_nonfinite), clipping and AdamW. Returns what it
  // reports, without val_loss.
  StatusOr<StepMetrics> Step(int step) {
    Gpt& model = *model_;
    const Clock::time_point t0 = Clock::now();
    const float lr = LearningRate(train_, step);
    const uint64_t step_first = start_sequence_ + static_cast<uint64_t>(step - start_step_) * global_batch_;
    double comm_seconds = 0.0;                 // communication the backward pass did not hide
    if (zero3_) gatherer_->TakeWaitSeconds();  // an evaluation's gathers are not this step's
    hooks_.InCompute();
    if (zero2_) {
      unit_reducer_->ZeroShard();
    } else {
      model.ZeroGrads();
    }
    float loss = 0.0f;
    for (int micro = 0; micro < accum_; ++micro) {
      const uint64_t first =
          step_first + (static_cast<uint64_t>(micro) * world_ + static_cast<uint64_t>(rank_)) * B_;
      FJORD_RETURN_IF_ERROR(train_data_->Fill(first, B_, inputs_.data(), targets_.data()));
      loss += model.Forward(inputs_.data(), targets_.data(), B_, T_, 1.0f / static_cast<float>(accum_));
      if (zero3_) FJORD_RETURN_IF_ERROR(gatherer_->TakeStatus());
      if (zero2_) {
        // Every micro-step reduce-scatters (the shard is where the sum lives): the waits for a
        // window inside backward and for the last units after it are exposed communication.
        FJORD_RETURN_IF_ERROR(unit_reducer_->Begin());
        model.Backward([this](size_t begin, size_t end) { unit_reducer_->OnReady(begin, end); });
        const Clock::time_point wait_start = Clock::now();
        FJORD_RETURN_IF_ERROR(unit_reducer_->Finish());
        comm_seconds += Seconds(wait_start, Clock::now()) + unit_reducer_->TakeWaitSeconds();
        if (zero3_) {  // ZeRO-3: the waits for parameter gathers in forward and backward are exposed too
          FJORD_RETURN_IF_ERROR(gatherer_->TakeStatus());
          comm_seconds += gatherer_->TakeWaitSeconds();
        }
      } else if (micro + 1 == accum_ && overlap_) {
        model.Backward([this](size_t begin, size_t end) { reducer_->OnReady(begin, end); });
      } else {
        model.Backward();
      }
    }
    loss /= static_cast<float>(accum_);
    FJORD_RETURN_IF_ERROR(
        hooks_.AfterBackward(step + 1,
                             // ln_f.weight[0]: at stage 2 the start of rank 0's piece of the tail unit
                             zero2_ ? unit_reducer_->shard() + units_->units().back().shard_offset
                                    : model.grads() + model.layout().lnf_w(),
                             *device_));

    // Everything from here to the end of the parameter update waits on other ranks: the
    // communication backward did not hide.
    const Clock::time_point comm_start = Clock::now();
    float sum_squares = 0.0f;
    if (zero2_) {
      sum_squares = model.SumSquares(unit_reducer_->shard(), shard_);
      if (world_ > 1) {
        FJORD_RETURN_IF_ERROR(comm_.AllReduce(&sum_squares, &sum_squares, 1, DataType::kF32, ReduceOp::kSum));
        FJORD_RETURN_IF_ERROR(comm_.AllReduce(&loss, &loss, 1, DataType::kF32, ReduceOp::kAvg));
      }
    } else if (world_ > 1) {
      if (zero_) {
        FJORD_RETURN_IF_ERROR(reducer_->ReduceScatterShard(shard_begin_, shard_));
        sum_squares = model.SumSquares(model.grads() + shard_begin_, shard_);
        FJORD_RETURN_IF_ERROR(comm_.AllReduce(&sum_squares, &sum_squares, 1, DataType::kF32, ReduceOp::kSum));
      } else {
        FJORD_RETURN_IF_ERROR(reducer_->Finish());
        sum_squares = model.GradSumSquares();
      }
      FJORD_RETURN_IF_ERROR(comm_.AllReduce(&loss, &loss, 1, DataType::kF32, ReduceOp::kAvg));
    } else {
      sum_squares = model.GradSumSquares();
    }
    hooks_.InCommunication();
    comm_seconds += Seconds(comm_start, Clock::now());
    const float grad_norm = std::sqrt(sum_squares);
    const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
    if (!finite && train_.on_nonfinite() == proto::ABORT) return NonFinite(step, loss, grad_norm);
    // bf16: the working copy is rounded from the master weights with this seed after every step,
    // skipped ones too, so the rounding after step k depends on k alone (resume replays it).
    const uint64_t round_seed = RoundSeed(train_.seed(), step + 1);
    if (finite) {
      const float clip =
          train_.grad_clip() > 0.0f && grad_norm > train_.grad_clip() ? train_.grad_clip() / grad_norm : 1.0f;
      // AdamW writes the working copy of every tensor element it updates, in the update's pass. The
      // padding between and after tensors is +0 in the master weights and rounds to bf16 +0
      // whatever the seed, which the working copy already holds: without ZeRO nothing is left.
      // ZeRO-3: the master and working shards, by shard index (no gather after the step: the next
      // forward gathers each unit).
      optimizer_->Step(zero3_ ? gatherer_->master() : model.params(),
                       zero2_ ? unit_reducer_->shard() : model.grads(), lr, train_.beta1(), train_.beta2(),
                       train_.eps(), train_.weight_decay(), clip, step + 1,
                       zero3_ ? gatherer_->working_bf16() : model.working_params_bf16(), round_seed);
    } else {
      ++result_.skipped_steps;
      if (zero3_) {
        gatherer_->RoundWorking(round_seed);
      } else {
        model.RoundWorkingParams(round_seed);
      }
    }
    if (zero3_) gatherer_->Invalidate();
    if (zero_ && finite) {
      const Clock::time_point gather_start = Clock::now();
      FJORD_RETURN_IF_ERROR(reducer_->AllGatherShard(model.params(), shard_begin_, shard_));
      comm_seconds += Seconds(gather_start, Clock::now());
      // The other ranks' shards, rounded with the seed and buffer indices their owners used, so
      // every rank's working copy is the whole-buffer cast.
      model.RoundWorkingParams(round_seed, 0, shard_begin_);
      model.RoundWorkingParams(round_seed, shard_begin_ + shard_, model.buffer_size());
    }
    if (zero2_ && !zero3_ && finite && world_ > 1) {
      const Clock::time_point gather_start = Clock::now();
      FJORD_RETURN_IF_ERROR(unit_reducer_->AllGatherParams(model.params()));
      comm_seconds += Seconds(gather_start, Clock::now());
      for (const auto& [begin, end] : foreign_) model.RoundWorkingParams(round_seed, begin, end);
    }
    device_->Synchronize();  // the update is enqueued on a CUDA device; the step ends when it is done
    const double seconds = Seconds(t0, Clock::now());
    result_.losses.push_back(loss);

    StepMetrics m;
    m.step = step + 1;
    m.loss = loss;
    m.lr = lr;
    m.grad_norm = grad_norm;
    m.tokens_per_s = static_cast<double>(global_batch_) * T_ / seconds;
    m.ms = seconds * 1000.0;
    m.exposed_comm_ms = comm_seconds * 1000.0;
    m.flops_per_token = flops_per_token_;
    if (const double mfu = Mfu(flops_per_token_, m.tokens_per_s, peak_flops_); !std::isnan(mfu)) {
      m.peak_flops = peak_flops_;
      m.mfu = mfu;
    }
    m.epoch = step_first / train_data_->sequences_per_epoch();
    m.skipped = !finite;
    m.tokens = static_cast<double>(global_batch_) * T_;
    return m;
  }

  // Energy (job spec `energy`, runtime/device/energy.h): this rank's counters, each node's counted
  // once. Without counters and without energy.rank_power_w the rank is "not measured".
  Status OpenEnergy() {
    if (!job_.energy().measure()) return OkStatus();
    EnergyMeter::Options where;
    where.powercap_root = job_.energy().powercap_root();
    where.nvml_library = job_.energy().nvml_library();
    where.gpu_slot = device_->is_cuda() ? where_.local_rank : -1;
    energy_ = EnergyMeter::Open(where);
    FJORD_RETURN_IF_ERROR(
        KeepFirstOnNode(comm_, where_.host, *energy_).WithContext("sharing energy counters"));
    if (log_) {
      std::printf("fjord train: energy over windows of %d steps (energy.window_steps); rank 0 reads %s\n",
                  job_.energy().window_steps(),
                  energy_->names().empty() ? "no counter" : JoinList(energy_->names()).c_str());
      for (const std::string& note : energy_->notes()) std::printf("fjord train: energy: %s\n", note.c_str());
      if (!energy_->covered() && job_.energy().rank_power_w() > 0) {
        std::printf(
            "fjord train: energy: estimated for ranks without counters at energy.rank_power_w = %g W each\n",
            job_.energy().rank_power_w());
      } else if (!energy_->covered()) {
        std::printf(
            "fjord train: energy: not measured on ranks without counters (energy.rank_power_w gives an "
            "estimate)\n");
      }
      std::fflush(stdout);
    }
    return OkStatus();
  }

  // Rank 0 audits every rank's host, device and energy counters (train_devices), for the training
  // record's device-hours and energy coverage (`fjord report`); every start of the job adds one.
  Status RecordDevices() {
    AuditLog* audit = options_.tenancy ? options_.tenancy->audit() : nullptr;
    std::string mine = where_.host + "\n" + device_->description();
    if (energy_) {
      for (size_t i = 0; i < energy_->names().size(); ++i) mine += "\n" + energy_->names()[i];
    }
    FJORD_ASSIGN_OR_RETURN(const std::vector<std::string> all, AllGatherStrings(comm_, mine));
    hosts_.clear();
    for (const std::string& a : all) hosts_.push_back(a.substr(0, a.find('\n')));
    if (audit == nullptr) return OkStatus();
    std::string ranks = "[";
    for (size_t r = 0; r < all.size(); ++r) {
      std::vector<std::string> lines;
      std::istringstream in(all[r]);
      for (std::string line; std::getline(in, line);) lines.push_back(line);
      lines.resize(std::max<size_t>(lines.size(), 2));
      const std::vector<std::string> counters(lines.begin() + 2, lines.end());
      if (r > 0) ranks += ",";
      ranks += "{\"rank\":" + std::to_string(r) + ",\"host\":" + JsonQuote(lines[0]) +
               ",\"device\":" + JsonQuote(lines[1]) + ",\"energy_counters\":" + JsonQuoteList(counters) + "}";
    }
    const proto::EnergySpec& e = job_.energy();
    AuditRecord record;
    record.Int("world_size", world_)
        .Int("start_step", start_step_)
        .Raw("ranks", ranks + "]")
        .Bool("energy_measure", e.measure())
        .Int("energy_window_steps", e.window_steps())
        .Str("energy_powercap_root", e.powercap_root())
        .Str("energy_nvml_library", e.nvml_library())
        .Raw("energy_rank_power_w", std::to_string(e.rank_power_w()));
    return audit->Append("train_devices", record).status();
  }

  // The first window starts on every rank together (setup takes rank 0 longer), so that the ranks'
  // windows span the same time.
  Status StartEnergyWindow(int first_step) {
    if (!energy_) return OkStatus();
    if (world_ > 1) FJORD_RETURN_IF_ERROR(comm_.Barrier());
    (void)energy_->Read();
    window_start_ = Clock::now();
    window_first_step_ = first_step;
    return OkStatus();
  }

  // At the end of every energy.window_steps steps, the last step and a stop: the window's energy,
  // summed over ranks (one collective), onto the metrics of the step that closes it.
  Status MaybeCloseEnergyWindow(StepMetrics& m, bool stop) {
    if (!energy_) return OkStatus();
    if (m.step % job_.energy().window_steps() != 0 && m.step != train_.steps() && !stop) return OkStatus();
    const Clock::time_point now = Clock::now();
    const double seconds = Seconds(window_start_, now);
    const bool was_covered = energy_->covered();
    const std::optional<uint64_t> uj = energy_->Read();
    if (was_covered && !energy_->covered()) {
      std::fprintf(stderr, "fjord train: rank %d (host %s): %s\n", rank_, where_.host.c_str(),
                   energy_->notes().back().c_str());
    }
    FJORD_ASSIGN_OR_RETURN(const WindowEnergy w, SumWindowEnergy(comm_, uj, energy_->covered(),
                                                                 job_.energy().rank_power_w(), seconds));
    const double tokens = static_cast<double>(global_batch_) * T_ * (m.step - window_first_step_ + 1);
    m.energy_from_step = window_first_step_;
    m.energy_ranks = w.ranks;
    m.energy_measured_ranks = w.measured_ranks;
    if (w.measured_ranks > 0) m.energy_j = static_cast<double>(w.measured_uj) / 1e6;
    if (w.estimated_ranks > 0) m.energy_estimated_j = static_cast<double>(w.estimated_uj) / 1e6;
    if (w.measured_ranks + w.estimated_ranks == w.ranks) {
      const double joules = static_cast<double>(w.measured_uj + w.estimated_uj) / 1e6;
      m.j_per_token = joules / tokens;
      if (seconds > 0) m.avg_power_w = joules / seconds;
    }
    window_start_ = now;
    window_first_step_ = m.step + 1;
    return OkStatus();
  }

  // train.on_nonfinite: ABORT: the error, naming this rank's first non-finite gradient.
  Status NonFinite(int step, float loss, float grad_norm) {
    std::vector<float> host_grads;
    const float* grads = model_->grads();
    if (zero2_) {  // this rank's shard, placed at its layout offsets
      std::vector<float> shard(shard_);
      device_->Download(shard.data(), unit_reducer_->shard(), shard_ * sizeof(float));
      host_grads.assign(model_->buffer_size(), 0.0f);
      units_->Unpack(shard.data(), rank_, host_grads.data());
      grads = host_grads.data();
    } else if (device_->is_cuda()) {
      host_grads.resize(model_->buffer_size());
      device_->Download(host_grads.data(), grads, host_grads.size() * sizeof(float));
      grads = host_grads.data();
    }
    const std::string where =
        FirstNonFinite(*model_, grads, zero_ ? shard_begin_ : 0,
                       zero_ ? std::min(shard_begin_ + shard_, num_params_) : num_params_);
    return FailedPrecondition(
        "step " + std::to_string(step + 1) + ": loss " + std::to_string(loss) + ", gradient norm " +
        std::to_string(grad_norm) + " is not finite" +
        (where.empty()
             ? std::string(" (this rank's gradients are finite)")
             : " (first non-finite gradient on rank " + std::to_string(rank_) + ": " + where + ")") +
        "; no update was applied and the checkpoints in " + checkpoints_dir_ +
        " are intact. Lower train.lr or raise train.warmup_steps, or set train.on_nonfinite: SKIP_STEP");
  }

  // The validation loss every train.eval_every steps and after the last one (with data.val).
  Status MaybeEvaluate(StepMetrics& m) {
    if (!val_data_ || train_.eval_every() <= 0) return OkStatus();
    if (m.step % train_.eval_every() != 0 && m.step != train_.steps()) return OkStatus();
    FJORD_ASSIGN_OR_RETURN(const float val_loss, Evaluate(*model_, *val_data_, B_, T_, train_.eval_batches(),
                                                          comm_, inputs_, targets_, zero3_));
    if (zero3_) FJORD_RETURN_IF_ERROR(gatherer_->TakeStatus().WithContext("evaluating"));
    result_.val_losses.push_back(val_loss);
    if (!std::isnan(val_loss)) m.val_loss = val_loss;  // a NaN evaluation is counted, not reported
    return OkStatus();
  }

  // Whether any rank was asked to stop (SIGTERM, SIGINT, SIGUSR1): all stop after the same step.
  // On the step that closes a straggler window the vote carries each rank's median communication
  // and compute times too (one all-reduce either way: a max over [stop, comm of rank 0, 1, ...,
  // compute of rank 0, 1, ...], each rank filling its own slots), and rank 0 reports a straggler in
  // `m`. Compute is the step's time less its exposed communication.
  StatusOr<bool> StopRequested(StepMetrics& m) {
    const int every = job_.parallel().straggler_every_steps();
    if (every > 0 && world_ > 1) {  // nothing to compare otherwise
      window_comm_ms_.push_back(m.exposed_comm_ms);
      window_step_ms_.push_back(m.ms);
    }
    if (world_ == 1 || every <= 0 || m.step % every != 0) {
      int stop = g_stop_signals.load() > 0 ? 1 : 0;
      if (world_ > 1) FJORD_RETURN_IF_ERROR(comm_.AllReduce(&stop, &stop, 1, DataType::kI32, ReduceOp::kMax));
      if (every > 0 && m.step % every == 0) {
        window_comm_ms_.clear();
        window_step_ms_.clear();
      }
      return stop != 0;
    }
    const size_t n = static_cast<size_t>(world_), me = static_cast<size_t>(rank_);
    std::vector<float> vote(1 + 2 * n, 0.0f);
    vote[0] = g_stop_signals.load() > 0 ? 1.0f : 0.0f;
    vote[1 + me] = static_cast<float>(Median(window_comm_ms_));
    std::vector<double> compute_ms(window_step_ms_.size());
    for (size_t i = 0; i < compute_ms.size(); ++i) compute_ms[i] = window_step_ms_[i] - window_comm_ms_[i];
    vote[1 + n + me] = static_cast<float>(Median(std::move(compute_ms)));
    const int from = m.step - static_cast<int>(window_comm_ms_.size()) + 1;
    const double step_ms = Median(window_step_ms_);
    window_comm_ms_.clear();
    window_step_ms_.clear();
    FJORD_RETURN_IF_ERROR(
        comm_.AllReduce(vote.data(), vote.data(), vote.size(), DataType::kF32, ReduceOp::kMax));
    if (lead_) {
      ReportStraggler(std::vector<double>(vote.begin() + 1, vote.begin() + 1 + n),
                      std::vector<double>(vote.begin() + 1 + n, vote.end()), from, step_ms, m);
    }
    return vote[0] != 0.0f;
  }

  static double Median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
  }

  // Rank 0: the slowest rank against the median of the others, first in compute, then in
  // communication. Compute comes first because a rank slow to compute makes every other rank wait
  // for it in communication: by communication alone the wrong rank looks slow. A straggler costs a
  // quarter of the median step at least (and 2 ms): scheduling jitter of a few percent of a step is
  // not one.
  void ReportStraggler(const std::vector<double>& comm, const std::vector<double>& compute, int from,
                       double step_ms, StepMetrics& m) {
    const double factor = job_.parallel().straggler_factor();
    // The slowest rank of `per_rank` when it is a straggler, with the median of the others.
    auto slowest = [&](const std::vector<double>& per_rank, double* worst,
                       double* median) -> std::optional<size_t> {
      const size_t r =
          static_cast<size_t>(std::max_element(per_rank.begin(), per_rank.end()) - per_rank.begin());
      std::vector<double> others;
      for (size_t i = 0; i < per_rank.size(); ++i)
        if (i != r) others.push_back(per_rank[i]);
      *median = Median(others);
      *worst = per_rank[r];
      if (!(*worst > factor * *median && *worst - *median >= std::max(2.0, 0.25 * step_ms)))
        return std::nullopt;
      return r;
    };
    double worst = 0, median = 0;
    std::optional<size_t> rank = slowest(compute, &worst, &median);
    const bool in_compute = rank.has_value();
    if (!in_compute) rank = slowest(comm, &worst, &median);
    if (!rank) return;
    const std::string host = *rank < hosts_.size() ? hosts_[*rank] : "?";
    m.straggler_rank = static_cast<double>(*rank);
    m.straggler_host = host;
    m.straggler_from_step = from;
    m.straggler_kind = in_compute ? "compute" : "communication";
    (in_compute ? m.straggler_compute_ms : m.straggler_comm_ms) = worst;
    m.straggler_median_ms = median;
    std::fprintf(stderr,
                 "fjord train: warning: straggler: rank %zu (host %s) spent a median %.1f ms per step "
                 "%s over steps %d-%d, %.1fx the median %.1f ms of the other ranks "
                 "(parallel.straggler_factor %g); check that host's %s\n",
                 *rank, host.c_str(), worst, in_compute ? "computing" : "communicating", from, m.step,
                 median > 0 ? worst / median : 0.0, median, factor,
                 in_compute ? "device (clocks, temperature, other processes)" : "network link");
    std::fflush(stderr);
  }

  // A checkpoint every checkpoint.every_steps, after the last step and when stopping.
  Status MaybeCheckpoint(int steps_done, bool stop) {
    result_.checkpoint_dir.clear();
    const int every = job_.checkpoint().every_steps();
    if ((every > 0 && steps_done % every == 0) || steps_done == train_.steps() || stop)
      return Checkpoint(steps_done);
    return OkStatus();
  }

  // `count` floats of every rank's `mine`, in rank order, into *all on rank 0 (the lead); the other
  // ranks send theirs to it and leave *all untouched. Point-to-point, one rank after another, so
  // only rank 0 holds the whole.
  Status GatherToLead(const float* mine, size_t count, std::vector<float>* all) {
    if (!lead_) return comm_.SendRecv(mine, count, 0, nullptr, 0, 0, DataType::kF32);
    all->resize(count * static_cast<size_t>(world_));
    std::copy(mine, mine + count, all->begin());
    for (int r = 1; r < world_; ++r) {
      FJORD_RETURN_IF_ERROR(comm_.SendRecv(nullptr, 0, r, all->data() + static_cast<size_t>(r) * count, count,
                                           r, DataType::kF32));
    }
    return OkStatus();
  }

  // Stages 2 and 3: every rank's unit-map shard (`shard_` floats at `mine`) to rank 0, unpacked there
  // into *full at its layout offsets (buffer_ floats, zeros where no parameter is).
  Status GatherUnitsToLead(const float* mine, std::vector<float>* full) {
    std::vector<float> shards;
    FJORD_RETURN_IF_ERROR(GatherToLead(mine, shard_, &shards));
    if (!lead_) return OkStatus();
    full->assign(buffer_, 0.0f);
    for (int r = 0; r < world_; ++r) units_->Unpack(shards.data() + r * shard_, r, full->data());
    return OkStatus();
  }

  // Writes the checkpoint after `steps_done` steps (every rank takes part: ZeRO-1 gathers the
  // AdamW shards), then prunes old ones. Rank 0 writes.
  Status Checkpoint(int steps_done) {
    std::vector<float> full_m, full_v, own_m, own_v;
    const float* m = optimizer_->m();
    const float* v = optimizer_->v();
    if (device_->is_cuda()) {  // host copies; the file format is the same on every device
      own_m.resize(optimizer_->count());
      own_v.resize(own_m.size());
      optimizer_->StateToHost(own_m.data(), own_v.data());
      m = own_m.data();
      v = own_v.data();
    }
    // The shards go to rank 0, the one rank that writes; the others keep no full copy (a full m and
    // v on every rank would be 8 bytes a parameter more, the memory sharding saved).
    if (zero2_) {  // every rank's shard, placed at its layout offsets
      FJORD_RETURN_IF_ERROR(GatherUnitsToLead(m, &full_m));
      FJORD_RETURN_IF_ERROR(GatherUnitsToLead(v, &full_v));
      m = full_m.data();
      v = full_v.data();
    } else if (zero_) {
      FJORD_RETURN_IF_ERROR(GatherToLead(m, shard_, &full_m));
      FJORD_RETURN_IF_ERROR(GatherToLead(v, shard_, &full_v));
      m = full_m.data();
      v = full_v.data();
    }
    std::vector<float> full_params;  // ZeRO-3: every rank's master shard at its layout offsets, on rank 0
    if (zero3_) {
      std::vector<float> mine(shard_);
      device_->Download(mine.data(), gatherer_->master(), shard_ * sizeof(float));
      FJORD_RETURN_IF_ERROR(GatherUnitsToLead(mine.data(), &full_params));
    }
    if (!lead_) return OkStatus();
    CheckpointState state;
    state.step = steps_done;
    state.sequences_consumed =
        start_sequence_ + static_cast<uint64_t>(steps_done - start_step_) * global_batch_;
    state.world_size = world_;
    state.zero_stage = zero3_ ? 3 : zero2_ ? 2 : zero_ ? 1 : 0;
    state.seed = train_.seed();
    if (!zero3_) model_->SyncParamsToHost();
    FJORD_ASSIGN_OR_RETURN(result_.checkpoint_dir,
                           SaveCheckpoint(checkpoints_dir_, state, job_, *model_, m, v, &seal_,
                                          zero3_ ? full_params.data() : nullptr));
    if (options_.tenancy)
      FJORD_RETURN_IF_ERROR(options_.tenancy->RecordCheckpointWritten(result_.checkpoint_dir));
    if (!options_.quiet && !options_.json_lines) {
      std::printf("fjord train: checkpoint %s\n", result_.checkpoint_dir.c_str());
      std::fflush(stdout);
    }
    return PruneCheckpoints(checkpoints_dir_, job_.checkpoint().keep_last());
  }

  const proto::JobSpec& job_;
  const proto::TrainSpec& train_;
  const TrainOptions& options_;
  Communicator& comm_;
  const int rank_, world_;
  const bool lead_;
  const bool log_;    // rank 0 prints what it sets up (not --quiet, not --json)
  const bool zero_;   // ZeRO-1 over more than one rank
  const bool zero2_;  // ZeRO-2 or 3 (any number of ranks): gradients sharded
  const bool zero3_;  // ZeRO-3: parameters sharded too

  GptConfig config_;
  int B_ = 0, T_ = 0, accum_ = 0;
  uint64_t global_batch_ = 0;           // sequences per optimizer step, all ranks
  std::vector<double> window_comm_ms_;  // this rank's exposed_comm_ms of the straggler window's steps
  std::vector<double> window_step_ms_;  // and its step times
  std::vector<std::string> hosts_;      // every rank's host (RecordDevices)
  size_t multiple_ = 16, num_params_ = 0, buffer_ = 0, shard_ = 0, shard_begin_ = 0, optimizer_count_ = 0;
  RankInfo where_;
  int threads_ = 1;
  bool overlap_ = false;  // buckets reduced during the last backward
  double flops_per_token_ = 0.0, peak_flops_ = 0.0;
  CheckpointSeal seal_;
  std::string checkpoints_dir_;
  int start_step_ = 0;
  uint64_t start_sequence_ = 0;
  Clock::time_point train_start_;
  std::unique_ptr<EnergyMeter> energy_;  // null: energy.measure is false
  Clock::time_point window_start_;
  int window_first_step_ = 1;
  StepHooks hooks_;
  TrainResult result_;

  // Destroyed last to first. The arena is declared before the NCCL communicator so that it is
  // destroyed after it on every way out: the communicator's destructor waits for the collectives
  // still in flight, which write gradient buckets in the arena, so the arena is zeroed after the
  // last write (tenant hygiene on error returns too).
  std::unique_ptr<Device> device_;
  std::unique_ptr<Arena> arena_;
  MemoryPlan plan_;                     // OpenDevice's, against this host or the GPU
  std::unique_ptr<Communicator> nccl_;  // gradients over NCCL; else over comm_
  std::optional<DataLoader> train_data_;
  std::unique_ptr<DataLoader> val_data_;
  MetricsSink sink_;  // rank 0's
  std::unique_ptr<Gpt> model_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<GradReducer> reducer_;            // stages 0 and 1
  std::unique_ptr<ZeroUnits> units_;                // stage 2
  std::unique_ptr<UnitReducer> unit_reducer_;       // stages 2 and 3
  std::unique_ptr<ParamGatherer> gatherer_;         // stage 3 (after the reducer: destroyed first)
  std::vector<std::pair<size_t, size_t>> foreign_;  // stage 2: parameter ranges other ranks update
  std::vector<int32_t> inputs_, targets_;
};

}  // namespace

StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options) {
  FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, CreateCommunicator(CommOptionsFor(job)));
  return Train(job, options, *comm);
}

StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options, Communicator& comm) {
  Trainer trainer(job, options, comm);
  FJORD_RETURN_IF_ERROR(trainer.Setup());
  if (options.dry_run) return TrainResult();
  return trainer.Run();
}

}  // namespace fjord
