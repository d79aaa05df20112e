// The fjord command line, on CLI11: one App, one subcommand per task, each defined once (its
// options, their value names and descriptions). `fjord --help` and `fjord SUB --help` are generated
// from those definitions, as is the usage line every argument error ends with. Argument errors
// (unknown option, missing value, a value that is not a number, a command's own checks) exit 2 with
// "fjord SUB: error: WHAT\nusage: ..." on stderr; the task's own failures exit 1.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>

namespace fjord::cli {

// A subcommand: its CLI11 definition, the action run after a clean parse (returns the exit code),
// and what its usage line starts with when the command runs under a launcher ("mpirun -np N ").
struct Command : CLI::App {
  Command(const std::string& name, const std::string& summary) : CLI::App(summary, name) {}
  std::function<int()> run;
  std::string launcher;
};

// The fjord application: the formatter and the option defaults every subcommand shares (a
// repeated single-value option keeps its last value, as getopt does).
std::unique_ptr<CLI::App> MakeApp();

// Adds the subcommand `name` to `parent` (the app, or a command with subcommands of its own).
Command* AddCommand(CLI::App& parent, const std::string& name, const std::string& summary);

// Marks an option the command cannot do without: shown without brackets in the usage line and
// under "Required" in the help. The command checks it itself, with a message that says what it is.
CLI::Option* Required(CLI::Option* option);

// Checks that a value converts to T (within [min, max]), so that a bad value reads "--tokens 'many'
// is not a whole number" (or "is not a number" for a floating-point T).
template <typename T>
CLI::Validator Number(T min = std::numeric_limits<T>::lowest(), T max = std::numeric_limits<T>::max()) {
  return CLI::Validator(
      [min, max](std::string& text) {
        T value;
        if (CLI::detail::lexical_cast(text, value) && value >= min && value <= max) return std::string();
        return "'" + text + "' is not a " + (std::is_floating_point_v<T> ? "number" : "whole number");
      },
      "");
}

// An option holding a number: `--tokens N`.
template <typename T>
CLI::Option* AddNumber(CLI::App& command, const std::string& name, T& value, const std::string& value_name,
                       const std::string& description, T min = std::numeric_limits<T>::lowest(),
                       T max = std::numeric_limits<T>::max()) {
  return command.add_option(name, value, description)->type_name(value_name)->check(Number<T>(min, max));
}

// The usage line of `command`: "fjord train JOB.textproto [--set PATH=VALUE]... [--resume] ...".
std::string Usage(const CLI::App& command);

// Prints "fjord SUB: error: MESSAGE\nusage: USAGE" on stderr and returns 2.
int UsageError(const CLI::App& command, const std::string& message);

// Parses argv and runs the chosen command; returns the process exit code. No command: the help on
// stderr, exit 2; `help`, --help or -h: the help on stdout, exit 0 (SUB --help and `help SUB`: that
// command's).
int Run(CLI::App& app, int argc, char** argv);

}  // namespace fjord::cli
