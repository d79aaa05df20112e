// fjord launch --max-restarts without processes: which node failed (launch/rank_status.h, from the
// ranks' own start and end records) and the restart's placement (launch/restart.h): the same
// placement and residency code as the first launch, --min-nodes, the global batch kept or refused.
// The restarts themselves, on real hosts, are in netns_cluster_test.cc (...Restart...).
#include "launcher/launch/restart.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/env.h"
#include "launcher/launch/inventory.h"
#include "launcher/launch/rank_status.h"
#include "runtime/tenancy/audit.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

using testing::AuditLines;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::WriteText;

TEST(RankStatus, MissingRanksAreTakenFromFjordsOwnMessages) {
  EXPECT_THAT(MissingRanksIn("in collective AllReduce #6 (4 bytes float avg, tree), running for 1.2 s, "
                             "waiting for rank 3 (host no2)"),
              ElementsAre(3));
  EXPECT_THAT(MissingRanksIn("AllReduce #9 timed out after 5 s; ranks not arrived: 1 (host no2: last issued "
                             "#8, 5.1 s ago), 12 (host se1: last issued #8, 5.0 s ago); ranks not answering "
                             "within 2.5 s: 4 (host se2) (stopped, dead or stuck); arrived: 0, 2"),
              ElementsAre(1, 4, 12));
  // Numbers elsewhere (the collective's sequence, byte counts, arrived ranks) are not ranks lost.
  EXPECT_TRUE(MissingRanksIn("all ranks arrived, but MPI made no progress; arrived: 0, 1, 2").empty());
  EXPECT_TRUE(MissingRanksIn("").empty());
}

class RankStatusTest : public testing::TenancyTest {
 protected:
  // rank-R of `dir` as a rank writes it (RecordRankStart / RecordRankEnd are per process).
  void Write(int rank, const std::string& host, const std::string& ended = "",
             const std::string& missing = "", const std::string& detail = "") {
    std::string text =
        "rank " + std::to_string(rank) + "\nhost " + host + "\npid 4" + std::to_string(rank) + "\n";
    if (!ended.empty()) text += "ended " + ended + "\nmissing " + missing + "\ndetail " + detail + "\n";
    WriteText(Path("ranks/rank-" + std::to_string(rank)), text);
  }
  Placement ThreeNodes() {
    StatusOr<proto::Inventory> inv = ParseInventory(
        "node { hostname: \"no1\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n"
        "node { hostname: \"no2\" jurisdiction: \"NO\" site: \"osl1\" slots: 2 }\n"
        "node { hostname: \"se1\" jurisdiction: \"SE\" site: \"sto1\" slots: 1 }\n",
        "inv");
    EXPECT_TRUE(inv.ok());
    StatusOr<Placement> p = PlaceRanks(*inv, "inv", {"acme", {"NO", "SE"}, {}}, 4, 0);
    EXPECT_TRUE(p.ok()) << p.status().message();
    return *p;  // no1: rank 0; no2: ranks 1, 2; se1: rank 3
  }
};

TEST_F(RankStatusTest, ARankWithoutAnEndMarksItsNodeAndTheSurvivorsDoNot) {
  Write(0, "no1", "signal 15", "", "in AllReduce #4, waiting for rank 1 (host no2)");
  Write(1, "no2");  // started, killed with SIGKILL: no end
  Write(2, "no2", "signal 15", "", "no collective in flight");
  Write(3, "se1", "signal 15", "", "no collective in flight");
  StatusOr<std::vector<RankStatus>> s = ReadRankStatuses(Path("ranks"));
  ASSERT_TRUE(s.ok()) << s.status().message();
  ASSERT_EQ(s->size(), 4u);
  EXPECT_EQ((*s)[1].pid, 41);
  EXPECT_TRUE((*s)[1].ended.empty());
  const FailedNodes f = FindFailedNodes(*s, ThreeNodes());
  EXPECT_THAT(f.hosts, ElementsAre("no2"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 1 (no2): no end recorded (pid 41 on no2"));
}

TEST_F(RankStatusTest, TheSignalHandlersOwnRecordCountsAsAnEnd) {
  // Rank 0 was SIGKILLed before its watcher wrote: the handler's rank-0.signal says it was alive to
  // receive the teardown's SIGTERM, so only rank 1's node is marked.
  Write(0, "no1");
  WriteText(Path("ranks/rank-0.signal"), "signal 15\n");
  Write(1, "no2");
  Write(2, "no2", "signal 15", "", "");
  Write(3, "se1", "signal 15", "", "");
  StatusOr<std::vector<RankStatus>> s = ReadRankStatuses(Path("ranks"));
  ASSERT_TRUE(s.ok()) << s.status().message();
  ASSERT_EQ(s->size(), 4u);
  EXPECT_EQ((*s)[0].ended, "signal 15");
  EXPECT_THAT(FindFailedNodes(*s, ThreeNodes()).hosts, ElementsAre("no2"));
}

TEST_F(RankStatusTest, AStalledSurvivorsNoteNamesThePeerWhenTheTeardownKilledItSilently) {
  // Rank 0 waited for rank 1 long enough to note it, then the teardown's SIGKILL beat its handler.
  Write(0, "no1");
  WriteText(Path("ranks/rank-0"),
            ReadText(Path("ranks/rank-0")) +
                "waiting in AllReduce #7 (4 bytes), running for 0.3 s, waiting for rank 1 "
                "(host no2)\nmissing 1\n");
  Write(1, "no2");
  Write(2, "no2", "signal 15", "", "");
  Write(3, "se1", "signal 15", "", "");
  FailedNodes f = FindFailedNodes(*ReadRankStatuses(Path("ranks")), ThreeNodes());
  EXPECT_THAT(f.hosts, ElementsAre("no2"));
  EXPECT_THAT(f.evidence, Not(HasSubstr("rank 0")));
  // A note naming a peer that did end through fjord's paths does not blame it: the noting rank, gone
  // without an end (a teardown's SIGTERM would have left the signal handler's), is the one killed.
  // Seen on the netns cluster: rank 1 waited for rank 0's checkpoint, then `kill -9` hit it.
  Write(1, "no2", "signal 15", "", "");
  f = FindFailedNodes(*ReadRankStatuses(Path("ranks")), ThreeNodes());
  EXPECT_THAT(f.hosts, ElementsAre("no1"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 0 (no1): no end recorded"));
  EXPECT_THAT(f.evidence, HasSubstr("its last note: in AllReduce #7"));
  EXPECT_THAT(f.evidence, Not(HasSubstr("rank 1 (no2)")));
}

TEST_F(RankStatusTest, ASurvivorsCensusNamesTheNodeEvenWhenEveryRankEnded) {
  // A communication timeout: every rank ended through fjord's paths; rank 0's census names rank 3.
  Write(0, "no1", "error", "3", "ranks not arrived: 3 (host se1: last issued #8)");
  Write(1, "no2", "error", "3", "");
  Write(2, "no2", "error", "", "");
  Write(3, "se1", "error", "", "");
  const FailedNodes f = FindFailedNodes(*ReadRankStatuses(Path("ranks")), ThreeNodes());
  EXPECT_THAT(f.hosts, ElementsAre("se1"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 3 (se1): named missing by rank 0"));
}

TEST_F(RankStatusTest, ParentLossAndNeverStartedMarkTheirNodes) {
  Write(0, "no1", "ok");
  Write(1, "no2", "parent_lost", "", "rank 1 (host no2): its parent process has died");
  Write(2, "no2", "parent_lost", "", "rank 2 (host no2): its parent process has died");
  // rank 3 never wrote a record (its host did not start it)
  const FailedNodes f = FindFailedNodes(*ReadRankStatuses(Path("ranks")), ThreeNodes());
  EXPECT_THAT(f.hosts, ElementsAre("no2", "se1"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 3 (se1): no start record"));
}

TEST_F(RankStatusTest, NoRecordsAtAllNameNoNode) {
  const FailedNodes f = FindFailedNodes(*ReadRankStatuses(Path("nowhere")), ThreeNodes());
  EXPECT_TRUE(f.hosts.empty());
  EXPECT_THAT(f.evidence, HasSubstr("every node's ranks lack an end record"));
}

// Every job_start gets its job_end: when rank 0 was killed before recording one, launch records it
// once, with what rank 0's own record says; a job that has its job_end, or a start before the launch,
// is left alone.
TEST_F(RankStatusTest, LaunchRecordsTheJobEndThatAKilledRankZeroCouldNot) {
  const std::string log = Path("audit.jsonl");
  StatusOr<std::unique_ptr<AuditLog>> rank0 = AuditLog::Open(log, "rank0@no1");
  ASSERT_TRUE(rank0.ok());
  ASSERT_TRUE((*rank0)->Append("job_start", AuditRecord().Str("launch_id", "a")).ok());
  ASSERT_TRUE((*rank0)->Append("job_end", AuditRecord().Bool("ok", true)).ok());
  StatusOr<AuditAnchor> plan = (*rank0)->Append("launch_plan", AuditRecord().Str("launch_id", "b"));
  ASSERT_TRUE(plan.ok());
  // Nothing started since the plan: nothing to close; the earlier job has its end.
  EXPECT_EQ(*JobStartWithoutEnd(log, 0), 0);
  EXPECT_FALSE(RecordMissingJobEnd(log, "launch@head", plan->seq, 137, "", Path("ranks"), "fjord launch"));
  StatusOr<AuditAnchor> start = (*rank0)->Append("job_start", AuditRecord().Str("launch_id", "b"));
  ASSERT_TRUE(start.ok());
  ASSERT_TRUE((*rank0)->Append("checkpoint_written").ok());
  EXPECT_EQ(*JobStartWithoutEnd(log, plan->seq), start->seq);
  EXPECT_EQ(*JobStartWithoutEnd(log, start->seq), 0) << "a start before the launch is not its job";
  Write(0, "no1", "signal 15", "", "recorded by the signal handler");
  Write(1, "no2");
  EXPECT_TRUE(RecordMissingJobEnd(log, "launch@head", plan->seq, 137, "rank 1 on host no2 killed by signal 9",
                                  Path("ranks"), "fjord launch"));
  const std::vector<std::string> ends = AuditLines(log, "job_end");
  ASSERT_EQ(ends.size(), 2u);
  EXPECT_THAT(ends[1], HasSubstr("\"actor\":\"launch@head\""));
  EXPECT_THAT(ends[1], HasSubstr("\"ok\":false"));
  EXPECT_THAT(ends[1], HasSubstr("rank 0 (pid 40 on no1) ended: signal 15"));
  EXPECT_THAT(ends[1], HasSubstr("rank 1 on host no2 killed by signal 9"));
  EXPECT_THAT(ends[1], HasSubstr("\"exit_code\":137"));
  EXPECT_THAT(ends[1], HasSubstr("\"recorded_by\":\"fjord launch\""));
  EXPECT_THAT(ends[1], HasSubstr("\"job_start_seq\":" + std::to_string(start->seq)));
  EXPECT_THAT(ends[1], HasSubstr("\"signal\":15"));
  // Once: the job now has its end.
  EXPECT_FALSE(RecordMissingJobEnd(log, "launch@head", plan->seq, 137, "", Path("ranks"), "fjord launch"));
  EXPECT_EQ(AuditLines(log, "job_end").size(), 2u);
  StatusOr<AuditVerifyReport> verified = VerifyAuditLog(log);
  ASSERT_TRUE(verified.ok());
  EXPECT_TRUE(verified->ok) << verified->problem;
}

// Under Slurm (sbatch) launch does not place the ranks: a failed rank's node is the Slurm node its own
// record names; a rank that never wrote one names no node, and all nodes failing names none.
TEST_F(RankStatusTest, UnderSlurmTheFailedRanksOwnRecordNamesItsNode) {
  Write(0, "n1", "signal 15", "", "");
  Write(1, "n2");  // killed outright
  Write(2, "n3", "signal 15", "", "");
  FailedNodes f = FindFailedSlurmNodes(*ReadRankStatuses(Path("ranks")), 4);
  EXPECT_THAT(f.hosts, ElementsAre("n2"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 1 (n2): no end recorded"));
  EXPECT_THAT(f.evidence, HasSubstr("rank 3: no start record (it never started) (on no node it recorded)"));
  Write(0, "n1");
  Write(2, "n3");
  f = FindFailedSlurmNodes(*ReadRankStatuses(Path("ranks")), 3);
  EXPECT_TRUE(f.hosts.empty()) << f.evidence;
  EXPECT_THAT(f.evidence, HasSubstr("every node's ranks lack an end record"));
}

TEST_F(RankStatusTest, TheRanksOwnRecordsRoundTrip) {
  testing::ScopedEnv dir(kRankStatusDirEnv, Path("own"));
  RecordRankStart(2, "no2");
  StatusOr<std::vector<RankStatus>> s = ReadRankStatuses(Path("own"));
  ASSERT_EQ(s->size(), 1u);
  EXPECT_EQ((*s)[0].rank, 2);
  EXPECT_EQ((*s)[0].host, "no2");
  EXPECT_EQ((*s)[0].pid, ::getpid());
  EXPECT_TRUE((*s)[0].ended.empty());
  RecordRankEnd("signal 15", "in Broadcast #2, running for 0.4 s, waiting for rank 0 (host no1)");
  RecordRankEnd("ok", "");  // the first end stays
  s = ReadRankStatuses(Path("own"));
  EXPECT_EQ((*s)[0].ended, "signal 15");
  EXPECT_THAT((*s)[0].missing, ElementsAre(0));
}

// OptionsForRestart on the inventory of the netns cluster's shape: no1, no2 (NO), se1, se2 (SE),
// one slot each. The job is acme's, allowed NO only unless a test widens it.
class RestartPlanTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    WriteText(Path("inv.textproto"),
              "node { hostname: \"no1\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n"
              "node { hostname: \"no2\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n"
              "node { hostname: \"se1\" jurisdiction: \"SE\" site: \"sto1\" slots: 1 }\n"
              "node { hostname: \"se2\" jurisdiction: \"SE\" site: \"sto1\" slots: 1 }\n");
  }
  LaunchOptions Job(const std::string& jurisdictions, int np, const std::string& train_extra = "") {
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 4 " +
                  train_extra + " }\ndata { train: \"" + Path("data/train_*.bin") + "\" }\nrun_dir: \"" +
                  Path("run") + "\"\ntenant { id: \"acme\" }\nresidency { " + jurisdictions + " }\n");
    LaunchOptions o;
    o.job_path = Path("job.textproto");
    o.inventory_path = Path("inv.textproto");
    o.np = np;
    o.max_restarts = 1;
    return o;
  }
  static std::vector<std::string> Hosts(const LaunchPlan& p) {
    std::vector<std::string> out;
    for (const PlacedNode& n : p.placement.nodes) out.push_back(n.node.hostname());
    return out;
  }
};

TEST_F(RestartPlanTest, TheFailedNodeIsExcludedAndTheJobKeepsItsRanksOnAnotherAllowedNode) {
  LaunchOptions o = Job("allowed_jurisdictions: \"NO\" allowed_jurisdictions: \"SE\"", 2);
  o.exclude.push_back({"no2", "failed"});
  LaunchPlan plan;
  StatusOr<LaunchOptions> next = OptionsForRestart(o, 4, &plan);
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_THAT(Hosts(plan), ElementsAre("no1", "se1"));
  EXPECT_EQ(next->np, 2);
  EXPECT_THAT(next->train_flags, ElementsAre("--resume"));
  EXPECT_EQ(plan.job.train().global_batch(), 4);
  EXPECT_EQ(plan.placement.excluded[0].hostname, "no2");
  EXPECT_EQ(plan.placement.excluded[0].reason, "failed");
  EXPECT_THAT(CommandLine(plan.argv), HasSubstr("-x FJORD_RANK_STATUS_DIR"));
}

TEST_F(RestartPlanTest, ARestartThatWouldNeedAHostOutsideTheResidencyIsRefused) {
  // NO only: with no2 failed, the only healthy nodes that could hold 2 ranks are in SE.
  LaunchOptions o = Job("allowed_jurisdictions: \"NO\"", 2);
  o.exclude.push_back({"no2", "failed in attempt 1"});
  LaunchPlan plan;
  StatusOr<LaunchOptions> next = OptionsForRestart(o, 4, &plan);
  ASSERT_FALSE(next.ok());
  const std::string& m = next.status().message();
  EXPECT_THAT(m, HasSubstr("no placement for the restart within the job's residency"));
  EXPECT_THAT(m, HasSubstr("se1"));
  EXPECT_THAT(m, HasSubstr("jurisdiction SE is not allowed (allowed: NO)"));
  EXPECT_THAT(m, HasSubstr("no2: failed in attempt 1"));
  EXPECT_THAT(m, HasSubstr("unless --min-nodes lets it shrink"));
  EXPECT_TRUE(plan.argv.empty());
}

TEST_F(RestartPlanTest, MinNodesLetsTheJobShrinkWithTheSameGlobalBatchButNotBelowM) {
  LaunchOptions o = Job("allowed_jurisdictions: \"NO\"", 2);
  o.exclude.push_back({"no2", "failed"});
  o.min_nodes = 1;
  LaunchPlan plan;
  StatusOr<LaunchOptions> next = OptionsForRestart(o, 4, &plan);
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_EQ(next->np, 1);
  EXPECT_THAT(Hosts(plan), ElementsAre("no1"));
  // grad_accum follows: 4 sequences = micro_batch 2 x 2 steps x 1 rank (the trainer's rule).
  EXPECT_EQ(plan.job.train().global_batch(), 4);
  EXPECT_EQ(plan.job.train().global_batch() / (plan.job.train().micro_batch() * next->np), 2);

  o.min_nodes = 2;
  StatusOr<LaunchOptions> refused = OptionsForRestart(o, 4, &plan);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(),
              HasSubstr("the healthy allowed nodes left hold the job on 1 node (no1 (1 rank)), fewer than "
                        "--min-nodes 2"));
}

TEST_F(RestartPlanTest, AGlobalBatchThatCannotBeKeptIsRefusedNamingTheNumbers) {
  // 3 ranks on no1, se1, se2 after no2 failed and 4 ranks did not fit: 6 sequences on 3 ranks would
  // need 2 per rank and step; micro_batch 4 cannot make it.
  LaunchOptions o = Job("allowed_jurisdictions: \"NO\" allowed_jurisdictions: \"SE\"", 4, "global_batch: 8");
  o.exclude.push_back({"no2", "failed"});
  o.min_nodes = 1;
  o.overrides = {"train.micro_batch=2"};
  LaunchPlan plan;
  StatusOr<LaunchOptions> next = OptionsForRestart(o, 8, &plan);
  ASSERT_FALSE(next.ok());
  EXPECT_THAT(next.status().message(),
              HasSubstr("the global batch of 8 sequences cannot be kept on 3 ranks (no1 (1 rank), se1 (1 "
                        "rank), se2 (1 rank)): it is not divisible by train.micro_batch 2 x 3 ranks = 6"));
}

}  // namespace
}  // namespace fjord
