// `fjord audit verify` (audit_cmd.h).
#include "launcher/audit_cmd.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "launcher/cli.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

namespace fs = std::filesystem;

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

}  // namespace

StatusOr<std::vector<AuditAnchor>> CheckpointAnchors(const std::string& path,
                                                     const std::vector<std::string>& checkpoints,
                                                     const std::string& key_file) {
  std::optional<EncryptionKey> key;
  if (!key_file.empty()) {
    FJORD_ASSIGN_OR_RETURN(key, LoadEncryptionKey(key_file, "--key"));
  }
  std::vector<AuditAnchor> anchors;
  for (const std::string& checkpoint : checkpoints) {
    const std::vector<std::string> dirs = CheckpointDirsAt(checkpoint);
    if (dirs.empty()) {
      return NotFound(
          "--checkpoints " + checkpoint + " holds no tenant checkpoint (no tenant.textproto in it, " +
          "its step_* or checkpoints/step_*): name a run directory or checkpoint of a tenant job");
    }
    for (const std::string& dir : dirs) {
      StatusOr<proto::AuditAnchor> anchor = ReadCheckpointAuditAnchor(dir, key ? &*key : nullptr);
      if (!anchor.ok() && anchor.status().code() == StatusCode::kNotFound) continue;  // anchors no log
      if (!anchor.ok()) return anchor.status().WithContext("--checkpoints " + checkpoint);
      std::error_code ea, eb;
      if (anchor->seq() < 1 || fs::weakly_canonical(anchor->log(), ea) != fs::weakly_canonical(path, eb))
        continue;
      anchors.push_back({"checkpoint " + dir, anchor->seq(), anchor->hash()});
    }
  }
  return anchors;
}

namespace {

struct VerifyArgs {
  std::vector<std::string> log, anchors, checkpoints;
  std::string key;
};

int Verify(const cli::Command& c, const VerifyArgs& a) {
  if (a.log.size() != 1) return cli::UsageError(c, "expected `verify LOG`");
  const std::string& path = a.log[0];
  std::vector<AuditAnchor> anchors;
  for (const std::string& text : a.anchors) {
    StatusOr<AuditAnchor> anchor = ParseAuditAnchor(text, "--anchor " + text);
    if (!anchor.ok()) return cli::UsageError(c, "--anchor: " + anchor.status().message());
    anchors.push_back(*anchor);
  }
  StatusOr<std::vector<AuditAnchor>> recorded = CheckpointAnchors(path, a.checkpoints, a.key);
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

}  // namespace

void AddAuditCommand(CLI::App& app) {
  cli::Command* audit = cli::AddCommand(app, "audit", "check an audit log (fjord audit verify)");
  auto a = std::make_shared<VerifyArgs>();
  cli::Command* c = cli::AddCommand(*audit, "verify",
                                    "check an audit log's hash chain, head and anchors (SEQ:HASH as launch "
                                    "prints them, and the heads the tenant "
                                    "checkpoints under DIR recorded); report the first broken record");
  c->add_option("LOG", a->log, "the audit log")->type_name("");
  c->add_option("--anchor", a->anchors, "a head the log must still hold, as launch prints it")
      ->type_name("SEQ:HASH");
  c->add_option("--checkpoints", a->checkpoints, "also the heads the tenant checkpoints under DIR recorded")
      ->type_name("DIR");
  c->add_option("--key", a->key, "the tenant's checkpoint key: each checkpoint's record must match its seal")
      ->type_name("FILE");
  c->run = [c, a] { return Verify(*c, *a); };
}

}  // namespace fjord
