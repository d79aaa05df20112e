#include "runtime/train/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/json.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// Values that print and read back exactly at the precision of each field.
StepMetrics Full() {
  StepMetrics m;
  m.step = 12;
  m.loss = 2.5;
  m.lr = 0.0003;
  m.grad_norm = 0.75;
  m.tokens_per_s = 1234.5;
  m.ms = 12.25;
  m.exposed_comm_ms = 0.125;
  m.flops_per_token = 1500000;
  m.peak_flops = 2e12;
  m.mfu = 0.0625;
  m.val_loss = 3.25;
  m.epoch = 3;
  m.skipped = true;
  return m;
}

// Full() without the optional fields, as most steps are.
StepMetrics Plain() {
  StepMetrics m = Full();
  m.peak_flops.reset();
  m.mfu.reset();
  m.val_loss.reset();
  m.skipped = false;
  return m;
}

TEST(StepMetricsTest, LineIsTheFormatOfMetricsJsonl) {
  // The text scripts and tests read (tests/launcher/cli_util.h LossTexts takes "loss" as printed).
  EXPECT_EQ(
      StepMetricsJson(Full()),
      "{\"step\": 12, \"loss\": 2.500000, \"lr\": 0.0003, \"grad_norm\": 0.750000, \"tokens_per_s\": 1234.5, "
      "\"ms\": 12.250, \"exposed_comm_ms\": 0.125, \"flops_per_token\": 1500000, \"peak_flops\": "
      "2.000000e+12, "
      "\"mfu\": 0.0625, \"val_loss\": 3.250000, \"epoch\": 3, \"skipped\": true}\n");
  EXPECT_EQ(
      StepMetricsJson(Plain()),
      "{\"step\": 12, \"loss\": 2.500000, \"lr\": 0.0003, \"grad_norm\": 0.750000, \"tokens_per_s\": 1234.5, "
      "\"ms\": 12.250, \"exposed_comm_ms\": 0.125, \"flops_per_token\": 1500000, \"epoch\": 3}\n");
}

TEST(StepMetricsTest, RoundTrips) {
  for (bool optional : {true, false}) {
    const StepMetrics m = optional ? Full() : Plain();
    const std::string line = StepMetricsJson(m);
    // Oracle: the line as common/json.h reads it, field by field.
    StatusOr<JsonValue> doc = ParseJson(line, "line");
    ASSERT_TRUE(doc.ok()) << doc.status().message();
    ASSERT_TRUE(doc->is_object());
    EXPECT_EQ(doc->Find("step")->AsInt64(), 12);
    EXPECT_EQ(doc->Find("loss")->number(), 2.5);
    EXPECT_EQ(doc->Find("lr")->number(), 0.0003);
    EXPECT_EQ(doc->Find("grad_norm")->number(), 0.75);
    EXPECT_EQ(doc->Find("tokens_per_s")->number(), 1234.5);
    EXPECT_EQ(doc->Find("ms")->number(), 12.25);
    EXPECT_EQ(doc->Find("exposed_comm_ms")->number(), 0.125);
    EXPECT_EQ(doc->Find("flops_per_token")->number(), 1500000);
    EXPECT_EQ(doc->Find("epoch")->AsUint64(), 3u);
    if (optional) {
      EXPECT_EQ(doc->Find("peak_flops")->number(), 2e12);
      EXPECT_EQ(doc->Find("mfu")->number(), 0.0625);
      EXPECT_EQ(doc->Find("val_loss")->number(), 3.25);
      EXPECT_TRUE(doc->Find("skipped")->bool_value());
      EXPECT_EQ(doc->object().size(), 13u);
    } else {
      EXPECT_EQ(doc->object().size(), 9u);
    }

    StatusOr<StepMetrics> back = ParseStepMetrics(line, "line");
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(*back, m);
    EXPECT_EQ(StepMetricsJson(*back), line);
  }
}

// A step that closes an energy window (runtime/device/energy.h): the window, the ranks counted, the
// joules and the two ratios, each read back as written; a step that closes none has none of them.
TEST(StepMetricsTest, EnergyFieldsOfAWindowRoundTrip) {
  StepMetrics m = Plain();
  m.tokens = 4096;
  m.energy_from_step = 11;
  m.energy_ranks = 3;
  m.energy_measured_ranks = 2;
  m.energy_j = 812.5;
  m.energy_estimated_j = 40.25;
  m.j_per_token = 0.208;
  m.avg_power_w = 351.5;
  const std::string line = StepMetricsJson(m);
  StatusOr<JsonValue> doc = ParseJson(line, "line");
  ASSERT_TRUE(doc.ok()) << doc.status().message();
  const std::pair<const char*, double> expected[] = {{"tokens", 4096},       {"energy_from_step", 11},
                                                     {"energy_ranks", 3},    {"energy_measured_ranks", 2},
                                                     {"energy_j", 812.5},    {"energy_estimated_j", 40.25},
                                                     {"j_per_token", 0.208}, {"avg_power_w", 351.5}};
  for (const auto& [key, value] : expected) {
    ASSERT_NE(doc->Find(key), nullptr) << key;
    EXPECT_EQ(doc->Find(key)->number(), value) << key;
  }
  StatusOr<StepMetrics> back = ParseStepMetrics(line, "line");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(StepMetricsJson(Plain()).find("energy"), std::string::npos);
  // The progress line: measured and estimated parts are told apart, a partial sum has no J/tok.
  EXPECT_THAT(EnergyProgress(m), HasSubstr("J/tok ~0.208 (est.)"));
  m.energy_estimated_j.reset();
  EXPECT_THAT(EnergyProgress(m), HasSubstr("J/tok 0.208"));
  EXPECT_THAT(EnergyProgress(m), Not(HasSubstr("est.")));
  m.j_per_token.reset();
  EXPECT_THAT(EnergyProgress(m), HasSubstr("2 of 3 ranks measured"));
  m.energy_measured_ranks = 0;
  m.energy_j.reset();
  EXPECT_THAT(EnergyProgress(m), HasSubstr("not measured"));
  EXPECT_EQ(EnergyProgress(Plain()), "");
}

// A step that closes a straggler window: the slow rank, what it is slow in and the times, each
// read back as written; a kind that is neither compute nor communication is refused.
TEST(StepMetricsTest, StragglerFieldsRoundTripAndTheKindIsChecked) {
  for (const char* kind : {"compute", "communication"}) {
    StepMetrics m = Plain();
    m.straggler_rank = 3;
    m.straggler_host = "no2";
    m.straggler_from_step = 1;
    m.straggler_kind = kind;
    (std::string(kind) == "compute" ? m.straggler_compute_ms : m.straggler_comm_ms) = 17.5;
    m.straggler_median_ms = 2.25;
    const std::string line = StepMetricsJson(m);
    StatusOr<JsonValue> doc = ParseJson(line, "line");
    ASSERT_TRUE(doc.ok()) << doc.status().message();
    EXPECT_EQ(doc->Find("straggler_rank")->number(), 3);
    EXPECT_EQ(doc->Find("straggler_host")->text(), "no2");
    EXPECT_EQ(doc->Find("straggler_kind")->text(), kind);
    EXPECT_EQ(
        doc->Find(std::string(kind) == "compute" ? "straggler_compute_ms" : "straggler_comm_ms")->number(),
        17.5);
    EXPECT_EQ(doc->Find(std::string(kind) == "compute" ? "straggler_comm_ms" : "straggler_compute_ms"),
              nullptr);
    EXPECT_EQ(doc->Find("straggler_median_ms")->number(), 2.25);
    StatusOr<StepMetrics> back = ParseStepMetrics(line, "line");
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(*back, m);
    std::string wrong = line;
    wrong.replace(wrong.find(kind), std::string(kind).size(), "network");
    StatusOr<StepMetrics> refused = ParseStepMetrics(wrong, "line");
    ASSERT_FALSE(refused.ok());
    EXPECT_THAT(refused.status().message(), HasSubstr("field \"straggler_kind\""));
  }
}

TEST(StepMetricsTest, NonFiniteValuesAreNull) {
  // A skipped step's gradient norm: JSON has no NaN, so the line stays JSON.
  StepMetrics m = Full();
  m.grad_norm = NAN;
  m.loss = INFINITY;
  const std::string line = StepMetricsJson(m);
  EXPECT_THAT(line, HasSubstr("\"loss\": null, \"lr\": 0.0003, \"grad_norm\": null,"));
  StatusOr<JsonValue> doc = ParseJson(line, "line");
  ASSERT_TRUE(doc.ok()) << doc.status().message();
  EXPECT_TRUE(doc->Find("grad_norm")->is_null());
  StatusOr<StepMetrics> back = ParseStepMetrics(line, "line");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_TRUE(std::isnan(back->grad_norm));
  EXPECT_TRUE(std::isnan(back->loss));
  EXPECT_EQ(back->step, 12);
}

TEST(StepMetricsTest, RefusesAWrongFieldByName) {
  const std::string good = StepMetricsJson(Full());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string line = good;
    line.replace(line.find(from), from.size(), to);
    return ParseStepMetrics(line, "run/metrics.jsonl line 4");
  };
  struct Case {
    std::string from, to, message;
  } cases[] = {
      {"\"loss\": 2.500000", "\"loss\": \"2.5\"",
       "run/metrics.jsonl line 4:1:22: field \"loss\" is string, not a number"},
      {"\"step\": 12", "\"step\": 1.5", "field \"step\" is 1.5, not a step"},
      {"\"step\": 12", "\"step\": -1", "field \"step\" is -1, not a step"},
      {"\"epoch\": 3", "\"epoch\": true", "field \"epoch\" is boolean, not an epoch"},
      {"\"skipped\": true", "\"skipped\": 1", "field \"skipped\" is 1, not a boolean"},
      {"\"mfu\": 0.0625", "\"mfu\": [1]", "field \"mfu\" is array, not a number"},
      {"\"ms\"", "\"msec\"", "field \"msec\" is not a field of a step's metrics"},
      {"\"ms\": 12.250, ", "", "run/metrics.jsonl line 4: no field \"ms\""},
      {"\"step\": 12, ", "", "no field \"step\""},
  };
  for (const Case& c : cases) {
    StatusOr<StepMetrics> m = with(c.from, c.to);
    ASSERT_FALSE(m.ok()) << c.to;
    EXPECT_THAT(m.status().message(), HasSubstr(c.message));
  }
  EXPECT_FALSE(ParseStepMetrics("[1, 2]", "x").ok());
  EXPECT_FALSE(ParseStepMetrics("{\"step\": 5, \"loss\": 2.3", "x").ok());  // a line cut short
  EXPECT_FALSE(ParseStepMetrics("", "x").ok());
}

TEST(MetricsSinkTest, KeepThroughKeepsTheStepsACheckpointCovers) {
  const fs::path dir = fs::temp_directory_path() / ("fjord_metrics_sink_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  MetricsSink sink({.quiet = true, .steps = 5});
  ASSERT_TRUE(sink.OpenJsonl(dir.string(), /*append=*/false).ok());
  std::vector<std::string> lines;
  for (int step = 1; step <= 4; ++step) {
    StepMetrics m = Plain();
    m.step = step;
    ASSERT_TRUE(sink.Record(m).ok());
    lines.push_back(StepMetricsJson(m));
  }
  {
    std::ofstream damaged(dir / "metrics.jsonl", std::ios::app);
    damaged << "{\"step\": 1, \"loss\": 2.3";  // a write cut short by a crash
  }
  ASSERT_TRUE(sink.KeepThrough(2).ok());
  StepMetrics next = Full();
  next.step = 3;
  ASSERT_TRUE(sink.Record(next).ok());
  std::ifstream in(dir / "metrics.jsonl");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, lines[0] + lines[1] + StepMetricsJson(next));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace fjord
