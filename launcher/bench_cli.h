// `fjord bench COLL [options]`: the interconnect benchmark's command line, with nccl-tests' short
// options, over the engine in collectives/bench/bench.h. docs/BENCH.md is the user's manual.
#pragma once

namespace CLI {
class App;
}

namespace fjord {

// Adds `fjord bench` to `app` (launcher/cli.h). Every rank of the job runs it; rank 0 prints the
// table and writes --json. Its exit code: 0 when every check passed, 1 when results were wrong or
// the run failed, 2 for bad arguments (with the usage on stderr).
void AddBenchCommand(CLI::App& app);

}  // namespace fjord
