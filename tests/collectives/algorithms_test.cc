// The ring and tree algorithms in one process: a thread per rank over an in-memory transport
// with rendezvous semantics (a send's data is copied when the matching receive is posted, so an
// algorithm that reuses a buffer too early delivers the wrong data and fails). Sweeps world
// sizes, counts around the block and chunk boundaries, tiny chunks and windows that the MPI
// tests cannot afford.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "collectives/ring.h"
#include "collectives/tree.h"
#include "tests/collectives/test_values.h"

namespace fjord {
namespace {

using testing::AllDataTypes;
using testing::AllReduceOps;
using testing::Expected;
using testing::FirstDifference;
using testing::Inputs;
using testing::Meaningful;

// Messages of n ranks, matched per (source, dest, tag) in posting order.
class Fabric {
 public:
  struct Op {
    const void* send = nullptr;
    void* recv = nullptr;
    size_t bytes = 0;
    bool done = false;
  };

  // Posts a send (recv == nullptr) or a receive; returns the operation to wait on.
  std::shared_ptr<Op> Post(int src, int dst, int tag, const void* send, void* recv, size_t bytes,
                           std::string* error) {
    auto op = std::make_shared<Op>();
    op->send = send, op->recv = recv, op->bytes = bytes;
    std::lock_guard<std::mutex> lock(mu_);
    Queues& q = queues_[{src, dst, tag}];
    auto& mine = recv ? q.recvs : q.sends;
    auto& theirs = recv ? q.sends : q.recvs;
    if (theirs.empty()) {
      mine.push_back(op);
      return op;
    }
    std::shared_ptr<Op> other = theirs.front();
    theirs.pop_front();
    Op& s = recv ? *other : *op;
    Op& r = recv ? *op : *other;
    if (s.bytes != r.bytes) {
      *error = "message size mismatch " + std::to_string(src) + "->" + std::to_string(dst) + " tag " +
               std::to_string(tag) + ": sent " + std::to_string(s.bytes) + ", receiving " +
               std::to_string(r.bytes);
    }
    std::memcpy(r.recv, s.send, std::min(s.bytes, r.bytes));
    s.done = r.done = true;
    cv_.notify_all();
    return op;
  }

  bool Wait(const std::shared_ptr<Op>& op) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return op->done; });
  }

  bool Drained() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, q] : queues_) {
      if (!q.sends.empty() || !q.recvs.empty()) return false;
    }
    return true;
  }

 private:
  struct Queues {
    std::deque<std::shared_ptr<Op>> sends, recvs;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::tuple<int, int, int>, Queues> queues_;
};

class ThreadTransport final : public Transport {
 public:
  ThreadTransport(Fabric& fabric, int rank, int size) : fabric_(fabric), rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Status Isend(const void* buf, size_t bytes, int peer, int tag, Request* req) override {
    return Post(rank_, peer, tag, buf, nullptr, bytes, req);
  }
  Status Irecv(void* buf, size_t bytes, int peer, int tag, Request* req) override {
    return Post(peer, rank_, tag, nullptr, buf, bytes, req);
  }
  Status Wait(Request* req) override {
    if (*req == kNoRequest) return OkStatus();
    if (!fabric_.Wait(ops_[*req]))
      return Internal("rank " + std::to_string(rank_) + ": deadlock (waited 20 s)");
    ops_[*req].reset();
    *req = kNoRequest;
    return error_.empty() ? OkStatus() : Internal(error_);
  }
  size_t pending() const {
    size_t n = 0;
    for (const auto& op : ops_) n += op != nullptr;
    return n;
  }

 private:
  Status Post(int src, int dst, int tag, const void* send, void* recv, size_t bytes, Request* req) {
    if (src < 0 || src >= size_ || dst < 0 || dst >= size_) return Internal("peer out of range");
    if (bytes > kMaxMessageBytes) return Internal("message too large");
    ops_.push_back(fabric_.Post(src, dst, tag, send, recv, bytes, &error_));
    *req = static_cast<Request>(ops_.size() - 1);
    return error_.empty() ? OkStatus() : Internal(error_);
  }

  Fabric& fabric_;
  const int rank_, size_;
  std::vector<std::shared_ptr<Fabric::Op>> ops_;
  std::string error_;
};

// Runs body(transport, rank) on n threads; every rank must return OK, post nothing it does not
// wait for, and leave no unmatched message.
template <typename Body>
void RunRanks(int n, Body body) {
  Fabric fabric;
  std::vector<Status> status(n);
  std::vector<size_t> leftover(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      ThreadTransport t(fabric, r, n);
      Scratch scratch;
      status[r] = body(t, scratch, r);
      leftover[r] = t.pending();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r].message();
    EXPECT_EQ(leftover[r], 0u) << "rank " << r << " left requests it never waited for";
  }
  EXPECT_TRUE(fabric.Drained()) << "unmatched messages";
}

enum class Algo { kRing, kTree };

void CheckAllReduce(Algo algo, int n, size_t count, DataType dtype, ReduceOp op, bool in_place,
                    RingOptions ring) {
  const size_t es = DataTypeSize(dtype);
  const std::vector<std::byte> want = Expected(dtype, op, n, count);
  std::vector<std::vector<std::byte>> outs(n);
  RunRanks(n, [&](Transport& t, Scratch& scratch, int r) {
    std::vector<std::byte> in = Inputs(dtype, op, n, r, count);
    outs[r].assign(count * es, std::byte{0xee});
    void* out = in_place ? in.data() : outs[r].data();
    const Status s = algo == Algo::kRing
                         ? RingAllReduce(t, in.data(), out, count, dtype, op, 7, ring, scratch)
                         : TreeAllReduce(t, in.data(), out, count, dtype, op, 7, scratch);
    if (in_place) {
      outs[r] = in;
    } else if (in != Inputs(dtype, op, n, r, count)) {
      return Internal("the send buffer was modified");
    }
    return s;
  });
  for (int r = 0; r < n; ++r) {
    ASSERT_EQ(FirstDifference(outs[r].data(), want.data(), count, dtype), "")
        << (algo == Algo::kRing ? "ring" : "tree") << " n=" << n << " count=" << count << " "
        << DataTypeName(dtype) << " " << ReduceOpName(op) << (in_place ? " in place" : "") << " chunk "
        << ring.chunk_bytes << " window " << ring.window << " rank " << r;
  }
}

TEST(RingAllReduceTest, SweepSizesChunksAndWindows) {
  for (int n = 1; n <= 7; ++n) {
    for (size_t count : {0, 1, 2, 3, 5, 7, 8, 13, 64, 101}) {
      for (RingOptions ring :
           {RingOptions{4, 1}, RingOptions{8, 2}, RingOptions{12, 3}, RingOptions{1 << 20, 4}}) {
        for (bool in_place : {false, true}) {
          CheckAllReduce(Algo::kRing, n, count, DataType::kF32, ReduceOp::kSum, in_place, ring);
        }
      }
    }
  }
}

TEST(RingAllReduceTest, EveryDtypeAndOp) {
  for (int n : {2, 3, 5}) {
    for (DataType dtype : AllDataTypes()) {
      for (ReduceOp op : AllReduceOps()) {
        if (!Meaningful(dtype, op)) continue;
        for (size_t count : {1, 6, 37, 1021}) {
          for (bool in_place : {false, true}) {
            CheckAllReduce(Algo::kRing, n, count, dtype, op, in_place, RingOptions{16, 2});
          }
        }
      }
    }
  }
}

TEST(TreeAllReduceTest, EveryWorldSizeDtypeAndOp) {
  for (int n = 1; n <= 9; ++n) {
    for (DataType dtype : AllDataTypes()) {
      for (ReduceOp op : AllReduceOps()) {
        if (!Meaningful(dtype, op)) continue;
        for (size_t count : {0, 1, 7, 64}) {
          for (bool in_place : {false, true}) CheckAllReduce(Algo::kTree, n, count, dtype, op, in_place, {});
        }
      }
    }
  }
}

TEST(TreeAllReduceTest, LargerThanOneSegment) {
  // 4 MiB segments: 1 Mi + 3 floats takes two.
  CheckAllReduce(Algo::kTree, 3, (size_t{1} << 20) + 3, DataType::kF32, ReduceOp::kSum, false, {});
}

// Arbitrary floats: every rank must end with the same bits, whatever the rounding.
TEST(AllReduceTest, RanksAgreeBitForBit) {
  for (Algo algo : {Algo::kRing, Algo::kTree}) {
    for (int n : {3, 5, 6}) {
      const size_t count = 1000;
      std::vector<std::vector<float>> outs(n, std::vector<float>(count));
      RunRanks(n, [&](Transport& t, Scratch& scratch, int r) {
        std::mt19937 rng(r + 1);
        std::normal_distribution<float> dist(0.0f, 1e3f);
        std::vector<float> in(count);
        for (float& x : in) x = dist(rng);
        return algo == Algo::kRing ? RingAllReduce(t, in.data(), outs[r].data(), count, DataType::kF32,
                                                   ReduceOp::kSum, 1, RingOptions{64, 2}, scratch)
                                   : TreeAllReduce(t, in.data(), outs[r].data(), count, DataType::kF32,
                                                   ReduceOp::kSum, 1, scratch);
      });
      for (int r = 1; r < n; ++r) {
        EXPECT_EQ(std::memcmp(outs[r].data(), outs[0].data(), count * sizeof(float)), 0) << "rank " << r;
      }
      EXPECT_NE(outs[0][0], 0.0f);
    }
  }
}

TEST(RingReduceScatterTest, SweepSizesChunksAndInPlace) {
  for (int n = 1; n <= 6; ++n) {
    for (size_t rc : {0, 1, 2, 5, 17}) {
      for (RingOptions ring : {RingOptions{4, 1}, RingOptions{8, 3}, RingOptions{1 << 20, 4}}) {
        for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kI32, DataType::kU8}) {
          for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
            if (!Meaningful(dtype, op)) continue;
            for (bool in_place : {false, true}) {
              const size_t es = DataTypeSize(dtype);
              const std::vector<std::byte> want = Expected(dtype, op, n, rc * n);
              std::vector<std::vector<std::byte>> outs(n);
              RunRanks(n, [&](Transport& t, Scratch& scratch, int r) {
                std::vector<std::byte> in = Inputs(dtype, op, n, r, rc * n);
                const std::vector<std::byte> original = in;
                outs[r].assign(rc * es, std::byte{0xee});
                void* out = in_place ? in.data() + r * rc * es : outs[r].data();
                FJORD_RETURN_IF_ERROR(RingReduceScatter(t, in.data(), out, rc, dtype, op, 3, ring, scratch));
                if (in_place) {
                  std::memcpy(outs[r].data(), out, rc * es);
                  // The other blocks stay as they were.
                  std::memcpy(in.data() + r * rc * es, original.data() + r * rc * es, rc * es);
                }
                if (in != original) return Internal("send blocks were modified");
                return OkStatus();
              });
              for (int r = 0; r < n; ++r) {
                ASSERT_EQ(FirstDifference(outs[r].data(), want.data() + r * rc * es, rc, dtype), "")
                    << "n=" << n << " recv_count=" << rc << " " << DataTypeName(dtype) << " "
                    << ReduceOpName(op) << (in_place ? " in place" : "") << " chunk " << ring.chunk_bytes
                    << " rank " << r;
              }
            }
          }
        }
      }
    }
  }
}

TEST(RingAllGatherTest, SweepSizesChunksAndInPlace) {
  for (int n = 1; n <= 6; ++n) {
    for (size_t sc : {0, 1, 2, 5, 17, 1000}) {
      for (RingOptions ring : {RingOptions{1, 1}, RingOptions{3, 2}, RingOptions{1 << 20, 4}}) {
        for (bool in_place : {false, true}) {
          std::vector<std::vector<uint8_t>> outs(n);
          RunRanks(n, [&](Transport& t, Scratch& scratch, int r) {
            outs[r].assign(sc * n, 0xee);
            std::vector<uint8_t> mine(sc);
            for (size_t i = 0; i < sc; ++i) mine[i] = static_cast<uint8_t>(r * 31 + i * 7 + 1);
            const void* send = mine.data();
            if (in_place) {
              std::memcpy(outs[r].data() + r * sc, mine.data(), sc);
              send = outs[r].data() + r * sc;
            }
            return RingAllGather(t, send, outs[r].data(), sc, DataType::kU8, 5, ring, scratch);
          });
          for (int r = 0; r < n; ++r) {
            for (int b = 0; b < n; ++b) {
              for (size_t i = 0; i < sc; ++i) {
                ASSERT_EQ(outs[r][b * sc + i], static_cast<uint8_t>(b * 31 + i * 7 + 1))
                    << "n=" << n << " send_count=" << sc << " rank " << r << " block " << b << " element "
                    << i;
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace fjord
