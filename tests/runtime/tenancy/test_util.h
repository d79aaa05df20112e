// Helpers shared by the tenancy tests: a scratch directory per test, files, environment overrides,
// node identities and reading audit logs back.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/host.h"
#include "common/json.h"
#include "runtime/tenancy/tenancy.h"
#include "tests/launcher/cli_util.h"

namespace fjord::testing {

namespace fs = std::filesystem;

// Sets (or unsets, with nullopt) an environment variable for the scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A scratch directory named after the running test, removed afterwards.
class TenancyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path("/tmp") / ("fjord_tenancy_" + std::string(info->test_suite_name()) + "_" + info->name() +
                               "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // Writes a node identity for this host (or `host`) and returns its path.
  std::string Identity(const std::string& jurisdiction, const std::string& site,
                       const std::string& name = "node", std::string host = "") const {
    if (host.empty()) host = ThisHostname();
    const std::string path = Path(name + ".textproto");
    WriteText(path,
              "hostname: \"" + host + "\"\njurisdiction: \"" + jurisdiction + "\"\nsite: \"" + site + "\"\n");
    return path;
  }

  fs::path dir_;
};

// `s` as one single-quoted shell word.
inline std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The events of an audit log, in order.
inline std::vector<std::string> AuditEvents(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    StatusOr<JsonValue> v = ParseJson(line, path);
    if (!v.ok()) {
      out.push_back("<unparsable>");
      continue;
    }
    const JsonValue* e = v->Find("event");
    out.push_back(e ? e->text() : "<no event>");
  }
  return out;
}

// The lines of an audit log whose event is `event`.
inline std::vector<std::string> AuditLines(const std::string& path, const std::string& event) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"event\":\"" + event + "\"") != std::string::npos) out.push_back(line);
  }
  return out;
}

inline int Count(const std::vector<std::string>& v, const std::string& x) {
  int n = 0;
  for (const std::string& s : v) n += s == x;
  return n;
}

// A test cluster brought up by a script (scripts/netns-cluster.sh, scripts/slurm-cluster.sh
// `up|down STATE`): the CTest fixture's, whose STATE the fixture passes in `state_env`, or, when
// the test binary runs by hand, one made here (in /tmp/PREFIX-PID) and taken down at the end.
// skip() says why there is none (the script's skip-reason), for GTEST_SKIP.
class ScriptCluster : public ::testing::Environment {
 public:
  ScriptCluster(std::string script, std::string state_env, std::string prefix, std::string fixture)
      : script_(std::move(script)),
        state_env_(std::move(state_env)),
        prefix_(std::move(prefix)),
        fixture_(std::move(fixture)) {}
  void SetUp() override {
    if (const char* s = std::getenv(state_env_.c_str())) {
      state_ = s;
    } else {
      state_ = "/tmp/" + prefix_ + "-" + std::to_string(::getpid());
      own_ = true;
      RunResult up = Shell("bash " + script_ + " up " + state_);
      if (up.exit_code != 0) skip_ = up.output;
    }
    if (skip_.empty() && !fs::exists(state_ + "/ready")) {
      skip_ = fs::exists(state_ + "/skip-reason")
                  ? ReadText(state_ + "/skip-reason")
                  : "no cluster in " + state_ + " (" + fixture_ + " did not run)";
    }
  }
  void TearDown() override {
    if (own_) (void)Shell("bash " + script_ + " down " + state_ + " && rm -rf " + state_);
  }
  const std::string& state() const { return state_; }
  const std::string& skip() const { return skip_; }

 private:
  const std::string script_, state_env_, prefix_, fixture_;
  std::string state_, skip_;
  bool own_ = false;
};

}  // namespace fjord::testing
