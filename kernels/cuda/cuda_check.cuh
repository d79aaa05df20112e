// Fatal checks for CUDA runtime calls and kernel launches.
//
// Built on FJORD_API_CHECK_GEN (common/check.h), so a failure reports the statement, file:line,
// rank and host like every other foreign-API check; the CUDA error's name, text and the current
// device are appended. Usable from .cu and plain C++ files alike.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "common/check.h"

namespace fjord::cuda_detail {

// "cudaErrorX: <text> (device N)". Reads the current device without disturbing the error state.
inline std::string DescribeCudaError(cudaError_t err) {
  int device = -1;
  const bool have_device = cudaGetDevice(&device) == cudaSuccess;
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err) +
         (have_device ? " (device " + std::to_string(device) + ")" : " (no current device)");
}

}  // namespace fjord::cuda_detail

// Aborts with a report when the CUDA runtime call `stmt` does not return cudaSuccess.
#define FJORD_CUDA_CHECK(stmt) \
  FJORD_API_CHECK_GEN(stmt, cudaError_t, cudaSuccess, ::fjord::cuda_detail::DescribeCudaError)

// Call right after every kernel launch: catches bad launch configurations at the launch site
// (execution errors surface at the next synchronising call).
#define FJORD_CUDA_CHECK_LAUNCH() FJORD_CUDA_CHECK(cudaGetLastError())
