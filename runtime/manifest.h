// Data manifests and the data gate (gate 3 for data; docs/SOVEREIGNTY.md).
//
// `fjord prep --tenant ID --jurisdiction CC` writes DIR/manifest.textproto beside the shards it
// writes: the tenant, the jurisdictions (and sites) where the data may be opened, and the SHA-256
// and token count of every shard. A job with a tenant opens shards only through this gate:
//   1. before any shard is read, the manifest of every shard's directory is read and checked:
//      present (unless data.allow_unmanifested, which is audited), of this tenant, its allowed set
//      covering this node's jurisdiction and site, and listing every shard the glob matched;
//   2. each shard is then read once into memory, its SHA-256 compared with the manifest's, and only
//      those same bytes are decoded, so a file swapped after the check is never used.
// Refusals name the manifest or shard, what differs, and what to do; rank 0 audits every manifest
// and shard opened and every refusal.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/tenancy.pb.h"
#include "runtime/audit.h"

namespace fjord {

inline constexpr char kManifestName[] = "manifest.textproto";

// Reads DIR/manifest.textproto (text format of fjord.proto.DataManifest). NotFound when it does
// not exist; parse errors name file:line:column; refuses a manifest without tenant, without
// allowed jurisdictions, with a code that is not ISO 3166-1 alpha-2, or with a shard entry that
// lacks a name or a 64-hex-digit sha256.
StatusOr<proto::DataManifest> ReadDataManifest(const std::string& dir);

// Writes DIR/manifest.textproto atomically, with a comment header saying what it is.
Status WriteDataManifest(const std::string& dir, const proto::DataManifest& manifest);

// The data gate of one rank. Disabled (the default) means no checks: jobs without a tenant.
struct DataPolicy {
  bool enabled = false;
  std::string tenant;
  std::string host;          // this node, for messages
  std::string jurisdiction;  // this node's, from its identity file
  std::string site;
  bool allow_unmanifested = false;  // data.allow_unmanifested
  AuditLog* audit = nullptr;        // rank 0's log; null elsewhere
};

// What the manifest says one shard must be; from CheckShardManifests.
struct ShardExpectation {
  std::string path;
  std::string manifest;  // path of its manifest; "" when unmanifested (allowed by policy)
  std::string sha256;
  int64_t tokens = -1;
};

// Step 1 above for the shards `files` (from the glob of field `what`, e.g. "data.train"). Reads no
// shard. Returns one expectation per file, in order.
StatusOr<std::vector<ShardExpectation>> CheckShardManifests(const std::vector<std::string>& files,
                                                            const std::string& what,
                                                            const DataPolicy& policy);

// Step 2: refuses `bytes` read from expectation.path when their SHA-256 differs from the manifest
// (names both digests: the shard was modified or replaced after prep). Audits shard_opened.
Status VerifyShardBytes(const ShardExpectation& expectation, std::string_view bytes, const std::string& what,
                        const DataPolicy& policy);

// Step 2, after decoding: refuses a token count that differs from the manifest's.
Status VerifyShardTokens(const ShardExpectation& expectation, int64_t tokens, const std::string& what);

}  // namespace fjord
