// The gates through the fjord binary on one machine (one rank, node identity from
// FJORD_NODE_IDENTITY): prep writes manifests; train refuses data without a manifest or of another
// tenant; resume refuses another tenant's checkpoint, a wrong key and a modified checkpoint; audit
// verify reports tampering; what an identity override produced names it.
#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "common/file_util.h"
#include "common/sha256.h"
#include "runtime/tenancy/audit.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::AnyOf;
using testing::AuditEvents;
using testing::AuditLines;
using testing::Count;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

class CliGatesTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    identity_ = Identity("NO", "osl1");
    std::string text;
    for (int i = 0; i < 500; ++i) text += "acme keeps its corpus in Norway, line " + std::to_string(i) + "\n";
    WriteText(Path("input.txt"), text);
    WriteText(Path("acme.key"), std::string(64, 'a'), 0600);
    WriteText(Path("other.key"), std::string(64, 'b'), 0600);
  }
  RunResult Fjord(const std::string& args, const std::string& env = "") {
    return Shell(env + " FJORD_NODE_IDENTITY=" + identity_ + " " + std::string(FJORD_BINARY) + " " + args);
  }
  void Prep(const std::string& out, const std::string& tenant_flags) {
    RunResult r = Fjord("prep --input " + Path("input.txt") + " --out " + Path(out) + " " + tenant_flags);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  std::string Job(const std::string& name, const std::string& tenant, const std::string& data,
                  const std::string& extra = "") {
    WriteText(Path(name),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 2 lr: 1e-3 }\n"
              "data { train: \"" +
                  Path(data + "/train_*.bin") +
                  "\" }\n"
                  "run_dir: \"" +
                  Path("run") +
                  "\"\n"
                  "tenant { id: \"" +
                  tenant + "\" }\nresidency { allowed_jurisdictions: \"NO\" }\n" + extra);
    return Path(name);
  }
  // A job without tenant (and so without residency) reading DATA/train_*.bin.
  std::string NoTenantJob(const std::string& name, const std::string& data) {
    WriteText(Path(name),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 2 lr: 1e-3 }\n"
              "data { train: \"" +
                  Path(data + "/train_*.bin") +
                  "\" }\n"
                  "run_dir: \"" +
                  Path("run") + "\"\n");
    return Path(name);
  }
  std::string identity_;
};

// A shard set with a manifest is governed by it whatever the job says: a job that leaves out the
// tenant block is refused acme's shards on an SE node, on a NO node and on a node without identity
// alike (it must declare the tenant, so that the rank gate runs), before any shard is read; the
// refusal says which tenant block to add and is audited.
TEST_F(CliGatesTest, JobWithoutTenantIsRefusedTenantDataOnEveryNodeAndItIsAudited) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string job = NoTenantJob("notenant.textproto", "acme");
  for (const std::string& identity :
       {Identity("SE", "sto1", "se_node"), identity_, Path("no_identity_here.textproto")}) {
    fs::remove_all(Path("run"));
    RunResult r = Shell("FJORD_NODE_IDENTITY=" + identity + " " + std::string(FJORD_BINARY) + " train " +
                        job + " --quiet");
    EXPECT_EQ(r.exit_code, 1) << identity << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("data.train: " + Path("acme/manifest.textproto") +
                                    " belongs to tenant acme, but this job has no tenant"));
    EXPECT_THAT(r.output,
                HasSubstr("Add `tenant { id: \"acme\" } residency { allowed_jurisdictions: \"NO\" }`"));
    EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
    EXPECT_FALSE(fs::exists(Path("run/checkpoints")));
    const std::vector<std::string> events = AuditEvents(Path("run/audit.jsonl"));
    EXPECT_EQ(events, (std::vector<std::string>{"job_start", "no_tenant", "refusal", "job_end"})) << identity;
  }
  // Data without a manifest stays usable by a job without tenant.
  Prep("plain", "");
  RunResult r = Fjord("train " + NoTenantJob("plain.textproto", "plain") + " --quiet");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// fjord eval of a checkpoint without tenant: --data is refused when a manifest governs it, and the
// refusal goes to the checkpoint job's audit log; unmanifested data evaluates as before.
TEST_F(CliGatesTest, EvalOfAnUntenantedCheckpointIsRefusedTenantData) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  Prep("plain", "");
  RunResult r = Fjord("train " + NoTenantJob("plain.textproto", "plain") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpt = " --checkpoint " + Path("run/checkpoints/step_000002") + " --batches 1";
  const int refusals = Count(AuditEvents(Path("run/audit.jsonl")), "refusal");
  r = Shell("FJORD_NODE_IDENTITY=" + Identity("SE", "sto1", "se_node") + " " + std::string(FJORD_BINARY) +
            " eval" + ckpt + " --data '" + Path("acme/train_*.bin") + "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--data: " + Path("acme/manifest.textproto") +
                                  " belongs to tenant acme, but this job has no tenant"));
  EXPECT_THAT(r.output, Not(HasSubstr("\"loss\"")));
  EXPECT_EQ(Count(AuditEvents(Path("run/audit.jsonl")), "refusal"), refusals + 1);
  r = Fjord("eval" + ckpt + " --data '" + Path("plain/train_*.bin") + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// fjord demo trains through the same gates and writes an audit log: pointed at acme's shards it is
// refused before training, recorded; over its own generated corpus it runs, recorded.
TEST_F(CliGatesTest, DemoGoesThroughTheDataGateAndWritesAnAuditLog) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  RunResult r = Fjord("demo --dir " + Path("refused") + " --set data.train='" + Path("acme/train_*.bin") +
                      "' --set train.steps=2");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr(Path("acme/manifest.textproto") + " belongs to tenant acme, but this job has no "
                                                          "tenant"));
  EXPECT_FALSE(fs::exists(Path("refused/checkpoints")));
  EXPECT_EQ(AuditEvents(Path("refused/audit.jsonl")),
            (std::vector<std::string>{"job_start", "no_tenant", "refusal", "job_end"}));

  r = Fjord("demo --dir " + Path("ran") + " --set train.steps=2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> events = AuditEvents(Path("ran/audit.jsonl"));
  EXPECT_EQ(events.front(), "job_start");
  EXPECT_EQ(Count(events, "no_tenant"), 1);
  EXPECT_EQ(Count(events, "shard_opened"), 2);  // train_000000.bin, val_000000.bin
  EXPECT_EQ(events.back(), "job_end");
  EXPECT_TRUE(VerifyAuditLog(Path("ran/audit.jsonl"))->ok);
}

TEST_F(CliGatesTest, PrepWritesTheManifestAndSaysSo) {
  RunResult r = Fjord("prep --input " + Path("input.txt") + " --out " + Path("data") +
                      " --tenant acme --jurisdiction NO");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("manifest " + Path("data") + "/manifest.textproto: tenant acme, jurisdictions NO"));
  r = Fjord("prep --input " + Path("input.txt") + " --out " + Path("d2") + " --tenant acme");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--tenant acme needs --jurisdiction CC"));
}

// A tenant prep killed half-way (issue 23): the shards on disk are whole (each was renamed into
// place complete), no manifest lists them (it is written last), so the tenant's job refuses the
// set until a prep completes.
TEST_F(CliGatesTest, KilledPrepLeavesWholeShardsAndNoManifest) {
  std::string text;
  for (int i = 0; text.size() < (40u << 20); ++i) text += "acme line " + std::to_string(i) + "\n";
  WriteText(Path("big.txt"), text);
  const RunResult r = Shell(
      "FJORD_NODE_IDENTITY=" + identity_ + " " + std::string(FJORD_BINARY) + " prep --input " +
      Path("big.txt") + " --out " + Path("killed") +
      " --tenant acme --jurisdiction NO --shard-tokens 20000 --threads 1 --quiet & p=$!; "
      "for i in $(seq 1200); do [ -e " +
      Path("killed/train_000003.bin") + " ] && break; sleep 0.05; done; kill -9 $p; wait $p; echo exit=$?");
  EXPECT_THAT(r.output, HasSubstr("exit=137")) << "prep finished before it was killed: " << r.output;
  EXPECT_FALSE(fs::exists(Path("killed/manifest.textproto")));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(Path("killed"))) {
    const std::string name = e.path().filename().string();
    if (name.size() < 4 || name.compare(name.size() - 4, 4, ".bin") != 0) continue;  // a .tmp. file
    const std::string bytes = ReadText(e.path().string());
    ASSERT_EQ(bytes.size(), 1024u + 2 * 20000) << name << " is not a whole shard";
    ++shards;
  }
  EXPECT_GE(shards, 4);
  RunResult t = Fjord("train " + Job("job.textproto", "acme", "killed"));
  EXPECT_EQ(t.exit_code, 1) << t.output;
  EXPECT_THAT(t.output, HasSubstr("has no manifest"));
}

TEST_F(CliGatesTest, TrainRefusesUnmanifestedAndForeignDataBeforeReadingIt) {
  Prep("plain", "");
  RunResult r = Fjord("train " + Job("job.textproto", "acme", "plain"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("has no manifest"));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
  std::vector<std::string> events = AuditEvents(Path("run/audit.jsonl"));
  EXPECT_EQ(Count(events, "refusal"), 1);
  EXPECT_EQ(Count(events, "shard_opened"), 0);

  Prep("globex", "--tenant globex --jurisdiction NO");
  r = Fjord("train " + Job("job2.textproto", "acme", "globex"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("belongs to tenant globex, but this job is tenant acme"));
}

// fjord eval of a tenant's checkpoint reads --data through that tenant's data gate, as training
// does: the tenant's manifested shards are read (and audited), unmanifested or another tenant's
// shards are refused before a byte of them is read, and the refusal is audited.
TEST_F(CliGatesTest, EvalReadsDataThroughTheCheckpointTenantsDataGate) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  Prep("plain", "");
  Prep("globex", "--tenant globex --jurisdiction NO");
  RunResult r = Fjord("train " + Job("acme.textproto", "acme", "acme") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpt = " --checkpoint " + Path("run/checkpoints/step_000002") + " --batches 2";
  const int opened_before = Count(AuditEvents(Path("run/audit.jsonl")), "shard_opened");

  r = Fjord("eval" + ckpt + " --data '" + Path("acme/train_*.bin") + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("{\"loss\": "));
  EXPECT_GT(Count(AuditEvents(Path("run/audit.jsonl")), "shard_opened"), opened_before);

  const int refusals_before = Count(AuditEvents(Path("run/audit.jsonl")), "refusal");
  r = Fjord("eval" + ckpt + " --data '" + Path("plain/train_*.bin") + "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("has no manifest"));
  r = Fjord("eval" + ckpt + " --data '" + Path("globex/train_*.bin") + "'");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("belongs to tenant globex, but this job is tenant acme"));
  EXPECT_EQ(Count(AuditEvents(Path("run/audit.jsonl")), "refusal"), refusals_before + 2);
}

TEST_F(CliGatesTest, ResumeRefusesAnotherTenantAWrongKeyAndAModifiedCheckpoint) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string key = "checkpoint { keep_last: 1 encryption_key_file: \"" + Path("acme.key") + "\" }\n";
  RunResult r = Fjord("train " + Job("acme.textproto", "acme", "acme", key) + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpt = Path("run/checkpoints/step_000002");
  ASSERT_EQ(ReadText(ckpt + "/model.bin").substr(0, 8), "FJSEALED");

  // Another tenant, pointed at acme's checkpoints.
  Prep("globex", "--tenant globex --jurisdiction NO");
  r = Fjord("train " + Job("globex.textproto", "globex", "globex", key) + " --resume --set train.steps=3");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("belongs to tenant \"acme\""));
  EXPECT_THAT(r.output, HasSubstr("this job is tenant \"globex\""));

  // The right tenant with the wrong key.
  const std::string wrong =
      "checkpoint { keep_last: 1 encryption_key_file: \"" + Path("other.key") + "\" }\n";
  r = Fjord("train " + Job("wrong.textproto", "acme", "acme", wrong) + " --resume --set train.steps=3");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("wrong key"));

  // A flipped byte in the only checkpoint.
  std::string bytes = ReadText(ckpt + "/model.bin");
  bytes[100] ^= 0x01;
  WriteText(ckpt + "/model.bin", bytes);
  r = Fjord("train " + Path("acme.textproto") + " --resume --set train.steps=3");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, AnyOf(HasSubstr("wrong key or modified file"), HasSubstr("damaged")));
  std::vector<std::string> events = AuditEvents(Path("run/audit.jsonl"));
  EXPECT_GE(Count(events, "refusal"), 2);
  EXPECT_TRUE(VerifyAuditLog(Path("run/audit.jsonl"))->ok);
}

// eval, sample and export of a sealed checkpoint (--key): the right key reads exactly what the
// same training run wrote in plaintext (the oracle: training is deterministic, so a second run
// without encryption has the same weights); a missing key, a wrong key, a forged key id, a flipped
// byte, a plaintext checkpoint given a key and a node outside the residency are refused, each
// naming the checkpoint; every opening, refusal and plaintext export is in the audit log.
TEST_F(CliGatesTest, EvalSampleExportReadSealedCheckpointsOnlyWithTheKey) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string sealed_spec = "checkpoint { encryption_key_file: \"" + Path("acme.key") + "\" }\n";
  RunResult r = Fjord("train " + Job("sealed.textproto", "acme", "acme", sealed_spec) + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Fjord("train " + Job("plain.textproto", "acme", "acme") + " --quiet --set run_dir=" + Path("plain"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sealed = Path("run/checkpoints/step_000002"),
                    plain = Path("plain/checkpoints/step_000002");
  ASSERT_EQ(ReadText(sealed + "/model.bin").substr(0, 8), "FJSEALED");
  ASSERT_NE(ReadText(plain + "/model.bin").substr(0, 8), "FJSEALED");
  const std::string data = " --data '" + Path("acme/train_*.bin") + "' --batches 2";
  const std::string key = " --key " + Path("acme.key");
  const std::string sample = " --prompt acme --tokens 12 --temperature 0";

  // The right key: the same loss, text and exported bytes as the plaintext twin (beside the line
  // naming the checkpoint loaded, which differs by path and job digest).
  const auto without_checkpoint_line = [](const std::string& output) {
    std::istringstream in(output);
    std::string kept;
    for (std::string line; std::getline(in, line);)
      if (line.find(": checkpoint ") == std::string::npos) kept += line + "\n";
    return kept;
  };
  RunResult plain_eval = Fjord("eval --checkpoint " + plain + data);
  ASSERT_EQ(plain_eval.exit_code, 0) << plain_eval.output;
  ASSERT_THAT(plain_eval.output, HasSubstr("{\"loss\": "));
  r = Fjord("eval --checkpoint " + sealed + data + key);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(without_checkpoint_line(r.output), without_checkpoint_line(plain_eval.output));
  RunResult plain_sample = Fjord("sample --checkpoint " + plain + sample);
  ASSERT_EQ(plain_sample.exit_code, 0) << plain_sample.output;
  r = Fjord("sample --checkpoint " + sealed + sample + key);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(without_checkpoint_line(r.output), without_checkpoint_line(plain_sample.output));
  ASSERT_EQ(Fjord("export --checkpoint " + plain + " --out " + Path("plain_hf")).exit_code, 0);
  r = Fjord("export --checkpoint " + sealed + " --out " + Path("sealed_hf") + key);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("in plaintext; the export is recorded in the audit log"));
  const std::string exported = ReadText(Path("sealed_hf/model.safetensors"));
  EXPECT_GT(exported.size(), 1000u);
  EXPECT_EQ(exported, ReadText(Path("plain_hf/model.safetensors")));

  // No key: each command names the checkpoint, its tenant and --key; export writes nothing.
  for (const std::string& cmd :
       {"eval --checkpoint " + sealed + data, "sample --checkpoint " + sealed + sample,
        "export --checkpoint " + sealed + " --out " + Path("nokey_hf")}) {
    r = Fjord(cmd);
    EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("checkpoint " + sealed + " is sealed for tenant \"acme\" (AES-256-GCM"));
    EXPECT_THAT(r.output, HasSubstr("pass --key FILE"));
  }
  EXPECT_FALSE(fs::exists(Path("nokey_hf")));

  // The wrong key: refused by key id before decrypting, naming the checkpoint and the key file.
  r = Fjord("export --checkpoint " + sealed + " --out " + Path("wrong_hf") + " --key " + Path("other.key"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("checkpoint " + sealed + " was encrypted with key id"));
  EXPECT_THAT(r.output, HasSubstr("--key " + Path("other.key") + " holds key id"));
  EXPECT_THAT(r.output, HasSubstr("wrong key"));
  EXPECT_FALSE(fs::exists(Path("wrong_hf")));
  // A key file others may read is refused before use.
  WriteText(Path("open.key"), std::string(64, 'a'), 0644);
  r = Fjord("eval --checkpoint " + sealed + data + " --key " + Path("open.key"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--key"));
  EXPECT_THAT(r.output, HasSubstr(Path("open.key")));

  // Plaintext checkpoint given a key: may have been substituted.
  r = Fjord("eval --checkpoint " + plain + data + key);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("checkpoint " + plain + " of tenant \"acme\" is not encrypted, but --key"));

  // A node outside the residency.
  r = Shell("FJORD_NODE_IDENTITY=" + Identity("SE", "sto1", "se_node") + " " + std::string(FJORD_BINARY) +
            " eval --checkpoint " + sealed + data + key);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("may be opened only in jurisdictions NO"));
  EXPECT_THAT(r.output, HasSubstr("jurisdiction SE"));

  // The opening could not be recorded in --audit-log: refused (a file where the log's directory
  // should be); the refusal is in the checkpoint's own chain.
  r = Fjord("export --checkpoint " + sealed + " --out " + Path("unlogged_hf") + key + " --audit-log " +
            Path("input.txt") + "/audit.jsonl");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--audit-log " + Path("input.txt") + "/audit.jsonl: cannot create"));
  EXPECT_FALSE(fs::exists(Path("unlogged_hf")));
  // --audit-log records a copy; the checkpoint's own chain (run/audit.jsonl) still gets the opening.
  const int own_openings = Count(AuditEvents(Path("run/audit.jsonl")), "checkpoint_opened");
  r = Fjord("eval --checkpoint " + sealed + data + key + " --audit-log " + Path("reader/audit.jsonl"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(AuditEvents(Path("reader/audit.jsonl")), "checkpoint_opened"), 1);
  EXPECT_EQ(Count(AuditEvents(Path("run/audit.jsonl")), "checkpoint_opened"), own_openings + 1);

  // A tenant record whose key id was edited to the wrong key's: GCM refuses, naming the file.
  const std::string record_path = sealed + "/tenant.textproto";
  const std::string record = ReadText(record_path);
  r = Fjord("eval --checkpoint " + sealed + data + " --key " + Path("other.key"));
  const size_t k = r.output.find("holds key id ");
  ASSERT_NE(k, std::string::npos) << r.output;
  const std::string other_id = r.output.substr(k + 13, 16);
  const size_t at = record.find("key_id: \"");
  ASSERT_NE(at, std::string::npos) << record;
  std::string forged = record;
  forged.replace(at + 9, 16, other_id);
  WriteText(record_path, forged);
  r = Fjord("eval --checkpoint " + sealed + data + " --key " + Path("other.key"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(sealed + "/tenant.seal"));  // the record's sealed copy refuses it
  EXPECT_THAT(r.output, HasSubstr("wrong key or modified file"));
  WriteText(record_path, record);

  // A flipped byte in model.bin, with the right key: its digest in the authenticated record refuses it.
  std::string bytes = ReadText(sealed + "/model.bin");
  bytes[bytes.size() / 2] ^= 0x01;
  WriteText(sealed + "/model.bin", bytes);
  r = Fjord("export --checkpoint " + sealed + " --out " + Path("tampered_hf") + key);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(sealed + "/model.bin was modified after the checkpoint was written"));
  EXPECT_FALSE(fs::exists(Path("tampered_hf")));

  // The record: who opened what, for which use, and the plaintext export.
  const std::string log = Path("run/audit.jsonl");
  const std::vector<std::string> opened = testing::AuditLines(log, "checkpoint_opened");
  int exports = 0;
  for (const std::string& line : opened) exports += line.find("\"use\":\"export\"") != std::string::npos;
  EXPECT_EQ(exports, 1);  // the good export (the tampered one is refused before opening)
  const std::vector<std::string> exported_lines = testing::AuditLines(log, "checkpoint_exported");
  ASSERT_EQ(exported_lines.size(), 1u);
  EXPECT_THAT(exported_lines[0], HasSubstr("\"out\":\"" + Path("sealed_hf") + "\""));
  EXPECT_THAT(exported_lines[0], HasSubstr("\"plaintext\":true"));
  EXPECT_THAT(exported_lines[0], HasSubstr("\"was_encrypted\":true"));
  // Refused: no key x 3, wrong key x 2 (export, and the eval that read its id), open key file,
  // outside the residency, the unwritable --audit-log, the forged key id, the flipped byte (the
  // plaintext checkpoint given a key is in plain/'s log).
  const std::vector<std::string> refusals = testing::AuditLines(log, "refusal");
  EXPECT_EQ(refusals.size(), 10u);
  int unauthenticated = 0;
  for (const std::string& line : refusals) {
    unauthenticated += line.find("wrong key or modified file") != std::string::npos;
  }
  EXPECT_EQ(unauthenticated, 1);  // the forged key id (tenant.seal)
  EXPECT_EQ(Count(AuditEvents(Path("plain/audit.jsonl")), "refusal"), 1);
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

// Hole 3 of issue 16: a sealed file of another step, another job of the same tenant and key, or
// another name, put into a checkpoint (with manifest.json rewritten to match, as an attacker would)
// is refused by export, eval, sample and --resume, naming the file and the checkpoint it was
// expected to belong to. The oracle that the refusals are not blanket: the intact checkpoint
// exports the same bytes before and after, and the moved-from checkpoints still open.
TEST_F(CliGatesTest, SealedFilesMovedBetweenStepsJobsOrNamesAreRefusedByEveryReader) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string spec =
      "checkpoint { every_steps: 3 keep_last: 0 encryption_key_file: \"" + Path("acme.key") + "\" }\n";
  const std::string job = Job("acme.textproto", "acme", "acme", spec);
  RunResult r = Fjord("train " + job + " --quiet --set train.steps=6");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Fjord("train " + job + " --quiet --set train.steps=6 --set run_dir=" + Path("other"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step3 = Path("run/checkpoints/step_000003"), step6 = Path("run/checkpoints/step_000006");
  const std::string other6 = Path("other/checkpoints/step_000006");
  const std::string key = " --key " + Path("acme.key");
  const std::string data = " --data '" + Path("acme/train_*.bin") + "' --batches 1";
  ASSERT_EQ(Fjord("export --checkpoint " + step6 + " --out " + Path("before_hf") + key).exit_code, 0);
  const std::string intact = ReadText(Path("before_hf/model.safetensors"));
  ASSERT_GT(intact.size(), 1000u);
  std::map<std::string, std::string> original;
  for (const auto& e : fs::directory_iterator(step6)) original[e.path().filename()] = ReadText(e.path());

  // manifest.json made to match the files now in step 6, so that resume does not skip it as damaged.
  auto rehash_manifest = [&] {
    std::string text = ReadText(step6 + "/manifest.json");
    for (const std::string name : {"model.bin", "optimizer.bin"}) {
      const size_t sha = text.find("\"sha256\": \"", text.find("\"" + name + "\""));
      ASSERT_NE(sha, std::string::npos) << text;
      text.replace(sha + 11, 64, *Sha256Hex(ReadText(step6 + "/" + name)));
      const size_t bytes = text.find("\"bytes\": ", text.find("\"" + name + "\""));
      text.replace(bytes + 9, text.find(',', bytes) - bytes - 9,
                   std::to_string(ReadText(step6 + "/" + name).size()));
    }
    WriteText(step6 + "/manifest.json", text);
  };
  struct Case {
    std::string what;
    std::vector<std::pair<std::string, std::string>> copies;  // from path, to name in step 6
    std::string expected;                                     // in every refusal
  };
  const std::string belongs = " of the checkpoint of tenant \"acme\", job ";
  const std::vector<Case> cases = {
      {"model.bin of step 3", {{step3 + "/model.bin", "model.bin"}}, step6 + "/model.bin was modified"},
      {"optimizer.bin of step 3",
       {{step3 + "/optimizer.bin", "optimizer.bin"}},
       step6 + "/optimizer.bin was modified"},
      {"tenant.seal of step 3",
       {{step3 + "/tenant.seal", "tenant.seal"}},
       "tenant.seal does not authenticate"},
      {"model.bin of another job", {{other6 + "/model.bin", "model.bin"}}, step6 + "/model.bin was modified"},
      {"model.bin and optimizer.bin swapped",
       {{step6 + "/optimizer.bin", "model.bin"}, {step6 + "/model.bin", "optimizer.bin"}},
       step6 + "/model.bin was modified"},
      {"all of step 3",
       {{step3 + "/model.bin", "model.bin"},
        {step3 + "/optimizer.bin", "optimizer.bin"},
        {step3 + "/manifest.json", "manifest.json"},
        {step3 + "/tenant.textproto", "tenant.textproto"},
        {step3 + "/tenant.seal", "tenant.seal"}},
       "is named for step 6 but its tenant.textproto was written for step 3"},
  };
  const std::vector<std::string> commands = {
      "export --checkpoint " + step6 + " --out " + Path("moved_hf") + key,
      "eval --checkpoint " + step6 + data + key,
      "sample --checkpoint " + step6 + " --prompt acme --tokens 4" + key,
      "train " + job + " --resume --set train.steps=7",
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::map<std::string, std::string> moved;
    for (const auto& [from, to] : c.copies) moved[to] = ReadText(from);
    for (const auto& [to, bytes] : moved) WriteText(step6 + "/" + to, bytes);
    if (!moved.count("manifest.json")) rehash_manifest();
    for (const std::string& cmd : commands) {
      const int refusals = Count(AuditEvents(Path("run/audit.jsonl")), "refusal");
      r = Fjord(cmd);
      EXPECT_EQ(r.exit_code, 1) << cmd << "\n" << r.output;
      EXPECT_THAT(r.output, HasSubstr(c.expected)) << cmd;
      EXPECT_THAT(r.output, HasSubstr("step 6")) << cmd;
      if (c.expected.find("was modified") != std::string::npos)
        EXPECT_THAT(r.output, HasSubstr(belongs)) << cmd;
      EXPECT_EQ(Count(AuditEvents(Path("run/audit.jsonl")), "refusal"), refusals + 1) << cmd;
    }
    EXPECT_FALSE(fs::exists(Path("moved_hf")));
    EXPECT_FALSE(fs::exists(Path("run/checkpoints/step_000007")));
    fs::remove_all(Path("run/checkpoints/step_000007"));  // (so that one failure does not hide the next)
    for (const auto& [name, bytes] : original) WriteText(step6 + "/" + name, bytes);
  }
  ASSERT_EQ(Fjord("export --checkpoint " + step6 + " --out " + Path("after_hf") + key).exit_code, 0);
  EXPECT_EQ(ReadText(Path("after_hf/model.safetensors")), intact);
  EXPECT_EQ(Fjord("export --checkpoint " + step3 + " --out " + Path("step3_hf") + key).exit_code, 0);
  EXPECT_NE(ReadText(Path("step3_hf/model.safetensors")), intact);
  EXPECT_EQ(Fjord("export --checkpoint " + other6 + " --out " + Path("other_hf") + key).exit_code, 0);
  EXPECT_TRUE(VerifyAuditLog(Path("run/audit.jsonl"))->ok);
}

TEST_F(CliGatesTest, AuditVerifyReportsTheFirstBrokenRecord) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  ASSERT_EQ(Fjord("train " + Job("acme.textproto", "acme", "acme") + " --quiet").exit_code, 0);
  const std::string log = Path("run/audit.jsonl");
  RunResult r = Fjord("audit verify " + log);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(log + ": ok, "));
  std::string text = ReadText(log);
  text.replace(text.find("\"jurisdiction\":\"NO\""), 19, "\"jurisdiction\":\"SE\"");
  WriteText(log, text);
  r = Fjord("audit verify " + log);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("BROKEN at line 2: record seq 2 (event \"rank_identity\")"));
  EXPECT_THAT(r.output, HasSubstr("the record was edited"));
  r = Fjord("audit check " + log);
  EXPECT_EQ(r.exit_code, 2);
}

// Ranks started by hand with different job specs (here a --set on rank 1 only, through mpirun's
// MPMD syntax) are refused before any data is read: every rank names the ranks that differ, the
// refusal is audited with the job_spec gate, and nothing is trained.
TEST_F(CliGatesTest, RanksStartedWithDifferentJobSpecsAreRefused) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string job = Job("acme.textproto", "acme", "acme");
  const std::string rank = " -np 1 env FJORD_NODE_IDENTITY=" + identity_ + " OMP_NUM_THREADS=1 " +
                           std::string(FJORD_BINARY) + " train " + job;
  RunResult r =
      Shell("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp " +
            std::string(FJORD_MPIEXEC) + " --oversubscribe --bind-to none" + rank + " :" + rank +
            " --set train.lr=2e-3");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(" rank(s) 1 on "));
  EXPECT_THAT(r.output, HasSubstr("were started with a different job spec than rank 0 (sha256 "));
  EXPECT_THAT(r.output, HasSubstr("every rank must get the same job spec; start the job with fjord launch"));
  // Rank 0 names the field that differs (issue 21 item 7), once.
  EXPECT_THAT(r.output,
              ::testing::ContainsRegex("rank 1 against rank 0: modified: train.lr: 0.00[0-9]+ -> 0.002"));
  size_t told = 0;
  for (size_t at = r.output.find("against rank 0: "); at != std::string::npos;
       at = r.output.find("against rank 0: ", at + 1))
    ++told;
  EXPECT_LE(told, 1u) << r.output;
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
  const std::vector<std::string> refusals = testing::AuditLines(Path("run/audit.jsonl"), "refusal");
  ASSERT_EQ(refusals.size(), 1u);
  EXPECT_THAT(refusals[0], HasSubstr("\"gate\":\"job_spec\""));
  EXPECT_EQ(Count(AuditEvents(Path("run/audit.jsonl")), "shard_opened"), 0);
  EXPECT_TRUE(VerifyAuditLog(Path("run/audit.jsonl"))->ok);
}

// With the override enabled (fixture test_overrides.up), data and checkpoints made under an identity
// from FJORD_NODE_IDENTITY name that file: the manifest and the checkpoint's tenant record, read back
// with protobuf's own parser. Prep on this (unprovisioned) machine without the override names none.
TEST_F(CliGatesTest, DataAndCheckpointsMadeUnderAnIdentityOverrideNameIt) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  proto::DataManifest manifest;
  ASSERT_TRUE(
      google::protobuf::TextFormat::ParseFromString(ReadText(Path("acme/manifest.textproto")), &manifest));
  EXPECT_EQ(manifest.identity_override(), identity_);

  RunResult r = Fjord("train " + Job("acme.textproto", "acme", "acme") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  proto::CheckpointTenancy record;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      ReadText(Path("run/checkpoints/step_000002/tenant.textproto")), &record));
  EXPECT_EQ(record.identity_override(), identity_);
  EXPECT_EQ(record.written_in_jurisdiction(), "NO");

  r = Shell(std::string("env -u FJORD_NODE_IDENTITY ") + FJORD_BINARY + " prep --input " + Path("input.txt") +
            " --out " + Path("own") + " --tenant acme --jurisdiction NO");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  proto::DataManifest own;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(ReadText(Path("own/manifest.textproto")), &own));
  EXPECT_FALSE(own.has_identity_override()) << own.DebugString();
}

// FJORD_TEST_HOOK goes into the audit log whole, however long (it was cut at 96 characters).
TEST_F(CliGatesTest, ALongTestHookIsRecordedWhole) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string hook = "recorded_whole=" + std::string(400, 'x') + "_end";
  RunResult r =
      Fjord("train " + Job("acme.textproto", "acme", "acme") + " --quiet", "FJORD_TEST_HOOK=" + hook);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::string> values;
  for (const std::string& line : AuditLines(Path("run/audit.jsonl"), "test_override")) {
    StatusOr<JsonValue> json = ParseJson(line, "test_override");
    ASSERT_TRUE(json.ok()) << line;
    if (json->Find("variable")->text() != "FJORD_TEST_HOOK") continue;
    for (const JsonValue& rank : json->Find("ranks")->array()) values.push_back(rank.Find("value")->text());
  }
  EXPECT_EQ(values, std::vector<std::string>{hook});
  EXPECT_TRUE(VerifyAuditLog(Path("run/audit.jsonl"))->ok);
}

// A tenant's artefacts are private to the user who runs its job, whatever the umask of that
// user (022 here, as the fjord processes inherit it): the run directory's metrics and audit log,
// the checkpoint directories and every file in them (sealed or plaintext), and the plaintext
// export of a sealed checkpoint. An untenanted job's checkpoint keeps the usual 0755/0644.
TEST_F(CliGatesTest, TenantArtefactsArePrivateFromCreation) {
  const mode_t old_umask = ::umask(022);
  auto mode = [](const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
    return static_cast<unsigned>(st.st_mode & 07777);
  };
  auto expect_private_checkpoint = [&](const std::string& dir) {
    EXPECT_EQ(mode(dir), 0700u) << dir;
    int files = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
      EXPECT_EQ(mode(e.path().string()), 0600u) << e.path();
      ++files;
    }
    EXPECT_GE(files, 5);  // model, optimizer, job, manifest, tenant record
  };
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string sealed_spec = "checkpoint { encryption_key_file: \"" + Path("acme.key") + "\" }\n";
  RunResult r = Fjord("train " + Job("sealed.textproto", "acme", "acme", sealed_spec) + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_private_checkpoint(Path("run/checkpoints/step_000002"));
  EXPECT_EQ(mode(Path("run/metrics.jsonl")), 0600u);
  EXPECT_EQ(mode(Path("run/audit.jsonl")), 0600u);
  EXPECT_EQ(mode(Path("run/audit.jsonl.head")), 0600u);
  r = Fjord("export --checkpoint " + Path("run/checkpoints/step_000002") + " --out " + Path("hf") +
            " --key " + Path("acme.key"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(mode(Path("hf")), 0700u);
  EXPECT_EQ(mode(Path("hf/model.safetensors")), 0600u);
  EXPECT_EQ(mode(Path("hf/config.json")), 0600u);
  r = Fjord("export --checkpoint " + Path("run/checkpoints/step_000002") + " --out " + Path("model.bin") +
            " --format llmc --key " + Path("acme.key"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(mode(Path("model.bin")), 0600u);

  // A plaintext checkpoint of the tenant: as private.
  fs::remove_all(Path("run"));
  ASSERT_EQ(Fjord("train " + Job("plain.textproto", "acme", "acme") + " --quiet").exit_code, 0);
  expect_private_checkpoint(Path("run/checkpoints/step_000002"));

  // Untenanted: public weights stay readable.
  Prep("open", "");
  fs::remove_all(Path("run"));
  WriteText(Path("open.textproto"),
            "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
            "train { micro_batch: 2 steps: 2 lr: 1e-3 }\ndata { train: \"" +
                Path("open/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n");
  r = Fjord("train " + Path("open.textproto") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(mode(Path("run/checkpoints/step_000002")), 0755u);
  EXPECT_EQ(mode(Path("run/checkpoints/step_000002/model.bin")), 0644u);
  ::umask(old_umask);
}

// Someone who can write the run directory plants metrics.jsonl -> a file of theirs: training
// refuses to write through it (losses would otherwise land in their file).
TEST_F(CliGatesTest, TrainDoesNotWriteMetricsThroughAPlantedLink) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  fs::create_directories(Path("run"));
  fs::create_symlink(Path("stolen.jsonl"), Path("run/metrics.jsonl"));
  RunResult r = Fjord("train " + Job("acme.textproto", "acme", "acme") + " --quiet");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("cannot write " + Path("run/metrics.jsonl") +
                                  ": Too many levels of symbolic links; it is a symbolic link: remove it"));
  EXPECT_FALSE(fs::exists(Path("stolen.jsonl")));
}

// `fjord audit verify --checkpoints RUN_DIR` takes the heads that the tenant checkpoints recorded
// as anchors: a log cut below a checkpoint's anchor, with its head rewritten to match (which
// verifies clean alone), fails naming that checkpoint. Editing the plaintext record to agree with
// the cut log gets past a check without the key, and is refused with --key (tenant.seal).
TEST_F(CliGatesTest, AuditVerifyTakesTheHeadsTheCheckpointsRecorded) {
  Prep("acme", "--tenant acme --jurisdiction NO");
  const std::string spec =
      "checkpoint { every_steps: 1 keep_last: 0 encryption_key_file: \"" + Path("acme.key") + "\" }\n";
  RunResult r = Fjord("train " + Job("sealed.textproto", "acme", "acme", spec) + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string log = Path("run/audit.jsonl"), step2 = Path("run/checkpoints/step_000002");
  const std::string verify = std::string(FJORD_BINARY) + " audit verify " + log;
  const std::string with_key = " --checkpoints " + Path("run") + " --key " + Path("acme.key");
  r = Shell(verify + with_key);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(", 2 anchor(s) hold"));

  // The anchor of step 2, read with protobuf's own parser; cut the log to the record before it.
  proto::CheckpointTenancy record;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(ReadText(step2 + "/tenant.textproto"), &record));
  const int64_t anchored = record.audit_head().seq();
  ASSERT_GE(anchored, 2);
  std::vector<std::string> lines;
  std::istringstream in(ReadText(log));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_GE(static_cast<int64_t>(lines.size()), anchored);
  std::string cut;
  for (int64_t i = 0; i < anchored - 1; ++i) cut += lines[static_cast<size_t>(i)] + "\n";
  const std::string& last = lines[static_cast<size_t>(anchored - 2)];
  const std::string last_hash = last.substr(last.rfind("\"hash\":\"") + 8, 64);
  WriteText(log, cut);
  WriteText(log + ".head", std::to_string(anchored - 1) + " " + last_hash + "\n");
  EXPECT_EQ(Shell(verify).exit_code, 0);  // what the log and its head alone cannot show
  r = Shell(verify + " --checkpoints " + Path("run"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("(checkpoint " + step2 + ") names record " + std::to_string(anchored) +
                                  " but the log ends at record " + std::to_string(anchored - 1)));

  // The record edited to anchor the cut log's end: only the key shows it.
  record.mutable_audit_head()->set_seq(anchored - 1);
  record.mutable_audit_head()->set_hash(last_hash);
  std::string edited;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(record, &edited));
  WriteText(step2 + "/tenant.textproto", edited);
  EXPECT_EQ(Shell(verify + " --checkpoints " + Path("run")).exit_code, 0);
  r = Shell(verify + with_key);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--checkpoints " + Path("run")));
  EXPECT_THAT(r.output, HasSubstr(step2));

  r = Shell(verify + " --checkpoints " + Path("acme"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--checkpoints " + Path("acme") + " holds no tenant checkpoint"));
}

}  // namespace
}  // namespace fjord
