#include "runtime/model/mfu.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace fjord {

double ModelFlopsPerToken(const GptConfig& config, int seq_len) {
  double n = static_cast<double>(ParamCount(config));
  // An untied input embedding (Llama's model.embed_tokens) is a row lookup, not a matmul; the
  // classifier (lm_head) is counted in n either way.
  if (config.llama() && !config.tie_embeddings)
    n -= static_cast<double>((static_cast<size_t>(config.padded_vocab) * config.n_embd + 15) / 16 * 16);
  return 6.0 * n + 6.0 * config.n_layer * static_cast<double>(config.n_embd) * seq_len;
}

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The value after "key<spaces>:" on the first line of /proc/cpuinfo that starts with key.
std::string CpuinfoField(std::string_view cpuinfo, std::string_view key) {
  std::istringstream in{std::string(cpuinfo)};
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, key.size(), key) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = line.substr(key.size(), colon - key.size());
    if (name.find_first_not_of(" \t") != std::string::npos) continue;  // "cpu MHz" vs "cpu MHz dynamic"
    return line.substr(colon + 1);
  }
  return "";
}

bool HasFlag(const std::string& flags, std::string_view flag) {
  std::istringstream in(flags);
  for (std::string f; in >> f;) {
    if (f == flag) return true;
  }
  return false;
}

}  // namespace

double GpuPeakTflops(std::string_view device_name, Precision precision) {
  // Dense (no sparsity) peaks from NVIDIA's data sheets; the first entry whose key the name
  // contains wins, so the more specific names come first.
  struct Entry {
    const char* key;
    double bf16, fp32;
  };
  static const Entry kTable[] = {
      {"h200 nvl", 835.0, 60.0}, {"h200", 989.0, 67.0},  // also GH200: the same H100-class die
      {"h100 nvl", 835.0, 60.0}, {"h100 pcie", 756.0, 51.0}, {"h100", 989.0, 67.0}, {"a100", 312.0, 19.5},
  };
  const std::string name = Lower(device_name);
  for (const Entry& e : kTable) {
    if (name.find(e.key) != std::string::npos) return precision == Precision::kBf16 ? e.bf16 : e.fp32;
  }
  return 0.0;
}

CpuPeak EstimateCpuPeak(int threads, std::string_view cpuinfo, std::string_view max_freq_khz) {
  CpuPeak peak;
  peak.threads = threads;
  const std::string flags = CpuinfoField(cpuinfo, "flags");
  peak.flops_per_cycle = HasFlag(flags, "avx512f")                         ? 64
                         : HasFlag(flags, "avx2") && HasFlag(flags, "fma") ? 32
                                                                           : 8;
  const double khz = std::atof(std::string(max_freq_khz).c_str());
  if (khz > 0) {
    peak.ghz = khz / 1e6;
  } else {
    peak.ghz = std::atof(CpuinfoField(cpuinfo, "cpu MHz").c_str()) / 1e3;
  }
  if (threads > 0 && peak.ghz > 0) peak.flops = threads * peak.ghz * 1e9 * peak.flops_per_cycle;
  return peak;
}

CpuPeak ThisCpuPeak(int threads) {
  auto read = [](const char* path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  return EstimateCpuPeak(threads, read("/proc/cpuinfo"),
                         read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"));
}

RankPeak CpuRankPeak(const proto::JobSpec& job, int threads) {
  RankPeak peak;
  if (job.train().peak_tflops() > 0) {
    peak.flops = job.train().peak_tflops() * 1e12;
    peak.source = "train.peak_tflops";
    return peak;
  }
  const CpuPeak cpu = ThisCpuPeak(threads);
  peak.flops = cpu.flops;
  char buf[160];
  std::snprintf(buf, sizeof(buf), "CPU estimate: %d threads x %.2f GHz x %d FP32 FLOP/cycle", cpu.threads,
                cpu.ghz, cpu.flops_per_cycle);
  peak.source = cpu.flops > 0 ? buf : "unknown: no CPU clock found; set train.peak_tflops";
  return peak;
}

RankPeak GpuRankPeak(const proto::JobSpec& job, std::string_view device_description) {
  RankPeak peak;
  if (job.train().peak_tflops() > 0) {
    peak.flops = job.train().peak_tflops() * 1e12;
    peak.source = "train.peak_tflops";
    return peak;
  }
  const double tflops = GpuPeakTflops(device_description, Precision::kBf16);
  peak.flops = tflops * 1e12;
  const std::string name(device_description);
  peak.source = tflops > 0 ? "bf16 dense peak of " + name
                           : "unknown: " + name + " is not in the table; set train.peak_tflops";
  return peak;
}

double Mfu(double flops_per_token, double tokens_per_s, double peak_flops) {
  return peak_flops > 0 ? flops_per_token * tokens_per_s / peak_flops : NAN;
}

std::string FormatMfu(double mfu) {
  if (!std::isfinite(mfu)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g%%", mfu * 100.0);
  return buf;
}

}  // namespace fjord
