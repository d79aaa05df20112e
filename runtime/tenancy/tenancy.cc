// Tenancy: node identity, residency checks, the rank gate, the checkpoint gate and the per-rank
// context. Every refusal says what was found, where (rank, host, file), what was allowed and what
// to do; every decision that matters to an auditor goes to the audit log (rank 0, or the refusing
// rank itself before communicators exist).
#include "runtime/tenancy/tenancy.h"

#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "common/env.h"
#include "common/host.h"
#include "common/json.h"
#include "common/proto_text.h"
#include "common/sha256.h"
#include "common/text.h"
#include "common/time_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

// Officially assigned ISO 3166-1 alpha-2 codes (249), each followed by a space.
constexpr std::string_view kIsoCodes =
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV "
    "BW BY "
    "BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI "
    "FJ FK "
    "FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO "
    "IQ IR "
    "IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG "
    "MH MK "
    "ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK "
    "PL PM "
    "PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC "
    "TD TF "
    "TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW ";

bool Contains(const std::vector<std::string>& items, std::string_view x) {
  return std::find(items.begin(), items.end(), x) != items.end();
}

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  out += s;
  out += '"';
  return out;
}

std::string ModeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

template <typename Repeated>
std::vector<std::string> ToVector(const Repeated& r) {
  return std::vector<std::string>(r.begin(), r.end());
}

// Root owns it and nobody else may write it.
std::string OwnershipProblem(const std::string& path, const std::string& what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::string(what) + " " + path + ": " + std::strerror(errno);
  if (st.st_uid != 0) {
    return what + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not root";
  }
  if ((st.st_mode & 022) != 0) {
    return what + " " + path + " is writable by group or others (mode " + ModeText(st.st_mode) + ")";
  }
  return "";
}

// A node file (identity, settings) and its directory must be root-owned and writable by root only:
// one refusal for each of the two that is not. `risk` says what another user could do otherwise.
std::vector<Status> RootOnlyProblems(const std::string& path, const std::string& what,
                                     const std::string& risk) {
  std::vector<Status> problems;
  for (const std::string& problem :
       {OwnershipProblem(path, what),
        OwnershipProblem(fs::path(path).parent_path().string(), "its directory")}) {
    if (problem.empty()) continue;
    problems.push_back(FailedPrecondition(
        problem + ": another user could " + risk +
        ". The operator must make it root-owned and writable by root only: chown root:root " + path +
        " && chmod 644 " + path + " (and its directory: chmod 755)"));
  }
  return problems;
}

Status CheckRootOnly(const std::string& path, const std::string& what, const std::string& risk) {
  std::vector<Status> problems = RootOnlyProblems(path, what, risk);
  return problems.empty() ? OkStatus() : problems.front();
}

// stat() of `path`: nullopt with errno when it fails.
std::optional<struct stat> StatOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return st;
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// The authenticated data of sealed file `path` of the checkpoint `seal` names: tenant, job, step
// and file name, so a sealed file moved to another checkpoint, job or name fails authentication.
std::string CheckpointContext(const CheckpointSeal& seal, const std::string& path) {
  return "fjord-checkpoint-v2\ntenant=" + seal.tenant + "\njob_sha256=" + seal.job_sha256 +
         "\nstep=" + std::to_string(seal.step) + "\nfile=" + fs::path(path).filename().string();
}

// "tenant "acme", job 0123456789abcdef..., step 6" for messages.
std::string CheckpointIdentity(const CheckpointSeal& seal) {
  return "tenant \"" + seal.tenant + "\", job " + seal.job_sha256.substr(0, 16) + "..., step " +
         std::to_string(seal.step);
}

// Whether two paths name the same file (or would, once created).
bool SameFile(const std::string& a, const std::string& b) {
  std::error_code ea, eb;
  const fs::path ca = fs::weakly_canonical(a, ea), cb = fs::weakly_canonical(b, eb);
  return !ea && !eb && ca == cb;
}

}  // namespace

// ---- Names and codes ------------------------------------------------------------------------

bool IsIsoCountryCode(std::string_view code) {
  if (code.size() != 2 || !std::isupper(static_cast<unsigned char>(code[0])) ||
      !std::isupper(static_cast<unsigned char>(code[1]))) {
    return false;
  }
  for (size_t i = 0; i + 2 <= kIsoCodes.size(); i += 3) {
    if (kIsoCodes.substr(i, 2) == code) return true;
  }
  return false;
}

std::string JurisdictionProblem(std::string_view code) {
  if (IsIsoCountryCode(code)) return "";
  if (code.empty()) return "is empty; write an ISO 3166-1 alpha-2 country code such as \"NO\"";
  std::string upper(code);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (IsIsoCountryCode(upper)) return "is not upper case; write " + Quoted(upper);
  if (upper == "EU") {
    return "is not a country: list the ISO 3166-1 alpha-2 codes of the member states allowed, e.g. \"NO\", "
           "\"SE\"";
  }
  if (upper == "UK") return "is not the ISO 3166-1 alpha-2 code of the United Kingdom; write \"GB\"";
  if (code.size() == 3) {
    return "has 3 letters; jurisdictions are 2-letter ISO 3166-1 alpha-2 codes, e.g. \"NO\" for Norway, "
           "\"SE\" "
           "for Sweden";
  }
  return "is not an ISO 3166-1 alpha-2 country code; write one such as \"NO\" (Norway) or \"SE\" (Sweden)";
}

bool IsValidTenantId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  auto ok = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  };
  if (!std::isalnum(static_cast<unsigned char>(id[0]))) return false;
  return std::all_of(id.begin(), id.end(), ok);
}

bool IsValidSiteName(std::string_view site) {
  if (site.empty() || site.size() > 64) return false;
  return std::all_of(site.begin(), site.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

// ---- Residency policy -----------------------------------------------------------------------

bool ResidencyPolicy::Allows(std::string_view jurisdiction, std::string_view site) const {
  return WhyNot(jurisdiction, site).empty();
}

std::string ResidencyPolicy::WhyNot(std::string_view jurisdiction, std::string_view site) const {
  if (!enabled()) return "";
  if (!Contains(jurisdictions, jurisdiction)) {
    return "jurisdiction " + (jurisdiction.empty() ? std::string("(none)") : std::string(jurisdiction)) +
           " is not allowed (allowed: " + JoinList(jurisdictions) + ")";
  }
  if (!sites.empty() && !Contains(sites, site)) {
    return "site " + (site.empty() ? std::string("(none)") : std::string(site)) +
           " is not allowed (allowed sites: " + JoinList(sites) + ")";
  }
  return "";
}

std::string ResidencyPolicy::Describe() const {
  return "jurisdictions " + JoinList(jurisdictions) + "; sites: " + JoinList(sites, "any");
}

ResidencyPolicy PolicyOf(const proto::JobSpec& job) {
  ResidencyPolicy p;
  p.tenant = job.tenant().id();
  p.jurisdictions = ToVector(job.residency().allowed_jurisdictions());
  p.sites = ToVector(job.residency().allowed_sites());
  return p;
}

std::string AuditPathFor(const proto::JobSpec& job) {
  if (!job.audit_log().empty()) return job.audit_log();
  return (fs::path(job.run_dir()) / "audit.jsonl").string();
}

StatusOr<std::string> JobDigest(const proto::JobSpec& job) {
  std::string text;
  pb::TextFormat::Printer printer;
  printer.PrintToString(job, &text);
  return Sha256Hex(text);
}

// ---- Node identity --------------------------------------------------------------------------

const char kDefaultNodeIdentityPath[] = FJORD_SYSCONFDIR "/node.textproto";
const char kNodeSettingsPath[] = FJORD_SYSCONFDIR "/settings.textproto";

Status CheckHostView(const std::string& path, const std::string& what) {
  const std::string subject = what + " " + path;
  // 1. The initial user namespace. The map is read from procfs itself (fstatfs), so no file mounted
  //    over /proc can stand in for it, and procfs prints it relative to the reader's own namespace:
  //    "0 0 4294967295" comes only from a process in the initial one (or in one that root made).
  std::string map;
  const int fd = ::open("/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
  struct statfs proc;
  const bool is_proc = fd >= 0 && ::fstatfs(fd, &proc) == 0 && proc.f_type == PROC_SUPER_MAGIC;
  char buf[256];
  for (ssize_t n; is_proc && (n = ::read(fd, buf, sizeof(buf))) > 0;) map.append(buf, static_cast<size_t>(n));
  if (fd >= 0) ::close(fd);
  if (!is_proc) {
    return FailedPrecondition(
        subject +
        " cannot be trusted: /proc/self/uid_map is not procfs's, so fjord cannot "
        "tell whether this process runs in a user namespace; run fjord with the host's /proc");
  }
  std::istringstream fields(map);
  std::vector<std::string> words;
  for (std::string w; fields >> w;) words.push_back(w);
  if (words != std::vector<std::string>{"0", "0", "4294967295"}) {
    std::string shown;
    for (const std::string& w : words) shown += (shown.empty() ? "" : " ") + w;
    return FailedPrecondition(
        subject + " cannot be trusted: this process runs in a user namespace (/proc/self/uid_map is \"" +
        shown +
        "\", not the initial namespace's \"0 0 4294967295\"), where an ordinary user can mount files that "
        "look "
        "root-owned over " +
        fs::path(path).parent_path().string() +
        ". fjord reads the node's own files only in the initial user namespace: run it without unshare -r, "
        "rootless containers or other user namespaces (operators: sysctl user.max_user_namespaces=0 on "
        "tenant "
        "nodes; docs/SOVEREIGNTY.md, \"Node identity\")");
  }
  // 2. The mount namespace, where init's can be read (as root). Ours may differ (ip netns exec,
  //    systemd's private mounts), but the file there must be init's, or absent in both.
  const std::optional<struct stat> init_ns = StatOf("/proc/1/ns/mnt");
  const std::optional<struct stat> own_ns = StatOf("/proc/self/ns/mnt");
  if (!init_ns || !own_ns || SameFile(*init_ns, *own_ns)) return OkStatus();
  const std::string host_path = "/proc/1/root" + fs::absolute(path).string();
  const std::optional<struct stat> mine = StatOf(path);
  const std::optional<struct stat> hosts = StatOf(host_path);
  if (mine ? hosts && SameFile(*mine, *hosts) : !hosts) return OkStatus();
  return FailedPrecondition(
      subject + " cannot be trusted: this process runs in a mount namespace of its own, and " +
      (mine ? "the file it sees there is not the node's own (" + host_path +
                  (hosts ? " is another file)" : " does not exist)")
            : std::string("it does not see the node's own file (" + host_path + ")")) +
      ": something was mounted over " + fs::path(path).parent_path().string() +
      ". Run fjord in the node's own mount namespace, or leave " + path + " as the node has it");
}

StatusOr<proto::NodeSettings> ReadNodeSettings(const std::string& path) {
  const std::string what = "node settings";
  FJORD_RETURN_IF_ERROR(CheckHostView(path, what));
  proto::NodeSettings settings;
  if (!StatOf(path)) {
    if (errno == ENOENT) return settings;
    return FailedPrecondition(what + " " + path + ": " + std::strerror(errno) + "; check its permissions");
  }
  FJORD_RETURN_IF_ERROR(CheckRootOnly(path, what, "enable test overrides on this node"));
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, what));
  FJORD_RETURN_IF_ERROR(ParseTextProto(text, path, &settings, "proto/tenancy.proto"));
  return settings;
}

Status CheckTestOverrides() {
  std::vector<std::string> set;
  for (const char* variable : {"FJORD_NODE_IDENTITY", "FJORD_TEST_HOOK"}) {
    if (GetEnv(variable)) set.push_back(variable);
  }
  if (set.empty()) return OkStatus();
  StatusOr<proto::NodeSettings> settings = ReadNodeSettings(kNodeSettingsPath);
  if (settings.ok() && settings->allow_test_overrides()) return OkStatus();
  const std::string names = JoinList(set);
  return FailedPrecondition(
      names + (set.size() == 1 ? " is" : " are") + " set, but test overrides are off on this node (" +
      (settings.ok() ? std::string(kNodeSettingsPath) + " does not say allow_test_overrides: true"
                     : settings.status().message()) +
      "). They exist for tests only: FJORD_NODE_IDENTITY lets the caller choose where this node claims to "
      "be, "
      "FJORD_TEST_HOOK injects faults, delays and signals. Unset " +
      names + ". On a test node the operator enables them as root: echo 'allow_test_overrides: true' > " +
      kNodeSettingsPath + " && chmod 644 " + kNodeSettingsPath +
      " (docs/SOVEREIGNTY.md, \"Test overrides\"); every use is then audited");
}

std::string NodeIdentityPath(bool* overridden) {
  std::optional<std::string> env = GetEnv("FJORD_NODE_IDENTITY");
  if (overridden != nullptr) *overridden = env.has_value();
  if (!env) return kDefaultNodeIdentityPath;
  // Several slurmd on one machine (the Slurm test cluster) share its hostname and /etc: %n picks the
  // file of the Slurm node that started this process.
  const std::optional<std::string> slurm_node = GetEnv("SLURMD_NODENAME");
  for (size_t at = env->find("%n"); at != std::string::npos && slurm_node; at = env->find("%n", at)) {
    env->replace(at, 2, *slurm_node);
    at += slurm_node->size();
  }
  return *env;
}

NodeInspection InspectNodeIdentityFile(const std::string& path, bool strict) {
  NodeInspection r;
  r.path = path;
  const std::string what = "node identity " + path;
  if (strict) {
    if (Status view = CheckHostView(path, "node identity"); !view.ok()) r.problems.push_back(view);
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      r.problems.push_back(NotFound(
          what +
          ": no such file: this node has not been provisioned for tenant jobs; the operator "
          "writes it as root at provisioning (fjord node init; docs/SOVEREIGNTY.md, \"Node identity\")"));
    } else {
      r.problems.push_back(
          FailedPrecondition(what + ": " + std::strerror(errno) + "; check the path and its permissions"));
    }
    return r;
  }
  if (!S_ISREG(st.st_mode)) {
    r.problems.push_back(FailedPrecondition(what + " is not a regular file"));
    return r;
  }
  if (strict) {
    for (Status& s : RootOnlyProblems(path, "node identity", "change where this node claims to be"))
      r.problems.push_back(std::move(s));
  }
  StatusOr<std::string> text = ReadWholeFile(path, "node identity");
  if (!text.ok()) {
    r.problems.push_back(text.status());
    return r;
  }
  LocalNode node;
  node.path = path;
  node.hostname = ThisHostname();
  pb::TextFormat::ParseInfoTree tree;
  if (Status parsed = ParseTextProto(*text, path, &node.identity, "proto/tenancy.proto", &tree);
      !parsed.ok()) {
    r.problems.push_back(parsed);
    return r;
  }
  const proto::NodeIdentity& id = node.identity;
  const char* fix = "; the operator must correct the node identity (written at provisioning)";
  if (id.hostname().empty()) {
    r.problems.push_back(
        InvalidArgument(path + ": hostname is missing: write hostname: \"" + node.hostname + "\"" + fix));
  }
  if (std::string p = JurisdictionProblem(id.jurisdiction()); !p.empty()) {
    r.problems.push_back(InvalidArgument(FieldLocation(path, &tree, id, "jurisdiction") + ": jurisdiction " +
                                         Quoted(id.jurisdiction()) + " " + p + fix));
  }
  if (!IsValidSiteName(id.site())) {
    r.problems.push_back(
        InvalidArgument(FieldLocation(path, &tree, id, "site") + ": site " + Quoted(id.site()) +
                        " is missing or not a site name (1 to 64 letters, digits, '.', '_', '-')" + fix));
  }
  r.node = std::move(node);
  return r;
}

StatusOr<LocalNode> ReadNodeIdentityFile(const std::string& path, bool strict) {
  NodeInspection r = InspectNodeIdentityFile(path, strict);
  if (!r.problems.empty()) return r.problems.front();
  return *std::move(r.node);
}

namespace {

// The hostname check of the gate: the identity must name this host (up to the first '.').
void CheckNamesThisHost(NodeInspection& r) {
  if (!r.node || r.node->identity.hostname().empty()) return;
  if (ShortHostName(r.node->identity.hostname()) == ShortHostName(r.node->hostname)) return;
  r.problems.push_back(FailedPrecondition(
      "node identity " + r.path + " names host " + Quoted(r.node->identity.hostname()) +
      " but this host is " + Quoted(r.node->hostname) +
      ": the file belongs to another node (copied, or on a shared /etc); the operator must "
      "write each node's own identity (fjord node init --jurisdiction CC --site S --force)"));
}

}  // namespace

NodeInspection InspectNodeIdentity() {
  bool overridden = false;
  const std::string path = NodeIdentityPath(&overridden);
  NodeInspection r;
  r.path = path;
  r.overridden = overridden;
  if (overridden) {
    if (Status allowed = CheckTestOverrides(); !allowed.ok()) {
      r.problems.push_back(allowed);
      return r;  // the override's file is not even read
    }
    if (path.find("%n") != std::string::npos) {
      r.problems.push_back(
          FailedPrecondition("FJORD_NODE_IDENTITY (a test override) is " + Quoted(path) +
                             ": %n stands for the Slurm node name, but SLURMD_NODENAME is not set; %n works "
                             "only in processes started by slurmd (srun, sbatch)"));
      return r;
    }
  }
  NodeInspection file = InspectNodeIdentityFile(path, /*strict=*/!overridden);
  for (Status& s : file.problems) {
    r.problems.push_back(overridden ? s.WithContext("FJORD_NODE_IDENTITY (a test override)") : std::move(s));
  }
  r.node = std::move(file.node);
  if (r.node) r.node->overridden = overridden;
  CheckNamesThisHost(r);
  return r;
}

NodeInspection InspectNodeIdentityAt(const std::string& path) {
  NodeInspection r = InspectNodeIdentityFile(path, /*strict=*/true);
  CheckNamesThisHost(r);
  return r;
}

std::string UnprivilegedUserNamespacesWarning() {
  auto read_int = [](const char* file) -> std::optional<long long> {
    std::ifstream in(file);
    long long v;
    if (in >> v) return v;
    return std::nullopt;
  };
  const std::optional<long long> max_ns = read_int("/proc/sys/user/max_user_namespaces");
  const std::optional<long long> clone = read_int("/proc/sys/kernel/unprivileged_userns_clone");  // Debian
  if (!max_ns || *max_ns == 0 || (clone && *clone == 0)) return "";
  return "unprivileged user namespaces are enabled (user.max_user_namespaces = " + std::to_string(*max_ns) +
         "): the gate refuses ranks inside one, but a tenant node should not offer them; as root: "
         "sysctl -w user.max_user_namespaces=0, and the same in /etc/sysctl.d/ "
         "(docs/SOVEREIGNTY.md, \"Node identity\")";
}

std::vector<std::string> NodeTrustWarnings(const NodeInspection& inspection, bool user_namespaces) {
  std::vector<std::string> warnings;
  if (inspection.overridden) {
    warnings.push_back(
        "the identity comes from FJORD_NODE_IDENTITY, a test override (recorded in every artefact "
        "it touches); ranks of a production node read " +
        std::string(kDefaultNodeIdentityPath) + ": unset FJORD_NODE_IDENTITY");
  }
  StatusOr<proto::NodeSettings> settings = ReadNodeSettings(kNodeSettingsPath);
  if (settings.ok() && settings->allow_test_overrides()) {
    warnings.push_back(std::string("test overrides are enabled on this node (") + kNodeSettingsPath +
                       " says allow_test_overrides: true): any user here can choose where the node claims to "
                       "be with FJORD_NODE_IDENTITY; on a tenant node remove that line");
  }
  if (user_namespaces) {
    if (std::string w = UnprivilegedUserNamespacesWarning(); !w.empty()) warnings.push_back(w);
  }
  return warnings;
}

StatusOr<LocalNode> ReadNodeIdentity() {
  NodeInspection r = InspectNodeIdentity();
  if (!r.problems.empty()) return r.problems.front();
  return *std::move(r.node);
}

// ---- Gate 2 ---------------------------------------------------------------------------------

StatusOr<RankGateResult> RankGate(const proto::JobSpec& job) {
  RankGateResult result;
  result.rank = RankInfoFromEnvironment();
  const ResidencyPolicy policy = PolicyOf(job);
  if (!policy.enabled()) return result;
  result.enabled = true;
  const std::string host = ThisHostname();
  // Under Slurm, the node slurmd calls this one (several fake nodes of the test cluster share a host).
  const std::optional<std::string> slurm_node = GetEnv("SLURMD_NODENAME");
  const std::string where = "rank " + std::to_string(result.rank.rank) + " on host " + host +
                            (slurm_node && *slurm_node != host ? " (Slurm node " + *slurm_node + ")" : "");
  StatusOr<LocalNode> node = ReadNodeIdentity();
  std::string message;
  AuditRecord record;
  record.Str("gate", "rank")
      .Int("rank", result.rank.rank)
      .Int("world_size", result.rank.world_size)
      .Str("host", host)
      .Str("slurm_node", slurm_node.value_or(""))
      .Str("tenant", policy.tenant)
      .Raw("allowed_jurisdictions", JsonQuoteList(policy.jurisdictions))
      .Raw("allowed_sites", JsonQuoteList(policy.sites));
  if (!node.ok()) {
    message = where + ": residency gate: cannot establish this node's jurisdiction, so tenant " +
              policy.tenant + " (allowed: " + policy.Describe() +
              ") cannot run here: " + node.status().message() +
              ". The rank stopped before reading any data or creating communicators.";
    bool overridden = false;
    record.Str("identity_file", NodeIdentityPath(&overridden)).Bool("override", overridden);
  } else {
    result.node = *node;
    const proto::NodeIdentity& id = node->identity;
    record.Str("jurisdiction", id.jurisdiction())
        .Str("site", id.site())
        .Str("identity_file", node->path)
        .Bool("override", node->overridden);
    const std::string why = policy.WhyNot(id.jurisdiction(), id.site());
    if (why.empty()) return result;
    message =
        where + ": residency gate: this node is in jurisdiction " + id.jurisdiction() + ", site " +
        id.site() + " (node identity " + node->path +
        (node->overridden ? ", a test override from FJORD_NODE_IDENTITY" : "") + ") but tenant " +
        policy.tenant + " allows " + policy.Describe() +
        ". The rank stopped before reading any data or creating communicators. Start the job with `fjord "
        "launch JOB --inventory INV`, which places ranks on allowed nodes only, or correct the hand-written "
        "hostfile or host list; if the inventory lists this node in another jurisdiction, correct the "
        "inventory.";
  }
  record.Str("message", message);
  StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(
      AuditPathFor(job), "rank" + std::to_string(result.rank.rank) + "@" + host, /*create_parent=*/false);
  Status logged = audit.ok() ? (*audit)->Append("refusal", record).status() : audit.status();
  if (!logged.ok())
    message += " (This refusal could not be recorded in the audit log: " + logged.message() + ")";
  return FailedPrecondition(message);
}

// ---- Gate 3 for checkpoints -----------------------------------------------------------------

StatusOr<CheckpointSeal> CheckpointSealFor(const proto::JobSpec& job) {
  CheckpointSeal seal;
  seal.tenant = job.tenant().id();
  seal.allowed_jurisdictions = ToVector(job.residency().allowed_jurisdictions());
  seal.allowed_sites = ToVector(job.residency().allowed_sites());
  if (!job.checkpoint().encryption_key_file().empty()) {
    FJORD_ASSIGN_OR_RETURN(EncryptionKey key, LoadEncryptionKey(job.checkpoint().encryption_key_file(),
                                                                "checkpoint.encryption_key_file"));
    seal.key = std::make_shared<const EncryptionKey>(std::move(key));
  }
  return seal;
}

bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

Status WriteCheckpointFile(const std::string& path, const std::vector<ByteSpan>& pieces,
                           const CheckpointSeal& seal) {
  if (!seal.key)
    return WriteFileAtomic(path, pieces, seal.tenant.empty() ? 0644 : 0600);  // a tenant's: private
  if (seal.job_sha256.empty() || seal.step < 0) {
    return Internal("sealing checkpoint file " + path +
                    " without the job digest and step it belongs to: a bug in fjord");
  }
  return WriteSealedFile(path, pieces, *seal.key, CheckpointContext(seal, path));
}

StatusOr<std::string> ReadCheckpointFile(const std::string& path, const CheckpointSeal& seal) {
  FJORD_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path, "checkpoint file"));
  if (IsSealed(bytes)) {
    if (!seal.key) {
      return FailedPrecondition(
          "checkpoint file " + path +
          " is encrypted (AES-256-GCM): set checkpoint.encryption_key_file to the key of the "
          "tenant that wrote it (" +
          kCheckpointTenantRecord + " beside it names the tenant and the key id)");
    }
    if (seal.job_sha256.empty() || seal.step < 0) {
      return Internal("checkpoint file " + path +
                      " read without the checkpoint's tenant record (CheckCheckpointTenant): "
                      "a bug in fjord");
    }
    StatusOr<std::string> plain =
        Unseal(bytes, *seal.key, CheckpointContext(seal, path), "checkpoint file " + path);
    if (!plain.ok() && plain.status().code() == StatusCode::kDataLoss) {
      return DataLoss(plain.status().message() + ". It does not authenticate as " +
                      fs::path(path).filename().string() + " of the checkpoint of " +
                      CheckpointIdentity(seal) +
                      ": a sealed file of another step, job or file name is refused like a modified one");
    }
    return plain;
  }
  if (seal.key) {
    return FailedPrecondition(
        "checkpoint file " + path +
        " is not encrypted, but this job encrypts its checkpoints (checkpoint.encryption_key_file "
        "is set): a plaintext file where an encrypted one belongs may have been substituted; "
        "refusing it. Restore the checkpoint from a copy you trust");
  }
  return bytes;
}

Status WriteCheckpointTenantRecord(const std::string& dir, const CheckpointSeal& seal,
                                   const std::vector<std::string>& files) {
  if (seal.tenant.empty() && !seal.key) return OkStatus();
  if (seal.key && (seal.job_sha256.empty() || seal.step < 0)) {
    return Internal("tenant record of checkpoint " + dir +
                    " without the job digest and step: a bug in fjord");
  }
  proto::CheckpointTenancy record;
  record.set_version(kCheckpointTenantRecordVersion);
  record.set_tenant(seal.tenant);
  for (const std::string& j : seal.allowed_jurisdictions) record.add_allowed_jurisdictions(j);
  for (const std::string& s : seal.allowed_sites) record.add_allowed_sites(s);
  record.set_encrypted(seal.key != nullptr);
  if (seal.key) {
    record.set_cipher("AES-256-GCM");
    FJORD_ASSIGN_OR_RETURN(const std::string key_id, seal.key->KeyId());
    record.set_key_id(key_id);
  }
  for (const std::string& name : files) {
    if (!IsPlainFileName(name))
      return Internal("checkpoint file name " + JsonQuote(name) + " is not plain: a bug in fjord");
    const std::string path = (fs::path(dir) / name).string();
    FJORD_ASSIGN_OR_RETURN(std::string digest, Sha256File(path, "checkpoint file"));
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    proto::FileDigest* f = record.add_file();
    f->set_name(name);
    f->set_sha256(digest);
    f->set_bytes(ec ? -1 : static_cast<int64_t>(size));
  }
  record.set_written_on_host(ThisHostname());
  if (!seal.node.jurisdiction().empty()) record.set_written_in_jurisdiction(seal.node.jurisdiction());
  if (!seal.node.site().empty()) record.set_written_at_site(seal.node.site());
  record.set_written_at(UtcNow());
  if (!seal.identity_override.empty()) record.set_identity_override(seal.identity_override);
  if (!seal.job_sha256.empty()) record.set_job_sha256(seal.job_sha256);
  if (seal.step >= 0) record.set_step(seal.step);
  if (!seal.audit_log.empty()) {
    // The log's head now, kept outside the log: a later truncation or rewrite shows against it.
    // Read from LOG.head, which every append replaces atomically, so no append in flight is seen.
    StatusOr<AuditAnchor> head = ReadAuditHead(seal.audit_log);
    if (!head.ok()) {
      return head.status().WithContext("anchoring the head of audit log " + seal.audit_log +
                                       " in checkpoint " + dir);
    }
    proto::AuditAnchor* anchor = record.mutable_audit_head();
    anchor->set_log(fs::absolute(seal.audit_log).lexically_normal().string());
    anchor->set_seq(head->seq);
    anchor->set_hash(head->hash);
  }
  std::string text =
      "# fjord checkpoint tenant record (proto/tenancy.proto CheckpointTenancy). Written by fjord train;\n"
      "# a checkpoint whose tenant differs from the job's is refused (docs/SOVEREIGNTY.md).\n";
  std::string body;
  pb::TextFormat::PrintToString(record, &body);
  text += body;
  if (seal.key) {
    FJORD_RETURN_IF_ERROR(WriteSealedFile((fs::path(dir) / kCheckpointTenantSeal).string(),
                                          {{text.data(), text.size()}}, *seal.key,
                                          CheckpointContext(seal, kCheckpointTenantSeal)));
  }
  return WriteFileAtomic((fs::path(dir) / kCheckpointTenantRecord).string(), {{text.data(), text.size()}},
                         seal.tenant.empty() ? 0644 : 0600);
}

StatusOr<proto::CheckpointTenancy> ReadCheckpointTenantRecord(const std::string& dir) {
  const std::string path = (fs::path(dir) / kCheckpointTenantRecord).string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("checkpoint " + dir + " has no " + kCheckpointTenantRecord);
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "checkpoint tenant record"));
  proto::CheckpointTenancy record;
  FJORD_RETURN_IF_ERROR(ParseTextProto(text, path, &record, "proto/tenancy.proto"));
  return record;
}

namespace {

// Whether the file at `path` starts with the sealed-file magic (false when it cannot be read).
bool FileIsSealed(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[sizeof(kSealMagic)] = {};
  in.read(magic, sizeof(magic));
  return in && IsSealed(std::string_view(magic, sizeof(magic)));
}

// The checkpoint a record describes, as the seal that reads its files.
CheckpointSeal IdentityOf(const proto::CheckpointTenancy& record) {
  CheckpointSeal id;
  id.tenant = record.tenant();
  id.job_sha256 = record.job_sha256();
  id.step = record.has_step() ? record.step() : -1;
  return id;
}

// Versions this fjord reads: 2; 1 only for a plaintext checkpoint (its files were never bound to
// their checkpoint, and plaintext records are not authenticated in any version).
Status CheckRecordVersion(const std::string& what, const proto::CheckpointTenancy& record) {
  if (record.version() > kCheckpointTenantRecordVersion) {
    return FailedPrecondition(what + ": its " + kCheckpointTenantRecord + " is version " +
                              std::to_string(record.version()) + ", newer than this fjord reads (" +
                              std::to_string(kCheckpointTenantRecordVersion) +
                              "); open it with the fjord release that wrote it");
  }
  if (!record.encrypted()) return OkStatus();
  if (record.version() < kCheckpointTenantRecordVersion) {
    return FailedPrecondition(
        what + " is encrypted under " + kCheckpointTenantRecord + " version " +
        std::to_string(record.version()) +
        " (written by an older fjord), whose sealed files are not bound to their step and job: a file copied "
        "in "
        "from another checkpoint of the same tenant could not be told apart, so this fjord refuses it. Open "
        "it "
        "with the fjord release that wrote it, inside its residency, and start a new job from its weights "
        "(train.init_from), or resume from a checkpoint written by this release");
  }
  const std::string& job = record.job_sha256();
  if (job.size() != 64 || job.find_first_not_of("0123456789abcdef") != std::string::npos ||
      !record.has_step() || record.step() < 0) {
    return DataLoss(
        what + ": " + kCheckpointTenantRecord +
        " lacks a valid job_sha256 (64 hex digits) or step, which every encrypted version 2 record "
        "has; it was edited: restore the checkpoint from a copy you trust");
  }
  return OkStatus();
}

// An encrypted checkpoint's record against its sealed copy, opened with `key` and the record's own
// tenant, job and step: an edited record, or a tenant.seal of another checkpoint, is DataLoss.
// Returns the record parsed from the authenticated text.
StatusOr<proto::CheckpointTenancy> AuthenticateTenantRecord(const std::string& dir,
                                                            const proto::CheckpointTenancy& record,
                                                            const EncryptionKey& key) {
  const std::string what = "checkpoint " + dir;
  const std::string record_path = (fs::path(dir) / kCheckpointTenantRecord).string();
  FJORD_ASSIGN_OR_RETURN(std::string record_text, ReadWholeFile(record_path, "tenant record"));
  const std::string seal_path = (fs::path(dir) / kCheckpointTenantSeal).string();
  if (!fs::exists(seal_path)) {
    return DataLoss(what + " is encrypted but its " + kCheckpointTenantSeal + " (the sealed copy of " +
                    kCheckpointTenantRecord +
                    ") is missing, so the tenant record cannot be trusted; "
                    "restore the checkpoint from a copy you trust");
  }
  const CheckpointSeal id = IdentityOf(record);
  StatusOr<std::string> sealed_record =
      ReadSealedFile(seal_path, key, CheckpointContext(id, kCheckpointTenantSeal));
  if (!sealed_record.ok()) {
    return DataLoss(what + ": " + kCheckpointTenantSeal +
                    " does not authenticate as the sealed record of the checkpoint of " +
                    CheckpointIdentity(id) + " (" + sealed_record.status().message() + "), so " +
                    kCheckpointTenantRecord + " cannot be trusted: the record was edited, or " +
                    kCheckpointTenantSeal +
                    " was copied from another checkpoint; restore the checkpoint from a copy you trust");
  }
  if (*sealed_record != record_text) {
    return DataLoss("checkpoint file " + record_path +
                    " was modified after the checkpoint was written: it differs from its sealed copy " +
                    kCheckpointTenantSeal + "; restore the checkpoint from a copy you trust");
  }
  proto::CheckpointTenancy authenticated;
  FJORD_RETURN_IF_ERROR(ParseTextProto(*sealed_record, seal_path, &authenticated, "proto/tenancy.proto"));
  return authenticated;
}

// The step a step_N directory name claims, or -1 for any other name.
int64_t StepOfDirName(const std::string& dir) {
  fs::path p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  if (!name.starts_with("step_") || name.size() == 5 || name.size() > 5 + 18 ||
      name.find_first_not_of("0123456789", 5) != std::string::npos) {
    return -1;
  }
  return std::stoll(name.substr(5));
}

// Every file the record lists, sealed or not, against the SHA-256 it records. Names must be plain
// names of regular files inside `dir` (no symbolic links): a record must not make the reader open
// or hash anything outside the checkpoint.
Status CheckRecordedDigests(const std::string& dir, const proto::CheckpointTenancy& record,
                            const std::string& what) {
  for (const proto::FileDigest& f : record.file()) {
    if (!IsPlainFileName(f.name())) {
      return DataLoss(
          what + ": " + kCheckpointTenantRecord + " lists the file name " + JsonQuote(f.name()) +
          ", which is not a plain file name inside the checkpoint; refusing to open it. The record "
          "was edited: restore the checkpoint from a copy you trust");
    }
    const std::string path = (fs::path(dir) / f.name()).string();
    std::error_code ec;
    const fs::file_status st = fs::symlink_status(path, ec);
    if (fs::exists(st) && !fs::is_regular_file(st)) {
      return DataLoss(
          what + ": " + f.name() + " (listed in " + kCheckpointTenantRecord + ") is " +
          (fs::is_symlink(st) ? "a symbolic link" : "not a regular file") +
          ", not the file the checkpoint was written with; restore the checkpoint from a copy you trust");
    }
    StatusOr<std::string> digest = Sha256File(path, "checkpoint file");
    if (!digest.ok()) {
      return FailedPrecondition(what + ": " + f.name() + " is listed in " + kCheckpointTenantRecord +
                                " but cannot be read (" + digest.status().message() +
                                "): the checkpoint is incomplete; restore it from a copy you trust");
    }
    if (*digest != f.sha256()) {
      std::string of = f.name();
      if (record.version() >= 2) of += " of the checkpoint of " + CheckpointIdentity(IdentityOf(record));
      return DataLoss("checkpoint file " + path +
                      " was modified after the checkpoint was written, or replaced by a file of another "
                      "checkpoint: its SHA-256 is " +
                      *digest + " but " + kCheckpointTenantRecord + " records " + f.sha256() + " for " + of +
                      "; restore the checkpoint from a copy you trust");
    }
  }
  return OkStatus();
}

AuditRecord CheckpointRefusalRecord(const std::string& dir, CheckpointUse use, const Status& status) {
  return AuditRecord()
      .Str("gate", "checkpoint")
      .Str("dir", dir)
      .Str("use", CheckpointUseName(use))
      .Str("message", status.message());
}

}  // namespace

StatusOr<CheckpointSeal> CheckCheckpointTenant(const std::string& dir, const CheckpointSeal& job_seal,
                                               const proto::NodeIdentity* node, CheckpointUse use) {
  const std::string what = "checkpoint " + dir;
  StatusOr<proto::CheckpointTenancy> read = ReadCheckpointTenantRecord(dir);
  if (!read.ok() && read.status().code() != StatusCode::kNotFound) return read.status();
  const bool has_record = read.ok();
  proto::CheckpointTenancy record = has_record ? *read : proto::CheckpointTenancy();
  const std::string job_tenant = job_seal.tenant;
  CheckpointSeal seal = job_seal;

  if (!record.tenant().empty() && record.tenant() != job_tenant) {
    if (job_tenant.empty()) {
      return FailedPrecondition(what + " belongs to tenant " + Quoted(record.tenant()) + " (" +
                                kCheckpointTenantRecord + ") but this job has no tenant: add tenant { id: " +
                                Quoted(record.tenant()) + " } and its residency to the job spec to use it");
    }
    return FailedPrecondition(what + " belongs to tenant " + Quoted(record.tenant()) + " (" +
                              kCheckpointTenantRecord + ") but this job is tenant " + Quoted(job_tenant) +
                              ": a tenant may load only its own checkpoints; point the job at one of its own "
                              "(checkpoint.dir, train.init_from)");
  }
  if (record.tenant().empty() && !job_tenant.empty() && use == CheckpointUse::kResume) {
    return FailedPrecondition(
        what + " has no tenant record (" + kCheckpointTenantRecord +
        "): it was not written by a job of tenant " + Quoted(job_tenant) +
        ", so this job will not resume from it; to start from public or imported weights "
        "use train.init_from");
  }
  if (node != nullptr && record.allowed_jurisdictions_size() > 0) {
    ResidencyPolicy where;
    where.tenant = record.tenant().empty() ? "(untenanted)" : record.tenant();
    where.jurisdictions = ToVector(record.allowed_jurisdictions());
    where.sites = ToVector(record.allowed_sites());
    if (std::string why = where.WhyNot(node->jurisdiction(), node->site()); !why.empty()) {
      return FailedPrecondition(what + " of tenant " + Quoted(record.tenant()) + " may be opened only in " +
                                where.Describe() + ", but this node (" + node->hostname() +
                                ") is in jurisdiction " + node->jurisdiction() + ", site " + node->site() +
                                ": " + why + "; load it on a node inside its residency");
    }
  }
  if (record.encrypted()) {
    if (!job_seal.key) {
      return FailedPrecondition(what + " is encrypted (" + record.cipher() + ", key id " + record.key_id() +
                                ") but the job has no checkpoint.encryption_key_file: set it to tenant " +
                                Quoted(record.tenant()) + "'s key");
    }
    FJORD_ASSIGN_OR_RETURN(const std::string key_id, job_seal.key->KeyId());
    if (key_id != record.key_id()) {
      return FailedPrecondition(what + " was encrypted with key id " + record.key_id() + " but " +
                                job_seal.key_source + " holds key id " + key_id +
                                ": wrong key; use the key this tenant's checkpoints were written with");
    }
    FJORD_RETURN_IF_ERROR(CheckRecordVersion(what, record));
    // The record is plaintext; its sealed copy says whether it is the one the job wrote.
    FJORD_ASSIGN_OR_RETURN(record, AuthenticateTenantRecord(dir, record, *job_seal.key));
  } else {
    if (job_seal.key && use == CheckpointUse::kResume) {
      return FailedPrecondition(
          what +
          " is not encrypted, but this job encrypts its checkpoints "
          "(checkpoint.encryption_key_file is set): refusing to resume from a plaintext "
          "checkpoint, which may have been substituted. Resume from an encrypted "
          "checkpoint of this tenant");
    }
    if (has_record) FJORD_RETURN_IF_ERROR(CheckRecordVersion(what, record));
    seal.key = nullptr;  // plain files are read as they are
  }
  // A record of a step_N directory holds step N: a renamed directory, or one whose files (record,
  // seal and all) were replaced by another checkpoint's, is refused.
  if (const int64_t named = StepOfDirName(dir); named >= 0 && record.has_step() && record.step() != named) {
    return DataLoss(what + " is named for step " + std::to_string(named) + " but its " +
                    kCheckpointTenantRecord + " was written for step " + std::to_string(record.step()) +
                    ": the directory was renamed or its files replaced by another checkpoint's; restore the "
                    "checkpoint from a copy you trust");
  }
  // Every listed file, sealed ones too: a sealed file of another checkpoint differs in its digest
  // here before it would fail authentication when read.
  FJORD_RETURN_IF_ERROR(CheckRecordedDigests(dir, record, what));
  const CheckpointSeal id = IdentityOf(record);
  seal.job_sha256 = id.job_sha256;
  seal.step = id.step;
  seal.audit_log = record.audit_head().log();
  return seal;
}

StatusOr<proto::AuditAnchor> ReadCheckpointAuditAnchor(const std::string& dir, const EncryptionKey* key) {
  FJORD_ASSIGN_OR_RETURN(proto::CheckpointTenancy record, ReadCheckpointTenantRecord(dir));
  if (key != nullptr) {
    if (!record.encrypted()) {
      return FailedPrecondition("checkpoint " + dir + " is not encrypted: its " + kCheckpointTenantRecord +
                                " cannot be authenticated with a key; read its anchor without one");
    }
    FJORD_RETURN_IF_ERROR(CheckRecordVersion("checkpoint " + dir, record));
    FJORD_ASSIGN_OR_RETURN(record, AuthenticateTenantRecord(dir, record, *key));
  }
  if (!record.has_audit_head()) {
    return NotFound("checkpoint " + dir + ": its " + kCheckpointTenantRecord +
                    " anchors no audit log (written without a tenancy context, or by an older fjord)");
  }
  return record.audit_head();
}

const char* CheckpointUseName(CheckpointUse use) {
  switch (use) {
    case CheckpointUse::kResume:
      return "resume";
    case CheckpointUse::kInitFrom:
      return "init_from";
    case CheckpointUse::kEval:
      return "eval";
    case CheckpointUse::kSample:
      return "sample";
    case CheckpointUse::kExport:
      return "export";
  }
  return "?";
}

// ---- Gate 3 for commands outside a training job -------------------------------------------

StatusOr<OpenedCheckpoint> OpenCheckpointOutsideJob(const std::string& dir, const proto::JobSpec& job,
                                                    const CheckpointAccess& access) {
  const std::string command = std::string("fjord ") + CheckpointUseName(access.use);
  const std::string what = "checkpoint " + dir;
  StatusOr<proto::CheckpointTenancy> read = ReadCheckpointTenantRecord(dir);
  if (!read.ok() && read.status().code() != StatusCode::kNotFound) return read.status();
  OpenedCheckpoint opened;
  opened.seal.key_source = "--key " + access.key_file;
  if (!read.ok()) {
    // No tenant record: a plain checkpoint of a job without tenant (or one whose record is gone).
    if (FileIsSealed((fs::path(dir) / "model.bin").string())) {
      return FailedPrecondition(what + ": model.bin is encrypted but " + kCheckpointTenantRecord +
                                " is missing, so its tenant and key cannot be checked; restore the "
                                "checkpoint from a copy you trust");
    }
    if (!access.key_file.empty()) {
      return FailedPrecondition(what + " is not encrypted (it has no " + kCheckpointTenantRecord +
                                "), but --key was given: a plaintext checkpoint where a sealed one was "
                                "expected may have been substituted; refusing it. Drop --key to read a "
                                "plaintext checkpoint");
    }
    return opened;
  }
  const proto::CheckpointTenancy& record = *read;
  opened.tenant = record.tenant();
  if (!record.tenant().empty()) KeepNewFilesPrivate();  // exports, the audit log: the tenant's only

  // The audit logs first: every later refusal and the opening itself are recorded. The
  // checkpoint's own chain is the log its record anchors (else its job's), which no flag can move;
  // --audit-log is a second copy. (Until the record is authenticated below, an attacker who can
  // write the checkpoint can point a refusal elsewhere; an opening is recorded only after.)
  const std::string host = ThisHostname();
  const std::string actor = std::string(CheckpointUseName(access.use)) + "@" + host;
  const std::string own_log =
      record.audit_head().log().empty() ? AuditPathFor(job) : record.audit_head().log();
  Status own_status = OkStatus(), extra_status = OkStatus();
  if (StatusOr<std::unique_ptr<AuditLog>> own = AuditLog::Open(own_log, actor, /*create_parent=*/false);
      own.ok()) {
    opened.audit.push_back(std::move(*own));
  } else {
    own_status = own.status();
  }
  if (!access.audit_log.empty() && !SameFile(access.audit_log, own_log)) {
    if (StatusOr<std::unique_ptr<AuditLog>> extra = AuditLog::Open(access.audit_log, actor); extra.ok()) {
      opened.audit.push_back(std::move(*extra));
    } else {
      extra_status = extra.status();
    }
  }
  auto refuse = [&](const Status& status) -> Status { return opened.Refuse(dir, access.use, status); };

  const std::string owner =
      record.tenant().empty() ? std::string("a job without tenant") : "tenant " + Quoted(record.tenant());
  // The job that wrote the checkpoint stands in for the job that reads it; the key is --key's.
  CheckpointSeal job_seal;
  job_seal.tenant = job.tenant().id();
  job_seal.allowed_jurisdictions = ToVector(job.residency().allowed_jurisdictions());
  job_seal.allowed_sites = ToVector(job.residency().allowed_sites());
  job_seal.key_source = opened.seal.key_source;
  if (!access.key_file.empty()) {
    StatusOr<EncryptionKey> key = LoadEncryptionKey(access.key_file, "--key");
    if (!key.ok()) return refuse(key.status());
    job_seal.key = std::make_shared<const EncryptionKey>(std::move(*key));
  }
  if (record.encrypted() && !job_seal.key) {
    return refuse(FailedPrecondition(what + " is sealed for " + owner + " (" + record.cipher() + ", key id " +
                                     record.key_id() +
                                     "): pass --key FILE with that tenant's checkpoint key "
                                     "(the job's checkpoint.encryption_key_file) to " +
                                     command + " it"));
  }
  if (!record.encrypted() && job_seal.key) {
    return refuse(FailedPrecondition(what + " of " + owner +
                                     " is not encrypted, but --key was given: a "
                                     "plaintext checkpoint where a sealed one was expected may have been "
                                     "substituted; refusing it. Drop --key to read a plaintext checkpoint"));
  }
  std::optional<LocalNode> node;
  if (record.allowed_jurisdictions_size() > 0) {
    StatusOr<LocalNode> local = ReadNodeIdentity();
    if (!local.ok()) {
      ResidencyPolicy where;
      where.tenant = record.tenant();
      where.jurisdictions = ToVector(record.allowed_jurisdictions());
      where.sites = ToVector(record.allowed_sites());
      return refuse(FailedPrecondition(what + " of " + owner + " may be opened only in " + where.Describe() +
                                       ", and " + command + " cannot establish where this host (" + host +
                                       ") is: " + local.status().message()));
    }
    node = std::move(*local);
  }
  StatusOr<CheckpointSeal> seal =
      CheckCheckpointTenant(dir, job_seal, node ? &node->identity : nullptr, access.use);
  if (!seal.ok()) return refuse(seal.status());
  if (!own_status.ok()) {
    return refuse(FailedPrecondition(
        command + " of " + what + " (" + owner + ") must be recorded in the checkpoint's own audit log " +
        own_log + " (the log of the job that wrote it), but " + own_status.message() +
        ": run it where that log is (the job's run_dir, on its file system); --audit-log records a copy "
        "elsewhere, not instead"));
  }
  if (!extra_status.ok()) {
    return refuse(FailedPrecondition(command + " of " + what + ": --audit-log " + access.audit_log + ": " +
                                     extra_status.message()));
  }
  AuditRecord rec;
  rec.Str("dir", dir)
      .Str("use", CheckpointUseName(access.use))
      .Str("tenant", record.tenant())
      .Bool("encrypted", record.encrypted())
      .Str("host", host);
  if (record.encrypted()) rec.Str("key_id", record.key_id());
  if (node) {
    rec.Str("jurisdiction", node->identity.jurisdiction())
        .Str("site", node->identity.site())
        .Str("identity_file", node->path)
        .Bool("override", node->overridden);
  }
  if (!record.identity_override().empty()) rec.Str("writer_identity_override", record.identity_override());
  if (Status s = opened.Record("checkpoint_opened", rec); !s.ok()) return refuse(s);
  opened.seal = std::move(*seal);
  return opened;
}

Status OpenedCheckpoint::Record(std::string_view event, const AuditRecord& fields) const {
  Status first = OkStatus();
  for (const std::unique_ptr<AuditLog>& log : audit) {
    Status s = log->Append(event, fields).status();
    if (first.ok() && !s.ok()) first = s;
  }
  return first;
}

Status OpenedCheckpoint::Refuse(const std::string& dir, CheckpointUse use, const Status& status) const {
  (void)Record("refusal", CheckpointRefusalRecord(dir, use, status));
  return status;
}

// ---- Tenancy context ------------------------------------------------------------------------

StatusOr<std::unique_ptr<Tenancy>> Tenancy::Start(const proto::JobSpec& job, const RankGateResult& gate,
                                                  Communicator& comm) {
  std::unique_ptr<Tenancy> t(new Tenancy());
  t->policy_ = PolicyOf(job);
  if (!t->policy_.tenant.empty()) KeepNewFilesPrivate();  // run dir, metrics, checkpoints, audit log
  FJORD_ASSIGN_OR_RETURN(const std::string digest, JobDigest(job));
  const std::string host = ThisHostname();
  const int rank = comm.rank(), world = comm.size();
  if (gate.enabled) {
    t->node_ = gate.node.identity;
    t->has_node_ = true;
  }
  // The checkpoint key first: a job that cannot seal its checkpoints must not start.
  StatusOr<CheckpointSeal> seal = CheckpointSealFor(job);
  if (!seal.ok()) {
    if (rank == 0) {
      StatusOr<std::unique_ptr<AuditLog>> audit = AuditLog::Open(AuditPathFor(job), "rank0@" + host);
      if (audit.ok()) {
        (void)(*audit)->Append(
            "refusal", AuditRecord().Str("gate", "checkpoint_key").Str("message", seal.status().message()));
      }
    }
    return seal.status();
  }
  t->seal_ = std::move(*seal);

  // This rank's identity check; every rank gets every rank's.
  proto::RankIdentityCheck mine;
  mine.set_rank(rank);
  mine.set_host(host);
  mine.set_job_sha256(digest);
  mine.set_checked(gate.enabled);
  if (gate.enabled) {
    mine.set_identity_host(gate.node.identity.hostname());
    mine.set_jurisdiction(gate.node.identity.jurisdiction());
    mine.set_site(gate.node.identity.site());
    mine.set_identity_file(gate.node.path);
    mine.set_override(gate.node.overridden);
    mine.set_allowed(true);
  }
  // Test hooks (FJORD_TEST_HOOK) change what a rank does; each rank's are recorded with its check.
  if (const std::optional<std::string> hooks = GetEnv("FJORD_TEST_HOOK")) mine.set_test_hook(*hooks);
  StatusOr<std::vector<std::string>> gathered = AllGatherStrings(comm, mine.SerializeAsString());
  if (!gathered.ok()) return gathered.status().WithContext("gathering the ranks' identity checks");
  std::vector<proto::RankIdentityCheck> checks(gathered->size());
  std::vector<std::string> differing;
  std::vector<std::pair<int, std::string>> overrides;
  std::string hook_list;  // [{"rank":R,"value":"..."}] of the ranks with FJORD_TEST_HOOK set
  for (size_t r = 0; r < checks.size(); ++r) {
    proto::RankIdentityCheck& check = checks[r];
    if (!check.ParseFromString((*gathered)[r])) {
      return Internal("the identity check gathered from rank " + std::to_string(r) +
                      " is not a RankIdentityCheck");
    }
    if (check.job_sha256() != digest) differing.push_back(std::to_string(r) + " on " + check.host());
    if (check.override()) overrides.emplace_back(static_cast<int>(r), check.identity_file());
    if (check.has_test_hook()) {
      hook_list += std::string(hook_list.empty() ? "[" : ",") + "{\"rank\":" + std::to_string(r) +
                   ",\"value\":" + JsonQuote(check.test_hook()) + "}";
    }
  }

  if (rank == 0) {
    FJORD_ASSIGN_OR_RETURN(t->audit_, AuditLog::Open(AuditPathFor(job), "rank0@" + host));
    AuditRecord start;
    start.Str("tenant", t->policy_.tenant)
        .Str("job_sha256", digest)
        .Int("world_size", world)
        .Raw("allowed_jurisdictions", JsonQuoteList(t->policy_.jurisdictions))
        .Raw("allowed_sites", JsonQuoteList(t->policy_.sites))
        .Str("run_dir", job.run_dir())
        .Str("data_train", job.data().train())
        .Str("data_val", job.data().val())
        .Bool("allow_unmanifested", job.data().allow_unmanifested())
        .Bool("checkpoint_encryption", !job.checkpoint().encryption_key_file().empty())
        .Str("launch_id", GetEnv("FJORD_LAUNCH_ID").value_or(""));
    FJORD_RETURN_IF_ERROR(t->audit_->Append("job_start", start).status());
    if (!t->policy_.enabled()) {
      FJORD_RETURN_IF_ERROR(
          t->audit_
              ->Append("no_tenant", AuditRecord().Str("note",
                                                      "the job has no tenant.id: no residency gates, "
                                                      "manifests or checkpoint tenant checks apply"))
              .status());
    } else {
      pb::util::JsonPrintOptions json;
      json.preserve_proto_field_names = true;
      for (const proto::RankIdentityCheck& check : checks) {
        std::string text;
        if (const auto printed = pb::util::MessageToJsonString(check, &text, json); !printed.ok()) {
          return Internal("cannot write rank " + std::to_string(check.rank()) +
                          "'s identity check as JSON: " + std::string(printed.message()));
        }
        FJORD_RETURN_IF_ERROR(t->audit_->Append("rank_identity", AuditRecord().Raw("check", text)).status());
      }
    }
    if (!overrides.empty()) {
      std::string list = "[";
      for (size_t i = 0; i < overrides.size(); ++i) {
        list += std::string(i ? "," : "") + "{\"rank\":" + std::to_string(overrides[i].first) +
                ",\"path\":" + JsonQuote(overrides[i].second) + "}";
      }
      list += "]";
      FJORD_RETURN_IF_ERROR(
          t->audit_
              ->Append("test_override", AuditRecord()
                                            .Str("variable", "FJORD_NODE_IDENTITY")
                                            .Str("note", std::string("node identities were read from "
                                                                     "files named by the environment, "
                                                                     "not from ") +
                                                             kDefaultNodeIdentityPath)
                                            .Raw("ranks", list))
              .status());
    }
    if (!hook_list.empty()) {
      FJORD_RETURN_IF_ERROR(
          t->audit_
              ->Append(
                  "test_override",
                  AuditRecord()
                      .Str("variable", "FJORD_TEST_HOOK")
                      .Str("note", "test hooks were active: faults, delays or signals injected for a test")
                      .Raw("ranks", hook_list + "]"))
              .status());
    }
  }
  if (!differing.empty()) {
    // Every rank is here (a rank whose spec differs sees all others differ), so the job specs can be
    // gathered; rank 0 names the fields, once, against each rank that differs from it.
    StatusOr<std::vector<std::string>> specs = AllGatherStrings(comm, job.SerializeAsString());
    std::string fields;
    if (rank == 0 && specs.ok()) {
      for (size_t r = 1; r < specs->size(); ++r) {
        proto::JobSpec other;
        if (!other.ParseFromString((*specs)[r])) continue;
        std::string report;
        pb::util::MessageDifferencer differencer;
        differencer.ReportDifferencesToString(&report);
        if (differencer.Compare(job, other)) continue;
        std::string lines;
        std::istringstream in(report);
        for (std::string line; std::getline(in, line);) lines += (lines.empty() ? "" : "; ") + line;
        fields += "\n  rank " + std::to_string(r) + " against rank 0: " + lines;
      }
    }
    const std::string message =
        "rank(s) " + JoinList(differing) + " were started with a different job spec than rank " +
        std::to_string(rank) + " (sha256 " + digest +
        "): every rank must get the same job spec; start the job with fjord launch, or give "
        "every rank the same file and --set overrides" +
        (fields.empty() ? (rank == 0 ? "" : " (rank 0 names the fields that differ)")
                        : "; the fields:" + fields);
    if (t->audit_)
      (void)t->audit_->Append("refusal", AuditRecord().Str("gate", "job_spec").Str("message", message));
    return FailedPrecondition(message);
  }

  t->seal_.node = t->node_;
  if (gate.enabled && gate.node.overridden) t->seal_.identity_override = gate.node.path;
  if (t->audit_) t->seal_.audit_log = t->audit_->path();
  DataPolicy& dp = t->data_policy_;
  dp.tenant = t->policy_.tenant;
  dp.host = host;
  dp.jurisdiction = t->node_.jurisdiction();
  dp.site = t->node_.site();
  dp.allow_unmanifested = job.data().allow_unmanifested();
  dp.audit = t->audit_.get();
  return t;
}

StatusOr<CheckpointSeal> Tenancy::CheckCheckpoint(const std::string& dir, CheckpointUse use) const {
  StatusOr<CheckpointSeal> seal = CheckCheckpointTenant(dir, seal_, has_node_ ? &node_ : nullptr, use);
  if (!audit_) return seal;
  // The checkpoint's own chain, when it is not this job's log (init_from another job's checkpoint).
  std::unique_ptr<AuditLog> chain;
  if (seal.ok() && !seal->audit_log.empty() && !SameFile(seal->audit_log, audit_->path())) {
    StatusOr<std::unique_ptr<AuditLog>> opened = AuditLog::Open(seal->audit_log, audit_->actor(), false);
    if (opened.ok()) {
      chain = std::move(*opened);
    } else {
      seal = FailedPrecondition(std::string(CheckpointUseName(use)) + " of checkpoint " + dir +
                                " must be recorded in its own audit log " + seal->audit_log +
                                " (anchored in its tenant record), but " + opened.status().message() +
                                ": run the job where that log is reachable");
    }
  }
  for (AuditLog* log : {audit_.get(), chain.get()}) {
    if (log == nullptr) continue;
    if (seal.ok()) {
      FJORD_RETURN_IF_ERROR(log->Append("checkpoint_opened", AuditRecord()
                                                                 .Str("dir", dir)
                                                                 .Str("use", CheckpointUseName(use))
                                                                 .Str("tenant", seal_.tenant)
                                                                 .Bool("encrypted", seal->key != nullptr)
                                                                 .Int("step", seal->step))
                                .status());
    } else {
      (void)log->Append("refusal", CheckpointRefusalRecord(dir, use, seal.status()));
    }
  }
  return seal;
}

Status Tenancy::RecordCheckpointWritten(const std::string& dir) const {
  if (!audit_) return OkStatus();
  AuditRecord rec;
  rec.Str("dir", dir).Str("tenant", seal_.tenant).Bool("encrypted", seal_.key != nullptr);
  if (seal_.key) {
    FJORD_ASSIGN_OR_RETURN(const std::string key_id, seal_.key->KeyId());
    rec.Str("key_id", key_id);
  }
  StatusOr<proto::CheckpointTenancy> record = ReadCheckpointTenantRecord(dir);
  std::string files = "[";
  if (record.ok()) {
    for (int i = 0; i < record->file_size(); ++i) {
      const proto::FileDigest& f = record->file(i);
      files += std::string(i ? "," : "") + "{\"name\":" + JsonQuote(f.name()) +
               ",\"sha256\":" + JsonQuote(f.sha256()) + ",\"bytes\":" + std::to_string(f.bytes()) + "}";
    }
    FJORD_ASSIGN_OR_RETURN(std::string record_digest,
                           Sha256File((fs::path(dir) / kCheckpointTenantRecord).string(), "tenant record"));
    rec.Str("tenant_record_sha256", record_digest);
  }
  files += "]";
  rec.Raw("files", files);
  return audit_->Append("checkpoint_written", rec).status();
}

Status Tenancy::RecordJobEnd(const Status& result, int signal) const {
  if (!audit_ || job_end_recorded_.exchange(true)) return OkStatus();
  AuditRecord rec;
  rec.Bool("ok", result.ok());
  if (!result.ok()) rec.Str("error", result.message());
  if (signal != 0) rec.Int("signal", signal);
  return audit_->Append("job_end", rec).status();
}

}  // namespace fjord
