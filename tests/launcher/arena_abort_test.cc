// A rank ended because a peer aborted still zeroes its arena (issue 16). Rank 1 fails in step 2
// (test hook fail_in_step) and aborts the job with MPI_Abort; mpirun then sends SIGTERM, and a
// second later SIGKILL, to rank 0, which waits for rank 1 in the gradient reduction. Rank 0's
// signal watcher sees a SIGTERM from another process while its collective waits for a peer that
// never comes, zeroes the arena and exits. With arena_verify_zero the signal path reads the arena
// back and says so; the oracle for its size is the arena size the trainer printed at start.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;
using testing::Mpirun;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

class ArenaAbortTest : public testing::TempDirTest {
 protected:
  ArenaAbortTest() : TempDirTest("fjord_arena_abort_") {}
  void SetUp() override {
    TempDirTest::SetUp();
    std::string text;
    for (int i = 0; i < 400; ++i) text += "abcabcabd " + std::to_string(i % 7) + "\n";
    WriteText(Path("corpus.txt"), text);
    const RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    WriteText(Path("job.textproto"),
              "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 16 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 5 }\n"
              "data { train: \"" +
                  Path("data/train_*.bin") +
                  "\" }\n"
                  "run_dir: \"" +
                  Path("run") + "\"\n");
  }
};

TEST_F(ArenaAbortTest, RankEndedByAPeersAbortZeroesItsArena) {
  const RunResult r = Shell(Mpirun(2, "FJORD_TEST_HOOK=fail_in_step=1:2,arena_verify_zero") + " train " +
                            Path("job.textproto"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  // Rank 1 failed and aborted the job (its own arena is zeroed by its destructor, as before).
  EXPECT_THAT(r.output, HasSubstr("test hook fail_in_step: rank 1 fails in step 2")) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("FATAL"))) << r.output;
  // Rank 0 was ended by the abort while it waited for rank 1.
  EXPECT_THAT(r.output, HasSubstr("waiting for rank 1")) << r.output;
  EXPECT_THAT(r.output, HasSubstr("a peer has ended and the job is being torn down; zeroing the arena"))
      << r.output;
  // Its flight recorder went to its file in the run directory, named on the console in one line.
  const std::string flight = Path("run/flight/rank-0.txt");
  EXPECT_THAT(r.output, HasSubstr("flight recorder written to " + flight)) << r.output;
  const std::string dump = testing::ReadText(flight);
  EXPECT_THAT(dump, HasSubstr("torn down")) << dump;
  EXPECT_THAT(dump, HasSubstr("waiting for rank 1")) << dump;
  std::smatch arena, zeroed;
  ASSERT_TRUE(std::regex_search(r.output, arena, std::regex(R"(arena [0-9.]+ GiB \((\d+) bytes\))")))
      << r.output;
  ASSERT_TRUE(std::regex_search(
      r.output, zeroed,
      std::regex(
          R"(fjord: arena model, gradients, activations and AdamW state: zeroed on signal (\d+): (\d+) bytes read back, (\d+) non-zero)")))
      << r.output;
  EXPECT_EQ(zeroed[1].str(), "15");            // mpirun's SIGTERM
  EXPECT_EQ(zeroed[2].str(), arena[1].str());  // the whole arena
  EXPECT_EQ(zeroed[3].str(), "0");
  // Rank 1's own error path: no bucket all-reduce still in flight wrote into it after the zeroing.
  EXPECT_THAT(r.output,
              HasSubstr("AdamW state: " + arena[1].str() + " bytes zeroed and read back, 0 non-zero"));
}

}  // namespace
}  // namespace fjord
