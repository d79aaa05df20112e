// Tenancy in one process: codes and names, residency decisions, node identity files, the rank
// gate (message, audit record, no side effects), the checkpoint gate (foreign tenant, wrong key,
// flipped byte, plaintext substitution, residency) and Tenancy::Start's audit records.
#include "runtime/tenancy/tenancy.h"

#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include "common/host.h"
#include "common/sha256.h"
#include "runtime/train/config.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::AuditEvents;
using testing::AuditLines;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::ScopedEnv;
using testing::WriteText;

class TenancyUnitTest : public testing::TenancyTest {
 protected:
  proto::JobSpec Job(const std::string& extra) {
    StatusOr<proto::JobSpec> job = ParseJobSpec(
        "data { train: \"" + Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n" + extra,
        "job", {});
    EXPECT_TRUE(job.ok()) << job.status().message();
    return job.ok() ? *job : proto::JobSpec();
  }
  proto::JobSpec Acme(const std::string& more = "") {
    return Job("tenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n" + more);
  }
  std::string KeyFile(const std::string& name, char fill) {
    WriteText(Path(name), std::string(64, fill), 0600);
    return Path(name);
  }
};

TEST_F(TenancyUnitTest, CodesNamesAndLists) {
  EXPECT_TRUE(IsIsoCountryCode("NO"));
  EXPECT_TRUE(IsIsoCountryCode("SE"));
  EXPECT_TRUE(IsIsoCountryCode("GB"));
  EXPECT_FALSE(IsIsoCountryCode("no"));
  EXPECT_FALSE(IsIsoCountryCode("XK"));
  EXPECT_FALSE(IsIsoCountryCode("EU"));
  EXPECT_FALSE(IsIsoCountryCode("NOR"));
  int n = 0;
  for (char a = 'A'; a <= 'Z'; ++a) {
    for (char b = 'A'; b <= 'Z'; ++b) n += IsIsoCountryCode(std::string{a, b});
  }
  EXPECT_EQ(n, 249);  // the officially assigned codes
  EXPECT_THAT(JurisdictionProblem("no"), HasSubstr("write \"NO\""));
  EXPECT_THAT(JurisdictionProblem("UK"), HasSubstr("write \"GB\""));
  EXPECT_THAT(JurisdictionProblem("EU"), HasSubstr("is not a country"));
  EXPECT_THAT(JurisdictionProblem("SWE"), HasSubstr("3 letters"));
  EXPECT_EQ(JurisdictionProblem("NO"), "");
  EXPECT_TRUE(IsValidTenantId("acme"));
  EXPECT_TRUE(IsValidTenantId("acme-2.prod_x"));
  EXPECT_FALSE(IsValidTenantId("Acme"));
  EXPECT_FALSE(IsValidTenantId("-acme"));
  EXPECT_FALSE(IsValidTenantId(""));
  EXPECT_FALSE(IsValidTenantId(std::string(65, 'a')));
  EXPECT_TRUE(IsValidSiteName("osl1"));
  EXPECT_FALSE(IsValidSiteName("osl 1"));
}

TEST_F(TenancyUnitTest, ResidencyDecisions) {
  ResidencyPolicy p{"acme", {"NO", "SE"}, {}};
  EXPECT_TRUE(p.Allows("NO", "osl1"));
  EXPECT_TRUE(p.Allows("SE", "anything"));
  EXPECT_FALSE(p.Allows("DK", "cph1"));
  EXPECT_THAT(p.WhyNot("DK", "cph1"), HasSubstr("jurisdiction DK is not allowed (allowed: NO, SE)"));
  EXPECT_EQ(p.Describe(), "jurisdictions NO, SE; sites: any");
  p.sites = {"osl1"};
  EXPECT_FALSE(p.Allows("NO", "osl2"));
  EXPECT_THAT(p.WhyNot("NO", "osl2"), HasSubstr("site osl2 is not allowed (allowed sites: osl1)"));
  ResidencyPolicy off;
  EXPECT_TRUE(off.Allows("US", "x"));  // no tenant: nothing enforced
  EXPECT_EQ(AuditPathFor(Acme()), Path("run") + "/audit.jsonl");
  EXPECT_EQ(AuditPathFor(Acme("audit_log: \"/var/log/x.jsonl\"\n")), "/var/log/x.jsonl");
  EXPECT_EQ(*JobDigest(Acme()), *Sha256Hex(JobSpecToText(Acme())));
}

TEST_F(TenancyUnitTest, NodeIdentityIsReadAndValidated) {
  StatusOr<LocalNode> node = ReadNodeIdentityFile(Identity("NO", "osl1"), false);
  ASSERT_TRUE(node.ok()) << node.status().message();
  EXPECT_EQ(node->identity.jurisdiction(), "NO");
  EXPECT_EQ(node->identity.site(), "osl1");

  StatusOr<LocalNode> missing = ReadNodeIdentityFile(Path("none.textproto"), false);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("has not been provisioned for tenant jobs"));

  WriteText(Path("bad.textproto"), "hostname: \"h\"\njurisdicton: \"NO\"\n");
  StatusOr<LocalNode> bad = ReadNodeIdentityFile(Path("bad.textproto"), false);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr(Path("bad.textproto") + ":2:"));
  EXPECT_THAT(bad.status().message(), HasSubstr("fjord.proto.NodeIdentity"));

  WriteText(Path("lower.textproto"), "hostname: \"h\"\nsite: \"osl1\"\njurisdiction: \"no\"\n");
  StatusOr<LocalNode> lower = ReadNodeIdentityFile(Path("lower.textproto"), false);
  ASSERT_FALSE(lower.ok());
  EXPECT_THAT(lower.status().message(),
              HasSubstr(Path("lower.textproto") + ":3:1: jurisdiction \"no\" is not upper case"));

  WriteText(Path("nosite.textproto"), "hostname: \"h\"\njurisdiction: \"NO\"\n");
  EXPECT_THAT(ReadNodeIdentityFile(Path("nosite.textproto"), false).status().message(),
              HasSubstr("site \"\" is missing"));
}

TEST_F(TenancyUnitTest, NodeIdentityThatCannotBeStattedOrLacksAHostnameIsRefused) {
  WriteText(Path("file"), "a regular file, not a directory");
  StatusOr<LocalNode> node = ReadNodeIdentityFile(Path("file/node.textproto"), false);  // ENOTDIR
  ASSERT_FALSE(node.ok());
  EXPECT_EQ(node.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(node.status().message(), "node identity " + Path("file/node.textproto") +
                                         ": Not a directory; check the path and its permissions");

  WriteText(Path("nohost.textproto"), "jurisdiction: \"NO\"\nsite: \"osl1\"\n");
  node = ReadNodeIdentityFile(Path("nohost.textproto"), false);
  ASSERT_FALSE(node.ok());
  EXPECT_EQ(node.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(node.status().message(),
              HasSubstr(Path("nohost.textproto") + ": hostname is missing: write hostname: \"" +
                        ThisHostname() + "\""));
  EXPECT_THAT(node.status().message(), HasSubstr("the operator must correct the node identity"));
}

TEST_F(TenancyUnitTest, StrictIdentityMustBeRootOwnedAndNotWritableByOthers) {
  const std::string path = Identity("NO", "osl1");
  ::chmod(dir_.c_str(), 0755);
  if (::geteuid() == 0) {
    ASSERT_TRUE(ReadNodeIdentityFile(path, true).ok());
    ::chmod(path.c_str(), 0666);
    StatusOr<LocalNode> writable = ReadNodeIdentityFile(path, true);
    ASSERT_FALSE(writable.ok());
    EXPECT_THAT(writable.status().message(), HasSubstr("writable by group or others (mode 0666)"));
    EXPECT_THAT(writable.status().message(), HasSubstr("chown root:root " + path + " && chmod 644 " + path));
    ::chmod(path.c_str(), 0644);
    ASSERT_EQ(::chown(path.c_str(), 65534, 65534), 0);
  }
  StatusOr<LocalNode> foreign = ReadNodeIdentityFile(path, true);
  ASSERT_FALSE(foreign.ok());
  EXPECT_THAT(foreign.status().message(), HasSubstr("not root"));
  EXPECT_THAT(foreign.status().message(),
              HasSubstr("another user could change where this node claims to be"));
}

TEST_F(TenancyUnitTest, IdentityOfAnotherHostIsRefused) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("NO", "osl1", "node", "some-other-host"));
  StatusOr<LocalNode> node = ReadNodeIdentity();
  ASSERT_FALSE(node.ok());
  EXPECT_THAT(node.status().message(),
              HasSubstr("names host \"some-other-host\" but this host is \"" + ThisHostname()));
  EXPECT_THAT(node.status().message(), HasSubstr("belongs to another node"));
}

TEST_F(TenancyUnitTest, RankGatePassesInsideTheResidency) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("NO", "osl1"));
  StatusOr<RankGateResult> gate = RankGate(Acme());
  ASSERT_TRUE(gate.ok()) << gate.status().message();
  EXPECT_TRUE(gate->enabled);
  EXPECT_TRUE(gate->node.overridden);
  EXPECT_EQ(gate->node.identity.jurisdiction(), "NO");
  EXPECT_FALSE(fs::exists(Path("run")));  // the gate itself writes nothing when it passes
}

TEST_F(TenancyUnitTest, RankGateIsOffWithoutATenant) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Path("does-not-exist"));
  StatusOr<RankGateResult> gate = RankGate(Job(""));
  ASSERT_TRUE(gate.ok()) << gate.status().message();
  EXPECT_FALSE(gate->enabled);
}

TEST_F(TenancyUnitTest, RankGateRefusesAForeignNodeWithEverythingTheOperatorNeeds) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("SE", "sto1"));
  ScopedEnv rank("OMPI_COMM_WORLD_RANK", "1");
  ScopedEnv size("OMPI_COMM_WORLD_SIZE", "2");
  fs::create_directories(Path("run"));
  StatusOr<RankGateResult> gate = RankGate(Acme());
  ASSERT_FALSE(gate.ok());
  EXPECT_EQ(gate.status().code(), StatusCode::kFailedPrecondition);
  const std::string& m = gate.status().message();
  EXPECT_THAT(m, HasSubstr("rank 1 on host " + ThisHostname()));
  EXPECT_THAT(m, HasSubstr("this node is in jurisdiction SE, site sto1"));
  EXPECT_THAT(m, HasSubstr("a test override from FJORD_NODE_IDENTITY"));
  EXPECT_THAT(m, HasSubstr("tenant acme allows jurisdictions NO; sites: any"));
  EXPECT_THAT(m, HasSubstr("stopped before reading any data or creating communicators"));
  EXPECT_THAT(m, HasSubstr("fjord launch JOB --inventory INV"));
  EXPECT_THAT(m, Not(HasSubstr("could not be recorded")));
  // The refusing rank records its own refusal; nothing else is in the log.
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log), std::vector<std::string>{"refusal"});
  const std::string line = AuditLines(log, "refusal")[0];
  EXPECT_THAT(line, HasSubstr("\"actor\":\"rank1@" + ThisHostname() + "\""));
  EXPECT_THAT(line, HasSubstr("\"gate\":\"rank\",\"rank\":1"));
  EXPECT_THAT(line, HasSubstr("\"jurisdiction\":\"SE\""));
  EXPECT_THAT(line, HasSubstr("\"override\":true"));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

// Several slurmd on one machine share its hostname: %n in the test override picks each Slurm node's
// own identity file (scripts/slurm-cluster.sh), so the gate still tells the nodes apart.
TEST_F(TenancyUnitTest, IdentityOverridePerSlurmNode) {
  Identity("NO", "osl1", "n1");
  Identity("SE", "sto1", "n3");
  ScopedEnv env("FJORD_NODE_IDENTITY", Path("%n.textproto"));
  {
    ScopedEnv node("SLURMD_NODENAME", "n1");
    StatusOr<RankGateResult> gate = RankGate(Acme());
    ASSERT_TRUE(gate.ok()) << gate.status().message();
    EXPECT_EQ(gate->node.path, Path("n1.textproto"));
  }
  {
    ScopedEnv node("SLURMD_NODENAME", "n3");
    fs::create_directories(Path("run"));
    StatusOr<RankGateResult> gate = RankGate(Acme());
    ASSERT_FALSE(gate.ok());
    EXPECT_THAT(gate.status().message(),
                HasSubstr("on host " + ThisHostname() +
                          " (Slurm node n3): residency gate: "
                          "this node is in jurisdiction SE, site sto1 (node identity " +
                          Path("n3.textproto")));
    EXPECT_THAT(AuditLines(Path("run/audit.jsonl"), "refusal")[0], HasSubstr("\"slurm_node\":\"n3\""));
  }
  {
    ScopedEnv node("SLURMD_NODENAME", std::nullopt);
    StatusOr<LocalNode> id = ReadNodeIdentity();
    ASSERT_FALSE(id.ok());
    EXPECT_THAT(id.status().message(),
                HasSubstr("FJORD_NODE_IDENTITY (a test override) is \"" + Path("%n.textproto") +
                          "\": %n stands for the Slurm node name, but SLURMD_NODENAME is not set"));
  }
}

TEST_F(TenancyUnitTest, RankGateRefusesAnUnprovisionedNodeAndCreatesNothing) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Path("missing.textproto"));
  StatusOr<RankGateResult> gate = RankGate(Acme());
  ASSERT_FALSE(gate.ok());
  EXPECT_THAT(gate.status().message(), HasSubstr("cannot establish this node's jurisdiction"));
  EXPECT_THAT(gate.status().message(), HasSubstr("has not been provisioned"));
  EXPECT_THAT(gate.status().message(),
              HasSubstr("could not be recorded in the audit log"));  // no run dir here
  EXPECT_FALSE(fs::exists(Path("run")));
}

// ---- Checkpoints ----------------------------------------------------------------------------

class CheckpointGateTest : public TenancyUnitTest {
 protected:
  // The seal SaveCheckpoint writes step `step` of `job` with.
  StatusOr<CheckpointSeal> WriterSeal(const proto::JobSpec& job, int64_t step = 6) {
    StatusOr<CheckpointSeal> seal = CheckpointSealFor(job);
    if (seal.ok()) {
      seal->job_sha256 = *JobDigest(job);
      seal->step = step;
    }
    return seal;
  }
  // A checkpoint dir with model.bin (and optimizer.bin) written by `job`, plus its tenant record.
  std::string Write(const proto::JobSpec& job, const std::string& name = "ckpt", int64_t step = 6) {
    StatusOr<CheckpointSeal> seal = WriterSeal(job, step);
    EXPECT_TRUE(seal.ok()) << seal.status().message();
    seal->node.set_hostname("no1");
    seal->node.set_jurisdiction("NO");
    seal->node.set_site("osl1");
    const std::string dir = Path(name);
    fs::create_directories(dir);
    for (const std::string file : {"model.bin", "optimizer.bin"}) {
      const std::string bytes = "tensor bytes of " + file + std::string(100, 'p');
      EXPECT_TRUE(WriteCheckpointFile(dir + "/" + file, {{bytes.data(), bytes.size()}}, *seal).ok());
    }
    EXPECT_TRUE(WriteCheckpointTenantRecord(dir, *seal, {"model.bin", "optimizer.bin"}).ok());
    return dir;
  }
  StatusOr<CheckpointSeal> Check(const proto::JobSpec& job, const std::string& dir, CheckpointUse use,
                                 const std::string& jurisdiction = "NO") {
    StatusOr<CheckpointSeal> seal = CheckpointSealFor(job);
    if (!seal.ok()) return seal.status();
    proto::NodeIdentity node;
    node.set_hostname("node-x");
    node.set_jurisdiction(jurisdiction);
    node.set_site("osl1");
    return CheckCheckpointTenant(dir, *seal, &node, use);
  }
  void Flip(const std::string& path, size_t at) {
    std::string bytes = ReadText(path);
    bytes[at] ^= 0x20;
    WriteText(path, bytes);
  }
};

TEST_F(CheckpointGateTest, OwnEncryptedCheckpointLoadsAndRecordsTenantAndKey) {
  const proto::JobSpec job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  const std::string dir = Write(job);
  const std::string record = ReadText(dir + "/tenant.textproto");
  EXPECT_THAT(record, HasSubstr("tenant: \"acme\""));
  EXPECT_THAT(record, HasSubstr("allowed_jurisdictions: \"NO\""));
  EXPECT_THAT(record, HasSubstr("encrypted: true"));
  EXPECT_THAT(record, HasSubstr("cipher: \"AES-256-GCM\""));
  EXPECT_THAT(record, HasSubstr("written_in_jurisdiction: \"NO\""));
  EXPECT_EQ(ReadText(dir + "/model.bin").find("tensor bytes"), std::string::npos);  // encrypted at rest
  StatusOr<CheckpointSeal> seal = Check(job, dir, CheckpointUse::kResume);
  ASSERT_TRUE(seal.ok()) << seal.status().message();
  StatusOr<std::string> model = ReadCheckpointFile(dir + "/model.bin", *seal);
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_THAT(*model, HasSubstr("tensor bytes of model.bin"));
}

TEST_F(CheckpointGateTest, AnotherTenantsCheckpointIsRefused) {
  const proto::JobSpec other =
      Job("tenant { id: \"globex\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
  const std::string dir = Write(other);
  StatusOr<CheckpointSeal> r = Check(Acme(), dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("checkpoint " + dir + " belongs to tenant \"globex\""));
  EXPECT_THAT(r.status().message(), HasSubstr("this job is tenant \"acme\""));
  EXPECT_THAT(r.status().message(), HasSubstr("may load only its own checkpoints"));
  r = Check(other, dir, CheckpointUse::kResume);
  EXPECT_TRUE(r.ok()) << r.status().message();
  r = Check(Job(""), dir, CheckpointUse::kInitFrom);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("but this job has no tenant: add tenant { id: \"globex\" }"));
}

TEST_F(CheckpointGateTest, UntenantedCheckpointIsPublicWeightsOnly) {
  const std::string dir = Write(Job(""));
  EXPECT_FALSE(fs::exists(dir + "/tenant.textproto"));
  StatusOr<CheckpointSeal> resume = Check(Acme(), dir, CheckpointUse::kResume);
  ASSERT_FALSE(resume.ok());
  EXPECT_THAT(resume.status().message(), HasSubstr("has no tenant record"));
  EXPECT_THAT(resume.status().message(), HasSubstr("use train.init_from"));
  EXPECT_TRUE(Check(Acme(), dir, CheckpointUse::kInitFrom).ok());
}

TEST_F(CheckpointGateTest, WrongKeyIsRefusedByKeyIdAndByTheTag) {
  const proto::JobSpec job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  const proto::JobSpec wrong =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("wrong.key", 'b') + "\" }\n");
  const std::string dir = Write(job);
  StatusOr<CheckpointSeal> r = Check(wrong, dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("was encrypted with key id"));
  EXPECT_THAT(r.status().message(), HasSubstr("wrong key"));
  // A record edited to name the wrong key's id gets past the id check; the tag still refuses.
  StatusOr<CheckpointSeal> wrong_seal = WriterSeal(wrong);
  wrong_seal->job_sha256 = *JobDigest(job);  // only the key differs
  std::string record = ReadText(dir + "/tenant.textproto");
  StatusOr<CheckpointSeal> right_seal = CheckpointSealFor(job);
  record.replace(record.find(*right_seal->key->KeyId()), 16, *wrong_seal->key->KeyId());
  WriteText(dir + "/tenant.textproto", record);
  r = Check(wrong, dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("tenant.seal does not authenticate"));
  EXPECT_THAT(r.status().message(), HasSubstr("wrong key or modified file"));
  // Past the record (its check skipped by reading with the wrong key's seal directly), the
  // tensors' own tags refuse.
  StatusOr<std::string> model = ReadCheckpointFile(dir + "/model.bin", *wrong_seal);
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr(dir + "/model.bin"));
  EXPECT_THAT(model.status().message(), HasSubstr("wrong key or modified file"));
  // No key at all.
  r = Check(Acme(), dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("is encrypted (AES-256-GCM"));
  EXPECT_THAT(r.status().message(), HasSubstr("no checkpoint.encryption_key_file"));
  StatusOr<std::string> unkeyed = ReadCheckpointFile(dir + "/model.bin", CheckpointSeal());
  ASSERT_FALSE(unkeyed.ok());
  EXPECT_THAT(unkeyed.status().message(),
              HasSubstr("is encrypted (AES-256-GCM): set checkpoint.encryption_key_file"));
}

TEST_F(CheckpointGateTest, FlippedByteIsRefusedEncryptedOrNot) {
  const proto::JobSpec sealed_job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  const std::string sealed = Write(sealed_job, "sealed");
  StatusOr<CheckpointSeal> seal = Check(sealed_job, sealed, CheckpointUse::kResume);
  ASSERT_TRUE(seal.ok());
  Flip(sealed + "/optimizer.bin", 60);
  // The authenticated record holds the digest of the sealed bytes: the gate refuses first ...
  StatusOr<CheckpointSeal> flipped = Check(sealed_job, sealed, CheckpointUse::kResume);
  ASSERT_FALSE(flipped.ok());
  EXPECT_EQ(flipped.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(flipped.status().message(),
              HasSubstr(sealed + "/optimizer.bin was modified after the checkpoint was written"));
  // ... and a flip after the gate (a reader racing a writer) fails the tag.
  StatusOr<std::string> opt = ReadCheckpointFile(sealed + "/optimizer.bin", *seal);
  ASSERT_FALSE(opt.ok());
  EXPECT_THAT(opt.status().message(), HasSubstr("wrong key or modified file"));
  EXPECT_TRUE(ReadCheckpointFile(sealed + "/model.bin", *seal).ok());

  const std::string plain = Write(Acme(), "plain");
  Flip(plain + "/model.bin", 3);
  StatusOr<CheckpointSeal> r = Check(Acme(), plain, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(),
              HasSubstr(plain + "/model.bin was modified after the checkpoint was written"));
}

// The tenant record and job.textproto are plaintext even in an encrypted checkpoint; the record's
// sealed copy (tenant.seal) makes edits of either evident to the key holder.
TEST_F(CheckpointGateTest, EditedRecordOrJobOfAnEncryptedCheckpointIsRefused) {
  const proto::JobSpec job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  StatusOr<CheckpointSeal> seal = WriterSeal(job);
  ASSERT_TRUE(seal.ok());
  auto write = [&](const std::string& name) {
    const std::string dir = Write(job, name);
    WriteText(dir + "/job.textproto", "model { n_layer: 1 }\n");
    EXPECT_TRUE(
        WriteCheckpointTenantRecord(dir, *seal, {"model.bin", "optimizer.bin", "job.textproto"}).ok());
    return dir;
  };
  const std::string intact = write("intact");
  EXPECT_TRUE(fs::exists(intact + "/tenant.seal"));
  EXPECT_EQ(ReadText(intact + "/tenant.seal").find("acme"), std::string::npos);  // sealed, not plain
  ASSERT_TRUE(Check(job, intact, CheckpointUse::kResume).ok());

  // The record widened to another jurisdiction: it no longer matches its sealed copy.
  const std::string widened = write("widened");
  std::string record = ReadText(widened + "/tenant.textproto");
  record.replace(record.find("allowed_jurisdictions: \"NO\""), 27,
                 "allowed_jurisdictions: \"NO\"\nallowed_jurisdictions: \"SE\"");
  WriteText(widened + "/tenant.textproto", record);
  StatusOr<CheckpointSeal> r = Check(job, widened, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(),
              HasSubstr(widened + "/tenant.textproto was modified after the checkpoint "
                                  "was written: it differs from its sealed copy tenant.seal"));

  // job.textproto edited: its digest in the (authenticated) record no longer matches.
  const std::string edited = write("edited");
  WriteText(edited + "/job.textproto", "model { n_layer: 1 }\naudit_log: \"/tmp/elsewhere.jsonl\"\n");
  r = Check(job, edited, CheckpointUse::kEval);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr(edited + "/job.textproto was modified after the checkpoint was written"));

  // The sealed copy removed, or replaced by another checkpoint's (same tenant, same key).
  const std::string removed = write("removed");
  fs::remove(removed + "/tenant.seal");
  r = Check(job, removed, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("its tenant.seal (the sealed copy of tenant.textproto) is missing"));
  const std::string swapped = write("swapped");
  WriteText(swapped + "/job.textproto", "model { n_layer: 2 }\n");
  ASSERT_TRUE(
      WriteCheckpointTenantRecord(swapped, *seal, {"model.bin", "optimizer.bin", "job.textproto"}).ok());
  fs::copy_file(intact + "/tenant.seal", swapped + "/tenant.seal", fs::copy_options::overwrite_existing);
  r = Check(job, swapped, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("differs from its sealed copy tenant.seal"));
}

TEST_F(CheckpointGateTest, PlaintextWhereEncryptedBelongsIsRefused) {
  const proto::JobSpec sealed_job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  const std::string plain = Write(Acme(), "plain");
  StatusOr<CheckpointSeal> r = Check(sealed_job, plain, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("is not encrypted, but this job encrypts its checkpoints"));
  // A single plaintext file swapped into an encrypted checkpoint.
  const std::string sealed = Write(sealed_job, "sealed");
  StatusOr<CheckpointSeal> seal = Check(sealed_job, sealed, CheckpointUse::kResume);
  ASSERT_TRUE(seal.ok());
  fs::copy_file(plain + "/model.bin", sealed + "/model.bin", fs::copy_options::overwrite_existing);
  // Refused twice over: the authenticated record holds the sealed file's digest, and reading the
  // file with the seal refuses plaintext.
  StatusOr<CheckpointSeal> swapped = Check(sealed_job, sealed, CheckpointUse::kResume);
  ASSERT_FALSE(swapped.ok());
  EXPECT_THAT(swapped.status().message(), HasSubstr(sealed + "/model.bin was modified after the checkpoint"));
  StatusOr<std::string> model = ReadCheckpointFile(sealed + "/model.bin", *seal);
  ASSERT_FALSE(model.ok());
  EXPECT_THAT(model.status().message(), HasSubstr("may have been substituted"));
}

TEST_F(CheckpointGateTest, CheckpointOutsideItsResidencyIsRefused) {
  const std::string dir = Write(Acme());
  StatusOr<CheckpointSeal> r = Check(Acme(), dir, CheckpointUse::kResume, "SE");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("may be opened only in jurisdictions NO"));
  EXPECT_THAT(r.status().message(), HasSubstr("this node (node-x) is in jurisdiction SE"));
}

TEST_F(CheckpointGateTest, ListedFileThatCannotBeReadIsRefusedAsIncomplete) {
  const std::string dir = Write(Acme());
  fs::remove(dir + "/optimizer.bin");
  StatusOr<CheckpointSeal> r = Check(Acme(), dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(
      r.status().message(),
      HasSubstr("checkpoint " + dir + ": optimizer.bin is listed in tenant.textproto but cannot be read"));
  EXPECT_THAT(r.status().message(), HasSubstr("No such file or directory"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("the checkpoint is incomplete; restore it from a copy you trust"));
  // A directory in its place opens but cannot be read.
  fs::create_directories(dir + "/optimizer.bin");
  r = Check(Acme(), dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(),
              HasSubstr("optimizer.bin (listed in tenant.textproto) is not a regular file"));
  EXPECT_THAT(r.status().message(), HasSubstr("restore the checkpoint from a copy you trust"));
}

TEST_F(CheckpointGateTest, OutsideAJobASealedModelWithoutItsTenantRecordIsRefused) {
  const std::string key = KeyFile("acme.key", 'a');
  const proto::JobSpec job = Acme("checkpoint { encryption_key_file: \"" + key + "\" }\n");
  const std::string dir = Write(job);
  fs::remove(dir + "/tenant.textproto");
  CheckpointAccess access;
  access.key_file = key;
  access.audit_log = Path("audit.jsonl");
  StatusOr<OpenedCheckpoint> r = OpenCheckpointOutsideJob(dir, job, access);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("checkpoint " + dir +
                                              ": model.bin is encrypted but tenant.textproto "
                                              "is missing, so its tenant and key cannot be checked"));
  EXPECT_THAT(r.status().message(), HasSubstr("restore the checkpoint from a copy you trust"));
}

TEST_F(CheckpointGateTest, OutsideAJobAPlaintextCheckpointGivenAKeyIsRefused) {
  const std::string dir = Write(Job(""));
  ASSERT_FALSE(fs::exists(dir + "/tenant.textproto"));
  CheckpointAccess access;
  access.key_file = KeyFile("acme.key", 'a');
  StatusOr<OpenedCheckpoint> r = OpenCheckpointOutsideJob(dir, Job(""), access);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(),
              HasSubstr("checkpoint " + dir + " is not encrypted (it has no tenant.textproto)"));
  EXPECT_THAT(r.status().message(), HasSubstr("may have been substituted"));
  EXPECT_THAT(r.status().message(), HasSubstr("Drop --key to read a plaintext checkpoint"));
  access.key_file.clear();
  EXPECT_TRUE(OpenCheckpointOutsideJob(dir, Job(""), access).ok());
}

TEST_F(CheckpointGateTest, OutsideAJobAResidentCheckpointOnAnUnprovisionedHostIsRefusedAndAudited) {
  const std::string dir = Write(Acme());
  ScopedEnv env("FJORD_NODE_IDENTITY", Path("none.textproto"));
  CheckpointAccess access;
  access.audit_log = Path("audit.jsonl");
  StatusOr<OpenedCheckpoint> r = OpenCheckpointOutsideJob(dir, Acme(), access);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  const std::string& m = r.status().message();
  EXPECT_THAT(m,
              HasSubstr("checkpoint " + dir + " of tenant \"acme\" may be opened only in jurisdictions NO"));
  EXPECT_THAT(m, HasSubstr("fjord eval cannot establish where this host (" + ThisHostname() + ") is"));
  EXPECT_THAT(m, HasSubstr("node identity " + Path("none.textproto") + ": no such file"));
  EXPECT_THAT(m, HasSubstr("the operator writes it as root at provisioning"));
  const std::vector<std::string> events = AuditEvents(Path("audit.jsonl"));
  EXPECT_EQ(testing::Count(events, "refusal"), 1);
  EXPECT_THAT(AuditLines(Path("audit.jsonl"), "refusal")[0], HasSubstr("may be opened only in"));
}

// Hole 3: sealed files of another step, another job of the same tenant and key, or another name.
// Two oracles: the record's digests (the gate), and each file's authenticated data (the read,
// with a seal taken before the file was swapped in, as a reader racing the swap would hold).
TEST_F(CheckpointGateTest, SealedFileOfAnotherStepJobOrNameIsRefused) {
  const std::string key = KeyFile("acme.key", 'a');
  const proto::JobSpec job = Acme("checkpoint { encryption_key_file: \"" + key + "\" }\n");
  proto::JobSpec other_job = job;  // same tenant and key, another job
  other_job.set_run_dir(Path("other"));
  ASSERT_NE(*JobDigest(other_job), *JobDigest(job));
  struct Case {
    std::string what;
    std::string from;  // the checkpoint the file comes from
    std::string file, as;
  };
  const std::string step3 = Write(job, "step_000003", 3);
  const std::string other6 = Write(other_job, "other_step_000006", 6);
  const std::vector<Case> cases = {
      {"model.bin of step 3", step3, "model.bin", "model.bin"},
      {"optimizer.bin of step 3", step3, "optimizer.bin", "optimizer.bin"},
      {"model.bin of another job", other6, "model.bin", "model.bin"},
      {"optimizer.bin renamed to model.bin", "", "optimizer.bin", "model.bin"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string dir = Write(job, "case/step_000006", 6);
    StatusOr<CheckpointSeal> before = Check(job, dir, CheckpointUse::kResume);
    ASSERT_TRUE(before.ok()) << before.status().message();
    EXPECT_EQ(before->step, 6);
    EXPECT_EQ(before->job_sha256, *JobDigest(job));
    const std::string source = (c.from.empty() ? dir : c.from) + "/" + c.file;
    const std::string bytes = ReadText(source);
    ASSERT_EQ(bytes.substr(0, 8), "FJSEALED");
    WriteText(dir + "/" + c.as, bytes);
    StatusOr<CheckpointSeal> r = Check(job, dir, CheckpointUse::kEval);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr("checkpoint file " + dir + "/" + c.as));
    EXPECT_THAT(r.status().message(),
                HasSubstr("for " + c.as + " of the checkpoint of tenant \"acme\", job " +
                          JobDigest(job)->substr(0, 16) + "..., step 6"));
    StatusOr<std::string> read = ReadCheckpointFile(dir + "/" + c.as, *before);
    ASSERT_FALSE(read.ok());
    EXPECT_THAT(read.status().message(), HasSubstr("wrong key or modified file"));
    EXPECT_THAT(read.status().message(), HasSubstr("does not authenticate as " + c.as +
                                                   " of the checkpoint of "
                                                   "tenant \"acme\""));
    fs::remove_all(Path("case"));
  }

  // tenant.seal of step 3 beside step 6's record: it authenticates step 3's record, not this one.
  const std::string dir = Write(job, "step_000006", 6);
  fs::copy_file(step3 + "/tenant.seal", dir + "/tenant.seal", fs::copy_options::overwrite_existing);
  StatusOr<CheckpointSeal> r = Check(job, dir, CheckpointUse::kExport);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("tenant.seal does not authenticate as the sealed record of the "
                                              "checkpoint of tenant \"acme\""));
  EXPECT_THAT(r.status().message(), HasSubstr("step 6"));
  // All of step 3 (record and seal too) in step 6's directory: consistent, but for step 3.
  for (const std::string f : {"model.bin", "optimizer.bin", "tenant.textproto", "tenant.seal"}) {
    fs::copy_file(step3 + "/" + f, dir + "/" + f, fs::copy_options::overwrite_existing);
  }
  r = Check(job, dir, CheckpointUse::kResume);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("is named for step 6 but its tenant.textproto was written for step 3"));
  // The same files under their own name still open: the control refuses moves, not checkpoints.
  EXPECT_TRUE(Check(job, step3, CheckpointUse::kResume).ok());
}

// Records of encrypted checkpoints from before version 2 did not bind step and job: refused by
// version. Plaintext records were never authenticated: version 1 still opens as before.
TEST_F(CheckpointGateTest, VersionOneRecordsAreRefusedWhenEncryptedAndNewerOnesAlways) {
  const proto::JobSpec job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  auto set_version = [&](const std::string& dir, const std::string& version) {
    std::string record = ReadText(dir + "/tenant.textproto");
    const size_t at = record.find("version: 2\n");
    ASSERT_NE(at, std::string::npos) << record;
    record.replace(at, 11, "version: " + version + "\n");
    WriteText(dir + "/tenant.textproto", record);
  };
  const std::string sealed = Write(job, "sealed");
  set_version(sealed, "1");
  StatusOr<CheckpointSeal> r = Check(job, sealed, CheckpointUse::kEval);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(
      r.status().message(),
      HasSubstr("is encrypted under tenant.textproto version 1 (written by an older fjord), whose sealed "
                "files are not bound to their step and job"));
  const std::string newer = Write(job, "newer");
  set_version(newer, "3");
  r = Check(job, newer, CheckpointUse::kEval);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("is version 3, newer than this fjord reads (2)"));
  const std::string plain = Write(Acme(), "plain");
  set_version(plain, "1");
  EXPECT_TRUE(Check(Acme(), plain, CheckpointUse::kResume).ok());
}

// A record may name only plain regular files inside the checkpoint; nothing else is opened or hashed.
TEST_F(CheckpointGateTest, RecordNamingAFileOutsideTheCheckpointIsRefusedWithoutHashingIt) {
  WriteText(Path("secret"), "outside the checkpoint");
  const std::string secret_digest = *Sha256Hex("outside the checkpoint");
  const std::vector<std::string> names = {"../secret",     "../../../../etc/shadow",       "..", ".", "",
                                          "sub/model.bin", std::string("model.bin\0x", 11)};
  for (const std::string& name : names) {
    SCOPED_TRACE(JsonQuote(name));
    const std::string dir = Write(Acme(), "names");
    proto::CheckpointTenancy record = *ReadCheckpointTenantRecord(dir);
    proto::FileDigest* f = record.add_file();
    f->set_name(name);
    f->set_sha256(secret_digest);
    std::string text;
    ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(record, &text));
    WriteText(dir + "/tenant.textproto", text);
    StatusOr<CheckpointSeal> r = Check(Acme(), dir, CheckpointUse::kEval);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_THAT(r.status().message(), HasSubstr("lists the file name " + JsonQuote(name) +
                                                ", which is not a plain file name inside the checkpoint"));
    EXPECT_THAT(r.status().message(), Not(HasSubstr("SHA-256 is")));
    fs::remove_all(dir);
  }
  // A plain name that is a symbolic link out of the checkpoint, even with the target's digest.
  const std::string dir = Write(Acme(), "link");
  proto::CheckpointTenancy record = *ReadCheckpointTenantRecord(dir);
  for (proto::FileDigest& f : *record.mutable_file()) {
    if (f.name() == "model.bin") f.set_sha256(secret_digest);
  }
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(record, &text));
  WriteText(dir + "/tenant.textproto", text);
  fs::remove(dir + "/model.bin");
  fs::create_symlink(Path("secret"), dir + "/model.bin");
  StatusOr<CheckpointSeal> r = Check(Acme(), dir, CheckpointUse::kEval);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("model.bin (listed in tenant.textproto) is a symbolic link"));
}

// The writer's audit head is anchored in the (sealed) record, and the record says when the
// writer's identity came from FJORD_NODE_IDENTITY.
TEST_F(CheckpointGateTest, RecordAnchorsTheAuditHeadAndTheIdentityOverride) {
  const std::string key_file = KeyFile("acme.key", 'a');
  const proto::JobSpec job = Acme("checkpoint { encryption_key_file: \"" + key_file + "\" }\n");
  fs::create_directories(Path("run"));
  StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(Path("run/audit.jsonl"), "test");
  ASSERT_TRUE(log.ok());
  ASSERT_TRUE((*log)->Append("one").ok());
  StatusOr<AuditAnchor> head = (*log)->Append("two");
  ASSERT_TRUE(head.ok());
  StatusOr<CheckpointSeal> seal = WriterSeal(job);
  seal->audit_log = Path("run/audit.jsonl");
  seal->identity_override = Path("node.textproto");
  const std::string dir = Path("anchored");
  fs::create_directories(dir);
  const std::string bytes = "tensor bytes";
  ASSERT_TRUE(WriteCheckpointFile(dir + "/model.bin", {{bytes.data(), bytes.size()}}, *seal).ok());
  ASSERT_TRUE(WriteCheckpointTenantRecord(dir, *seal, {"model.bin"}).ok());
  ASSERT_TRUE((*log)->Append("three").ok());  // later records do not move the anchor

  StatusOr<proto::AuditAnchor> anchor = ReadCheckpointAuditAnchor(dir);
  ASSERT_TRUE(anchor.ok()) << anchor.status().message();
  EXPECT_EQ(anchor->log(), Path("run/audit.jsonl"));
  EXPECT_EQ(anchor->seq(), 2);
  EXPECT_EQ(anchor->hash(), head->hash);
  StatusOr<EncryptionKey> key = LoadEncryptionKey(key_file, "test");
  ASSERT_TRUE(key.ok());
  StatusOr<proto::AuditAnchor> keyed = ReadCheckpointAuditAnchor(dir, &*key);
  ASSERT_TRUE(keyed.ok()) << keyed.status().message();
  EXPECT_EQ(keyed->hash(), head->hash);
  EXPECT_EQ(ReadCheckpointTenantRecord(dir)->identity_override(), Path("node.textproto"));
  StatusOr<CheckpointSeal> opened = Check(job, dir, CheckpointUse::kEval);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(opened->audit_log, Path("run/audit.jsonl"));

  // An anchor edited to match a truncated log: visible without the key, refused with it.
  std::string record = ReadText(dir + "/tenant.textproto");
  record.replace(record.find("seq: 2"), 6, "seq: 1");
  WriteText(dir + "/tenant.textproto", record);
  EXPECT_EQ(ReadCheckpointAuditAnchor(dir)->seq(), 1);
  StatusOr<proto::AuditAnchor> forged = ReadCheckpointAuditAnchor(dir, &*key);
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(forged.status().message(), HasSubstr("differs from its sealed copy tenant.seal"));
  // No record, or a record without anchor: NotFound.
  EXPECT_EQ(ReadCheckpointAuditAnchor(Path("nowhere")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadCheckpointAuditAnchor(Write(job, "unanchored")).status().code(), StatusCode::kNotFound);
}

// eval, sample and export record the opening in the checkpoint's own chain; --audit-log adds a
// copy and cannot replace it; an opening that cannot reach the own chain is refused.

// A damaged head cannot be anchored: the checkpoint record is refused, naming the head file and
// the checkpoint, rather than anchoring a head that the log's own reader would reject.
TEST_F(CheckpointGateTest, ADamagedAuditHeadIsNotAnchored) {
  const proto::JobSpec job = Acme("");
  fs::create_directories(Path("run"));
  StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(Path("run/audit.jsonl"), "test");
  ASSERT_TRUE(log.ok());
  ASSERT_TRUE((*log)->Append("one").ok());
  WriteText(Path("run/audit.jsonl.head"), "1 not-a-hash\n");
  StatusOr<CheckpointSeal> seal = WriterSeal(job);
  ASSERT_TRUE(seal.ok()) << seal.status().message();
  seal->audit_log = Path("run/audit.jsonl");
  const std::string dir = Path("anchored");
  fs::create_directories(dir);
  const Status s = WriteCheckpointTenantRecord(dir, *seal, {});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("anchoring the head of audit log " + Path("run/audit.jsonl") +
                                     " in checkpoint " + dir));
  EXPECT_THAT(s.message(), HasSubstr(".head is not \"SEQ HASH\" or \"SEQ HASH NEXT\""));
  EXPECT_FALSE(fs::exists(dir + "/tenant.textproto"));
}
TEST_F(CheckpointGateTest, OutsideAJobTheOpeningGoesToTheCheckpointsOwnChainAndToAuditLogToo) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("NO", "osl1"));
  const proto::JobSpec job = Acme();
  fs::create_directories(Path("run"));
  const std::string own = Path("run/audit.jsonl");
  ASSERT_TRUE((*AuditLog::Open(own, "test"))->Append("job_start").ok());
  StatusOr<CheckpointSeal> seal = WriterSeal(job);
  seal->audit_log = own;
  const std::string dir = Path("ckpt");
  fs::create_directories(dir);
  const std::string bytes = "tensor bytes";
  ASSERT_TRUE(WriteCheckpointFile(dir + "/model.bin", {{bytes.data(), bytes.size()}}, *seal).ok());
  ASSERT_TRUE(WriteCheckpointTenantRecord(dir, *seal, {"model.bin"}).ok());

  CheckpointAccess access;
  access.use = CheckpointUse::kExport;
  access.audit_log = Path("elsewhere/audit.jsonl");
  StatusOr<OpenedCheckpoint> opened = OpenCheckpointOutsideJob(dir, job, access);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  ASSERT_EQ(opened->audit.size(), 2u);
  EXPECT_EQ(testing::Count(AuditEvents(own), "checkpoint_opened"), 1);
  EXPECT_EQ(testing::Count(AuditEvents(access.audit_log), "checkpoint_opened"), 1);
  ASSERT_TRUE(opened->Record("checkpoint_exported", AuditRecord().Str("dir", dir)).ok());
  EXPECT_EQ(testing::Count(AuditEvents(own), "checkpoint_exported"), 1);
  EXPECT_EQ(testing::Count(AuditEvents(access.audit_log), "checkpoint_exported"), 1);
  // --audit-log naming the own chain itself records once.
  access.audit_log = own;
  opened = OpenCheckpointOutsideJob(dir, job, access);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(testing::Count(AuditEvents(own), "checkpoint_opened"), 2);

  // The own chain gone (its directory moved away): refused even with --audit-log, which gets the refusal.
  fs::rename(Path("run"), Path("run.moved"));
  access.audit_log = Path("elsewhere/audit.jsonl");
  opened = OpenCheckpointOutsideJob(dir, job, access);
  ASSERT_FALSE(opened.ok());
  EXPECT_THAT(opened.status().message(), HasSubstr("fjord export of checkpoint " + dir +
                                                   " (tenant \"acme\") must be recorded in the "
                                                   "checkpoint's own audit log " +
                                                   own));
  EXPECT_THAT(opened.status().message(), HasSubstr("--audit-log records a copy elsewhere, not instead"));
  EXPECT_FALSE(fs::exists(Path("run")));  // not created by the reader
  EXPECT_EQ(testing::Count(AuditEvents(access.audit_log), "refusal"), 1);
  EXPECT_TRUE(VerifyAuditLog(Path("run.moved/audit.jsonl"))->ok);
}

// resume and init_from inside a job: the opening goes to the job's log and, for a checkpoint of
// another job, to that job's log as well; unreachable, the opening is refused.
TEST_F(TenancyUnitTest, CheckCheckpointAppendsToTheCheckpointsOwnChain) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("NO", "osl1"));
  const std::string key = KeyFile("acme.key", 'a');
  proto::JobSpec writer = Acme("checkpoint { encryption_key_file: \"" + key + "\" }\n");
  writer.set_run_dir(Path("writer"));
  const proto::JobSpec reader = Acme("checkpoint { encryption_key_file: \"" + key + "\" }\n");
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions());
  ASSERT_TRUE(comm.ok());
  StatusOr<RankGateResult> writer_gate = RankGate(writer);
  ASSERT_TRUE(writer_gate.ok());
  StatusOr<std::unique_ptr<Tenancy>> w = Tenancy::Start(writer, *writer_gate, **comm);
  ASSERT_TRUE(w.ok()) << w.status().message();
  CheckpointSeal seal = (*w)->checkpoint_seal();
  EXPECT_EQ(seal.audit_log, Path("writer/audit.jsonl"));
  EXPECT_EQ(seal.identity_override, Path("node.textproto"));  // FJORD_NODE_IDENTITY
  seal.job_sha256 = *JobDigest(writer);
  seal.step = 4;
  const std::string dir = Path("ckpts/step_000004");
  fs::create_directories(dir);
  const std::string bytes = "tensor bytes";
  ASSERT_TRUE(WriteCheckpointFile(dir + "/model.bin", {{bytes.data(), bytes.size()}}, seal).ok());
  ASSERT_TRUE(WriteCheckpointTenantRecord(dir, seal, {"model.bin"}).ok());
  EXPECT_EQ(ReadCheckpointTenantRecord(dir)->identity_override(), Path("node.textproto"));

  StatusOr<RankGateResult> reader_gate = RankGate(reader);
  ASSERT_TRUE(reader_gate.ok());
  StatusOr<std::unique_ptr<Tenancy>> r = Tenancy::Start(reader, *reader_gate, **comm);
  ASSERT_TRUE(r.ok()) << r.status().message();
  StatusOr<CheckpointSeal> opened = (*r)->CheckCheckpoint(dir, CheckpointUse::kInitFrom);
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(opened->step, 4);
  EXPECT_EQ(testing::Count(AuditEvents(Path("run/audit.jsonl")), "checkpoint_opened"), 1);
  EXPECT_EQ(testing::Count(AuditEvents(Path("writer/audit.jsonl")), "checkpoint_opened"), 1);
  // The writer's chain moved away: the opening cannot be recorded there, so it is refused.
  fs::rename(Path("writer"), Path("writer.moved"));
  StatusOr<CheckpointSeal> refused = (*r)->CheckCheckpoint(dir, CheckpointUse::kInitFrom);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(),
              HasSubstr("init_from of checkpoint " + dir + " must be recorded in its own audit log " +
                        Path("writer/audit.jsonl")));
  EXPECT_FALSE(fs::exists(Path("writer")));  // not created by the reader
  EXPECT_EQ(testing::Count(AuditEvents(Path("run/audit.jsonl")), "refusal"), 1);
  EXPECT_EQ(testing::Count(AuditEvents(Path("writer.moved/audit.jsonl")), "checkpoint_opened"), 1);
}

// ---- Tenancy::Start ---------------------------------------------------------------------------

TEST_F(TenancyUnitTest, StartAuditsTheJobAndEachRanksIdentity) {
  const std::string identity = Identity("NO", "osl1");
  ScopedEnv env("FJORD_NODE_IDENTITY", identity);
  ScopedEnv launch("FJORD_LAUNCH_ID", "abc123");
  const proto::JobSpec job =
      Acme("checkpoint { encryption_key_file: \"" + KeyFile("acme.key", 'a') + "\" }\n");
  StatusOr<RankGateResult> gate = RankGate(job);
  ASSERT_TRUE(gate.ok());
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions());
  ASSERT_TRUE(comm.ok());
  StatusOr<std::unique_ptr<Tenancy>> t = Tenancy::Start(job, *gate, **comm);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ((*t)->data_policy().tenant, "acme");
  EXPECT_EQ((*t)->data_policy().jurisdiction, "NO");
  EXPECT_NE((*t)->data_policy().audit, nullptr);
  ASSERT_NE((*t)->checkpoint_seal().key, nullptr);
  EXPECT_EQ((*t)->checkpoint_seal().node.jurisdiction(), "NO");
  ASSERT_TRUE((*t)->RecordJobEnd(OkStatus()).ok());
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log),
            (std::vector<std::string>{"job_start", "rank_identity", "test_override", "job_end"}));
  EXPECT_THAT(AuditLines(log, "job_start")[0], HasSubstr("\"job_sha256\":\"" + *JobDigest(job) + "\""));
  EXPECT_THAT(AuditLines(log, "job_start")[0], HasSubstr("\"launch_id\":\"abc123\""));
  EXPECT_THAT(AuditLines(log, "rank_identity")[0], HasSubstr("\"jurisdiction\":\"NO\",\"site\":\"osl1\""));
  EXPECT_THAT(AuditLines(log, "test_override")[0], HasSubstr(identity));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

TEST_F(TenancyUnitTest, StartWithoutATenantAuditsThat) {
  const proto::JobSpec job = Job("");
  StatusOr<RankGateResult> gate = RankGate(job);
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions());
  StatusOr<std::unique_ptr<Tenancy>> t = Tenancy::Start(job, *gate, **comm);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ((*t)->data_policy().tenant, "");
  EXPECT_EQ(AuditEvents(Path("run/audit.jsonl")), (std::vector<std::string>{"job_start", "no_tenant"}));
}

TEST_F(TenancyUnitTest, StartRefusesAnUnusableKeyFile) {
  ScopedEnv env("FJORD_NODE_IDENTITY", Identity("NO", "osl1"));
  WriteText(Path("open.key"), std::string(64, 'a'), 0644);
  const proto::JobSpec job = Acme("checkpoint { encryption_key_file: \"" + Path("open.key") + "\" }\n");
  StatusOr<RankGateResult> gate = RankGate(job);
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions());
  StatusOr<std::unique_ptr<Tenancy>> t = Tenancy::Start(job, *gate, **comm);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(),
              HasSubstr("checkpoint.encryption_key_file: key file " + Path("open.key")));
}

}  // namespace
}  // namespace fjord
