// Data manifests: reading, writing and the two steps of the data gate (see manifest.h).
#include "runtime/manifest.h"

#include <google/protobuf/text_format.h>

#include <filesystem>
#include <map>
#include <set>

#include "runtime/crypto.h"
#include "runtime/file_util.h"
#include "runtime/tenancy.h"

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

StatusOr<std::vector<ShardExpectation>> CheckShardManifests(const std::vector<std::string>& files,
                                                            const std::string& what,
                                                            const DataPolicy& policy) {
  std::vector<ShardExpectation> out;
  if (!policy.enabled) {
    for (const std::string& f : files) out.push_back({f, "", "", -1});
    return out;
  }
  auto refuse = [&](const std::string& path, Status s) {
    AuditRefusal(policy, what, path, s.message());
    return s;
  };
  const std::string node =
      "this node (" + policy.host + ", jurisdiction " + policy.jurisdiction + ", site " + policy.site + ")";
  // One manifest per directory, read and checked once, before any shard.
  std::map<std::string, StatusOr<proto::DataManifest>> manifests;
  for (const std::string& file : files) {
    const std::string dir =
        fs::path(file).parent_path().empty() ? "." : fs::path(file).parent_path().string();
    auto it = manifests.find(dir);
    if (it == manifests.end()) {
      it = manifests.emplace(dir, ReadDataManifest(dir)).first;
      const std::string mpath = (fs::path(dir) / kManifestName).string();
      if (!it->second.ok() && it->second.status().code() == StatusCode::kNotFound) {
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
      } else if (!it->second.ok()) {
        return refuse(mpath, it->second.status().WithContext(what));
      } else {
        const proto::DataManifest& m = *it->second;
        if (m.tenant() != policy.tenant) {
          return refuse(mpath, FailedPrecondition(what + ": " + mpath + " belongs to tenant " + m.tenant() +
                                                  ", but this job is tenant " + policy.tenant +
                                                  ": a tenant may read only its own data; point " + what +
                                                  " at this tenant's shards"));
        }
        ResidencyPolicy allowed;
        allowed.tenant = m.tenant();
        allowed.jurisdictions.assign(m.allowed_jurisdictions().begin(), m.allowed_jurisdictions().end());
        allowed.sites.assign(m.allowed_sites().begin(), m.allowed_sites().end());
        if (std::string why = allowed.WhyNot(policy.jurisdiction, policy.site); !why.empty()) {
          return refuse(mpath,
                        FailedPrecondition(what + ": " + mpath + " allows the data to be opened in " +
                                           allowed.Describe() + " only, and " + node + " is outside: " + why +
                                           ". Run the job on nodes inside the data's residency"));
        }
        if (policy.audit != nullptr) {
          FJORD_ASSIGN_OR_RETURN(std::string digest, Sha256File(mpath, "data manifest"));
          std::string allowed_json = "[";
          for (int i = 0; i < m.allowed_jurisdictions_size(); ++i) {
            allowed_json += std::string(i ? "," : "") + "\"" + m.allowed_jurisdictions(i) + "\"";
          }
          FJORD_RETURN_IF_ERROR(
              policy.audit
                  ->Append("manifest_opened", AuditRecord()
                                                  .Str("field", what)
                                                  .Str("path", mpath)
                                                  .Str("sha256", digest)
                                                  .Str("tenant", m.tenant())
                                                  .Raw("allowed_jurisdictions", allowed_json + "]")
                                                  .Int("shards", m.shard_size()))
                  .status());
        }
      }
    }
    ShardExpectation e;
    e.path = file;
    if (!it->second.ok()) {  // unmanifested, allowed by the job
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
      out.push_back(e);
      continue;
    }
    const proto::DataManifest& m = *it->second;
    const std::string name = fs::path(file).filename().string();
    const proto::ShardDigest* entry = nullptr;
    for (const proto::ShardDigest& s : m.shard()) {
      if (s.name() == name) entry = &s;
    }
    e.manifest = (fs::path(dir) / kManifestName).string();
    if (entry == nullptr) {
      return refuse(file,
                    FailedPrecondition(what + ": " + file + " is not listed in " + e.manifest +
                                       ": it was added after prep, or belongs to other data; remove it or "
                                       "re-create the data with fjord prep"));
    }
    e.sha256 = entry->sha256();
    e.tokens = entry->has_tokens() ? entry->tokens() : -1;
    out.push_back(e);
  }
  return out;
}

Status VerifyShardBytes(const ShardExpectation& expectation, std::string_view bytes, const std::string& what,
                        const DataPolicy& policy) {
  if (!policy.enabled) return OkStatus();
  const std::string digest = Sha256Hex(bytes);
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
