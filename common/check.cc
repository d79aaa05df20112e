#include "common/check.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "common/env.h"

namespace fjord {

std::string WhereAmI() {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::optional<std::string> rank = GetEnv("OMPI_COMM_WORLD_RANK");
  if (!rank) rank = GetEnv("PMIX_RANK");
  if (!rank) rank = GetEnv("SLURM_PROCID");
  return "rank " + rank.value_or("?") + " on " + host;
}

void FatalError(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "fjord: FATAL at %s:%d (%s): %s\n", file, line, WhereAmI().c_str(), what.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace fjord
