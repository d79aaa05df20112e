// Latency-optimal AllReduce for small messages over a Transport: recursive doubling.
//
// Design: with p the largest power of two <= n, the first 2 (n - p) ranks pair up and the even
// one of each pair hands its data to the odd one; the p remaining ranks then exchange their whole
// buffer with the partner at distance 1, 2, 4, ... (log2 p rounds of one message each way) and the
// paired ranks get the result back. That is ceil(log2 n) (+2) message latencies against the
// ring's 2 (n - 1), at the price of sending the whole buffer every round, so it wins for small
// messages (kAuto's threshold is measured, see mpi_communicator.cc). Partners combine as
// (lower ranks' partial) op (higher ranks' partial), so both compute the same expression and every
// rank ends with bit-identical results, NaN payloads included. Messages larger than the segment
// size run as consecutive segments.
#pragma once

#include <cstddef>

#include "collectives/communicator.h"
#include "collectives/transport.h"
#include "common/status.h"

namespace fjord {

// AllReduce contract of communicator.h (in place allowed). `tag` names this operation's messages.
Status TreeAllReduce(Transport& t, const void* send, void* recv, size_t count, DataType dtype, ReduceOp op,
                     int tag, Scratch& scratch);

}  // namespace fjord
