// Fatal checks for invariants and for foreign APIs (CUDA, cuBLAS, NCCL, MPI, OpenBLAS).
//
// A failed check is a bug or a broken machine, not bad user input (that gets a Status): it prints
// the statement, file:line, rank, host and what the foreign API said, then aborts. Never put a
// call with side effects inside an assert(); use these, which always evaluate their argument.
#pragma once

#include <string>

namespace fjord {

// Prints "fjord: FATAL at FILE:LINE (rank R on HOST): WHAT" to stderr and aborts.
[[noreturn]] void FatalError(const char* file, int line, const std::string& what);

// "rank R on HOST", from the launcher's environment (Open MPI, PMIx or Slurm); "rank ? on HOST"
// when no launcher set a rank.
std::string WhereAmI();

}  // namespace fjord

// Aborts with `msg` (a std::string expression) when `cond` is false.
#define FJORD_CHECK(cond, msg)                                                                       \
  do {                                                                                               \
    if (!(cond))                                                                                     \
      ::fjord::FatalError(__FILE__, __LINE__, std::string("check failed: ") + #cond + ": " + (msg)); \
  } while (0)

// Generic check for a foreign API call: `ok_expr` says whether `result` is success and
// `describe(result)` turns the code into text. Backends wrap it (FJORD_CUDA_CHECK, ...).
#define FJORD_API_CHECK_GEN(stmt, result_type, ok_value, describe)                           \
  do {                                                                                       \
    result_type fjord_api_result_ = (stmt);                                                  \
    if (fjord_api_result_ != (ok_value))                                                     \
      ::fjord::FatalError(__FILE__, __LINE__,                                                \
                          std::string(#stmt) + " failed: " + (describe(fjord_api_result_))); \
  } while (0)
