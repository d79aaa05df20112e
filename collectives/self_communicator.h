// The one-rank communicator: every collective is a local copy (or nothing), so a job started
// without a launcher runs the same trainer code without MPI.
//
// Design: calls are validated exactly as in the MPI backend (so a bug shows up on a laptop too),
// numbered and recorded in the flight recorder, and complete before they return; async handles
// are born complete. There is nothing to wait for, hence no thread and no timeout. Abort()
// flushes and ends this process with the exit code.
#pragma once

#include <memory>

#include "collectives/communicator.h"

namespace fjord {

std::unique_ptr<Communicator> CreateSelfCommunicator(const CommOptions& options);

}  // namespace fjord
