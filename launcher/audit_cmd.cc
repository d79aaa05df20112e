// `fjord audit verify` (audit_cmd.h).
#include "launcher/audit_cmd.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "runtime/tenancy/tenancy.h"

namespace fjord {

namespace fs = std::filesystem;

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
