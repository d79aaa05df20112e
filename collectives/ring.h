// Ring collectives over a Transport: reduce-scatter, all-gather, and all-reduce as the two in
// sequence.
//
// Design: bandwidth-optimal for large messages. The buffer is cut into size() blocks (block b of
// AllReduce holds count / n elements, the first count % n blocks one more; ReduceScatter and
// AllGather blocks are the callers'). In step s of the reduce-scatter rank r sends block
// (r - s - 1) mod n to rank r + 1 and receives block (r - s - 2) mod n from rank r - 1, adds its
// own contribution, and after n - 1 steps holds the full reduction of block r; the all-gather then
// passes the finished blocks around the ring in n - 1 more steps. Each rank sends and receives
// 2 (n - 1) / n of the buffer, the minimum.
//
// Every block is cut into chunks of `chunk_bytes`, and up to `window` chunks are in flight:
// receives land in a small scratch ring that stays in cache, the reduction of chunk k overlaps the
// transfer of chunks k + 1 ..., and a chunk is forwarded as soon as it is reduced (a chunk of
// step s + 1 depends only on the same chunk of step s). Each element is reduced by one rank and
// then copied, so all ranks get bit-identical results. Counts smaller than n, zero, and
// not divisible by n are handled (empty chunks are skipped on both sides).
//
// Memory: scratch of window * chunk_bytes; ReduceScatter with n >= 3 also needs two blocks of
// scratch, since its send buffer is read-only and intermediate sums must live somewhere.
#pragma once

#include <cstddef>

#include "collectives/communicator.h"
#include "collectives/transport.h"
#include "common/status.h"

namespace fjord {

struct RingOptions {
  size_t chunk_bytes = size_t{256} << 10;
  int window = 4;
};

// AllReduce contract of communicator.h (in place allowed). `tag` names this operation's messages.
Status RingAllReduce(Transport& t, const void* send, void* recv, size_t count, DataType dtype, ReduceOp op,
                     int tag, const RingOptions& options, Scratch& scratch);

// ReduceScatter contract (in place when recv == send + rank * recv_count).
Status RingReduceScatter(Transport& t, const void* send, void* recv, size_t recv_count, DataType dtype,
                         ReduceOp op, int tag, const RingOptions& options, Scratch& scratch);

// AllGather contract (in place when send == recv + rank * send_count).
Status RingAllGather(Transport& t, const void* send, void* recv, size_t send_count, DataType dtype, int tag,
                     const RingOptions& options, Scratch& scratch);

}  // namespace fjord
