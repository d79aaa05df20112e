#include "runtime/train/metrics.h"

#include <fcntl.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <utility>
#include <vector>

#include "common/json.h"
#include "runtime/model/mfu.h"

namespace fjord {
namespace {

// printf into the end of `out`, however long the result.
template <typename... Args>
void AppendF(std::string& out, const char* format, Args... args) {
  const int n = std::snprintf(nullptr, 0, format, args...);
  if (n <= 0) return;
  const size_t at = out.size();
  out.resize(at + static_cast<size_t>(n) + 1);
  std::snprintf(out.data() + at, static_cast<size_t>(n) + 1, format, args...);
  out.resize(at + static_cast<size_t>(n));
}

// `, "key": value` with printf's `format` for a finite value; null for NaN and infinities (a skipped
// step's gradient norm), which JSON has no literal for.
void AppendNumber(std::string& out, const char* key, const char* format, double value) {
  out += out.size() > 1 ? ", \"" : "\"";
  out += key;
  out += "\": ";
  if (std::isfinite(value)) {
    AppendF(out, format, value);
  } else {
    out += "null";
  }
}

}  // namespace

std::string EnergyProgress(const StepMetrics& m) {
  if (!m.energy_from_step) return "";
  std::string out;
  if (m.j_per_token) {
    const bool estimated = m.energy_estimated_j && *m.energy_estimated_j > 0;
    AppendF(out, " | J/tok %s%.4g%s", estimated ? "~" : "", *m.j_per_token, estimated ? " (est.)" : "");
  } else if (m.energy_measured_ranks && *m.energy_measured_ranks > 0) {
    AppendF(out, " | J/tok - (%.0f of %.0f ranks measured)", *m.energy_measured_ranks,
            m.energy_ranks.value_or(0));
  } else {
    out += " | J/tok not measured";
  }
  return out;
}

std::string StepMetricsJson(const StepMetrics& m) {
  std::string out = "{";
  AppendF(out, "\"step\": %d", m.step);
  AppendNumber(out, "loss", "%.6f", m.loss);
  AppendNumber(out, "lr", "%.6g", m.lr);
  AppendNumber(out, "grad_norm", "%.6f", m.grad_norm);
  AppendNumber(out, "tokens_per_s", "%.1f", m.tokens_per_s);
  AppendNumber(out, "ms", "%.3f", m.ms);
  AppendNumber(out, "exposed_comm_ms", "%.3f", m.exposed_comm_ms);
  AppendNumber(out, "flops_per_token", "%.0f", m.flops_per_token);
  if (m.peak_flops) AppendNumber(out, "peak_flops", "%.6e", *m.peak_flops);
  if (m.mfu) AppendNumber(out, "mfu", "%.6g", *m.mfu);
  if (m.val_loss) AppendNumber(out, "val_loss", "%.6f", *m.val_loss);
  AppendF(out, ", \"epoch\": %llu", static_cast<unsigned long long>(m.epoch));
  if (m.skipped) out += ", \"skipped\": true";
  if (m.tokens) AppendNumber(out, "tokens", "%.0f", *m.tokens);
  if (m.energy_from_step) AppendNumber(out, "energy_from_step", "%.0f", *m.energy_from_step);
  if (m.energy_ranks) AppendNumber(out, "energy_ranks", "%.0f", *m.energy_ranks);
  if (m.energy_measured_ranks) AppendNumber(out, "energy_measured_ranks", "%.0f", *m.energy_measured_ranks);
  if (m.energy_j) AppendNumber(out, "energy_j", "%.6f", *m.energy_j);
  if (m.energy_estimated_j) AppendNumber(out, "energy_estimated_j", "%.6f", *m.energy_estimated_j);
  if (m.j_per_token) AppendNumber(out, "j_per_token", "%.9g", *m.j_per_token);
  if (m.avg_power_w) AppendNumber(out, "avg_power_w", "%.9g", *m.avg_power_w);
  if (m.straggler_rank) {
    AppendNumber(out, "straggler_rank", "%.0f", *m.straggler_rank);
    out += ", \"straggler_host\": " + JsonQuote(m.straggler_host);
  }
  if (m.straggler_from_step) AppendNumber(out, "straggler_from_step", "%.0f", *m.straggler_from_step);
  if (!m.straggler_kind.empty()) out += ", \"straggler_kind\": " + JsonQuote(m.straggler_kind);
  if (m.straggler_compute_ms) AppendNumber(out, "straggler_compute_ms", "%.3f", *m.straggler_compute_ms);
  if (m.straggler_comm_ms) AppendNumber(out, "straggler_comm_ms", "%.3f", *m.straggler_comm_ms);
  if (m.straggler_median_ms) AppendNumber(out, "straggler_median_ms", "%.3f", *m.straggler_median_ms);
  out += "}\n";
  return out;
}

StatusOr<StepMetrics> ParseStepMetrics(std::string_view line, const std::string& source) {
  // The numeric fields every line has, besides step and epoch.
  static constexpr std::pair<const char*, double StepMetrics::*> kNumbers[] = {
      {"loss", &StepMetrics::loss},
      {"lr", &StepMetrics::lr},
      {"grad_norm", &StepMetrics::grad_norm},
      {"tokens_per_s", &StepMetrics::tokens_per_s},
      {"ms", &StepMetrics::ms},
      {"exposed_comm_ms", &StepMetrics::exposed_comm_ms},
      {"flops_per_token", &StepMetrics::flops_per_token}};
  static constexpr std::pair<const char*, std::optional<double> StepMetrics::*> kOptional[] = {
      {"peak_flops", &StepMetrics::peak_flops},
      {"mfu", &StepMetrics::mfu},
      {"val_loss", &StepMetrics::val_loss},
      {"tokens", &StepMetrics::tokens},
      {"energy_from_step", &StepMetrics::energy_from_step},
      {"energy_ranks", &StepMetrics::energy_ranks},
      {"energy_measured_ranks", &StepMetrics::energy_measured_ranks},
      {"energy_j", &StepMetrics::energy_j},
      {"energy_estimated_j", &StepMetrics::energy_estimated_j},
      {"j_per_token", &StepMetrics::j_per_token},
      {"avg_power_w", &StepMetrics::avg_power_w},
      {"straggler_rank", &StepMetrics::straggler_rank},
      {"straggler_from_step", &StepMetrics::straggler_from_step},
      {"straggler_compute_ms", &StepMetrics::straggler_compute_ms},
      {"straggler_comm_ms", &StepMetrics::straggler_comm_ms},
      {"straggler_median_ms", &StepMetrics::straggler_median_ms}};

  FJORD_ASSIGN_OR_RETURN(JsonValue doc, ParseJson(line, source));
  if (!doc.is_object()) {
    return InvalidArgument(source + ": a step's metrics are a JSON object, not " +
                           std::string(doc.type_name()));
  }
  StepMetrics m;
  for (const auto& entry : doc.object()) {
    // Named references, not a structured binding: clang before 16 (the fuzz build's) cannot
    // capture a binding in the lambdas below.
    const std::string& key = entry.first;
    const JsonValue& v = entry.second;
    const std::string field = source + ":" + std::to_string(v.line()) + ":" + std::to_string(v.column()) +
                              ": field \"" + key + "\" is ";
    const std::string found = v.is_number() ? v.text() : v.type_name();
    // A number, or null for a non-finite one (StepMetricsJson).
    auto number = [&]() -> StatusOr<double> {
      if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
      if (!v.is_number()) return InvalidArgument(field + found + ", not a number");
      return v.number();
    };
    auto numeric = [&](const auto& table) -> decltype(&table[0]) {
      for (const auto& row : table) {
        if (key == row.first) return &row;
      }
      return nullptr;
    };
    if (key == "step") {
      const std::optional<int64_t> s = v.AsInt64();
      if (!s || *s < 0 || *s > std::numeric_limits<int>::max())
        return InvalidArgument(field + found + ", not a step");
      m.step = static_cast<int>(*s);
    } else if (key == "epoch") {
      const std::optional<uint64_t> e = v.AsUint64();
      if (!e) return InvalidArgument(field + found + ", not an epoch");
      m.epoch = *e;
    } else if (key == "straggler_host") {
      if (!v.is_string()) return InvalidArgument(field + found + ", not a host name");
      m.straggler_host = v.text();
    } else if (key == "straggler_kind") {
      if (!v.is_string() || (v.text() != "compute" && v.text() != "communication"))
        return InvalidArgument(field + found + ", not \"compute\" or \"communication\"");
      m.straggler_kind = v.text();
    } else if (key == "skipped") {
      if (!v.is_bool()) return InvalidArgument(field + found + ", not a boolean");
      m.skipped = v.bool_value();
    } else if (const auto* required = numeric(kNumbers)) {
      FJORD_ASSIGN_OR_RETURN(m.*(required->second), number());
    } else if (const auto* optional = numeric(kOptional)) {
      FJORD_ASSIGN_OR_RETURN(m.*(optional->second), number());
    } else {
      return InvalidArgument(field + "not a field of a step's metrics");
    }
  }
  std::vector<const char*> required = {"step", "epoch"};
  for (const auto& entry : kNumbers) required.push_back(entry.first);
  for (const char* key : required) {
    if (doc.Find(key) == nullptr) return InvalidArgument(source + ": no field \"" + key + "\"");
  }
  return m;
}

Status MetricsSink::OpenJsonl(const std::string& run_dir, bool append) {
  jsonl_path_ = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  return ReopenJsonl(append ? O_APPEND : O_TRUNC);
}

Status MetricsSink::ReopenJsonl(int how) {
  jsonl_ = Fd(::open(jsonl_path_.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | how, 0644));
  const int err = errno;
  if (jsonl_.get() >= 0) return OkStatus();
  return FailedPrecondition("cannot write " + jsonl_path_ + ": " + std::strerror(err) +
                            (err == ELOOP ? "; it is a symbolic link: remove it" : ""));
}

Status MetricsSink::KeepThrough(int step) {
  jsonl_.Close();
  std::string kept;
  {
    std::ifstream old(jsonl_path_);
    int number = 0;
    for (std::string line; std::getline(old, line);) {
      ++number;
      StatusOr<StepMetrics> m = ParseStepMetrics(line, jsonl_path_ + " line " + std::to_string(number));
      if (!m.ok()) {
        std::fprintf(stderr, "fjord train: dropping a line of metrics.jsonl that does not read back: %s\n",
                     m.status().message().c_str());
      } else if (m->step <= step) {
        kept += line + "\n";
      }
    }
  }
  FJORD_RETURN_IF_ERROR(WriteFileAtomic(jsonl_path_, {{kept.data(), kept.size()}}));
  return ReopenJsonl(O_APPEND);
}

Status MetricsSink::OpenTensorBoard(const std::string& run_dir) {
  FJORD_ASSIGN_OR_RETURN(tensorboard_, TensorBoardWriter::Open(run_dir));
  return OkStatus();
}

void MetricsSink::StartClock(std::chrono::steady_clock::time_point start, int start_step) {
  start_ = start;
  start_step_ = start_step;
}

Status MetricsSink::Record(const StepMetrics& m) {
  const std::string line = StepMetricsJson(m);
  if (jsonl_.get() >= 0) (void)WriteAll(jsonl_.get(), line.data(), line.size(), jsonl_path_);
  if (tensorboard_) {
    const std::pair<const char*, double> scalars[] = {{"train/loss", m.loss},
                                                      {"train/lr", m.lr},
                                                      {"train/grad_norm", m.grad_norm},
                                                      {"perf/tokens_per_s", m.tokens_per_s},
                                                      {"perf/exposed_comm_ms", m.exposed_comm_ms}};
    for (const auto& [tag, value] : scalars) {
      FJORD_RETURN_IF_ERROR(tensorboard_->AddScalar(tag, m.step, static_cast<float>(value)));
    }
    if (m.mfu) FJORD_RETURN_IF_ERROR(tensorboard_->AddScalar("perf/mfu", m.step, static_cast<float>(*m.mfu)));
    if (m.val_loss)
      FJORD_RETURN_IF_ERROR(tensorboard_->AddScalar("val/loss", m.step, static_cast<float>(*m.val_loss)));
    const std::pair<const char*, const std::optional<double>*> energy[] = {
        {"energy/energy_j", &m.energy_j},
        {"energy/energy_estimated_j", &m.energy_estimated_j},
        {"energy/j_per_token", &m.j_per_token},
        {"energy/avg_power_w", &m.avg_power_w}};
    for (const auto& [tag, value] : energy) {
      if (*value) FJORD_RETURN_IF_ERROR(tensorboard_->AddScalar(tag, m.step, static_cast<float>(**value)));
    }
    FJORD_RETURN_IF_ERROR(tensorboard_->Flush());
  }
  if (m.energy_from_step) energy_ = EnergyProgress(m);
  if (options_.json_lines) {
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
  } else if (!options_.quiet &&
             (m.step % options_.log_every == 0 || m.step == options_.steps || m.val_loss)) {
    PrintProgress(m);
  }
  return OkStatus();
}

void MetricsSink::PrintProgress(const StepMetrics& m) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = elapsed / (m.step - start_step_) * (options_.steps - m.step);
  std::printf("step %5d/%d | loss %.4f", m.step, options_.steps, m.loss);
  if (m.val_loss) std::printf(" | val %.4f", *m.val_loss);
  std::printf(" | lr %.2e | norm %.3f | %7.1f ms | %8.0f tok/s | MFU %s", m.lr, m.grad_norm, m.ms,
              m.tokens_per_s, FormatMfu(m.mfu.value_or(NAN)).c_str());
  if (options_.world > 1) std::printf(" | comm %.1f ms", m.exposed_comm_ms);
  if (options_.energy) std::printf("%s", energy_.empty() ? " | J/tok -" : energy_.c_str());
  std::printf(" | eta %dm%02ds\n", static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  std::fflush(stdout);
}

}  // namespace fjord
