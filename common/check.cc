#include "common/check.h"

#include <cstdio>
#include <cstdlib>

#include "common/env.h"
#include "common/host.h"

namespace fjord {

std::string WhereAmI() {
  std::optional<std::string> rank = GetEnv("OMPI_COMM_WORLD_RANK");
  if (!rank) rank = GetEnv("PMIX_RANK");
  if (!rank) rank = GetEnv("SLURM_PROCID");
  return "rank " + rank.value_or("?") + " on " + ThisHostname();
}

void FatalError(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "fjord: FATAL at %s:%d (%s): %s\n", file, line, WhereAmI().c_str(), what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace fjord
