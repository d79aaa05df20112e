// The one accessor for environment variables. Every variable fjord reads is listed, with what it
// means, in kEnvVars (common/env.cc); reading an unlisted name is a programming error and aborts,
// so the list in docs/ARCHITECTURE.md cannot drift from the code.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace fjord {

struct EnvVarDoc {
  const char* name;
  const char* meaning;
};

// All variables fjord reads, in documentation order. Terminated by {nullptr, nullptr}.
extern const EnvVarDoc kEnvVars[];

// Returns the value of `name`, or nullopt when it is unset or empty. `name` must be in kEnvVars.
std::optional<std::string> GetEnv(std::string_view name);

// Integer variant: nullopt when unset; aborts with a clear message when set but not an integer.
std::optional<long> GetEnvInt(std::string_view name);

// The value of test hook `name` in FJORD_TEST_HOOK ("name=value,name2=value2"), or nullopt.
// Every hook found is announced once on stderr ("fjord: TEST HOOK ..."), so a run that used one
// can never pass for a normal run.
std::optional<std::string> TestHook(std::string_view name);

}  // namespace fjord
