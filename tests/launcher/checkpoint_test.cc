// Checkpoints and faults, provoked for real: preemption signals, a crash in the middle of a
// checkpoint write, a full disk, corrupted and foreign checkpoints, non-finite steps, a rank
// killed with SIGKILL. The oracle for "resumed correctly" is the same job run straight through.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/sha256.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using testing::Finish;
using ::testing::HasSubstr;
using testing::LossTexts;
using testing::Mpirun;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;
using testing::Start;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("fjord_ckpt_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::mt19937_64 rng(11);
    static const char* kWords[] = {"north ", "fjord ", "hydro ", "power ",
                                   "model ", "data ",  "stays ", "home. "};
    std::string text;
    while (text.size() < 20000) text += kWords[rng() % 8];
    std::ofstream(dir_ / "corpus.txt") << text;
    // One line, one document: no validation split (prep takes whole documents for it).
    RunResult r = RunFjord("prep --input " + P("corpus.txt") + " --out " + P("data") + " --val-fraction 0");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(dir_ / "job.textproto")
        << "model { n_layer: 2 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
           "train { micro_batch: 2 global_batch: 8 steps: 20 lr: 3e-3 warmup_steps: 2 threads: 1 }\n"
           "checkpoint { every_steps: 5 keep_last: 3 }\n"
           "data { train: \"" +
               P("data/train_*.bin") + "\" }\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string P(const std::string& name) const { return (dir_ / name).string(); }
  std::string Train(const std::string& run, const std::string& extra = "") const {
    return " train " + P("job.textproto") + " --quiet --set run_dir=" + P(run) + " " + extra;
  }

  std::string ReadFile(const std::string& path) const {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  void WriteFile(const std::string& path, const std::string& bytes) const {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  // Sets int32 `field` of the 1024-byte header of checkpoint file `path` (little-endian).
  void PatchHeader(const std::string& path, int field, int32_t value) const {
    std::string bytes = ReadFile(path);
    for (int i = 0; i < 4; ++i)
      bytes[4 * field + i] = static_cast<char>((static_cast<uint32_t>(value) >> (8 * i)) & 0xFF);
    WriteFile(path, bytes);
  }
  // Makes the checkpoint's manifest.json record `name`'s current SHA-256 again, as if it had been
  // written that way.
  void Rehash(const std::string& step_dir, const std::string& name) const {
    const std::string manifest = step_dir + "/manifest.json";
    std::string text = ReadFile(manifest);
    const size_t entry = text.find("\"" + name + "\"");
    ASSERT_NE(entry, std::string::npos) << text;
    const size_t sha = text.find("\"sha256\": \"", entry);
    ASSERT_NE(sha, std::string::npos) << text;
    StatusOr<std::string> digest = Sha256File(step_dir + "/" + name, "checkpoint file");
    ASSERT_TRUE(digest.ok()) << digest.status().message();
    text.replace(sha + 11, 64, *digest);
    WriteFile(manifest, text);
  }

  fs::path dir_;
};

TEST_F(CheckpointTest, PreemptedAndResumedRunIsBitIdentical) {
  RunResult r = RunFjord(Train("straight"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> straight = LossTexts(P("straight/metrics.jsonl"));
  ASSERT_EQ(straight.size(), 20u);

  // signal_after_step=10 sends SIGTERM to the process itself after step 10: the preemption path.
  r = testing::Shell("FJORD_TEST_HOOK=signal_after_step=10 " + std::string(FJORD_BINARY) + Train("resumed"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("stopped by a signal after step 10"));
  // The signal watcher says where the rank was: the hook fires at the end of step 10, between
  // collectives (a one-rank job has none).
  EXPECT_THAT(r.output,
              ::testing::ContainsRegex("rank 0 \\(host [^)]*\\): signal 15 \\([^)]*\\) during step 10; "
                                       "no collective in flight"));
  ASSERT_EQ(LossTexts(P("resumed/metrics.jsonl")).size(), 10u);
  // The hook is in the audit log (rank 0's record of every rank's hooks); the run without one has none.
  auto hook_records = [&](const std::string& run) {
    std::ifstream in(P(run + "/audit.jsonl"));
    std::vector<std::string> found;
    for (std::string line; std::getline(in, line);) {
      if (line.find("\"test_override\"") != std::string::npos &&
          line.find("FJORD_TEST_HOOK") != std::string::npos)
        found.push_back(line);
    }
    return found;
  };
  const std::vector<std::string> hooked = hook_records("resumed");
  ASSERT_EQ(hooked.size(), 1u);
  EXPECT_THAT(hooked[0], HasSubstr("{\"rank\":0,\"value\":\"signal_after_step=10\"}"));
  EXPECT_TRUE(hook_records("straight").empty());
  r = RunFjord(Train("resumed", "--resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("resumed/metrics.jsonl")), straight);
  // keep_last: 3 keeps steps 10, 15, 20.
  std::vector<std::string> kept;
  for (const auto& e : fs::directory_iterator(P("resumed/checkpoints"))) kept.push_back(e.path().filename());
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(kept, (std::vector<std::string>{"step_000010", "step_000015", "step_000020"}));
}

TEST_F(CheckpointTest, ZeroOneWithAccumulationResumesBitIdentically) {
  const std::string zero = "--set parallel.zero_stage=1";
  RunResult r = Shell(Mpirun(2) + Train("straight", zero));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=10") + Train("resumed", zero));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("resumed", zero + " --resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("resumed/metrics.jsonl")), LossTexts(P("straight/metrics.jsonl")));
}

// Mixed precision on the CPU twins (model.dtype BF16): the bf16 working copy is re-rounded from
// the fp32 master weights after every step with a seed of the step, so a resumed run (master
// weights from the checkpoint, rounded with the checkpoint step's seed) replays bit for bit, also
// with ZeRO-1's gathered shards on 2 ranks. Checkpoints hold fp32 master weights, so an fp32 run
// resumes a bf16 one.
TEST_F(CheckpointTest, Bf16RunsResumeBitIdenticallyAndFp32ResumesThem) {
  const std::string bf16 = "--set model.dtype=BF16";
  RunResult r = Shell(std::string(FJORD_BINARY) + " train " + P("job.textproto") +
                      " --set run_dir=" + P("straight") + " " + bf16 + " --set train.steps=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("bf16 (model.dtype: BF16)"));
  for (const std::string& zero : {std::string(""), std::string(" --set parallel.zero_stage=1")}) {
    SCOPED_TRACE(zero.empty() ? "1 rank" : "2 ranks, ZeRO-1");
    const std::string launch = zero.empty() ? std::string(FJORD_BINARY) : Mpirun(2);
    const std::string env = zero.empty() ? "FJORD_TEST_HOOK=signal_after_step=10 " + std::string(FJORD_BINARY)
                                         : Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=10");
    fs::remove_all(P("straight"));
    fs::remove_all(P("resumed"));
    r = Shell(launch + Train("straight", bf16 + zero));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = Shell(env + Train("resumed", bf16 + zero));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = Shell(launch + Train("resumed", bf16 + zero + " --resume"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(LossTexts(P("resumed/metrics.jsonl")), LossTexts(P("straight/metrics.jsonl")));
  }
  // The same job in fp32: bf16 tracks it (a 2-layer model at lr 3e-3 for 20 steps; bf16's
  // rounding moves the loss by far less than the ~2 nats it falls), and resuming the bf16
  // checkpoint at step 10 in fp32 continues from the same weights.
  r = RunFjord(Train("fp32"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> fp32 = testing::Losses(P("fp32/metrics.jsonl"));
  const std::vector<double> bf16_losses = testing::Losses(P("straight/metrics.jsonl"));
  ASSERT_EQ(fp32.size(), 20u);
  ASSERT_EQ(bf16_losses.size(), 20u);
  EXPECT_LT(fp32.back(), fp32.front() - 1.0);
  for (size_t i = 0; i < fp32.size(); ++i) EXPECT_NEAR(bf16_losses[i], fp32[i], 0.05 + 0.02 * fp32[i]) << i;
  fs::remove_all(P("straight/checkpoints/step_000015"));
  fs::remove_all(P("straight/checkpoints/step_000020"));
  r = RunFjord(Train("straight", "--resume --set model.dtype=FP32"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> mixed = testing::Losses(P("straight/metrics.jsonl"));
  ASSERT_EQ(mixed.size(), 20u);
  EXPECT_NEAR(mixed[10], fp32[10], 0.05 + 0.02 * fp32[10]);
}

TEST_F(CheckpointTest, ResumesOnAnotherWorldSize) {
  // 4 ranks write the checkpoint at step 10; 2 ranks continue. Same global batch, so the data
  // continues from the same global position; only fp32 reduction order differs (see
  // data_parallel_test.cc for why 1e-4 is the right tolerance).
  RunResult r = Shell(Mpirun(2) + Train("two"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(4, "FJORD_TEST_HOOK=signal_after_step=10") +
            Train("mixed", "--set parallel.zero_stage=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("mixed", "--resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("error")));
  const std::vector<std::string> two = LossTexts(P("two/metrics.jsonl")),
                                 mixed = LossTexts(P("mixed/metrics.jsonl"));
  ASSERT_EQ(mixed.size(), 20u);
  for (size_t i = 0; i < two.size(); ++i)
    EXPECT_NEAR(std::stod(mixed[i]), std::stod(two[i]), 1e-4 * std::stod(two[i])) << "step " << i + 1;
}

// One checkpoint format whatever the stage and world size that wrote it: ZeRO-2 on 4 ranks stops at
// step 10, plain data-parallel on 1 rank continues to 15, ZeRO-2 on 2 ranks finishes; against the
// straight run on 1 rank within data_parallel_test.cc's 1e-4 (the same global batch; only the order
// of fp32 additions differs between world sizes and stages). And where the order is the same
// (ZeRO-2 on 2 ranks stopped at 10 and resumed on the same 2 ranks), bit for bit.
TEST_F(CheckpointTest, ZeroTwoResumesAcrossStagesAndWorldSizes) {
  RunResult r = RunFjord(Train("straight"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string zero2 = "--set parallel.zero_stage=2";
  r = Shell(Mpirun(4, "FJORD_TEST_HOOK=signal_after_step=10") + Train("mixed", zero2));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(ReadFile(P("mixed/checkpoints/step_000010/manifest.json")), HasSubstr("\"zero_stage\": 2"));
  r = Shell("FJORD_TEST_HOOK=signal_after_step=15 " + std::string(FJORD_BINARY) + Train("mixed", "--resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("mixed", zero2 + " --resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> straight = LossTexts(P("straight/metrics.jsonl")),
                                 mixed = LossTexts(P("mixed/metrics.jsonl"));
  ASSERT_EQ(straight.size(), 20u);
  ASSERT_EQ(mixed.size(), 20u);
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_NEAR(std::stod(mixed[i]), std::stod(straight[i]), 1e-4 * std::stod(straight[i]))
        << "step " << i + 1;
  }
  r = Shell(Mpirun(2) + Train("two", zero2));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=10") + Train("two_resumed", zero2));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("two_resumed", zero2 + " --resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("two_resumed/metrics.jsonl")), LossTexts(P("two/metrics.jsonl")));
}

// Issue 19's chain: stage 3 on 4 ranks -> stage 0 on 1 rank -> stage 2 on 2 ranks, against the
// straight one-rank run within the data-parallel bound (1e-4, tests/launcher/data_parallel_test.cc:
// world sizes reorder fp32 additions). The stage-3 checkpoint holds the full weights gathered from
// the shards (rank 0 writes the one format); a stage-3 stop and resume on the same ranks is
// bit-identical to its straight run, in bf16 (the resumed ranks round their working shards with
// the step's seed and the layout offsets, as the straight run's AdamW did).
TEST_F(CheckpointTest, ZeroThreeResumesAcrossStagesAndWorldSizes) {
  RunResult r = RunFjord(Train("straight"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string zero3 = "--set parallel.zero_stage=3";
  r = Shell(Mpirun(4, "FJORD_TEST_HOOK=signal_after_step=10") + Train("mixed", zero3));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(ReadFile(P("mixed/checkpoints/step_000010/manifest.json")), HasSubstr("\"zero_stage\": 3"));
  r = Shell("FJORD_TEST_HOOK=signal_after_step=15 " + std::string(FJORD_BINARY) + Train("mixed", "--resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("mixed", "--set parallel.zero_stage=2 --resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> straight = LossTexts(P("straight/metrics.jsonl")),
                                 mixed = LossTexts(P("mixed/metrics.jsonl"));
  ASSERT_EQ(straight.size(), 20u);
  ASSERT_EQ(mixed.size(), 20u);
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_NEAR(std::stod(mixed[i]), std::stod(straight[i]), 1e-4 * std::stod(straight[i]))
        << "step " << i + 1;
  }
  const std::string bf16 = zero3 + " --set model.dtype=BF16";
  r = Shell(Mpirun(2) + Train("two", bf16));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=10") + Train("two_resumed", bf16));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Shell(Mpirun(2) + Train("two_resumed", bf16 + " --resume"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("two_resumed/metrics.jsonl")), LossTexts(P("two/metrics.jsonl")));
}

TEST_F(CheckpointTest, CrashDuringACheckpointWriteLeavesThePreviousOneLoadable) {
  RunResult r = RunFjord(Train("straight"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The process dies (exit 3, as if killed) after writing model.bin of step 15.
  r = Shell("FJORD_TEST_HOOK=crash_in_checkpoint=15 " + std::string(FJORD_BINARY) + Train("crashed"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_FALSE(fs::exists(P("crashed/checkpoints/step_000015")));
  r = RunFjord(Train("crashed", "--resume") + " --set train.log_every=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("crashed/metrics.jsonl")), LossTexts(P("straight/metrics.jsonl")));
}

TEST_F(CheckpointTest, DamagedCheckpointsAreRefusedAndResumeFallsBack) {
  RunResult r = Shell("FJORD_TEST_HOOK=signal_after_step=15 " + std::string(FJORD_BINARY) + Train("run"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Flip one byte in the newest checkpoint's weights.
  {
    std::fstream f(P("run/checkpoints/step_000015/model.bin"),
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2000);
    char c = 0;
    f.read(&c, 1);
    f.seekp(2000);
    c ^= 0x10;
    f.write(&c, 1);
  }
  // Truncate the one before it.
  fs::resize_file(P("run/checkpoints/step_000010/optimizer.bin"), 100);
  r = RunFjord(Train("run", "--resume --accept-changes --set train.steps=16"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step_000015/model.bin: sha256"));
  EXPECT_THAT(r.output, HasSubstr("does not match"));
  EXPECT_THAT(r.output, HasSubstr("step_000010/optimizer.bin: 100 bytes"));
  EXPECT_THAT(r.output, HasSubstr("falling back"));
  EXPECT_EQ(LossTexts(P("run/metrics.jsonl")).size(), 16u);  // 5 kept + 11 from step 5

  // A missing file, and every checkpoint damaged: refused with the reason.
  fs::remove(P("run/checkpoints/step_000016/manifest.json"));
  for (const auto& e : fs::directory_iterator(P("run/checkpoints")))
    if (fs::exists(e.path() / "job.textproto")) fs::remove(e.path() / "job.textproto");
  r = RunFjord(Train("run", "--resume"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("manifest.json"));
  EXPECT_THAT(r.output, HasSubstr("job.textproto: missing"));
  EXPECT_THAT(r.output, HasSubstr("every checkpoint in"));
}

TEST_F(CheckpointTest, ManifestCannotPointOutsideTheCheckpoint) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string manifest = P("run/checkpoints/step_000005/manifest.json");
  std::ifstream in(manifest);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t k = text.find("\"job.textproto\"");
  ASSERT_NE(k, std::string::npos);
  text.replace(k, 15, "\"../../../job.textproto\"");
  std::ofstream(manifest, std::ios::trunc) << text;
  r = RunFjord(Train("run", "--resume"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("\"../../../job.textproto\" is not a plain file name"));
}

// A listed file that is a symbolic link out of the checkpoint is refused even when its target has
// the recorded size and digest (here: an identical copy outside): only the checkpoint's own files count.
TEST_F(CheckpointTest, ManifestFileThatIsASymbolicLinkIsRefused) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string listed = P("run/checkpoints/step_000005/job.textproto");
  fs::copy_file(listed, P("outside.textproto"));
  fs::remove(listed);
  fs::create_symlink(P("outside.textproto"), listed);
  r = RunFjord(Train("run", "--resume"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(listed + ": a symbolic link (listed in manifest.json)"));
}

TEST_F(CheckpointTest, AnotherModelsCheckpointIsRefusedNamingTheField) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord(Train("run", "--resume --set model.n_embd=64"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("model.n_embd is 32 in the checkpoint but 64 in the model"));
}

TEST_F(CheckpointTest, SecondSignalExitsAtOnce) {
  // A long run; SIGTERM twice in quick succession: the second ends the process immediately
  // (exit 128 + 15) instead of waiting for the step and the checkpoint.
  // Step 2 takes 30 s (a test hook sleeps in it), so both signals arrive inside one step.
  // exec: the shell becomes fjord, so the signals reach fjord and nothing else.
  const std::string cmd = "exec env FJORD_TEST_HOOK=sleep_in_step=0:2:30 " + std::string(FJORD_BINARY) +
                          Train("long", "--set checkpoint.every_steps=0");
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = Start(cmd);
  ASSERT_NE(pipe, nullptr);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  // Standard signals do not queue: leave the first one time to be taken before the second.
  Shell("pkill -TERM -f '[r]un_dir=" + P("long") + "'; sleep 0.3; pkill -TERM -f '[r]un_dir=" + P("long") +
        "'");
  const RunResult done = Finish(pipe);
  const std::string& out = done.output;
  const int status = done.wait_status;
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM) << out;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  EXPECT_FALSE(fs::exists(P("long/checkpoints")));
  // The audit log still ends with job_end, naming the signal (issue 25 item 4): the signal watcher
  // records it before the process ends.
  const std::string audit = ReadFile(P("long/audit.jsonl"));
  const size_t last = audit.rfind("{\"seq\"");
  ASSERT_NE(last, std::string::npos) << audit;
  const std::string end = audit.substr(last);
  EXPECT_THAT(end, ::testing::HasSubstr("\"event\":\"job_end\",\"ok\":false"));
  EXPECT_THAT(end, ::testing::HasSubstr("\"signal\":15"));
  EXPECT_THAT(end, ::testing::HasSubstr("a second signal ended the rank at once"));
}

TEST_F(CheckpointTest, SigusrToMpirunStopsEveryRankWithACheckpoint) {
  // mpirun forwards SIGUSR1 to every rank (fjord launch sends it on SIGTERM; Slurm's
  // --signal=USR1@T does the same to srun's tasks): each rank finishes its step, rank 0 writes a
  // checkpoint, the job exits 0, and --resume continues from it. Oracle for the checkpoint: the
  // step it names equals the last step in the metrics, and resume starts right after it.
  const std::string cmd =
      "exec " + Mpirun(2) + Train("usr1", "--set train.steps=100000 --set checkpoint.every_steps=0");
  FILE* pipe = Start(cmd);
  ASSERT_NE(pipe, nullptr);
  for (int i = 0; i < 100 && LossTexts(P("usr1/metrics.jsonl")).size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // mpirun is the process of this job without a rank in its environment.
  Shell("for p in $(pgrep -f '[r]un_dir=" + P("usr1") +
        "'); do grep -qz '^OMPI_COMM_WORLD_RANK=' /proc/$p/environ "
        "2>/dev/null || kill -USR1 $p; done");
  const RunResult done = Finish(pipe);
  const std::string& out = done.output;
  const int status = done.wait_status;
  ASSERT_TRUE(WIFEXITED(status)) << out;
  EXPECT_EQ(WEXITSTATUS(status), 0) << out;
  const size_t steps = LossTexts(P("usr1/metrics.jsonl")).size();
  EXPECT_THAT(out, HasSubstr("stopped by a signal after step " + std::to_string(steps))) << out;
  // Both ranks say where they were when the signal came.
  EXPECT_THAT(out, ::testing::ContainsRegex("rank 0 \\(host [^)]*\\): signal 10 ")) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("rank 1 \\(host [^)]*\\): signal 10 ")) << out;
  char name[32];
  std::snprintf(name, sizeof(name), "step_%06zu", steps);
  EXPECT_TRUE(fs::exists(P("usr1/checkpoints/") + name)) << out;
  RunResult r = Shell(
      Mpirun(2) + Train("usr1", "--resume --accept-changes --set train.steps=" + std::to_string(steps + 2)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(LossTexts(P("usr1/metrics.jsonl")).size(), steps + 2);
}

TEST_F(CheckpointTest, NonFiniteStepAbortsOrIsSkipped) {
  // ABORT (default): the step, the first non-finite tensor, and the checkpoints stay intact.
  RunResult r = Shell("FJORD_TEST_HOOK=nan_in_step=7 " + std::string(FJORD_BINARY) +
                      Train("abort", "--set checkpoint.every_steps=1"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("step 7: loss"));
  EXPECT_THAT(r.output, HasSubstr("first non-finite gradient on rank 0: ln_f.weight[0]"));
  EXPECT_THAT(r.output, HasSubstr("train.on_nonfinite: SKIP_STEP"));
  EXPECT_TRUE(fs::exists(P("abort/checkpoints/step_000006/manifest.json")));
  EXPECT_FALSE(fs::exists(P("abort/checkpoints/step_000007")));
  r = RunFjord(Train("abort", "--resume --accept-changes --set train.steps=8"));
  EXPECT_EQ(r.exit_code, 0) << r.output;  // the last good state loads

  // SKIP_STEP: the step is recorded as skipped, training goes on to the end.
  r = Shell("FJORD_TEST_HOOK=nan_in_step=7 " + std::string(FJORD_BINARY) +
            Train("skip", "--set train.on_nonfinite=SKIP_STEP"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ifstream metrics(P("skip/metrics.jsonl"));
  int skipped = 0, lines = 0;
  for (std::string line; std::getline(metrics, line); ++lines)
    skipped += line.find("\"skipped\": true") != std::string::npos;
  EXPECT_EQ(lines, 20);
  EXPECT_EQ(skipped, 1);
}

// ZeRO-2 checks the gradient shards: the rank that holds the non-finite element names it (rank 0
// owns the first piece of the tail unit, ln_f.weight[0]), every rank stops before the update.
TEST_F(CheckpointTest, ZeroTwoNonFiniteStepNamesTheTensorFromTheShard) {
  RunResult r = Shell(Mpirun(2, "FJORD_TEST_HOOK=nan_in_step=7") +
                      Train("abort", "--set parallel.zero_stage=2 --set checkpoint.every_steps=1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("step 7: loss"));
  EXPECT_THAT(r.output, HasSubstr("first non-finite gradient on rank 0: ln_f.weight[0]"));
  EXPECT_TRUE(fs::exists(P("abort/checkpoints/step_000006/manifest.json")));
  EXPECT_FALSE(fs::exists(P("abort/checkpoints/step_000007")));
}

TEST_F(CheckpointTest, ZeroThreeNonFiniteStepNamesTheTensorFromTheShard) {
  RunResult r = Shell(Mpirun(2, "FJORD_TEST_HOOK=nan_in_step=7") +
                      Train("abort", "--set parallel.zero_stage=3 --set checkpoint.every_steps=1"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("step 7: loss"));
  EXPECT_THAT(r.output, HasSubstr("first non-finite gradient on rank 0: ln_f.weight[0]"));
  EXPECT_TRUE(fs::exists(P("abort/checkpoints/step_000006/manifest.json")));
  EXPECT_FALSE(fs::exists(P("abort/checkpoints/step_000007")));
}

TEST_F(CheckpointTest, EpochsWrapAndAreRecorded) {
  // 20000 bytes of text make about 560 windows of 33 tokens; 20 steps of 8 do not wrap, 100 do.
  RunResult r = RunFjord(Train("epochs", "--set train.steps=100 --set checkpoint.every_steps=0"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream metrics(P("epochs/metrics.jsonl"));
  std::string first, last;
  for (std::string line; std::getline(metrics, line);) (first.empty() ? first : last) = line;
  EXPECT_THAT(first, HasSubstr("\"epoch\": 0"));
  EXPECT_THAT(last, HasSubstr("\"epoch\": 1"));
}

TEST_F(CheckpointTest, FullDiskLeavesThePreviousCheckpointIntact) {
  // A 1 MiB tmpfs holds metrics and one checkpoint of this model (~0.4 MiB) but not two.
  const std::string mnt = P("tiny");
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  RunResult r = RunFjord(Train("tiny/run", "--set checkpoint.keep_last=0"));
  const bool had_first = fs::exists(mnt + "/run/checkpoints/step_000005/manifest.json");
  std::string leftovers;
  for (const auto& e : fs::directory_iterator(mnt + "/run/checkpoints"))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) leftovers += e.path().string();
  umount(mnt.c_str());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("No space left on device; check free disk space"));
  EXPECT_THAT(r.output, HasSubstr("the previous checkpoints are intact"));
  EXPECT_TRUE(had_first);
  EXPECT_EQ(leftovers, "");
}

TEST_F(CheckpointTest, KilledRankEndsTheJobNamingIt) {
  const std::string cmd = Mpirun(2) + Train("killed",
                                            "--set train.steps=100000 --set checkpoint.every_steps=0 "
                                            "--set parallel.comm_timeout=5");
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = Start(cmd);
  ASSERT_NE(pipe, nullptr);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  // Rank 1 is the fjord process whose environment says OMPI_COMM_WORLD_RANK=1.
  Shell("for p in $(pgrep -f '[r]un_dir=" + P("killed") +
        "'); do grep -qz '^OMPI_COMM_WORLD_RANK=1$' /proc/$p/environ "
        "2>/dev/null && kill -9 $p; done");
  const auto killed = std::chrono::steady_clock::now();
  const RunResult done = Finish(pipe);
  const std::string& out = done.output;
  const int status = done.wait_status;
  const double after_kill = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_TRUE(!WIFEXITED(status) || WEXITSTATUS(status) != 0) << out;
  // mpirun names the rank that died; the survivor names the collective it was in and the peer
  // it was waiting for (the only peer of rank 0 in a 2-rank ring or tree is rank 1).
  EXPECT_THAT(out, ::testing::ContainsRegex("process rank 1 .*exited on signal 9")) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("rank 0 \\(host [^)]*\\): signal 15 .* in [A-Za-z]+ #[0-9]+ .*"
                                            "waiting for rank 1"))
      << out;
  EXPECT_LT(after_kill, 5.0 + 5.0) << out;
  // Nothing left running ("[r]" keeps pgrep from matching its own shell's command line).
  EXPECT_EQ(Shell("pgrep -f '[r]un_dir=" + P("killed") + "'").output, "");
  (void)t0;
}

TEST_F(CheckpointTest, DamagedManifestFieldsAreNamedWhenResumeHasNoCheckpointLeft) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step = P("run/checkpoints/step_000005");
  const std::string intact = ReadFile(step + "/manifest.json");
  struct Case {
    std::string from, to, expected;
  };
  for (const Case& c : std::vector<Case>{
           {"\"fjord-checkpoint\"", "\"other-checkpoint\"",
            step + "/manifest.json: not a fjord checkpoint manifest (no \"format\": \"fjord-checkpoint\")"},
           {"\"files\"", "\"filez\"", step + "/manifest.json: no \"files\" listed"},
           {"\"sha256\"", "\"sha-256\"", step + "/manifest.json: entry for "},
       }) {
    std::string text = intact;
    const size_t at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    text.replace(at, c.from.size(), c.to);
    WriteFile(step + "/manifest.json", text);
    r = RunFjord(Train("run", "--resume --accept-changes --set train.steps=6"));
    EXPECT_EQ(r.exit_code, 1) << c.expected;
    EXPECT_THAT(r.output, HasSubstr(c.expected));
    EXPECT_THAT(r.output, HasSubstr("every checkpoint in"));
    EXPECT_FALSE(fs::exists(P("run/checkpoints/step_000006"))) << c.expected;
  }
  EXPECT_THAT(r.output, HasSubstr("lacks bytes or sha256"));
  EXPECT_EQ(LossTexts(P("run/metrics.jsonl")).size(), 5u);  // nothing appended
}

TEST_F(CheckpointTest, ExportRefusesAForeignOrNewerModelFileAndAMissingCheckpointAndWritesNothing) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step = P("run/checkpoints/step_000005");
  const std::string model = step + "/model.bin";
  const std::string intact = ReadFile(model);
  auto export_to = [&](const std::string& out) {
    return RunFjord("export --checkpoint " + step + " --out " + P(out));
  };

  PatchHeader(model, 0, 1234);  // magic
  r = export_to("hf_magic");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(model + ": magic 1234 is not fjord's"));
  EXPECT_THAT(r.output, HasSubstr("(not a fjord checkpoint)"));
  EXPECT_FALSE(fs::exists(P("hf_magic")));

  WriteFile(model, intact);
  PatchHeader(model, 1, 99);  // version
  r = export_to("hf_version");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(model + ": version 99 is not supported (expected "));
  EXPECT_THAT(r.output, HasSubstr("written by another fjord version; read it with that version"));
  EXPECT_FALSE(fs::exists(P("hf_version")));

  fs::create_directories(P("empty"));
  r = RunFjord("export --checkpoint " + P("empty") + " --out " + P("hf_empty"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("no checkpoint in " + P("empty") +
                                  ": expected a step directory with model.bin, or a run directory with "
                                  "checkpoints/step_*"));
  EXPECT_FALSE(fs::exists(P("hf_empty")));
}

TEST_F(CheckpointTest, OptimizerStateOfAnotherShapeIsRefusedOnResume) {
  RunResult r = RunFjord(Train("run", "--set train.steps=5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step = P("run/checkpoints/step_000005");
  PatchHeader(step + "/optimizer.bin", 2, 3);  // n_layer 3 where model.bin and the job say 2
  Rehash(step, "optimizer.bin");
  r = RunFjord(Train("run", "--resume --accept-changes --set train.steps=6"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr(step + "/optimizer.bin: the optimizer state is for another model shape than "
                               "model.bin's"));
  EXPECT_THAT(r.output, HasSubstr("restore the checkpoint from a copy you trust"));
  EXPECT_FALSE(fs::exists(P("run/checkpoints/step_000006")));
  EXPECT_EQ(LossTexts(P("run/metrics.jsonl")).size(), 5u);
}

TEST_F(CheckpointTest, ImportRefusesAnLlmcFileWithAnotherVocabularyPaddingAndWritesNothing) {
  // llm.c header: magic, version 3 (fp32), maxT, V, L, NH, C, Vp; V 50 padded to 256, not 128.
  const int32_t maxT = 8, V = 50, L = 1, NH = 1, C = 8, Vp = 256;
  std::string bytes;
  for (int32_t v : {20240326, 3, maxT, V, L, NH, C, Vp}) {
    for (int i = 0; i < 4; ++i)
      bytes.push_back(static_cast<char>((static_cast<uint32_t>(v) >> (8 * i)) & 0xFF));
  }
  bytes.resize(1024, '\0');
  const size_t params = size_t(Vp + maxT) * C + size_t(L) * (12 * C * C + 13 * C) + 2 * C;
  bytes.resize(bytes.size() + 4 * params, '\0');
  WriteFile(P("model.bin"), bytes);
  RunResult r = RunFjord("import --from " + P("model.bin") + " --out " + P("imported") + " --format llmc");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr(P("model.bin") +
                                  ": padded vocabulary 256 differs from fjord's padding of 50 to 128"));
  EXPECT_THAT(r.output, HasSubstr("write the file with that padding (llm.c's own)"));
  EXPECT_FALSE(fs::exists(P("imported")));
}

}  // namespace
}  // namespace fjord
