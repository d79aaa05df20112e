// The straggler report (parallel.straggler_every_steps) under mpirun on this host, with 2 and 3
// ranks (written by engineer STRAG in parallel with the same change on main, ported to main's words): a rank
// made slow in its compute by a test hook is named as slow in compute, not the ranks that wait for it in
// communication; a rank made slow in its communication is named as slow in communication; without a hook
// nothing is reported. The oracle is the hook: it says which rank is slow, in what, and by how much.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using testing::Mpirun;
using ::testing::Not;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

class StragglerTest : public ::testing::Test {
 protected:
  // The hook's delay per step: 40 ms against steps of ~1-8 ms. With 15 ms, on this 2-core machine
  // under a busy loop and two other engineers' builds (load ~5), the waiting rank's communication
  // median reached 7 ms and a comm straggler of 22 ms missed the 3x factor in 3 of 4 runs.
  static constexpr int kDelayMs = 40;

  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("fjord_straggler_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
         "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::mt19937_64 rng(5);
    static const char* kWords[] = {"north ", "fjord ", "hydro ", "power ",
                                   "slow ",  "rank ",  "waits ", "here. "};
    std::string text;
    while (text.size() < 20000) text += kWords[rng() % 8];
    std::ofstream(dir_ / "corpus.txt") << text;
    RunResult r = RunFjord("prep --input " + P("corpus.txt") + " --out " + P("data") + " --val-fraction 0");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(dir_ / "job.textproto")
        << "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
           "train { micro_batch: 1 steps: 40 lr: 1e-3 threads: 1 log_every: 1 }\n"
           "checkpoint { every_steps: 0 }\n"
           "parallel { straggler_every_steps: 20 }\n"
           "data { train: \"" +
               P("data/train_*.bin") + "\" }\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string P(const std::string& name) const { return (dir_ / name).string(); }

  // The job on `np` ranks with FJORD_TEST_HOOK=`hook` ("" for none), in a fresh run directory.
  RunResult Run(int np, const std::string& hook) {
    fs::remove_all(P("run"));
    return Shell(Mpirun(np, hook.empty() ? "" : "FJORD_TEST_HOOK=" + hook) + " train " + P("job.textproto") +
                 " --quiet --set run_dir=" + P("run"));
  }
  std::string Metrics() const {
    std::ifstream in(P("run/metrics.jsonl"));
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  // The metrics.jsonl line of `step`.
  std::string MetricsOf(int step) const {
    const std::string m = Metrics();
    const size_t at = m.find("{\"step\": " + std::to_string(step) + ",");
    return at == std::string::npos ? "" : m.substr(at, m.find('\n', at) - at);
  }
  // The number after `"key": ` in `line` (NaN without it).
  static double Field(const std::string& line, const std::string& key) {
    const size_t at = line.find("\"" + key + "\": ");
    return at == std::string::npos ? NAN : std::atof(line.c_str() + at + key.size() + 4);
  }
  static int Count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }

  // Rank `slow` of `np`, slowed by kDelayMs per step in `kind` ("compute" or "communication"), is the one
  // named, with that kind, in every window that names one (of 2 windows of 20 steps); no other rank
  // or kind is ever named. `every_window`: both windows must name it. A compute delay is named in
  // both, always. A comm delay (the hook sleeps after the gradient reduction) leaks into its peer's
  // communication when the peer is still inside that collective as the sleep begins, which on this
  // loaded 2-core machine happens in whole windows (peer median 11-40 ms against the straggler's
  // 58-64 ms, under load ~7-9): there one window of two may name no one.
  void ExpectNamed(int np, int slow, const std::string& kind, bool every_window) {
    const std::string hook = (kind == "compute" ? "compute_delay=" : "comm_delay=") + std::to_string(slow) +
                             ":" + std::to_string(kDelayMs);
    const RunResult r = Run(np, hook);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string words = std::string("spent a median [0-9.]+ ms per step ") +
                              (kind == "compute" ? "computing" : "communicating");
    EXPECT_THAT(r.output, ContainsRegex("fjord train: warning: straggler: rank " + std::to_string(slow) +
                                        " \\(host [^)]+\\) " + words + " over steps (1-20|21-40), " +
                                        "[0-9.]+x the median [0-9.]+ ms of the other ranks"))
        << r.output;
    const int warnings = Count(r.output, "warning: straggler: rank");
    EXPECT_EQ(Count(r.output, "warning: straggler: rank " + std::to_string(slow) + " (host"), warnings)
        << r.output;
    EXPECT_EQ(
        Count(r.output, std::string("ms per step ") + (kind == "compute" ? "computing" : "communicating")),
        warnings)
        << r.output;
    EXPECT_GE(warnings, every_window ? 2 : 1) << r.output;
    EXPECT_LE(warnings, 2) << r.output;
    for (int step : {20, 40}) {
      const std::string line = MetricsOf(step);
      if (!every_window && line.find("straggler") == std::string::npos) continue;
      EXPECT_THAT(line, HasSubstr("\"straggler_rank\": " + std::to_string(slow) + ", \"straggler_host\": "))
          << Metrics();
      EXPECT_THAT(line, HasSubstr("\"straggler_kind\": \"" + kind + "\"")) << line;
      EXPECT_EQ(Field(line, "straggler_from_step"), step - 19) << line;
      // The slow rank's median of its kind holds at least the kDelayMs the hook adds, and is what the
      // ratio is taken of.
      const double slow_ms = Field(line, kind == "compute" ? "straggler_compute_ms" : "straggler_comm_ms");
      EXPECT_GE(slow_ms, kDelayMs) << line;
      EXPECT_LT(Field(line, "straggler_median_ms"), slow_ms / 3) << line;
    }
    for (int step = 1; step <= 40; ++step) {
      if (step % 20 != 0) {
        EXPECT_THAT(MetricsOf(step), Not(HasSubstr("straggler"))) << step;
      }
    }
    // The hook is announced and in the audit log, as every test hook.
    EXPECT_THAT(Shell("cat " + P("run/audit.jsonl")).output, HasSubstr(hook));
  }

  fs::path dir_;
};

// With two ranks the waiting rank's communication time is as far above the slow rank's as the
// slow rank's compute is above the waiter's: the report must name the slow one, in compute.
TEST_F(StragglerTest, AComputeStragglerIsNamedNotTheRanksThatWaitForIt) {
  ExpectNamed(2, 1, "compute", true);
  ExpectNamed(3, 2, "compute", true);
}

TEST_F(StragglerTest, ACommunicationStragglerIsStillNamedAsOne) { ExpectNamed(2, 1, "communication", false); }

TEST_F(StragglerTest, NoHookNoStraggler) {
  const RunResult r = Run(3, "");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("straggler"))) << r.output;
  EXPECT_THAT(Metrics(), HasSubstr("\"step\": 40,"));
  EXPECT_THAT(Metrics(), Not(HasSubstr("straggler")));
}

}  // namespace
}  // namespace fjord
