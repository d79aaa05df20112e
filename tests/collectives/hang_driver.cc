// hang_driver: a job in which one rank does not arrive at a collective, for timeout_test.cc.
//
//   mpirun -np N hang_driver --timeout-ms MS --hang-rank R [--hang-seconds S]
//                            [--mode sync|async|mismatch|stop] [--pid-dir DIR] [--flight-dir DIR]
//
// Every rank runs three good AllReduces (#1..#3), then prints "issuing <op> #4 at unix_ms=T" and
// calls collective #4: a 1 MiB AllReduce (ring) in sync mode, a 64-byte AllReduceAsync (tree)
// waited on in async mode. Rank R instead sleeps S seconds (sync, async), calls a Barrier as
// #4 (mismatch), or stops itself with SIGSTOP, communication thread included (stop). A rank
// whose collective fails prints the error and ends the job with Abort(..., 3), as the trainer
// does. Each rank writes its pid to DIR/rank<N>.pid so the test can check that no process
// outlives the job. With --flight-dir, a failing rank writes its flight recorder to DIR/rank-R.txt.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.h"

int main(int argc, char** argv) {
  using namespace fjord;
  long timeout_ms = 2000, hang_seconds = 60;
  int hang_rank = 1;
  std::string mode = "sync", pid_dir, flight_dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--timeout-ms") {
      timeout_ms = std::atol(value.c_str());
    } else if (flag == "--hang-rank") {
      hang_rank = std::atoi(value.c_str());
    } else if (flag == "--hang-seconds") {
      hang_seconds = std::atol(value.c_str());
    } else if (flag == "--mode") {
      mode = value;
    } else if (flag == "--pid-dir") {
      pid_dir = value;
    } else if (flag == "--flight-dir") {
      flight_dir = value;
    } else {
      std::fprintf(stderr, "hang_driver: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  CommOptions options;
  options.timeout = std::chrono::milliseconds(timeout_ms);
  options.flight_dir = flight_dir;
  StatusOr<std::unique_ptr<Communicator>> made = CreateCommunicator(options, /*force_mpi=*/true);
  if (!made.ok()) {
    std::fprintf(stderr, "hang_driver: %s\n", made.status().message().c_str());
    return 1;
  }
  Communicator& comm = **made;
  const int rank = comm.rank();
  if (!pid_dir.empty()) {
    const std::string path = pid_dir + "/rank" + std::to_string(rank) + ".pid";
    if (FILE* f = std::fopen(path.c_str(), "w")) {
      std::fprintf(f, "%d\n", static_cast<int>(getpid()));
      std::fclose(f);
    }
  }
  std::vector<float> buf(size_t{1} << 18, 1.0f);  // 1 MiB
  for (int i = 0; i < 3; ++i) {
    const Status s = comm.AllReduce(buf.data(), buf.data(), 256, DataType::kF32, ReduceOp::kSum);
    if (!s.ok()) comm.Abort("hang_driver: warm-up failed: " + s.message(), 1);
  }
  const long long now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  Status s;
  if (rank == hang_rank && mode == "mismatch") {
    std::printf("hang_driver: rank %d issuing Barrier #4 at unix_ms=%lld\n", rank, now_ms);
    std::fflush(stdout);
    s = comm.Barrier();
  } else if (rank == hang_rank && mode == "stop") {
    std::printf("hang_driver: rank %d stops itself instead of issuing #4\n", rank);
    std::fflush(stdout);
    raise(SIGSTOP);
    s = comm.AllReduce(buf.data(), buf.data(), buf.size(), DataType::kF32, ReduceOp::kSum);
  } else if (rank == hang_rank) {
    std::printf("hang_driver: rank %d sleeping %ld s instead of issuing #4\n", rank, hang_seconds);
    std::fflush(stdout);
    std::this_thread::sleep_for(std::chrono::seconds(hang_seconds));
    s = comm.AllReduce(buf.data(), buf.data(), buf.size(), DataType::kF32, ReduceOp::kSum);
  } else if (mode == "async") {
    std::printf("hang_driver: rank %d issuing AllReduce #4 at unix_ms=%lld\n", rank, now_ms);
    std::fflush(stdout);
    StatusOr<std::unique_ptr<CommHandle>> h =
        comm.AllReduceAsync(buf.data(), buf.data(), 16, DataType::kF32, ReduceOp::kSum);
    s = h.ok() ? (*h)->Wait() : h.status();
  } else {
    std::printf("hang_driver: rank %d issuing AllReduce #4 at unix_ms=%lld\n", rank, now_ms);
    std::fflush(stdout);
    s = comm.AllReduce(buf.data(), buf.data(), buf.size(), DataType::kF32, ReduceOp::kSum);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "hang_driver: rank %d: the collective returned: %s\n", rank, s.message().c_str());
    comm.Abort("hang_driver: collective #4 failed", 3);
  }
  std::printf("hang_driver: rank %d completed collective #4\n", rank);
  return 0;
}
