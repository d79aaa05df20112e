// Tenancy: node identity, residency checks, the rank gate, the checkpoint gate and the per-rank
// context. Every refusal says what was found, where (rank, host, file), what was allowed and what
// to do; every decision that matters to an auditor goes to the audit log (rank 0, or the refusing
// rank itself before communicators exist).
#include "runtime/tenancy.h"

#include <google/protobuf/io/tokenizer.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>

#include "common/env.h"
#include "runtime/json.h"

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

class CollectingErrors : public pb::io::ErrorCollector {
 public:
  explicit CollectingErrors(std::string_view text) : text_(text) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first_.empty()) return;
    // Protobuf reports an unknown field at the token after it; point at the name itself.
    const std::string key = "has no field named \"";
    if (size_t k = message.find(key); k != std::string::npos) {
      const std::string name =
          message.substr(k + key.size(), message.find('"', k + key.size()) - k - key.size());
      size_t begin = 0;
      for (int i = 0; i < line && begin != std::string_view::npos; ++i) {
        begin = text_.find('\n', begin);
        if (begin != std::string_view::npos) ++begin;
      }
      if (begin != std::string_view::npos) {
        const size_t at = text_.substr(begin, static_cast<size_t>(std::max(column, 0))).rfind(name);
        if (at != std::string_view::npos) column = static_cast<int>(at);
      }
    }
    std::string m = message;
    while (!m.empty() && m.back() == '.') m.pop_back();
    first_ = std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + m;
  }
  const std::string& first() const { return first_; }

 private:
  std::string_view text_;
  std::string first_;
};

bool Contains(const std::vector<std::string>& items, std::string_view x) {
  return std::find(items.begin(), items.end(), x) != items.end();
}

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  out += s;
  out += '"';
  return out;
}

std::string UtcNow() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string ShortName(std::string_view host) { return std::string(host.substr(0, host.find('.'))); }

std::string ModeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// A JSON array of strings.
std::string JsonList(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += JsonQuote(items[i]);
  }
  return out + "]";
}

template <typename Repeated>
std::vector<std::string> ToVector(const Repeated& r) {
  return std::vector<std::string>(r.begin(), r.end());
}

// Root owns it and nobody else may write it.
std::string OwnershipProblem(const std::string& path, const char* what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::string(what) + " " + path + ": " + std::strerror(errno);
  if (st.st_uid != 0) {
    return std::string(what) + " " + path + " is owned by uid " + std::to_string(st.st_uid) + ", not root";
  }
  if ((st.st_mode & 022) != 0) {
    return std::string(what) + " " + path + " is writable by group or others (mode " + ModeText(st.st_mode) +
           ")";
  }
  return "";
}

std::string CheckpointContext(const std::string& tenant, const std::string& path) {
  return "fjord-checkpoint-v1\ntenant=" + tenant + "\nfile=" + fs::path(path).filename().string();
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

Status ParseTextProto(std::string_view text, const std::string& source, pb::Message* out,
                      const std::string& schema, pb::TextFormat::ParseInfoTree* tree) {
  pb::TextFormat::Parser parser;
  CollectingErrors errors(text);
  parser.RecordErrorsTo(&errors);
  if (tree != nullptr) parser.WriteLocationsTo(tree);
  if (!parser.ParseFromString(std::string(text), out)) {
    return InvalidArgument(
        source + ":" + (errors.first().empty() ? std::string("1:1: cannot parse") : errors.first()) +
        ". The file is protobuf text format of " + out->GetDescriptor()->full_name() + " (" + schema + ")");
  }
  return OkStatus();
}

std::string FieldLocation(const std::string& source, const pb::TextFormat::ParseInfoTree* tree,
                          const pb::Message& message, const std::string& name, int index) {
  const pb::FieldDescriptor* f = message.GetDescriptor()->FindFieldByName(name);
  if (tree == nullptr || f == nullptr) return source;
  const pb::TextFormat::ParseLocation loc = tree->GetLocation(f, index);
  if (loc.line < 0) return source;
  return source + ":" + std::to_string(loc.line + 1) + ":" + std::to_string(loc.column + 1);
}

std::vector<std::string> SplitList(std::string_view list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string_view::npos) end = list.size();
    std::string_view item = list.substr(start, end - start);
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.front()))) item.remove_prefix(1);
    while (!item.empty() && std::isspace(static_cast<unsigned char>(item.back()))) item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    start = end + 1;
  }
  return out;
}

std::string JoinList(const std::vector<std::string>& items, const std::string& empty) {
  if (items.empty()) return empty;
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
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

std::string JobDigest(const proto::JobSpec& job) {
  std::string text;
  pb::TextFormat::Printer printer;
  printer.PrintToString(job, &text);
  return Sha256Hex(text);
}

std::string ThisHostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown-host";
  return buf;
}

// ---- Node identity --------------------------------------------------------------------------

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

StatusOr<LocalNode> ReadNodeIdentityFile(const std::string& path, bool strict) {
  const std::string what = "node identity " + path;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return NotFound(what +
                      ": no such file: this node has not been provisioned for tenant jobs; the operator "
                      "writes it as root at provisioning (docs/SOVEREIGNTY.md, \"Node identity\")");
    }
    return FailedPrecondition(what + ": " + std::strerror(errno) + "; check the path and its permissions");
  }
  if (!S_ISREG(st.st_mode)) return FailedPrecondition(what + " is not a regular file");
  if (strict) {
    std::string problem = OwnershipProblem(path, "node identity");
    if (problem.empty()) problem = OwnershipProblem(fs::path(path).parent_path().string(), "its directory");
    if (!problem.empty()) {
      return FailedPrecondition(problem +
                                ": another user could change where this node claims to be. The operator "
                                "must make it root-owned and writable by root only: chown root:root " +
                                path + " && chmod 644 " + path);
    }
  }
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "node identity"));
  LocalNode node;
  node.path = path;
  node.hostname = ThisHostname();
  pb::TextFormat::ParseInfoTree tree;
  FJORD_RETURN_IF_ERROR(ParseTextProto(text, path, &node.identity, "proto/tenancy.proto", &tree));
  const proto::NodeIdentity& id = node.identity;
  const char* fix = "; the operator must correct the node identity (written at provisioning)";
  if (id.hostname().empty()) {
    return InvalidArgument(path + ": hostname is missing: write hostname: \"" + node.hostname + "\"" + fix);
  }
  if (std::string p = JurisdictionProblem(id.jurisdiction()); !p.empty()) {
    return InvalidArgument(FieldLocation(path, &tree, id, "jurisdiction") + ": jurisdiction " +
                           Quoted(id.jurisdiction()) + " " + p + fix);
  }
  if (!IsValidSiteName(id.site())) {
    return InvalidArgument(FieldLocation(path, &tree, id, "site") + ": site " + Quoted(id.site()) +
                           " is missing or not a site name (1 to 64 letters, digits, '.', '_', '-')" + fix);
  }
  return node;
}

StatusOr<LocalNode> ReadNodeIdentity() {
  bool overridden = false;
  const std::string path = NodeIdentityPath(&overridden);
  if (overridden && path.find("%n") != std::string::npos) {
    return FailedPrecondition("FJORD_NODE_IDENTITY (a test override) is " + Quoted(path) +
                              ": %n stands for the Slurm node name, but SLURMD_NODENAME is not set; %n works "
                              "only in processes started by slurmd (srun, sbatch)");
  }
  StatusOr<LocalNode> node = ReadNodeIdentityFile(path, /*strict=*/!overridden);
  if (!node.ok()) {
    if (overridden) return node.status().WithContext("FJORD_NODE_IDENTITY (a test override)");
    return node.status();
  }
  node->overridden = overridden;
  if (ShortName(node->identity.hostname()) != ShortName(node->hostname)) {
    return FailedPrecondition(
        "node identity " + path + " names host " + Quoted(node->identity.hostname()) + " but this host is " +
        Quoted(node->hostname) +
        ": the file belongs to another node (copied, or on a shared /etc); the operator must "
        "write each node's own identity");
  }
  return node;
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
      .Raw("allowed_jurisdictions", JsonList(policy.jurisdictions))
      .Raw("allowed_sites", JsonList(policy.sites));
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

Status WriteCheckpointFile(const std::string& path, const std::vector<ByteSpan>& pieces,
                           const CheckpointSeal& seal) {
  if (seal.key) return WriteSealedFile(path, pieces, *seal.key, CheckpointContext(seal.tenant, path));
  return WriteFileAtomic(path, pieces, seal.tenant.empty() ? 0644 : 0600);  // a tenant's: private
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
    return Unseal(bytes, *seal.key, CheckpointContext(seal.tenant, path), "checkpoint file " + path);
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
  proto::CheckpointTenancy record;
  record.set_version(1);
  record.set_tenant(seal.tenant);
  for (const std::string& j : seal.allowed_jurisdictions) record.add_allowed_jurisdictions(j);
  for (const std::string& s : seal.allowed_sites) record.add_allowed_sites(s);
  record.set_encrypted(seal.key != nullptr);
  if (seal.key) {
    record.set_cipher("AES-256-GCM");
    record.set_key_id(seal.key->KeyId());
  }
  for (const std::string& name : files) {
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
  std::string text =
      "# fjord checkpoint tenant record (proto/tenancy.proto CheckpointTenancy). Written by fjord train;\n"
      "# a checkpoint whose tenant differs from the job's is refused (docs/SOVEREIGNTY.md).\n";
  std::string body;
  pb::TextFormat::PrintToString(record, &body);
  text += body;
  if (seal.key) {
    FJORD_RETURN_IF_ERROR(WriteSealedFile((fs::path(dir) / kCheckpointTenantSeal).string(),
                                          {{text.data(), text.size()}}, *seal.key,
                                          CheckpointContext(seal.tenant, kCheckpointTenantSeal)));
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

// The files of checkpoint `dir` against the SHA-256 its tenant record gives them; sealed files
// are skipped with `skip_sealed` (their tags authenticate them when they are read).
Status CheckRecordedDigests(const std::string& dir, const proto::CheckpointTenancy& record, bool skip_sealed,
                            const std::string& what) {
  for (const proto::FileDigest& f : record.file()) {
    const std::string path = (fs::path(dir) / f.name()).string();
    if (skip_sealed && FileIsSealed(path)) continue;
    StatusOr<std::string> digest = Sha256File(path, "checkpoint file");
    if (!digest.ok()) {
      return FailedPrecondition(what + ": " + f.name() + " is listed in " + kCheckpointTenantRecord +
                                " but cannot be read (" + digest.status().message() +
                                "): the checkpoint is incomplete; restore it from a copy you trust");
    }
    if (*digest != f.sha256()) {
      return DataLoss("checkpoint file " + path + " was modified after the checkpoint was written: its SHA-256 is " +
                      *digest + " but " + kCheckpointTenantRecord + " records " + f.sha256() +
                      "; restore the checkpoint from a copy you trust");
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<CheckpointSeal> CheckCheckpointTenant(const std::string& dir, const CheckpointSeal& job_seal,
                                               const proto::NodeIdentity* node, CheckpointUse use) {
  const std::string what = "checkpoint " + dir;
  StatusOr<proto::CheckpointTenancy> read = ReadCheckpointTenantRecord(dir);
  if (!read.ok() && read.status().code() != StatusCode::kNotFound) return read.status();
  const bool has_record = read.ok();
  const proto::CheckpointTenancy record = has_record ? *read : proto::CheckpointTenancy();
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
    if (job_seal.key->KeyId() != record.key_id()) {
      return FailedPrecondition(what + " was encrypted with key id " + record.key_id() + " but " +
                                job_seal.key_source + " holds key id " + job_seal.key->KeyId() +
                                ": wrong key; use the key this tenant's checkpoints were written with");
    }
    // The record is plaintext; its sealed copy says whether it is the one the job wrote.
    FJORD_ASSIGN_OR_RETURN(std::string record_text,
                           ReadWholeFile((fs::path(dir) / kCheckpointTenantRecord).string(), "tenant record"));
    const std::string seal_path = (fs::path(dir) / kCheckpointTenantSeal).string();
    if (!fs::exists(seal_path)) {
      return DataLoss(what + " is encrypted but its " + kCheckpointTenantSeal + " (the sealed copy of " +
                      kCheckpointTenantRecord + ") is missing, so the tenant record cannot be trusted; "
                      "restore the checkpoint from a copy you trust");
    }
    StatusOr<std::string> sealed_record = ReadSealedFile(
        seal_path, *job_seal.key, CheckpointContext(record.tenant(), kCheckpointTenantSeal));
    if (!sealed_record.ok()) {
      return DataLoss(what + ": " + kCheckpointTenantSeal + " does not authenticate (" +
                      sealed_record.status().message() + "), so " + kCheckpointTenantRecord +
                      " cannot be trusted; restore the checkpoint from a copy you trust");
    }
    if (*sealed_record != record_text) {
      return DataLoss("checkpoint file " + (fs::path(dir) / kCheckpointTenantRecord).string() +
                      " was modified after the checkpoint was written: it differs from its sealed copy " +
                      kCheckpointTenantSeal + "; restore the checkpoint from a copy you trust");
    }
    // Files left in plaintext (job.textproto) are held to the digests of the authenticated record;
    // sealed files authenticate themselves when they are read.
    FJORD_RETURN_IF_ERROR(CheckRecordedDigests(dir, record, /*skip_sealed=*/true, what));
  } else {
    if (job_seal.key && use == CheckpointUse::kResume) {
      return FailedPrecondition(
          what +
          " is not encrypted, but this job encrypts its checkpoints "
          "(checkpoint.encryption_key_file is set): refusing to resume from a plaintext "
          "checkpoint, which may have been substituted. Resume from an encrypted "
          "checkpoint of this tenant");
    }
    seal.key = nullptr;  // plain files are read as they are
    FJORD_RETURN_IF_ERROR(CheckRecordedDigests(dir, record, /*skip_sealed=*/false, what));
  }
  return seal;
}

const char* CheckpointUseName(CheckpointUse use) {
  switch (use) {
    case CheckpointUse::kResume: return "resume";
    case CheckpointUse::kInitFrom: return "init_from";
    case CheckpointUse::kEval: return "eval";
    case CheckpointUse::kSample: return "sample";
    case CheckpointUse::kExport: return "export";
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

  // The audit log first: every later refusal and the opening itself are recorded.
  const std::string host = ThisHostname();
  const std::string log_path = access.audit_log.empty() ? AuditPathFor(job) : access.audit_log;
  StatusOr<std::unique_ptr<AuditLog>> audit =
      AuditLog::Open(log_path, std::string(CheckpointUseName(access.use)) + "@" + host,
                     /*create_parent=*/!access.audit_log.empty());
  auto refuse = [&](const Status& status) -> Status {
    return AuditCheckpointRefusal(audit.ok() ? audit->get() : nullptr, dir, access.use, status);
  };

  const std::string owner = record.tenant().empty() ? std::string("a job without tenant")
                                                    : "tenant " + Quoted(record.tenant());
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
                                     record.key_id() + "): pass --key FILE with that tenant's checkpoint key "
                                     "(the job's checkpoint.encryption_key_file) to " + command + " it"));
  }
  if (!record.encrypted() && job_seal.key) {
    return refuse(FailedPrecondition(what + " of " + owner + " is not encrypted, but --key was given: a "
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
  if (!audit.ok()) {
    return FailedPrecondition(command + " of " + what + " (" + owner + ") must be recorded in an audit log, but " +
                              audit.status().message() + ": pass --audit-log FILE to record it elsewhere");
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
  FJORD_RETURN_IF_ERROR((*audit)->Append("checkpoint_opened", rec).status());
  opened.seal = std::move(*seal);
  opened.audit = std::move(*audit);
  return opened;
}

Status AuditCheckpointRefusal(AuditLog* audit, const std::string& dir, CheckpointUse use, const Status& status) {
  if (audit != nullptr) {
    (void)audit->Append("refusal", AuditRecord()
                                       .Str("gate", "checkpoint")
                                       .Str("dir", dir)
                                       .Str("use", CheckpointUseName(use))
                                       .Str("message", status.message()));
  }
  return status;
}

// ---- Tenancy context ------------------------------------------------------------------------

namespace {

constexpr size_t kIdentityRecordBytes = 1024;

std::string Clip(std::string s, size_t n) {
  if (s.size() > n) s.resize(n);
  return s;
}

}  // namespace

StatusOr<std::unique_ptr<Tenancy>> Tenancy::Start(const proto::JobSpec& job, const RankGateResult& gate,
                                                  Communicator& comm) {
  std::unique_ptr<Tenancy> t(new Tenancy());
  t->policy_ = PolicyOf(job);
  if (!t->policy_.tenant.empty()) KeepNewFilesPrivate();  // run dir, metrics, checkpoints, audit log
  const std::string digest = JobDigest(job);
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

  // This rank's identity check, as one JSON object in a fixed-size slot.
  AuditRecord mine;
  mine.Int("rank", rank).Str("host", Clip(host, 128)).Str("job_sha256", digest).Bool("checked", gate.enabled);
  if (gate.enabled) {
    mine.Str("identity_host", Clip(gate.node.identity.hostname(), 128))
        .Str("jurisdiction", Clip(gate.node.identity.jurisdiction(), 8))
        .Str("site", Clip(gate.node.identity.site(), 64))
        .Str("identity_file", Clip(gate.node.path, 256))
        .Bool("override", gate.node.overridden)
        .Bool("allowed", true);
  }
  // Test hooks (FJORD_TEST_HOOK) change what a rank does; each rank's are recorded with its check.
  const std::optional<std::string> hooks = GetEnv("FJORD_TEST_HOOK");
  if (hooks) mine.Str("test_hook", Clip(*hooks, 96));
  std::string slot = mine.text();
  slot[0] = '{';  // the fields start with ','
  slot += '}';
  if (slot.size() >= kIdentityRecordBytes) return Internal("rank identity record too long: a bug in fjord");
  slot.resize(kIdentityRecordBytes, '\0');
  std::string all(kIdentityRecordBytes * static_cast<size_t>(world), '\0');
  if (world > 1) {
    FJORD_RETURN_IF_ERROR(comm.AllGather(slot.data(), all.data(), kIdentityRecordBytes, DataType::kU8)
                              .WithContext("gathering the ranks' identity checks"));
  } else {
    all = slot;
  }
  std::vector<std::string> records;
  std::vector<std::string> differing;
  std::vector<std::pair<int, std::string>> overrides;
  std::string hook_list;  // [{"rank":R,"value":"..."}] of the ranks with FJORD_TEST_HOOK set
  for (int r = 0; r < world; ++r) {
    std::string rec(all.data() + static_cast<size_t>(r) * kIdentityRecordBytes, kIdentityRecordBytes);
    rec.resize(std::strlen(rec.c_str()));
    StatusOr<JsonValue> json = ParseJson(rec, "identity record of rank " + std::to_string(r));
    if (!json.ok()) return Internal(json.status().message());
    const JsonValue* d = json->Find("job_sha256");
    if (d == nullptr || d->text() != digest) {
      const JsonValue* h = json->Find("host");
      differing.push_back(std::to_string(r) + " on " + (h ? h->text() : "?"));
    }
    const JsonValue* o = json->Find("override");
    if (o != nullptr && o->bool_value()) {
      const JsonValue* f = json->Find("identity_file");
      overrides.emplace_back(r, f ? f->text() : "");
    }
    if (const JsonValue* th = json->Find("test_hook")) {
      hook_list += std::string(hook_list.empty() ? "[" : ",") + "{\"rank\":" + std::to_string(r) +
                   ",\"value\":" + JsonQuote(th->text()) + "}";
    }
    records.push_back(std::move(rec));
  }

  if (rank == 0) {
    FJORD_ASSIGN_OR_RETURN(t->audit_, AuditLog::Open(AuditPathFor(job), "rank0@" + host));
    AuditRecord start;
    start.Str("tenant", t->policy_.tenant)
        .Str("job_sha256", digest)
        .Int("world_size", world)
        .Raw("allowed_jurisdictions", JsonList(t->policy_.jurisdictions))
        .Raw("allowed_sites", JsonList(t->policy_.sites))
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
      for (const std::string& rec : records) {
        FJORD_RETURN_IF_ERROR(t->audit_->Append("rank_identity", AuditRecord().Raw("check", rec)).status());
      }
    }
    if (!overrides.empty()) {
      std::string list = "[";
      for (size_t i = 0; i < overrides.size(); ++i) {
        list += std::string(i ? "," : "") + "{\"rank\":" + std::to_string(overrides[i].first) +
                ",\"path\":" + JsonQuote(overrides[i].second) + "}";
      }
      list += "]";
      FJORD_RETURN_IF_ERROR(t->audit_
                                ->Append("test_override", AuditRecord()
                                                              .Str("variable", "FJORD_NODE_IDENTITY")
                                                              .Str("note",
                                                                   "node identities were read from files "
                                                                   "named by the environment, not from "
                                                                   "/etc/fjord/node.textproto")
                                                              .Raw("ranks", list))
                                .status());
    }
    if (!hook_list.empty()) {
      FJORD_RETURN_IF_ERROR(
          t->audit_
              ->Append("test_override",
                       AuditRecord()
                           .Str("variable", "FJORD_TEST_HOOK")
                           .Str("note", "test hooks were active: faults, delays or signals injected for a test")
                           .Raw("ranks", hook_list + "]"))
              .status());
    }
  }
  if (!differing.empty()) {
    const std::string message =
        "rank(s) " + JoinList(differing) + " were started with a different job spec than rank " +
        std::to_string(rank) + " (sha256 " + digest +
        "): every rank must get the same job spec; start the job with fjord launch, or give "
        "every rank the same file and --set overrides";
    if (t->audit_)
      (void)t->audit_->Append("refusal", AuditRecord().Str("gate", "job_spec").Str("message", message));
    return FailedPrecondition(message);
  }

  t->seal_.node = t->node_;
  DataPolicy& dp = t->data_policy_;
  dp.enabled = t->policy_.enabled();
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
  if (audit_) {
    const char* use_name = CheckpointUseName(use);
    if (seal.ok()) {
      Status s = audit_
                     ->Append("checkpoint_opened", AuditRecord()
                                                       .Str("dir", dir)
                                                       .Str("use", use_name)
                                                       .Str("tenant", seal_.tenant)
                                                       .Bool("encrypted", seal->key != nullptr))
                     .status();
      if (!s.ok()) return s;
    } else {
      (void)audit_->Append("refusal", AuditRecord()
                                          .Str("gate", "checkpoint")
                                          .Str("dir", dir)
                                          .Str("use", use_name)
                                          .Str("message", seal.status().message()));
    }
  }
  return seal;
}

Status Tenancy::RecordCheckpointWritten(const std::string& dir) const {
  if (!audit_) return OkStatus();
  AuditRecord rec;
  rec.Str("dir", dir).Str("tenant", seal_.tenant).Bool("encrypted", seal_.key != nullptr);
  if (seal_.key) rec.Str("key_id", seal_.key->KeyId());
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

Status Tenancy::RecordJobEnd(const Status& result) const {
  if (!audit_) return OkStatus();
  AuditRecord rec;
  rec.Bool("ok", result.ok());
  if (!result.ok()) rec.Str("error", result.message());
  return audit_->Append("job_end", rec).status();
}

}  // namespace fjord
