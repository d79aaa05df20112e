// Placement of a job's ranks on inventory nodes its tenant (and the manifests of its data) allow,
// and the forms a placement takes: an Open MPI hostfile, a Slurm hostlist, a Slurm --constraint.
// A pure function of inventory, residency and rank count. Part of `fjord launch` (launcher/launch.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/inventory.pb.h"
#include "proto/job.pb.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

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

// The audit records' JSON of a placement: its nodes as {"no1": {"jurisdiction": "NO", "site": ...,
// "address": ..., "ranks": N, "interface": ...}, ...} (launch_plan, job_restart) and excluded nodes as
// [{"hostname": ..., "reason": ...}, ...] (launch_plan, job_restart, restart_refused).
std::string NodesJson(const Placement& p);
std::string ExcludedJson(const std::vector<ExcludedNode>& excluded);

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
StatusOr<std::vector<DataResidency>> DataResidencyOf(const proto::JobSpec& job,
                                                     std::vector<std::string>* unseen);

// The Open MPI hostfile of a placement: "ADDRESS slots=R max_slots=R" per node, so mpirun can
// place nothing else.
std::string HostfileText(const Placement& placement);

// Expands a Slurm hostlist ("no[1-3,5],se01") into host names.
StatusOr<std::vector<std::string>> ExpandSlurmHostlist(std::string_view hostlist);

// The Slurm --constraint expression of a residency over node features "jurisdiction_CC" and
// "site_S": "jurisdiction_NO", "(jurisdiction_NO|jurisdiction_SE)&(site_osl1)"; "" when disabled.
// With `data`, each manifest's residency is and-ed on ("(jurisdiction_NO|jurisdiction_SE)&jurisdiction_NO").
std::string SlurmConstraint(const ResidencyPolicy& policy, const std::vector<DataResidency>& data = {});

// "1 rank", "3 ranks": the counts in refusals and plans.
std::string Plural(int n, const char* one, const char* many);

}  // namespace fjord
