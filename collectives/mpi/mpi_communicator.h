// The MPI backend of Communicator, for host memory.
//
// Threads: each communicator has a communication thread that executes queued operations in issue
// order, one at a time; async calls enqueue and return a handle, so a collective progresses
// while the caller computes (the trainer's gradient buckets). A synchronous call on an idle
// communicator runs directly on the caller's thread instead of handing over to the
// communication thread (saves two thread wake-ups, tens of microseconds, per small call).
// Exactly one thread executes MPI calls of a communicator at a time, so MPI_THREAD_SERIALIZED
// suffices for one communicator; MPI_THREAD_MULTIPLE (requested, and what Open MPI gives) lets
// several communicators live side by side, and is needed if the application makes MPI calls of
// its own while a communicator exists (the communication thread polls even when idle).
//
// Timeouts: no MPI call blocks after creation. Every operation is non-blocking MPI
// (MPI_Isend/Irecv for the ring and tree, MPI_Iallreduce, MPI_Ibcast, ...) polled with MPI_Test
// under a deadline of CommOptions::timeout from the moment the operation starts. On timeout the
// rank runs a census: it asks every rank for its last issued / completed sequence numbers, both on a
// second duplicated communicator and in UDP datagrams (datagrams.h; after an outage they answer at
// once, where MPI's answer queues behind TCP's resend), and waits a bounded time (0.6 x timeout + 1
// s, clamped to 0.5..7 s) for the answers. Every rank answers from its communication thread even
// while its caller is busy elsewhere, so the census tells "has not called the collective yet" (not
// arrived) from "called a different collective" (order mismatch), from "does not answer" (stopped,
// dead or cut off) and from "every rank arrived" (the data is late: the operation gets one more
// timeout). A rank that gives up tells its peers on the census communicator, so all surviving ranks
// report at once: each prints one message naming the collective, its sequence number, the ranks
// that did not arrive and their hosts, and writes its flight recorder to a file; the returned Status
// carries the message.
//
// Algorithms: AllReduce by CommOptions::algorithm (kAuto: recursive doubling up to
// tree_max_bytes, the pipelined ring above; both written in ring.cc / tree.cc over MPI
// point-to-point); ReduceScatter and AllGather by the ring (MPI's with kMpi); Broadcast,
// AllToAll, Barrier by MPI_Ibcast, MPI_Ialltoall, MPI_Ibarrier; SendRecv by MPI_Isend/Irecv.
// bf16 / f16 reductions under kMpi use MPI user ops over our kernels; kAvg is MPI_SUM then a local
// division. With kMpi, MPI_MAX decides NaN handling for f32.
//
// Lifetime: the first communicator initializes MPI (MPI_Init_thread) unless the application
// already did; the last one to go finalizes it (if we initialized it), so destroy it on the
// thread that created it. A communicator that failed leaves MPI unfinalized, because a peer may
// never arrive at MPI_Finalize; the process should Abort().
#pragma once

#include <memory>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

// Collective over MPI_COMM_WORLD: every rank must create its communicators in the same order.
// FailedPrecondition when MPI was finalized already or does not provide the thread support.
StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(const CommOptions& options);

}  // namespace fjord
