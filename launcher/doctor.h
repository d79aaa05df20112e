// `fjord doctor`: is this node (under mpirun: every node of the job) fit for a tenant's job? One table
// of checks, each OK, WARN or FAIL with what to do: MPI, the CUDA driver and each GPU, NCCL and cuBLAS,
// the node identity (the rank gate's own checks, as `fjord node show`), free space for the job's
// checkpoints, the inventory's lease directory, clock synchronisation, unprivileged user namespaces,
// and OpenMP threads against cores. GPU libraries are probed with dlopen, so the same binary checks
// a CPU-only node (where "no GPU" is a WARN, not a FAIL) and a GPU node.
#pragma once

#include <string>

#include "proto/doctor.pb.h"

namespace CLI {
class App;
}

namespace fjord {

struct DoctorOptions {
  std::string inventory;   // --inventory INV: its lease_dir is checked ("" = not checked, WARN)
  std::string job;         // --job JOB: free space for its checkpoints ("" = not checked, WARN)
  bool json = false;       // print the report as JSON (proto DoctorReport) instead of the table
  bool mpi_probe = false;  // internal: the 2-rank MPI probe that a lone `doctor` starts under mpirun
};

// This node's checks. `world_size` > 1: started by a launcher (the MPI row says so instead of
// starting its own 2-rank probe).
proto::DoctorReport CheckThisNode(const DoctorOptions& options, int world_size);

// The table: host, check, level, detail, and "-> what to do" under each WARN and FAIL, then a count.
std::string DoctorTable(const proto::DoctorReport& report);

// Runs the checks on every rank (under mpirun: gathered to rank 0, one report per host) and prints
// the table (or JSON) on rank 0. Returns 1 on every rank when any check failed on any node, else 0.
int RunDoctor(const DoctorOptions& options);

// `fjord doctor [--inventory INV] [--job JOB] [--json]` as a subcommand of `app` (launcher/cli.h).
void AddDoctorCommand(CLI::App& app);

}  // namespace fjord
