#include "common/env.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fjord {

const EnvVarDoc kEnvVars[] = {
    {"OMPI_COMM_WORLD_RANK", "rank of this process when started by Open MPI's mpirun"},
    {"OMPI_COMM_WORLD_SIZE", "world size when started by Open MPI's mpirun"},
    {"OMPI_COMM_WORLD_LOCAL_RANK", "rank within this node when started by Open MPI's mpirun"},
    {"OMPI_COMM_WORLD_LOCAL_SIZE", "ranks on this node when started by Open MPI's mpirun"},
    {"PMIX_RANK", "rank of this process under a PMIx launcher"},
    {"SLURM_PROCID", "rank of this process when started by srun"},
    {"SLURM_NTASKS", "world size when started by srun"},
    {"SLURM_LOCALID", "rank within this node when started by srun"},
    {"SLURM_NTASKS_PER_NODE", "ranks per node when srun or sbatch was given --ntasks-per-node"},
    {"OMPI_MCA_btl_tcp_if_include",
     "interfaces (names or CIDR ranges) of Open MPI's TCP transport, as mpirun --mca passes them to the "
     "ranks; the MPI backend's census datagrams use the same networks (fjord launch sets the inventory's "
     "interface)"},
    {"OMP_NUM_THREADS", "threads per rank for CPU kernels; overrides the job spec's train.threads"},
    {"FJORD_TEST_HOOK",
     "test-only fault injection, comma-separated: sleep_in_step=RANK:STEP:SECONDS, "
     "crash_in_checkpoint=STEP, nan_in_step=STEP, signal_after_step=STEP, fail_in_step=RANK:STEP, "
     "comm_delay=RANK:MS (rank RANK spends MS ms more in the communication of every step), "
     "census_datagrams=off (the MPI backend's census asks over MPI alone, as where UDP is blocked), "
     "compute_delay=RANK:MS (rank RANK spends MS ms more in the compute of every step), "
     "bench_corrupt=RANK:INDEX (fjord bench: "
     "rank RANK flips a bit of element INDEX of its result in the first out-of-place check that has it, "
     "once), "
     "arena_verify_zero (read every memory arena back after zeroing it and before freeing it; report and "
     "fail on a "
     "non-zero byte; also on the signal path that zeroes host arenas when a rank is ended); "
     "announced on stderr when used; refused unless the node settings allow test overrides"},
    {"FJORD_NODE_IDENTITY",
     "tenancy, tests only: read this node's identity from this file instead of "
     "FJORD_SYSCONFDIR/node.textproto; "
     "%n in it stands for SLURMD_NODENAME (several fake Slurm nodes on one machine); refused unless "
     "FJORD_SYSCONFDIR/settings.textproto says allow_test_overrides: true; recorded in the audit log as a "
     "test "
     "override and in the manifests and checkpoints made under it"},
    {"SLURMD_NODENAME",
     "tenancy: the Slurm node that started this process (set by slurmd); named in rank gate refusals; in "
     "tests, "
     "replaces %n in FJORD_NODE_IDENTITY"},
    {"FJORD_LAUNCH_ID",
     "tenancy: id of the fjord launch that started the job (set by launch, forwarded with -x); "
     "ties rank 0's audit records to launch's"},
    {"FJORD_RANK_STATUS_DIR",
     "fjord launch: the directory where each rank records its start and how it ended (set by launch, "
     "forwarded with -x), from which launch --max-restarts finds the failed node"},
    {"SLURM_JOB_ID",
     "fjord launch --slurm: set inside a Slurm allocation, where launch runs srun instead of "
     "writing an sbatch script"},
    {"SLURM_CONF",
     "fjord launch --slurm: the slurm.conf Slurm's commands read; launch checks that it exists "
     "(sinfo would retry a missing one for a minute)"},
    {"SLURM_JOB_NODELIST",
     "fjord launch --slurm: the nodes of the current Slurm allocation (hostlist syntax)"},
    {nullptr, nullptr},
};

static bool IsListed(std::string_view name) {
  for (const EnvVarDoc* v = kEnvVars; v->name != nullptr; ++v) {
    if (name == v->name) return true;
  }
  return false;
}

std::optional<std::string> GetEnv(std::string_view name) {
  if (!IsListed(name)) {
    std::fprintf(stderr,
                 "fjord: internal error: environment variable %.*s is read but not listed in kEnvVars\n",
                 static_cast<int>(name.size()), name.data());
    std::abort();
  }
  const char* value = std::getenv(std::string(name).c_str());
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

std::optional<long> GetEnvInt(std::string_view name) {
  std::optional<std::string> value = GetEnv(name);
  if (!value) return std::nullopt;
  char* end = nullptr;
  long parsed = std::strtol(value->c_str(), &end, 10);
  if (end == value->c_str() || *end != '\0') {
    std::fprintf(stderr,
                 "fjord: environment variable %.*s='%s' is not an integer; unset it or give a number\n",
                 static_cast<int>(name.size()), name.data(), value->c_str());
    std::exit(2);
  }
  return parsed;
}

std::optional<std::string> TestHook(std::string_view name) {
  std::optional<std::string> hooks = GetEnv("FJORD_TEST_HOOK");
  if (!hooks) return std::nullopt;
  size_t start = 0;
  while (start <= hooks->size()) {
    size_t end = hooks->find(',', start);
    if (end == std::string::npos) end = hooks->size();
    const std::string item = hooks->substr(start, end - start);
    const size_t eq = item.find('=');
    if (item.substr(0, eq) == name) {
      std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
      std::fprintf(stderr, "fjord: TEST HOOK %.*s=%s is active (FJORD_TEST_HOOK)\n",
                   static_cast<int>(name.size()), name.data(), value.c_str());
      return value;
    }
    start = end + 1;
  }
  return std::nullopt;
}

}  // namespace fjord
