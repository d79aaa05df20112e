// Recursive doubling with the non-power-of-two fold (design in tree.h).
#include "collectives/tree.h"

#include <algorithm>
#include <cstring>

#include "collectives/reduce.h"

namespace fjord {
namespace {

constexpr size_t kSegmentBytes = size_t{4} << 20;

// Recursive doubling on buf (count elements), tmp holding as many.
Status RecursiveDoubling(Transport& t, std::byte* buf, std::byte* tmp, size_t count, DataType dtype,
                         ReduceOp op, int tag) {
  const int n = t.size(), r = t.rank();
  const size_t bytes = count * DataTypeSize(dtype);
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int extra = n - p;
  Transport::Request sreq = Transport::kNoRequest, rreq = Transport::kNoRequest;

  // Fold: even rank 2i (< 2 extra) gives its data to 2i + 1 and waits for the result.
  int me = r - extra;  // rank among the p that take part in the exchange
  if (r < 2 * extra) {
    if (r % 2 == 0) {
      FJORD_RETURN_IF_ERROR(t.Isend(buf, bytes, r + 1, tag, &sreq));
      FJORD_RETURN_IF_ERROR(t.Wait(&sreq));
      FJORD_RETURN_IF_ERROR(t.Irecv(buf, bytes, r + 1, tag, &rreq));
      return t.Wait(&rreq);
    }
    FJORD_RETURN_IF_ERROR(t.Irecv(tmp, bytes, r - 1, tag, &rreq));
    FJORD_RETURN_IF_ERROR(t.Wait(&rreq));
    ReduceBuffers(buf, tmp, buf, count, dtype, op);
    me = r / 2;
  }
  auto real_rank = [&](int v) { return v < extra ? 2 * v + 1 : v + extra; };
  for (int mask = 1; mask < p; mask <<= 1) {
    const int partner = me ^ mask;
    FJORD_RETURN_IF_ERROR(t.Irecv(tmp, bytes, real_rank(partner), tag, &rreq));
    FJORD_RETURN_IF_ERROR(t.Isend(buf, bytes, real_rank(partner), tag, &sreq));
    FJORD_RETURN_IF_ERROR(t.Wait(&rreq));
    FJORD_RETURN_IF_ERROR(t.Wait(&sreq));
    if (partner < me) {
      ReduceBuffers(buf, tmp, buf, count, dtype, op);
    } else {
      ReduceBuffers(buf, buf, tmp, count, dtype, op);
    }
  }
  if (r < 2 * extra) {
    FJORD_RETURN_IF_ERROR(t.Isend(buf, bytes, r - 1, tag, &sreq));
    FJORD_RETURN_IF_ERROR(t.Wait(&sreq));
  }
  return OkStatus();
}

}  // namespace

Status TreeAllReduce(Transport& t, const void* send, void* recv, size_t count, DataType dtype, ReduceOp op,
                     int tag, Scratch& scratch) {
  const size_t es = DataTypeSize(dtype);
  if (count == 0) return OkStatus();
  auto* out = static_cast<std::byte*>(recv);
  if (send != recv) std::memcpy(recv, send, count * es);
  if (t.size() == 1) return OkStatus();
  const size_t segment = std::max<size_t>(kSegmentBytes / es, 1);
  std::byte* tmp = scratch.Get(std::min(count, segment) * es);
  if (tmp == nullptr) return Internal("tree AllReduce: cannot allocate scratch memory");
  for (size_t begin = 0; begin < count; begin += segment) {
    const size_t len = std::min(segment, count - begin);
    FJORD_RETURN_IF_ERROR(RecursiveDoubling(t, out + begin * es, tmp, len, dtype, op, tag));
  }
  if (op == ReduceOp::kAvg) FinishAverage(recv, count, dtype, t.size());
  return OkStatus();
}

}  // namespace fjord
