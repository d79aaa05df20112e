// Energy in `fjord train` (job spec `energy`: counters at window ends, summed over ranks, in
// metrics.jsonl and the progress line) and `fjord report RUN_DIR` (the training record, bound to
// the audit log). Oracles: the job's own geometry for tokens, GPT-2's closed-form parameter count
// for FLOPs, sha256sum for digests, `fjord audit verify` for the head, protobuf's JSON parser for
// the record.
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/host.h"
#include "common/json.h"
#include "proto/record.pb.h"
#include "tests/launcher/cli_util.h"
#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::Mpirun;
using ::testing::Not;
using testing::ReadText;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

constexpr int kB = 2, kT = 32, kC = 32, kL = 1, kVocab = 256;

// Every line of a metrics.jsonl as parsed JSON.
std::vector<JsonValue> MetricsLines(const std::string& path) {
  std::vector<JsonValue> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    StatusOr<JsonValue> v = ParseJson(line, path);
    EXPECT_TRUE(v.ok()) << line;
    if (v.ok()) out.push_back(*v);
  }
  return out;
}

double Num(const JsonValue& v, const char* key) {
  const JsonValue* f = v.Find(key);
  return f == nullptr ? NAN : f->number();
}

std::string Sha256Sum(const std::string& path) {
  RunResult r = Shell("sha256sum " + testing::ShellQuote(path));
  return r.output.substr(0, 64);
}

class EnergyReportTest : public testing::TenancyTest {
 protected:
  void SetUp() override {
    TenancyTest::SetUp();
    identity_ = Identity("NO", "osl1");
    std::string text;
    for (int i = 0; i < 400; ++i) text += "the fjord runs on hydro power, line " + std::to_string(i) + "\n";
    WriteText(Path("input.txt"), text);
    fs::create_directories(Path("no_rapl"));
  }
  RunResult Fjord(const std::string& args, const std::string& env = "") {
    return Shell(env + " FJORD_NODE_IDENTITY=" + identity_ + " " + std::string(FJORD_BINARY) + " " + args);
  }
  // A job of `steps` steps; `tenant` adds tenant acme resident in NO (data prepped for it).
  std::string Job(int steps, const std::string& energy, bool tenant, const std::string& extra = "") {
    const std::string data = tenant ? "tdata" : "data";
    if (!fs::exists(Path(data))) {
      RunResult r = Fjord("prep --input " + Path("input.txt") + " --out " + Path(data) +
                          (tenant ? " --tenant acme --jurisdiction NO" : ""));
      EXPECT_EQ(r.exit_code, 0) << r.output;
    }
    WriteText(
        Path("job.textproto"),
        "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
        "train { micro_batch: 2 steps: " +
            std::to_string(steps) + " lr: 1e-3 threads: 1 }\ndata { train: \"" + Path(data + "/train_*.bin") +
            "\" }\nrun_dir: \"" + Path("run") + "\"\nenergy { " + energy + " }\n" +
            (tenant ? "tenant { id: \"acme\" }\nresidency { allowed_jurisdictions: \"NO\" }\n" : "") + extra);
    return Path("job.textproto");
  }
  std::string identity_;
};

// Windows of 3 steps over 7 steps close at 3, 6 and 7; without counters each rank is estimated at
// energy.rank_power_w, so the window's power is exactly that and J/token its joules over the window's
// tokens (the job's geometry), labelled as an estimate everywhere.
TEST_F(EnergyReportTest, WindowsWithoutCountersAreEstimatedOnlyFromADeclaredPower) {
  const std::string no_rapl = "powercap_root: \"" + Path("no_rapl") + "\" window_steps: 3";
  RunResult r = Fjord("train " + Job(7, no_rapl + " rank_power_w: 50", false));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("J/tok ~"));
  EXPECT_THAT(r.output, HasSubstr("(est.)"));
  EXPECT_THAT(r.output, HasSubstr("has no intel-rapl:N zone"));
  std::vector<JsonValue> lines = MetricsLines(Path("run/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 7u);
  std::map<int, int> windows;  // closing step -> first step
  for (const JsonValue& m : lines) {
    const int step = static_cast<int>(Num(m, "step"));
    EXPECT_EQ(Num(m, "tokens"), kB * kT) << step;
    if (m.Find("energy_from_step") == nullptr) continue;
    windows[step] = static_cast<int>(Num(m, "energy_from_step"));
    EXPECT_EQ(m.Find("energy_j"), nullptr);  // nothing was measured
    EXPECT_EQ(Num(m, "energy_measured_ranks"), 0);
    // Exact but for the estimate's rounding to whole microjoules and the printed digits.
    EXPECT_NEAR(Num(m, "avg_power_w"), 50.0, 50.0 * (0.5e-6 / Num(m, "energy_estimated_j") + 1e-8));
    const double tokens = (step - windows[step] + 1) * kB * kT;
    EXPECT_NEAR(Num(m, "j_per_token"), Num(m, "energy_estimated_j") / tokens, 1e-8 * Num(m, "j_per_token"));
    EXPECT_GT(Num(m, "energy_estimated_j"), 0);
  }
  EXPECT_EQ(windows, (std::map<int, int>{{3, 1}, {6, 4}, {7, 7}}));
  // TensorBoard has the same scalars (tags are stored as text in the event file).
  std::string events;
  for (const fs::directory_entry& e : fs::directory_iterator(Path("run"))) {
    if (e.path().filename().string().rfind("events.out.tfevents", 0) == 0)
      events += ReadText(e.path().string());
  }
  EXPECT_THAT(events, HasSubstr("energy/j_per_token"));
  EXPECT_THAT(events, HasSubstr("energy/avg_power_w"));
  EXPECT_THAT(events, HasSubstr("energy/energy_estimated_j"));
  EXPECT_THAT(ReadText(Path("run/metrics.jsonl")), Not(HasSubstr("\"energy_j\"")));

  // Without a declared power: "not measured", no figure at all.
  r = Fjord("train " + Job(3, no_rapl, false) + " --overwrite");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("J/tok not measured"));
  lines = MetricsLines(Path("run/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2].Find("j_per_token"), nullptr);
  EXPECT_EQ(lines[2].Find("energy_estimated_j"), nullptr);
  EXPECT_EQ(Num(lines[2], "energy_measured_ranks"), 0);

  // energy.measure: false reads nothing and reports nothing.
  r = Fjord("train " + Job(2, "measure: false", false) + " --overwrite");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, Not(HasSubstr("J/tok")));
  EXPECT_THAT(ReadText(Path("run/metrics.jsonl")), Not(HasSubstr("energy")));
}

// A RAPL counter that a writer advances by 1000 µJ at a time while the job runs: every window's
// energy is a whole number of those steps, together they are no more than the writer added, and
// the window in which rank 0 slept a second saw some.
TEST_F(EnergyReportTest, AMovingRaplCounterIsMeasuredWindowByWindow) {
  const std::string zone = Path("rapl/intel-rapl:0");
  WriteText(zone + "/name", "package-0\n");
  WriteText(zone + "/max_energy_range_uj", "262143328850\n");
  WriteText(zone + "/energy_uj", "5000\n");
  // The writer: a fresh file renamed into place, so a read sees the old value or the new one.
  const std::string writer = "i=5000; while [ ! -e " + Path("stop") + " ]; do i=$((i+1000)); echo $i > " +
                             zone + "/e.tmp; mv " + zone + "/e.tmp " + zone + "/energy_uj; sleep 0.01; done";
  FILE* bg = testing::Start("bash -c " + testing::ShellQuote(writer));
  ASSERT_NE(bg, nullptr);
  // Rank 0 sleeps a second in step 3 (test hook), so the window of steps 3..4 spans many writes.
  RunResult r = Fjord("train " + Job(6, "powercap_root: \"" + Path("rapl") + "\" window_steps: 2", false),
                      "FJORD_TEST_HOOK=sleep_in_step=0:3:1");
  WriteText(Path("stop"), "");
  testing::Finish(bg);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const uint64_t last = std::stoull(ReadText(zone + "/energy_uj"));
  EXPECT_THAT(r.output, HasSubstr("rank 0 reads RAPL package-0"));
  double total = 0;
  int windows = 0;
  for (const JsonValue& m : MetricsLines(Path("run/metrics.jsonl"))) {
    if (m.Find("energy_from_step") == nullptr) continue;
    ++windows;
    if (Num(m, "step") == 4) {
      EXPECT_GT(Num(m, "energy_j"), 0) << "the window with the second's sleep";
    }
    EXPECT_EQ(Num(m, "energy_measured_ranks"), 1);
    EXPECT_EQ(m.Find("energy_estimated_j"), nullptr);
    const double j = Num(m, "energy_j");
    EXPECT_NEAR(j * 1000.0, std::round(j * 1000.0), 1e-6) << "a whole number of the writer's 1000 µJ";
    EXPECT_NEAR(Num(m, "j_per_token"), j / (2 * kB * kT), 1e-8 * Num(m, "j_per_token"));
    total += j;
  }
  EXPECT_EQ(windows, 3);
  EXPECT_GT(total, 0);
  EXPECT_LE(total, (last - 5000) / 1e6);
}

// Two ranks under mpirun, each estimated at 50 W: the window's sum is the two ranks' (one
// collective), so its power is twice one rank's. Each rank times its own window, which differ by
// the skew of leaving a collective (a millisecond here, against steps of a few): rank 1 sleeps a
// second in step 1 (test hook; rank 0 waits in the gradient reduction), so that the first window
// spans a second on both and the ranks' sum shows in its power to 2%.
TEST_F(EnergyReportTest, TheWindowIsSummedOverRanksUnderMpirun) {
  Job(4, "powercap_root: \"" + Path("no_rapl") + "\" window_steps: 2 rank_power_w: 50", false);
  RunResult r =
      Shell("FJORD_NODE_IDENTITY=" + identity_ + " " + Mpirun(2, "FJORD_TEST_HOOK=sleep_in_step=1:1:1") +
            " train " + Path("job.textproto") + " --set train.global_batch=4 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int windows = 0;
  for (const JsonValue& m : MetricsLines(Path("run/metrics.jsonl"))) {
    if (m.Find("energy_from_step") == nullptr) continue;
    ++windows;
    EXPECT_EQ(Num(m, "energy_ranks"), 2);
    EXPECT_EQ(Num(m, "energy_measured_ranks"), 0);
    ASSERT_NE(m.Find("energy_estimated_j"), nullptr);
    if (Num(m, "step") == 2) {
      EXPECT_GT(Num(m, "energy_estimated_j"), 2 * 50.0 * 1.0);
      EXPECT_NEAR(Num(m, "avg_power_w"), 100.0, 2.0);
    }
    EXPECT_NEAR(Num(m, "j_per_token"), Num(m, "energy_estimated_j") / (2 * 4 * kT),
                1e-8 * Num(m, "j_per_token"));
  }
  EXPECT_EQ(windows, 2);
}

TEST_F(EnergyReportTest, BadEnergySettingsAreRefusedNamingTheField) {
  RunResult r = Fjord("train " + Job(2, "window_steps: 0", false));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("energy.window_steps = 0 must be at least 1"));
  r = Fjord("train " + Job(2, "rank_power_w: -3", false));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("energy.rank_power_w = -3 must be a finite number >= 0"));
  EXPECT_FALSE(fs::exists(Path("run/metrics.jsonl")));
}

class ReportTest : public EnergyReportTest {
 protected:
  // A tenant job of 4 steps run as 2, then resumed to 4; windows of 2 steps estimated at 10 W.
  void TrainAndResume() {
    const std::string energy = "powercap_root: \"" + Path("no_rapl") + "\" window_steps: 2 rank_power_w: 10";
    RunResult r = Fjord("train " + Job(2, energy, true, "checkpoint { every_steps: 2 keep_last: 0 }\n"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = Fjord("train " + Job(4, energy, true, "checkpoint { every_steps: 2 keep_last: 0 }\n") +
              " --resume --accept-changes");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  std::string Log() const { return Path("run/audit.jsonl"); }
};

TEST_F(ReportTest, TheRecordHoldsComputeEnergyDataAndPlacesAndIsInTheAuditLog) {
  ASSERT_NO_FATAL_FAILURE(TrainAndResume());
  RunResult verify = Fjord("audit verify " + Log());
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  const std::string head = verify.output.substr(verify.output.find("head ") + 5, 64);
  WriteText(Path("inventory.textproto"),
            "node { hostname: \"" + ThisHostname() +
                "\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n"
                "site_energy { site: \"osl1\" source: \"hydro power\" emission_factor_g_per_kwh: 11 "
                "reference: \"contract 2026-17\" }\n");
  RunResult r = Fjord("report " + Path("run") + " --inventory " + Path("inventory.textproto"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string md = ReadText(Path("run/training_record.md"));
  EXPECT_THAT(r.output, HasSubstr(md));

  proto::TrainingRecord record;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(ReadText(Path("run/training_record.json")), &record).ok());
  // Compute: GPT-2's parameters in closed form (padded vocabulary), 6 N + 6 L C T per token.
  const double padded_vocab = std::ceil(kVocab / 128.0) * 128.0;
  const double n = padded_vocab * kC + kT * kC + kL * (12.0 * kC * kC + 13.0 * kC) + 2.0 * kC;
  EXPECT_EQ(record.model().parameters(), static_cast<int64_t>(n));
  const int64_t tokens = 4 * kB * kT;
  EXPECT_EQ(record.compute().tokens(), tokens);
  EXPECT_EQ(record.compute().steps(), 4);
  EXPECT_DOUBLE_EQ(record.compute().total_flops(), (6.0 * n + 6.0 * kL * kC * kT) * tokens);
  EXPECT_THAT(record.compute().flops_formula(), HasSubstr("6 N + 6 L C T"));
  ASSERT_EQ(record.compute().device_hours_size(), 1);
  EXPECT_GT(record.compute().device_hours(0).hours(), 0);
  // Data: the manifest prep wrote, by its digest; the tenant and residency.
  ASSERT_EQ(record.data().manifest_size(), 1);
  EXPECT_EQ(record.data().manifest(0).sha256(), Sha256Sum(Path("tdata/manifest.textproto")));
  EXPECT_EQ(record.data().tenant(), "acme");
  EXPECT_EQ(record.data().tokens_seen(), tokens);
  // Checkpoints (steps 2 and 4) by their manifest's digest.
  ASSERT_EQ(record.checkpoint_size(), 2);
  EXPECT_EQ(record.checkpoint(1).step(), 4);
  EXPECT_EQ(record.checkpoint(1).manifest_sha256(), Sha256Sum(record.checkpoint(1).dir() + "/manifest.json"));
  // Energy: estimated only, the sum of the windows in metrics.jsonl; the operator's declaration.
  double estimated = 0;
  for (const JsonValue& m : MetricsLines(Path("run/metrics.jsonl"))) {
    if (m.Find("energy_estimated_j") != nullptr) estimated += Num(m, "energy_estimated_j");
  }
  EXPECT_THAT(record.energy().status(), HasSubstr("estimated"));
  EXPECT_FALSE(record.energy().has_measured_j());
  EXPECT_NEAR(record.energy().estimated_j(), estimated, 1e-9);
  EXPECT_NEAR(record.energy().j_per_token(), estimated / tokens, 1e-9 * record.energy().j_per_token());
  ASSERT_EQ(record.energy().declared_size(), 1);
  EXPECT_EQ(record.energy().declared(0).source(), "hydro power");
  EXPECT_EQ(record.energy().declared(0).emission_factor_g_per_kwh(), 11);
  // Where it ran: both starts, with the node identity's jurisdiction and site.
  ASSERT_EQ(record.rank_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(record.rank(i).start(), i + 1);
    EXPECT_EQ(record.rank(i).host(), ThisHostname());
    EXPECT_EQ(record.rank(i).jurisdiction(), "NO");
    EXPECT_EQ(record.rank(i).site(), "osl1");
    EXPECT_TRUE(record.rank(i).identity_override());  // FJORD_NODE_IDENTITY: said in the record
  }
  ASSERT_EQ(record.test_override_size(), 2);  // one per start
  EXPECT_THAT(record.test_override(0), HasSubstr("FJORD_NODE_IDENTITY"));
  EXPECT_THAT(md, HasSubstr("a test record, not evidence"));
  EXPECT_EQ(record.model().job_sha256_size(), 2);  // steps: 2, then steps: 4
  // Bound to the log: it quotes the head verify saw, and its own event holds the file's digest.
  EXPECT_EQ(record.audit().head_hash(), head);
  std::vector<std::string> lines = testing::AuditLines(Log(), "training_record");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("\"sha256\":\"" + Sha256Sum(Path("run/training_record.json")) + "\""));
  EXPECT_THAT(lines[0], HasSubstr("\"md_sha256\":\"" + Sha256Sum(Path("run/training_record.md")) + "\""));
  verify = Fjord("audit verify " + Log());
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
}

// One byte changed in a record of the audit log: the report refuses and writes nothing.
TEST_F(ReportTest, ABrokenAuditChainIsRefused) {
  ASSERT_NO_FATAL_FAILURE(TrainAndResume());
  std::string log = ReadText(Log());
  const size_t at = log.find("\"world_size\":1");
  ASSERT_NE(at, std::string::npos);
  log[at + 13] = '2';
  WriteText(Log(), log, 0600);
  RunResult r = Fjord("report " + Path("run"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("audit log " + Log() + " is broken at line"));
  EXPECT_FALSE(fs::exists(Path("run/training_record.json")));
  EXPECT_FALSE(fs::exists(Path("run/training_record.md")));
}

// One byte changed in a checkpoint's weights: its digest disagrees, and the report refuses.
TEST_F(ReportTest, ACheckpointWhoseDigestDisagreesIsRefused) {
  ASSERT_NO_FATAL_FAILURE(TrainAndResume());
  const std::string weights = Path("run/checkpoints/step_000002/model.bin");
  std::string bytes = ReadText(weights);
  ASSERT_GT(bytes.size(), 2000u);
  bytes[2000] ^= 0x01;
  WriteText(weights, bytes, 0600);
  const std::string log_before = ReadText(Log());
  RunResult r = Fjord("report " + Path("run"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("checkpoint " + Path("run/checkpoints/step_000002")));
  EXPECT_THAT(r.output, HasSubstr("disagrees with its digests"));
  EXPECT_FALSE(fs::exists(Path("run/training_record.json")));
  EXPECT_EQ(ReadText(Log()), log_before);  // nothing appended
}

TEST_F(ReportTest, ARunWithoutCheckpointsOrAnInventoryThatDeclaresNothingIsRefused) {
  RunResult r = Fjord("report " + Path("nowhere"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr(Path("nowhere/checkpoints") + " holds no checkpoint"));
  ASSERT_NO_FATAL_FAILURE(TrainAndResume());
  WriteText(Path("inv.textproto"), "node { hostname: \"" + ThisHostname() +
                                       "\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n"
                                       "site_energy { site: \"osl1\" }\n");
  r = Fjord("report " + Path("run") + " --inventory " + Path("inv.textproto"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("declares neither a source nor an emission_factor_g_per_kwh"));
  EXPECT_FALSE(fs::exists(Path("run/training_record.json")));
}

}  // namespace
}  // namespace fjord
