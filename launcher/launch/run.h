// Running a planned launch: files, audit records, node leases, the mpirun / srun child or the
// Slurm submission, signals forwarded to the job, and the exit record. Part of `fjord launch`
// (launcher/launch.h).
#pragma once

#include <string>
#include <vector>

#include "launcher/launch/plan.h"
#include "launcher/launch/supervise.h"

namespace CLI {
class App;
}

namespace fjord {

// Runs the launch (or prints it with dry_run) and returns the process exit code: the job's exit
// code (128 + signal if it was killed), 1 for a refusal or failure, 0 for a dry run or a submitted
// Slurm job (without --wait; with --wait, the Slurm job's exit code). Prints the plan on stdout
// and errors on stderr ("fjord launch: error: ..."). A Slurm submission prints "fjord launch:
// submitted Slurm job ID" and appends slurm_submitted (job id, constraint, partition, account,
// exclusive) to the audit log; with --wait, launch_exit adds the Slurm state and the nodes Slurm
// ran the job on.
// Without Slurm it holds a lease on every planned node while mpirun runs (launcher/lease.h); a
// dry run only reports the current holders.
// With options.max_restarts > 0 a failed job is re-placed and resumed (launch/restart.h).
int RunLaunch(const LaunchOptions& options);

// What one attempt of RunLaunch ran, for the restart loop: the plan, its launch id and the directory
// of its ranks' start and end records (launch/rank_status.h). started: mpirun (or srun) ran.
struct LaunchAttempt {
  bool started = false;
  LaunchPlan plan;
  std::string launch_id;
  std::string rank_status_dir;
  bool stopped = false;  // a Slurm job launch asked to stop, or that was cancelled: not a failure
};

// One attempt: plan, leases, files, audit records, the child, launch_exit. RunLaunch without
// restarts; `attempt` (when not null) receives what ran.
int RunLaunchAttempt(const LaunchOptions& options, LaunchAttempt* attempt);

// Runs argv (mpirun, srun) as a child in a process group of its own and waits; returns its exit
// code (128 + signal when killed, 127 when it cannot start). Its stderr passes through launch, which
// ends the child's process group when the job has failed and the child does not end it
// (launch/supervise.h); *outcome (when given) says why the job failed and who ended it. While it
// runs, the first SIGTERM reaches the child as SIGUSR1 (a clean stop with a checkpoint), a second as
// SIGTERM; SIGINT is forwarded as it is.
int RunChild(const std::vector<std::string>& argv, JobOutcome* outcome = nullptr);

// Whether a SIGTERM asked the last RunChild's job to stop.
bool ChildStopRequested();

// `fjord launch JOB.textproto --inventory INV.textproto --np N ...` as a subcommand of `app`
// (launcher/cli.h): parses and checks the arguments (exit 2 with the usage), then RunLaunch.
void AddLaunchCommand(CLI::App& app);

}  // namespace fjord
