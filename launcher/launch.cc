// `fjord launch` and `fjord audit verify`. Placement is a pure function of inventory, residency
// and rank count; every side effect (files, audit records, the child process) happens in
// RunLaunch after the plan is complete, so a refusal leaves nothing behind but its audit record.
#include "launcher/launch.h"

#include <google/protobuf/text_format.h>
#include <signal.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <set>

#include "common/env.h"
#include "launcher/lease.h"
#include "launcher/slurm.h"
#include "runtime/train/config.h"
#include "runtime/data/data.h"
#include "common/file_util.h"
#include "common/host.h"
#include "common/json.h"
#include "common/proto_text.h"
#include "common/sha256.h"
#include "common/text.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

constexpr char kInventorySchema[] = "proto/inventory.proto";

bool IsHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':';
  });
}

bool IsInterfaceName(std::string_view s) {
  if (s.empty() || s.size() > 15) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' || c == ':';
  });
}

// Slurm partition and account names: letters, digits, '.', '_', '-'.
bool IsSlurmName(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
  });
}

// Validation of the inventory's slurm { } block (ParseInventory).
void CheckSlurmBlock(const proto::Inventory& inv, const std::string& source,
                     const pb::TextFormat::ParseInfoTree& tree, std::vector<std::string>* errors) {
  const proto::SlurmCluster& slurm = inv.slurm();
  const pb::TextFormat::ParseInfoTree* t =
      tree.GetTreeForNested(proto::Inventory::descriptor()->FindFieldByName("slurm"), -1);
  auto name_ok = [&](const pb::TextFormat::ParseInfoTree* at, const pb::Message& m, const char* field,
                     const std::string& value, const std::string& what) {
    if (!value.empty() && !IsSlurmName(value)) {
      errors->push_back(FieldLocation(source, at, m, field) + ": " + what + " \"" + value +
                        "\" is not a Slurm name (1 to 64 letters, digits, '.', '_', '-')");
    }
  };
  name_ok(t, slurm, "partition", slurm.partition(), "slurm.partition");
  name_ok(t, slurm, "account", slurm.account(), "slurm.account");
  if (slurm.ranks_per_node() < 1) {
    errors->push_back(FieldLocation(source, t, slurm, "ranks_per_node") +
                      ": slurm.ranks_per_node = " + std::to_string(slurm.ranks_per_node()) +
                      " must be at least 1 (ranks per node, usually its GPUs)");
  }
  std::set<std::string> ids;
  const pb::FieldDescriptor* tenant_field = proto::SlurmCluster::descriptor()->FindFieldByName("tenant");
  for (int i = 0; i < slurm.tenant_size(); ++i) {
    const proto::SlurmTenant& st = slurm.tenant(i);
    const pb::TextFormat::ParseInfoTree* tt = t == nullptr ? nullptr : t->GetTreeForNested(tenant_field, i);
    const std::string block = FieldLocation(source, t, slurm, "tenant", i);
    if (!IsValidTenantId(st.id())) {
      errors->push_back(block + ": slurm.tenant \"" + st.id() +
                        "\" is missing or not a tenant id (lower-case letters, digits, '.', '_', '-')");
    } else if (!ids.insert(st.id()).second) {
      errors->push_back(block + ": slurm.tenant \"" + st.id() + "\" is listed twice");
    }
    if (st.partition().empty() && st.account().empty()) {
      errors->push_back(block + ": slurm.tenant \"" + st.id() +
                        "\" names neither partition nor account: give the tenant's own partition or account, "
                        "or remove the block (its jobs are then submitted --exclusive)");
    }
    name_ok(tt, st, "partition", st.partition(), "slurm.tenant.partition");
    name_ok(tt, st, "account", st.account(), "slurm.tenant.account");
  }
}

bool Contains(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::string Plural(int n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string ThisExecutable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("fjord") : p.string();
}

std::string NewLaunchId() {
  std::random_device rd;
  char buf[20];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

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

// The nodes section of launch_plan: {"no1": {"jurisdiction": "NO", ...}, ...}.
std::string NodesJson(const Placement& p) {
  std::string out = "{";
  for (size_t i = 0; i < p.nodes.size(); ++i) {
    const PlacedNode& n = p.nodes[i];
    if (i > 0) out += ",";
    out += JsonQuote(n.node.hostname()) + ":{\"jurisdiction\":" + JsonQuote(n.node.jurisdiction()) +
           ",\"site\":" + JsonQuote(n.node.site()) + ",\"address\":" + JsonQuote(n.address) +
           ",\"ranks\":" + std::to_string(n.ranks) + ",\"interface\":" + JsonQuote(n.interface) + "}";
  }
  return out + "}";
}

std::string ExcludedJson(const Placement& p) {
  std::string out = "[";
  for (size_t i = 0; i < p.excluded.size(); ++i) {
    if (i > 0) out += ",";
    out += "{\"hostname\":" + JsonQuote(p.excluded[i].hostname) +
           ",\"reason\":" + JsonQuote(p.excluded[i].reason) + "}";
  }
  return out + "]";
}

std::string JsonStrings(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i > 0) out += ",";
    out += JsonQuote(v[i]);
  }
  return out + "]";
}

// launch_plan's data_manifests: [{"fields": "data.train", "path": ..., "tenant": ..., ...}].
std::string DataResidencyJson(const std::vector<DataResidency>& data) {
  std::string out = "[";
  for (size_t i = 0; i < data.size(); ++i) {
    out += std::string(i ? "," : "") + "{\"fields\":" + JsonQuote(data[i].fields) +
           ",\"path\":" + JsonQuote(data[i].manifest) + ",\"tenant\":" + JsonQuote(data[i].policy.tenant) +
           ",\"allowed_jurisdictions\":" + JsonStrings(data[i].policy.jurisdictions) +
           ",\"allowed_sites\":" + JsonStrings(data[i].policy.sites) + "}";
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
    const std::vector<std::string> argv =
        clean ? std::vector<std::string>{"scancel", "--signal=USR1", id} : std::vector<std::string>{"scancel", id};
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

// Runs argv and waits; returns its exit code (128 + signal when killed, 127 when it cannot start).
int RunChild(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "fjord launch: error: cannot fork to run %s: %s\n", argv[0].c_str(),
                 std::strerror(errno));
    return 1;
  }
  if (pid == 0) {
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "fjord launch: error: cannot run %s: %s; install it or pass --mpirun PATH\n",
                 args[0], std::strerror(errno));
    ::_exit(127);
  }
  // The terminal's Ctrl-C reaches mpirun too, which ends the job; launch waits to record the exit.
  struct sigaction ignore {
  }, forward{}, old_int{}, old_term{};
  ignore.sa_handler = SIG_IGN;
  forward.sa_handler = ForwardTerm;
  g_child = pid;
  g_terms = 0;
  ::sigaction(SIGINT, &ignore, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  g_child = 0;
  if (r < 0) return 1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

// ---- Inventory ------------------------------------------------------------------------------

StatusOr<proto::Inventory> ParseInventory(std::string_view text, const std::string& source) {
  proto::Inventory inv;
  pb::TextFormat::ParseInfoTree tree;
  FJORD_RETURN_IF_ERROR(ParseTextProto(text, source, &inv, kInventorySchema, &tree));
  std::vector<std::string> errors;
  const pb::FieldDescriptor* node_field = proto::Inventory::descriptor()->FindFieldByName("node");
  const pb::FieldDescriptor* tenant_field = proto::Inventory::descriptor()->FindFieldByName("tenant");
  if (inv.node_size() == 0 && !inv.has_slurm()) {
    errors.push_back(
        source +
        ": the inventory lists no nodes: add node { hostname: \"...\" address: \"...\" "
        "jurisdiction: \"NO\" site: \"...\" slots: N } blocks, or a slurm { } block when Slurm's "
        "node features say where each node is (see " +
        std::string(kInventorySchema) + ")");
  }
  if (inv.has_slurm()) CheckSlurmBlock(inv, source, tree, &errors);
  if (!inv.interface().empty() && !IsInterfaceName(inv.interface())) {
    errors.push_back(FieldLocation(source, &tree, inv, "interface") + ": interface \"" + inv.interface() +
                     "\" is not a network interface name (at most 15 letters, digits, '.', '-', '_', ':')");
  }
  std::map<std::string, std::string> hostnames, addresses;  // name -> where first seen
  for (int i = 0; i < inv.node_size(); ++i) {
    const proto::InventoryNode& n = inv.node(i);
    const pb::TextFormat::ParseInfoTree* t = tree.GetTreeForNested(node_field, i);
    const std::string block = FieldLocation(source, &tree, inv, "node", i);
    auto at = [&](const char* field) {
      const std::string loc = FieldLocation(source, t, n, field);
      return loc == source ? block : loc;
    };
    const std::string label =
        "node " + std::to_string(i + 1) + (n.hostname().empty() ? "" : " (" + n.hostname() + ")");
    if (!IsHostName(n.hostname())) {
      errors.push_back(at("hostname") + ": " + label + ": hostname \"" + n.hostname() +
                       "\" is missing or not a host name: write the name `hostname` prints on that node");
    } else if (auto [it, fresh] = hostnames.emplace(n.hostname(), at("hostname")); !fresh) {
      errors.push_back(at("hostname") + ": " + label + ": hostname \"" + n.hostname() +
                       "\" is listed twice (first at " + it->second + "); each node appears once");
    }
    const std::string address = n.address().empty() ? n.hostname() : n.address();
    if (!n.address().empty() && !IsHostName(n.address())) {
      errors.push_back(at("address") + ": " + label + ": address \"" + n.address() +
                       "\" is not an IP address or host name");
    } else if (!address.empty()) {
      if (auto [it, fresh] = addresses.emplace(address, at("address")); !fresh) {
        errors.push_back(at("address") + ": " + label + ": address \"" + address +
                         "\" is used by another node too (first at " + it->second +
                         "); addresses must be unique");
      }
    }
    if (std::string p = JurisdictionProblem(n.jurisdiction()); !p.empty()) {
      errors.push_back(at("jurisdiction") + ": " + label + ": jurisdiction \"" + n.jurisdiction() + "\" " +
                       p);
    }
    if (!IsValidSiteName(n.site())) {
      errors.push_back(at("site") + ": " + label + ": site \"" + n.site() +
                       "\" is missing or not a site name (1 to 64 letters, digits, '.', '_', '-')");
    }
    if (n.slots() < 1) {
      errors.push_back(
          at("slots") + ": " + label + ": slots = " + std::to_string(n.slots()) +
          " must be at least 1 (the ranks the node takes, usually its GPUs); or set drain: true");
    }
    if (n.gpus() < 0)
      errors.push_back(at("gpus") + ": " + label + ": gpus = " + std::to_string(n.gpus()) + " is negative");
    if (!n.interface().empty() && !IsInterfaceName(n.interface())) {
      errors.push_back(at("interface") + ": " + label + ": interface \"" + n.interface() +
                       "\" is not a network interface name (at most 15 letters, digits, '.', '-', '_', ':')");
    }
    for (int k = 0; k < n.labels_size(); ++k) {
      if (n.labels(k).empty() || n.labels(k).find_first_of(" \t,&|()[]") != std::string::npos) {
        errors.push_back(FieldLocation(source, t, n, "labels", k) + ": " + label + ": label \"" +
                         n.labels(k) +
                         "\" must be non-empty without spaces or , & | ( ) [ ] (labels are Slurm features)");
      }
    }
  }
  if (inv.has_lease_dir() && (inv.lease_dir().empty() || inv.lease_dir()[0] != '/')) {
    errors.push_back(
        FieldLocation(source, &tree, inv, "lease_dir") + ": lease_dir \"" + inv.lease_dir() +
        "\" is not an absolute path: name the node lease directory every launch host mounts at the "
        "same path");
  }
  std::set<std::string> tenants;
  for (int i = 0; i < inv.tenant_size(); ++i) {
    const proto::TenantPolicy& tp = inv.tenant(i);
    const pb::TextFormat::ParseInfoTree* t = tree.GetTreeForNested(tenant_field, i);
    const std::string block = FieldLocation(source, &tree, inv, "tenant", i);
    if (!IsValidTenantId(tp.id())) {
      errors.push_back(block + ": tenant \"" + tp.id() +
                       "\" is missing or not a tenant id (lower-case letters, "
                       "digits, '.', '_', '-')");
    } else if (!tenants.insert(tp.id()).second) {
      errors.push_back(block + ": tenant \"" + tp.id() + "\" is listed twice");
    }
    if (tp.allowed_jurisdictions_size() == 0) {
      errors.push_back(block + ": tenant \"" + tp.id() +
                       "\" has no allowed_jurisdictions: it could run nowhere");
    }
    for (int k = 0; k < tp.allowed_jurisdictions_size(); ++k) {
      if (std::string p = JurisdictionProblem(tp.allowed_jurisdictions(k)); !p.empty()) {
        errors.push_back(FieldLocation(source, t, tp, "allowed_jurisdictions", k) + ": tenant \"" + tp.id() +
                         "\": allowed_jurisdictions \"" + tp.allowed_jurisdictions(k) + "\" " + p);
      }
    }
  }
  if (!errors.empty()) {
    std::string all;
    for (size_t i = 0; i < errors.size(); ++i) all += (i ? "\n" : "") + errors[i];
    return InvalidArgument(all);
  }
  return inv;
}

StatusOr<proto::Inventory> LoadInventory(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("inventory " + path + ": no such file; check --inventory");
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "inventory"));
  return ParseInventory(text, path);
}

// ---- Placement ------------------------------------------------------------------------------

StatusOr<Placement> PlaceRanks(const proto::Inventory& inventory, const std::string& inventory_source,
                               const ResidencyPolicy& policy, int np, int per_node,
                               const std::vector<std::string>* only, const std::vector<DataResidency>& data) {
  if (np < 1)
    return InvalidArgument("--np " + std::to_string(np) + ": give the number of ranks to start (1 or more)");
  if (per_node < 0) return InvalidArgument("--per-node " + std::to_string(per_node) + " is negative");
  const std::string tenant = policy.enabled() ? "tenant " + policy.tenant : "this job (no tenant)";
  // The operator's ceiling for this tenant, when the inventory declares tenants.
  if (policy.enabled() && inventory.tenant_size() > 0) {
    const proto::TenantPolicy* ceiling = nullptr;
    for (const proto::TenantPolicy& t : inventory.tenant()) {
      if (t.id() == policy.tenant) ceiling = &t;
    }
    if (ceiling == nullptr) {
      return FailedPrecondition("inventory " + inventory_source +
                                " lists the tenants admitted to this cluster and " + policy.tenant +
                                " is not one of them: the operator must add tenant { id: \"" + policy.tenant +
                                "\" allowed_jurisdictions: ... } before its jobs run here. Nothing "
                                "was started");
    }
    const std::vector<std::string> cj(ceiling->allowed_jurisdictions().begin(),
                                      ceiling->allowed_jurisdictions().end());
    const std::vector<std::string> cs(ceiling->allowed_sites().begin(), ceiling->allowed_sites().end());
    for (const std::string& j : policy.jurisdictions) {
      if (!Contains(cj, j)) {
        return FailedPrecondition(
            "the job allows tenant " + policy.tenant + " jurisdiction " + j + ", but inventory " +
            inventory_source + " admits it to " + JoinList(cj) +
            " only: narrow the job's residency.allowed_jurisdictions to those. Nothing was "
            "started");
      }
    }
    if (!cs.empty()) {
      if (policy.sites.empty()) {
        return FailedPrecondition(
            "the job allows tenant " + policy.tenant + " any site, but inventory " + inventory_source +
            " admits it to sites " + JoinList(cs) +
            " only: list them in the job's residency.allowed_sites. Nothing was started");
      }
      for (const std::string& s : policy.sites) {
        if (!Contains(cs, s)) {
          return FailedPrecondition("the job allows tenant " + policy.tenant + " site " + s +
                                    ", but inventory " + inventory_source + " admits it to sites " +
                                    JoinList(cs) +
                                    " only: narrow the job's residency.allowed_sites. Nothing was started");
        }
      }
    }
  }
  Placement p;
  std::vector<const proto::InventoryNode*> allowed;
  int allowed_slots = 0;
  for (const proto::InventoryNode& n : inventory.node()) {
    std::string why;
    if (n.drain()) {
      why = "drained";
    } else if (only != nullptr && !Contains(*only, n.hostname())) {
      why = "not in the Slurm allocation";
    } else if (policy.enabled() && n.jurisdiction().empty()) {
      why = "no jurisdiction (a Slurm node without a jurisdiction_CC feature)";
    } else {
      why = policy.WhyNot(n.jurisdiction(), n.site());
    }
    for (size_t i = 0; i < data.size() && why.empty(); ++i) {
      if (std::string no = data[i].policy.WhyNot(n.jurisdiction(), n.site()); !no.empty()) {
        why = "data manifest " + data[i].manifest + " (" + data[i].fields + ") allows " +
              data[i].policy.Describe() + ": " + no;
      }
    }
    if (!why.empty()) {
      p.excluded.push_back({n.hostname(), why});
      continue;
    }
    allowed.push_back(&n);
    allowed_slots += per_node > 0 ? std::min(per_node, n.slots()) : n.slots();
  }
  if (only != nullptr) {
    for (const std::string& host : *only) {
      bool listed = false;
      for (const proto::InventoryNode& n : inventory.node()) listed |= n.hostname() == host;
      if (!listed) p.excluded.push_back({host, "in the Slurm allocation but not in the inventory"});
    }
  }
  if (allowed_slots < np) {
    std::string have;
    for (size_t i = 0; i < allowed.size(); ++i) {
      const proto::InventoryNode& n = *allowed[i];
      have += (i ? ", " : "") + n.hostname() + " (" + n.jurisdiction() + "/" + n.site() + ", " +
              Plural(per_node > 0 ? std::min(per_node, n.slots()) : n.slots(), "slot", "slots") + ")";
    }
    std::string excluded;
    for (size_t i = 0; i < p.excluded.size(); ++i) {
      excluded += (i ? "; " : "") + p.excluded[i].hostname + ": " + p.excluded[i].reason;
    }
    std::string data_too;
    for (size_t i = 0; i < data.size(); ++i) {
      data_too += std::string(i ? "; " : " and inside the residency of its data (") + "manifest " +
                  data[i].manifest + ": " + data[i].policy.Describe() + (i + 1 == data.size() ? ")" : "");
    }
    return FailedPrecondition(
        tenant + " needs " + Plural(np, "rank", "ranks") + " on nodes inside " +
        (policy.enabled() ? "its residency (" + policy.Describe() + ")" : std::string("the inventory")) +
        data_too + ", but inventory " + inventory_source + " has " +
        Plural(static_cast<int>(allowed.size()), "allowed node", "allowed nodes") + " with " +
        Plural(allowed_slots, "slot", "slots") + " in all" + (have.empty() ? "" : ": " + have) +
        ". Excluded: " + (excluded.empty() ? std::string("none") : excluded) +
        ". Nothing was started: ranks are never placed outside the residency. Lower --np to " +
        std::to_string(allowed_slots) + " or less, or add nodes " +
        (policy.enabled() ? "in " + JoinList(policy.jurisdictions) + " " : std::string()) +
        "to the inventory");
  }
  int left = np;
  for (const proto::InventoryNode* n : allowed) {
    const int cap = per_node > 0 ? std::min(per_node, n->slots()) : n->slots();
    const int take = std::min(cap, left);
    if (take == 0) {
      p.excluded.push_back({n->hostname(), "allowed, not needed"});
      continue;
    }
    PlacedNode placed;
    placed.node = *n;
    placed.ranks = take;
    placed.address = n->address().empty() ? n->hostname() : n->address();
    placed.interface = n->interface().empty() ? inventory.interface() : n->interface();
    if (!placed.interface.empty() && !Contains(p.interfaces, placed.interface))
      p.interfaces.push_back(placed.interface);
    p.nodes.push_back(std::move(placed));
    left -= take;
  }
  p.ranks = np;
  return p;
}

std::string HostfileText(const Placement& placement) {
  std::string out;
  for (const PlacedNode& n : placement.nodes) {
    out += n.address + " slots=" + std::to_string(n.ranks) + " max_slots=" + std::to_string(n.ranks) + "\n";
  }
  return out;
}

StatusOr<std::vector<std::string>> ExpandSlurmHostlist(std::string_view hostlist) {
  std::vector<std::string> out;
  // Split at commas outside brackets.
  std::vector<std::string> items;
  int depth = 0;
  std::string cur;
  for (char c : hostlist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0 || depth > 1)
      return InvalidArgument("hostlist \"" + std::string(hostlist) + "\": unbalanced brackets");
    if (c == ',' && depth == 0) {
      items.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (depth != 0) return InvalidArgument("hostlist \"" + std::string(hostlist) + "\": unbalanced brackets");
  items.push_back(cur);
  for (const std::string& item : items) {
    if (item.empty()) continue;
    const size_t open = item.find('[');
    if (open == std::string::npos) {
      out.push_back(item);
      continue;
    }
    const size_t close = item.find(']', open);
    const std::string prefix = item.substr(0, open), suffix = item.substr(close + 1);
    for (const std::string& range : SplitList(item.substr(open + 1, close - open - 1))) {
      const size_t dash = range.find('-');
      const std::string a = range.substr(0, dash), b = dash == std::string::npos ? a : range.substr(dash + 1);
      if (a.empty() || b.empty() || a.find_first_not_of("0123456789") != std::string::npos ||
          b.find_first_not_of("0123456789") != std::string::npos || a.size() > 9 || b.size() > 9) {
        return InvalidArgument("hostlist \"" + std::string(hostlist) + "\": \"" + range +
                               "\" is not N or N-M");
      }
      const long lo = std::stol(a), hi = std::stol(b);
      if (hi < lo || hi - lo > 100000) {
        return InvalidArgument("hostlist \"" + std::string(hostlist) + "\": range " + range +
                               " is empty or too large");
      }
      for (long v = lo; v <= hi; ++v) {
        std::string num = std::to_string(v);
        if (num.size() < a.size()) num = std::string(a.size() - num.size(), '0') + num;
        out.push_back(prefix + num + suffix);
      }
    }
  }
  return out;
}

std::string SlurmConstraint(const ResidencyPolicy& policy, const std::vector<DataResidency>& data) {
  if (!policy.enabled()) return "";
  if (!data.empty()) {
    std::string out = SlurmConstraint(policy);
    for (const DataResidency& d : data) {
      if (const std::string c = SlurmConstraint(d.policy); c != SlurmConstraint(policy)) out += "&" + c;
    }
    return out;
  }
  auto any = [](const std::vector<std::string>& v, const std::string& prefix) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "|" : "") + prefix + v[i];
    return out;
  };
  const std::string j = any(policy.jurisdictions, "jurisdiction_");
  if (policy.sites.empty()) return policy.jurisdictions.size() == 1 ? j : "(" + j + ")";
  return "(" + j + ")&(" + any(policy.sites, "site_") + ")";
}

// ---- Slurm submission (--slurm outside an allocation) -------------------------------------------

namespace {

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
  s += "#SBATCH --output=" + plan.launch_dir + "/slurm-%j.out\n";
  s += "set -euo pipefail\n";
  s += "export FJORD_LAUNCH_ID=slurm-${SLURM_JOB_ID}\n";
  if (!plan.hostfile.empty()) s += "export SLURM_HOSTFILE=" + ShellQuote(plan.hostfile) + "\n";
  s += "exec " + CommandLine(srun) + "\n";
  return s;
}

// The log's last record as an anchor kept out of the job user's reach (docs/SOVEREIGNTY.md, "The
// audit log"): printed for whoever ran launch, with the command that checks it, and sent to the
// launch host's system log (syslog, LOG_AUTHPRIV), to which a user can add but which no user can
// edit, and which operators ship to a collector. `lead` starts the printed line.
void AnnounceAuditHead(const std::string& lead, const AuditAnchor& head, const std::string& launch_id,
                       const std::string& tenant) {
  const std::string anchor = std::to_string(head.seq) + ":" + head.hash;
  std::printf("fjord launch: %saudit log %s head %s (check with: fjord audit verify %s --anchor %s)\n",
              lead.c_str(), head.source.c_str(), anchor.c_str(), ShellQuote(head.source).c_str(), anchor.c_str());
  ::openlog("fjord-launch", LOG_PID, LOG_AUTHPRIV);
  ::syslog(LOG_NOTICE, "audit head %s log %s launch %s tenant %s", anchor.c_str(), head.source.c_str(),
           launch_id.c_str(), tenant.c_str());
  ::closelog();
}

// Submits the written sbatch script, records the submission, and with --wait follows the job to
// its end. Returns launch's exit code.
int SubmitToSlurm(const LaunchPlan& plan, const LaunchOptions& options, AuditLog& audit) {
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
  StatusOr<std::vector<std::string>> nodes = ExpandSlurmHostlist(job->nodelist);
  const std::string nodes_json = JsonStrings(nodes.ok() ? *nodes : std::vector<std::string>{job->nodelist});
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

}  // namespace

// ---- The launch -----------------------------------------------------------------------------

StatusOr<std::vector<DataResidency>> DataResidencyOf(const proto::JobSpec& job, std::vector<std::string>* unseen) {
  std::vector<DataResidency> out;
  for (const auto& [what, pattern] : {std::pair<std::string, std::string>{"data.train", job.data().train()},
                                      {"data.val", job.data().val()}}) {
    if (pattern.empty()) continue;
    StatusOr<std::vector<std::string>> files = ExpandShardGlob(pattern, what);
    if (!files.ok()) {
      unseen->push_back(files.status().message());
      continue;
    }
    FJORD_ASSIGN_OR_RETURN(std::vector<GoverningManifest> manifests, ManifestsGoverning(*files, what));
    for (const GoverningManifest& m : manifests) {
      if (m.manifest.tenant() != job.tenant().id()) {
        const Status refusal = ForeignDataRefusal(what, m.path, m.manifest, job.tenant().id());
        return Status(refusal.code(), refusal.message() + ". Nothing was started");
      }
      auto same = std::find_if(out.begin(), out.end(), [&](const DataResidency& d) { return d.manifest == m.path; });
      if (same != out.end()) {
        if (same->fields.find(what) == std::string::npos) same->fields += ", " + what;
        continue;
      }
      out.push_back({what, m.path,
                     ResidencyPolicy{m.manifest.tenant(),
                                     {m.manifest.allowed_jurisdictions().begin(), m.manifest.allowed_jurisdictions().end()},
                                     {m.manifest.allowed_sites().begin(), m.manifest.allowed_sites().end()}}});
    }
  }
  return out;
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
  FJORD_ASSIGN_OR_RETURN(plan.placement, PlaceRanks(inventory, inventory_source, plan.policy, options.np,
                                                    options.per_node, in_allocation ? &allocation : nullptr,
                                                    plan.data_residency));

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
    plan.argv.insert(plan.argv.end(), {"-x", "FJORD_LAUNCH_ID"});
    for (const char* var : {"OMP_NUM_THREADS", "FJORD_TEST_HOOK"}) {
      if (GetEnv(var)) plan.argv.insert(plan.argv.end(), {"-x", var});
    }
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
    out += "fjord launch: data manifest " + d.manifest + " (" + d.fields + ") bounds placement: " +
           d.policy.Describe() + "\n";
  }
  if (plan.data_residency.empty() && plan.data_unseen.empty()) {
    out += "fjord launch: no data manifest governs the job's data: placement by the job's residency alone\n";
  }
  for (const std::string& u : plan.data_unseen) {
    out += "fjord launch: warning: " + u + "; placement is not bounded by its manifest (each rank's data gate still "
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

int RunLaunch(const LaunchOptions& options) {
  auto fail = [](const Status& s) {
    std::fprintf(stderr, "fjord launch: error: %s\n", s.message().c_str());
    return 1;
  };
  StatusOr<LaunchPlan> planned = PlanLaunch(options);
  if (!planned.ok()) {
    // A refusal after the job spec loaded is recorded in the job's audit log (nothing else is written).
    StatusOr<proto::JobSpec> job = LoadJobSpec(options.job_path, options.overrides);
    const StatusOr<std::string> digest = job.ok() ? JobDigest(*job) : StatusOr<std::string>(job.status());
    if (digest.ok()) {
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
    std::printf("fjord launch: dry run: nothing was written or started\n");
    return 0;
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
  StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(plan.audit_log, "launch@" + ThisHostname());
  if (!audit.ok()) return fail(audit.status());
  const char* mode = plan.mode == LaunchMode::kMpirun ? "mpirun"
                     : plan.mode == LaunchMode::kSrun ? "srun"
                                                      : "sbatch";
  AuditRecord record;
  record.Str("launch_id", plan.mode == LaunchMode::kSbatch ? std::string("slurm-<job id>") : launch_id)
      .Str("mode", mode)
      .Str("tenant", plan.policy.tenant)
      .Raw("allowed_jurisdictions", JsonStrings(plan.policy.jurisdictions))
      .Raw("allowed_sites", JsonStrings(plan.policy.sites))
      .Str("job", options.job_path)
      .Str("job_sha256", plan.job_digest)
      .Str("inventory", options.inventory_path)
      .Str("inventory_sha256", plan.inventory_digest)
      .Int("ranks", plan.placement.ranks)
      .Raw("nodes", NodesJson(plan.placement))
      .Raw("excluded", ExcludedJson(plan.placement))
      .Raw("data_manifests", DataResidencyJson(plan.data_residency))
      .Raw("data_unseen", JsonStrings(plan.data_unseen))
      .Str("command", plan.mode == LaunchMode::kSbatch ? "sbatch " + ShellQuote(plan.sbatch_file)
                                                       : CommandLine(plan.argv));
  if (plan.mode == LaunchMode::kSrun) record.Str("slurm_job_id", options.slurm_job_id);
  StatusOr<AuditAnchor> head = (*audit)->Append("launch_plan", record);
  if (!head.ok()) return fail(head.status());

  if (plan.mode == LaunchMode::kSbatch) return SubmitToSlurm(plan, options, **audit);
  std::printf("fjord launch: running (launch id %s)\n", launch_id.c_str());
  const int code = RunChild(plan.argv);
  leases.reset();  // the job has ended: release its nodes (recorded as lease_released)
  StatusOr<AuditAnchor> end =
      (*audit)->Append("launch_exit", AuditRecord().Str("launch_id", launch_id).Int("exit_code", code));
  if (!end.ok()) {
    std::fprintf(stderr, "fjord launch: warning: cannot record the exit in the audit log: %s\n",
                 end.status().message().c_str());
  } else {
    AnnounceAuditHead("job exited with " + std::to_string(code) + "; ", *end, launch_id, plan.policy.tenant);
  }
  return code;
}

// ---- Command-line entry points ----------------------------------------------------------------

const std::vector<std::string>& LaunchValueFlags() {
  static const std::vector<std::string> flags = {"--inventory", "--np",     "--per-node",
                                                 "--set",       "--mpirun", "--sbatch"};
  return flags;
}
const std::vector<std::string>& LaunchBoolFlags() {
  static const std::vector<std::string> flags = {"--dry-run", "--slurm", "--wait",
                                                 "--quiet",   "--json",  "--resume"};
  return flags;
}
const std::vector<std::string>& LaunchOptionalValueFlags() {
  static const std::vector<std::string> flags = {"--wait-for-nodes"};
  return flags;
}

namespace {

bool ParseCount(const std::string& flag, const std::string& text, int* out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < 0 || v > 1'000'000) {
    std::fprintf(stderr, "fjord launch: error: %s '%s' is not a whole number\nusage: %s\n", flag.c_str(),
                 text.c_str(), kLaunchUsage);
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

std::string Get(const std::multimap<std::string, std::string>& flags, const std::string& f) {
  auto it = flags.find(f);
  return it == flags.end() ? "" : it->second;
}

}  // namespace

int RunLaunchCommand(const std::vector<std::string>& positional,
                     const std::multimap<std::string, std::string>& flags) {
  if (positional.size() != 1) {
    std::fprintf(stderr, "fjord launch: error: give exactly one job spec (JOB.textproto)\nusage: %s\n",
                 kLaunchUsage);
    return 2;
  }
  LaunchOptions options;
  options.job_path = positional[0];
  options.inventory_path = Get(flags, "--inventory");
  if (options.inventory_path.empty()) {
    std::fprintf(stderr,
                 "fjord launch: error: --inventory INV.textproto is required: the operator's list of nodes "
                 "with their jurisdictions (see examples/sovereign-cluster/)\nusage: %s\n",
                 kLaunchUsage);
    return 2;
  }
  if (!flags.count("--np")) {
    std::fprintf(stderr, "fjord launch: error: --np N is required: the number of ranks to start\nusage: %s\n",
                 kLaunchUsage);
    return 2;
  }
  if (!ParseCount("--np", Get(flags, "--np"), &options.np)) return 2;
  if (flags.count("--per-node") && !ParseCount("--per-node", Get(flags, "--per-node"), &options.per_node))
    return 2;
  for (auto [it, end] = flags.equal_range("--set"); it != end; ++it) options.overrides.push_back(it->second);
  if (flags.count("--mpirun")) options.mpirun = Get(flags, "--mpirun");
  options.dry_run = flags.count("--dry-run") > 0;
  options.slurm = flags.count("--slurm") > 0;
  options.wait = flags.count("--wait") > 0;
  if (flags.count("--sbatch")) options.sbatch = Get(flags, "--sbatch");
  if ((options.wait || flags.count("--sbatch")) && !options.slurm) {
    std::fprintf(
        stderr,
        "fjord launch: error: --wait and --sbatch are for Slurm jobs: add --slurm (without it launch "
        "runs mpirun and always waits for the job)\nusage: %s\n",
        kLaunchUsage);
    return 2;
  }
  if (flags.count("--wait-for-nodes")) {
    const std::string w = Get(flags, "--wait-for-nodes");
    if (options.slurm) {
      std::fprintf(stderr,
                   "fjord launch: error: --wait-for-nodes waits for node leases, which mpirun launches take; "
                   "under --slurm, Slurm queues the job until its nodes are free\nusage: %s\n",
                   kLaunchUsage);
      return 2;
    }
    if (w.empty()) {
      options.wait_for_nodes_s = 0;
    } else if (!ParseCount("--wait-for-nodes", w, &options.wait_for_nodes_s) ||
               options.wait_for_nodes_s < 1) {
      if (options.wait_for_nodes_s == 0) {
        std::fprintf(stderr,
                     "fjord launch: error: --wait-for-nodes=%s: give the seconds to wait (1 or more), or "
                     "--wait-for-nodes alone to wait without limit\nusage: %s\n",
                     w.c_str(), kLaunchUsage);
      }
      return 2;
    }
  }
  for (const char* f : {"--quiet", "--json", "--resume"}) {
    if (flags.count(f)) options.train_flags.push_back(f);
  }
  if (options.slurm) {
    options.slurm_job_id = GetEnv("SLURM_JOB_ID").value_or("");
    options.slurm_nodelist = GetEnv("SLURM_JOB_NODELIST").value_or("");
  }
  return RunLaunch(options);
}

const std::vector<std::string>& AuditValueFlags() {
  static const std::vector<std::string> flags = {"--anchor", "--checkpoints", "--key"};
  return flags;
}

namespace {

// The checkpoint directories at `dir`: itself, its step_* and checkpoints/step_* (a run directory).
std::vector<std::string> CheckpointDirsAt(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (fs::exists(fs::path(dir) / kCheckpointTenantRecord, ec)) out.push_back(dir);
  for (const fs::path& parent : {fs::path(dir), fs::path(dir) / "checkpoints"}) {
    for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->is_directory(ec) && it->path().filename().string().rfind("step_", 0) == 0 &&
          fs::exists(it->path() / kCheckpointTenantRecord, ec)) {
        out.push_back(it->path().string());
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The anchors that the checkpoints under each --checkpoints DIR recorded for the log at `path`.
// A checkpoint whose record names another log, anchored an empty log or anchors none (written by
// an older fjord, or without a tenancy context) adds none.
StatusOr<std::vector<AuditAnchor>> CheckpointAnchors(const std::string& path,
                                                     const std::multimap<std::string, std::string>& flags) {
  std::optional<EncryptionKey> key;
  if (auto k = flags.find("--key"); k != flags.end()) {
    FJORD_ASSIGN_OR_RETURN(key, LoadEncryptionKey(k->second, "--key"));
  }
  std::vector<AuditAnchor> anchors;
  for (auto [it, end] = flags.equal_range("--checkpoints"); it != end; ++it) {
    const std::vector<std::string> dirs = CheckpointDirsAt(it->second);
    if (dirs.empty()) {
      return NotFound("--checkpoints " + it->second + " holds no tenant checkpoint (no tenant.textproto in it, " +
                      "its step_* or checkpoints/step_*): name a run directory or checkpoint of a tenant job");
    }
    for (const std::string& dir : dirs) {
      StatusOr<proto::AuditAnchor> anchor = ReadCheckpointAuditAnchor(dir, key ? &*key : nullptr);
      if (!anchor.ok() && anchor.status().code() == StatusCode::kNotFound) continue;  // anchors no log
      if (!anchor.ok()) return anchor.status().WithContext("--checkpoints " + it->second);
      std::error_code ea, eb;
      if (anchor->seq() < 1 || fs::weakly_canonical(anchor->log(), ea) != fs::weakly_canonical(path, eb)) continue;
      anchors.push_back({"checkpoint " + dir, anchor->seq(), anchor->hash()});
    }
  }
  return anchors;
}

}  // namespace

int RunAuditCommand(const std::vector<std::string>& positional,
                    const std::multimap<std::string, std::string>& flags) {
  if (positional.size() != 2 || positional[0] != "verify") {
    std::fprintf(stderr, "fjord audit: error: expected `verify LOG`\nusage: %s\n", kAuditUsage);
    return 2;
  }
  const std::string& path = positional[1];
  std::vector<AuditAnchor> anchors;
  for (auto [it, end] = flags.equal_range("--anchor"); it != end; ++it) {
    StatusOr<AuditAnchor> anchor = ParseAuditAnchor(it->second, "--anchor " + it->second);
    if (!anchor.ok()) {
      std::fprintf(stderr, "fjord audit verify: error: --anchor: %s\nusage: %s\n", anchor.status().message().c_str(),
                   kAuditUsage);
      return 2;
    }
    anchors.push_back(*anchor);
  }
  StatusOr<std::vector<AuditAnchor>> recorded = CheckpointAnchors(path, flags);
  if (!recorded.ok()) {
    std::fprintf(stderr, "fjord audit verify: error: %s\n", recorded.status().message().c_str());
    return 1;
  }
  anchors.insert(anchors.end(), recorded->begin(), recorded->end());
  StatusOr<AuditVerifyReport> report = VerifyAuditLog(path, anchors);
  if (!report.ok()) {
    std::fprintf(stderr, "fjord audit verify: error: %s\n", report.status().message().c_str());
    return 1;
  }
  if (report->ok) {
    std::printf("fjord audit verify: %s: ok, %lld records, head %s%s%s%s\n", path.c_str(),
                static_cast<long long>(report->records),
                report->head_hash.empty() ? "(empty)" : report->head_hash.c_str(),
                anchors.empty() ? "" : (", " + std::to_string(report->anchors) + " anchor(s) hold").c_str(),
                report->problem.empty() ? "" : "; note: ", report->problem.c_str());
    return 0;
  }
  if (report->bad_line > 0) {
    std::printf("fjord audit verify: %s: BROKEN at line %lld: %s (%lld records before it verify)\n",
                path.c_str(), static_cast<long long>(report->bad_line), report->problem.c_str(),
                static_cast<long long>(report->bad_line - 1));
  } else {
    std::printf("fjord audit verify: %s: BROKEN at the end: %s (%lld records verify)\n", path.c_str(),
                report->problem.c_str(), static_cast<long long>(report->records));
  }
  return 1;
}

}  // namespace fjord
