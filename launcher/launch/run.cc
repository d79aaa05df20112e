// Running a launch (launch/run.h). Every side effect (files, audit records, the child process)
// happens here after the plan is complete, so a refusal leaves nothing behind but its audit record.
#include "launcher/launch/run.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "common/env.h"
#include "common/file_util.h"
#include "common/host.h"
#include "common/json.h"
#include "launcher/cli.h"
#include "launcher/launch/rank_status.h"
#include "launcher/launch/restart.h"
#include "launcher/lease.h"
#include "launcher/slurm.h"
#include "runtime/train/config.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

std::string NewLaunchId() {
  std::random_device rd;
  char buf[20];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

// launch_plan's data_manifests: [{"fields": "data.train", "path": ..., "tenant": ..., ...}].
std::string DataResidencyJson(const std::vector<DataResidency>& data) {
  std::string out = "[";
  for (size_t i = 0; i < data.size(); ++i) {
    out += std::string(i ? "," : "") + "{\"fields\":" + JsonQuote(data[i].fields) +
           ",\"path\":" + JsonQuote(data[i].manifest) + ",\"tenant\":" + JsonQuote(data[i].policy.tenant) +
           ",\"allowed_jurisdictions\":" + JsonQuoteList(data[i].policy.jurisdictions) +
           ",\"allowed_sites\":" + JsonQuoteList(data[i].policy.sites) + "}";
  }
  return out + "]";
}

// The child process currently run by RunLaunch, for forwarding SIGTERM. The first SIGTERM asks
// the job to stop cleanly: it reaches mpirun (or srun) as SIGUSR1, which both forward to every
// rank, and `fjord train` treats SIGUSR1 like its own SIGTERM (finish the step, checkpoint, exit
// 0). SIGTERM itself would make mpirun kill the ranks a second later, before a checkpoint of any
// size is written. A second SIGTERM is forwarded as it is: the job ends at once.
volatile sig_atomic_t g_child = 0;
volatile sig_atomic_t g_terms = 0;
void ForwardTerm(int sig) {
  const bool first = g_terms == 0;
  g_terms = 1;
  if (g_child > 0) ::kill(static_cast<pid_t>(g_child), first ? SIGUSR1 : sig);
}
// SIGINT (the terminal's Ctrl-C) reaches the child as it is: the child runs in a process group of
// its own (so that launch can end all of it), out of the terminal's reach.
void ForwardInt(int sig) {
  if (g_child > 0) ::kill(static_cast<pid_t>(g_child), sig);
}

// SIGTERM and SIGINT while launch follows a Slurm job (--wait), counted here and acted on between
// polls (FollowSlurmJob): the job runs under slurmd, not as launch's child, so a signal to launch
// would otherwise end launch and leave the job running unseen.
volatile sig_atomic_t g_slurm_signals = 0;
void CountSlurmSignal(int) { g_slurm_signals = g_slurm_signals < 2 ? g_slurm_signals + 1 : 2; }

// WaitForSlurmJob with the signals above: the first SIGTERM or SIGINT asks a running job to stop
// cleanly, as launch does with mpirun: `scancel --signal=USR1` reaches every task of its steps, and
// `fjord train` finishes its step, checkpoints and exits 0. A job still pending, or a second
// signal, is cancelled outright (`scancel`). Launch keeps following the job to its end either way,
// so its exit and state are still recorded; *stop_requested says what was asked ("" if nothing).
StatusOr<SlurmJob> FollowSlurmJob(const std::string& id, std::string* stop_requested) {
  struct sigaction count {
  }, old_int{}, old_term{};
  count.sa_handler = CountSlurmSignal;
  g_slurm_signals = 0;
  ::sigaction(SIGINT, &count, &old_int);
  ::sigaction(SIGTERM, &count, &old_term);
  int acted = 0;
  StatusOr<SlurmJob> job = WaitForSlurmJob(id, [&](const SlurmJob& now) {
    const int seen = g_slurm_signals;
    if (seen == acted) return;
    acted = seen;
    const bool clean = seen == 1 && now.state == "RUNNING";
    const std::vector<std::string> argv = clean ? std::vector<std::string>{"scancel", "--signal=USR1", id}
                                                : std::vector<std::string>{"scancel", id};
    *stop_requested = clean ? "scancel --signal=USR1 (checkpoint and stop)" : "scancel (cancel)";
    std::printf("fjord launch: signal received: %s Slurm job %s%s (%s)%s\n", clean ? "asking" : "cancelling",
                id.c_str(), clean ? " to stop" : "", CommandLine(argv).c_str(),
                clean ? "; signal again to cancel it at once" : "");
    std::fflush(stdout);
    const CommandOutput r = RunCaptured(argv);
    if (r.exit_code != 0) {
      std::fprintf(stderr, "fjord launch: warning: `%s` exited with %d: %s\n", CommandLine(argv).c_str(),
                   r.exit_code, r.output.c_str());
    }
  });
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  return job;
}

// Why `arg` may not pass through --sbatch-arg ("" if it may): placement, exclusivity and the
// partition or account are fjord launch's residency controls, not the user's; the options launch
// writes itself have flags of their own.
std::string SbatchArgProblem(const std::string& arg) {
  if (!arg.starts_with("-")) {
    return "--sbatch-arg '" + arg + "' is not an sbatch option; write it as --sbatch-arg=--NAME=VALUE";
  }
  const std::string name = arg.substr(0, arg.find('='));
  static const char* const kResidency[] = {
      "--constraint", "-C", "--nodelist", "-w", "--exclude",       "-x", "--exclusive", "--partition", "-p",
      "--account",    "-A", "--nodefile", "-F", "--oversubscribe", "-s"};
  for (const char* r : kResidency) {
    if (name == r || (std::string(r).size() == 2 && name.starts_with(r) && name.size() > 2)) {
      return "--sbatch-arg " + arg + ": " + name +
             " is set by fjord launch from the tenant's residency and the inventory (placement, exclusivity, "
             "partition, account) and cannot be changed here; change the inventory instead "
             "(docs/SOVEREIGNTY.md, "
             "\"Slurm\")";
    }
  }
  static const std::pair<const char*, const char*> kOwnFlags[] = {
      {"--time", "--time"},
      {"-t", "--time"},
      {"--gpus-per-node", "--gpus-per-node"},
      {"--signal", "--signal"},
      {"--nodes", "--np"},
      {"-N", "--np"},
      {"--ntasks", "--np"},
      {"-n", "--np"},
      {"--output", "(launch writes RUN_DIR/launch/slurm-%j.out)"},
      {"-o", "(launch writes RUN_DIR/launch/slurm-%j.out)"},
      {"--job-name", "(launch names it fjord-TENANT)"},
      {"-J", "(launch names it fjord-TENANT)"}};
  for (const auto& [flag, instead] : kOwnFlags) {
    if (name == flag) return "--sbatch-arg " + arg + ": use launch's " + instead + " instead";
  }
  return "";
}

}  // namespace

int RunChild(const std::vector<std::string>& argv, JobOutcome* outcome) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  // The child's stderr comes through launch, which learns from it that the job failed
  // (launch/supervise.h).
  int err[2] = {-1, -1};
  if (::pipe2(err, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "fjord launch: error: cannot make a pipe to run %s: %s\n", argv[0].c_str(),
                 std::strerror(errno));
    return 1;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "fjord launch: error: cannot fork to run %s: %s\n", argv[0].c_str(),
                 std::strerror(errno));
    ::close(err[0]);
    ::close(err[1]);
    return 1;
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::dup2(err[1], 2);  // dup2 clears O_CLOEXEC on fd 2
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "fjord launch: error: cannot run %s: %s; install it or pass --mpirun PATH\n",
                 args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // as the child does: whichever runs first
  ::close(err[1]);
  // Ctrl-C is forwarded to mpirun, which ends the job; launch waits to record the exit.
  struct sigaction interrupt {
  }, forward{}, old_int{}, old_term{};
  interrupt.sa_handler = ForwardInt;
  forward.sa_handler = ForwardTerm;
  g_child = pid;
  g_terms = 0;
  ::sigaction(SIGINT, &interrupt, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);
  const JobOutcome end = SuperviseChild(pid, err[0], Supervision{});
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  g_child = 0;
  if (outcome != nullptr) *outcome = end;
  return end.exit_code;
}

bool ChildStopRequested() { return g_terms != 0; }

namespace {

// The log's last record as an anchor kept out of the job user's reach (docs/SOVEREIGNTY.md, "The
// audit log"): printed for whoever ran launch, with the command that checks it, and sent to the
// launch host's system log (syslog, LOG_AUTHPRIV), to which a user can add but which no user can
// edit, and which operators ship to a collector. `lead` starts the printed line.
void AnnounceAuditHead(const std::string& lead, const AuditAnchor& head, const std::string& launch_id,
                       const std::string& tenant) {
  const std::string anchor = std::to_string(head.seq) + ":" + head.hash;
  std::printf("fjord launch: %saudit log %s head %s (check with: fjord audit verify %s --anchor %s)\n",
              lead.c_str(), head.source.c_str(), anchor.c_str(), ShellQuote(head.source).c_str(),
              anchor.c_str());
  ::openlog("fjord-launch", LOG_PID, LOG_AUTHPRIV);
  ::syslog(LOG_NOTICE, "audit head %s log %s launch %s tenant %s", anchor.c_str(), head.source.c_str(),
           launch_id.c_str(), tenant.c_str());
  ::closelog();
}

// Submits the written sbatch script, records the submission, and with --wait follows the job to
// its end. Returns launch's exit code.
int SubmitToSlurm(const LaunchPlan& plan, const LaunchOptions& options, AuditLog& audit,
                  const std::string& rank_status_dir, LaunchAttempt* attempt) {
  StatusOr<std::string> id = SubmitSbatch(options.sbatch, plan.sbatch_file);
  if (!id.ok()) {
    (void)audit.Append("launch_refused", AuditRecord()
                                             .Str("tenant", plan.policy.tenant)
                                             .Str("job_sha256", plan.job_digest)
                                             .Str("slurm_constraint", plan.slurm_constraint)
                                             .Str("message", id.status().message()));
    std::fprintf(stderr, "fjord launch: error: %s\n", id.status().message().c_str());
    return 1;
  }
  std::printf("fjord launch: submitted Slurm job %s\n", id->c_str());
  if (attempt != nullptr) *attempt = {true, plan, "slurm-" + *id, rank_status_dir};
  StatusOr<AuditAnchor> head =
      audit.Append("slurm_submitted", AuditRecord()
                                          .Str("launch_id", "slurm-" + *id)
                                          .Str("slurm_job_id", *id)
                                          .Str("slurm_constraint", plan.slurm_constraint)
                                          .Str("slurm_partition", plan.slurm_partition)
                                          .Str("slurm_account", plan.slurm_account)
                                          .Bool("slurm_exclusive", plan.slurm_exclusive)
                                          // true: launch_plan's nodes are what sinfo offered; Slurm
                                          // picks the nodes (launch_exit records them with --wait)
                                          .Bool("nodes_chosen_by_slurm", plan.nodes_from_slurm)
                                          .Str("sbatch_file", plan.sbatch_file));
  if (!head.ok()) {
    std::fprintf(stderr, "fjord launch: warning: cannot record the submission in the audit log: %s\n",
                 head.status().message().c_str());
  } else if (!options.wait) {
    AnnounceAuditHead("", *head, "slurm-" + *id, plan.policy.tenant);  // rank 0 appends after this
  }
  if (!options.wait) {
    std::printf(
        "fjord launch: follow it with: squeue --job %s (or launch with --wait); output in %s/slurm-%s.out\n",
        id->c_str(), plan.launch_dir.c_str(), id->c_str());
    return 0;
  }
  std::fflush(stdout);
  std::string stop_requested;
  StatusOr<SlurmJob> job = FollowSlurmJob(*id, &stop_requested);
  if (attempt != nullptr) {
    // Not followed to its end (the job may still run), asked to stop, or cancelled: no restart.
    attempt->started = job.ok();
    attempt->stopped = !stop_requested.empty() || (job.ok() && job->state.starts_with("CANCELLED"));
  }
  if (!job.ok()) {
    std::fprintf(stderr, "fjord launch: error: %s\n", job.status().message().c_str());
    // The job's end is unknown, but that launch stopped following it is recorded.
    StatusOr<AuditAnchor> end = audit.Append("launch_exit", AuditRecord()
                                                                .Str("launch_id", "slurm-" + *id)
                                                                .Str("slurm_job_id", *id)
                                                                .Str("error", job.status().message())
                                                                .Int("exit_code", 1)
                                                                .Str("stop_requested", stop_requested));
    if (!end.ok()) {
      std::fprintf(stderr, "fjord launch: warning: cannot record the exit in the audit log: %s\n",
                   end.status().message().c_str());
    } else {
      AnnounceAuditHead("", *end, "slurm-" + *id, plan.policy.tenant);
    }
    return 1;
  }
  // Every job_start gets its job_end, even when rank 0 was killed before it could write one.
  if (head.ok()) {
    RecordMissingJobEnd(plan.audit_log, audit.actor(), head->seq, job->exit_code,
                        "Slurm job " + *id + " " + job->state, rank_status_dir, "fjord launch");
  }
  StatusOr<std::vector<std::string>> nodes = ExpandSlurmHostlist(job->nodelist);
  const std::string nodes_json = JsonQuoteList(nodes.ok() ? *nodes : std::vector<std::string>{job->nodelist});
  StatusOr<AuditAnchor> end = audit.Append("launch_exit", AuditRecord()
                                                              .Str("launch_id", "slurm-" + *id)
                                                              .Str("slurm_job_id", *id)
                                                              .Str("slurm_state", job->state)
                                                              .Raw("slurm_nodes", nodes_json)
                                                              .Int("exit_code", job->exit_code)
                                                              .Str("stop_requested", stop_requested));
  std::printf("fjord launch: Slurm job %s %s on %s with exit code %d; output in %s/slurm-%s.out\n",
              id->c_str(), job->state.c_str(), job->nodelist.empty() ? "no nodes" : job->nodelist.c_str(),
              job->exit_code, plan.launch_dir.c_str(), id->c_str());
  if (!end.ok()) {
    std::fprintf(stderr, "fjord launch: warning: cannot record the exit in the audit log: %s\n",
                 end.status().message().c_str());
  } else {
    AnnounceAuditHead("", *end, "slurm-" + *id, plan.policy.tenant);
  }
  return job->exit_code;
}

// The tenant named by the first record of the audit log at `path` that names one ("" when there
// is no such log or record).
std::string LogTenant(const std::string& path) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    StatusOr<JsonValue> record = ParseJson(line, path);
    if (!record.ok()) continue;
    const JsonValue* tenant = record->Find("tenant");
    if (tenant != nullptr && tenant->is_string() && !tenant->text().empty()) return tenant->text();
  }
  return "";
}

}  // namespace

int RunLaunchAttempt(const LaunchOptions& options, LaunchAttempt* attempt) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "fjord launch: error: %s\n", s.message().c_str());
    return 1;
  };
  StatusOr<LaunchPlan> planned = PlanLaunch(options);
  if (!planned.ok()) {
    // A refusal after the job spec loaded is recorded in the job's audit log (nothing else is written),
    // except for a dry run, which writes nothing, and never in a log that another tenant's records
    // began (a job pointing its run_dir or audit_log at it).
    StatusOr<proto::JobSpec> job = LoadJobSpec(options.job_path, options.overrides);
    const StatusOr<std::string> digest = job.ok() ? JobDigest(*job) : StatusOr<std::string>(job.status());
    std::string owner;
    if (job.ok()) owner = LogTenant(AuditPathFor(*job));
    if (digest.ok() && !options.dry_run && !owner.empty() && owner != job->tenant().id()) {
      std::fprintf(
          stderr,
          "fjord launch: warning: the refusal is not recorded: %s is tenant %s's audit log, and this "
          "job is %s\n",
          AuditPathFor(*job).c_str(), owner.c_str(),
          job->tenant().id().empty() ? "untenanted" : ("tenant " + job->tenant().id()).c_str());
    } else if (digest.ok() && !options.dry_run) {
      StatusOr<std::unique_ptr<AuditLog>> audit =
          AuditLog::Open(AuditPathFor(*job), "launch@" + ThisHostname());
      Status logged = audit.ok()
                          ? (*audit)
                                ->Append("launch_refused", AuditRecord()
                                                               .Str("tenant", job->tenant().id())
                                                               .Str("job_sha256", *digest)
                                                               .Str("inventory", options.inventory_path)
                                                               .Int("ranks", options.np)
                                                               .Str("message", planned.status().message()))
                                .status()
                          : audit.status();
      if (!logged.ok()) {
        std::fprintf(stderr,
                     "fjord launch: warning: the refusal could not be recorded in the audit log: %s\n",
                     logged.message().c_str());
      }
    }
    return fail(planned.status());
  }
  const LaunchPlan& plan = *planned;
  std::fputs(DescribePlan(plan, options).c_str(), stdout);
  if (options.dry_run) {
    if (plan.mode == LaunchMode::kMpirun) std::fputs(DescribeLeases(plan).c_str(), stdout);
    if (options.doctor && plan.mode == LaunchMode::kMpirun) {
      std::printf("fjord launch: doctor (before the job): %s\n", CommandLine(plan.doctor_argv).c_str());
    }
    std::printf("fjord launch: dry run: nothing was written or started\n");
    return 0;
  }
  if (options.doctor) {
    if (plan.mode != LaunchMode::kMpirun) {
      return fail(
          InvalidArgument("--doctor runs fjord doctor through mpirun on the planned nodes; under --slurm "
                          "run `srun fjord doctor` in an allocation instead"));
    }
    std::printf("fjord launch: doctor: %s\n", CommandLine(plan.doctor_argv).c_str());
    std::fflush(stdout);
    const int code = RunChild(plan.doctor_argv);
    if (code != 0) {
      const std::string message =
          "fjord doctor found a FAIL on the planned nodes (exit " + std::to_string(code) +
          ", table above): the job was not started. Fix the node(s) the table names, or "
          "take them out of the inventory, and launch again";
      if (StatusOr<std::unique_ptr<AuditLog>> audit =
              AuditLog::Open(plan.audit_log, "launch@" + ThisHostname());
          audit.ok()) {
        (void)(*audit)->Append("launch_refused", AuditRecord()
                                                     .Str("tenant", plan.policy.tenant)
                                                     .Str("job_sha256", plan.job_digest)
                                                     .Str("inventory", options.inventory_path)
                                                     .Int("ranks", options.np)
                                                     .Str("message", message));
      }
      return fail(FailedPrecondition(message));
    }
  }
  const std::string launch_id = NewLaunchId();
  // A node runs one job at a time: without Slurm, every planned node's lease is held while mpirun
  // runs (launcher/lease.h). Nothing is written before they are all held.
  std::unique_ptr<NodeLeases> leases;
  if (plan.mode == LaunchMode::kMpirun) {
    StatusOr<std::unique_ptr<NodeLeases>> held = LeaseNodesForLaunch(plan, options, launch_id);
    if (!held.ok()) return fail(held.status());
    leases = std::move(*held);
  }

  // What launch writes now (run and launch directories, job spec, hostfile, audit log) and, by
  // inheritance, what mpirun and the ranks write. After the leases, whose files every launching
  // user must be able to write.
  if (!plan.policy.tenant.empty()) KeepNewFilesPrivate();
  std::error_code ec;
  fs::create_directories(plan.launch_dir, ec);
  if (ec) return fail(FailedPrecondition("cannot create " + plan.launch_dir + ": " + ec.message()));
  const std::string job_text = JobSpecToText(plan.job);
  Status s = WriteFileAtomic(plan.job_file, {{job_text.data(), job_text.size()}});
  if (s.ok() && !plan.hostfile.empty())
    s = WriteFileAtomic(plan.hostfile, {{plan.hostfile_text.data(), plan.hostfile_text.size()}});
  if (s.ok() && plan.mode == LaunchMode::kSbatch) {
    s = WriteFileAtomic(plan.sbatch_file, {{plan.sbatch_text.data(), plan.sbatch_text.size()}}, 0744);
  }
  if (!s.ok()) return fail(s);

  ::setenv("FJORD_LAUNCH_ID", launch_id.c_str(), 1);
  const std::string rank_status_dir = plan.launch_dir + "/ranks-" + launch_id;
  ::setenv(kRankStatusDirEnv, rank_status_dir.c_str(), 1);
  StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(plan.audit_log, "launch@" + ThisHostname());
  if (!audit.ok()) return fail(audit.status());
  const char* mode = plan.mode == LaunchMode::kMpirun ? "mpirun"
                     : plan.mode == LaunchMode::kSrun ? "srun"
                                                      : "sbatch";
  AuditRecord record;
  record.Str("launch_id", plan.mode == LaunchMode::kSbatch ? std::string("slurm-<job id>") : launch_id)
      .Str("mode", mode)
      .Str("tenant", plan.policy.tenant)
      .Raw("allowed_jurisdictions", JsonQuoteList(plan.policy.jurisdictions))
      .Raw("allowed_sites", JsonQuoteList(plan.policy.sites))
      .Str("job", options.job_path)
      .Str("job_sha256", plan.job_digest)
      .Str("inventory", options.inventory_path)
      .Str("inventory_sha256", plan.inventory_digest)
      .Int("ranks", plan.placement.ranks)
      .Raw("nodes", NodesJson(plan.placement))
      .Raw("excluded", ExcludedJson(plan.placement.excluded))
      .Raw("data_manifests", DataResidencyJson(plan.data_residency))
      .Raw("data_unseen", JsonQuoteList(plan.data_unseen))
      .Str("command", plan.mode == LaunchMode::kSbatch ? "sbatch " + ShellQuote(plan.sbatch_file)
                                                       : CommandLine(plan.argv));
  if (plan.mode == LaunchMode::kSrun) record.Str("slurm_job_id", options.slurm_job_id);
  StatusOr<AuditAnchor> head = (*audit)->Append("launch_plan", record);
  if (!head.ok()) return fail(head.status());

  if (plan.mode == LaunchMode::kSbatch)
    return SubmitToSlurm(plan, options, **audit, rank_status_dir, attempt);
  std::printf("fjord launch: running (launch id %s)\n", launch_id.c_str());
  if (attempt != nullptr) *attempt = {true, plan, launch_id, rank_status_dir};
  JobOutcome outcome;
  const int code = RunChild(plan.argv, &outcome);
  // Every job_start gets its job_end, even when rank 0 was killed before it could write one.
  RecordMissingJobEnd(plan.audit_log, (*audit)->actor(), head->seq, code, outcome.cause, rank_status_dir,
                      "fjord launch");
  leases.reset();  // the job has ended: release its nodes (recorded as lease_released)
  AuditRecord exit_record;
  exit_record.Str("launch_id", launch_id).Int("exit_code", code);
  if (!outcome.cause.empty()) {
    // Why the job failed, and who ended it: mpirun, or launch when mpirun did not within its grace.
    exit_record.Str("cause", outcome.cause)
        .Str("ended_by", outcome.ended_by_launch ? "fjord launch" : "mpirun")
        .Int("end_after_ms", static_cast<int64_t>(outcome.end_after_s * 1000.0));
  }
  StatusOr<AuditAnchor> end = (*audit)->Append("launch_exit", exit_record);
  if (!end.ok()) {
    std::fprintf(stderr, "fjord launch: warning: cannot record the exit in the audit log: %s\n",
                 end.status().message().c_str());
  } else {
    AnnounceAuditHead("job exited with " + std::to_string(code) + "; ", *end, launch_id, plan.policy.tenant);
  }
  return code;
}

// ---- Command line -----------------------------------------------------------------------------

void AddLaunchCommand(CLI::App& app) {
  struct Args {
    std::vector<std::string> job;
    LaunchOptions options;
    std::string wait_for_nodes;  // "true" for the flag alone, else its "=SECONDS"
    bool quiet = false, json = false, resume = false;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "launch",
      "place the job's ranks on inventory nodes its tenant allows, then run mpirun (or Slurm)");
  LaunchOptions& o = a->options;
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  cli::Required(
      c->add_option("--inventory", o.inventory_path,
                    "the operator's list of nodes with their jurisdictions (see examples/sovereign-cluster/)")
          ->type_name("INV.textproto"));
  cli::Required(cli::AddNumber(*c, "--np", o.np, "N", "the number of ranks to start", 0, 1'000'000));
  cli::AddNumber(*c, "--per-node", o.per_node, "K", "at most K ranks per node (default: the node's slots)", 0,
                 1'000'000);
  c->add_option("--set", o.overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->add_flag("--dry-run", o.dry_run, "print the plan and the command; start nothing");
  c->add_flag("--doctor", o.doctor, "run fjord doctor on the planned nodes first; any FAIL stops the launch");
  c->add_flag("--wait-for-nodes", a->wait_for_nodes,
              "wait for nodes leased by another job (alone: without limit; =SECONDS: at most that long)")
      ->type_name("[=SECONDS]");
  c->add_flag("--slurm", o.slurm, "submit an sbatch script (or run srun inside an allocation)");
  c->add_flag("--wait", o.wait, "--slurm: follow the submitted job to its end");
  c->add_option("--sbatch", o.sbatch, "--slurm: the sbatch to run")->type_name("PATH");
  c->add_option("--time", o.slurm_time, "--slurm: the job's time limit (sbatch --time)")->type_name("TIME");
  cli::AddNumber(*c, "--gpus-per-node", o.slurm_gpus_per_node, "G",
                 "--slurm: GPUs per node (sbatch --gpus-per-node)", 0, 1024);
  c->add_option("--signal", o.slurm_signal,
                "--slurm: sbatch --signal (default USR1@120: a checkpoint 120 s before the time limit)")
      ->type_name("SIG@SECONDS");
  c->add_option("--sbatch-arg", o.sbatch_args,
                "--slurm: one more sbatch option, e.g. --sbatch-arg=--qos=high")
      ->type_name("OPTION")
      ->allow_extra_args(false);
  cli::AddNumber(
      *c, "--max-restarts", o.max_restarts, "N",
      "after a failure, exclude the failed node(s), re-place the job on the healthy allowed nodes "
      "and resume from the newest intact checkpoint with the same global batch, at most N times "
      "(default 0); each restart is audited; with --slurm (and --wait) the job is resubmitted with "
      "sbatch --exclude of the failed node",
      0, 1000);
  cli::AddNumber(
      *c, "--min-nodes", o.min_nodes, "M",
      "--max-restarts: a restart may run the job on fewer ranks (grad_accum follows), but never on "
      "fewer than M nodes (without it, a restart keeps the rank count)",
      1, 1'000'000);
  c->add_option("--mpirun", o.mpirun, "the mpirun to run")->type_name("PATH");
  c->add_flag("--quiet", a->quiet, "passed on to fjord train");
  c->add_flag("--json", a->json, "passed on to fjord train");
  c->add_flag("--resume", a->resume, "passed on to fjord train");
  c->run = [c, a] {
    LaunchOptions options = a->options;
    if (a->job.size() != 1) return cli::UsageError(*c, "give exactly one job spec (JOB.textproto)");
    options.job_path = a->job[0];
    if (options.inventory_path.empty()) {
      return cli::UsageError(*c,
                             "--inventory INV.textproto is required: the operator's list of nodes with their "
                             "jurisdictions (see examples/sovereign-cluster/)");
    }
    if (c->count("--np") == 0) return cli::UsageError(*c, "--np N is required: the number of ranks to start");
    for (const char* slurm_only : {"--time", "--gpus-per-node", "--signal", "--sbatch-arg"}) {
      if (c->count(slurm_only) > 0 && !options.slurm) {
        return cli::UsageError(*c, std::string(slurm_only) + " is an sbatch option: add --slurm");
      }
    }
    for (const std::string& arg : options.sbatch_args) {
      if (std::string why = SbatchArgProblem(arg); !why.empty()) return cli::UsageError(*c, why);
    }
    if ((options.wait || c->count("--sbatch") > 0) && !options.slurm) {
      return cli::UsageError(*c,
                             "--wait and --sbatch are for Slurm jobs: add --slurm (without it launch runs "
                             "mpirun and always waits for the job)");
    }
    if (options.min_nodes > 0 && options.max_restarts == 0) {
      return cli::UsageError(*c,
                             "--min-nodes bounds the restarts of --max-restarts N: give --max-restarts too");
    }
    if (options.max_restarts > 0 && options.slurm && GetEnv("SLURM_JOB_ID")) {
      return cli::UsageError(
          *c, "--max-restarts inside a Slurm allocation (SLURM_JOB_ID " + *GetEnv("SLURM_JOB_ID") +
                  ") is not built yet: launch from outside the allocation with --slurm --wait "
                  "--max-restarts N, which resubmits the job without the failed node");
    }
    if (options.max_restarts > 0 && options.slurm && !options.wait) {
      return cli::UsageError(*c,
                             "--max-restarts under --slurm needs --wait: launch follows the job to its end "
                             "to resubmit it without the failed node");
    }
    if (c->count("--wait-for-nodes") > 0) {
      const std::string& w = a->wait_for_nodes;
      if (options.slurm) {
        return cli::UsageError(*c,
                               "--wait-for-nodes waits for node leases, which mpirun launches take; under "
                               "--slurm, Slurm queues the job until its nodes are free");
      }
      if (w == "true") {
        options.wait_for_nodes_s = 0;
      } else if (!CLI::detail::lexical_cast(w, options.wait_for_nodes_s) || options.wait_for_nodes_s < 0 ||
                 options.wait_for_nodes_s > 1'000'000) {
        return cli::UsageError(*c, "--wait-for-nodes '" + w + "' is not a whole number");
      } else if (options.wait_for_nodes_s == 0) {
        return cli::UsageError(*c, "--wait-for-nodes=" + w +
                                       ": give the seconds to wait (1 or more), or "
                                       "--wait-for-nodes alone to wait without limit");
      }
    }
    for (const auto& [given, flag] :
         {std::pair{a->quiet, "--quiet"}, {a->json, "--json"}, {a->resume, "--resume"}}) {
      if (given) options.train_flags.push_back(flag);
    }
    if (options.slurm) {
      options.slurm_job_id = GetEnv("SLURM_JOB_ID").value_or("");
      options.slurm_nodelist = GetEnv("SLURM_JOB_NODELIST").value_or("");
    }
    return RunLaunch(options);
  };
}

}  // namespace fjord
