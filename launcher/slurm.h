// The Slurm side of `fjord launch --slurm` (docs/SOVEREIGNTY.md, "Slurm"): reading the nodes and
// features Slurm has (sinfo), submitting the sbatch script launch writes, and following the job to
// its end (scontrol). Features name where a node is: jurisdiction_CC and site_S, the same names
// SlurmConstraint (launcher/launch.h) turns a tenant's residency into.
//
// Each call runs one Slurm command (found on PATH, or the path given) and reads what it prints;
// SLURM_CONF, when set, chooses the cluster. Parsing is separate from running so that it is tested
// against the commands' real output formats without a cluster.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/inventory.pb.h"

namespace fjord {

// ---- Nodes from sinfo ---------------------------------------------------------------------------

// The sinfo command whose output ParseSinfoNodes reads: one line per node and partition,
// "NAME|FEATURES|STATE" (features comma-separated, compact state such as idle, mix, drain, down*).
std::vector<std::string> SinfoCommand(const std::string& partition);

// Inventory nodes from that output, one per Slurm node (first line wins when a node is in several
// partitions), in sinfo's order: hostname = the Slurm node name, jurisdiction from feature
// jurisdiction_CC, site from site_S ("" when the node has none), labels = all its features,
// slots = `slots`. A node Slurm would not start a job on (down, drained or draining, failing, not
// responding: state with '*', maint) gets drain: true. Malformed lines are an error naming the line.
StatusOr<std::vector<proto::InventoryNode>> ParseSinfoNodes(std::string_view text, int slots);

// Runs SinfoCommand and parses it; errors name the command and what it printed.
StatusOr<std::vector<proto::InventoryNode>> SlurmNodes(const std::string& partition, int slots);

// ---- Jobs -----------------------------------------------------------------------------------

struct SlurmJob {
  std::string id;
  std::string state;       // JobState: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...
  std::string reason;      // Reason: why it is pending or failed ("None" when none)
  std::string nodelist;    // NodeList in hostlist syntax ("" before the job has nodes)
  std::string constraint;  // Features as Slurm recorded them
  int exit_code = 0;       // from ExitCode=CODE:SIGNAL; 128 + SIGNAL when killed by a signal
  bool finished = false;   // state is final
};

// Parses one line of `scontrol show job -o ID` (space-separated KEY=VALUE pairs).
StatusOr<SlurmJob> ParseScontrolJob(std::string_view line);

// `sbatch --parsable SCRIPT` (with `sbatch` the command to run); returns the job id. A refusal by
// Slurm is an error with sbatch's message.
StatusOr<std::string> SubmitSbatch(const std::string& sbatch, const std::string& script);

// `scontrol show job -o ID`.
StatusOr<SlurmJob> QuerySlurmJob(const std::string& id);

// Polls QuerySlurmJob until the job is finished (every 0.5 s, sooner when a signal interrupts the
// sleep); fails when slurmctld no longer knows the job or cannot be reached for 30 s. `on_poll`,
// when set, sees every answer of a job not yet finished (fjord launch acts on its signals there).
StatusOr<SlurmJob> WaitForSlurmJob(const std::string& id,
                                   const std::function<void(const SlurmJob&)>& on_poll = nullptr);

// Runs argv with stdout and stderr captured together; exit code (127 when it cannot start).
struct CommandOutput {
  int exit_code = 0;
  std::string output;
};
CommandOutput RunCaptured(const std::vector<std::string>& argv);

}  // namespace fjord
