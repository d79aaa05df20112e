// Running the fjord binary (directly or under mpirun) from tests, capturing its output.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fjord::testing {

// A test with a directory of its own, TempDir/PREFIX_TESTNAME_PID, made fresh before and removed after.
class TempDirTest : public ::testing::Test {
 public:
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           (prefix_ + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

// Writes `text` to `path` (creating its directory), then sets its mode.
inline void WriteText(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  ::chmod(path.c_str(), mode);
}

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed
  std::string output;  // stdout and stderr together
  double seconds = 0.0;
  int wait_status = -1;  // as pclose returned it, for WIFEXITED / WTERMSIG
};

// Starts `cmd` through the shell with stderr merged into stdout, without waiting for it (signal
// it meanwhile, then Finish); nullptr when it cannot be started.
inline FILE* Start(const std::string& cmd) { return popen((cmd + " 2>&1").c_str(), "r"); }

// Reads everything a Started command writes and waits for it; seconds count from `started`.
inline RunResult Finish(FILE* pipe,
                        std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now()) {
  RunResult r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  r.wait_status = pclose(pipe);
  r.exit_code = WIFEXITED(r.wait_status) ? WEXITSTATUS(r.wait_status) : 128 + WTERMSIG(r.wait_status);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return r;
}

// Runs `cmd` through the shell with stderr merged into stdout.
inline RunResult Shell(const std::string& cmd) {
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = Start(cmd);
  if (pipe == nullptr) return RunResult();
  return Finish(pipe, t0);
}

// `fjord ARGS`.
inline RunResult RunFjord(const std::string& args) { return Shell(std::string(FJORD_BINARY) + " " + args); }

// The command prefix that starts fjord on np ranks on this machine (as root too).
inline std::string Mpirun(int np, const std::string& env = "") {
  return "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp " + env +
         " " + std::string(FJORD_MPIEXEC) + " -np " + std::to_string(np) +
         " --oversubscribe --bind-to none " + std::string(FJORD_BINARY);
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

// The same losses as numbers.
inline std::vector<double> Losses(const std::string& metrics_path) {
  std::vector<double> out;
  for (const std::string& text : LossTexts(metrics_path)) out.push_back(std::stod(text));
  return out;
}

}  // namespace fjord::testing
