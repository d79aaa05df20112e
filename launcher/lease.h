// Node leases: tenant exclusivity for `fjord launch` without Slurm (docs/SOVEREIGNTY.md, "Node
// leases"). A node runs one job at a time, so never two tenants' jobs. Before anything starts, launch
// takes a lease on every node it placed ranks on, holds them while mpirun runs and releases them
// when the job ends; a launch that finds a node leased refuses, or with --wait-for-nodes waits.
//
// A node's lease is the file LEASE_DIR/KEY.lease for each of its keys (NodeLeaseKeys: its short
// host name and its resolved addresses; LEASE_DIR: the inventory's lease_dir, on storage every
// launch host sees), held by an exclusive flock on an open file description for the job's lifetime,
// plus a one-line JSON record of the holder (tenant, job digest, launch id, launch host, pid, since)
// for messages. The lock decides, the record informs. The descriptor is deliberately inherited by
// mpirun, so the kernel drops the lock only when launch and mpirun have both ended: a launch killed
// with SIGKILL keeps its nodes until its job is over, and a crashed one frees them. A lease whose
// lock can be taken but which still has a record was left by a launch that ended without releasing
// it (crash, kill): it is taken over, said on stderr and recorded in the audit log.
//
// Nodes are locked in sorted order, each without blocking; on a conflict everything already held
// is released before refusing or waiting. Two launches therefore never deadlock, and of two that
// want the same first node one always gets all it needs (no livelock).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "launcher/launch.h"

namespace fjord {

// Who holds (or held) a lease: the record in the lease file.
struct LeaseRecord {
  std::string tenant;  // "" for a job without tenant
  std::string job_sha256;
  std::string launch_id;
  std::string launch_host;
  int64_t pid = 0;
  std::string since;  // UTC, ISO 8601 with milliseconds
  std::string audit_log;
};

// The record as one line of JSON, and back. ParseLeaseRecord refuses anything that is not an object
// with string fields tenant, job_sha256, launch_id, launch_host, since, audit_log and integer pid.
std::string LeaseRecordJson(const LeaseRecord& record);
StatusOr<LeaseRecord> ParseLeaseRecord(std::string_view text, const std::string& source);

// "tenant acme (job sha256 0123456789abcdef, launch 1a2b... on head, pid 42) since 2026-...Z".
std::string DescribeHolder(const LeaseRecord& record);

// A node whose lease another job holds.
// How messages name the node of a lease key: key -> the inventory's hostname(s) of the node(s)
// with that key ("no1" for "@10.0.0.1"). A key without a name is shown as itself.
using LeaseNames = std::map<std::string, std::string>;

struct LeaseConflict {
  std::string host;
  bool known = false;  // false: the holder had not written its record yet
  LeaseRecord holder;
};

// A lease taken over from a launch that ended without releasing it.
struct StaleLease {
  std::string host;
  bool known = false;    // the record it left could be read
  LeaseRecord previous;  // that record (when known)
  std::string problem;   // why it could not be read (when not)
};

// The leases of one job. Release() (or the destructor) runs the on_release callback (if any), then
// empties each record, unlocks and closes, in the order they were taken: whatever the callback
// records happens before any other launch can take the nodes. Not thread-safe; not copyable.
class NodeLeases {
 public:
  ~NodeLeases();
  NodeLeases(const NodeLeases&) = delete;
  NodeLeases& operator=(const NodeLeases&) = delete;

  // Idempotent. Returns the first error (every lease is still unlocked and closed).
  Status Release();

  const std::vector<std::string>& hosts() const { return hosts_; }  // sorted
  const std::vector<StaleLease>& taken_over() const { return taken_over_; }
  double waited_seconds() const { return waited_seconds_; }
  void set_on_release(std::function<void(const NodeLeases&)> f) { on_release_ = std::move(f); }

 private:
  friend StatusOr<std::unique_ptr<NodeLeases>> TryAcquireLeases(const std::string&,
                                                                const std::vector<std::string>&,
                                                                const LeaseRecord&, LeaseConflict*,
                                                                const LeaseNames*);
  friend StatusOr<std::unique_ptr<NodeLeases>> AcquireLeases(const std::string&,
                                                             const std::vector<std::string>&,
                                                             const LeaseRecord&, int,
                                                             const std::function<void(const LeaseConflict&)>&,
                                                             const LeaseNames*);
  NodeLeases() = default;
  std::string dir_;
  std::vector<std::string> hosts_;
  std::vector<int> fds_;
  std::vector<StaleLease> taken_over_;
  double waited_seconds_ = 0;
  std::function<void(const NodeLeases&)> on_release_;
  bool released_ = false;
};

// One attempt: locks DIR/HOST.lease for every host (deduplicated, sorted) without blocking and
// writes `record` (its `since` set to now) into each. On a conflict it releases what it took, fills
// *conflict and returns FailedPrecondition naming the node and its holder. Other failures (DIR
// missing or not a directory, a file that cannot be opened, locked or written) return an error that
// names the path and what to do, with conflict->host empty.
StatusOr<std::unique_ptr<NodeLeases>> TryAcquireLeases(const std::string& dir,
                                                       const std::vector<std::string>& hosts,
                                                       const LeaseRecord& record, LeaseConflict* conflict,
                                                       const LeaseNames* names = nullptr);

// TryAcquireLeases, retried while a node is leased: wait_s < 0 refuses at the first conflict,
// 0 waits without limit, N > 0 gives up after N seconds. Between attempts it holds nothing and
// sleeps 0.1 s, doubling up to 1 s. `on_wait` runs once per distinct (node, holder) waited for.
// A refusal or timeout is FailedPrecondition: the node, its holder and since when, what to do.
StatusOr<std::unique_ptr<NodeLeases>> AcquireLeases(const std::string& dir,
                                                    const std::vector<std::string>& hosts,
                                                    const LeaseRecord& record, int wait_s,
                                                    const std::function<void(const LeaseConflict&)>& on_wait,
                                                    const LeaseNames* names = nullptr);

// The current holder of each of `hosts` whose lease is held now (lock taken), in sorted order;
// free nodes are left out. Reads only: creates and locks nothing (for --dry-run).
StatusOr<std::vector<LeaseConflict>> CurrentHolders(const std::string& dir,
                                                    const std::vector<std::string>& hosts);

// The lease keys of an inventory node, known at launch without contacting it: its hostname
// lower-cased up to the first '.' ("no1" for "No1.osl1.example"; a numeric hostname whole), and
// "@ADDR" for every numeric address getaddrinfo resolves its address (its hostname when the address
// is empty) to ("@10.0.0.1"). A launch locks every key of every node, so two inventories that name
// one node differently (FQDN and short name, or different names with one address) still conflict.
// Sorted, unique. Still not caught: two names of one node that share neither a short name nor a
// resolved address (e.g. a second network's address that the other inventory does not list).
std::vector<std::string> NodeLeaseKeys(const proto::InventoryNode& node);

// ---- What `fjord launch` calls (launcher/launch.cc, mpirun mode only) ----------------------------

// Leases the plan's nodes in plan.lease_dir for launch `launch_id` (waiting per
// options.wait_for_nodes_s), printing whom it waits for and any takeover, and records lease_waiting,
// lease_acquired (with taken_over) or lease_refused in the job's audit log. The returned leases
// record lease_released when released.
StatusOr<std::unique_ptr<NodeLeases>> LeaseNodesForLaunch(const LaunchPlan& plan,
                                                          const LaunchOptions& options,
                                                          const std::string& launch_id);

// For --dry-run: "fjord launch: node leases in DIR: ..." naming each planned node's holder, or free.
std::string DescribeLeases(const LaunchPlan& plan);

}  // namespace fjord
