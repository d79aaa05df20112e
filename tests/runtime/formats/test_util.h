// Helpers shared by the format tests: a scratch directory per test, raw file bytes, and an
// optional Python with numpy for independent readers (skipped cleanly when absent).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

namespace fjord::testing_util {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class ScratchDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = fs::path(::testing::TempDir()) / ("fjord_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Names in the scratch directory containing ".tmp." (left-over temporary files).
  bool HasTempFiles() const {
    for (const auto& e : fs::recursive_directory_iterator(dir_)) {
      if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
    }
    return false;
  }

  fs::path dir_;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
void AppendLe(std::string* bytes, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // hosts are little-endian (the libraries static_assert it)
  bytes->append(b, sizeof(T));
}

// A Python 3 interpreter that can import numpy, or nullopt. /usr/bin/python3 first: a PATH
// python (pyenv, venv) often lacks numpy.
inline std::optional<std::string> PythonWithNumpy() {
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    const std::string cmd = std::string(candidate) + " -c 'import numpy' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return std::string(candidate);
  }
  return std::nullopt;
}

// Runs `command` through the shell with stdout and stderr captured; returns the exit status
// (-1 if it did not exit normally) and sets *output.
inline int RunCaptured(const std::string& command, const std::string& log_path, std::string* output) {
  const int rc = std::system((command + " >" + log_path + " 2>&1").c_str());
  *output = ReadBytes(log_path);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace fjord::testing_util
