// Every collective of the MPI backend, run on every rank under mpirun (CTest: 2, 3 and 4 ranks).
//
// Results are compared bit for bit with exactly representable reductions (test_values.h) on
// sizes 0, 1, primes, not divisible by the world size, and one large enough to exercise the
// ring's chunk pipeline; every dtype and op; in place and out of place; synchronous, async with
// Wait() and async with Test() polling; and every AllReduce algorithm, one communicator each.
//
// Output: rank 0 prints gtest's output; the other ranks print only their failures, prefixed with
// "[rank N]". The process exits non-zero when a test failed on any rank.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "tests/collectives/test_values.h"

namespace fjord {
namespace {

using testing::AllDataTypes;
using testing::AllReduceOps;
using testing::Expected;
using testing::FirstDifference;
using ::testing::HasSubstr;
using testing::Inputs;
using testing::Meaningful;

// 3 MiB + 5 elements: several ring chunks per block at every world size tested.
size_t LargeCount(DataType dtype) { return (size_t{3} << 20) / DataTypeSize(dtype) + 5; }
const size_t kLarge = LargeCount(DataType::kF32);

std::map<std::string, std::unique_ptr<Communicator>> g_comms;

// The communicators: one per AllReduce algorithm, and a ring with 4 KiB chunks that pipelines
// even mid-size messages through many chunks.
Communicator& Comm(const std::string& name) { return *g_comms.at(name); }
const std::vector<std::string>& AllReduceComms() {
  static const std::vector<std::string> names = {"auto", "mpi", "ring", "tree", "ring4k"};
  return names;
}

enum class Mode { kSync, kAsyncWait, kAsyncPoll };
const char* ModeName(Mode m) {
  return m == Mode::kSync ? "sync" : m == Mode::kAsyncWait ? "async+Wait" : "async+Test";
}
constexpr Mode kModes[] = {Mode::kSync, Mode::kAsyncWait, Mode::kAsyncPoll};

Status Finish(StatusOr<std::unique_ptr<CommHandle>> handle, Mode mode) {
  if (!handle.ok()) return handle.status();
  if (mode == Mode::kAsyncPoll) {
    for (;;) {
      StatusOr<bool> done = (*handle)->Test();
      if (!done.ok()) return done.status();
      if (*done) break;
      std::this_thread::yield();
    }
  }
  return (*handle)->Wait();
}

Status DoAllReduce(Communicator& c, Mode mode, const void* in, void* out, size_t count, DataType dtype,
                   ReduceOp op) {
  if (mode == Mode::kSync) return c.AllReduce(in, out, count, dtype, op);
  return Finish(c.AllReduceAsync(in, out, count, dtype, op), mode);
}

std::string Context(const std::string& comm, DataType dtype, ReduceOp op, size_t count, bool in_place,
                    Mode mode) {
  return comm + " " + DataTypeName(dtype) + " " + ReduceOpName(op) + " count " + std::to_string(count) +
         (in_place ? " in place " : " ") + ModeName(mode);
}

// Checks one AllReduce of every (in place, mode) given (or only `modes`).
void CheckAllReduce(const std::string& name, DataType dtype, ReduceOp op, size_t count,
                    std::initializer_list<Mode> modes = {Mode::kSync, Mode::kAsyncWait, Mode::kAsyncPoll}) {
  Communicator& c = Comm(name);
  const int n = c.size(), r = c.rank();
  const std::vector<std::byte> original = Inputs(dtype, op, n, r, count);
  const std::vector<std::byte> want = Expected(dtype, op, n, count);
  for (bool in_place : {false, true}) {
    for (Mode mode : modes) {
      std::vector<std::byte> in = original;
      std::vector<std::byte> out(in.size(), std::byte{0xee});
      void* dst = in_place ? in.data() : out.data();
      const Status s = DoAllReduce(c, mode, in.data(), dst, count, dtype, op);
      if (!Meaningful(dtype, op)) {
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << Context(name, dtype, op, count, in_place, mode);
        continue;
      }
      ASSERT_TRUE(s.ok()) << s.message();
      if (!in_place) {
        EXPECT_TRUE(in == original) << "send buffer modified: "
                                    << Context(name, dtype, op, count, in_place, mode);
      }
      EXPECT_EQ(FirstDifference(dst, want.data(), count, dtype), "")
          << Context(name, dtype, op, count, in_place, mode);
    }
  }
}

TEST(TopologyTest, RankAndSizeMatchTheLauncher) {
  Communicator& c = Comm("auto");
  EXPECT_STREQ(c.backend(), "mpi");
  const RankInfo env = RankInfoFromEnvironment();
  EXPECT_EQ(c.rank(), env.rank);
  EXPECT_EQ(c.size(), env.world_size);
  const RankInfo mpi = c.rank_info();
  EXPECT_EQ(mpi.rank, c.rank());
  EXPECT_EQ(mpi.world_size, c.size());
  EXPECT_EQ(mpi.local_rank, env.local_rank);
  EXPECT_EQ(mpi.local_size, env.local_size);
  EXPECT_EQ(mpi.host, env.host);
  for (const std::string& name : AllReduceComms()) {
    EXPECT_EQ(Comm(name).rank(), c.rank());
    EXPECT_EQ(Comm(name).size(), c.size());
  }
}

class AllReduceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AllReduceTest, EveryDtypeOpSizeAndMode) {
  const int n = Comm(GetParam()).size();
  const std::vector<size_t> counts = {0, 1, 2, 7, static_cast<size_t>(n) + 1, 1021, 100003};
  for (DataType dtype : AllDataTypes()) {
    for (ReduceOp op : AllReduceOps()) {
      for (size_t count : counts) CheckAllReduce(GetParam(), dtype, op, count);
    }
  }
}

TEST_P(AllReduceTest, LargeEveryDtype) {
  for (DataType dtype : AllDataTypes()) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax})
      CheckAllReduce(GetParam(), dtype, op, LargeCount(dtype), {Mode::kSync});
  }
  CheckAllReduce(GetParam(), DataType::kF32, ReduceOp::kAvg, kLarge, {Mode::kAsyncPoll});
  CheckAllReduce(GetParam(), DataType::kBF16, ReduceOp::kAvg, LargeCount(DataType::kBF16),
                 {Mode::kAsyncWait});
  CheckAllReduce(GetParam(), DataType::kI32, ReduceOp::kAvg, kLarge, {Mode::kAsyncWait});
}

// Arbitrary floats: every rank must hold the same bits.
TEST_P(AllReduceTest, RanksAgreeBitForBit) {
  Communicator& c = Comm(GetParam());
  const int n = c.size();
  for (size_t count : {size_t{17}, size_t{300007}}) {
    std::mt19937 rng(c.rank() + 11);
    std::normal_distribution<float> dist(0.0f, 1e3f);
    std::vector<float> x(count), all(count * n);
    for (float& v : x) v = dist(rng);
    ASSERT_TRUE(c.AllReduce(x.data(), x.data(), count, DataType::kF32, ReduceOp::kSum).ok());
    ASSERT_TRUE(c.AllGather(x.data(), all.data(), count, DataType::kF32).ok());
    for (int r = 1; r < n; ++r) {
      EXPECT_EQ(std::memcmp(all.data() + r * count, all.data(), count * sizeof(float)), 0)
          << GetParam() << ": rank " << r << " differs from rank 0, count " << count;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, AllReduceTest, ::testing::ValuesIn(AllReduceComms()),
                         [](const auto& info) { return info.param; });

class ReduceScatterTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReduceScatterTest, EveryDtypeOpSizeAndMode) {
  Communicator& c = Comm(GetParam());
  const int n = c.size(), r = c.rank();
  for (DataType dtype : AllDataTypes()) {
    const size_t es = DataTypeSize(dtype);
    for (ReduceOp op : AllReduceOps()) {
      if (!Meaningful(dtype, op)) continue;
      const size_t large = LargeCount(dtype) / n;
      for (size_t rc : {size_t{0}, size_t{1}, size_t{7}, size_t{1021}, large}) {
        if (rc == large && op == ReduceOp::kMax) continue;
        const std::vector<std::byte> want = Expected(dtype, op, n, rc * n);
        const std::vector<std::byte> original = Inputs(dtype, op, n, r, rc * n);
        for (bool in_place : {false, true}) {
          for (Mode mode : kModes) {
            if (rc == large && mode != (in_place ? Mode::kSync : Mode::kAsyncPoll)) continue;
            std::vector<std::byte> in = original;
            std::vector<std::byte> out(rc * es, std::byte{0xee});
            void* dst = in_place ? in.data() + r * rc * es : out.data();
            const Status s = mode == Mode::kSync
                                 ? c.ReduceScatter(in.data(), dst, rc, dtype, op)
                                 : Finish(c.ReduceScatterAsync(in.data(), dst, rc, dtype, op), mode);
            ASSERT_TRUE(s.ok()) << s.message();
            const std::string ctx = Context(GetParam(), dtype, op, rc, in_place, mode);
            EXPECT_EQ(FirstDifference(dst, want.data() + r * rc * es, rc, dtype), "") << ctx;
            if (in_place) std::memcpy(in.data() + r * rc * es, original.data() + r * rc * es, rc * es);
            EXPECT_TRUE(in == original) << "other blocks of send modified: " << ctx;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, ReduceScatterTest, ::testing::Values("auto", "mpi", "ring4k"),
                         [](const auto& info) { return info.param; });

class AllGatherTest : public ::testing::TestWithParam<std::string> {};

TEST_P(AllGatherTest, EveryDtypeSizeAndMode) {
  Communicator& c = Comm(GetParam());
  const int n = c.size(), r = c.rank();
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kU8}) {
    const size_t es = DataTypeSize(dtype);
    for (size_t sc : {size_t{0}, size_t{1}, size_t{7}, size_t{1021}, LargeCount(dtype) / n}) {
      // Rank b's block: the inputs of rank b at indices b * sc ...
      std::vector<std::byte> want;
      for (int b = 0; b < n; ++b) {
        const std::vector<std::byte> block = Inputs(dtype, ReduceOp::kSum, n, b, sc, b * sc);
        want.insert(want.end(), block.begin(), block.end());
      }
      const std::vector<std::byte> mine = Inputs(dtype, ReduceOp::kSum, n, r, sc, r * sc);
      for (bool in_place : {false, true}) {
        for (Mode mode : kModes) {
          std::vector<std::byte> out(sc * n * es, std::byte{0xee});
          const void* src = mine.data();
          if (in_place) {
            std::memcpy(out.data() + r * sc * es, mine.data(), sc * es);
            src = out.data() + r * sc * es;
          }
          const Status s = mode == Mode::kSync ? c.AllGather(src, out.data(), sc, dtype)
                                               : Finish(c.AllGatherAsync(src, out.data(), sc, dtype), mode);
          ASSERT_TRUE(s.ok()) << s.message();
          EXPECT_EQ(FirstDifference(out.data(), want.data(), sc * n, dtype), "")
              << Context(GetParam(), dtype, ReduceOp::kSum, sc, in_place, mode);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, AllGatherTest, ::testing::Values("auto", "mpi", "ring4k"),
                         [](const auto& info) { return info.param; });

TEST(BroadcastTest, EveryRootSizeAndMode) {
  Communicator& c = Comm("auto");
  const int n = c.size();
  for (int root = 0; root < n; ++root) {
    for (DataType dtype : {DataType::kU8, DataType::kF32}) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{1021}, LargeCount(dtype)}) {
        const std::vector<std::byte> want = Inputs(dtype, ReduceOp::kSum, n, root, count);
        for (Mode mode : kModes) {
          std::vector<std::byte> buf =
              c.rank() == root ? want : std::vector<std::byte>(want.size(), std::byte{0xee});
          const Status s = mode == Mode::kSync
                               ? c.Broadcast(buf.data(), count, dtype, root)
                               : Finish(c.BroadcastAsync(buf.data(), count, dtype, root), mode);
          ASSERT_TRUE(s.ok()) << s.message();
          EXPECT_EQ(FirstDifference(buf.data(), want.data(), count, dtype), "")
              << "root " << root << " " << DataTypeName(dtype) << " count " << count << " " << ModeName(mode);
        }
      }
    }
  }
}

TEST(AllToAllTest, EverySizeAndMode) {
  Communicator& c = Comm("auto");
  const int n = c.size(), r = c.rank();
  for (DataType dtype : {DataType::kI32, DataType::kBF16, DataType::kU8}) {
    const size_t es = DataTypeSize(dtype);
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{1021}, size_t{65537}}) {
      // Block j of rank i's send: values of "rank" i * n + j.
      std::vector<std::byte> send, want;
      for (int j = 0; j < n; ++j) {
        const std::vector<std::byte> b = Inputs(dtype, ReduceOp::kSum, n, r * n + j, count);
        send.insert(send.end(), b.begin(), b.end());
        const std::vector<std::byte> w = Inputs(dtype, ReduceOp::kSum, n, j * n + r, count);
        want.insert(want.end(), w.begin(), w.end());
      }
      for (Mode mode : kModes) {
        std::vector<std::byte> recv(count * n * es, std::byte{0xee});
        const Status s = mode == Mode::kSync
                             ? c.AllToAll(send.data(), recv.data(), count, dtype)
                             : Finish(c.AllToAllAsync(send.data(), recv.data(), count, dtype), mode);
        ASSERT_TRUE(s.ok()) << s.message();
        EXPECT_EQ(FirstDifference(recv.data(), want.data(), count * n, dtype), "")
            << DataTypeName(dtype) << " count " << count << " " << ModeName(mode);
      }
    }
  }
}

TEST(SendRecvTest, RingShiftSelfAndSwap) {
  Communicator& c = Comm("auto");
  const int n = c.size(), r = c.rank();
  const int right = (r + 1) % n, left = (r + n - 1) % n;
  // Shift around the ring with a different count per sender: rank i sends 1000 i + 3 elements.
  for (size_t base : {size_t{0}, size_t{1000}, kLarge}) {
    const size_t send_count = base * r + 3, recv_count = base * left + 3;
    const std::vector<std::byte> send = Inputs(DataType::kF32, ReduceOp::kSum, n, r, send_count);
    const std::vector<std::byte> want = Inputs(DataType::kF32, ReduceOp::kSum, n, left, recv_count);
    std::vector<std::byte> recv(recv_count * 4, std::byte{0xee});
    ASSERT_TRUE(
        c.SendRecv(send.data(), send_count, right, recv.data(), recv_count, left, DataType::kF32).ok());
    EXPECT_EQ(FirstDifference(recv.data(), want.data(), recv_count, DataType::kF32), "") << "base " << base;
  }
  // To itself.
  int32_t x = 42 + r, y = 0;
  ASSERT_TRUE(c.SendRecv(&x, 1, r, &y, 1, r, DataType::kI32).ok());
  EXPECT_EQ(y, 42 + r);
  // Empty messages.
  ASSERT_TRUE(c.SendRecv(nullptr, 0, right, nullptr, 0, left, DataType::kU8).ok());
  // Pairwise swap (0<->1, 2<->3); an odd last rank talks to itself.
  const int peer = (r % 2 == 0) ? (r + 1 < n ? r + 1 : r) : r - 1;
  std::vector<uint16_t> mine(777, static_cast<uint16_t>(r)), theirs(777, 0xffff);
  ASSERT_TRUE(c.SendRecv(mine.data(), 777, peer, theirs.data(), 777, peer, DataType::kBF16).ok());
  EXPECT_EQ(theirs, std::vector<uint16_t>(777, static_cast<uint16_t>(peer)));
}

// Rank r's string: r * 150 characters (rank 0 empty, rank 1 past the 64-byte slots the gathers
// used to have), with bytes that a C string would end at or a parser would split on.
std::string StringOfRank(int r) {
  std::string s;
  for (int i = 0; i < 150 * r; ++i)
    s += static_cast<char>(i % 7 == 3 ? '\0' : i % 5 == 1 ? '|' : 'a' + (r + i) % 26);
  return s;
}

TEST(AllGatherStringsTest, EveryRankGetsEveryStringWhole) {
  Communicator& c = Comm("auto");
  StatusOr<std::vector<std::string>> all = AllGatherStrings(c, StringOfRank(c.rank()));
  ASSERT_TRUE(all.ok()) << all.status().message();
  ASSERT_EQ(all->size(), static_cast<size_t>(c.size()));
  for (int r = 0; r < c.size(); ++r)
    EXPECT_EQ((*all)[static_cast<size_t>(r)], StringOfRank(r)) << "rank " << r;
  // All empty: nothing but the lengths travels.
  all = AllGatherStrings(c, "");
  ASSERT_TRUE(all.ok()) << all.status().message();
  EXPECT_EQ(*all, std::vector<std::string>(static_cast<size_t>(c.size())));
  // The host names the MPI backend gathered at start with the same function.
  all = AllGatherStrings(c, RankInfoFromEnvironment().host);
  ASSERT_TRUE(all.ok()) << all.status().message();
  EXPECT_EQ((*all)[static_cast<size_t>(c.rank())], c.rank_info().host);
}

TEST(BarrierTest, WaitsForTheSlowestRank) {
  Communicator& c = Comm("auto");
  using Clock = std::chrono::steady_clock;
  const auto delay = std::chrono::milliseconds(300);
  for (bool async : {false, true}) {
    ASSERT_TRUE(c.Barrier().ok());
    const Clock::time_point start = Clock::now();
    if (c.rank() == 0) std::this_thread::sleep_for(delay);
    if (async) {
      StatusOr<std::unique_ptr<CommHandle>> h = c.BarrierAsync();
      ASSERT_TRUE(h.ok());
      int not_done = 0;
      for (;;) {
        StatusOr<bool> done = (*h)->Test();
        ASSERT_TRUE(done.ok());
        if (*done) break;
        ++not_done;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (c.rank() != 0 && c.size() > 1) {
        EXPECT_GT(not_done, 10) << "Test() reported completion too early";
      }
      EXPECT_TRUE((*h)->Wait().ok());
    } else {
      ASSERT_TRUE(c.Barrier().ok());
    }
    EXPECT_GE(Clock::now() - start, delay - std::chrono::milliseconds(50)) << (async ? "async" : "sync");
  }
}

// Async operations run in issue order, and a synchronous call issued meanwhile runs after them.
TEST(AsyncTest, ManyInFlightWaitedInAnyOrder) {
  Communicator& c = Comm("auto");
  const int n = c.size(), r = c.rank();
  struct Job {
    DataType dtype;
    ReduceOp op;
    size_t count;
    std::vector<std::byte> buf;
    std::unique_ptr<CommHandle> handle;
  };
  std::vector<Job> jobs;
  const size_t counts[] = {5, 100003, 1, 70000, 3, kLarge / 4, 0, 4097};
  for (size_t i = 0; i < std::size(counts); ++i) {
    const DataType dtype = AllDataTypes()[i % AllDataTypes().size()];
    const ReduceOp op = i % 2 ? ReduceOp::kMax : ReduceOp::kSum;
    jobs.push_back({dtype, op, counts[i], Inputs(dtype, op, n, r, counts[i]), nullptr});
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& j = jobs[i];
    StatusOr<std::unique_ptr<CommHandle>> h =
        c.AllReduceAsync(j.buf.data(), j.buf.data(), j.count, j.dtype, j.op);
    ASSERT_TRUE(h.ok()) << h.status().message();
    j.handle = std::move(h).value();
    if (i == 3) {
      int32_t v = r + 1;
      ASSERT_TRUE(c.AllReduce(&v, &v, 1, DataType::kI32, ReduceOp::kSum).ok());
      EXPECT_EQ(v, n * (n + 1) / 2);
      for (size_t k = 0; k <= i; ++k) {
        StatusOr<bool> done = jobs[k].handle->Test();
        ASSERT_TRUE(done.ok());
        EXPECT_TRUE(*done) << "async #" << k << " not complete after a later synchronous call returned";
      }
    }
  }
  for (size_t i = jobs.size(); i-- > 0;) {
    Job& j = jobs[i];
    ASSERT_TRUE(j.handle->Wait().ok());
    EXPECT_TRUE(j.handle->Wait().ok());  // again
    const std::vector<std::byte> want = Expected(j.dtype, j.op, n, j.count);
    EXPECT_EQ(FirstDifference(j.buf.data(), want.data(), j.count, j.dtype), "") << "job " << i;
  }
}

// The communication thread progresses an async collective while the caller does not call in.
TEST(AsyncTest, ProgressesWithoutTheCaller) {
  Communicator& c = Comm("ring");
  const int n = c.size(), r = c.rank();
  std::vector<std::byte> buf = Inputs(DataType::kF32, ReduceOp::kSum, n, r, kLarge);
  StatusOr<std::unique_ptr<CommHandle>> h =
      c.AllReduceAsync(buf.data(), buf.data(), kLarge, DataType::kF32, ReduceOp::kSum);
  ASSERT_TRUE(h.ok());
  // "Compute" for a while without touching the communicator, then check without waiting.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  bool done = false;
  while (!done && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    StatusOr<bool> t = (*h)->Test();
    ASSERT_TRUE(t.ok());
    done = *t;
  }
  EXPECT_TRUE(done);
  ASSERT_TRUE((*h)->Wait().ok());
  const std::vector<std::byte> want = Expected(DataType::kF32, ReduceOp::kSum, n, kLarge);
  EXPECT_EQ(FirstDifference(buf.data(), want.data(), kLarge, DataType::kF32), "");
}

TEST(ValidationTest, RefusedCallsDoNotBreakTheCommunicator) {
  Communicator& c = Comm("auto");
  const int n = c.size();
  std::vector<float> buf(16, 1.0f);
  EXPECT_EQ(c.Broadcast(buf.data(), 4, DataType::kF32, n).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.Broadcast(buf.data(), 4, DataType::kF32, -1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllReduce(buf.data(), buf.data(), 4, DataType::kU8, ReduceOp::kAvg).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c.SendRecv(buf.data(), 1, n, buf.data() + 8, 1, 0, DataType::kF32).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(c.AllReduce(buf.data(), buf.data() + 2, 4, DataType::kF32, ReduceOp::kSum).code(),
            StatusCode::kInvalidArgument);
  StatusOr<std::unique_ptr<CommHandle>> h = c.AllToAllAsync(buf.data(), buf.data(), 1, DataType::kF32);
  EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument);
  float x = 1.0f;
  ASSERT_TRUE(c.AllReduce(&x, &x, 1, DataType::kF32, ReduceOp::kSum).ok());
  EXPECT_EQ(x, static_cast<float>(n));
}

TEST(FlightRecorderTest, RecordsTheLastOperations) {
  CommOptions options;
  options.flight_recorder_entries = 4;
  StatusOr<std::unique_ptr<Communicator>> made = CreateCommunicator(options, /*force_mpi=*/true);
  ASSERT_TRUE(made.ok()) << made.status().message();
  Communicator& c = **made;
  float x = 1.0f;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(c.AllReduce(&x, &x, 1, DataType::kF32, ReduceOp::kMax).ok());
  ASSERT_TRUE(c.Barrier().ok());
  const std::string record = c.FlightRecord();
  EXPECT_THAT(record, HasSubstr("rank " + std::to_string(c.rank()) + " (host "));
  EXPECT_THAT(record, HasSubstr("last 4 of 6 operations"));
  EXPECT_THAT(record, ::testing::ContainsRegex("#5 +AllReduce +4 +float +max +tree .* done"));
  EXPECT_THAT(record, ::testing::ContainsRegex("#6 +Barrier +0 .* done"));
  EXPECT_THAT(record, ::testing::Not(HasSubstr("#2 ")));
}

// InFlight names the collective a rank is stuck in and the peer it waits for: every rank but the
// last waits in a ring allreduce while the last rank holds back; the ring's receive on rank r
// comes from rank r-1 and its sends go to r+1, so the peer named must be a ring neighbour, and
// on the rank right after the late one (rank 0), nothing can arrive before the late rank joins.
TEST(FlightRecorderTest, InFlightNamesTheCollectiveAndThePeer) {
  Communicator& c = Comm("ring4k");
  const int n = c.size(), r = c.rank(), late = n - 1;
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  ASSERT_TRUE(c.Barrier().ok());
  EXPECT_EQ(c.InFlight(), "");
  std::vector<float> x(4096, 1.0f);
  if (r == late) std::this_thread::sleep_for(std::chrono::milliseconds(400));
  StatusOr<std::unique_ptr<CommHandle>> h =
      c.AllReduceAsync(x.data(), x.data(), x.size(), DataType::kF32, ReduceOp::kSum);
  ASSERT_TRUE(h.ok());
  if (r == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    const std::string what = c.InFlight();
    EXPECT_THAT(what,
                ::testing::ContainsRegex("^AllReduce #[0-9]+ \\(16384 bytes float sum, ring\\), running for "
                                         "[0-9.]+ s, waiting for rank [0-9]+ \\(host "))
        << what;
    const int left = (r + n - 1) % n, right = (r + 1) % n;
    EXPECT_TRUE(what.find("waiting for rank " + std::to_string(left) + " ") != std::string::npos ||
                what.find("waiting for rank " + std::to_string(right) + " ") != std::string::npos)
        << what;
  }
  ASSERT_TRUE((*h)->Wait().ok());
  EXPECT_EQ(x[0], static_cast<float>(n));
  EXPECT_EQ(c.InFlight(), "");
}

// Prints a failure on ranks other than 0, prefixed with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.summary());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) {
  using namespace fjord;
  ::testing::InitGoogleTest(&argc, argv);
  CommOptions options;
  options.timeout = std::chrono::seconds(30);
  struct Made {
    const char* name;
    Algorithm algorithm;
    size_t chunk;
  };
  for (const Made& m :
       {Made{"auto", Algorithm::kAuto, 0}, Made{"mpi", Algorithm::kMpi, 0}, Made{"ring", Algorithm::kRing, 0},
        Made{"tree", Algorithm::kTree, 0}, Made{"ring4k", Algorithm::kRing, 4096}}) {
    options.algorithm = m.algorithm;
    options.ring_chunk_bytes = m.chunk;
    StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(options, /*force_mpi=*/true);
    if (!comm.ok()) {
      std::fprintf(stderr, "collectives_test: %s\n", comm.status().message().c_str());
      return 1;
    }
    g_comms[m.name] = std::move(comm).value();
  }
  Communicator& main_comm = *g_comms["auto"];
  const int rank = main_comm.rank();
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int32_t failed_anywhere = failed_here;
  const Status s = main_comm.AllReduce(&failed_anywhere, &failed_anywhere, 1, DataType::kI32, ReduceOp::kMax);
  if (!s.ok()) main_comm.Abort("collectives_test: could not collect the results: " + s.message(), 1);
  if (rank == 0 && failed_anywhere && !failed_here) {
    std::printf("collectives_test: tests failed on other ranks (see the [rank N] lines)\n");
  }
  g_comms.clear();  // the last communicator finalizes MPI
  return failed_anywhere;
}
