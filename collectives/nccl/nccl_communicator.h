// The NCCL backend of Communicator, for device memory (built when CMake finds CUDA and NCCL;
// FJORD_HAVE_NCCL is then defined for everything that links fjord_collectives).
//
// Design: NCCL moves the data; a host communicator (`bootstrap`: the MPI backend under a launcher,
// the one-rank backend alone) carries what NCCL cannot: the unique id from rank 0 to the others,
// the agreement that every rank found its GPU before anyone waits in ncclCommInitRank, Barrier,
// and Abort. One rank per GPU: rank r uses device local_rank (of the bootstrap's rank_info), and
// a node with more ranks than visible GPUs is refused (NCCL refuses two ranks on one GPU; use
// the MPI backend with host staging there).
//
// Operations are enqueued on the communicator's own stream in issue order, under one mutex (NCCL
// calls on one communicator must not interleave between threads). The Async calls return a
// handle that waits on a CUDA event recorded after the operation; the synchronous calls are
// Async + Wait. Buffers are device pointers on this communicator's device.
//
// Contract differences from the MPI backend (communicator.h), all from NCCL itself:
//  - Timeouts: the deadline runs from when the operation was issued or Wait() began, whichever
//    is later (the stream does not say when an operation started). On expiry the communicator
//    is aborted (ncclCommAbort) and the error names the collective and its sequence number, but
//    not the ranks that did not arrive: NCCL does not know them.
//  - kAvg is NCCL's sum followed by a division on the device, as the contract asks (NCCL's own
//    ncclAvg pre-multiplies floats by 1/n, which rounds differently).
//  - kMax of f32 / f16 / bf16 with a NaN input follows NCCL, which may return the other operand.
#pragma once

#include <memory>

#include "collectives/communicator.h"
#include "common/status.h"

struct CUstream_st;

namespace fjord {

class BenchMemory;

// Collective over all ranks of `bootstrap`, which must outlive the returned communicator.
// FailedPrecondition (on every rank, naming the rank and host at fault) when a rank has no GPU or
// a node has more ranks than GPUs; Internal for NCCL or CUDA failures.
StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(const CommOptions& options,
                                                               Communicator& bootstrap);

// Device buffers on `nccl`'s GPU, copies and CUDA-event timing on its stream, for fjord bench
// (collectives/bench/bench.h). InvalidArgument when `nccl` was not made by CreateNcclCommunicator.
StatusOr<std::unique_ptr<BenchMemory>> CreateNcclBenchMemory(Communicator& nccl);

// The CUDA stream (a cudaStream_t) `nccl` enqueues its operations on, so that a caller can order
// them after its own work (cudaStreamWaitEvent) before issuing them. InvalidArgument when `nccl`
// was not made by CreateNcclCommunicator.
StatusOr<CUstream_st*> NcclStream(Communicator& nccl);

}  // namespace fjord
