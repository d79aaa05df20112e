// A rank that does not arrive at a collective: the others must turn the hang into an error within
// the timeout + 5 s that names the collective, its sequence number and the missing rank, dump
// their flight recorders, and the whole job must exit non-zero with no process left behind.
// Runs tests/collectives/hang_driver.cc under mpirun with a 2 s timeout.
#include <dirent.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr long kTimeoutMs = 2000;

long long UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Job {
  int exit_code = -1;
  std::string output;
  long long end_ms = 0;
  std::vector<int> pids;
  std::vector<std::string> flight;  // RUN_DIR/flight/rank-R.txt of each rank ("" when not written)
};

Job RunDriver(int np, const std::string& args) {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("OMPI_MCA_btl", "self,vader,tcp", 1);
  char dir[] = "/tmp/fjord_hang_XXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  // `timeout` guards the test against a job that never ends (it stops mpirun, which stops the ranks).
  const std::string cmd = "timeout -k 5 90 " FJORD_MPIEXEC " -np " + std::to_string(np) +
                          " --oversubscribe --bind-to none " FJORD_HANG_DRIVER " --timeout-ms " +
                          std::to_string(kTimeoutMs) + " --pid-dir " + dir + " --flight-dir " + dir +
                          "/flight " + args + " 2>&1";
  Job job;
  FILE* pipe = popen(cmd.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << cmd;
  if (pipe == nullptr) return job;
  char buf[4096];
  size_t got;
  while ((got = fread(buf, 1, sizeof(buf), pipe)) > 0) job.output.append(buf, got);
  const int status = pclose(pipe);
  job.end_ms = UnixMs();
  job.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  for (int r = 0; r < np; ++r) {
    std::ifstream f(std::string(dir) + "/rank" + std::to_string(r) + ".pid");
    int pid = 0;
    if (f >> pid) job.pids.push_back(pid);
    std::remove((std::string(dir) + "/rank" + std::to_string(r) + ".pid").c_str());
    const std::string flight = std::string(dir) + "/flight/rank-" + std::to_string(r) + ".txt";
    std::ifstream ff(flight);
    job.flight.emplace_back(std::istreambuf_iterator<char>(ff), std::istreambuf_iterator<char>());
    std::remove(flight.c_str());
  }
  rmdir((std::string(dir) + "/flight").c_str());
  rmdir(dir);
  return job;
}

// The earliest "issuing ... at unix_ms=T" of the surviving ranks.
long long IssueMs(const std::string& output) {
  long long first = LLONG_MAX;
  const std::regex re("issuing [A-Za-z]+ #4 at unix_ms=([0-9]+)");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it) {
    first = std::min(first, std::stoll((*it)[1].str()));
  }
  return first;
}

// No rank of the job is still alive (or a zombie) shortly after mpirun returned.
void ExpectNoSurvivors(const Job& job, int np) {
  EXPECT_EQ(job.pids.size(), static_cast<size_t>(np)) << "missing pid files";
  for (int pid : job.pids) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    bool alive = true;
    while (alive && std::chrono::steady_clock::now() < until) {
      alive = access(("/proc/" + std::to_string(pid)).c_str(), F_OK) == 0;
      if (alive) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_FALSE(alive) << "rank process " << pid << " outlived the job";
  }
}

void ExpectWithinBound(const Job& job) {
  const long long issued = IssueMs(job.output);
  ASSERT_NE(issued, LLONG_MAX) << job.output;
  EXPECT_LE(job.end_ms - issued, kTimeoutMs + 5000)
      << "the job ended " << job.end_ms - issued << " ms after the collective was issued\n"
      << job.output;
}

TEST(CollectiveTimeoutTest, EverySurvivorNamesTheRankThatDidNotArrive) {
  const Job job = RunDriver(3, "--hang-rank 1 --mode sync");
  EXPECT_NE(job.exit_code, 0) << job.output;
  ExpectWithinBound(job);
  // The first survivor to time out names the collective, its number and the missing rank.
  EXPECT_THAT(job.output,
              ContainsRegex("fjord: collective AllReduce #4 \\(1048576 bytes, float sum, ring\\) "
                            "timed out after 2\\.[0-9] s on rank [02] \\(host [^)]+\\): ranks not "
                            "arrived: 1 \\(host [^:]+: last issued #3, [0-9.]+ s ago\\); arrived: 0, 2"))
      << job.output;
  // Both survivors report it.
  for (int r : {0, 2}) {
    EXPECT_THAT(job.output,
                ContainsRegex("fjord: collective AllReduce #4 \\([^)]*\\) (timed out|failed) .*on rank " +
                              std::to_string(r) + " \\(host [^)]+\\).*ranks not arrived: 1 \\(host"))
        << "rank " << r << "\n"
        << job.output;
    // Its flight recorder is in its own file, named by one line on the console, not on the console.
    EXPECT_THAT(job.flight[r], HasSubstr("fjord: flight recorder of rank " + std::to_string(r) + " (host "))
        << job.output;
    EXPECT_THAT(job.flight[r], ContainsRegex("^fjord: collective AllReduce #4 .*ranks not arrived: 1"));
    EXPECT_THAT(job.output, ContainsRegex("fjord: rank " + std::to_string(r) +
                                          " \\(host [^)]+\\): flight recorder written to /tmp/fjord_hang_"
                                          "[^/]+/flight/rank-" +
                                          std::to_string(r) + "\\.txt\n"))
        << job.output;
    // The dump shows the finished collectives and the one that timed out (or failed, when the
    // other survivor's notice came first).
    EXPECT_THAT(job.flight[r], ContainsRegex("#3 +AllReduce +1024 +float +sum +tree .* done"));
    EXPECT_THAT(job.flight[r],
                ContainsRegex("#4 +AllReduce +1048576 +float +sum +ring .* (timed out|failed)"));
  }
  EXPECT_THAT(job.output, Not(HasSubstr("fjord: flight recorder of"))) << "a dump on the console";
  // The missing rank explains itself, on the console and in its file.
  EXPECT_THAT(job.output, ContainsRegex("rank 1 \\(host [^)]+\\) has not issued collective #4"))
      << job.output;
  EXPECT_THAT(job.flight[1], ContainsRegex("rank 1 \\(host [^)]+\\) has not issued collective #4"));
  ExpectNoSurvivors(job, 3);
}

TEST(CollectiveTimeoutTest, AsyncCollectiveTimesOut) {
  const Job job = RunDriver(2, "--hang-rank 1 --mode async");
  EXPECT_NE(job.exit_code, 0) << job.output;
  ExpectWithinBound(job);
  EXPECT_THAT(job.output,
              ContainsRegex("fjord: collective AllReduce #4 \\(64 bytes, float sum, tree\\) timed out "
                            "after 2\\.[0-9] s on rank 0 \\(host [^)]+\\): ranks not arrived: 1 "))
      << job.output;
  EXPECT_THAT(job.output,
              HasSubstr("hang_driver: rank 0: the collective returned: fjord: collective AllReduce #4"))
      << job.output;
  EXPECT_THAT(job.flight[0], HasSubstr("fjord: flight recorder of rank 0")) << job.output;
  ExpectNoSurvivors(job, 2);
}

TEST(CollectiveTimeoutTest, RanksThatIssueDifferentCollectivesAreNamed) {
  const Job job = RunDriver(2, "--hang-rank 1 --mode mismatch");
  EXPECT_NE(job.exit_code, 0) << job.output;
  ExpectWithinBound(job);
  EXPECT_THAT(job.output,
              ContainsRegex("collective AllReduce #4 \\([^)]*\\) (timed out|failed) .*on rank 0 .*ranks "
                            "that issued a different collective as #4: 1 \\(host [^:]+: #4 is Barrier "
                            "of 0 bytes there\\)"))
      << job.output;
  EXPECT_THAT(job.output,
              ContainsRegex("collective Barrier #4 \\(0 bytes, mpi\\) (timed out|failed) .*on rank 1 "
                            ".*#4 is AllReduce of 1048576 bytes there"))
      << job.output;
  ExpectNoSurvivors(job, 2);
}

// A rank whose whole process is stopped cannot answer the census: it is named as not answering.
TEST(CollectiveTimeoutTest, AStoppedRankIsNamedAsNotAnswering) {
  const Job job = RunDriver(2, "--hang-rank 1 --mode stop");
  EXPECT_NE(job.exit_code, 0) << job.output;
  ExpectWithinBound(job);
  EXPECT_THAT(job.output,
              ContainsRegex("fjord: collective AllReduce #4 \\(1048576 bytes, float sum, ring\\) timed out "
                            "after 2\\.[0-9] s on rank 0 \\(host [^)]+\\): ranks not answering within "
                            "2\\.2 s: 1 \\(host [^)]+\\) \\(stopped, dead or stuck"))
      << job.output;
  EXPECT_THAT(job.flight[0], HasSubstr("fjord: flight recorder of rank 0")) << job.output;
  ExpectNoSurvivors(job, 2);
}

}  // namespace
