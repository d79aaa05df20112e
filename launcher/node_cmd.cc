// `fjord node init` / `fjord node show` (node_cmd.h).
#include "launcher/node_cmd.h"

#include <google/protobuf/text_format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "common/file_util.h"
#include "common/host.h"
#include "common/time_util.h"
#include "launcher/cli.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

// The identity file under a test root: DIR + FJORD_SYSCONFDIR/node.textproto ("" = the node's own).
std::string IdentityPathUnder(const std::string& root) {
  if (root.empty()) return kDefaultNodeIdentityPath;
  return (fs::path(root) / fs::path(kDefaultNodeIdentityPath).relative_path()).string();
}

// --root is a test override: only where the operator allows them (docs/SOVEREIGNTY.md).
Status CheckTestRootAllowed(const std::string& root) {
  StatusOr<proto::NodeSettings> settings = ReadNodeSettings(kNodeSettingsPath);
  if (settings.ok() && settings->allow_test_overrides()) return OkStatus();
  return FailedPrecondition(
      "--root " + root + " (a test root) is a test override, and test overrides are off on this node (" +
      (settings.ok() ? std::string(kNodeSettingsPath) + " does not say allow_test_overrides: true"
                     : settings.status().message()) +
      "). Leave out --root to work on this node's own " + kDefaultNodeIdentityPath +
      "; on a test node the operator enables test overrides (docs/SOVEREIGNTY.md, \"Test overrides\")");
}

bool IsPlainHostname(const std::string& h) {
  if (h.empty() || h.size() > 253) return false;
  for (char c : h) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_')) return false;
  }
  return true;
}

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "fjord node %s: error: %s\n", command.c_str(), message.c_str());
  return 1;
}

void AddInit(CLI::App& node) {
  struct Args {
    std::string jurisdiction, site, hostname, root;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(node, "init",
                                    std::string("write this node's identity, ") + kDefaultNodeIdentityPath +
                                        " (root only; --force replaces it)");
  cli::Required(
      c->add_option("--jurisdiction", a->jurisdiction, "ISO 3166-1 alpha-2 code, e.g. NO")->type_name("CC"));
  cli::Required(c->add_option("--site", a->site, "the site (data centre), e.g. osl1")->type_name("S"));
  c->add_option("--hostname", a->hostname, "the node's hostname (default: this host's)")->type_name("H");
  c->add_flag("--force", a->force, "replace an existing identity");
  c->add_option("--root", a->root, "write under DIR instead of / (a test root: test overrides only)")
      ->type_name("DIR");
  c->run = [c, a] {
    if (a->jurisdiction.empty() || a->site.empty()) {
      return cli::UsageError(*c, "--jurisdiction CC and --site S are required");
    }
    if (std::string p = JurisdictionProblem(a->jurisdiction); !p.empty()) {
      return cli::UsageError(*c, "--jurisdiction \"" + a->jurisdiction + "\" " + p);
    }
    if (!IsValidSiteName(a->site)) {
      return cli::UsageError(
          *c, "--site \"" + a->site + "\" is not a site name (1 to 64 letters, digits, '.', '_', '-')");
    }
    const std::string hostname = a->hostname.empty() ? ThisHostname() : a->hostname;
    if (!IsPlainHostname(hostname)) {
      return cli::UsageError(
          *c, "--hostname \"" + hostname + "\" is not a host name (letters, digits, '.', '-', '_')");
    }
    if (::geteuid() != 0) {
      return Fail("init", "must run as root (this is uid " + std::to_string(::geteuid()) +
                              "): the rank gate accepts only a root-owned identity that no other user can "
                              "write. Run it as root, e.g. sudo fjord node init --jurisdiction " +
                              a->jurisdiction + " --site " + a->site);
    }
    if (!a->root.empty()) {
      if (Status allowed = CheckTestRootAllowed(a->root); !allowed.ok())
        return Fail("init", allowed.message());
    }
    const std::string path = IdentityPathUnder(a->root);
    const fs::path dir = fs::path(path).parent_path();
    std::error_code ec;
    if (fs::exists(path, ec) && !a->force) {
      std::string current;
      if (StatusOr<std::string> text = ReadWholeFile(path, "node identity"); text.ok()) current = *text;
      return Fail(
          "init",
          path + " exists; refusing to overwrite the node identity without --force. It holds:\n" + current);
    }
    if (!fs::is_directory(dir, ec)) {
      fs::create_directories(dir, ec);
      if (ec) return Fail("init", "cannot create " + dir.string() + ": " + ec.message());
      ::chmod(dir.c_str(), 0755);
    }
    proto::NodeIdentity id;
    id.set_hostname(hostname);
    id.set_jurisdiction(a->jurisdiction);
    id.set_site(a->site);
    id.set_provisioned_by("fjord node init (uid 0)" +
                          (a->root.empty() ? std::string() : " into test root " + a->root));
    id.set_provisioned_at(UtcNow());
    std::string body;
    google::protobuf::TextFormat::PrintToString(id, &body);
    std::string text = "# Node identity (proto/tenancy.proto NodeIdentity), written by fjord node init on " +
                       ThisHostname() + ".\n";
    if (!a->root.empty()) {
      text += "# TEST ROOT " + a->root + " (--root, a test override): the rank gate never reads this file.\n";
    }
    text += body;
    if (Status s = WriteFileAtomic(path, {{text.data(), text.size()}}, 0644); !s.ok()) {
      return Fail("init", s.message());
    }
    // Exactly root:root 0644, whatever the umask.
    if (::chown(path.c_str(), 0, 0) != 0 || ::chmod(path.c_str(), 0644) != 0) {
      return Fail("init", "wrote " + path + " but cannot make it root:root 0644: " + std::strerror(errno));
    }
    std::printf("fjord node init: wrote %s (root:root 0644):\n%s", path.c_str(), text.c_str());
    NodeInspection check = a->root.empty() ? InspectNodeIdentity() : InspectNodeIdentityAt(path);
    for (const Status& p : check.problems) {
      std::printf("fjord node init: warning: the rank gate would refuse it: %s\n", p.message().c_str());
    }
    return 0;
  };
}

void AddShow(CLI::App& node) {
  auto root = std::make_shared<std::string>();
  cli::Command* c = cli::AddCommand(
      node, "show",
      "print the identity this node presents to the rank gate and every reason it would refuse it");
  c->add_option("--root", *root, "read the identity under DIR (a test root: test overrides only)")
      ->type_name("DIR");
  c->run = [root] {
    if (!root->empty()) {
      if (Status allowed = CheckTestRootAllowed(*root); !allowed.ok()) return Fail("show", allowed.message());
    }
    NodeInspection inspection =
        root->empty() ? InspectNodeIdentity() : InspectNodeIdentityAt(IdentityPathUnder(*root));
    std::vector<std::string> warnings = NodeTrustWarnings(inspection);
    if (!root->empty()) {
      warnings.insert(warnings.begin(), "test root " + *root + " (--root): the rank gate reads " +
                                            kDefaultNodeIdentityPath + ", never this file");
    }
    for (const std::string& line : DescribeNodeInspection(inspection, warnings))
      std::printf("%s\n", line.c_str());
    return inspection.problems.empty() ? 0 : 1;
  };
}

}  // namespace

std::vector<std::string> DescribeNodeInspection(const NodeInspection& inspection,
                                                const std::vector<std::string>& warnings) {
  std::vector<std::string> out;
  out.push_back("node identity " + inspection.path +
                (inspection.overridden ? " (FJORD_NODE_IDENTITY, a test override)" : ""));
  if (inspection.node) {
    const proto::NodeIdentity& id = inspection.node->identity;
    out.push_back("  hostname:     " + id.hostname() + " (this host: " + inspection.node->hostname + ")");
    out.push_back("  jurisdiction: " + id.jurisdiction());
    out.push_back("  site:         " + id.site());
    if (id.has_provisioned_by() || id.has_provisioned_at()) {
      out.push_back("  provisioned:  " + id.provisioned_by() +
                    (id.has_provisioned_at() ? ", " + id.provisioned_at() : ""));
    }
  }
  out.push_back(inspection.problems.empty() ? "the rank gate accepts this identity"
                                            : "the rank gate refuses this identity:");
  for (const Status& p : inspection.problems) out.push_back("  refused: " + p.message());
  for (const std::string& w : warnings) out.push_back("  warning: " + w);
  return out;
}

void AddNodeCommand(CLI::App& app) {
  cli::Command* node = cli::AddCommand(app, "node", "provision and inspect this node's identity (operators)");
  AddInit(*node);
  AddShow(*node);
}

}  // namespace fjord
