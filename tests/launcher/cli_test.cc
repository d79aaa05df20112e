// End-to-end tests of the fjord binary: prep -> train -> eval -> sample, the demo, and the
// refusals a user meets first (bad job spec, bad flags), checked by exit code and message.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using testing::RunFjord;
using testing::RunResult;

class CliTest : public testing::TempDirTest {
 protected:
  CliTest() : TempDirTest("fjord_cli_") {}
  void Write(const std::string& name, const std::string& text) const { std::ofstream(Path(name)) << text; }
};

// Last JSON line of metrics.jsonl with a "val_loss" key, parsed crudely but strictly.
double LastValLoss(const std::string& metrics_path) {
  std::ifstream in(metrics_path);
  std::string line;
  double val = NAN;
  while (std::getline(in, line)) {
    const size_t k = line.find("\"val_loss\": ");
    if (k != std::string::npos) val = std::stod(line.substr(k + 12));
  }
  return val;
}

TEST_F(CliTest, UnknownCommandAndOptionAreRefusedWithUsage) {
  RunResult r = RunFjord("trian job.textproto");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown command 'trian'"));
  EXPECT_THAT(r.output, HasSubstr("fjord train JOB.textproto"));
  r = RunFjord("eval --checkpoint x --data y --bogus 3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown option '--bogus'"));
  r = RunFjord("sample --checkpoint x --tokens many");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--tokens 'many' is not a whole number"));
}

TEST_F(CliTest, BadJobSpecIsRefusedWithFileLineAndField) {
  Write("bad.textproto", "model {\n  n_layer: 2\n  n_head: 3\n  n_embd: 100\n}\ndata { train: \"x.bin\" }\n");
  RunResult r = RunFjord("train " + Path("bad.textproto"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("bad.textproto:4"));
  EXPECT_THAT(r.output, HasSubstr("model.n_embd"));
  Write("typo.textproto", "model {\n  n_layers: 2\n}\n");
  r = RunFjord("train " + Path("typo.textproto"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("typo.textproto:2"));
  EXPECT_THAT(r.output, HasSubstr("n_layers"));
}

TEST_F(CliTest, MissingDataIsRefusedNamingTheField) {
  Write("job.textproto", "data { train: \"" + Path("nothing_*.bin") +
                             "\" }\nmodel { n_layer: 1 n_head: 1 n_embd: 8 seq_len: 8 vocab_size: 256 }\n");
  RunResult r = RunFjord("train " + Path("job.textproto"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("data.train"));
  EXPECT_THAT(r.output, HasSubstr("nothing_*.bin"));
}

TEST_F(CliTest, PrepTrainEvalSampleRoundTrip) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += "abcabcabd " + std::to_string(i % 7) + "\n";
  Write("corpus.txt", text);
  RunResult r =
      RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("data") + " --val-fraction 0.2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Write("job.textproto",
        "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
        "train { micro_batch: 4 steps: 40 lr: 1e-2 warmup_steps: 5 eval_every: 20 eval_batches: 2 }\n"
        "data { train: \"" +
            Path("data/train_*.bin") + "\" val: \"" + Path("data/val_*.bin") +
            "\" }\n"
            "run_dir: \"" +
            Path("run") + "\"\n");
  r = RunFjord("train " + Path("job.textproto") + " --set train.steps=30 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // --set took effect: 30 metric lines, the checkpoint of step 30.
  std::ifstream metrics(Path("run/metrics.jsonl"));
  int lines = 0;
  for (std::string l; std::getline(metrics, l);) ++lines;
  EXPECT_EQ(lines, 30);
  ASSERT_TRUE(fs::exists(Path("run/checkpoints/step_000030/model.bin")));
  const double val = LastValLoss(Path("run/metrics.jsonl"));
  EXPECT_LT(val, std::log(256.0) * 0.6);  // learned well below the uniform 5.55 nats

  // eval on the val shards reproduces the last val loss the trainer logged (same weights, same
  // sequences in order, same batch count).
  r = RunFjord("eval --checkpoint " + Path("run") + " --data '" + Path("data/val_*.bin") + "' --batches 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t k = r.output.find("{\"loss\": ");
  ASSERT_NE(k, std::string::npos) << r.output;
  EXPECT_NEAR(std::stod(r.output.substr(k + 9)), val, 1e-5);

  // stdout alone: the prompt, then the text (the checkpoint line goes to stderr).
  const std::string sample = "{ " + std::string(FJORD_BINARY) + " sample --checkpoint " + Path("run") +
                             " --prompt abc --tokens 20 --temperature 0 2>/dev/null; }";
  r = testing::Shell(sample);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, ::testing::StartsWith("abc"));
  EXPECT_GE(r.output.size(), 23u);
  // Greedy sampling is deterministic.
  EXPECT_EQ(testing::Shell(sample).output, r.output);
}

// Trains a tiny model into dir/run on a small corpus; returns the val glob.
std::string TrainTiny(CliTest* t, const std::string& extra = "") {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the fjord keeps its data home " + std::to_string(i % 5) + "\n";
  std::ofstream(t->Path("corpus.txt")) << text;
  RunResult r = RunFjord("prep --input " + t->Path("corpus.txt") + " --out " + t->Path("data"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ofstream(t->Path("job.textproto"))
      << "model { n_layer: 1 n_head: 2 n_embd: 16 seq_len: 16 vocab_size: 256 }\n"
         "train { micro_batch: 4 steps: 5 lr: 1e-2 eval_every: 5 eval_batches: 2 }\n"
         "data { train: \"" +
             t->Path("data/train_*.bin") + "\" val: \"" + t->Path("data/val_*.bin") +
             "\" }\n"
             "run_dir: \"" +
             t->Path("run") + "\"\n";
  r = RunFjord("train " + t->Path("job.textproto") + " " + extra);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return t->Path("data/val_*.bin");
}

double EvalLoss(const std::string& checkpoint, const std::string& data) {
  RunResult r = RunFjord("eval --checkpoint " + checkpoint + " --data '" + data + "' --batches 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const size_t k = r.output.find("{\"loss\": ");
  return k == std::string::npos ? NAN : std::stod(r.output.substr(k + 9));
}

TEST_F(CliTest, ExportImportRoundTripsThroughHuggingFaceAndLlmc) {
  const std::string val = TrainTiny(this, "--quiet");
  const double trained = EvalLoss(Path("run"), val);
  ASSERT_TRUE(std::isfinite(trained));
  for (const std::string format : {"hf", "llmc"}) {
    const std::string out = Path("exported_" + format) + (format == "hf" ? "" : ".bin");
    RunResult r = RunFjord("export --checkpoint " + Path("run") + " --out " + out + " --format " + format);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    if (format == "hf") {
      EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
      EXPECT_TRUE(fs::exists(out + "/config.json"));
    }
    r = RunFjord("import --from " + out + " --out " + Path("imported_" + format) + " --format " + format);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    // fp32 both ways: the imported model computes exactly the same loss.
    EXPECT_EQ(EvalLoss(Path("imported_" + format), val), trained) << format;
  }
  // A fine-tune starts from the imported weights: its first loss is the trained model's (about
  // 5.0 after 5 steps), not the ln(256) = 5.55 of a fresh GPT-2 init.
  RunResult r = RunFjord("train " + Path("job.textproto") +
                         " --json --set train.steps=1 --set train.lr=1e-9 "
                         "--set train.init_from=" +
                         Path("imported_hf") + " --set run_dir=" + Path("finetune"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t k = r.output.find("\"loss\": ");
  ASSERT_NE(k, std::string::npos) << r.output;
  EXPECT_LT(std::stod(r.output.substr(k + 8)), std::log(256.0) - 0.3);
  r = RunFjord("import --from " + Path("exported_hf") + " --out " + Path("imported_hf"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("exists; choose a new directory"));
  r = RunFjord("export --checkpoint " + Path("run") + " --out x --format onnx");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--format 'onnx' is not one of hf"));
}

TEST_F(CliTest, TrainWritesTensorBoardEventsAndJsonLines) {
  TrainTiny(this, "--json");
  bool found = false;
  for (const auto& e : fs::directory_iterator(Path("run")))
    found |= e.path().filename().string().starts_with("events.out.tfevents.");
  EXPECT_TRUE(found);
  RunResult r = RunFjord("train " + Path("job.textproto") + " --json --set run_dir=" + Path("run2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // --json: stdout is exactly the metrics lines.
  std::ifstream metrics(Path("run2/metrics.jsonl"));
  std::stringstream expected;
  expected << metrics.rdbuf();
  EXPECT_EQ(r.output, expected.str());
}

// MFU in every place training reports: the --json record's mfu is flops_per_token x tokens_per_s /
// peak_flops from the record's own fields, flops_per_token is 6 N + 6 L C T with N counted here
// from the architecture, peak_flops is train.peak_tflops; the progress line (stdout is a pipe
// here, not a terminal) carries step/total, loss, val, tok/s, MFU and ETA as plain lines; TensorBoard
// gets perf/mfu; --quiet prints nothing at all.
TEST_F(CliTest, ProgressLineJsonAndTensorBoardReportMfu) {
  TrainTiny(this, "--quiet");
  RunResult r = RunFjord("train " + Path("job.textproto") + " --quiet --set run_dir=" + Path("quiet"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "");

  // 2^-10 TFLOP/s: exact in float and in the record's %e.
  const std::string peak = " --set train.peak_tflops=0.0009765625";
  r = RunFjord("train " + Path("job.textproto") + " --json" + peak + " --set run_dir=" + Path("json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // TrainTiny's model: L = 1, C = 16, T = 16, vocab 256 (already a multiple of 128).
  const double L = 1, C = 16, T = 16, Vp = 256;
  const double n = Vp * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
  std::istringstream lines(r.output);
  int records = 0;
  for (std::string line; std::getline(lines, line); ++records) {
    StatusOr<JsonValue> v = ParseJson(line, "--json line");
    ASSERT_TRUE(v.ok()) << v.status().message();
    for (const char* key : {"flops_per_token", "tokens_per_s", "peak_flops", "mfu"}) {
      ASSERT_NE(v->Find(key), nullptr) << key << " missing in " << line;
    }
    const double flops = v->Find("flops_per_token")->number(), tps = v->Find("tokens_per_s")->number();
    const double peak_flops = v->Find("peak_flops")->number(), mfu = v->Find("mfu")->number();
    EXPECT_EQ(flops, 6 * n + 6 * L * C * T);
    EXPECT_EQ(peak_flops, 0.0009765625e12);
    ASSERT_GT(tps, 100.0) << line;
    // tokens_per_s is printed to 0.1, mfu to 6 digits.
    EXPECT_NEAR(mfu, flops * tps / peak_flops, flops * tps / peak_flops * (0.05 / tps + 1e-5)) << line;
  }
  EXPECT_EQ(records, 5);
  bool tensorboard_mfu = false;
  for (const auto& e : fs::directory_iterator(Path("json"))) {
    if (!e.path().filename().string().starts_with("events.out.tfevents.")) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    tensorboard_mfu |= bytes.str().find("perf/mfu") != std::string::npos;
  }
  EXPECT_TRUE(tensorboard_mfu);

  r = RunFjord("train " + Path("job.textproto") + peak + " --set run_dir=" + Path("progress"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos);
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos);
  EXPECT_THAT(r.output, HasSubstr("MFU against 0.0009766 TFLOP/s/rank (train.peak_tflops)"));
  int steps = 0;
  std::istringstream progress(r.output);
  for (std::string line; std::getline(progress, line);) {
    if (!line.starts_with("step ")) continue;
    ++steps;
    int step = 0, total = 0;
    double loss = 0, tok_s = 0, mfu_percent = 0;
    ASSERT_EQ(std::sscanf(line.c_str(), "step %d/%d | loss %lf", &step, &total, &loss), 3) << line;
    EXPECT_EQ(step, steps);
    EXPECT_EQ(total, 5);
    const size_t tok = line.find(" tok/s | MFU ");
    ASSERT_NE(tok, std::string::npos) << line;
    tok_s = std::stod(line.substr(line.rfind('|', tok) + 1));
    ASSERT_EQ(std::sscanf(line.c_str() + tok, " tok/s | MFU %lf%%", &mfu_percent), 1) << line;
    // tok/s is printed whole, MFU to 3 significant digits.
    const double expected = 100 * (6 * n + 6 * L * C * T) * tok_s / 0.0009765625e12;
    EXPECT_NEAR(mfu_percent, expected, expected * (1.0 / tok_s + 6e-3)) << line;
    EXPECT_THAT(line, ::testing::MatchesRegex(".* \\| eta [0-9]+m[0-9][0-9]s$"));
    if (step == 5) {
      EXPECT_THAT(line, HasSubstr(" | val "));  // eval_every: 5
    }
  }
  EXPECT_EQ(steps, 5);
}

TEST_F(CliTest, SampleAndPrepRefuseBadOptions) {
  TrainTiny(this, "--quiet");
  RunResult r = RunFjord("sample --checkpoint " + Path("run") + " --top-p 1.5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--top-p must be in (0, 1]"));
  r = RunFjord("sample --checkpoint " + Path("run") +
               " --prompt the --tokens 30 --top-p 0.5 --top-k 5 --seed 3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GE(r.output.size(), 33u);
  r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d2") + " --tokenizer gpt2");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--tokenizer gpt2 needs --vocab DIR"));
  r = RunFjord("prep --input " + Path("corpus.txt") + " --out " + Path("d2") + " --tokenizer gpt2 --vocab " +
               Path("nope"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("nope"));
}

TEST_F(CliTest, EvalRefusesMissingCheckpoint) {
  RunResult r = RunFjord("eval --checkpoint " + Path("nope") + " --data x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("nope"));
  EXPECT_THAT(r.output, HasSubstr("does not exist"));
}

// Every command's missing job spec or required flags: exit 2, naming what is missing.
TEST_F(CliTest, MissingJobSpecAndRequiredFlagsExitTwoNamingThem) {
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {"train", "fjord train: error: give the job spec (JOB.textproto)"},
           {"train a.textproto b.textproto",
            "fjord train: error: give exactly one job spec; got 2 arguments ('a.textproto' 'b.textproto')"},
           {"launch --np 2",
            "fjord launch: error: give exactly one job spec (JOB.textproto)\nusage: fjord launch"},
           {"prep --input x.txt", "fjord prep: error: --input FILE and --out DIR are required"},
           {"eval --data 'x_*.bin'", "fjord eval: error: --checkpoint DIR and --data GLOB are required"},
           {"sample --prompt hi", "fjord sample: error: --checkpoint DIR is required"},
           {"export --checkpoint run", "fjord export: error: --checkpoint DIR and --out PATH are required"},
           {"import --out run", "fjord import: error: --from PATH and --out DIR are required"},
           {"eval --data x --checkpoint", "fjord eval: error: --checkpoint needs a value\nusage: fjord eval"},
           {"sample --checkpoint x --temperature warm",
            "fjord sample: error: --temperature 'warm' is not a number"},
       }) {
    const RunResult r = RunFjord(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
  }
  EXPECT_TRUE(fs::is_empty(dir_));  // nothing was written
}

// fjord prep's options (issue 23, issue 21 item 9): each bad value exits 2 naming it, before any
// input is read or output written.
TEST_F(CliTest, PrepOptionsAreCheckedBeforeAnythingIsWritten) {
  const std::string io = "prep --input " + Path("in.txt") + " --out " + Path("out");
  struct Case {
    std::string args, message;
  };
  for (const Case& c : std::vector<Case>{
           {io + " --shard-tokens 0", "fjord prep: error: --shard-tokens '0' is not a whole number"},
           {io + " --shard-tokens 2147483648", "--shard-tokens '2147483648' is not a whole number"},
           {io + " --threads 0", "--threads '0' is not a whole number"},
           {io + " --format xml", "--format xml: use text or jsonl"},
           {io + " --format jsonl --delimiter x", "--delimiter is for --format text"},
           {io + " --json-field body", "--json-field is for --format jsonl"},
           {io + " --delimiter '\\q'", "--delimiter: unknown escape '\\q'"},
           {io + " --eot=-3", "--eot -3: use auto, none, or a token id"},
           {io + " --val-docs 2 --val-fraction 0.1", "give --val-fraction or --val-docs, not both"},
       }) {
    const RunResult r = RunFjord(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(c.message)) << c.args;
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

// --shard-tokens, --threads and the other prep flags reach PrepareShards: the shards are the same
// bytes for one thread and two, and as many as --shard-tokens says.
TEST_F(CliTest, PrepFlagsReachPrep) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "line " + std::to_string(i) + " of the corpus\n";
  Write("in.txt", text);
  for (const char* threads : {"1", "2"}) {
    const RunResult r =
        RunFjord("prep --input " + Path("in.txt") + " --out " + Path(std::string("out") + threads) +
                 " --shard-tokens 1000 --threads " + threads + " --val-docs 20 --quiet");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr("fjord prep: 200 documents (" + std::to_string(text.size()) + " bytes)"));
  }
  const size_t train_tokens =
      text.size() - 20 * std::string("line 0 of the corpus\n").size() - 10;  // lines 10..19 are 1 longer
  size_t shards = 0;
  for (const auto& e : fs::directory_iterator(Path("out1"))) {
    const std::string name = e.path().filename().string();
    std::ifstream a(e.path(), std::ios::binary), b(Path("out2/" + name), std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}),
              std::string(std::istreambuf_iterator<char>(b), {}))
        << name;
    shards += name.rfind("train_", 0) == 0;
  }
  EXPECT_EQ(shards, (train_tokens + 999) / 1000);
}

TEST_F(CliTest, SampleRefusesNegativeTemperatureBeforeOpeningTheCheckpoint) {
  const RunResult r = RunFjord("sample --checkpoint " + Path("nope") + " --temperature -1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord sample: error: --temperature must be >= 0 (0 is greedy), got -1"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("does not exist")));  // the option is checked first
}

// A job spec that is a directory, or a file that cannot be read (a socket: open() fails with ENXIO).
TEST_F(CliTest, JobSpecThatIsADirectoryOrUnreadableIsRefusedByPath) {
  fs::create_directories(Path("spec_dir"));
  RunResult r = RunFjord("train " + Path("spec_dir"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("job spec " + Path("spec_dir") + " is a directory; give the *.textproto file"));

  const std::string socket_path = Path("spec.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(socket_path.size(), sizeof(addr.sun_path)) << socket_path;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  r = RunFjord("train " + socket_path);
  ::close(fd);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("job spec " + socket_path + ": cannot read it ("));
  EXPECT_THAT(r.output, HasSubstr("check that it is a readable file"));
  EXPECT_FALSE(fs::exists(Path("run")));
}

TEST_F(CliTest, AuditVerifyOfAMissingLogNamesTheFile) {
  const RunResult r = RunFjord("audit verify " + Path("none.jsonl"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fjord audit verify: error: cannot open audit log " + Path("none.jsonl") +
                                  ": No such file or directory; check the path"));
  EXPECT_FALSE(fs::exists(Path("none.jsonl")));
}

// An integer environment variable that is not one: named with its value, exit 2, before any work.
TEST_F(CliTest, NonIntegerRankEnvironmentVariableIsNamed) {
  const RunResult r = testing::Shell("env SLURM_NTASKS=many " + std::string(FJORD_BINARY) +
                                     " bench allreduce -b 8 -e 8 -n 1 -w 0 --json " + Path("b.json"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_THAT(
      r.output,
      HasSubstr(
          "fjord: environment variable SLURM_NTASKS='many' is not an integer; unset it or give a number"));
  EXPECT_FALSE(fs::exists(Path("b.json")));
}

// A failure on every rank of a multi-rank job after the communicator exists ends the job through
// the communicator's abort, which names the rank and its host; the exit code is non-zero.
TEST_F(CliTest, MultiRankTrainFailureAbortsNamingRankAndHost) {
  Write("job.textproto", "data { train: \"" + Path("nothing_*.bin") +
                             "\" }\nmodel { n_layer: 1 n_head: 1 n_embd: 8 seq_len: 8 vocab_size: 256 }\n"
                             "run_dir: \"" +
                             Path("run") + "\"\n");
  const RunResult r = testing::Shell(testing::Mpirun(2) + " train " + Path("job.textproto"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output,
              ::testing::MatchesRegex("(.|\n)*fjord: rank [01] \\(host [^)]+\\) aborts the job: fjord "
                                      "train: error on rank [01]: (.|\n)*"));
  EXPECT_THAT(r.output, HasSubstr("nothing_*.bin"));
}

TEST_F(CliTest, DemoRunsEndToEnd) {
  RunResult r = RunFjord("demo --dir " + Path("demo") + " --set train.steps=20 --set train.eval_every=10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("step    20/20"));
  EXPECT_TRUE(fs::exists(Path("demo/checkpoints/step_000020/model.bin")));
  EXPECT_LT(LastValLoss(Path("demo/metrics.jsonl")), std::log(256.0));
}

// The foundation's learning check on real text: byte-level tinyshakespeare, val loss below
// 2.5 nats per byte within a few minutes on 2 cores.
TEST_F(CliTest, TinyShakespeareValLossBelow2p5) {
  const std::string corpus = std::string(FJORD_SOURCE_DIR) + "/../shared/data/tinyshakespeare.txt";
  if (!fs::exists(corpus)) GTEST_SKIP() << corpus << " is absent";
  // Documents are the speeches (paragraphs), as llm.c's tinyshakespeare.py cuts the text; every
  // tenth one is validation.
  RunResult r = RunFjord("prep --input " + corpus + " --out " + Path("data") +
                         " --val-fraction 0.1 --delimiter '\\n\\n'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Write("job.textproto",
        "model { n_layer: 2 n_head: 4 n_embd: 128 seq_len: 64 vocab_size: 256 }\n"
        "train { micro_batch: 16 steps: 300 lr: 3e-3 warmup_steps: 20 min_lr: 3e-4 eval_every: 300 "
        "eval_batches: 20 }\n"
        "data { train: \"" +
            Path("data/train_*.bin") + "\" val: \"" + Path("data/val_*.bin") +
            "\" }\n"
            "run_dir: \"" +
            Path("run") + "\"\n");
  r = RunFjord("train " + Path("job.textproto") + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LT(LastValLoss(Path("run/metrics.jsonl")), 2.5);
}

}  // namespace
}  // namespace fjord
