// Supervising the job's launcher process (mpirun, srun) for `fjord launch`: its stderr passes
// through launch, which reads the job's failures from it; once the job has failed, mpirun gets a
// short grace period to end it, after which launch ends mpirun's process group itself. Open MPI's
// mpirun does not exit while a host is cut off (it waits for that host's daemon), and the nodes'
// leases must not wait with it (docs/ARCHITECTURE.md, "Launch and node leases"; docs/RELIABILITY.md).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

namespace fjord {

struct Supervision {
  // After the first evidence of a failure, how long mpirun has to end the job itself ...
  std::chrono::milliseconds grace{4000};
  // ... and, once launch has sent SIGTERM to its process group, until SIGKILL.
  std::chrono::milliseconds kill_wait{2000};
};

struct JobOutcome {
  int exit_code = 1;             // the child's exit code, 128 + signal when killed
  std::string cause;             // the first failure seen, in words ("" when none was seen)
  bool ended_by_launch = false;  // mpirun did not end the job within the grace period
  double end_after_s = 0;        // from the first failure seen to the child's end (0: no failure seen)
};

// The failure one line of the job's stderr reports, in words, or "" when it reports none:
//   "fjord: rank R (host H) aborts the job: MSG"  -> "rank R on host H ended the job: MSG"
//   "... noticed that process rank R with PID P on node H exited on signal S (NAME)."
//                                                  -> "rank R on host H killed by signal S (NAME)"
//   "MPI_ABORT was invoked on rank R in communicator ..." -> "rank R called MPI_Abort"
std::string FailureCause(const std::string& line);

// Waits for the child `pid` (in a process group of its own, `pid`), copying what it writes to
// `stderr_fd` (the read end of its stderr pipe; closed here) to launch's stderr as it comes. From the
// first line FailureCause recognizes, `s.grace` later the child's process group gets SIGTERM and,
// `s.kill_wait` after that, SIGKILL; each step is announced on stderr ("fjord launch: ...").
JobOutcome SuperviseChild(pid_t pid, int stderr_fd, const Supervision& s);

}  // namespace fjord
