// Placement (launch/placement.h).
#include "launcher/launch/placement.h"

#include <algorithm>
#include <set>

#include "common/json.h"
#include "common/text.h"
#include "runtime/data/data.h"

namespace fjord {
namespace {

bool Contains(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

std::string Plural(int n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

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

StatusOr<std::vector<DataResidency>> DataResidencyOf(const proto::JobSpec& job,
                                                     std::vector<std::string>* unseen) {
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
      auto same =
          std::find_if(out.begin(), out.end(), [&](const DataResidency& d) { return d.manifest == m.path; });
      if (same != out.end()) {
        if (same->fields.find(what) == std::string::npos) same->fields += ", " + what;
        continue;
      }
      out.push_back(
          {what, m.path,
           ResidencyPolicy{
               m.manifest.tenant(),
               {m.manifest.allowed_jurisdictions().begin(), m.manifest.allowed_jurisdictions().end()},
               {m.manifest.allowed_sites().begin(), m.manifest.allowed_sites().end()}}});
    }
  }
  return out;
}

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

std::string ExcludedJson(const std::vector<ExcludedNode>& excluded) {
  std::string out = "[";
  for (size_t i = 0; i < excluded.size(); ++i) {
    if (i > 0) out += ",";
    out += "{\"hostname\":" + JsonQuote(excluded[i].hostname) +
           ",\"reason\":" + JsonQuote(excluded[i].reason) + "}";
  }
  return out + "]";
}

}  // namespace fjord
