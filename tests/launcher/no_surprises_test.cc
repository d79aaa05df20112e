// Issue 21's silent wrong answers, each provoked through the fjord binary: a second run into a
// run_dir that holds one, eval numbers that depended on the checkpoint's own job spec, a resume that
// changed the run without a word, and the stop messages of a signal under mpirun.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/host.h"
#include "launcher/lease.h"
#include "proto/inventory.pb.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::LossTexts;
using testing::Mpirun;
using ::testing::Not;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

class NoSurprisesTest : public testing::TempDirTest {
 protected:
  NoSurprisesTest() : TempDirTest("fjord_surprises_") {}
  void SetUp() override {
    TempDirTest::SetUp();
    std::string text;
    for (int i = 0; i < 300; ++i) text += "the fjord keeps its data home " + std::to_string(i % 7) + "\n";
    testing::WriteText(Path("corpus.txt"), text);
    RunResult r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    testing::WriteText(Path("job.textproto"),
                       "model { n_layer: 1 n_head: 2 n_embd: 16 seq_len: 16 vocab_size: 256 }\n"
                       "train { micro_batch: 2 grad_accum: 2 steps: 6 lr: 1e-2 warmup_steps: 1 threads: 1 }\n"
                       "checkpoint { every_steps: 3 keep_last: 0 }\n"
                       "data { train: \"" +
                           Path("data/train_*.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n");
  }
  std::string Train(const std::string& extra = "") const {
    return " train " + Path("job.textproto") + " " + extra;
  }
  // The names in a directory, sorted.
  static std::vector<std::string> Names(const std::string& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  // The value of "key": N in a JSON line of `text`.
  static double JsonNumber(const std::string& text, const std::string& key) {
    const size_t k = text.find("\"" + key + "\": ");
    return k == std::string::npos ? NAN : std::stod(text.substr(k + key.size() + 4));
  }
};

// Item 1: a second run into a run_dir that holds a run is refused, naming what is there and the
// three ways on; --overwrite removes the earlier run's files (not its audit log); eval, sample and
// export say which checkpoint (step, job digest, when) they loaded.
TEST_F(NoSurprisesTest, ASecondRunIntoARunDirIsRefusedOrReplacesIt) {
  RunResult r = RunFjord(Train("--quiet"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(Names(Path("run/checkpoints")), (std::vector<std::string>{"step_000003", "step_000006"}));
  const std::string metrics_before = testing::ReadText(Path("run/metrics.jsonl"));

  r = RunFjord(Train("--quiet --set train.steps=3"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("run_dir " + Path("run") + " holds an earlier run"));
  EXPECT_THAT(r.output, HasSubstr(Path("run/checkpoints/step_000006")));
  EXPECT_THAT(r.output, HasSubstr(Path("run/metrics.jsonl")));
  EXPECT_THAT(r.output, HasSubstr("--resume"));
  EXPECT_THAT(r.output, HasSubstr("--set run_dir=DIR"));
  EXPECT_THAT(r.output, HasSubstr("--overwrite"));
  // Nothing of the earlier run was touched.
  EXPECT_EQ(testing::ReadText(Path("run/metrics.jsonl")), metrics_before);
  EXPECT_EQ(Names(Path("run/checkpoints")), (std::vector<std::string>{"step_000003", "step_000006"}));

  r = RunFjord(Train("--quiet --resume --overwrite"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("not both"));

  const bool had_audit = fs::exists(Path("run/audit.jsonl"));
  r = RunFjord(Train("--quiet --set train.steps=3 --overwrite"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Names(Path("run/checkpoints")), (std::vector<std::string>{"step_000003"}));
  EXPECT_EQ(LossTexts(Path("run/metrics.jsonl")).size(), 3u);
  int event_files = 0;
  for (const std::string& name : Names(Path("run"))) event_files += name.starts_with("events.out.tfevents.");
  EXPECT_EQ(event_files, 1);
  EXPECT_EQ(fs::exists(Path("run/audit.jsonl")), had_audit);

  // The loaded checkpoint, with the digest of its job.textproto (computed here by sha256sum).
  const std::string step = Path("run/checkpoints/step_000003");
  RunResult sha = Shell("sha256sum " + step + "/job.textproto");
  ASSERT_EQ(sha.exit_code, 0) << sha.output;
  const std::string expected =
      "checkpoint " + step + " (step 3, job sha256 " + sha.output.substr(0, 12) + ", written ";
  r = RunFjord("eval --checkpoint " + Path("run") + " --data '" + Path("data/val_*.bin") + "' --batches 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord eval: " + expected));
  EXPECT_THAT(r.output, ::testing::ContainsRegex("written 20[0-9-]+T[0-9:.]+Z\\)"));
  r = RunFjord("sample --checkpoint " + Path("run") + " --tokens 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord sample: " + expected));
  r = RunFjord("export --checkpoint " + Path("run") + " --out " + Path("gpt.bin") + " --format llmc");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(expected));
}

// Item 2: eval prints what it measured on every line and takes the geometry, so the same weights
// give the same number whatever job spec their checkpoint carries; the same sequences batched
// differently give the same mean; --batches 0 is refused and a cap at the whole split is said.
TEST_F(NoSurprisesTest, EvalSaysWhatItMeasuredAndTakesTheGeometry) {
  RunResult r = RunFjord(Train("--quiet --set train.steps=3"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The import of the llm.c export holds the same weights under another job spec (import's defaults).
  r = RunFjord("export --checkpoint " + Path("run") + " --out " + Path("gpt.bin") + " --format llmc");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("import --from " + Path("gpt.bin") + " --out " + Path("imported") + " --format llmc");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string data = " --data '" + Path("data/val_*.bin") + "'";
  auto eval = [&](const std::string& checkpoint, const std::string& flags) {
    RunResult e = RunFjord("eval --checkpoint " + checkpoint + data + " " + flags);
    EXPECT_EQ(e.exit_code, 0) << e.output;
    return e.output;
  };
  const std::string original = eval(Path("run"), "--micro-batch 3 --seq-len 8 --batches 2");
  const std::string imported = eval(Path("imported"), "--micro-batch 3 --seq-len 8 --batches 2");
  EXPECT_EQ(JsonNumber(original, "loss"), JsonNumber(imported, "loss")) << original << imported;
  EXPECT_THAT(original, HasSubstr("\"tokens\": 48, \"batches\": 2, \"micro_batch\": 3, \"seq_len\": 8"));

  // The first 12 sequences, one per batch and in batches of 4: the same tokens, so the same mean
  // (up to float summation).
  const std::string singles = eval(Path("run"), "--micro-batch 1 --batches 12");
  const std::string fours = eval(Path("run"), "--micro-batch 4 --batches 3");
  EXPECT_EQ(JsonNumber(fours, "tokens"), JsonNumber(singles, "tokens"));
  EXPECT_NEAR(JsonNumber(fours, "loss"), JsonNumber(singles, "loss"), 1e-5) << fours << singles;
  // --batches all: every sequence of the split, without a cap note.
  const std::string all = eval(Path("run"), "--micro-batch 1 --batches all");
  const int sequences = static_cast<int>(JsonNumber(all, "batches"));
  EXPECT_GT(sequences, 12) << all;
  EXPECT_THAT(all, Not(HasSubstr("fewer than")));

  // More batches than the split holds: capped, and said.
  const std::string capped = eval(Path("run"), "--micro-batch 1 --batches 100000");
  EXPECT_THAT(capped, HasSubstr("fewer than the 100000 asked for"));
  EXPECT_THAT(capped, HasSubstr("\"capped\": true"));
  EXPECT_EQ(JsonNumber(capped, "batches"), sequences);

  r = RunFjord("eval --checkpoint " + Path("run") + data + " --batches 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--batches '0' is neither a positive number of batches nor 'all'"));
  r = RunFjord("eval --checkpoint " + Path("run") + data + " --seq-len 17");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--seq-len 17 is longer than the model's 16 positions"));
}

// Item 3: a resume that changes the global batch (2 ranks -> 1 without train.global_batch) or the
// learning-rate schedule is refused with the choices; train.global_batch or --accept-changes resume,
// and every change is printed.
TEST_F(NoSurprisesTest, ResumeSaysWhatChangesAndRefusesABatchOrScheduleChange) {
  RunResult r = Shell(Mpirun(2, "FJORD_TEST_HOOK=signal_after_step=3") + Train("--quiet"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(Path("run/checkpoints/step_000003")));
  r = RunFjord(Train("--quiet --resume"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("would change the run"));
  EXPECT_THAT(r.output, HasSubstr("world size: 2 -> 1 ranks"));
  EXPECT_THAT(r.output, HasSubstr("global batch: 8 -> 4 sequences per step"));
  EXPECT_THAT(r.output, HasSubstr("set train.global_batch: 8"));
  EXPECT_THAT(r.output, HasSubstr("--accept-changes"));
  EXPECT_EQ(LossTexts(Path("run/metrics.jsonl")).size(), 3u);  // nothing ran

  // train.global_batch keeps the batch: the run resumes and says what differs.
  r = RunFjord(Train("--resume --set train.global_batch=8"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("with changes to the run"));
  EXPECT_THAT(r.output, HasSubstr("train.global_batch: 0 -> 8"));
  EXPECT_THAT(r.output, HasSubstr("world size: 2 -> 1 ranks"));
  EXPECT_THAT(r.output, Not(HasSubstr("global batch: 8 ->")));
  EXPECT_EQ(LossTexts(Path("run/metrics.jsonl")).size(), 6u);

  // More steps recompute the cosine schedule: refused, then accepted, with the lr of the next step.
  fs::remove_all(Path("run/checkpoints/step_000006"));
  r = RunFjord(Train("--quiet --resume --set train.global_batch=8 --set train.steps=12"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train.steps: 6 -> 12 (the learning-rate schedule)"));
  EXPECT_THAT(r.output, HasSubstr("learning rate of step 4: "));
  r = RunFjord(Train("--quiet --resume --set train.global_batch=8 --set train.steps=12 --accept-changes"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("train.steps: 6 -> 12"));
  EXPECT_EQ(LossTexts(Path("run/metrics.jsonl")).size(), 12u);
}

// Item 4: SIGUSR1 to mpirun (the safe way, which `fjord train --help` teaches) stops both ranks
// after the same step with a checkpoint; rank 0's stdout holds the step lines, then the checkpoint
// line, then the stop line (the streams are forwarded separately, so all three are on stdout), and
// the job exits 0.
TEST_F(NoSurprisesTest, SignalUnderMpirunStopsInOrderWithACheckpointAndExitsZero) {
  RunResult help = RunFjord("train --help");
  EXPECT_THAT(help.output, HasSubstr("kill -USR1"));
  EXPECT_THAT(help.output, HasSubstr("odls_base_sigkill_timeout"));

  const std::string pid_file = Path("mpirun.pid"), err = Path("stderr.txt");
  FILE* pipe = testing::Start("echo $$ > " + pid_file + "; exec " + Mpirun(2) +
                              Train("--set train.steps=100000 --set checkpoint.every_steps=0") + " 2>" + err);
  ASSERT_NE(pipe, nullptr);
  for (int i = 0; i < 600 && LossTexts(Path("run/metrics.jsonl")).size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const pid_t mpirun = std::stoi(testing::ReadText(pid_file));
  ASSERT_EQ(::kill(mpirun, SIGUSR1), 0);
  const RunResult done = testing::Finish(pipe);
  EXPECT_EQ(done.exit_code, 0) << done.output << testing::ReadText(err);
  const size_t steps = LossTexts(Path("run/metrics.jsonl")).size();
  char name[32];
  std::snprintf(name, sizeof(name), "step_%06zu", steps);
  const std::string checkpoint = Path("run/checkpoints/") + name;
  EXPECT_TRUE(fs::exists(checkpoint + "/manifest.json")) << done.output;
  const std::string& out = done.output;  // stdout only
  // The progress line of the last step: "step" padded to the width of the step count.
  std::smatch m;
  const bool found = std::regex_search(out, m, std::regex("step +" + std::to_string(steps) + "/100000 "));
  const size_t last_step = found ? static_cast<size_t>(m.position(0)) : std::string::npos;
  const size_t checkpoint_line = out.find("fjord train: checkpoint " + checkpoint + "\n");
  const size_t stop_line = out.find("fjord train: stopped by a signal after step " + std::to_string(steps) +
                                    "; checkpoint " + checkpoint + " is complete; continue with --resume\n");
  ASSERT_NE(last_step, std::string::npos) << out;
  ASSERT_NE(checkpoint_line, std::string::npos) << out;
  ASSERT_NE(stop_line, std::string::npos) << out;
  EXPECT_LT(last_step, checkpoint_line) << out;
  EXPECT_LT(checkpoint_line, stop_line) << out;
  EXPECT_THAT(out.substr(stop_line), Not(::testing::ContainsRegex("\nstep "))) << out;
}

// Item 7: `fjord help SUB` is `fjord SUB --help`; train --help lists the job spec's sections (the
// schema's top-level fields, read here from proto/job.proto) and points at config --print and
// --dry-run; config --print gives the resolved job, which parses back to itself; --dry-run checks and
// prints the plan without training or writing; a wrong argument count names the culprit.
TEST_F(NoSurprisesTest, HelpConfigPrintDryRunAndTheArgumentThatIsWrong) {
  for (const std::string sub : {"train", "eval", "audit verify"}) {
    RunResult help = RunFjord("help " + sub), direct = RunFjord(sub + " --help");
    EXPECT_EQ(help.exit_code, 0) << help.output;
    EXPECT_EQ(help.output, direct.output) << sub;
    EXPECT_THAT(help.output, HasSubstr("usage: fjord " + sub));
  }
  RunResult r = RunFjord("help trian");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("no command 'trian'"));

  r = RunFjord("train --help");
  std::ifstream schema(std::string(FJORD_SOURCE_DIR) + "/proto/job.proto");
  std::string text((std::istreambuf_iterator<char>(schema)), std::istreambuf_iterator<char>());
  const size_t job = text.find("message JobSpec {");
  ASSERT_NE(job, std::string::npos);
  std::smatch m;
  std::string body = text.substr(job, text.find("\n}", job) - job);
  int sections = 0;
  for (std::regex field(R"(\n  (?:optional |repeated )?(\w+) (\w+) = \d+)");
       std::regex_search(body, m, field); body = m.suffix()) {
    EXPECT_THAT(r.output, HasSubstr(m[2].str())) << "section " << m[2];
    ++sections;
  }
  EXPECT_GE(sections, 5);
  EXPECT_THAT(r.output, HasSubstr("fjord config --print JOB.textproto"));
  EXPECT_THAT(r.output, HasSubstr("--dry-run"));

  // config --print: every default present, and the printed job parses back to the same text.
  r = RunFjord("config --print " + Path("job.textproto") + " --set model.dtype=bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("dtype: BF16"));
  EXPECT_THAT(r.output, HasSubstr("weight_decay: "));  // a default the file does not set
  testing::WriteText(Path("resolved.textproto"), r.output);
  RunResult again = RunFjord("config --print " + Path("resolved.textproto"));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output, r.output);

  // --dry-run: the plan, and no run_dir written.
  r = RunFjord(Train("--dry-run"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--dry-run: the job, its data and its plan check out"));
  EXPECT_THAT(
      r.output,
      HasSubstr("batch: 4 sequences of 16 tokens per step = micro_batch 2 x grad_accum 2 x 1 rank(s)"));
  EXPECT_THAT(r.output, HasSubstr("run_dir " + Path("run") + ": new"));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
  EXPECT_FALSE(fs::exists(Path("run/checkpoints")));
  // ... and a dry run catches what training would refuse.
  r = RunFjord(Train("--dry-run --set data.train=" + Path("none_*.bin")));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("none_*.bin"));

  // The argument that made "exactly one job spec" fail.
  testing::WriteText(Path("other.textproto"), "");
  r = RunFjord(Train() + Path("other.textproto"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("did the shell expand a glob?"));
  EXPECT_THAT(r.output, HasSubstr("'" + Path("other.textproto") + "'"));
  r = RunFjord(Train("--set train.steps 8"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--set train.steps: expected PATH=VALUE"));
  EXPECT_THAT(r.output, HasSubstr("--set train.steps=20, not --set train.steps 20"));
  r = RunFjord(Train("--quiet 8"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(r.output, HasSubstr("'8' is an extra argument"));
}

// Item 10: the odd ends a new user met.
TEST_F(NoSurprisesTest, OddEnds) {
  // A run_dir that cannot be created is named as the run_dir (not as the audit log's directory).
  RunResult r = RunFjord(Train("--quiet --set run_dir=" + Path("corpus.txt") + "/run"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("run_dir " + Path("corpus.txt") + "/run cannot be created or written: " +
                                  Path("corpus.txt") + " is not a directory"));
  EXPECT_THAT(r.output, Not(HasSubstr("audit")));

  // One error prefix.
  r = RunFjord("prep --input " + Path("missing.txt") + " --out " + Path("d"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord prep: error: "));
  EXPECT_THAT(r.output, Not(HasSubstr("error: fjord prep:")));

  // import without --format: llm.c by the file's magic, else Hugging Face; the same weights either way.
  r = RunFjord(Train("--quiet --set train.steps=1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string format : {"llmc", "hf"}) {
    const std::string out = Path("exported." + format);
    r = RunFjord("export --checkpoint " + Path("run") + " --out " + out + " --format " + format);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = RunFjord("import --from " + out + " --out " + Path("imported_" + format));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("fjord import: --format " + format + " ("));
    EXPECT_EQ(testing::ReadText(Path("imported_" + format + "/model.bin")).substr(1024),
              testing::ReadText(Path("run/checkpoints/step_000001/model.bin")).substr(1024))
        << format;
  }
  // prep --tenant on a node without an identity file warns; with one (the test override) it does not.
  const std::string prep = " " + std::string(FJORD_BINARY) + " prep --input " + Path("corpus.txt") +
                           " --tenant acme --jurisdiction NO --out ";
  RunResult host = Shell("hostname");
  testing::WriteText(Path("node.textproto"), "hostname: \"" +
                                                 host.output.substr(0, host.output.find_first_of(".\n")) +
                                                 "\"\njurisdiction: \"NO\"\nsite: \"osl1\"\n");
  r = Shell("FJORD_NODE_IDENTITY=" + Path("node.textproto") + prep + Path("tenant_b"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("warning")));
  if (fs::exists("/etc/fjord/node.textproto")) GTEST_SKIP() << "this node has an identity file";
  r = Shell("unset FJORD_NODE_IDENTITY;" + prep + Path("tenant_a"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("fjord prep: warning: tenant acme's shards are prepared on a node without a "
                        "usable identity"));
}

// Item 10: the examples' commands run the binary the build makes (build/bin/fjord) and name files
// that exist in the repository.
TEST(ExamplesTest, CommandsUseTheBuiltBinaryAndExistingFiles) {
  const fs::path root = FJORD_SOURCE_DIR;
  int commands = 0;
  for (const auto& example : fs::directory_iterator(root / "examples")) {
    const fs::path readme = example.path() / "README.md";
    if (!fs::exists(readme)) continue;
    std::ifstream in(readme);
    bool code = false;
    int number = 0;
    for (std::string line; std::getline(in, line);) {
      ++number;
      if (line.starts_with("```")) code = !code;
      if (!code) continue;
      const std::string where = readme.string() + ":" + std::to_string(number) + ": " + line;
      // A command, not a line of output ("fjord launch: ...").
      std::smatch m;
      if (std::regex_search(line, m, std::regex(R"((^|\$ |mpirun .*?)(\S*fjord) [a-z]+( |$))"))) {
        ++commands;
        EXPECT_TRUE(m[2].str().ends_with("build/bin/fjord")) << where;
      }
      static const std::regex kPath(R"(examples/[\w./-]+\.\w+)");
      for (std::sregex_iterator it(line.begin(), line.end(), kPath), end; it != end; ++it) {
        EXPECT_TRUE(fs::exists(root / it->str())) << where;
      }
    }
  }
  EXPECT_GT(commands, 10);
}

// Item 6: fjord run --nproc-per-node 2 --max-restarts 1: a rank killed mid-run (SIGKILL, as the OOM
// killer would) ends that attempt; the job runs again from its newest checkpoint and finishes with
// the losses of a run that was never interrupted (the oracle: the same job under mpirun directly),
// and the restart is in the audit log.
TEST_F(NoSurprisesTest, RunRestartsFromTheLastCheckpointWhenARankDies) {
  const std::string job =
      Path("job.textproto") + " --quiet --set train.steps=300 --set checkpoint.every_steps=50";
  RunResult r = Shell(Mpirun(2) + " train " + job + " --set run_dir=" + Path("straight"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<std::string> straight = LossTexts(Path("straight/metrics.jsonl"));
  ASSERT_EQ(straight.size(), 300u);

  const std::string run_dir = Path("restarted");
  FILE* pipe = testing::Start(
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp " +
      std::string(FJORD_BINARY) + " run --nproc-per-node 2 --max-restarts 1 --mpirun " + FJORD_MPIEXEC + " " +
      job + " --set run_dir=" + run_dir);
  ASSERT_NE(pipe, nullptr);
  for (int i = 0; i < 600 && LossTexts(run_dir + "/metrics.jsonl").size() < 60; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Rank 0 of this job, the one that writes the audit records: the process with
  // OMPI_COMM_WORLD_RANK=0 in its environment.
  Shell("for p in $(pgrep -f '[r]un_dir=" + run_dir +
        "'); do grep -qz '^OMPI_COMM_WORLD_RANK=0$' /proc/$p/environ 2>/dev/null && kill -KILL $p; done");
  const RunResult done = testing::Finish(pipe);
  EXPECT_EQ(done.exit_code, 0) << done.output;
  EXPECT_THAT(done.output, HasSubstr("fjord run: the job failed (exit "));
  EXPECT_THAT(done.output, HasSubstr("restart 1 of 1 from its newest intact checkpoint"));
  EXPECT_EQ(LossTexts(run_dir + "/metrics.jsonl"), straight);
  EXPECT_THAT(testing::ReadText(run_dir + "/audit.jsonl"),
              ::testing::ContainsRegex("\"event\":\"job_restart\".*\"restart\":1,\"max_restarts\":1"));
  // The killed rank 0 could not record the first attempt's end: fjord run did, once.
  std::vector<std::string> ends;
  std::istringstream audit(testing::ReadText(run_dir + "/audit.jsonl"));
  for (std::string line; std::getline(audit, line);)
    if (line.find("\"event\":\"job_end\"") != std::string::npos) ends.push_back(line);
  ASSERT_EQ(ends.size(), 2u) << done.output;
  EXPECT_THAT(ends[0], HasSubstr("\"recorded_by\":\"fjord run\""));
  EXPECT_THAT(ends[0], HasSubstr("\"ok\":false"));
  EXPECT_THAT(ends[1], HasSubstr("\"ok\":true"));

  // Without restarts the failure is the job's exit code.
  r = Shell("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + std::string(FJORD_BINARY) +
            " run --nproc-per-node 2 --mpirun " + FJORD_MPIEXEC + " " + Path("job.textproto") +
            " --set data.train=" + Path("none_*.bin"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("none_*.bin"));
  EXPECT_THAT(r.output, Not(HasSubstr("restart")));
}

// Item 6, "with the node's leases as today": fjord run --lease-dir holds this node's lease for the
// job's lifetime, as fjord launch does for an inventory's nodes. The holder here is the test itself,
// leasing the keys fjord launch would lock for an inventory node of this hostname; while it holds
// them the run is refused naming the holder and starts nothing, and once it lets go the run trains
// and gives the lease back when it ends.
TEST_F(NoSurprisesTest, RunLeasesThisNodeAndIsRefusedWhileAnotherJobHoldsIt) {
  fs::create_directories(Path("leases"));
  proto::InventoryNode node;
  node.set_hostname(ThisHostname());
  LeaseRecord holder;
  holder.tenant = "other";
  holder.job_sha256 = std::string(64, 'a');
  holder.launch_id = "launch-of-another-job";
  holder.launch_host = "elsewhere";
  holder.pid = 1;
  holder.audit_log = "/nonexistent/audit.jsonl";
  const std::vector<std::string> keys = NodeLeaseKeys(node);
  LeaseConflict conflict;
  StatusOr<std::unique_ptr<NodeLeases>> held = TryAcquireLeases(Path("leases"), keys, holder, &conflict);
  ASSERT_TRUE(held.ok()) << held.status().message();
  const std::string run =
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp " +
      std::string(FJORD_BINARY) + " run --nproc-per-node 2 --mpirun " + FJORD_MPIEXEC + " --lease-dir " +
      Path("leases") + " " + Path("job.textproto") + " --quiet";
  RunResult r = Shell(run);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("launch-of-another-job"));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl"))) << "a refused run trained";

  ASSERT_TRUE((*held)->Release().ok());
  r = Shell(run);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("leased this node"));
  EXPECT_EQ(LossTexts(Path("run/metrics.jsonl")).size(), 6u);
  // Given back at the end: another holder takes it at once.
  StatusOr<std::unique_ptr<NodeLeases>> again = TryAcquireLeases(Path("leases"), keys, holder, &conflict);
  EXPECT_TRUE(again.ok()) << again.status().message();
}

}  // namespace
}  // namespace fjord
