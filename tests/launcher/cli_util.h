// Running the fjord binary (directly or under mpirun) from tests, capturing its output.
#pragma once

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace fjord::testing {

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr together
  double seconds = 0.0;
};

// Runs `cmd` through the shell with stderr merged into stdout.
inline RunResult Shell(const std::string& cmd) {
  RunResult r;
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// `fjord ARGS`.
inline RunResult RunFjord(const std::string& args) { return Shell(std::string(FJORD_BINARY) + " " + args); }

// The command prefix that starts fjord on np ranks on this machine (as root too).
inline std::string Mpirun(int np, const std::string& env = "") {
  return "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp " + env + " " +
         std::string(FJORD_MPIEXEC) + " -np " + std::to_string(np) + " --oversubscribe --bind-to none " +
         std::string(FJORD_BINARY);
}

// The "loss" of every line of a metrics.jsonl, as printed (exact text compares bit-identity).
inline std::vector<std::string> LossTexts(const std::string& metrics_path) {
  std::vector<std::string> out;
  std::ifstream in(metrics_path);
  for (std::string line; std::getline(in, line);) {
    const size_t k = line.find("\"loss\": ");
    if (k != std::string::npos) out.push_back(line.substr(k + 8, line.find(',', k) - k - 8));
  }
  return out;
}

}  // namespace fjord::testing
