// `fjord run --nproc-per-node N JOB.textproto`: torchrun's one-node case. Starts N ranks of
// `fjord train` on this node through mpirun (each rank passes the node-identity gate as under
// mpirun), and with --max-restarts R runs the job again from its newest intact checkpoint when it
// fails, up to R times, each restart in the job's audit log (launcher/launch/restart.h).
#pragma once

namespace CLI {
class App;
}

namespace fjord {

// Adds `fjord run` to `app` (launcher/cli.h).
void AddRunCommand(CLI::App& app);

}  // namespace fjord
