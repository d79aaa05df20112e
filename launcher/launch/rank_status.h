// Per-rank start and end records, how `fjord launch --max-restarts` finds the node that failed
// without reading mpirun's prose (docs/ARCHITECTURE.md, "Restarts on the healthy nodes").
//
// fjord launch gives every attempt a directory (RUN_DIR/launch/ranks-LAUNCH_ID, exported to the
// ranks as FJORD_RANK_STATUS_DIR). Each rank writes rank-R there when it starts (rank, host, pid)
// and rewrites it when it ends through fjord's own paths: a clean end or an error (RunGatedJob), a
// signal (the trainer's signal watcher), the loss of its parent (orted). A rank whose file has no
// end, or that a survivor names as missing (the collective it was waiting in, the census of a
// communication timeout), or that lost its parent, marks its node as failed.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "launcher/launch/placement.h"

namespace fjord {

inline constexpr char kRankStatusDirEnv[] = "FJORD_RANK_STATUS_DIR";

// Notes, without ending the record, that this rank has been waiting in `detail` (a collective
// waiting for a peer, which MissingRanksIn names): a rank with this note was alive when that peer
// stopped answering. A later note or end replaces it; an empty `detail` removes the note.
void RecordRankWaiting(const std::string& detail);

// Writes this rank's start record when FJORD_RANK_STATUS_DIR is set (else nothing). Later ends
// rewrite the same file (RecordRankEnd). Failures to write are reported on stderr, not fatal.
void RecordRankStart(int rank, const std::string& host);

// Records how this rank ended: `how` is "ok", "error", "signal N" or "parent_lost"; `detail` is
// the message (an error, the collective the rank was in), from which the ranks it names as missing
// are taken (MissingRanksIn). The first end recorded stays (a later one is ignored), so a rank torn
// down after its watcher named the peer keeps that record. Async-signal-unsafe: call it from a
// thread, not from a signal handler. No-op before RecordRankStart or without the variable.
void RecordRankEnd(const std::string& how, const std::string& detail);

// rank-R.signal beside this rank's record ("" before RecordRankStart): the file the trainer's signal
// handler writes on a signal from another process (SetSignalEndFile), read as the rank's end when
// the record itself has none.
std::string RankSignalFile();

// The ranks that fjord's own messages in `text` name as missing: "waiting for rank N (host H)"
// (Communicator::InFlight), "ranks not arrived: N (host H...)" and "ranks not answering within T:
// N (host H)" (the census of a communication timeout).
std::vector<int> MissingRanksIn(const std::string& text);

struct RankStatus {
  int rank = -1;
  std::string host;  // as the rank saw it (ThisHostname)
  long pid = 0;
  std::string ended;    // "" while it has not recorded an end
  std::string waiting;  // RecordRankWaiting's note ("" without one)
  std::string detail;   // the end's message
  std::vector<int> missing;
};

// Reads every rank-R of `dir` (a missing directory: none).
StatusOr<std::vector<RankStatus>> ReadRankStatuses(const std::string& dir);

struct FailedNodes {
  std::vector<std::string> hosts;  // inventory hostnames, placement order
  std::string evidence;            // "rank 1 (no2): no end recorded (pid 4711); ..."
};

// The nodes of `placement` (ranks fill each node in order, as mpirun --map-by slot places them) that
// the records in `statuses` mark as failed: a rank with no record or no end, named missing by a
// survivor, or that lost its parent. When every node would be marked (nothing recorded at all),
// none is: the records do not tell which one failed.
FailedNodes FindFailedNodes(const std::vector<RankStatus>& statuses, const Placement& placement);

// The same for a job Slurm placed (`fjord launch --slurm`, sbatch): a failed rank's node is the one
// its own record names (the Slurm node, SLURMD_NODENAME); a rank without any record names none.
FailedNodes FindFailedSlurmNodes(const std::vector<RankStatus>& statuses, int ranks);

// After the job's mpirun has ended (`fjord launch`, `fjord run`): when the audit log at `audit_path`
// has a job_start after record `after_seq` with no job_end (rank 0 was killed before it could record
// one), appends that job_end as `actor` (ok false, the exit code, what rank 0's own record in
// `rank_status_dir` says, `cause`, recorded_by `who`), so every job_start has its job_end. Returns
// whether it did; problems are warnings on stderr (the job has ended either way).
bool RecordMissingJobEnd(const std::string& audit_path, const std::string& actor, int64_t after_seq,
                         int exit_code, const std::string& cause, const std::string& rank_status_dir,
                         const std::string& who);

}  // namespace fjord
