// fjord --version (version.h).
#include "launcher/version.h"

#include <mpi.h>

#include "launcher/build_info.h"

namespace fjord {

const char* FjordVersion() { return FJORD_BUILD_VERSION; }

std::string VersionText() {
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  MPI_Get_library_version(mpi, &len);  // allowed before MPI_Init
  std::string library(mpi);
  library = library.substr(0, library.find_first_of(",\n"));
  return std::string("fjord ") + FJORD_BUILD_VERSION + "\ncommit " + FJORD_BUILD_COMMIT + "\nbuild type " +
         FJORD_BUILD_TYPE + "\nCUDA " + FJORD_BUILD_CUDA + "\nNCCL " + FJORD_BUILD_NCCL + "\nMPI " + library +
         "\nOpenBLAS " + FJORD_BUILD_OPENBLAS;
}

}  // namespace fjord
