// `fjord bench COLL [options]`: the interconnect benchmark's command line, with nccl-tests' short
// options, over the engine in collectives/bench/bench.h. docs/BENCH.md is the user's manual.
#pragma once

namespace fjord {

// One line each for `fjord help`.
extern const char kBenchUsage[];
extern const char kBenchSummary[];

// Runs `fjord bench`; argv holds the arguments after "bench" (argv[0] is the collective or
// "p2p"). Every rank of the job calls it; rank 0 prints the table and writes --json. Returns the
// process exit code: 0 when every check passed, 1 when results were wrong or the run failed,
// 2 for bad arguments (with the usage on stderr).
int RunBenchCommand(int argc, char** argv);

}  // namespace fjord
