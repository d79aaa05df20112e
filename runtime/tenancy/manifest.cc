// Data manifests: reading, writing and the two steps of the data gate (see manifest.h).
#include "runtime/tenancy/manifest.h"

#include <fnmatch.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/file_util.h"
#include "common/json.h"
#include "common/proto_text.h"
#include "common/sha256.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

bool IsHex64(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

void AuditRefusal(const DataPolicy& policy, const std::string& what, const std::string& path,
                  const std::string& message) {
  if (policy.audit == nullptr) return;
  (void)policy.audit->Append(
      "refusal",
      AuditRecord().Str("gate", "data").Str("field", what).Str("path", path).Str("message", message));
}

}  // namespace

StatusOr<proto::DataManifest> ReadDataManifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / kManifestName).string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("no " + std::string(kManifestName) + " in " + dir);
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "data manifest"));
  proto::DataManifest m;
  pb::TextFormat::ParseInfoTree tree;
  FJORD_RETURN_IF_ERROR(ParseTextProto(text, path, &m, "proto/tenancy.proto", &tree));
  const std::string fix = "; re-create the data with `fjord prep --tenant ID --jurisdiction CC`";
  if (m.version() != 1) {
    return FailedPrecondition(FieldLocation(path, &tree, m, "version") + ": manifest version " +
                              std::to_string(m.version()) + " is not supported (this fjord reads version 1)" +
                              fix);
  }
  if (!IsValidTenantId(m.tenant())) {
    return InvalidArgument(FieldLocation(path, &tree, m, "tenant") + ": tenant \"" + m.tenant() +
                           "\" is missing or not a tenant id" + fix);
  }
  if (m.allowed_jurisdictions_size() == 0) {
    return InvalidArgument(path + ": allowed_jurisdictions is empty: the data could be opened nowhere" + fix);
  }
  for (int i = 0; i < m.allowed_jurisdictions_size(); ++i) {
    if (std::string p = JurisdictionProblem(m.allowed_jurisdictions(i)); !p.empty()) {
      return InvalidArgument(FieldLocation(path, &tree, m, "allowed_jurisdictions", i) +
                             ": allowed_jurisdictions \"" + m.allowed_jurisdictions(i) + "\" " + p + fix);
    }
  }
  for (int i = 0; i < m.shard_size(); ++i) {
    const proto::ShardDigest& s = m.shard(i);
    const pb::TextFormat::ParseInfoTree* nested =
        tree.GetTreeForNested(proto::DataManifest::descriptor()->FindFieldByName("shard"), i);
    if (s.name().empty() || s.name().find('/') != std::string::npos || !IsHex64(s.sha256())) {
      return InvalidArgument(
          FieldLocation(path, nested, s, "name") + ": shard entry " + std::to_string(i + 1) +
          " needs a file name (no directories) and a sha256 of 64 lower-case hex digits" + fix);
    }
  }
  return m;
}

Status WriteDataManifest(const std::string& dir, const proto::DataManifest& manifest) {
  std::string body;
  pb::TextFormat::PrintToString(manifest, &body);
  const std::string text =
      "# fjord data manifest (proto/tenancy.proto DataManifest), written by fjord prep. A job of another "
      "tenant,\n"
      "# on a node outside allowed_jurisdictions, or finding a shard whose SHA-256 differs is refused.\n" +
      body;
  return WriteFileAtomic((fs::path(dir) / kManifestName).string(), {{text.data(), text.size()}})
      .WithContext("writing the data manifest");
}

bool IsPrepShardName(const std::string& name) {
  for (const std::string prefix : {"train_", "val_"}) {
    if (name.size() != prefix.size() + 10 || name.compare(0, prefix.size(), prefix) != 0) continue;
    if (name.compare(name.size() - 4, 4, ".bin") != 0) continue;
    const std::string digits = name.substr(prefix.size(), 6);
    if (std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return true;
  }
  return false;
}

Status ForeignDataRefusal(const std::string& what, const std::string& manifest_path,
                          const proto::DataManifest& m, const std::string& job_tenant) {
  if (!job_tenant.empty()) {
    return FailedPrecondition(
        what + ": " + manifest_path + " belongs to tenant " + m.tenant() + ", but this job is tenant " +
        job_tenant + ": a tenant may read only its own data; point " + what + " at this tenant's shards");
  }
  std::string residency = "residency {";
  for (const std::string& j : m.allowed_jurisdictions()) residency += " allowed_jurisdictions: \"" + j + "\"";
  for (const std::string& site : m.allowed_sites()) residency += " allowed_sites: \"" + site + "\"";
  return FailedPrecondition(
      what + ": " + manifest_path + " belongs to tenant " + m.tenant() +
      ", but this job has no tenant: data with a manifest is read only by its tenant's job, "
      "whose ranks check where they run. Add `tenant { id: \"" +
      m.tenant() + "\" } " + residency + " }` to the job spec (and run it inside that residency), or point " +
      what + " at data without a manifest");
}

namespace {

// The directory of the manifest that governs files in `dir` (a canonical path): the nearest of `dir`
// and its ancestors that holds one; "" when none does.
StatusOr<std::string> GoverningDir(const fs::path& dir) {
  for (fs::path d = dir;; d = d.parent_path()) {
    std::error_code ec;
    const fs::file_status st = fs::status(d / kManifestName, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) {
      return FailedPrecondition("cannot tell whether " + (d / kManifestName).string() +
                                " exists: " + ec.message() + "; make the directory searchable");
    }
    if (fs::exists(st)) return d.string();
    if (d == d.parent_path()) return std::string();
  }
}

// The manifest of each shard's directory, found and read once per directory.
class ManifestFinder {
 public:
  struct Found {
    std::string real_path;  // canonical path of the shard
    std::string dir;        // the manifest's directory; "" when none governs the shard
    const StatusOr<proto::DataManifest>* manifest = nullptr;  // when dir is not ""
    bool first = false;                                       // the first shard governed by this manifest
  };

  StatusOr<Found> Find(const std::string& file, const std::string& what) {
    std::error_code ec;
    const fs::path real = fs::canonical(file, ec);
    if (ec) return FailedPrecondition(what + ": cannot resolve " + file + ": " + ec.message());
    Found f;
    f.real_path = real.string();
    const std::string parent = real.parent_path().string();
    auto d = dirs_.find(parent);
    if (d == dirs_.end()) {
      StatusOr<std::string> gov = GoverningDir(real.parent_path());
      if (!gov.ok()) return gov.status().WithContext(what);
      d = dirs_.emplace(parent, *gov).first;
    }
    f.dir = d->second;
    if (f.dir.empty()) return f;
    auto m = manifests_.find(f.dir);
    f.first = m == manifests_.end();
    if (f.first) m = manifests_.emplace(f.dir, ReadDataManifest(f.dir)).first;
    f.manifest = &m->second;
    return f;
  }

 private:
  std::map<std::string, std::string> dirs_;  // shard directory -> governing directory
  std::map<std::string, StatusOr<proto::DataManifest>> manifests_;
};

// The manifest's shard list is the truth for its directory: every listed shard whose name the glob's
// file pattern matches is on disk, and every file there matching that pattern or named like a prep
// shard is listed. "" when so, else what differs.
std::string ShardListProblem(const std::string& dir, const std::string& manifest_path,
                             const proto::DataManifest& m, const std::string& pattern) {
  const std::string file_pattern = fs::path(pattern).filename().string();
  std::set<std::string> listed;
  for (const proto::ShardDigest& s : m.shard()) {
    listed.insert(s.name());
    std::error_code ec;
    if (::fnmatch(file_pattern.c_str(), s.name().c_str(), FNM_PERIOD) == 0 &&
        !fs::is_regular_file(fs::path(dir) / s.name(), ec)) {
      return (fs::path(dir) / s.name()).string() + " is listed in " + manifest_path +
             " but is missing from disk: the data set is incomplete; restore the shard, or re-create the "
             "data with "
             "fjord prep";
    }
  }
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == kManifestName || listed.count(name) > 0) continue;
    if (!IsPrepShardName(name) && ::fnmatch(file_pattern.c_str(), name.c_str(), FNM_PERIOD) != 0) continue;
    return it->path().string() + " is not listed in " + manifest_path +
           ": it was added after prep, or belongs to other data; remove it or re-create the data with fjord "
           "prep";
  }
  if (ec) return "cannot list " + dir + ": " + ec.message();
  return "";
}

}  // namespace

StatusOr<std::vector<GoverningManifest>> ManifestsGoverning(const std::vector<std::string>& files,
                                                            const std::string& what) {
  std::vector<GoverningManifest> out;
  ManifestFinder finder;
  for (const std::string& file : files) {
    FJORD_ASSIGN_OR_RETURN(ManifestFinder::Found f, finder.Find(file, what));
    if (f.dir.empty() || !f.first) continue;
    if (!f.manifest->ok()) return f.manifest->status().WithContext(what);
    out.push_back({(fs::path(f.dir) / kManifestName).string(), f.manifest->value()});
  }
  return out;
}

StatusOr<std::vector<ShardExpectation>> CheckShardManifests(const std::string& pattern,
                                                            const std::vector<std::string>& files,
                                                            const std::string& what,
                                                            const DataPolicy& policy) {
  auto refuse = [&](const std::string& path, Status s) {
    AuditRefusal(policy, what, path, s.message());
    return s;
  };
  const std::string node =
      "this node (" + policy.host + ", jurisdiction " + policy.jurisdiction + ", site " + policy.site + ")";
  std::vector<ShardExpectation> out;
  ManifestFinder finder;
  for (const std::string& file : files) {
    StatusOr<ManifestFinder::Found> found = finder.Find(file, what);
    if (!found.ok()) return refuse(file, found.status());
    ShardExpectation e;
    e.path = file;
    e.real_path = found->real_path;
    if (found->dir.empty()) {  // no manifest governs the shard
      if (!policy.tenant.empty()) {
        const std::string mpath = (fs::path(found->real_path).parent_path() / kManifestName).string();
        if (!policy.allow_unmanifested) {
          return refuse(
              mpath, FailedPrecondition(
                         what + ": " + file + " has no manifest: " + mpath + " does not exist, and tenant " +
                         policy.tenant +
                         " reads only data whose manifest names the tenant, where it may "
                         "be opened and the SHA-256 of each shard. Re-create the data with `fjord prep "
                         "--tenant " +
                         policy.tenant + " --jurisdiction " + policy.jurisdiction +
                         " ...`, or (audited) set data.allow_unmanifested: true in the job spec"));
        }
        if (policy.audit != nullptr) {
          FJORD_RETURN_IF_ERROR(
              policy.audit
                  ->Append("data_unmanifested",
                           AuditRecord()
                               .Str("field", what)
                               .Str("path", file)
                               .Str("note", "read without a manifest: data.allow_unmanifested is true"))
                  .status());
        }
      }
      out.push_back(e);
      continue;
    }
    e.manifest = (fs::path(found->dir) / kManifestName).string();
    if (!found->manifest->ok()) return refuse(e.manifest, found->manifest->status().WithContext(what));
    const proto::DataManifest& m = found->manifest->value();
    if (found->first) {  // the manifest's own checks, once, before any of its shards
      if (m.tenant() != policy.tenant)
        return refuse(e.manifest, ForeignDataRefusal(what, e.manifest, m, policy.tenant));
      ResidencyPolicy allowed;
      allowed.tenant = m.tenant();
      allowed.jurisdictions.assign(m.allowed_jurisdictions().begin(), m.allowed_jurisdictions().end());
      allowed.sites.assign(m.allowed_sites().begin(), m.allowed_sites().end());
      if (std::string why = allowed.WhyNot(policy.jurisdiction, policy.site); !why.empty()) {
        return refuse(e.manifest,
                      FailedPrecondition(what + ": " + e.manifest + " allows the data to be opened in " +
                                         allowed.Describe() + " only, and " + node + " is outside: " + why +
                                         ". Run the job on nodes inside the data's residency"));
      }
      if (std::string problem = ShardListProblem(found->dir, e.manifest, m, pattern); !problem.empty()) {
        return refuse(e.manifest, DataLoss(what + ": " + problem));
      }
      if (policy.audit != nullptr) {
        FJORD_ASSIGN_OR_RETURN(std::string digest, Sha256File(e.manifest, "data manifest"));
        FJORD_RETURN_IF_ERROR(
            policy.audit
                ->Append("manifest_opened",
                         AuditRecord()
                             .Str("field", what)
                             .Str("path", e.manifest)
                             .Str("sha256", digest)
                             .Str("tenant", m.tenant())
                             .Raw("allowed_jurisdictions", JsonQuoteList(m.allowed_jurisdictions()))
                             .Int("shards", m.shard_size()))
                .status());
      }
    }
    const fs::path real(found->real_path);
    const proto::ShardDigest* entry = nullptr;
    if (real.parent_path() == fs::path(found->dir)) {
      for (const proto::ShardDigest& s : m.shard()) {
        if (s.name() == real.filename().string()) entry = &s;
      }
    }
    if (entry == nullptr) {
      const std::string where = file == found->real_path ? file : file + " (" + found->real_path + ")";
      return refuse(
          file, FailedPrecondition(
                    what + ": " + where + " is not listed in " + e.manifest +
                    (real.parent_path() == fs::path(found->dir)
                         ? ": it was added after prep, or belongs to other data; remove it or re-create "
                           "the data with fjord prep"
                         : ", which governs every file below " + found->dir +
                               " and lists only files directly in it; move the shard out of " + found->dir +
                               " or re-create the data with fjord prep")));
    }
    e.sha256 = entry->sha256();
    e.tokens = entry->has_tokens() ? entry->tokens() : -1;
    out.push_back(e);
  }
  return out;
}

Status VerifyShardBytes(const ShardExpectation& expectation, std::string_view bytes, const std::string& what,
                        const DataPolicy& policy) {
  if (expectation.manifest.empty() && policy.audit == nullptr) return OkStatus();
  FJORD_ASSIGN_OR_RETURN(const std::string digest, Sha256Hex(bytes));
  if (!expectation.manifest.empty() && digest != expectation.sha256) {
    Status s =
        DataLoss(what + ": shard " + expectation.path + " has SHA-256 " + digest + " but " +
                 expectation.manifest + " records " + expectation.sha256 +
                 ": the shard was modified or replaced after prep; refusing it. Restore it, or re-create the "
                 "data with fjord prep");
    AuditRefusal(policy, what, expectation.path, s.message());
    return s;
  }
  if (policy.audit != nullptr) {
    return policy.audit
        ->Append("shard_opened", AuditRecord()
                                     .Str("field", what)
                                     .Str("path", expectation.path)
                                     .Str("sha256", digest)
                                     .Int("bytes", static_cast<int64_t>(bytes.size()))
                                     .Bool("manifested", !expectation.manifest.empty()))
        .status();
  }
  return OkStatus();
}

Status VerifyShardTokens(const ShardExpectation& expectation, int64_t tokens, const std::string& what) {
  if (expectation.manifest.empty() || expectation.tokens < 0 || expectation.tokens == tokens)
    return OkStatus();
  return DataLoss(what + ": shard " + expectation.path + " holds " + std::to_string(tokens) + " tokens but " +
                  expectation.manifest + " records " + std::to_string(expectation.tokens) +
                  ": the manifest does not describe this shard; re-create the data with fjord prep");
}

}  // namespace fjord
