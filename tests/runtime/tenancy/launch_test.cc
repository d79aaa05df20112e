// Gate 1, `fjord launch`: inventory validation (every problem with file:line), placement on allowed
// nodes only, the refusal when they are too few (needed, allowed, excluded and why; nothing
// started), the hostfile and mpirun command, Slurm scripts and srun, and through the CLI entry
// point: --dry-run prints exactly the command that a real launch runs, and launch exits with the
// job's exit code.
#include "launcher/launch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "launcher/slurm.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::AuditEvents;
using testing::AuditLines;
using ::testing::ElementsAre;
using testing::Finish;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::RunResult;
using testing::Shell;
using testing::Start;
using testing::WriteText;

constexpr char kInventory[] = R"(# two NO nodes, one NO node drained, two SE nodes
interface: "eth0"
node { hostname: "no1" address: "10.213.0.11" jurisdiction: "NO" site: "osl1" slots: 1 }
node { hostname: "no2" address: "10.213.0.12" jurisdiction: "NO" site: "osl2" slots: 2 interface: "ib0" }
node { hostname: "no3" address: "10.213.0.15" jurisdiction: "NO" site: "osl1" slots: 4 drain: true }
node { hostname: "se1" address: "10.213.0.13" jurisdiction: "SE" site: "sto1" slots: 1 }
node { hostname: "se2" address: "10.213.0.14" jurisdiction: "SE" site: "sto1" slots: 8 labels: "h200" }
)";

proto::Inventory Inventory(const std::string& extra = "") {
  StatusOr<proto::Inventory> inv = ParseInventory(kInventory + extra, "inv.textproto");
  EXPECT_TRUE(inv.ok()) << inv.status().message();
  return inv.ok() ? *inv : proto::Inventory();
}

const ResidencyPolicy kAcmeNo{"acme", {"NO"}, {}};

std::vector<std::string> Hosts(const Placement& p) {
  std::vector<std::string> out;
  for (const PlacedNode& n : p.nodes) out.push_back(n.node.hostname() + ":" + std::to_string(n.ranks));
  return out;
}

TEST(Inventory, ValidInventoryParses) {
  const proto::Inventory inv = Inventory();
  ASSERT_EQ(inv.node_size(), 5);
  EXPECT_EQ(inv.node(1).slots(), 2);
  EXPECT_EQ(inv.node(0).slots(), 1);
}

TEST(Inventory, EveryProblemIsReportedWithFileAndLine) {
  StatusOr<proto::Inventory> inv = ParseInventory(
      "node { hostname: \"a\" jurisdiction: \"NO\" site: \"osl1\" }\n"
      "node {\n  hostname: \"a\"\n  jurisdiction: \"Norway\"\n  site: \"osl 1\"\n  slots: 0\n}\n"
      "node { hostname: \"b\" address: \"a\" jurisdiction: \"se\" site: \"sto1\" interface: \"eth0 x\" }\n"
      "tenant { id: \"acme\" }\n",
      "cluster.textproto");
  ASSERT_FALSE(inv.ok());
  const std::string& m = inv.status().message();
  EXPECT_THAT(m, HasSubstr("cluster.textproto:3:3: node 2 (a): hostname \"a\" is listed twice (first at "
                           "cluster.textproto:1:8)"));
  EXPECT_THAT(
      m,
      HasSubstr("cluster.textproto:4:3: node 2 (a): jurisdiction \"Norway\" is not an ISO 3166-1 alpha-2"));
  EXPECT_THAT(m,
              HasSubstr("cluster.textproto:5:3: node 2 (a): site \"osl 1\" is missing or not a site name"));
  EXPECT_THAT(m, HasSubstr("cluster.textproto:6:3: node 2 (a): slots = 0 must be at least 1"));
  EXPECT_THAT(m, HasSubstr("cluster.textproto:8:22: node 3 (b): address \"a\" is used by another node too"));
  EXPECT_THAT(m, HasSubstr("node 3 (b): jurisdiction \"se\" is not upper case; write \"SE\""));
  EXPECT_THAT(m, HasSubstr("node 3 (b): interface \"eth0 x\" is not a network interface name"));
  EXPECT_THAT(m, HasSubstr("cluster.textproto:9:1: tenant \"acme\" has no allowed_jurisdictions"));

  StatusOr<proto::Inventory> syntax = ParseInventory("node { hostnme: \"a\" }\n", "c.textproto");
  ASSERT_FALSE(syntax.ok());
  EXPECT_THAT(syntax.status().message(),
              HasSubstr("c.textproto:1:8: Message type \"fjord.proto.InventoryNode\" has no field named "
                        "\"hostnme\". The file"));
  EXPECT_THAT(syntax.status().message(), HasSubstr("fjord.proto.Inventory (proto/inventory.proto)"));
  StatusOr<proto::Inventory> empty = ParseInventory("", "c.textproto");
  EXPECT_THAT(empty.status().message(), HasSubstr("the inventory lists no nodes"));
  EXPECT_EQ(LoadInventory("/nonexistent/inv.textproto").status().code(), StatusCode::kNotFound);
}

TEST(Placement, EnoughAllowedNodesPlacesRanksOnThemOnly) {
  StatusOr<Placement> p = PlaceRanks(Inventory(), "inv", kAcmeNo, 3, 0);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_THAT(Hosts(*p), ElementsAre("no1:1", "no2:2"));
  EXPECT_EQ(p->interfaces, (std::vector<std::string>{"eth0", "ib0"}));
  std::vector<std::string> excluded;
  for (const ExcludedNode& e : p->excluded) excluded.push_back(e.hostname + ": " + e.reason);
  EXPECT_THAT(excluded, ElementsAre("no3: drained", "se1: jurisdiction SE is not allowed (allowed: NO)",
                                    "se2: jurisdiction SE is not allowed (allowed: NO)"));
  EXPECT_EQ(HostfileText(*p), "10.213.0.11 slots=1 max_slots=1\n10.213.0.12 slots=2 max_slots=2\n");
  // Fewer ranks use fewer nodes; per_node spreads them.
  EXPECT_THAT(Hosts(*PlaceRanks(Inventory(), "inv", kAcmeNo, 1, 0)), ElementsAre("no1:1"));
  EXPECT_THAT(Hosts(*PlaceRanks(Inventory(), "inv", kAcmeNo, 2, 1)), ElementsAre("no1:1", "no2:1"));
  // Sites narrow further.
  EXPECT_THAT(Hosts(*PlaceRanks(Inventory(), "inv", {"acme", {"NO"}, {"osl2"}}, 2, 0)), ElementsAre("no2:2"));
}

TEST(Placement, TooFewAllowedNodesIsRefusedWithWhatWasNeededAndWhatWasExcluded) {
  StatusOr<Placement> p = PlaceRanks(Inventory(), "inv.textproto", kAcmeNo, 4, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kFailedPrecondition);
  const std::string& m = p.status().message();
  EXPECT_THAT(
      m, HasSubstr("tenant acme needs 4 ranks on nodes inside its residency (jurisdictions NO; sites: any)"));
  EXPECT_THAT(
      m, HasSubstr("inventory inv.textproto has 2 allowed nodes with 3 slots in all: no1 (NO/osl1, 1 slot), "
                   "no2 (NO/osl2, 2 slots)"));
  EXPECT_THAT(m, HasSubstr("Excluded: no3: drained; se1: jurisdiction SE is not allowed (allowed: NO); se2: "
                           "jurisdiction SE is not allowed"));
  EXPECT_THAT(m, HasSubstr("Nothing was started: ranks are never placed outside the residency"));
  EXPECT_THAT(m, HasSubstr("Lower --np to 3 or less, or add nodes in NO to the inventory"));
  EXPECT_FALSE(PlaceRanks(Inventory(), "inv", kAcmeNo, 0, 0).ok());
}

TEST(Placement, AJobWithoutTenantMayUseEveryNodeThatIsNotDrained) {
  StatusOr<Placement> p = PlaceRanks(Inventory(), "inv", ResidencyPolicy(), 12, 0);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_THAT(Hosts(*p), ElementsAre("no1:1", "no2:2", "se1:1", "se2:8"));
}

TEST(Placement, OperatorCeilingsBoundTenants) {
  const proto::Inventory inv =
      Inventory("tenant { id: \"acme\" allowed_jurisdictions: \"NO\" allowed_sites: \"osl1\" }\n");
  StatusOr<Placement> p = PlaceRanks(inv, "inv", {"globex", {"NO"}, {}}, 1, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(), HasSubstr("globex is not one of them"));
  p = PlaceRanks(inv, "inv", {"acme", {"NO", "SE"}, {"osl1"}}, 1, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("allows tenant acme jurisdiction SE, but inventory inv admits it to NO only"));
  p = PlaceRanks(inv, "inv", kAcmeNo, 1, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("admits it to sites osl1 only: list them in the job's residency.allowed_sites"));
  p = PlaceRanks(inv, "inv", {"acme", {"NO"}, {"osl1"}}, 1, 0);
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_THAT(Hosts(*p), ElementsAre("no1:1"));
}

TEST(Slurm, HostlistsAndConstraints) {
  EXPECT_EQ(*ExpandSlurmHostlist("no[1-3,5],se01,gpu[08-10]-a"),
            (std::vector<std::string>{"no1", "no2", "no3", "no5", "se01", "gpu08-a", "gpu09-a", "gpu10-a"}));
  EXPECT_EQ(ExpandSlurmHostlist("no[1-3,5],se01,gpu[08-10]-a")->size(), 8u);
  EXPECT_EQ(ExpandSlurmHostlist("gpu[08-10]-a")->back(), "gpu10-a");
  EXPECT_FALSE(ExpandSlurmHostlist("no[1-").ok());
  EXPECT_FALSE(ExpandSlurmHostlist("no[a-b]").ok());
  EXPECT_EQ(SlurmConstraint(kAcmeNo), "jurisdiction_NO");
  EXPECT_EQ(SlurmConstraint({"acme", {"NO", "SE"}, {}}), "(jurisdiction_NO|jurisdiction_SE)");
  EXPECT_EQ(SlurmConstraint({"acme", {"NO"}, {"osl1", "osl2"}}), "(jurisdiction_NO)&(site_osl1|site_osl2)");
  EXPECT_EQ(SlurmConstraint(ResidencyPolicy()), "");
  // The data's manifests are and-ed on (the job's own residency is not repeated).
  const std::vector<DataResidency> data = {{"data.train", "m1", kAcmeNo},
                                           {"data.val", "m2", {"acme", {"SE"}, {"sto1"}}}};
  EXPECT_EQ(SlurmConstraint({"acme", {"NO", "SE"}, {}}, data),
            "(jurisdiction_NO|jurisdiction_SE)&jurisdiction_NO&(jurisdiction_SE)&(site_sto1)");
  EXPECT_EQ(SlurmConstraint(kAcmeNo, {{"data.train", "m1", kAcmeNo}}), "jurisdiction_NO");
}

// sinfo --noheader --Node --format='%N|%f|%t' as Slurm 22.05 prints it: a node once per partition.
TEST(Slurm, SinfoNodesCarryTheirFeaturesAndUsability) {
  StatusOr<std::vector<proto::InventoryNode>> nodes = ParseSinfoNodes(
      "n1|jurisdiction_NO,site_osl1|idle\n"
      "n1|jurisdiction_NO,site_osl1|idle\n"
      "n2|jurisdiction_NO,site_osl1,h200|mix\n"
      "n3|jurisdiction_SE,site_sto1|drain\n"
      "n4|jurisdiction_SE|idle*\n"
      "n5|(null)|alloc\n",
      2);
  ASSERT_TRUE(nodes.ok()) << nodes.status().message();
  ASSERT_EQ(nodes->size(), 5u);
  std::vector<std::string> got;
  for (const proto::InventoryNode& n : *nodes) {
    got.push_back(n.hostname() + ":" + n.jurisdiction() + "/" + n.site() + ":" + std::to_string(n.slots()) +
                  (n.drain() ? ":drain" : ""));
  }
  EXPECT_THAT(got,
              ElementsAre("n1:NO/osl1:2", "n2:NO/osl1:2", "n3:SE/sto1:2:drain", "n4:SE/:2:drain", "n5:/:2"));
  EXPECT_THAT(std::vector<std::string>((*nodes)[1].labels().begin(), (*nodes)[1].labels().end()),
              ElementsAre("jurisdiction_NO", "site_osl1", "h200"));
  StatusOr<std::vector<proto::InventoryNode>> bad = ParseSinfoNodes("n1|idle\n", 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("sinfo line 1 \"n1|idle\" is not NAME|FEATURES|STATE"));
}

// A node of a Slurm-only inventory that has no jurisdiction feature is never placed for a tenant.
TEST(Slurm, NodesWithoutJurisdictionAreExcludedForTenants) {
  proto::Inventory inv;
  for (const auto& [name, cc] : std::vector<std::pair<std::string, std::string>>{{"n1", ""}, {"n2", "NO"}}) {
    proto::InventoryNode* n = inv.add_node();
    n->set_hostname(name);
    n->set_jurisdiction(cc);
    n->set_slots(1);
  }
  StatusOr<Placement> p = PlaceRanks(inv, "inv", kAcmeNo, 2, 0);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("n1: no jurisdiction (a Slurm node without a jurisdiction_CC feature)"));
  EXPECT_TRUE(PlaceRanks(inv, "inv", ResidencyPolicy(), 2, 0).ok());  // no tenant: any node
}

// scontrol --oneliner show job ID, as Slurm 22.05 prints it (shortened).
TEST(Slurm, ScontrolJobRecords) {
  StatusOr<SlurmJob> job = ParseScontrolJob(
      "JobId=12 JobName=fjord-acme UserId=root(0) JobState=COMPLETED Reason=None Dependency=(null) "
      "ExitCode=0:0 RunTime=00:00:02 Partition=all NodeList=n[1-2] Features=jurisdiction_NO\n");
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->id, "12");
  EXPECT_EQ(job->nodelist, "n[1-2]");
  EXPECT_EQ(job->constraint, "jurisdiction_NO");
  EXPECT_TRUE(job->finished);
  EXPECT_EQ(job->exit_code, 0);
  job = ParseScontrolJob("JobId=13 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 NodeList=n1");
  EXPECT_EQ(job->exit_code, 3);
  job = ParseScontrolJob("JobId=14 JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=n1");
  EXPECT_EQ(job->exit_code, 128 + 15);
  job = ParseScontrolJob("JobId=15 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:0 NodeList=n1");
  EXPECT_EQ(job->exit_code, 1);  // ended by Slurm without a status of its own: never reported as success
  job = ParseScontrolJob("JobId=16 JobState=PENDING Reason=Resources ExitCode=0:0 NodeList=(null)");
  EXPECT_FALSE(job->finished);
  EXPECT_EQ(job->nodelist, "");
  EXPECT_FALSE(ParseScontrolJob("slurm_load_jobs error: Invalid job id specified").ok());
}

TEST(Inventory, SlurmBlockProblemsAreReportedWithFileAndLine) {
  EXPECT_TRUE(
      ParseInventory("slurm { partition: \"gpu\" tenant { id: \"acme\" partition: \"acme\" } }\n", "inv")
          .ok());
  StatusOr<proto::Inventory> inv = ParseInventory(
      "slurm {\n  partition: \"gpu nodes\"\n  ranks_per_node: 0\n"
      "  tenant { id: \"acme\" }\n  tenant { id: \"Acme\" account: \"a\" }\n}\n",
      "inv.textproto");
  ASSERT_FALSE(inv.ok());
  const std::string m = inv.status().message();
  EXPECT_THAT(m, HasSubstr("inv.textproto:2:3: slurm.partition \"gpu nodes\" is not a Slurm name"));
  EXPECT_THAT(m, HasSubstr("inv.textproto:3:3: slurm.ranks_per_node = 0 must be at least 1"));
  EXPECT_THAT(m, HasSubstr("inv.textproto:4:3: slurm.tenant \"acme\" names neither partition nor account"));
  EXPECT_THAT(m, HasSubstr("inv.textproto:5:3: slurm.tenant \"Acme\" is missing or not a tenant id"));
}

// ---- Through the command-line entry point (tenancy_driver launch == fjord launch) ----------------

class LaunchCliTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    WriteText(Path("inv.textproto"), std::string(kInventory) + "lease_dir: \"" + Path("leases") + "\"\n");
    fs::create_directories(Path("leases"));
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
              "data { train: \"" +
                  Path("data/train_*.bin") +
                  "\" }\n"
                  "run_dir: \"" +
                  Path("run") +
                  "\"\n"
                  "tenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
    // A stand-in for mpirun: records its arguments, one per line, and exits with $FAKE_EXIT.
    WriteText(Path("fake-mpirun"),
              "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > \"" + Path("ran") + "\"\nexit ${FAKE_EXIT:-0}\n",
              0755);
  }
  testing::RunResult Launch(const std::string& args, const std::string& env = "") {
    return Shell("env " + env + " " + std::string(FJORD_TENANCY_DRIVER) + " launch " + Path("job.textproto") +
                 " --inventory " + Path("inv.textproto") + " --mpirun " + Path("fake-mpirun") + " " + args);
  }
  static std::string CommandOf(const std::string& output) {
    const std::string key = "fjord launch: command: ";
    const size_t at = output.find(key);
    if (at == std::string::npos) return "";
    return output.substr(at + key.size(), output.find('\n', at) - at - key.size());
  }
};

TEST_F(LaunchCliTest, DryRunPrintsThePlanAndWritesNothing) {
  testing::RunResult r = Launch("--np 2 --dry-run");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tenant acme, residency: jurisdictions NO; sites: any"));
  EXPECT_THAT(r.output, HasSubstr("2 ranks on 2 nodes of inventory"));
  EXPECT_THAT(r.output, HasSubstr("  no1 "));
  EXPECT_THAT(r.output, HasSubstr("  se1          jurisdiction SE is not allowed (allowed: NO)"));
  EXPECT_THAT(r.output, HasSubstr("10.213.0.11 slots=1 max_slots=1"));
  const std::string cmd = CommandOf(r.output);
  EXPECT_THAT(
      cmd,
      HasSubstr(Path("fake-mpirun") + " --hostfile " + Path("run") +
                "/launch/hostfile -np 2 --map-by "
                "slot --nooversubscribe --mca btl_tcp_if_include eth0,ib0 -x NCCL_SOCKET_IFNAME=eth0,ib0 "
                "-x FJORD_LAUNCH_ID"));
  EXPECT_THAT(cmd, HasSubstr(" train " + Path("run") + "/launch/job.textproto"));
  EXPECT_THAT(cmd, Not(HasSubstr("FJORD_NODE_IDENTITY")));
  EXPECT_THAT(r.output, HasSubstr("dry run: nothing was written or started"));
  // No shard of data.train is visible here: said, and left to the ranks' data gate.
  EXPECT_THAT(r.output, HasSubstr("fjord launch: warning: data.train: no file matches '" +
                                  Path("data/train_*.bin") + "'"));
  EXPECT_THAT(r.output,
              HasSubstr("placement is not bounded by its manifest (each rank's data gate still checks it)"));
  EXPECT_FALSE(fs::exists(Path("run")));
  EXPECT_FALSE(fs::exists(Path("ran")));
}

TEST_F(LaunchCliTest, DryRunCommandIsWhatRunsAndTheJobsExitCodeIsLaunchs) {
  const std::string dry = CommandOf(Launch("--np 3 --quiet --dry-run").output);
  ASSERT_FALSE(dry.empty());
  testing::RunResult r = Launch("--np 3 --quiet", "FAKE_EXIT=3");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_EQ(CommandOf(r.output), dry);
  std::vector<std::string> ran;
  for (size_t s = 0, e; (e = ReadText(Path("ran")).find('\n', s)) != std::string::npos; s = e + 1) {
    ran.push_back(ReadText(Path("ran")).substr(s, e - s));
  }
  EXPECT_EQ(CommandLine(ran), dry);  // what mpirun was given is exactly what the dry run printed
  EXPECT_EQ(ReadText(Path("run/launch/hostfile")),
            "10.213.0.11 slots=1 max_slots=1\n10.213.0.12 slots=2 max_slots=2\n");
  EXPECT_THAT(ReadText(Path("run/launch/job.textproto")), HasSubstr("id: \"acme\""));
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log),
            (std::vector<std::string>{"lease_acquired", "launch_plan", "lease_released", "launch_exit"}));
  const std::string plan = AuditLines(log, "launch_plan")[0];
  EXPECT_THAT(
      plan,
      HasSubstr("\"nodes\":{\"no1\":{\"jurisdiction\":\"NO\",\"site\":\"osl1\",\"address\":\"10.213.0.11\","
                "\"ranks\":1"));
  EXPECT_THAT(
      plan, HasSubstr("{\"hostname\":\"se2\",\"reason\":\"jurisdiction SE is not allowed (allowed: NO)\"}"));
  EXPECT_THAT(AuditLines(log, "launch_exit")[0], HasSubstr("\"exit_code\":3"));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

// SIGTERM to launch: the first reaches mpirun as SIGUSR1 (mpirun forwards it to the ranks, which
// checkpoint and exit 0), the second as SIGTERM (mpirun ends the job at once). The stand-in
// mpirun records each signal it gets; it exits 0 on the second USR1-or-TERM it sees, so the test
// sends two SIGTERMs and checks the order of what arrived and launch's exit code.
TEST_F(LaunchCliTest, SigtermBecomesSigusr1ForTheJobThenSigterm) {
  WriteText(Path("fake-mpirun"),
            "#!/bin/bash\nn=0\n"
            "trap 'echo USR1 >> \"" +
                Path("signals") +
                "\"; n=$((n+1))' USR1\n"
                "trap 'echo TERM >> \"" +
                Path("signals") +
                "\"; n=$((n+1))' TERM\n"
                "touch \"" +
                Path("started") +
                "\"\n"
                "while [ $n -lt 2 ]; do sleep 0.05; done\nexit 7\n",
            0755);
  const std::string cmd = std::string(FJORD_TENANCY_DRIVER) + " launch " + Path("job.textproto") +
                          " --inventory " + Path("inv.textproto") + " --mpirun " + Path("fake-mpirun") +
                          " --np 2 --quiet";
  FILE* pipe = Start("exec " + cmd);
  ASSERT_NE(pipe, nullptr);
  for (int i = 0; i < 200 && !fs::exists(Path("started")); ++i) usleep(20000);
  ASSERT_TRUE(fs::exists(Path("started")));
  const std::string launch =
      "pgrep -f '^" + std::string(FJORD_TENANCY_DRIVER) + " launch " + Path("job.textproto") + "'";
  Shell("kill -TERM $(" + launch + "); sleep 0.5; kill -TERM $(" + launch + ")");
  const RunResult done = Finish(pipe);
  const std::string& out = done.output;
  const int status = done.wait_status;
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 7) << out;  // the job's exit code, as always
  EXPECT_EQ(ReadText(Path("signals")), "USR1\nTERM\n");
  EXPECT_THAT(AuditLines(Path("run/audit.jsonl"), "launch_exit")[0], HasSubstr("\"exit_code\":7"));
}

TEST_F(LaunchCliTest, TooFewAllowedNodesStartsNothingAndIsAudited) {
  testing::RunResult r = Launch("--np 5");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: tenant acme needs 5 ranks"));
  EXPECT_THAT(r.output, HasSubstr("2 allowed nodes with 3 slots"));
  EXPECT_FALSE(fs::exists(Path("ran")));  // mpirun never started: zero ranks
  EXPECT_FALSE(fs::exists(Path("run/launch")));
  EXPECT_EQ(AuditEvents(Path("run/audit.jsonl")), std::vector<std::string>{"launch_refused"});
}

// Issue 21 item 10: a refused dry run writes nothing, not even its refusal; a refusal is never
// appended to a log that another tenant's records began.
TEST_F(LaunchCliTest, RefusedDryRunWritesNothingAndNoRefusalGoesToAnotherTenantsLog) {
  testing::RunResult r = Launch("--np 5 --dry-run");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("tenant acme needs 5 ranks"));
  EXPECT_FALSE(fs::exists(Path("run"))) << r.output;

  fs::create_directories(Path("run"));
  {
    StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(Path("run/audit.jsonl"), "test");
    ASSERT_TRUE(log.ok()) << log.status().message();
    ASSERT_TRUE((*log)->Append("job_start", AuditRecord().Str("tenant", "globex")).ok());
  }
  const std::string before = ReadText(Path("run/audit.jsonl"));
  r = Launch("--np 5");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("the refusal is not recorded: " + Path("run/audit.jsonl") +
                                  " is tenant globex's audit log, and this job is tenant acme"));
  EXPECT_EQ(ReadText(Path("run/audit.jsonl")), before);
}

// Launch places by the data's residency too: the job allows NO and SE, but the manifest of its
// shards allows NO only, so the ranks go to NO nodes only, the plan and launch_plan say which manifest
// bounded placement, and a job needing more NO slots than exist is refused naming the manifest.
TEST_F(LaunchCliTest, DataManifestBoundsPlacementToItsResidency) {
  std::string job = ReadText(Path("job.textproto"));
  const std::string no = "allowed_jurisdictions: \"NO\"";
  job.replace(job.find(no), no.size(), no + " allowed_jurisdictions: \"SE\"");
  WriteText(Path("job.textproto"), job);
  WriteText(Path("data/train_000000.bin"), "x");  // launch reads manifests only, never shards
  const std::string manifest = Path("data/manifest.textproto");
  WriteText(manifest, "tenant: \"acme\"\nallowed_jurisdictions: \"NO\"\n");
  testing::RunResult r = Launch("--np 3 --dry-run");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("residency: jurisdictions NO, SE"));
  EXPECT_THAT(r.output,
              HasSubstr("data manifest " + manifest + " (data.train) bounds placement: jurisdictions NO"));
  EXPECT_THAT(r.output, HasSubstr("3 ranks on 2 nodes"));
  EXPECT_THAT(r.output,
              HasSubstr("  se1          data manifest " + manifest +
                        " (data.train) allows jurisdictions NO; sites: any: jurisdiction SE is not allowed"));
  EXPECT_THAT(r.output, Not(HasSubstr("10.213.0.13 slots")));  // se1 is not in the hostfile

  r = Launch("--np 4 --dry-run");  // 3 NO slots; the job alone would take se1 too
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("tenant acme needs 4 ranks on nodes inside its residency (jurisdictions NO, SE; "
                        "sites: any) and inside the residency of its data (manifest " +
                        manifest + ": jurisdictions NO; sites: any)"));

  r = Launch("--np 3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const std::string plan = AuditLines(Path("run/audit.jsonl"), "launch_plan")[0];
  EXPECT_THAT(plan,
              HasSubstr("\"data_manifests\":[{\"fields\":\"data.train\",\"path\":\"" + manifest +
                        "\",\"tenant\":\"acme\",\"allowed_jurisdictions\":[\"NO\"],\"allowed_sites\":[]}]"));
  EXPECT_EQ(ReadText(Path("run/launch/hostfile")),
            "10.213.0.11 slots=1 max_slots=1\n10.213.0.12 slots=2 max_slots=2\n");
}

// A job without tenant, or of another tenant, is refused by launch when its data has a manifest:
// nothing is placed or started, and the message names the manifest, its tenant and what to add.
TEST_F(LaunchCliTest, DataOfAnotherTenantIsRefusedBeforePlacement) {
  WriteText(Path("data/train_000000.bin"), "x");
  const std::string manifest = Path("data/manifest.textproto");
  WriteText(manifest, "tenant: \"globex\"\nallowed_jurisdictions: \"NO\"\n");
  testing::RunResult r = Launch("--np 1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("data.train: " + manifest +
                                  " belongs to tenant globex, but this job is tenant acme"));
  EXPECT_FALSE(fs::exists(Path("ran")));
  EXPECT_EQ(AuditEvents(Path("run/audit.jsonl")), std::vector<std::string>{"launch_refused"});

  WriteText(Path("job.textproto"),
            "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
            "data { train: \"" +
                Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n");
  r = Launch("--np 1 --dry-run");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(manifest + " belongs to tenant globex, but this job has no tenant"));
  EXPECT_THAT(r.output,
              HasSubstr("Add `tenant { id: \"globex\" } residency { allowed_jurisdictions: \"NO\" }`"));
  EXPECT_THAT(r.output, HasSubstr("Nothing was started"));
  EXPECT_FALSE(fs::exists(Path("ran")));
}

TEST_F(LaunchCliTest, ArgumentErrorsExitTwoWithUsage) {
  testing::RunResult r =
      Shell(std::string(FJORD_TENANCY_DRIVER) + " launch " + Path("job.textproto") + " --np 2");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--inventory INV.textproto is required"));
  r = Launch("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--np N is required"));
  r = Launch("--np two");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--np 'two' is not a whole number"));
}

TEST_F(LaunchCliTest, MaxRestartsArgumentErrors) {
  testing::RunResult r = Launch("--np 2 --min-nodes 1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output,
              HasSubstr("--min-nodes bounds the restarts of --max-restarts N: give --max-restarts too"));
  r = Launch("--np 2 --max-restarts 1 --slurm");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--max-restarts under --slurm needs --wait: launch follows the job to its "
                                  "end to resubmit it without the failed node"));
  r = Launch("--np 2 --max-restarts 1 --slurm --wait", "SLURM_JOB_ID=77");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output,
              HasSubstr("--max-restarts inside a Slurm allocation (SLURM_JOB_ID 77) is not built yet"));
  r = Launch("--np 2 --max-restarts -1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_FALSE(fs::exists(Path("ran")));
}

// A job that fails without any rank record (the stand-in mpirun starts no rank): the records do not
// tell which node failed, so no node is excluded and the job runs again on the same nodes with
// --resume, at most N times, each restart audited; launch exits with the last attempt's code.
TEST_F(LaunchCliTest, AFailedJobRestartsAtMostNTimesAndEachRestartIsAudited) {
  testing::RunResult r = Launch("--np 2 --per-node 1 --max-restarts 2", "FAKE_EXIT=3");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no failed node identified (every node's ranks lack an end record"));
  EXPECT_THAT(r.output, HasSubstr("restart 2 of 2 on 2 nodes: no1 (1 rank), no2 (1 rank), global batch 8"));
  EXPECT_THAT(r.output,
              HasSubstr("the job failed (exit 3) after 2 restart(s), the most --max-restarts allows"));
  const std::vector<std::string> events = AuditEvents(Path("run/audit.jsonl"));
  EXPECT_EQ(testing::Count(events, "launch_plan"), 3);
  EXPECT_EQ(testing::Count(events, "job_restart"), 2);
  EXPECT_EQ(testing::Count(events, "launch_exit"), 3);
  EXPECT_THAT(AuditLines(Path("run/audit.jsonl"), "job_restart")[1], HasSubstr("\"restart\":2"));
  // The last attempt resumed, with the global batch fixed (train.global_batch in its job spec).
  EXPECT_THAT(ReadText(Path("ran")), HasSubstr("--resume\n"));
  EXPECT_THAT(ReadText(Path("run/launch/job.textproto")), HasSubstr("global_batch: 8"));
  // A job that succeeds is not restarted.
  fs::remove_all(Path("run"));
  r = Launch("--np 2 --per-node 1 --max-restarts 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(testing::Count(AuditEvents(Path("run/audit.jsonl")), "launch_plan"), 1);
}

// Issue 21 item 8: --time, --gpus-per-node and --signal (default USR1@120, so a time limit ends
// in a checkpoint) go into the sbatch script, as does any other sbatch option through --sbatch-arg;
// the options that carry residency (placement, exclusivity, partition, account) are refused there.
TEST_F(LaunchCliTest, SlurmTakesTimeGpusSignalAndOtherSbatchOptions) {
  WriteText(Path("fake-sbatch"), "#!/bin/sh\necho 4242\n", 0755);
  testing::RunResult r = Launch("--np 2 --slurm --sbatch " + Path("fake-sbatch") +
                                    " --time 2:00:00 --gpus-per-node 8 --sbatch-arg=--qos=high "
                                    "--sbatch-arg=--mail-type=END",
                                "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::string script = ReadText(Path("run/launch/job.sbatch"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --time=2:00:00\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --gpus-per-node=8\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --signal=USR1@120\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --qos=high\n#SBATCH --mail-type=END\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --exclusive\n"));  // the residency controls stay
  fs::remove_all(Path("run"));
  r = Launch("--np 2 --slurm --sbatch " + Path("fake-sbatch") + " --signal USR1@600", "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  script = ReadText(Path("run/launch/job.sbatch"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --signal=USR1@600\n"));
  EXPECT_THAT(script, Not(HasSubstr("--time")));

  for (const std::string arg : {"--constraint=jurisdiction_SE", "--nodelist=se1", "-wse1",
                                "--partition=shared", "--account=globex"}) {
    r = Launch("--np 2 --slurm --dry-run --sbatch-arg=" + arg, "-u SLURM_JOB_ID");
    EXPECT_EQ(r.exit_code, 2) << arg << r.output;
    EXPECT_THAT(r.output, HasSubstr("is set by fjord launch from the tenant's residency")) << arg;
  }
  r = Launch("--np 2 --slurm --dry-run --sbatch-arg=--time=1:00", "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("use launch's --time instead"));
  r = Launch("--np 2 --time 1:00");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--time is an sbatch option: add --slurm"));
}

TEST_F(LaunchCliTest, SlurmOutsideAnAllocationWritesAndSubmitsAnSbatchScript) {
  // A stand-in for sbatch: records its arguments and answers as `sbatch --parsable` does.
  WriteText(Path("fake-sbatch"),
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"" + Path("submitted") + "\"\necho 4242\n", 0755);
  testing::RunResult r = Launch("--np 2 --slurm --sbatch " + Path("fake-sbatch"), "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadText(Path("submitted")), "--parsable\n" + Path("run/launch/job.sbatch") + "\n");
  EXPECT_THAT(r.output, HasSubstr("fjord launch: submitted Slurm job 4242\n"));
  const std::string script = ReadText(Path("run/launch/job.sbatch"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --nodelist=no1,no2\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --constraint=jurisdiction_NO\n"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --ntasks=2\n"));
  EXPECT_THAT(script, HasSubstr("export SLURM_HOSTFILE=" + Path("run") + "/launch/slurm-hostfile"));
  EXPECT_THAT(script, HasSubstr("srun --mpi=pmix --kill-on-bad-exit=1 --ntasks=2 --nodelist=no1,no2 "
                                "--distribution=arbitrary --export=ALL,NCCL_SOCKET_IFNAME=eth0,ib0"));
  // No tenant partition or account in the inventory: whole nodes, so no other tenant shares them.
  EXPECT_THAT(script, HasSubstr("#SBATCH --exclusive\n"));
  EXPECT_THAT(script, Not(HasSubstr("--partition")));
  EXPECT_EQ(ReadText(Path("run/launch/slurm-hostfile")), "no1\nno2\n");
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log), (std::vector<std::string>{"launch_plan", "slurm_submitted"}));
  EXPECT_THAT(AuditLines(log, "launch_plan")[0], HasSubstr("\"mode\":\"sbatch\""));
  EXPECT_THAT(AuditLines(log, "slurm_submitted")[0],
              HasSubstr("\"slurm_job_id\":\"4242\",\"slurm_constraint\":\"jurisdiction_NO\""));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

// --wait on a job slurmctld has forgotten (it ended longer ago than MinJobAge before the first
// query): a clear error naming the job, exit 1, and launch_exit recorded; never a hang. The
// stand-in scontrol answers as Slurm 22.05 does for an unknown id.
TEST_F(LaunchCliTest, SlurmWaitForAJobSlurmNoLongerKnowsIsAnError) {
  WriteText(Path("fake-sbatch"), "#!/bin/sh\necho 4243\n", 0755);
  fs::create_directories(Path("bin"));
  WriteText(Path("bin/scontrol"),
            "#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n", 0755);
  testing::RunResult r = Launch("--np 2 --slurm --wait --sbatch " + Path("fake-sbatch"),
                                "-u SLURM_JOB_ID PATH=" + Path("bin") + ":$PATH");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: submitted Slurm job 4243\n"));
  EXPECT_THAT(r.output, HasSubstr("Slurm job 4243 is no longer known to slurmctld"));
  EXPECT_THAT(r.output, HasSubstr("its exit code is lost; see the job's output file"));
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log), (std::vector<std::string>{"launch_plan", "slurm_submitted", "launch_exit"}));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

TEST_F(LaunchCliTest, SlurmTenantPartitionReplacesExclusive) {
  WriteText(Path("inv.textproto"), std::string(kInventory) +
                                       "slurm { partition: \"all\" tenant { id: \"acme\" partition: \"acme\" "
                                       "account: \"acme-ops\" } tenant { id: \"other\" account: \"o\" } }\n");
  WriteText(Path("fake-sbatch"), "#!/bin/sh\necho 7\n", 0755);
  testing::RunResult r = Launch("--np 2 --slurm --sbatch " + Path("fake-sbatch"), "-u SLURM_JOB_ID");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string script = ReadText(Path("run/launch/job.sbatch"));
  EXPECT_THAT(script, HasSubstr("#SBATCH --partition=acme\n#SBATCH --account=acme-ops\n"));
  EXPECT_THAT(script, Not(HasSubstr("--exclusive")));
  EXPECT_THAT(
      AuditLines(Path("run/audit.jsonl"), "slurm_submitted")[0],
      HasSubstr("\"slurm_partition\":\"acme\",\"slurm_account\":\"acme-ops\",\"slurm_exclusive\":false"));
}

TEST_F(LaunchCliTest, SlurmRejectionIsAnErrorWithSlurmsMessage) {
  WriteText(Path("fake-sbatch"),
            "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n",
            0755);
  testing::RunResult r = Launch("--np 2 --slurm --wait --sbatch " + Path("fake-sbatch"), "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: error: Slurm did not accept the job: `" + Path("fake-sbatch") +
                        " --parsable " + Path("run/launch/job.sbatch") +
                        "` exited with 1: sbatch: error: Batch job submission failed: Invalid account"));
  EXPECT_EQ(AuditEvents(Path("run/audit.jsonl")),
            (std::vector<std::string>{"launch_plan", "launch_refused"}));
}

TEST_F(LaunchCliTest, SbatchAnswerWithoutAJobIdIsAnError) {
  WriteText(Path("fake-sbatch"), "#!/bin/sh\necho 'Submitted to the moon'\n", 0755);
  testing::RunResult r = Launch("--np 2 --slurm --sbatch " + Path("fake-sbatch"), "-u SLURM_JOB_ID");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("printed \"Submitted to the moon\" instead of a job id; the job may or may not "
                        "have been submitted: check squeue"));
}

TEST_F(LaunchCliTest, SlurmOnlyInventoryWithoutAReachableSlurmIsAnError) {
  WriteText(Path("inv.textproto"), "slurm { }\n");
  // A configuration whose controller listens nowhere (port 1): sinfo fails at once.
  WriteText(Path("unreachable.conf"),
            "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=1\nMessageTimeout=2\n"
            "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n");
  testing::RunResult r =
      Launch("--np 2 --slurm --dry-run", "-u SLURM_JOB_ID SLURM_CONF=" + Path("unreachable.conf"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  // sinfo exits non-zero, or cannot be run at all where Slurm is not installed.
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: cannot list Slurm's nodes: `sinfo --noheader --Node "
                                  "'--format=%N|%f|%t'` exited with "));
  EXPECT_THAT(r.output,
              HasSubstr("Check that Slurm's commands are installed and SLURM_CONF names the cluster"));
  EXPECT_FALSE(fs::exists(Path("run/audit.jsonl")));  // a dry run writes nothing, its refusal included

  // A SLURM_CONF that does not exist is named before sinfo runs (it would retry for a minute).
  fs::remove_all(Path("run"));
  r = Launch("--np 2 --slurm --dry-run", "-u SLURM_JOB_ID SLURM_CONF=" + Path("no-such-slurm.conf"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("SLURM_CONF names " + Path("no-such-slurm.conf") +
                                  ", which cannot be read (No such file or directory)"));
  EXPECT_FALSE(fs::exists(Path("run/audit.jsonl")));
}

// The head launch prints at exit is an anchor: `fjord audit verify --anchor` holds on the log as
// written, and fails, naming the anchor, once the log's end is cut off and its head rewritten to
// match (which verifies clean without the anchor).
TEST_F(LaunchCliTest, TheHeadLaunchPrintsCatchesATruncatedLog) {
  RunResult r = Launch("--np 2 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string log = Path("run/audit.jsonl");
  const std::string key = "fjord launch: job exited with 0; audit log " + log + " head ";
  const size_t at = r.output.find(key);
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string anchor =
      r.output.substr(at + key.size(), r.output.find(' ', at + key.size()) - at - key.size());
  EXPECT_EQ(anchor, "4:" + ReadText(log).substr(ReadText(log).size() - 67, 64));
  EXPECT_THAT(r.output, HasSubstr("(check with: fjord audit verify " + log + " --anchor " + anchor + ")"));
  const std::string verify = std::string(FJORD_BINARY) + " audit verify " + log;
  r = Shell(verify + " --anchor " + anchor);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(": ok, 4 records, head " + anchor.substr(2) + ", 1 anchor(s) hold"));

  // Cut launch_exit and lease_released off; rewrite the head to the new end.
  std::string text = ReadText(log);
  for (int i = 0; i < 2; ++i) text.erase(text.rfind('\n', text.size() - 2) + 1);
  WriteText(log, text);
  WriteText(log + ".head", "2 " + text.substr(text.size() - 67, 64) + "\n");
  EXPECT_EQ(Shell(verify).exit_code, 0);
  r = Shell(verify + " --anchor " + anchor);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("BROKEN at the end: anchor " + anchor + " (--anchor " + anchor +
                        ") names record 4 but the log ends at record 2: records were cut off the end"));
  r = Shell(verify + " --anchor 4:" + std::string(63, 'a'));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--anchor: anchor '4:" + std::string(63, 'a') + "' is not SEQ:HASH"));
}

// The copy out of the user's reach: launch sends the final head to the host's system log. The
// test runs launch in a mount namespace whose /dev/log is a datagram socket the test reads, and
// checks the message (facility authpriv, level notice) against what launch printed.
TEST_F(LaunchCliTest, LaunchSendsTheFinalHeadToTheSystemLog) {
  const std::string sock = Path("log.sock");
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM, 0);
  ASSERT_GE(fd, 0);
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(sock.size(), sizeof(addr.sun_path));
  std::strcpy(addr.sun_path, sock.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  const struct timeval five = {5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five, sizeof(five));
  WriteText(Path("null"), "");
  const std::string probe = "unshare -m --propagation private true";
  if (Shell(probe).exit_code != 0) {
    ::close(fd);
    GTEST_SKIP() << "cannot make a mount namespace (`" << probe << "` failed: needs root or CAP_SYS_ADMIN)";
  }
  const std::string inner =
      "mount --bind /dev/null " + Path("null") + " && mount -t tmpfs tmpfs /dev && touch " +
      "/dev/null /dev/log && mount --bind " + Path("null") + " /dev/null && mount --bind " + sock +
      " /dev/log && exec " + std::string(FJORD_TENANCY_DRIVER) + " launch " + Path("job.textproto") +
      " --inventory " + Path("inv.textproto") + " --mpirun " + Path("fake-mpirun") + " --np 2 --quiet";
  RunResult r = Shell("unshare -m --propagation private sh -c '" + inner + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string key = " head ";
  const size_t at = r.output.find("audit log " + Path("run/audit.jsonl") + key);
  ASSERT_NE(at, std::string::npos) << r.output;
  const size_t from = at + ("audit log " + Path("run/audit.jsonl") + key).size();
  const std::string anchor = r.output.substr(from, r.output.find(' ', from) - from);
  char buf[2048] = {};
  const ssize_t n = ::recv(fd, buf, sizeof(buf) - 1, 0);
  ::close(fd);
  ASSERT_GT(n, 0) << "no message reached the system log: " << std::strerror(errno);
  const std::string message(buf, static_cast<size_t>(n));
  EXPECT_THAT(message, ::testing::StartsWith("<85>"));  // LOG_AUTHPRIV | LOG_NOTICE
  EXPECT_THAT(message, HasSubstr("fjord-launch["));
  EXPECT_THAT(message, HasSubstr("audit head " + anchor + " log " + Path("run/audit.jsonl") + " launch "));
  EXPECT_THAT(message, HasSubstr(" tenant acme"));
}

TEST_F(LaunchCliTest, WaitAndSbatchNeedSlurm) {
  testing::RunResult r = Launch("--np 2 --wait");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--wait and --sbatch are for Slurm jobs: add --slurm"));
  EXPECT_FALSE(fs::exists(Path("run")));
}

TEST_F(LaunchCliTest, SlurmOnlyInventoryNeedsSlurm) {
  WriteText(Path("inv.textproto"), "slurm { }\n");
  testing::RunResult r = Launch("--np 2 --dry-run");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output,
              HasSubstr("lists no nodes, only a slurm { } block: its nodes and their jurisdictions come "
                        "from Slurm, so launch with --slurm"));
}

TEST_F(LaunchCliTest, SlurmInsideAnAllocationRunsSrunOnItsAllowedNodesOnly) {
  testing::RunResult r =
      Launch("--np 2 --slurm --dry-run", "SLURM_JOB_ID=42 'SLURM_JOB_NODELIST=no[2-3],se[1-2]'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(CommandOf(r.output), HasSubstr("env SLURM_HOSTFILE=" + Path("run") +
                                             "/launch/slurm-hostfile srun --mpi=pmix "
                                             "--kill-on-bad-exit=1 --ntasks=2 --nodelist=no2"));
  EXPECT_THAT(r.output, HasSubstr("  no1          not in the Slurm allocation"));
  r = Launch("--np 3 --slurm --dry-run", "SLURM_JOB_ID=42 'SLURM_JOB_NODELIST=no[2-3],se[1-2]'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("needs 3 ranks"));
  EXPECT_THAT(r.output, HasSubstr("no1: not in the Slurm allocation"));
}

}  // namespace
}  // namespace fjord
