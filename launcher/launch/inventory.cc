// Inventory parsing and validation (launch/inventory.h).
#include "launcher/launch/inventory.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <vector>

#include "common/file_util.h"
#include "common/proto_text.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/config.h"

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

}  // namespace

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
  std::set<std::string> energy_sites;
  for (int i = 0; i < inv.site_energy_size(); ++i) {
    const proto::SiteEnergy& se = inv.site_energy(i);
    const std::string block = FieldLocation(source, &tree, inv, "site_energy", i);
    if (!IsValidSiteName(se.site())) {
      errors.push_back(block + ": site_energy: site \"" + se.site() +
                       "\" is missing or not a site name (1 to 64 letters, digits, '.', '_', '-')");
    } else if (!energy_sites.insert(se.site()).second) {
      errors.push_back(block + ": site_energy: site \"" + se.site() +
                       "\" is declared twice; give each site one declaration");
    }
    if (!std::isfinite(se.emission_factor_g_per_kwh())) {
      errors.push_back(block + ": site_energy: emission_factor_g_per_kwh of site \"" + se.site() +
                       "\" is not a number: give grams CO2e per kWh, or leave it out (not declared)");
    }
    if (se.source().empty() && se.emission_factor_g_per_kwh() < 0) {
      errors.push_back(block + ": site_energy: site \"" + se.site() +
                       "\" declares neither a source nor an emission_factor_g_per_kwh: give one, or remove "
                       "the block");
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

}  // namespace fjord
