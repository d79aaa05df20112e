// fjord launch's supervision of its child (launcher/launch/supervise.h) with stand-in children (sh):
// a failure line on the child's stderr starts the grace period, after which the child's whole process
// group is ended, even a member that ignores SIGTERM; a child that ends by itself is left alone.
// The multi-host case (a cut-off host, real mpirun) is tenancy_netns_fault_test.
#include "launcher/launch/supervise.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "launcher/launch/run.h"

namespace fjord {
namespace {

using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

TEST(FailureCauseTest, NamesTheRankTheHostAndWhatHappened) {
  EXPECT_EQ(
      FailureCause("fjord: rank 0 (host no1) aborts the job: fjord train: error on rank 0: fjord: "
                   "collective AllReduce #9 (4 bytes) timed out after 5.0 s on rank 0 (host no1): "
                   "ranks not answering within 4.0 s: 1 (host no2)"),
      "rank 0 on host no1 ended the job: collective AllReduce #9 (4 bytes) timed out after 5.0 s on rank 0 "
      "(host no1): ranks not answering within 4.0 s: 1 (host no2)");
  EXPECT_EQ(
      FailureCause("mpirun noticed that process rank 1 with PID 0 on node no2 exited on signal 9 (Killed)."),
      "rank 1 on host no2 killed by signal 9 (Killed)");
  EXPECT_EQ(FailureCause("MPI_ABORT was invoked on rank 3 in communicator MPI_COMM_WORLD"),
            "rank 3 called MPI_Abort");
  EXPECT_EQ(FailureCause("fjord train: step 10 loss 5.1"), "");
  EXPECT_EQ(
      FailureCause("fjord: collective AllReduce #9 is late on rank 0 (host a) after 5.0 s, but every rank "
                   "arrived (the network may be recovering): waiting 5.0 s more"),
      "")
      << "a late collective is not a failure";
}

bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_text, comm, state;
  return stat >> pid_text >> comm >> state && state != "Z";
}

class SuperviseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("fjord_supervise_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  pid_t ReadPid(const std::string& name) {
    std::ifstream in(Path(name));
    pid_t pid = 0;
    in >> pid;
    return pid;
  }
  std::filesystem::path dir_;
};

// mpirun stuck after a failure (a cut-off host's daemon never answers): launch ends it and all of its
// process group after the grace period, SIGKILL for what ignores SIGTERM.
TEST_F(SuperviseTest, ChildThatDoesNotEndAfterAFailureIsEndedWithItsProcessGroup) {
  const std::string script = "(trap '' TERM; exec sleep 60) & echo $! > " + Path("member.pid") +
                             "; echo 'fjord: rank 2 (host no2) aborts the job: fjord train: error on rank 2: "
                             "boom' >&2; trap '' TERM; "
                             "wait";
  const Clock::time_point t0 = Clock::now();
  JobOutcome outcome;
  const int code = RunChild({"sh", "-c", script}, &outcome);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const Supervision bounds;
  const double grace = std::chrono::duration<double>(bounds.grace + bounds.kill_wait).count();
  EXPECT_EQ(code, 128 + SIGKILL);
  EXPECT_EQ(outcome.exit_code, code);
  EXPECT_EQ(outcome.cause, "rank 2 on host no2 ended the job: boom");
  EXPECT_TRUE(outcome.ended_by_launch);
  // SIGTERM after the grace, SIGKILL kill_wait later, then at most the half second of draining the
  // pipe; 3 s of margin for a loaded machine.
  EXPECT_GE(seconds, grace - 0.1);
  EXPECT_LE(seconds, grace + 3.0);
  EXPECT_NEAR(outcome.end_after_s, grace, 1.5);
  const pid_t member = ReadPid("member.pid");
  ASSERT_GT(member, 0);
  for (int i = 0; i < 50 && Alive(member); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(Alive(member)) << "a member of the child's process group outlived it";
}

// mpirun that ends the job itself after the failure: launch records the cause and leaves it be.
TEST_F(SuperviseTest, ChildThatEndsTheJobItselfIsNotEnded) {
  JobOutcome outcome;
  const Clock::time_point t0 = Clock::now();
  const int code =
      RunChild({"sh", "-c",
                "echo 'mpirun noticed that process rank 1 with PID 0 on node no2 exited on signal 9 "
                "(Killed).' >&2; sleep 1; exit 3"},
               &outcome);
  EXPECT_EQ(code, 3);
  EXPECT_EQ(outcome.cause, "rank 1 on host no2 killed by signal 9 (Killed)");
  EXPECT_FALSE(outcome.ended_by_launch);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 3.5);
}

// No failure seen: no cause, however long the child runs (here: past the grace period).
TEST_F(SuperviseTest, ChildWithoutAFailureRunsToItsEnd) {
  JobOutcome outcome;
  const int code = RunChild({"sh", "-c", "echo 'fjord train: step 1' >&2; sleep 5; exit 0"}, &outcome);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(outcome.cause, "");
  EXPECT_FALSE(outcome.ended_by_launch);
}

}  // namespace
}  // namespace fjord
