// Ring reduce-scatter / all-gather (design in ring.h). Each pass is a flat sequence of
// (step, chunk) items driven by one rule, Pass::CanPost, so the pipeline, the dependency of a
// chunk on the same chunk of the previous step and the reuse of receive slots are decided in one
// place; waits happen in item order, which is the order the data arrives in a ring.
#include "collectives/ring.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "collectives/reduce.h"

namespace fjord {
namespace {

// Block b holds base + (b < rem) elements and starts at b * base + min(b, rem).
struct Blocks {
  size_t base = 0;
  size_t rem = 0;
  size_t offset(int b) const { return static_cast<size_t>(b) * base + std::min(static_cast<size_t>(b), rem); }
  size_t length(int b) const { return base + (static_cast<size_t>(b) < rem ? 1 : 0); }
  size_t max_length() const { return base + (rem > 0 ? 1 : 0); }
};

int Mod(long long a, int n) {
  const long long m = a % n;
  return static_cast<int>(m < 0 ? m + n : m);
}

// One pass (reduce-scatter or all-gather) is a sequence of items k = s * chunks + c: step s,
// chunk c. Item k may be posted once its chunk of the previous step is finished (k - chunks
// done) and its receive slot is free (k - window done).
struct Pass {
  size_t chunk_elems = 1;
  size_t chunks = 0;  // per block
  size_t items = 0;
  size_t window = 1;

  Pass(const Blocks& blocks, int n, size_t es, const RingOptions& options) {
    chunk_elems = std::clamp<size_t>(options.chunk_bytes / es, 1, Transport::kMaxMessageBytes / es);
    chunks = (blocks.max_length() + chunk_elems - 1) / chunk_elems;
    items = static_cast<size_t>(n - 1) * chunks;
    window = static_cast<size_t>(std::max(options.window, 1));
  }
  bool CanPost(size_t posted, size_t done) const {
    return posted < items && posted < done + window && (posted < chunks || posted - chunks < done);
  }
  // Chunk c of a block of block_len elements: [*begin, *begin + *len).
  void Range(size_t block_len, size_t c, size_t* begin, size_t* len) const {
    *begin = std::min(block_len, c * chunk_elems);
    *len = std::min(block_len, *begin + chunk_elems) - *begin;
  }
};

Status WaitAll(Transport& t, std::vector<Transport::Request>& requests) {
  for (Transport::Request& r : requests) FJORD_RETURN_IF_ERROR(t.Wait(&r));
  return OkStatus();
}

// The reduce-scatter pass. Block b of this rank's input is at in + offset(b) * es. The reduction
// of the block received in step s is written to acc(s, block) (the block's base address); the
// last step's is final and is divided by n for kAvg. Afterwards rank r holds block r reduced.
// tmp holds window chunks.
template <typename Acc>
Status ReducePass(Transport& t, const Blocks& blocks, const std::byte* in, Acc acc, DataType dtype,
                  ReduceOp op, int tag, const RingOptions& options, std::byte* tmp) {
  const int n = t.size(), r = t.rank();
  const int right = Mod(r + 1, n), left = Mod(r - 1, n);
  const size_t es = DataTypeSize(dtype);
  const Pass pass(blocks, n, es, options);
  const size_t slot_bytes = pass.chunk_elems * es;
  std::vector<Transport::Request> recvs(pass.items, Transport::kNoRequest),
      sends(pass.items, Transport::kNoRequest);
  auto send_block = [&](size_t s) { return Mod(r - static_cast<long long>(s) - 1, n); };
  auto recv_block = [&](size_t s) { return Mod(r - static_cast<long long>(s) - 2, n); };

  size_t posted = 0;
  for (size_t done = 0; done < pass.items; ++done) {
    for (; pass.CanPost(posted, done); ++posted) {
      const size_t s = posted / pass.chunks, c = posted % pass.chunks;
      size_t begin, len;
      const int rb = recv_block(s);
      pass.Range(blocks.length(rb), c, &begin, &len);
      if (len > 0) {
        FJORD_RETURN_IF_ERROR(
            t.Irecv(tmp + (posted % pass.window) * slot_bytes, len * es, left, tag, &recvs[posted]));
      }
      const int sb = send_block(s);
      pass.Range(blocks.length(sb), c, &begin, &len);
      if (len > 0) {
        const std::byte* src = s == 0 ? in + blocks.offset(sb) * es : acc(s - 1, sb);
        FJORD_RETURN_IF_ERROR(t.Isend(src + begin * es, len * es, right, tag, &sends[posted]));
      }
    }
    const size_t s = done / pass.chunks, c = done % pass.chunks;
    const int rb = recv_block(s);
    size_t begin, len;
    pass.Range(blocks.length(rb), c, &begin, &len);
    if (len == 0) continue;
    FJORD_RETURN_IF_ERROR(t.Wait(&recvs[done]));
    // The same chunk of step s - 1 may still be in flight from the buffer we write now
    // (ReduceScatter alternates two scratch blocks).
    if (done >= pass.chunks) FJORD_RETURN_IF_ERROR(t.Wait(&sends[done - pass.chunks]));
    std::byte* out = acc(s, rb) + begin * es;
    ReduceBuffers(out, tmp + (done % pass.window) * slot_bytes, in + (blocks.offset(rb) + begin) * es, len,
                  dtype, op);
    if (op == ReduceOp::kAvg && s + 2 == static_cast<size_t>(n)) FinishAverage(out, len, dtype, n);
  }
  return WaitAll(t, sends);
}

// The all-gather pass over buf, where rank r holds block r: step s sends block (r - s) mod n to
// the right and receives block (r - s - 1) mod n from the left, both in place in buf.
Status GatherPass(Transport& t, const Blocks& blocks, std::byte* buf, DataType dtype, int tag,
                  const RingOptions& options) {
  const int n = t.size(), r = t.rank();
  const int right = Mod(r + 1, n), left = Mod(r - 1, n);
  const size_t es = DataTypeSize(dtype);
  const Pass pass(blocks, n, es, options);
  std::vector<Transport::Request> recvs(pass.items, Transport::kNoRequest),
      sends(pass.items, Transport::kNoRequest);
  size_t posted = 0;
  for (size_t done = 0; done < pass.items; ++done) {
    for (; pass.CanPost(posted, done); ++posted) {
      const size_t s = posted / pass.chunks, c = posted % pass.chunks;
      size_t begin, len;
      const int rb = Mod(r - static_cast<long long>(s) - 1, n);
      pass.Range(blocks.length(rb), c, &begin, &len);
      if (len > 0) {
        FJORD_RETURN_IF_ERROR(
            t.Irecv(buf + (blocks.offset(rb) + begin) * es, len * es, left, tag, &recvs[posted]));
      }
      const int sb = Mod(r - static_cast<long long>(s), n);
      pass.Range(blocks.length(sb), c, &begin, &len);
      if (len > 0) {
        FJORD_RETURN_IF_ERROR(
            t.Isend(buf + (blocks.offset(sb) + begin) * es, len * es, right, tag, &sends[posted]));
      }
    }
    FJORD_RETURN_IF_ERROR(t.Wait(&recvs[done]));
  }
  return WaitAll(t, sends);
}

}  // namespace

Status RingAllReduce(Transport& t, const void* send, void* recv, size_t count, DataType dtype, ReduceOp op,
                     int tag, const RingOptions& options, Scratch& scratch) {
  const int n = t.size();
  const size_t es = DataTypeSize(dtype);
  if (count == 0) return OkStatus();
  if (n == 1) {
    if (send != recv) std::memcpy(recv, send, count * es);
    return OkStatus();
  }
  const Blocks blocks{count / n, count % n};
  const Pass pass(blocks, n, es, options);
  std::byte* tmp = scratch.Get(pass.window * pass.chunk_elems * es);
  if (tmp == nullptr) return Internal("ring AllReduce: cannot allocate scratch memory");
  const auto* in = static_cast<const std::byte*>(send);
  auto* out = static_cast<std::byte*>(recv);
  auto acc = [&](size_t, int b) { return out + blocks.offset(b) * es; };
  FJORD_RETURN_IF_ERROR(ReducePass(t, blocks, in, acc, dtype, op, tag, options, tmp));
  return GatherPass(t, blocks, out, dtype, tag, options);
}

Status RingReduceScatter(Transport& t, const void* send, void* recv, size_t recv_count, DataType dtype,
                         ReduceOp op, int tag, const RingOptions& options, Scratch& scratch) {
  const int n = t.size();
  const size_t es = DataTypeSize(dtype);
  const size_t block_bytes = recv_count * es;
  const auto* in = static_cast<const std::byte*>(send);
  auto* out = static_cast<std::byte*>(recv);
  if (recv_count == 0) return OkStatus();
  if (n == 1) {
    if (send != recv) std::memcpy(recv, send, block_bytes);
    return OkStatus();
  }
  const Blocks blocks{recv_count, 0};
  const Pass pass(blocks, n, es, options);
  const size_t tmp_bytes = pass.window * pass.chunk_elems * es;
  // Intermediate sums alternate between two scratch blocks (n >= 3); the last step writes recv.
  const size_t work_bytes = n >= 3 ? 2 * ((block_bytes + 63) / 64 * 64) : 0;
  std::byte* tmp = scratch.Get(tmp_bytes + work_bytes);
  if (tmp == nullptr) return Internal("ring ReduceScatter: cannot allocate scratch memory");
  std::byte* work[2] = {tmp + tmp_bytes, tmp + tmp_bytes + work_bytes / 2};
  auto acc = [&](size_t s, int) { return s + 2 == static_cast<size_t>(n) ? out : work[s % 2]; };
  return ReducePass(t, blocks, in, acc, dtype, op, tag, options, tmp);
}

Status RingAllGather(Transport& t, const void* send, void* recv, size_t send_count, DataType dtype, int tag,
                     const RingOptions& options, Scratch&) {
  const size_t es = DataTypeSize(dtype);
  if (send_count == 0) return OkStatus();
  auto* out = static_cast<std::byte*>(recv);
  std::byte* mine = out + static_cast<size_t>(t.rank()) * send_count * es;
  if (send != mine) std::memcpy(mine, send, send_count * es);
  if (t.size() == 1) return OkStatus();
  return GatherPass(t, Blocks{send_count, 0}, out, dtype, tag, options);
}

}  // namespace fjord
