// World size 1 without mpirun: CreateCommunicator gives the self communicator, whose
// collectives are copies, validated like the MPI backend's.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "tests/collectives/test_values.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Communicator> MakeSelf() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMIX_RANK"}) unsetenv(v);
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  EXPECT_TRUE(comm.ok()) << comm.status().message();
  return std::move(comm).value();
}

TEST(SelfCommunicatorTest, IsRankZeroOfOne) {
  std::unique_ptr<Communicator> comm = MakeSelf();
  EXPECT_STREQ(comm->backend(), "self");
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  EXPECT_EQ(comm->rank_info().world_size, 1);
  EXPECT_FALSE(comm->rank_info().host.empty());
}

// A timeout of zero would time every collective out at once: refused with the value.
TEST(SelfCommunicatorTest, NonPositiveTimeoutIsRefused) {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMIX_RANK"}) unsetenv(v);
  for (const long ms : {0L, -5L}) {
    CommOptions options;
    options.timeout = std::chrono::milliseconds(ms);
    StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(options);
    ASSERT_FALSE(comm.ok());
    EXPECT_EQ(comm.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(comm.status().message(),
                HasSubstr("communicator timeout must be positive, got " + std::to_string(ms) + " ms"));
  }
}

TEST(SelfCommunicatorTest, AllReduceIsTheInputForEveryDtypeAndOp) {
  std::unique_ptr<Communicator> comm = MakeSelf();
  for (DataType dtype : testing::AllDataTypes()) {
    for (ReduceOp op : testing::AllReduceOps()) {
      for (size_t count : {0, 1, 7, 1021}) {
        const std::vector<std::byte> in = testing::Inputs(dtype, op, 1, 0, count);
        std::vector<std::byte> out(in.size(), std::byte{0xee});
        const Status s = comm->AllReduce(in.data(), out.data(), count, dtype, op);
        if (!testing::Meaningful(dtype, op)) {
          EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
          continue;
        }
        ASSERT_TRUE(s.ok()) << s.message();
        EXPECT_EQ(out, testing::Expected(dtype, op, 1, count))
            << DataTypeName(dtype) << " " << ReduceOpName(op);
        std::vector<std::byte> inplace = in;
        ASSERT_TRUE(comm->AllReduce(inplace.data(), inplace.data(), count, dtype, op).ok());
        EXPECT_EQ(inplace, in);
      }
    }
  }
}

TEST(SelfCommunicatorTest, OtherCollectivesCopy) {
  std::unique_ptr<Communicator> comm = MakeSelf();
  std::vector<int32_t> a = {1, 2, 3, 4, 5}, b(5, -1);
  ASSERT_TRUE(comm->ReduceScatter(a.data(), b.data(), 5, DataType::kI32, ReduceOp::kSum).ok());
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), -1);
  ASSERT_TRUE(comm->AllGather(a.data(), b.data(), 5, DataType::kI32).ok());
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), -1);
  ASSERT_TRUE(comm->AllToAll(a.data(), b.data(), 5, DataType::kI32).ok());
  EXPECT_EQ(b, a);
  std::fill(b.begin(), b.end(), -1);
  ASSERT_TRUE(comm->SendRecv(a.data(), 5, 0, b.data(), 5, 0, DataType::kI32).ok());
  EXPECT_EQ(b, a);
  ASSERT_TRUE(comm->Broadcast(a.data(), 5, DataType::kI32, 0).ok());
  EXPECT_EQ(a, (std::vector<int32_t>{1, 2, 3, 4, 5}));
  ASSERT_TRUE(comm->Barrier().ok());
  // In place: recv == send + rank * count.
  ASSERT_TRUE(comm->ReduceScatter(a.data(), a.data(), 5, DataType::kI32, ReduceOp::kMax).ok());
  ASSERT_TRUE(comm->AllGather(a.data(), a.data(), 5, DataType::kI32).ok());
  EXPECT_EQ(a, (std::vector<int32_t>{1, 2, 3, 4, 5}));
}

TEST(SelfCommunicatorTest, AsyncHandlesAreComplete) {
  std::unique_ptr<Communicator> comm = MakeSelf();
  float x = 2.5f, y = 0;
  StatusOr<std::unique_ptr<CommHandle>> h = comm->AllReduceAsync(&x, &y, 1, DataType::kF32, ReduceOp::kAvg);
  ASSERT_TRUE(h.ok());
  StatusOr<bool> done = (*h)->Test();
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(*done);
  EXPECT_TRUE((*h)->Wait().ok());
  EXPECT_EQ(y, 2.5f);
  std::vector<StatusOr<std::unique_ptr<CommHandle>>> handles;
  handles.push_back(comm->BarrierAsync());
  handles.push_back(comm->BroadcastAsync(&x, 1, DataType::kF32, 0));
  handles.push_back(comm->AllGatherAsync(&x, &y, 1, DataType::kF32));
  handles.push_back(comm->AllToAllAsync(&x, &y, 1, DataType::kF32));
  handles.push_back(comm->ReduceScatterAsync(&x, &y, 1, DataType::kF32, ReduceOp::kMax));
  for (StatusOr<std::unique_ptr<CommHandle>>& handle : handles) {
    ASSERT_TRUE(handle.ok()) << handle.status().message();
    EXPECT_TRUE(handle.value()->Wait().ok());
  }
  // A refused async call returns the error, not a handle.
  StatusOr<std::unique_ptr<CommHandle>> bad = comm->BroadcastAsync(&x, 1, DataType::kF32, 1);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(SelfCommunicatorTest, RefusesInvalidArguments) {
  std::unique_ptr<Communicator> comm = MakeSelf();
  std::vector<float> buf(8);
  Status s = comm->Broadcast(buf.data(), 8, DataType::kF32, 1);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("root 1 is not a rank"));
  s = comm->SendRecv(buf.data(), 2, 0, buf.data() + 4, 3, 0, DataType::kF32);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->SendRecv(buf.data(), 2, 1, buf.data() + 4, 2, 0, DataType::kF32).code(),
            StatusCode::kInvalidArgument);
  EXPECT_THAT(comm->AllReduce(buf.data(), buf.data() + 1, 4, DataType::kF32, ReduceOp::kSum).message(),
              HasSubstr("overlap"));
  EXPECT_THAT(comm->AllReduce(nullptr, buf.data(), 4, DataType::kF32, ReduceOp::kSum).message(),
              HasSubstr("null buffer"));
  EXPECT_TRUE(comm->AllReduce(nullptr, nullptr, 0, DataType::kF32, ReduceOp::kSum).ok());
  EXPECT_EQ(comm->AllToAll(buf.data(), buf.data() + 2, 4, DataType::kF32).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->AllReduce(buf.data(), buf.data(), 1, static_cast<DataType>(9), ReduceOp::kSum).code(),
            StatusCode::kInvalidArgument);
  // Still usable after refusals.
  EXPECT_TRUE(comm->AllReduce(buf.data(), buf.data(), 8, DataType::kF32, ReduceOp::kSum).ok());
}

TEST(SelfCommunicatorTest, FlightRecorderNumbersCollectivesAndSendRecvApart) {
  CommOptions options;
  options.flight_recorder_entries = 3;
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS", "PMIX_RANK"}) unsetenv(v);
  StatusOr<std::unique_ptr<Communicator>> made = CreateCommunicator(options);
  ASSERT_TRUE(made.ok());
  Communicator& comm = **made;
  float x = 1, y = 0;
  ASSERT_TRUE(comm.AllReduce(&x, &y, 1, DataType::kF32, ReduceOp::kSum).ok());
  ASSERT_TRUE(comm.Barrier().ok());
  ASSERT_TRUE(comm.SendRecv(&x, 1, 0, &y, 1, 0, DataType::kF32).ok());
  ASSERT_TRUE(comm.AllGather(&x, &y, 1, DataType::kF32).ok());
  const std::string record = comm.FlightRecord();
  EXPECT_THAT(record, HasSubstr("last 3 of 4 operations"));
  EXPECT_THAT(record, ::testing::Not(HasSubstr("AllReduce")));  // the oldest was overwritten
  EXPECT_THAT(record, ::testing::ContainsRegex("#2 +Barrier"));
  EXPECT_THAT(record, ::testing::ContainsRegex("p2p\\.1 +SendRecv +4 +float"));
  EXPECT_THAT(record, ::testing::ContainsRegex("#3 +AllGather +4 +float +- +copy .* done"));
}

}  // namespace
}  // namespace fjord
