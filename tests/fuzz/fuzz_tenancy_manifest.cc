// Fuzzes the tenancy text-format readers (runtime/tenancy/manifest.h, runtime/tenancy/tenancy.h) with the
// same bytes: the data manifest (DIR/manifest.textproto), the node identity file (non-strict: the ownership
// checks need root-owned files) and the checkpoint tenant record (DIR/tenant.textproto). An accepted data
// manifest must satisfy what ReadDataManifest promises.
#include <cstdint>
#include <string>

#include "runtime/tenancy/manifest.h"
#include "runtime/tenancy/tenancy.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = fjord::fuzz::ScratchDir("tenancy_manifest");
  const std::string_view text = fjord::fuzz::AsText(data, size);
  fjord::fuzz::WriteFile(dir + "/" + fjord::kManifestName, text);
  fjord::fuzz::WriteFile(dir + "/" + fjord::kCheckpointTenantRecord, text);

  fjord::StatusOr<fjord::proto::DataManifest> manifest = fjord::ReadDataManifest(dir);
  if (manifest.ok()) {
    FJORD_FUZZ_EXPECT(fjord::IsValidTenantId(manifest->tenant()), manifest->tenant());
    FJORD_FUZZ_EXPECT(manifest->allowed_jurisdictions_size() > 0, "no jurisdiction");
    for (const std::string& j : manifest->allowed_jurisdictions()) {
      FJORD_FUZZ_EXPECT(fjord::IsIsoCountryCode(j), j);
    }
    for (const fjord::proto::ShardDigest& s : manifest->shard()) {
      FJORD_FUZZ_EXPECT(!s.name().empty() && s.name().find('/') == std::string::npos, s.name());
    }
  } else {
    FJORD_FUZZ_EXPECT(!manifest.status().message().empty(), "refusal without a message");
  }

  fjord::StatusOr<fjord::LocalNode> node =
      fjord::ReadNodeIdentityFile(dir + "/" + fjord::kManifestName, /*strict=*/false);
  if (node.ok()) {
    FJORD_FUZZ_EXPECT(fjord::JurisdictionProblem(node->identity.jurisdiction()).empty(),
                      node->identity.jurisdiction());
    FJORD_FUZZ_EXPECT(fjord::IsValidSiteName(node->identity.site()), node->identity.site());
  }

  fjord::StatusOr<fjord::proto::CheckpointTenancy> record = fjord::ReadCheckpointTenantRecord(dir);
  FJORD_FUZZ_EXPECT(record.ok() || !record.status().message().empty(), "refusal without a message");
  return 0;
}
