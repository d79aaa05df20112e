// The data gate: `fjord prep --tenant` writes a manifest whose digests match the shards, and the
// loader of a tenant job refuses a missing manifest (unless opted out, audited), another tenant's
// data, a residency that does not cover the node, a shard not in the manifest and a modified shard,
// each with its message and an audit log that shows no shard was opened. A job without tenant is
// refused every shard a manifest governs (found through symlinks and parent directories), and the
// manifest's shard list must match the directory: a listed shard deleted or an unlisted one added is
// refused naming both.
#include "runtime/tenancy/manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/sha256.h"
#include "runtime/data/data.h"
#include "runtime/tenancy/crypto.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::AuditEvents;
using testing::AuditLines;
using testing::Count;
using ::testing::HasSubstr;
using testing::ReadText;
using testing::ScopedEnv;
using testing::WriteText;

class DataGateTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    std::string text;
    for (int i = 0; i < 400; ++i) text += "sovereign line " + std::to_string(i) + "\n";
    WriteText(Path("input.txt"), text);
  }
  StatusOr<PrepResult> Prep(const std::string& out, const std::string& tenant,
                            std::vector<std::string> jurisdictions, std::vector<std::string> sites = {},
                            int64_t shard_tokens = 100'000'000) {
    PrepOptions o;
    o.shard_tokens = shard_tokens;
    o.input = Path("input.txt");
    o.out_dir = Path(out);
    o.tenant = tenant;
    o.allowed_jurisdictions = std::move(jurisdictions);
    o.allowed_sites = std::move(sites);
    return PrepareShards(o, *MakeByteTokenizer());
  }
  DataPolicy Policy(const std::string& tenant = "acme", const std::string& jurisdiction = "NO") {
    if (!audit_) audit_ = std::move(*AuditLog::Open(Path("audit.jsonl"), "rank0@test"));
    DataPolicy p;
    p.tenant = tenant;
    p.host = "no1";
    p.jurisdiction = jurisdiction;
    p.site = "osl1";
    p.audit = audit_.get();
    return p;
  }
  StatusOr<DataLoader> Open(const std::string& glob, const DataPolicy& p) {
    return DataLoader::Open(Path(glob), "data.train", 256, 16, 1, true, &p);
  }
  std::vector<std::string> Events() { return AuditEvents(Path("audit.jsonl")); }

  std::unique_ptr<AuditLog> audit_;
};

TEST_F(DataGateTest, PrepWritesAManifestThatMatchesTheShards) {
  StatusOr<PrepResult> r = Prep("data", "acme", {"NO"}, {"osl1"});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->manifest_path, Path("data") + "/manifest.textproto");
  StatusOr<proto::DataManifest> m = ReadDataManifest(Path("data"));
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->tenant(), "acme");
  EXPECT_EQ(m->allowed_jurisdictions(0), "NO");
  EXPECT_EQ(m->allowed_sites(0), "osl1");
  EXPECT_EQ(m->tokenizer(), "byte");
  EXPECT_EQ(m->source_sha256(), *Sha256Hex(ReadText(Path("input.txt"))));
  ASSERT_EQ(m->shard_size(), 2);  // train_000000.bin, val_000000.bin
  for (const proto::ShardDigest& s : m->shard()) {
    EXPECT_EQ(s.sha256(), *Sha256Hex(ReadText(Path("data/" + s.name())))) << s.name();
    EXPECT_EQ(s.bytes(), static_cast<int64_t>(fs::file_size(Path("data/" + s.name()))));
  }
  EXPECT_EQ(m->shard(0).tokens() + m->shard(1).tokens(), r->train_tokens + r->val_tokens);
  EXPECT_THAT(ReadText(r->manifest_path), HasSubstr("# fjord data manifest"));
}

TEST_F(DataGateTest, PrepRefusesBadTenancyOptionsBeforeWritingAnything) {
  struct Case {
    std::string tenant;
    std::vector<std::string> jurisdictions, sites;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"acme", {}, {}, "--tenant acme needs --jurisdiction CC"},
           {"Acme!", {"NO"}, {}, "--tenant \"Acme!\" is not a tenant id"},
           {"acme", {"NOR"}, {}, "--jurisdiction \"NOR\" has 3 letters"},
           {"acme", {"NO"}, {"osl 1"}, "--site \"osl 1\" is not a site name"},
           {"", {"NO"}, {}, "--jurisdiction / --site without --tenant"},
       }) {
    StatusOr<PrepResult> r = Prep("out", c.tenant, c.jurisdictions, c.sites);
    ASSERT_FALSE(r.ok()) << c.expected;
    EXPECT_THAT(r.status().message(), HasSubstr(c.expected));
    EXPECT_FALSE(fs::exists(Path("out"))) << c.expected;
  }
}

TEST_F(DataGateTest, PrepRefusesANodeOutsideTheResidency) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("SE", "sto1"));
  StatusOr<PrepResult> r = Prep("out", "acme", {"NO"});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("jurisdiction SE, site sto1"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("outside the residency given for tenant acme (jurisdictions NO"));
  EXPECT_THAT(r.status().message(), HasSubstr("run fjord prep on a node inside them"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(DataGateTest, PrepWithoutTenantRefusesToLeaveAStaleManifest) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  StatusOr<PrepResult> r = Prep("data", "", {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("manifest.textproto is left from an earlier prep for a tenant"));
}

TEST_F(DataGateTest, OwnManifestedDataOpensAndIsAudited) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  EXPECT_GT(loader->num_tokens(), 0u);
  // Open checks the manifest and reads no shard; the first Fill reads, verifies and audits it.
  EXPECT_EQ(Events(), (std::vector<std::string>{"manifest_opened"}));
  std::vector<int32_t> in(16), tg(16);
  ASSERT_TRUE(loader->Fill(0, 1, in.data(), tg.data()).ok());
  EXPECT_EQ(Events(), (std::vector<std::string>{"manifest_opened", "shard_opened"}));
  EXPECT_THAT(AuditLines(Path("audit.jsonl"), "shard_opened")[0],
              HasSubstr("\"sha256\":\"" + *Sha256Hex(ReadText(Path("data/train_000000.bin"))) + "\""));
}

TEST_F(DataGateTest, MissingManifestIsRefusedUnlessOptedOutWhichIsAudited) {
  ASSERT_TRUE(Prep("data", "", {}).ok());
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  const std::string& m = loader.status().message();
  EXPECT_THAT(m, HasSubstr("data.train: " + Path("data/train_000000.bin") + " has no manifest"));
  EXPECT_THAT(m, HasSubstr("fjord prep --tenant acme --jurisdiction NO"));
  EXPECT_THAT(m, HasSubstr("data.allow_unmanifested: true"));
  EXPECT_EQ(Events(), std::vector<std::string>{"refusal"});

  DataPolicy opt_out = Policy();
  opt_out.allow_unmanifested = true;
  loader = Open("data/train_*.bin", opt_out);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  std::vector<int32_t> in(16), tg(16);
  ASSERT_TRUE(loader->Fill(0, 1, in.data(), tg.data()).ok());
  const std::vector<std::string> events = Events();
  EXPECT_EQ(Count(events, "data_unmanifested"), 1);
  EXPECT_EQ(Count(events, "shard_opened"), 1);
  EXPECT_THAT(AuditLines(Path("audit.jsonl"), "shard_opened")[0], HasSubstr("\"manifested\":false"));
}

TEST_F(DataGateTest, AnotherTenantsDataIsRefusedBeforeAnyShardIsRead) {
  ASSERT_TRUE(Prep("data", "globex", {"NO"}).ok());
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr(Path("data") + "/manifest.textproto belongs to tenant globex"));
  EXPECT_THAT(loader.status().message(), HasSubstr("this job is tenant acme"));
  EXPECT_EQ(Events(), std::vector<std::string>{"refusal"});
}

TEST_F(DataGateTest, ResidencyThatDoesNotCoverTheNodeIsRefused) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}, {"osl1"}).ok());
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy("acme", "SE"));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr("allows the data to be opened in jurisdictions NO; sites: osl1 only"));
  EXPECT_THAT(loader.status().message(), HasSubstr("this node (no1, jurisdiction SE, site osl1) is outside"));
  EXPECT_EQ(Events(), std::vector<std::string>{"refusal"});
}

// Also after the job opened the data: the digest is checked on the bytes each read takes in.
TEST_F(DataGateTest, ModifiedShardIsRefusedByItsDigestWhenItIsRead) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  const std::string shard = Path("data/train_000000.bin");
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  std::string bytes = ReadText(shard);
  bytes[1024 + 10] ^= 0x01;  // one token, still a valid shard of the same size
  WriteText(shard, bytes);
  std::vector<int32_t> in(16), tg(16);
  const Status s = loader->Fill(0, 1, in.data(), tg.data());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("data.train: shard " + shard + " has SHA-256 " + *Sha256Hex(bytes)));
  EXPECT_THAT(s.message(), HasSubstr("modified or replaced after prep"));
  const std::vector<std::string> events = Events();
  EXPECT_EQ(Count(events, "shard_opened"), 0);
  EXPECT_EQ(Count(events, "refusal"), 1);
}

TEST_F(DataGateTest, ShardMissingFromTheManifestIsRefused) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  fs::copy_file(Path("data/train_000000.bin"), Path("data/train_000001.bin"));
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr("train_000001.bin is not listed in"));
  EXPECT_EQ(Count(Events(), "shard_opened"), 0);
}

TEST_F(DataGateTest, BrokenManifestNamesFileAndLine) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  WriteText(Path("data/manifest.textproto"), "tenant: \"acme\"\nallowed_jurisdictions: \"no\"\n");
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr(Path("data/manifest.textproto") + ":2:1: allowed_jurisdictions \"no\""));
}

TEST_F(DataGateTest, DisabledPolicyKeepsTheOldBehaviour) {
  ASSERT_TRUE(Prep("data", "", {}).ok());
  DataPolicy off;
  StatusOr<DataLoader> loader =
      DataLoader::Open(Path("data/train_*.bin"), "data.train", 256, 16, 1, true, &off);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  StatusOr<DataLoader> plain = DataLoader::Open(Path("data/train_*.bin"), "data.train", 256, 16, 1, true);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(loader->num_tokens(), plain->num_tokens());
  EXPECT_FALSE(fs::exists(Path("audit.jsonl")));
}

TEST_F(DataGateTest, InvalidManifestFieldsAreRefusedNamingFileLineAndTheFix) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  const std::string manifest = Path("data/manifest.textproto");
  const std::string sha = std::string(64, 'a');
  struct Case {
    std::string text, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"version: 2\ntenant: \"acme\"\nallowed_jurisdictions: \"NO\"\n",
            manifest + ":1:1: manifest version 2 is not supported (this fjord reads version 1)"},
           {"tenant: \"Acme!\"\nallowed_jurisdictions: \"NO\"\n",
            manifest + ":1:1: tenant \"Acme!\" is missing or not a tenant id"},
           {"tenant: \"acme\"\n",
            manifest + ": allowed_jurisdictions is empty: the data could be opened nowhere"},
           {"tenant: \"acme\"\nallowed_jurisdictions: \"NO\"\nshard {\n  name: \"../train_000000.bin\"\n  "
            "sha256: \"" +
                sha + "\"\n}\n",
            manifest +
                ":4:3: shard entry 1 needs a file name (no directories) and a sha256 of 64 lower-case hex"},
       }) {
    WriteText(manifest, c.text);
    StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
    ASSERT_FALSE(loader.ok()) << c.expected;
    EXPECT_THAT(loader.status().message(), HasSubstr(c.expected));
    EXPECT_THAT(loader.status().message(),
                HasSubstr("re-create the data with `fjord prep --tenant ID --jurisdiction CC`"));
  }
  EXPECT_EQ(Count(Events(), "shard_opened"), 0);
}

TEST_F(DataGateTest, ManifestTokenCountThatDoesNotMatchTheShardIsRefused) {
  StatusOr<PrepResult> r = Prep("data", "acme", {"NO"});
  ASSERT_TRUE(r.ok()) << r.status().message();
  const std::string manifest = Path("data/manifest.textproto");
  std::string text = ReadText(manifest);
  const std::string recorded = "tokens: " + std::to_string(r->train_tokens) + "\n";
  const size_t at = text.find(recorded);
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, recorded.size(), "tokens: " + std::to_string(r->train_tokens + 1) + "\n");
  WriteText(manifest, text);
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(
      loader.status().message(),
      HasSubstr("shard " + Path("data/train_000000.bin") + " holds " + std::to_string(r->train_tokens) +
                " tokens but " + manifest + " records " + std::to_string(r->train_tokens + 1)));
  EXPECT_THAT(loader.status().message(), HasSubstr("re-create the data with fjord prep"));
}

TEST_F(DataGateTest, PrepThatCannotRemoveTheOldManifestWritesNoShards) {
  fs::create_directories(Path("data/manifest.textproto/inside"));
  StatusOr<PrepResult> r = Prep("data", "acme", {"NO"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(),
              HasSubstr("cannot remove the old " + Path("data/manifest.textproto") + ": "));
  EXPECT_THAT(r.status().message(), HasSubstr("remove it by hand or choose another output directory"));
  EXPECT_FALSE(fs::exists(Path("data/train_000000.bin")));
  EXPECT_FALSE(fs::exists(Path("data/val_000000.bin")));
}

TEST_F(DataGateTest, ManifestThatIsADirectoryIsRefusedNamingIt) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  fs::remove(Path("data/manifest.textproto"));
  fs::create_directories(Path("data/manifest.textproto"));
  StatusOr<proto::DataManifest> m = ReadDataManifest(Path("data"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(), "cannot read data manifest " + Path("data/manifest.textproto") +
                                      ": not a regular file; check the path");
}

// ---- A shard set that has a manifest is governed by it, whatever the job says --------------------

// The untenanted policy of a job without tenant.id, with rank 0's audit log.
DataPolicy Untenanted(AuditLog* audit) {
  DataPolicy p;
  p.audit = audit;
  return p;
}

TEST_F(DataGateTest, JobWithoutTenantIsRefusedManifestedDataNamingTheTenantBlockToAdd) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}, {"osl1"}).ok());
  Policy();                                        // opens the audit log
  for (bool allow_unmanifested : {false, true}) {  // the opt-out is for unmanifested data only
    DataPolicy p = Untenanted(audit_.get());
    p.allow_unmanifested = allow_unmanifested;
    StatusOr<DataLoader> loader = Open("data/train_*.bin", p);
    ASSERT_FALSE(loader.ok()) << allow_unmanifested;
    const std::string& m = loader.status().message();
    EXPECT_THAT(m, HasSubstr("data.train: " + Path("data/manifest.textproto") +
                             " belongs to tenant acme, but this job has no tenant"));
    EXPECT_THAT(m, HasSubstr("Add `tenant { id: \"acme\" } residency { allowed_jurisdictions: \"NO\" "
                             "allowed_sites: \"osl1\" }` to the job spec"));
  }
  EXPECT_EQ(Events(), (std::vector<std::string>{"refusal", "refusal"}));
  // Without a policy at all (a caller without Tenancy): refused too, nothing to audit.
  StatusOr<DataLoader> bare = DataLoader::Open(Path("data/train_*.bin"), "data.train", 256, 16, 1, true);
  ASSERT_FALSE(bare.ok());
  EXPECT_THAT(bare.status().message(), HasSubstr("belongs to tenant acme, but this job has no tenant"));
}

TEST_F(DataGateTest, GlobOverAManifestedAndAnUnmanifestedDirectoryIsRefusedEitherWay) {
  ASSERT_TRUE(Prep("mixed/acme", "acme", {"NO"}).ok());
  ASSERT_TRUE(Prep("mixed/plain", "", {}).ok());
  StatusOr<DataLoader> loader = Open("mixed/*/train_*.bin", Untenanted(nullptr));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr(Path("mixed/acme/manifest.textproto") + " belongs to tenant acme"));
  loader = Open("mixed/*/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr(Path("mixed/plain/train_000000.bin") + " has no manifest"));
  EXPECT_EQ(Count(Events(), "shard_opened"), 0);
}

TEST_F(DataGateTest, ManifestInAParentDirectoryGovernsEveryFileBelowIt) {
  ASSERT_TRUE(Prep("acme", "acme", {"NO"}).ok());
  fs::create_directories(Path("acme/more"));
  fs::copy_file(Path("acme/train_000000.bin"), Path("acme/more/train_000000.bin"));
  StatusOr<DataLoader> loader = Open("acme/more/train_*.bin", Untenanted(nullptr));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr(Path("acme/manifest.textproto") +
                                                   " belongs to tenant acme, but this job has no tenant"));
  // acme's own job: the file is not one the manifest lists (it names files of its directory only).
  loader = Open("acme/more/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr(Path("acme/more/train_000000.bin") + " is not listed in " +
                                                   Path("acme/manifest.textproto") +
                                                   ", which governs every file below " + Path("acme")));
  EXPECT_EQ(Count(Events(), "shard_opened"), 0);
}

TEST_F(DataGateTest, SymlinkIntoAManifestedDirectoryIsGovernedByItsTarget) {
  ASSERT_TRUE(Prep("acme", "acme", {"NO"}).ok());
  fs::create_directories(Path("links"));
  fs::create_symlink(Path("acme/train_000000.bin"), Path("links/train_000000.bin"));
  fs::create_directory_symlink(Path("acme"), Path("dirlink"));
  for (const std::string glob : {"links/train_*.bin", "dirlink/train_*.bin"}) {
    StatusOr<DataLoader> loader = Open(glob, Untenanted(nullptr));
    ASSERT_FALSE(loader.ok()) << glob;
    EXPECT_THAT(loader.status().message(), HasSubstr(Path("acme/manifest.textproto") +
                                                     " belongs to tenant acme, but this job has no tenant"));
  }
  // For acme's job the link is the listed shard itself: verified and read (from its real path).
  StatusOr<DataLoader> loader = Open("links/train_*.bin", Policy());
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  EXPECT_THAT(AuditLines(Path("audit.jsonl"), "manifest_opened")[0],
              HasSubstr("\"path\":\"" + Path("acme/manifest.textproto") + "\""));
  // In the residency too: an SE node is refused the linked shard.
  loader = Open("links/train_*.bin", Policy("acme", "SE"));
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr("jurisdiction SE is not allowed"));
}

TEST_F(DataGateTest, ListedShardMissingFromDiskIsRefusedNamingShardAndManifest) {
  StatusOr<PrepResult> r = Prep("data", "acme", {"NO"}, {}, 2000);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_GE(r->train_files.size(), 3u);
  fs::remove(Path("data/train_000001.bin"));
  StatusOr<DataLoader> loader = Open("data/train_*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr("data.train: " + Path("data/train_000001.bin") + " is listed in " +
                        Path("data/manifest.textproto") + " but is missing from disk"));
  EXPECT_EQ(Events(), std::vector<std::string>{"refusal"});
  // A glob naming only the shards that are there reads them: the rule is per glob pattern.
  loader = Open("data/train_00000[02].bin", Policy());
  EXPECT_TRUE(loader.ok()) << loader.status().message();
}

TEST_F(DataGateTest, UnlistedShardBesideTheManifestIsRefusedEvenWhenTheGlobSkipsIt) {
  ASSERT_TRUE(Prep("data", "acme", {"NO"}).ok());
  fs::copy_file(Path("data/val_000000.bin"), Path("data/val_000007.bin"));
  StatusOr<DataLoader> loader = Open("data/train_000000.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), HasSubstr(Path("data/val_000007.bin") + " is not listed in " +
                                                   Path("data/manifest.textproto")));
  fs::remove(Path("data/val_000007.bin"));
  // Any file the glob's pattern matches counts, whatever its name.
  WriteText(Path("data/extra.bin"), "x");
  loader = Open("data/*.bin", Policy());
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              HasSubstr(Path("data/extra.bin") + " is not listed in " + Path("data/manifest.textproto")));
  EXPECT_EQ(Count(Events(), "shard_opened"), 0);
}

}  // namespace
}  // namespace fjord
