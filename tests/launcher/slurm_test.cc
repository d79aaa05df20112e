// `fjord launch --slurm` against a real Slurm (scripts/slurm-cluster.sh: slurmctld and four slurmd
// on this machine; n1, n2 carry feature jurisdiction_NO, n3, n4 jurisdiction_SE and are what Slurm
// fills first when nothing constrains a job, by their lower Weight). Where the job ran
// is read back from Slurm itself (scontrol) and from the ranks' own audit records, never from what
// launch printed.
//
// All fake nodes share this machine's hostname and /etc, so each node's identity is a file of its
// own, ids/NODE.textproto, chosen by FJORD_NODE_IDENTITY=ids/%n.textproto (%n = SLURMD_NODENAME,
// the slurmd that started the rank; a test override the audit log records).
//
// Under CTest the cluster is a fixture (slurm.up / slurm.down) in FJORD_SLURM_STATE; run by hand, this
// binary brings up a cluster of its own and removes it at the end. Where the daemons cannot start
// (no root, Slurm or munge missing) every test skips with the reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "launcher/launch.h"
#include "runtime/tenancy/audit.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::AuditEvents;
using testing::AuditLines;
using testing::Count;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

const std::string kScript = std::string(FJORD_SOURCE_DIR) + "/scripts/slurm-cluster.sh";

// The cluster every test uses: from the CTest fixture, or made here.
testing::ScriptCluster* const kCluster =
    new testing::ScriptCluster(kScript, "FJORD_SLURM_STATE", "fjord-slurm", "slurm.up");
::testing::Environment* const kRegistered = ::testing::AddGlobalTestEnvironment(kCluster);

class SlurmTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    if (!kCluster->skip().empty())
      GTEST_SKIP() << "Slurm test cluster unavailable, test skipped: " << kCluster->skip();
    TenancyTest::SetUp();
    ::chmod(dir_.c_str(), 0755);
    fs::create_directories(Path("ids"));
    for (const char* n : {"n1", "n2"}) Identity("NO", "osl1", std::string("ids/") + n);
    for (const char* n : {"n3", "n4"}) Identity("SE", "sto1", std::string("ids/") + n);
    WriteText(Path("inv.textproto"), "slurm { }\n");
  }
  // CMD with this cluster's Slurm and the Open MPI settings for fake nodes sharing one hostname.
  RunResult Run(const std::string& cmd) { return Shell(Env() + cmd); }
  std::string Env() {
    return "env -u SLURM_JOB_ID -u SLURM_JOB_NODELIST SLURM_CONF=" + kCluster->state() +
           "/slurm.conf OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo "
           "OMP_NUM_THREADS=1 FJORD_NODE_IDENTITY=" +
           Path("ids/%n.textproto") + " ";
  }
  std::string LaunchCommand(const std::string& args) {
    return std::string(FJORD_BINARY) + " launch " + Path("job.textproto") + " --inventory " +
           Path("inv.textproto") + " --slurm " + args;
  }
  RunResult Launch(const std::string& args) { return Run(LaunchCommand(args)); }
  // Tokenized data of tenant acme, allowed in NO, prepared "on n1" (prep checks the node too).
  void PrepAcme() {
    std::string text;
    for (int i = 0; i < 600; ++i)
      text += "the fjord keeps its data at home, line " + std::to_string(i) + "\n";
    WriteText(Path("input.txt"), text);
    RunResult r =
        Shell("FJORD_NODE_IDENTITY=" + Path("ids/n1.textproto") + " " + FJORD_BINARY + " prep --input " +
              Path("input.txt") + " --out " + Path("data") + " --tenant acme --jurisdiction NO");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  void WriteJob(const std::string& name, const std::string& run_dir, const std::string& data = "data") {
    WriteText(Path(name),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 4 lr: 1e-3 log_every: 1 }\n"
              "data { train: \"" +
                  Path(data + "/train_*.bin") + "\" }\nrun_dir: \"" + Path(run_dir) +
                  "\"\ntenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
  }
  static std::string JobIdOf(const std::string& output) {
    std::smatch m;
    return std::regex_search(output, m, std::regex("submitted Slurm job ([0-9]+)")) ? m[1].str() : "";
  }
  // KEY=VALUE of `scontrol show job ID`: Slurm's own record of the job.
  std::string JobField(const std::string& id, const std::string& key) {
    const std::string rec = Run("scontrol --oneliner show job " + id).output;
    std::smatch m;
    return std::regex_search(rec, m, std::regex("(^| )" + key + "=([^ \n]*)")) ? m[2].str()
                                                                               : "<no " + key + ">";
  }
  std::string NextJobId() {
    std::smatch m;
    const std::string conf = Run("scontrol show config").output;
    return std::regex_search(conf, m, std::regex("NEXT_JOB_ID\\s*=\\s*([0-9]+)")) ? m[1].str() : "<unknown>";
  }
  // "rank:identity file:jurisdiction" of each rank_identity record of an audit log.
  static std::set<std::string> RankIdentities(const std::string& log) {
    std::set<std::string> out;
    for (const std::string& line : AuditLines(log, "rank_identity")) {
      std::smatch r, f, j;
      std::regex_search(line, r, std::regex("\"rank\":([0-9]+)"));
      std::regex_search(line, f, std::regex("\"identity_file\":\"([^\"]*)\""));
      std::regex_search(line, j, std::regex("\"jurisdiction\":\"([^\"]*)\""));
      out.insert(r[1].str() + ":" + fs::path(f[1].str()).filename().string() + ":" + j[1].str());
    }
    return out;
  }
};

TEST_F(SlurmTest, NoOnlyJobLandsOnNoNodesAndTrains) {
  PrepAcme();
  WriteJob("job.textproto", "run");
  RunResult r = Launch("--np 2 --wait");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string id = JobIdOf(r.output);
  ASSERT_FALSE(id.empty()) << r.output;
  // Slurm's record: the NO nodes, whole (--exclusive), under the residency's constraint.
  StatusOr<std::vector<std::string>> nodes = ExpandSlurmHostlist(JobField(id, "NodeList"));
  ASSERT_TRUE(nodes.ok());
  EXPECT_EQ(std::set<std::string>(nodes->begin(), nodes->end()), (std::set<std::string>{"n1", "n2"}));
  EXPECT_EQ(JobField(id, "JobState"), "COMPLETED");
  EXPECT_EQ(JobField(id, "Features"), "jurisdiction_NO");
  EXPECT_EQ(JobField(id, "OverSubscribe"), "NO");
  // The ranks' own records: each read the identity of the Slurm node it ran on.
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(RankIdentities(log), (std::set<std::string>{"0:n1.textproto:NO", "1:n2.textproto:NO"}));
  const std::vector<std::string> events = AuditEvents(log);
  EXPECT_EQ(events.front(), "launch_plan");
  EXPECT_EQ(events[1], "slurm_submitted");
  EXPECT_EQ(events.back(), "launch_exit");
  EXPECT_EQ(Count(events, "refusal"), 0);
  EXPECT_EQ(Count(events, "checkpoint_written"), 1);
  EXPECT_THAT(AuditLines(log, "slurm_submitted")[0],
              HasSubstr("\"slurm_job_id\":\"" + id + "\",\"slurm_constraint\":\"jurisdiction_NO\""));
  EXPECT_THAT(AuditLines(log, "launch_exit")[0],
              HasSubstr("\"slurm_state\":\"COMPLETED\",\"slurm_nodes\":[\"n1\",\"n2\"],\"exit_code\":0"));
  EXPECT_THAT(AuditLines(log, "job_start")[0], HasSubstr("\"launch_id\":\"slurm-" + id + "\""));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
  // It trained exactly what the same job trains under mpirun on this machine (bit-identical losses).
  WriteJob("job-mpirun.textproto", "run-mpirun");
  RunResult m =
      Shell(testing::Mpirun(2, "OMP_NUM_THREADS=1 FJORD_NODE_IDENTITY=" + Path("ids/n1.textproto")) +
            " train " + Path("job-mpirun.textproto"));
  ASSERT_EQ(m.exit_code, 0) << m.output;
  const std::vector<std::string> losses = testing::LossTexts(Path("run/metrics.jsonl"));
  EXPECT_EQ(losses.size(), 4u);
  EXPECT_EQ(losses, testing::LossTexts(Path("run-mpirun/metrics.jsonl")));
}

TEST_F(SlurmTest, MoreNoNodesThanExistIsRefusedBeforeSubmission) {
  WriteJob("job.textproto", "run");
  const std::string next = NextJobId();
  RunResult r = Launch("--np 3 --wait");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: error: tenant acme needs 3 ranks on nodes inside its residency "
                        "(jurisdictions NO; sites: any), but inventory " +
                        Path("inv.textproto") + " (nodes from Slurm: sinfo"));
  EXPECT_THAT(
      r.output,
      HasSubstr("has 2 allowed nodes with 2 slots in all: n1 (NO/osl1, 1 slot), n2 (NO/osl1, 1 slot)"));
  EXPECT_THAT(r.output, HasSubstr("n3: jurisdiction SE is not allowed (allowed: NO)"));
  EXPECT_THAT(r.output, Not(HasSubstr("submitted")));
  EXPECT_EQ(NextJobId(), next);  // nothing reached slurmctld
  EXPECT_FALSE(fs::exists(Path("run/launch")));
  EXPECT_EQ(AuditEvents(Path("run/audit.jsonl")), std::vector<std::string>{"launch_refused"});
  // Slurm alone would have refused it too, with its own words.
  RunResult s =
      Run("sbatch --constraint=jurisdiction_NO --nodes=3 --exclusive --output=/dev/null --wrap true");
  EXPECT_NE(s.exit_code, 0) << s.output;
  EXPECT_THAT(s.output, HasSubstr("Requested node configuration is not available"));
}

TEST_F(SlurmTest, RankStartedByHandOnAnSeNodeHitsTheRankGate) {
  PrepAcme();
  WriteJob("job.textproto", "run");
  fs::create_directories(Path("run"));
  RunResult r = Run("srun --nodelist=n3 --nodes=1 --ntasks=1 --mpi=pmix " + std::string(FJORD_BINARY) +
                    " train " + Path("job.textproto"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("(Slurm node n3): residency gate: this node is in jurisdiction SE, site sto1 "
                        "(node identity " +
                        Path("ids/n3.textproto")));
  EXPECT_THAT(r.output, HasSubstr("n3: task 0: Exited with exit code 1"));  // srun's own account of where
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditEvents(log), std::vector<std::string>{"refusal"});
  EXPECT_THAT(AuditLines(log, "refusal")[0], HasSubstr("\"slurm_node\":\"n3\""));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
}

TEST_F(SlurmTest, TenantPartitionReplacesExclusive) {
  PrepAcme();
  WriteJob("job.textproto", "run");
  WriteText(Path("inv.textproto"), "slurm { tenant { id: \"acme\" partition: \"acme\" } }\n");
  RunResult r = Launch("--np 2 --wait --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string id = JobIdOf(r.output);
  EXPECT_EQ(JobField(id, "Partition"), "acme");
  EXPECT_NE(JobField(id, "OverSubscribe"), "NO");
  EXPECT_THAT(AuditLines(Path("run/audit.jsonl"), "slurm_submitted")[0],
              HasSubstr("\"slurm_partition\":\"acme\",\"slurm_account\":\"\",\"slurm_exclusive\":false"));
}

TEST_F(SlurmTest, WaitReturnsTheJobsExitCode) {
  PrepAcme();
  WriteJob("job.textproto", "run", "no-such-data");
  // The oracle: what `fjord train` exits with for this job when run directly on a NO node.
  RunResult direct = Shell("FJORD_NODE_IDENTITY=" + Path("ids/n1.textproto") + " " + FJORD_BINARY +
                           " train " + Path("job.textproto"));
  ASSERT_NE(direct.exit_code, 0) << direct.output;
  RunResult r = Launch("--np 2 --wait");
  EXPECT_EQ(r.exit_code, direct.exit_code) << r.output;
  const std::string id = JobIdOf(r.output);
  EXPECT_EQ(JobField(id, "JobState"), "FAILED");
  EXPECT_THAT(AuditLines(Path("run/audit.jsonl"), "launch_exit")[0],
              HasSubstr("\"slurm_state\":\"FAILED\",\"slurm_nodes\":[\"n1\",\"n2\"],\"exit_code\":" +
                        std::to_string(direct.exit_code)));
}

// SIGTERM to `fjord launch --wait` while the job runs: the job is asked to stop as mpirun's is
// (scancel --signal=USR1 reaches every task, each finishes its step, rank 0 checkpoints), the job
// COMPLETES with exit 0, and launch records what it asked for. A second SIGTERM cancels the job
// outright (rank 0 sleeps 30 s inside step 3 by a test hook, so the clean stop cannot finish
// first). Oracles: Slurm's own job record, the checkpoint on disk, the ranks' messages.
TEST_F(SlurmTest, SignalToWaitingLaunchStopsOrCancelsTheJob) {
  PrepAcme();
  for (const bool twice : {false, true}) {
    SCOPED_TRACE(twice ? "two signals" : "one signal");
    const std::string run = twice ? "run2" : "run1";
    WriteJob("job.textproto", run);
    std::string spec = ReadText(Path("job.textproto"));
    spec.replace(spec.find("steps: 4"), 8, "steps: 100000");
    WriteText(Path("job.textproto"), spec + "checkpoint { every_steps: 0 }\n");
    const std::string hook = twice ? "FJORD_TEST_HOOK=sleep_in_step=0:3:30 " : "";
    FILE* pipe = testing::Start("exec " + Env() + hook + LaunchCommand("--np 2 --wait"));
    ASSERT_NE(pipe, nullptr);
    const std::string metrics = Path(run + "/metrics.jsonl");
    for (int i = 0; i < 600 && testing::LossTexts(metrics).size() < 2; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::string kill = "pkill -TERM -f '[f]jord launch " + Path("job.textproto") + "'";
    Shell(twice ? kill + "; sleep 1; " + kill : kill);
    const RunResult r = testing::Finish(pipe);
    const std::string id = JobIdOf(r.output);
    ASSERT_FALSE(id.empty()) << r.output;
    const std::string log = Path(run + "/audit.jsonl");
    if (!twice) {
      EXPECT_EQ(r.exit_code, 0) << r.output;
      EXPECT_THAT(r.output, HasSubstr("asking Slurm job " + id + " to stop"));
      EXPECT_EQ(JobField(id, "JobState"), "COMPLETED");
      const size_t steps = testing::LossTexts(metrics).size();
      char name[32];
      std::snprintf(name, sizeof(name), "/checkpoints/step_%06zu", steps);
      EXPECT_TRUE(fs::exists(Path(run + name))) << r.output;
      EXPECT_LT(steps, 100000u);
      EXPECT_THAT(AuditLines(log, "launch_exit")[0],
                  HasSubstr("\"slurm_state\":\"COMPLETED\",\"slurm_nodes\":[\"n1\",\"n2\"],\"exit_code\":0,"
                            "\"stop_requested\":\"scancel --signal=USR1 (checkpoint and stop)\""));
    } else {
      EXPECT_NE(r.exit_code, 0) << r.output;
      EXPECT_THAT(r.output, HasSubstr("cancelling Slurm job " + id));
      EXPECT_EQ(JobField(id, "JobState"), "CANCELLED");
      EXPECT_FALSE(fs::exists(Path(run + "/checkpoints"))) << r.output;
      EXPECT_THAT(AuditLines(log, "launch_exit")[0], HasSubstr("\"slurm_state\":\"CANCELLED\""));
      EXPECT_THAT(AuditLines(log, "launch_exit")[0], HasSubstr("\"stop_requested\":\"scancel (cancel)\""));
    }
    EXPECT_TRUE(VerifyAuditLog(log)->ok);
  }
}

// When scancel itself fails, launch says so (the command, its exit status and its words) and keeps
// following the job, so its end is still recorded. A fake scancel first on PATH fails and leaves a
// mark; the real one then cancels the job.
TEST_F(SlurmTest, FailingScancelIsReportedAndLaunchKeepsFollowing) {
  PrepAcme();
  WriteJob("job.textproto", "run3");
  std::string spec = ReadText(Path("job.textproto"));
  spec.replace(spec.find("steps: 4"), 8, "steps: 100000");
  WriteText(Path("job.textproto"), spec + "checkpoint { every_steps: 0 }\n");
  fs::create_directories(Path("fakebin"));
  WriteText(Path("fakebin/scancel"), "#!/bin/sh\necho \"$@\" >>" + Path("scancel_calls") +
                                         "\necho \"scancel: error: fake failure\" >&2\nexit 3\n");
  ::chmod(Path("fakebin/scancel").c_str(), 0755);
  FILE* pipe =
      testing::Start("exec env PATH=" + Path("fakebin") + ":$PATH " + Env() + LaunchCommand("--np 2 --wait"));
  ASSERT_NE(pipe, nullptr);
  const std::string metrics = Path("run3/metrics.jsonl");
  for (int i = 0; i < 600 && testing::LossTexts(metrics).size() < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Shell("pkill -TERM -f '[f]jord launch " + Path("job.textproto") + "'");
  for (int i = 0; i < 300 && !fs::exists(Path("scancel_calls")); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string log = Path("run3/audit.jsonl");
  std::smatch m;
  const std::string submitted =
      AuditLines(log, "slurm_submitted").empty() ? "" : AuditLines(log, "slurm_submitted")[0];
  const bool found = std::regex_search(submitted, m, std::regex("\"slurm_job_id\":\"([0-9]+)\""));
  const std::string id = found ? m[1].str() : "";
  if (!id.empty()) Run("scancel " + id);  // the real one, so the job ends whatever happened above
  const RunResult r = testing::Finish(pipe);
  ASSERT_FALSE(id.empty()) << submitted << "\n" << r.output;
  EXPECT_EQ(ReadText(Path("scancel_calls")), "--signal=USR1 " + id + "\n");
  EXPECT_THAT(r.output, HasSubstr("fjord launch: warning: `scancel --signal=USR1 " + id +
                                  "` exited with 3: scancel: error: fake failure"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(JobField(id, "JobState"), "CANCELLED");
  EXPECT_THAT(AuditLines(log, "launch_exit")[0], HasSubstr("\"slurm_state\":\"CANCELLED\""));
  EXPECT_THAT(AuditLines(log, "launch_exit")[0],
              HasSubstr("\"stop_requested\":\"scancel --signal=USR1 (checkpoint and stop)\""));
  EXPECT_TRUE(VerifyAuditLog(log)->ok);
}

// ---- --max-restarts under Slurm: the failed node excluded, the job resubmitted -----------------

class SlurmRestartTest : public SlurmTest {
 protected:
  // acme's job of `np` ranks (micro_batch 2, global batch 2 x np), a checkpoint every 20 steps, all
  // kept, allowed in NO.
  // Long enough that a kill after the checkpoint of step 40 lands mid-training on an idle machine
  // (300 steps once ended before the kill in the netns twin of these tests).
  static constexpr int kSteps = 1200;
  void WriteLongJob(int np, int steps = kSteps) {
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
              "train { micro_batch: 2 global_batch: " +
                  std::to_string(2 * np) + " steps: " + std::to_string(steps) +
                  " lr: 1e-3 log_every: 1 }\n"
                  "checkpoint { every_steps: 20 keep_last: 0 }\ndata { train: \"" +
                  Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") +
                  "\"\ntenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n");
  }
  // Starts `launch --slurm --wait FLAGS`, waits for the checkpoint of step 40, SIGKILLs rank 0 (its
  // pid from its own start record) and returns launch's result; *node: the Slurm node it ran on.
  RunResult LaunchAndKillRank0(const std::string& flags, std::string* node) {
    FILE* pipe = testing::Start(Env() + LaunchCommand("--wait " + flags));
    EXPECT_NE(pipe, nullptr);
    for (int i = 0; i < 600 && !fs::exists(Path("run/checkpoints/step_000040")); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string record;
    for (const auto& dir : fs::directory_iterator(Path("run/launch")))
      if (dir.path().filename().string().starts_with("ranks-"))
        record = ReadText(dir.path().string() + "/rank-0");
    std::smatch pid, host;
    EXPECT_TRUE(std::regex_search(record, pid, std::regex("\npid ([0-9]+)\n"))) << record;
    EXPECT_TRUE(std::regex_search(record, host, std::regex("\nhost ([^\n]+)\n"))) << record;
    *node = host[1].str();
    EXPECT_EQ(Shell("kill -9 " + pid[1].str()).exit_code, 0);
    const auto killed = std::chrono::steady_clock::now();
    // Line by line, to time the restart: kill -> the second job submitted, and running (its first
    // rank record).
    RunResult done;
    char line[4096];
    int submitted = 0;
    while (std::fgets(line, sizeof(line), pipe) != nullptr) {
      done.output += line;
      if (std::string(line).find("fjord launch: submitted Slurm job") != std::string::npos &&
          ++submitted == 2) {
        std::printf("[ measured ] kill -9 -> second Slurm job submitted %.2f s\n",
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count());
      }
    }
    done.wait_status = pclose(pipe);
    done.exit_code = WIFEXITED(done.wait_status) ? WEXITSTATUS(done.wait_status) : 128;
    return done;
  }
};

// acme (NO only), 1 rank: rank 0 killed on its node; launch names that node from the rank's own
// record, excludes it (sbatch --exclude), resubmits with --resume and the same global batch, and the
// job completes on the other NO node. Oracles: Slurm's records of both jobs, and the losses after the
// restart equal (1e-6) the same checkpoint resumed by hand on the other node.
TEST_F(SlurmRestartTest, AKilledRanksNodeIsExcludedAndTheJobIsResubmittedAndCompletes) {
  PrepAcme();
  WriteLongJob(1);
  std::string killed_on;
  const RunResult r = LaunchAndKillRank0("--np 1 --max-restarts 1", &killed_on);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(killed_on == "n1" || killed_on == "n2") << killed_on;
  const std::string other = killed_on == "n1" ? "n2" : "n1";
  EXPECT_THAT(r.output, HasSubstr("rank 0 (" + killed_on + "): no end recorded")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: excluding node " + killed_on + " for this job")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("restart 1 of 1 on 1 node: " + other + " (1 rank), global batch 2"))
      << r.output;
  // Slurm's own records: two jobs, the first FAILED on the killed node, the second COMPLETED on the
  // other with that node excluded.
  std::smatch m;
  std::vector<std::string> ids;
  for (std::string out = r.output; std::regex_search(out, m, std::regex("submitted Slurm job ([0-9]+)"));
       out = m.suffix())
    ids.push_back(m[1].str());
  ASSERT_EQ(ids.size(), 2u) << r.output;
  EXPECT_EQ(JobField(ids[0], "NodeList"), killed_on);
  EXPECT_NE(JobField(ids[0], "JobState"), "COMPLETED");
  EXPECT_EQ(JobField(ids[1], "JobState"), "COMPLETED");
  EXPECT_EQ(JobField(ids[1], "NodeList"), other);
  EXPECT_EQ(JobField(ids[1], "ExcNodeList"), killed_on);
  EXPECT_EQ(JobField(ids[1], "Features"), "jurisdiction_NO");
  const std::string log = Path("run/audit.jsonl");
  const std::vector<std::string> restart = AuditLines(log, "job_restart");
  ASSERT_EQ(restart.size(), 1u);
  EXPECT_THAT(restart[0], HasSubstr("\"launch_id\":\"slurm-" + ids[0] + "\""));
  EXPECT_THAT(restart[0], HasSubstr("\"excluded\":[{\"hostname\":\"" + killed_on + "\""));
  EXPECT_THAT(restart[0], HasSubstr("\"global_batch\":2"));
  EXPECT_EQ(AuditLines(log, "job_end").size(), 2u) << "one per job, the killed one's by launch";
  EXPECT_TRUE(VerifyAuditLog(log)->ok);

  // The oracle: the checkpoint the restart resumed, resumed by hand on the other node.
  int from = -1;
  bool restarted = false;
  {
    std::istringstream in(ReadText(log));
    for (std::string line; std::getline(in, line);) {
      if (line.find("\"event\":\"job_restart\"") != std::string::npos) restarted = true;
      const size_t at = line.find("\"step\":");
      if (restarted && from < 0 && line.find("\"event\":\"checkpoint_opened\"") != std::string::npos &&
          at != std::string::npos)
        from = std::atoi(line.c_str() + at + 7);
    }
  }
  ASSERT_GE(from, 40);
  const std::vector<std::string> after = testing::LossTexts(Path("run/metrics.jsonl"));
  ASSERT_EQ(after.size(), static_cast<size_t>(kSteps));
  for (const auto& e : fs::directory_iterator(Path("run/checkpoints"))) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("step_") && std::atoi(name.c_str() + 5) > from) fs::remove_all(e.path());
  }
  const RunResult oracle =
      Shell("OMP_NUM_THREADS=1 FJORD_NODE_IDENTITY=" + Path("ids/" + other + ".textproto") + " " +
            FJORD_BINARY + " train " + Path("run/launch/job.textproto") + " --quiet --resume");
  ASSERT_EQ(oracle.exit_code, 0) << oracle.output;
  const std::vector<std::string> opened = AuditLines(log, "checkpoint_opened");
  EXPECT_THAT(opened.back(), HasSubstr("\"step\":" + std::to_string(from)));
  const std::vector<std::string> expected = testing::LossTexts(Path("run/metrics.jsonl"));
  ASSERT_EQ(expected.size(), static_cast<size_t>(kSteps));
  for (int step = from; step < kSteps; ++step)
    EXPECT_NEAR(std::atof(after[step].c_str()), std::atof(expected[step].c_str()), 1e-6) << step + 1;
}

// acme (NO only) on both NO nodes, one killed: only SE nodes are left, so the restart is refused with
// the reason and audited, and nothing more reaches Slurm.
TEST_F(SlurmRestartTest, ARestartThatWouldNeedANodeOutsideTheResidencyIsRefused) {
  PrepAcme();
  WriteLongJob(2);
  std::string killed_on;
  const RunResult r = LaunchAndKillRank0("--np 2 --max-restarts 1", &killed_on);
  EXPECT_NE(r.exit_code, 0) << r.output;
  const std::string id = JobIdOf(r.output);
  ASSERT_FALSE(id.empty()) << r.output;
  EXPECT_EQ(NextJobId(), std::to_string(std::stoi(id) + 1)) << "a second job reached Slurm";
  EXPECT_THAT(r.output, HasSubstr("fjord launch: excluding node " + killed_on + " for this job")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("restart 1 of 1 refused: no placement for the restart within the job's "
                                  "residency on the nodes left"))
      << r.output;
  EXPECT_THAT(r.output, HasSubstr("n3: jurisdiction SE is not allowed (allowed: NO)")) << r.output;
  const std::string log = Path("run/audit.jsonl");
  ASSERT_EQ(AuditLines(log, "restart_refused").size(), 1u);
  EXPECT_THAT(AuditLines(log, "restart_refused")[0], HasSubstr("\"hostname\":\"" + killed_on + "\""));
  EXPECT_EQ(Count(AuditEvents(log), "slurm_submitted"), 1);
  EXPECT_EQ(Count(AuditEvents(log), "job_start"), 1);
  for (const std::string& id : RankIdentities(log)) EXPECT_THAT(id, HasSubstr(":NO")) << id;
}

// A job cancelled by its user (scancel from outside launch) is not a failure: no restart, nothing
// more submitted, even with restarts left (engineer SLURM's test, ported to main's fixture).
TEST_F(SlurmRestartTest, CancelledJobIsNotRestarted) {
  PrepAcme();
  WriteLongJob(1, 100000);
  FILE* pipe = testing::Start("exec " + Env() + LaunchCommand("--np 1 --wait --quiet --max-restarts 2"));
  ASSERT_NE(pipe, nullptr);
  for (int i = 0; i < 600 && testing::LossTexts(Path("run/metrics.jsonl")).size() < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // The Slurm job ids launch submitted, from its audit records.
  const auto submitted = [&] {
    std::vector<std::string> ids;
    std::smatch m;
    for (const std::string& line : AuditLines(Path("run/audit.jsonl"), "slurm_submitted"))
      if (std::regex_search(line, m, std::regex("\"slurm_job_id\":\"([0-9]+)\""))) ids.push_back(m[1].str());
    return ids;
  };
  const std::vector<std::string> first = submitted();
  ASSERT_EQ(first.size(), 1u);
  const std::string id = first[0];
  Run("scancel " + id);
  for (int i = 0; i < 100 && JobField(id, "JobState") != "CANCELLED"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Were a replacement submitted (the bug this test is for), cancel it too, so launch ends.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (const std::string& other : submitted())
    if (other != id) Run("scancel " + other);
  const RunResult r = testing::Finish(pipe);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(JobField(id, "JobState"), "CANCELLED");
  const std::string log = Path("run/audit.jsonl");
  EXPECT_EQ(AuditLines(log, "slurm_submitted").size(), 1u) << r.output;
  EXPECT_TRUE(AuditLines(log, "job_restart").empty()) << r.output;
  EXPECT_TRUE(AuditLines(log, "restart_refused").empty()) << r.output;
  EXPECT_EQ(NextJobId(), std::to_string(std::stoll(id) + 1));
}

}  // namespace
}  // namespace fjord
