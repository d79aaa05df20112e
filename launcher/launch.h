// `fjord launch`: gate 1 of tenancy (docs/SOVEREIGNTY.md). Reads the operator's inventory, places
// the job's ranks on nodes whose jurisdiction and site the tenant allows, and starts them: an
// Open MPI hostfile + mpirun, or with --slurm an sbatch script that it submits (--wait: and follows to
// its end), or srun --mpi=pmix inside an allocation. With --slurm the inventory may name only a
// slurm { } block: the nodes and their jurisdictions then come from Slurm's node features (sinfo;
// launcher/slurm.h), and a job needing more allowed nodes than Slurm has is refused before sbatch.
// Too few allowed nodes is a refusal that names what was needed, what exists and what was excluded
// and why; placement never spills onto other nodes. Every decision goes to the job's audit log.
//
// The plan is computed without side effects (PlanLaunch), so --dry-run prints exactly the command
// a real launch runs; a real launch then writes RUN_DIR/launch/{hostfile,job.textproto}, appends
// launch_plan to the audit log, runs the command, appends launch_exit, and returns the job's exit
// code. Ranks train RUN_DIR/launch/job.textproto, the resolved job spec (overrides applied), so
// launch and every rank record the same job digest.
//
// What launch does not do: it trusts the inventory for placement. Each rank checks its own node
// identity (gate 2, runtime/tenancy/tenancy.h RankGate) because an inventory can be wrong.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/inventory.pb.h"
#include "proto/job.pb.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

// ---- Inventory ------------------------------------------------------------------------------

// Parses and validates an inventory (text format of fjord.proto.Inventory, proto/inventory.proto).
// Every problem is reported at once, one line each, with SOURCE:LINE:COLUMN of the field:
// missing or duplicate hostname, duplicate address, a jurisdiction that is not ISO 3166-1 alpha-2,
// a bad site or interface name, slots < 1, and malformed tenant ceilings.
StatusOr<proto::Inventory> ParseInventory(std::string_view text, const std::string& source);
StatusOr<proto::Inventory> LoadInventory(const std::string& path);

// ---- Placement ------------------------------------------------------------------------------

struct PlacedNode {
  proto::InventoryNode node;
  int ranks = 0;
  std::string address;    // node.address, or hostname when empty
  std::string interface;  // node.interface, or the inventory default ("" = none)
};

struct ExcludedNode {
  std::string hostname;
  std::string reason;
};

struct Placement {
  std::vector<PlacedNode> nodes;       // inventory order; ranks fill each node before the next
  std::vector<ExcludedNode> excluded;  // every node not used, with why
  int ranks = 0;
  std::vector<std::string> interfaces;  // distinct interfaces of the placed nodes, in order
};

// A data manifest that governs some of the job's shards, and so bounds where its ranks may run.
struct DataResidency {
  std::string fields;      // the job fields whose shards it governs: "data.train", "data.train, data.val"
  std::string manifest;    // its path
  ResidencyPolicy policy;  // its tenant and allowed set
};

// Places `np` ranks on inventory nodes allowed by `policy` (all nodes for a disabled policy) and by
// every manifest of `data`, at most `per_node` per node (0: the node's slots), filling nodes in
// inventory order. `only` (when not null) restricts placement to those hostnames (a Slurm
// allocation). Refuses when the allowed nodes have too few slots (FailedPrecondition naming the
// tenant, residency, the manifests, ranks needed, allowed nodes and slots, and each excluded node
// with its reason), when the inventory lists tenant ceilings and the tenant is not among them or its
// residency is wider than its ceiling, and np < 1.
StatusOr<Placement> PlaceRanks(const proto::Inventory& inventory, const std::string& inventory_source,
                               const ResidencyPolicy& policy, int np, int per_node,
                               const std::vector<std::string>* only = nullptr,
                               const std::vector<DataResidency>& data = {});

// The manifests that govern the shards of the job's data.train and data.val as this host sees them
// (ExpandShardGlob, ManifestsGoverning), one entry per manifest. A glob that matches nothing here
// adds a line to `unseen` (placement is then bounded by the job's residency alone; every rank's data
// gate still checks). Refuses a manifest of another tenant, or any manifest for a job without
// tenant, naming it and what to add to the job spec; and a manifest that cannot be read.
StatusOr<std::vector<DataResidency>> DataResidencyOf(const proto::JobSpec& job, std::vector<std::string>* unseen);


// The Open MPI hostfile of a placement: "ADDRESS slots=R max_slots=R" per node, so mpirun can
// place nothing else.
std::string HostfileText(const Placement& placement);

// Expands a Slurm hostlist ("no[1-3,5],se01") into host names.
StatusOr<std::vector<std::string>> ExpandSlurmHostlist(std::string_view hostlist);

// The Slurm --constraint expression of a residency over node features "jurisdiction_CC" and
// "site_S": "jurisdiction_NO", "(jurisdiction_NO|jurisdiction_SE)&(site_osl1)"; "" when disabled.
// With `data`, each manifest's residency is and-ed on ("(jurisdiction_NO|jurisdiction_SE)&jurisdiction_NO").
std::string SlurmConstraint(const ResidencyPolicy& policy, const std::vector<DataResidency>& data = {});

// ---- The launch -----------------------------------------------------------------------------

struct LaunchOptions {
  std::string job_path;
  std::vector<std::string> overrides;  // --set PATH=VALUE, applied in order
  std::string inventory_path;
  int np = 0;        // ranks (required, >= 1)
  int per_node = 0;  // at most this many ranks per node; 0 = the node's slots
  bool dry_run = false;
  bool slurm = false;
  bool wait = false;  // --slurm outside an allocation: follow the submitted job to its end
  // Node leases (launcher/lease.h, mpirun mode): -1 refuses when a planned node is leased by
  // another job; 0 waits for it without limit (--wait-for-nodes); N > 0 waits up to N seconds.
  int wait_for_nodes_s = -1;
  std::string mpirun = "mpirun";
  std::string sbatch = "sbatch";
  std::vector<std::string> train_flags;  // passed on to `fjord train` (--quiet, --json, --resume)
  std::string fjord_binary;              // "" = this executable
  // Inside a Slurm allocation (--slurm): the job id and node list; filled from SLURM_JOB_ID and
  // SLURM_JOB_NODELIST by RunLaunchCommand.
  std::string slurm_job_id;
  std::string slurm_nodelist;
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
  std::string lease_dir;  // the inventory's lease_dir (launcher/lease.h)
  std::vector<std::string> argv;  // the command (mpirun / srun); empty for kSbatch
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

inline constexpr char kAuditUsage[] =
    "fjord audit verify LOG [--anchor SEQ:HASH]... [--checkpoints DIR]... [--key FILE]";
inline constexpr char kAuditSummary[] =
    "check an audit log's hash chain, head and anchors (SEQ:HASH as launch prints them, and the heads "
    "the tenant checkpoints under DIR recorded); report the first broken record";
const std::vector<std::string>& AuditValueFlags();  // --anchor, --checkpoints (may repeat), --key

// `fjord audit verify LOG [--anchor SEQ:HASH]... [--checkpoints DIR]... [--key FILE]`: exit 0 and
// "LOG: ok, N records, head HASH" when the chain, the head and every anchor hold; exit 1 and the
// first broken record (line, seq, event, what is wrong; for an anchor, its source) when they do
// not, or when the log cannot be read; exit 2 for bad arguments (an anchor that is not SEQ:HASH).
// --checkpoints DIR adds the audit head recorded in every tenant checkpoint at DIR, DIR/step_*
// and DIR/checkpoints/step_* (a run directory) whose record names LOG; with --key (the tenant's
// checkpoint key) each record must first match its tenant.seal, so a record edited to agree with
// a rewritten log is refused.
int RunAuditCommand(const std::vector<std::string>& positional,
                    const std::multimap<std::string, std::string>& flags);

}  // namespace fjord
