// Running a planned launch: files, audit records, node leases, the mpirun / srun child or the
// Slurm submission, signals forwarded to the job, and the exit record. Part of `fjord launch`
// (launcher/launch.h).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "launcher/launch/plan.h"

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
int RunLaunch(const LaunchOptions& options);

// ---- Command-line entry points (launcher/main.cc's command table) ------------------------------

inline constexpr char kLaunchUsage[] =
    "fjord launch JOB.textproto --inventory INV.textproto --np N [--per-node K] [--set PATH=VALUE]... "
    "[--dry-run] [--wait-for-nodes[=SECONDS]] [--slurm [--wait] [--sbatch PATH]] [--mpirun PATH] [--quiet | --json] "
    "[--resume]";
inline constexpr char kLaunchSummary[] =
    "place the job's ranks on inventory nodes its tenant allows, then run mpirun (or Slurm)";
// Flags of `fjord launch` for main.cc's parser.
const std::vector<std::string>& LaunchValueFlags();  // --inventory --np --per-node --set --mpirun --sbatch
const std::vector<std::string>& LaunchBoolFlags();   // --dry-run --slurm --wait --quiet --json --resume
const std::vector<std::string>& LaunchOptionalValueFlags();  // --wait-for-nodes[=SECONDS]

// `fjord launch` from parsed arguments: positional (the job spec) and flags (each flag as written,
// e.g. "--np" -> "2"; --set may repeat). Returns the exit code: 2 for bad arguments (with usage).
int RunLaunchCommand(const std::vector<std::string>& positional,
                     const std::multimap<std::string, std::string>& flags);

}  // namespace fjord
