// The plan of a launch, computed without side effects so that --dry-run prints exactly what a
// real launch runs: the resolved job, the placement, the hostfile, the mpirun / srun command line
// or the sbatch script. Part of `fjord launch` (launcher/launch.h).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "launcher/launch/placement.h"
#include "proto/job.pb.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

struct LaunchOptions {
  std::string job_path;
  std::vector<std::string> overrides;  // --set PATH=VALUE, applied in order
  std::string inventory_path;
  int np = 0;        // ranks (required, >= 1)
  int per_node = 0;  // at most this many ranks per node; 0 = the node's slots
  bool dry_run = false;
  bool slurm = false;
  bool wait = false;    // --slurm outside an allocation: follow the submitted job to its end
  bool doctor = false;  // --doctor (mpirun mode): run `fjord doctor` on the planned nodes first
  // Node leases (launcher/lease.h, mpirun mode): -1 refuses when a planned node is leased by
  // another job; 0 waits for it without limit (--wait-for-nodes); N > 0 waits up to N seconds.
  int wait_for_nodes_s = -1;
  std::string mpirun = "mpirun";
  std::string sbatch = "sbatch";
  // --slurm, sbatch script options: --time, --gpus-per-node (0: none), --signal (so a time limit
  // ends in a checkpoint: fjord train stops on SIGUSR1), and --sbatch-arg options passed through.
  std::string slurm_time;
  int slurm_gpus_per_node = 0;
  std::string slurm_signal = "USR1@120";
  std::vector<std::string> sbatch_args;
  std::vector<std::string> train_flags;  // passed on to `fjord train` (--quiet, --json, --resume)
  std::string fjord_binary;              // "" = this executable
  // Inside a Slurm allocation (--slurm): the job id and node list; filled from SLURM_JOB_ID and
  // SLURM_JOB_NODELIST by `fjord launch` (AddLaunchCommand).
  std::string slurm_job_id;
  std::string slurm_nodelist;
  // --max-restarts N, --min-nodes M (launch/restart.h): after a failure, re-place the job on the
  // healthy allowed nodes and resume, at most N times, never on fewer than M nodes (0: the job keeps
  // its rank count). `exclude`: nodes taken out of the inventory for this job (the failed ones).
  int max_restarts = 0;
  int min_nodes = 0;
  std::vector<ExcludedNode> exclude;
};

enum class LaunchMode { kMpirun, kSbatch, kSrun };

struct LaunchPlan {
  LaunchMode mode = LaunchMode::kMpirun;
  proto::JobSpec job;
  std::string job_digest;  // JobDigest(job): what every rank will record too
  ResidencyPolicy policy;
  std::vector<DataResidency> data_residency;  // manifests of the job's data: they bound placement too
  std::vector<std::string> data_unseen;       // data globs that match nothing on the launch host
  Placement placement;
  std::string inventory_digest;
  std::string launch_dir;   // absolute RUN_DIR/launch
  std::string hostfile;     // launch_dir/hostfile (mpirun) or launch_dir/slurm-hostfile (srun)
  std::string job_file;     // launch_dir/job.textproto
  std::string sbatch_file;  // launch_dir/job.sbatch (kSbatch)
  std::string audit_log;
  std::string lease_dir;          // the inventory's lease_dir (launcher/lease.h)
  std::vector<std::string> argv;  // the command (mpirun / srun); empty for kSbatch
  // kMpirun: `fjord doctor` on every planned node, one rank each, over the job's interface (--doctor).
  std::vector<std::string> doctor_argv;
  std::string hostfile_text;
  std::string sbatch_text;
  // Slurm (kSbatch, kSrun). nodes_from_slurm: the inventory has a slurm { } block and no nodes, so
  // the placement was made on the nodes sinfo listed, and for kSbatch Slurm picks the nodes itself
  // (--constraint, --nodes; no --nodelist, no hostfile).
  bool nodes_from_slurm = false;
  std::string slurm_constraint;  // SlurmConstraint(policy)
  std::string slurm_partition;   // the tenant's own (inventory slurm.tenant), else slurm.partition
  std::string slurm_account;
  bool slurm_exclusive = false;  // --exclusive: no tenant partition or account in the inventory
};

// Loads the job and the inventory, places the ranks and builds the command. No side effects.
StatusOr<LaunchPlan> PlanLaunch(const LaunchOptions& options);

// The command as one shell-quoted line (what --dry-run prints and the audit log records).
std::string CommandLine(const std::vector<std::string>& argv);

// The human-readable plan: tenant, residency, nodes with jurisdiction, site and ranks, excluded
// nodes with reasons, hostfile, and a final line "fjord launch: command: <CommandLine>".
std::string DescribePlan(const LaunchPlan& plan, const LaunchOptions& options);

// `s` quoted for a POSIX shell where it needs quoting (one word of CommandLine).
std::string ShellQuote(const std::string& s);

}  // namespace fjord
