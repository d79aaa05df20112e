// The plan of a launch (launch/plan.h): placement, hostfile, command lines, sbatch script.
#include "launcher/launch/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/env.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "launcher/launch/inventory.h"
#include "launcher/slurm.h"
#include "runtime/model/memory_plan.h"
#include "runtime/train/config.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

std::string ThisExecutable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("fjord") : p.string();
}

// Where and how a Slurm job of this tenant is submitted: the tenant's own partition/account when
// the inventory names them (the operator keeps tenants apart there), else the cluster's defaults
// and --exclusive, so no other tenant's job shares a node with it.
void SetSlurmSubmission(const proto::Inventory& inventory, LaunchPlan* plan) {
  plan->slurm_constraint = SlurmConstraint(plan->policy, plan->data_residency);
  plan->slurm_partition = inventory.slurm().partition();
  plan->slurm_account = inventory.slurm().account();
  plan->slurm_exclusive = true;
  for (const proto::SlurmTenant& t : inventory.slurm().tenant()) {
    if (!plan->policy.enabled() || t.id() != plan->policy.tenant) continue;
    if (!t.partition().empty()) plan->slurm_partition = t.partition();
    if (!t.account().empty()) plan->slurm_account = t.account();
    plan->slurm_exclusive = false;
  }
}

// An inventory with a slurm { } block and no nodes: its nodes are Slurm's (sinfo), located by their
// features. Returns the inventory source to name in messages.
StatusOr<std::string> AddSlurmNodes(const LaunchOptions& options, const std::string& partition,
                                    proto::Inventory* inventory) {
  if (!options.slurm) {
    return FailedPrecondition("inventory " + options.inventory_path +
                              " lists no nodes, only a slurm { } block: its nodes and their jurisdictions "
                              "come from Slurm, so launch with --slurm");
  }
  const int slots = options.per_node > 0 ? options.per_node : inventory->slurm().ranks_per_node();
  FJORD_ASSIGN_OR_RETURN(std::vector<proto::InventoryNode> nodes, SlurmNodes(partition, slots));
  for (proto::InventoryNode& n : nodes) *inventory->add_node() = std::move(n);
  return options.inventory_path + " (nodes from Slurm: " + CommandLine(SinfoCommand(partition)) + ")";
}

std::string SbatchScript(const LaunchPlan& plan, const LaunchOptions& options, const std::string& nodelist,
                         const std::vector<std::string>& srun) {
  std::string s = "#!/bin/bash\n";
  s += "# Written by fjord launch --slurm for " +
       (plan.policy.enabled() ? "tenant " + plan.policy.tenant + " (" + plan.policy.Describe() + ")"
                              : std::string("a job without tenant")) +
       ".\n# Submit with: sbatch " + plan.sbatch_file +
       "\n# Nodes carry Slurm features jurisdiction_CC and site_S (docs/SOVEREIGNTY.md); " +
       (plan.nodes_from_slurm ? "Slurm picks nodes\n# with the features --constraint names.\n"
                              : "--nodelist and\n# --constraint both express the placement, so a node "
                                "relabelled since is refused by Slurm.\n");
  s += "#SBATCH --job-name=fjord-" + (plan.policy.enabled() ? plan.policy.tenant : std::string("job")) + "\n";
  s += "#SBATCH --nodes=" + std::to_string(plan.placement.nodes.size()) + "\n";
  s += "#SBATCH --ntasks=" + std::to_string(options.np) + "\n";
  if (plan.nodes_from_slurm) {
    int per_node = 0;
    for (const PlacedNode& n : plan.placement.nodes) per_node = std::max(per_node, n.ranks);
    s += "#SBATCH --ntasks-per-node=" + std::to_string(per_node) + "\n";
  } else {
    s += "#SBATCH --nodelist=" + nodelist + "\n";
  }
  if (!plan.slurm_constraint.empty()) s += "#SBATCH --constraint=" + plan.slurm_constraint + "\n";
  if (!plan.slurm_partition.empty()) s += "#SBATCH --partition=" + plan.slurm_partition + "\n";
  if (!plan.slurm_account.empty()) s += "#SBATCH --account=" + plan.slurm_account + "\n";
  // Tenant exclusivity: whole nodes, unless the tenant has a partition or account of its own.
  if (plan.slurm_exclusive) s += "#SBATCH --exclusive\n";
  if (!options.slurm_time.empty()) s += "#SBATCH --time=" + options.slurm_time + "\n";
  if (options.slurm_gpus_per_node > 0)
    s += "#SBATCH --gpus-per-node=" + std::to_string(options.slurm_gpus_per_node) + "\n";
  if (!options.slurm_signal.empty()) s += "#SBATCH --signal=" + options.slurm_signal + "\n";
  for (const std::string& arg : options.sbatch_args) s += "#SBATCH " + arg + "\n";
  if (!options.exclude.empty()) {  // a restart: the nodes that failed this job (launch/restart.h)
    std::string nodes;
    for (const ExcludedNode& e : options.exclude) nodes += (nodes.empty() ? "" : ",") + e.hostname;
    s += "#SBATCH --exclude=" + nodes + "\n";
  }
  s += "#SBATCH --output=" + plan.launch_dir + "/slurm-%j.out\n";
  s += "set -euo pipefail\n";
  s += "export FJORD_LAUNCH_ID=slurm-${SLURM_JOB_ID}\n";
  if (!plan.hostfile.empty()) s += "export SLURM_HOSTFILE=" + ShellQuote(plan.hostfile) + "\n";
  s += "exec " + CommandLine(srun) + "\n";
  return s;
}

}  // namespace

std::string ShellQuote(const std::string& s) {
  if (!s.empty() &&
      s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+=/.,:@%^") ==
          std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string CommandLine(const std::vector<std::string>& argv) {
  std::string out;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (i > 0) out += ' ';
    out += ShellQuote(argv[i]);
  }
  return out;
}

StatusOr<LaunchPlan> PlanLaunch(const LaunchOptions& options) {
  LaunchPlan plan;
  FJORD_ASSIGN_OR_RETURN(plan.job, LoadJobSpec(options.job_path, options.overrides));
  FJORD_ASSIGN_OR_RETURN(plan.job_digest, JobDigest(plan.job));
  plan.policy = PolicyOf(plan.job);
  plan.audit_log = fs::absolute(AuditPathFor(plan.job)).string();
  FJORD_ASSIGN_OR_RETURN(plan.data_residency, DataResidencyOf(plan.job, &plan.data_unseen));
  FJORD_ASSIGN_OR_RETURN(proto::Inventory inventory, LoadInventory(options.inventory_path));
  FJORD_ASSIGN_OR_RETURN(std::string inventory_text, ReadWholeFile(options.inventory_path, "inventory"));
  FJORD_ASSIGN_OR_RETURN(plan.inventory_digest, Sha256Hex(inventory_text));
  std::string inventory_source = options.inventory_path;
  if (options.slurm) SetSlurmSubmission(inventory, &plan);
  if (inventory.node_size() == 0) {
    FJORD_ASSIGN_OR_RETURN(inventory_source, AddSlurmNodes(options, plan.slurm_partition, &inventory));
    plan.nodes_from_slurm = true;
  }
  plan.lease_dir = inventory.lease_dir();
  // Nodes excluded for this job (a restart after they failed): out of the inventory, so placement
  // and its residency checks run on the rest exactly as at the first launch.
  std::vector<ExcludedNode> excluded;
  for (const ExcludedNode& e : options.exclude) {
    auto* nodes = inventory.mutable_node();
    for (int i = 0; i < nodes->size(); ++i) {
      if (nodes->Get(i).hostname() != e.hostname) continue;
      nodes->DeleteSubrange(i, 1);
      excluded.push_back(e);
      break;
    }
  }

  const bool in_allocation = options.slurm && !options.slurm_job_id.empty();
  plan.mode = !options.slurm ? LaunchMode::kMpirun : in_allocation ? LaunchMode::kSrun : LaunchMode::kSbatch;
  std::vector<std::string> allocation;
  if (in_allocation) {
    if (options.slurm_nodelist.empty()) {
      return FailedPrecondition(
          "inside Slurm allocation " + options.slurm_job_id +
          " but SLURM_JOB_NODELIST is empty: cannot tell which nodes the allocation holds");
    }
    StatusOr<std::vector<std::string>> expanded = ExpandSlurmHostlist(options.slurm_nodelist);
    if (!expanded.ok()) {
      return Status(expanded.status().code(),
                    "SLURM_JOB_NODELIST of Slurm allocation " + options.slurm_job_id + ": " +
                        expanded.status().message() +
                        ": Slurm sets it; run launch --slurm unchanged inside the allocation, or unset "
                        "SLURM_JOB_ID to submit a new job. Nothing was started");
    }
    allocation = std::move(*expanded);
  }
  FJORD_ASSIGN_OR_RETURN(plan.placement,
                         PlaceRanks(inventory, inventory_source, plan.policy, options.np, options.per_node,
                                    in_allocation ? &allocation : nullptr, plan.data_residency));
  plan.placement.excluded.insert(plan.placement.excluded.begin(), excluded.begin(), excluded.end());
  // The memory plan (`fjord plan`) before any rank starts: a CPU job's ranks must fit this host's
  // available memory (nodes like it), shared by as many ranks as the fullest planned node runs; a
  // CUDA job is planned by each rank against its GPU before allocating.
  if (plan.job.device() == proto::CPU) {
    int per_host = 1;
    for (const PlacedNode& n : plan.placement.nodes) per_host = std::max(per_host, n.ranks);
    FJORD_ASSIGN_OR_RETURN(PlanDevice cpu, PlanDeviceNamed("cpu", per_host));
    FJORD_RETURN_IF_ERROR(PlanMemory(JobPlanInputs(plan.job, std::max(options.np, 1), false), cpu)
                              .Verdict()
                              .WithContext("the memory plan of " + options.job_path));
  }

  plan.launch_dir = (fs::absolute(plan.job.run_dir()) / "launch").lexically_normal().string();
  plan.job_file = plan.launch_dir + "/job.textproto";
  const std::string fjord = options.fjord_binary.empty() ? ThisExecutable() : options.fjord_binary;
  std::string interfaces;  // comma-separated, as btl_tcp_if_include and NCCL_SOCKET_IFNAME take them
  for (const std::string& i : plan.placement.interfaces) interfaces += (interfaces.empty() ? "" : ",") + i;
  std::vector<std::string> train = {fjord, "train", plan.job_file};
  train.insert(train.end(), options.train_flags.begin(), options.train_flags.end());

  if (plan.mode == LaunchMode::kMpirun) {
    plan.hostfile = plan.launch_dir + "/hostfile";
    plan.hostfile_text = HostfileText(plan.placement);
    plan.argv = {options.mpirun, "--hostfile", plan.hostfile,      "-np", std::to_string(options.np),
                 "--map-by",     "slot",       "--nooversubscribe"};
    plan.argv.insert(plan.argv.end(), inventory.mpirun_arg().begin(), inventory.mpirun_arg().end());
    if (!interfaces.empty()) {
      // Both the MPI collectives (TCP) and NCCL stay on the inventory's interface.
      plan.argv.insert(plan.argv.end(),
                       {"--mca", "btl_tcp_if_include", interfaces, "-x", "NCCL_SOCKET_IFNAME=" + interfaces});
    }
    // The environment every rank needs; never FJORD_NODE_IDENTITY: a node's identity is its own.
    plan.argv.insert(plan.argv.end(), {"-x", "FJORD_LAUNCH_ID", "-x", "FJORD_RANK_STATUS_DIR"});
    for (const char* var : {"OMP_NUM_THREADS", "FJORD_TEST_HOOK"}) {
      if (GetEnv(var)) plan.argv.insert(plan.argv.end(), {"-x", var});
    }
    // TCP keep-alive on the daemons' links to mpirun (Open MPI's default: probes after 300 s idle,
    // dead after 3 more minutes), scaled to comm_timeout T: probes after T s idle, every T/4 s, dead
    // after 5 unanswered, so never within an outage shorter than the census survives (0.8 x T), and
    // a cut-off host's daemon notices it is alone and ends its ranks by itself within about 2.25 x T
    // of the cut. fjord launch's own supervision bounds the job's end on the reachable hosts
    // (launch/supervise.h; docs/RELIABILITY.md).
    const int idle_s = std::max(1, static_cast<int>(std::ceil(plan.job.parallel().comm_timeout())));
    plan.argv.insert(
        plan.argv.end(),
        {"--mca", "oob_tcp_keepalive_time", std::to_string(idle_s), "--mca", "oob_tcp_keepalive_intvl",
         std::to_string(std::max(1, (idle_s + 3) / 4)), "--mca", "oob_tcp_keepalive_probes", "5"});
    // --doctor: one doctor rank on each planned node, started the way the job's ranks will be.
    std::string hosts;
    for (const PlacedNode& n : plan.placement.nodes) hosts += (hosts.empty() ? "" : ",") + n.address + ":1";
    plan.doctor_argv = {options.mpirun, "-H",  hosts, "-np", std::to_string(plan.placement.nodes.size()),
                        "--map-by",     "node"};
    plan.doctor_argv.insert(plan.doctor_argv.end(), inventory.mpirun_arg().begin(),
                            inventory.mpirun_arg().end());
    if (!interfaces.empty())
      plan.doctor_argv.insert(plan.doctor_argv.end(), {"--mca", "btl_tcp_if_include", interfaces});
    if (GetEnv("OMP_NUM_THREADS")) plan.doctor_argv.insert(plan.doctor_argv.end(), {"-x", "OMP_NUM_THREADS"});
    plan.doctor_argv.insert(plan.doctor_argv.end(),
                            {fjord, "doctor", "--inventory", fs::absolute(options.inventory_path).string(),
                             "--job", fs::absolute(options.job_path).string()});
    plan.argv.insert(plan.argv.end(), train.begin(), train.end());
    return plan;
  }

  // Slurm: node names are inventory hostnames; tasks are placed exactly by a Slurm hostfile.
  plan.hostfile = plan.launch_dir + "/slurm-hostfile";
  std::string nodelist;
  for (const PlacedNode& n : plan.placement.nodes) {
    nodelist += (nodelist.empty() ? "" : ",") + n.node.hostname();
    for (int r = 0; r < n.ranks; ++r) plan.hostfile_text += n.node.hostname() + "\n";
  }
  // --mpi=pmix: Open MPI (Debian's 4.1) initialises under srun through PMIx only, not PMI-2.
  const std::string exports =
      interfaces.empty() ? std::string("--export=ALL") : "--export=ALL,NCCL_SOCKET_IFNAME=" + interfaces;
  std::vector<std::string> srun = {"srun",
                                   "--mpi=pmix",
                                   "--kill-on-bad-exit=1",
                                   "--ntasks=" + std::to_string(options.np),
                                   "--nodelist=" + nodelist,
                                   "--distribution=arbitrary",
                                   exports};
  if (plan.mode == LaunchMode::kSbatch && plan.nodes_from_slurm) {
    // Slurm picks the nodes inside the allocation it made under --constraint.
    srun = {"srun", "--mpi=pmix", "--kill-on-bad-exit=1", "--ntasks=" + std::to_string(options.np), exports};
    plan.hostfile.clear();
    plan.hostfile_text.clear();
  }
  srun.insert(srun.end(), train.begin(), train.end());
  if (plan.mode == LaunchMode::kSrun) {
    plan.argv = {"env", "SLURM_HOSTFILE=" + plan.hostfile};
    plan.argv.insert(plan.argv.end(), srun.begin(), srun.end());
    return plan;
  }
  plan.sbatch_file = plan.launch_dir + "/job.sbatch";
  plan.sbatch_text = SbatchScript(plan, options, nodelist, srun);
  plan.argv = {};
  return plan;
}

std::string DescribePlan(const LaunchPlan& plan, const LaunchOptions& options) {
  std::string out =
      "fjord launch: job " + options.job_path + " (sha256 " + plan.job_digest.substr(0, 16) + "), " +
      (plan.policy.enabled() ? "tenant " + plan.policy.tenant + ", residency: " + plan.policy.Describe()
                             : std::string("no tenant: no residency gates")) +
      "\n";
  for (const DataResidency& d : plan.data_residency) {
    out += "fjord launch: data manifest " + d.manifest + " (" + d.fields +
           ") bounds placement: " + d.policy.Describe() + "\n";
  }
  if (plan.data_residency.empty() && plan.data_unseen.empty()) {
    out += "fjord launch: no data manifest governs the job's data: placement by the job's residency alone\n";
  }
  for (const std::string& u : plan.data_unseen) {
    out += "fjord launch: warning: " + u +
           "; placement is not bounded by its manifest (each rank's data gate still "
           "checks it)\n";
  }
  out += "fjord launch: " + Plural(plan.placement.ranks, "rank", "ranks") + " on " +
         Plural(static_cast<int>(plan.placement.nodes.size()), "node", "nodes") + " of inventory " +
         options.inventory_path + ":\n";
  for (const PlacedNode& n : plan.placement.nodes) {
    char line[512];
    std::snprintf(line, sizeof(line), "  %-12s %-16s %-3s %-10s %s  %s\n", n.node.hostname().c_str(),
                  n.address.c_str(), n.node.jurisdiction().c_str(), n.node.site().c_str(),
                  Plural(n.ranks, "rank", "ranks").c_str(), n.interface.empty() ? "-" : n.interface.c_str());
    out += line;
  }
  if (!plan.placement.excluded.empty()) {
    out += "fjord launch: excluded:\n";
    for (const ExcludedNode& e : plan.placement.excluded) {
      char line[512];
      std::snprintf(line, sizeof(line), "  %-12s %s\n", e.hostname.c_str(), e.reason.c_str());
      out += line;
    }
  }
  if (plan.hostfile.empty()) {
    out += "fjord launch: Slurm chooses the nodes (--constraint=" + plan.slurm_constraint +
           ", --nodes=" + std::to_string(plan.placement.nodes.size()) +
           "); the nodes above are those sinfo listed\n";
  } else {
    out +=
        "fjord launch: " + std::string(plan.mode == LaunchMode::kMpirun ? "hostfile " : "slurm hostfile ") +
        plan.hostfile + ":\n";
  }
  for (size_t start = 0; start < plan.hostfile_text.size();) {
    const size_t end = plan.hostfile_text.find('\n', start);
    out += "  " + plan.hostfile_text.substr(start, end - start) + "\n";
    start = end + 1;
  }
  out += "fjord launch: audit log " + plan.audit_log + "\n";
  if (plan.mode == LaunchMode::kSbatch) {
    out += "fjord launch: sbatch script " + plan.sbatch_file + ":\n";
    for (size_t start = 0; start < plan.sbatch_text.size();) {
      const size_t end = plan.sbatch_text.find('\n', start);
      out += "  " + plan.sbatch_text.substr(start, end - start) + "\n";
      start = end + 1;
    }
    out += "fjord launch: command: sbatch " + ShellQuote(plan.sbatch_file) + "\n";
  } else {
    out += "fjord launch: command: " + CommandLine(plan.argv) + "\n";
  }
  return out;
}

}  // namespace fjord
