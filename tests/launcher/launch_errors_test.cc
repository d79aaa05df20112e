// `fjord launch` error paths through the fjord binary: an inventory that does not admit the
// job's site, a malformed or empty Slurm allocation nodelist, sinfo that cannot run or answers
// nonsense or nothing, an mpirun that cannot be run, and an audit log that stops accepting
// records (a tampered log) at each point where launch records something. Stand-ins for mpirun,
// sbatch, sinfo and scontrol are shell scripts; nothing here needs Slurm or a network.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ReadText;
using testing::RunResult;
using testing::WriteText;

class LaunchErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = "/tmp/fjord_launch_errors_" + std::string(info->name()) + "_" + std::to_string(::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_ + "/leases");
    fs::create_directories(dir_ + "/bin");
    WriteInventory("");
    WriteJob("");
    // A stand-in for mpirun that records that it ran.
    WriteText(Path("fake-mpirun"), "#!/bin/sh\necho ran > " + Path("ran") + "\n", 0755);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  void WriteInventory(const std::string& extra) {
    WriteText(Path("inv.textproto"),
              "node { hostname: \"no1\" address: \"10.0.0.1\" jurisdiction: \"NO\" site: \"osl1\" }\n"
              "node { hostname: \"no2\" address: \"10.0.0.2\" jurisdiction: \"NO\" site: \"osl2\" }\n"
              "lease_dir: \"" +
                  Path("leases") + "\"\n" + extra);
  }
  void WriteJob(const std::string& residency_extra) {
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
              "data { train: \"" +
                  Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") +
                  "\"\ntenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" " +
                  residency_extra + "}\n");
  }
  // `env ENV fjord launch JOB --inventory INV --mpirun FAKE ARGS`.
  RunResult Launch(const std::string& args, const std::string& env = "") {
    return testing::Shell("env " + env + " " + std::string(FJORD_BINARY) + " launch " +
                          Path("job.textproto") + " --inventory " + Path("inv.textproto") + " --mpirun " +
                          Path("fake-mpirun") + " " + args);
  }
  std::string Audit() const { return ReadText(dir_ + "/run/audit.jsonl"); }
  std::vector<std::string> Events() const {
    std::vector<std::string> out;
    std::istringstream in(Audit());
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find("\"event\":\"");
      if (at == std::string::npos) continue;
      out.push_back(line.substr(at + 9, line.find('"', at + 9) - at - 9));
    }
    return out;
  }
  // A shell line that makes the audit log refuse further records, as tampering does: its last
  // line is no longer a record.
  std::string TamperLine() const { return "echo 'not a record' >> " + Path("run/audit.jsonl") + "\n"; }

  std::string dir_;
};

// ---- Placement and the Slurm allocation ------------------------------------------------------------

TEST_F(LaunchErrorsTest, JobSiteOutsideTheInventorysCeilingForTheTenantIsRefused) {
  WriteInventory("tenant { id: \"acme\" allowed_jurisdictions: \"NO\" allowed_sites: \"osl1\" }\n");
  WriteJob("allowed_sites: \"osl2\" ");
  const RunResult r = Launch("--np 1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: error: the job allows tenant acme site osl2, but inventory " +
                        Path("inv.textproto") + " admits it to sites osl1 only"));
  EXPECT_THAT(r.output, HasSubstr("narrow the job's residency.allowed_sites. Nothing was started"));
  EXPECT_FALSE(fs::exists(Path("ran")));
  EXPECT_FALSE(fs::exists(Path("run/launch")));
  EXPECT_THAT(Events(), ElementsAre("launch_refused"));
}

TEST_F(LaunchErrorsTest, MalformedSlurmNodelistIsRefusedNamingTheVariable) {
  struct Case {
    std::string nodelist, problem;
  };
  for (const Case& c : std::vector<Case>{
           {"no]1", "hostlist \"no]1\": unbalanced brackets"},
           {"no[[1]]", "hostlist \"no[[1]]\": unbalanced brackets"},
           {"no[5-3]", "hostlist \"no[5-3]\": range 5-3 is empty or too large"},
           {"no[1-200000]", "hostlist \"no[1-200000]\": range 1-200000 is empty or too large"},
       }) {
    fs::remove_all(Path("run"));
    const RunResult r =
        Launch("--np 1 --slurm --dry-run", "SLURM_JOB_ID=42 'SLURM_JOB_NODELIST=" + c.nodelist + "'");
    EXPECT_EQ(r.exit_code, 1) << c.nodelist << "\n" << r.output;
    EXPECT_THAT(r.output,
                HasSubstr("fjord launch: error: SLURM_JOB_NODELIST of Slurm allocation 42: " + c.problem))
        << c.nodelist;
    EXPECT_THAT(r.output, HasSubstr("unset SLURM_JOB_ID to submit a new job. Nothing was started"));
    EXPECT_FALSE(fs::exists(Path("run/launch")));
    EXPECT_TRUE(Events().empty());  // a dry run writes nothing, its refusal included
  }
}

TEST_F(LaunchErrorsTest, EmptySlurmNodelistInsideAnAllocationIsRefused) {
  const RunResult r = Launch("--np 1 --slurm --dry-run", "SLURM_JOB_ID=42 SLURM_JOB_NODELIST=");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("inside Slurm allocation 42 but SLURM_JOB_NODELIST is empty: cannot tell which "
                        "nodes the allocation holds"));
  EXPECT_FALSE(fs::exists(Path("run/launch")));
}

// ---- sinfo for a Slurm-only inventory ---------------------------------------------------------------

TEST_F(LaunchErrorsTest, SinfoThatCannotRunAnswersNonsenseOrListsNothingIsAnError) {
  WriteText(Path("inv.textproto"), "slurm { partition: \"gpu\" }\n");
  const std::string env = "-u SLURM_JOB_ID -u SLURM_CONF PATH=" + Path("bin");
  // No sinfo on PATH at all.
  RunResult r = Launch("--np 1 --slurm --dry-run", env);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("cannot list Slurm's nodes: `sinfo --noheader --Node '--format=%N|%f|%t' "
                        "--partition=gpu` exited with 127: cannot run sinfo: No such file or directory"));
  EXPECT_THAT(r.output, HasSubstr("Check that Slurm's commands are installed"));

  WriteText(Path("bin/sinfo"), "#!/bin/sh\necho 'no1 idle'\n", 0755);
  r = Launch("--np 1 --slurm --dry-run", env);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--partition=gpu`: sinfo line 1 \"no1 idle\" is not NAME|FEATURES|STATE"));

  WriteText(Path("bin/sinfo"), "#!/bin/sh\nexit 0\n", 0755);
  r = Launch("--np 1 --slurm --dry-run", env);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--partition=gpu` lists no nodes in partition gpu: check the inventory's "
                                  "slurm.partition"));
  EXPECT_FALSE(fs::exists(Path("run/launch")));
  EXPECT_TRUE(Events().empty());  // dry runs: nothing written, their refusals included
}

// ---- mpirun -------------------------------------------------------------------------------------------

TEST_F(LaunchErrorsTest, MpirunThatCannotRunIsNamedWithTheFlagToFixIt) {
  const std::string missing = Path("no-such-mpirun");
  const RunResult r = testing::Shell(std::string(FJORD_BINARY) + " launch " + Path("job.textproto") +
                                     " --inventory " + Path("inv.textproto") + " --np 1 --mpirun " + missing);
  EXPECT_EQ(r.exit_code, 127) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: cannot run " + missing +
                                  ": No such file or directory; install it or pass --mpirun PATH"));
  EXPECT_THAT(r.output, HasSubstr("job exited with 127"));
  // The leases are given back and the exit is recorded.
  EXPECT_EQ(ReadText(Path("leases/no1.lease")), "");
  EXPECT_THAT(Events(), ElementsAre("lease_acquired", "launch_plan", "lease_released", "launch_exit"));
  EXPECT_THAT(Audit(), HasSubstr("\"exit_code\":127"));
}

// ---- An audit log that stops accepting records -------------------------------------------------------

TEST_F(LaunchErrorsTest, RefusalThatCannotBeAuditedIsStillRefusedWithAWarning) {
  // A first refused launch creates the log; then it is tampered with.
  RunResult r = Launch("--np 9");
  ASSERT_EQ(r.exit_code, 1) << r.output;
  ASSERT_EQ(testing::Shell(TamperLine()).exit_code, 0);
  const std::string before = Audit();
  r = Launch("--np 9");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: warning: the refusal could not be recorded in the audit log: "
                        "audit log " +
                        Path("run/audit.jsonl") + ": its last record is unreadable"));
  EXPECT_THAT(r.output, HasSubstr("run `fjord audit verify " + Path("run/audit.jsonl") + "`"));
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: "));
  EXPECT_THAT(r.output, HasSubstr("needs 9 ranks"));
  EXPECT_EQ(Audit(), before);  // nothing appended after the tampered line
}

TEST_F(LaunchErrorsTest, ExitThatCannotBeAuditedIsWarnedAboutAndLeasesAreStillReleased) {
  WriteText(Path("fake-mpirun"), "#!/bin/sh\n" + TamperLine(), 0755);
  const RunResult r = Launch("--np 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;  // the job's own exit code
  EXPECT_THAT(r.output, HasSubstr("fjord launch: warning: cannot record in the audit log: audit log " +
                                  Path("run/audit.jsonl") + ": its last record is unreadable"));
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: warning: cannot record the exit in the audit log: audit log " +
                        Path("run/audit.jsonl") + ": its last record is unreadable"));
  EXPECT_THAT(r.output, HasSubstr("keep the file for the auditor"));
  EXPECT_THAT(r.output, Not(HasSubstr("job exited with")));
  EXPECT_EQ(ReadText(Path("leases/no1.lease")), "");  // released all the same
  EXPECT_EQ(ReadText(Path("leases/no2.lease")), "");
  EXPECT_THAT(Events(), ElementsAre("lease_acquired", "launch_plan"));
}

TEST_F(LaunchErrorsTest, SlurmSubmissionAndExitThatCannotBeAuditedAreWarnedAbout) {
  // sbatch accepts the job (id 4242) after the log was tampered with; scontrol says it completed.
  WriteText(Path("fake-sbatch"), "#!/bin/sh\n" + TamperLine() + "echo 4242\n", 0755);
  WriteText(Path("bin/scontrol"),
            "#!/bin/sh\necho 'JobId=4242 JobState=COMPLETED Reason=None ExitCode=0:0 NodeList=no[1-2]'\n",
            0755);
  const std::string env = "-u SLURM_JOB_ID PATH=" + Path("bin") + ":$PATH";
  RunResult r = Launch("--np 2 --slurm --wait --sbatch " + Path("fake-sbatch"), env);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: submitted Slurm job 4242"));
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: warning: cannot record the submission in the audit log: audit "
                        "log " +
                        Path("run/audit.jsonl") + ": its last record is unreadable"));
  EXPECT_THAT(r.output, HasSubstr("Slurm job 4242 COMPLETED on no[1-2] with exit code 0"));
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: warning: cannot record the exit in the audit log: audit log " +
                        Path("run/audit.jsonl")));
  EXPECT_THAT(r.output, Not(HasSubstr("head ")));

  // The same when following the job fails: the error, then the warning.
  fs::remove_all(Path("run"));
  WriteText(Path("bin/scontrol"),
            "#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n", 0755);
  r = Launch("--np 2 --slurm --wait --sbatch " + Path("fake-sbatch"), env);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord launch: error: Slurm job 4242 is no longer known to slurmctld"));
  EXPECT_THAT(r.output,
              HasSubstr("fjord launch: warning: cannot record the exit in the audit log: audit log " +
                        Path("run/audit.jsonl") + ": its last record is unreadable"));
  EXPECT_THAT(Events(), ElementsAre("launch_plan"));
}

}  // namespace
}  // namespace fjord
