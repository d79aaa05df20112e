// Data manifests and the data gate (gate 3 for data; docs/SOVEREIGNTY.md).
//
// `fjord prep --tenant ID --jurisdiction CC` writes DIR/manifest.textproto beside the shards it
// writes: the tenant, the jurisdictions (and sites) where the data may be opened, and the SHA-256
// and token count of every shard. A shard set that has a manifest is governed by it whatever the job
// says: every job opens shards only through this gate.
//   1. before any shard is read, the manifest that governs each shard is found: the nearest
//      manifest.textproto from the directory of the shard's real path (symlinks resolved) up to /.
//      A governed shard is refused unless the job is the manifest's tenant (a job without tenant is
//      told which tenant block to add), the manifest's allowed set covers this node's jurisdiction and
//      site, the shard lies directly in the manifest's directory and is listed, every listed shard the
//      glob's file pattern matches is on disk, and no file there matching that pattern or the prep
//      naming (train_NNNNNN.bin, val_NNNNNN.bin) is unlisted. A shard no manifest governs is read by a
//      job without tenant; a tenant job refuses it unless data.allow_unmanifested (audited);
//   2. each shard is then read once (from the real path checked in step 1) into memory, its SHA-256
//      compared with the manifest's, and only those same bytes are decoded, so a file swapped after
//      the check is never used.
// Refusals name the manifest or shard, what differs, and what to do; rank 0 audits every manifest
// and shard opened and every refusal.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/tenancy.pb.h"
#include "runtime/tenancy/audit.h"

namespace fjord {

inline constexpr char kManifestName[] = "manifest.textproto";

// True for the names fjord prep gives shards: train_NNNNNN.bin and val_NNNNNN.bin.
bool IsPrepShardName(const std::string& name);

// Reads DIR/manifest.textproto (text format of fjord.proto.DataManifest). NotFound when it does
// not exist; parse errors name file:line:column; refuses a manifest without tenant, without
// allowed jurisdictions, with a code that is not ISO 3166-1 alpha-2, or with a shard entry that
// lacks a name or a 64-hex-digit sha256.
StatusOr<proto::DataManifest> ReadDataManifest(const std::string& dir);

// Writes DIR/manifest.textproto atomically, with a comment header saying what it is.
Status WriteDataManifest(const std::string& dir, const proto::DataManifest& manifest);

// The data gate of one rank. It always applies; the default is a job without tenant, which may read
// only shards that no manifest governs.
struct DataPolicy {
  std::string tenant;        // the job's tenant.id; "" for a job without tenant
  std::string host;          // this node, for messages
  std::string jurisdiction;  // this node's, from its identity file ("" without tenant: none is allowed)
  std::string site;
  bool allow_unmanifested = false;  // data.allow_unmanifested: a tenant job may read ungoverned shards
  AuditLog* audit = nullptr;        // rank 0's log; null elsewhere
};

// What the manifest says one shard must be; from CheckShardManifests.
struct ShardExpectation {
  std::string path;       // as the glob matched it (for messages)
  std::string real_path;  // canonical path, checked in step 1: the file step 2 reads
  std::string manifest;   // path of its manifest; "" when no manifest governs it
  std::string sha256;
  int64_t tokens = -1;
};

// Step 1 above for the shards `files` that glob `pattern` of field `what` (e.g. "data.train")
// matched. Reads no shard. Returns one expectation per file, in order.
StatusOr<std::vector<ShardExpectation>> CheckShardManifests(const std::string& pattern,
                                                            const std::vector<std::string>& files,
                                                            const std::string& what,
                                                            const DataPolicy& policy);

// A manifest that governs some of a job's shards, for fjord launch's placement.
struct GoverningManifest {
  std::string path;  // DIR/manifest.textproto
  proto::DataManifest manifest;
};

// The distinct manifests governing `files` (from field `what`), in order of first use; shards that
// no manifest governs add nothing. Reads no shard; refuses a manifest that cannot be read or parsed.
StatusOr<std::vector<GoverningManifest>> ManifestsGoverning(const std::vector<std::string>& files,
                                                            const std::string& what);

// The refusal when a job of `job_tenant` ("" = none) reads data governed by `m` (at `manifest_path`)
// of another tenant: names the manifest, its tenant, and for a job without tenant the tenant and
// residency blocks to add to the job spec.
Status ForeignDataRefusal(const std::string& what, const std::string& manifest_path,
                          const proto::DataManifest& m, const std::string& job_tenant);

// Step 2: refuses `bytes` read from expectation.path when their SHA-256 differs from the manifest
// (names both digests: the shard was modified or replaced after prep). Audits shard_opened.
Status VerifyShardBytes(const ShardExpectation& expectation, std::string_view bytes, const std::string& what,
                        const DataPolicy& policy);

// Step 2, after decoding: refuses a token count that differs from the manifest's.
Status VerifyShardTokens(const ShardExpectation& expectation, int64_t tokens, const std::string& what);

}  // namespace fjord
