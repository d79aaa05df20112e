// The sum of energy over ranks under mpirun (CTest energy_ranks_np2, _np3): each rank drives a
// powercap tree of its own, or all share one, and every rank checks the window's total against the
// sum this test computes from the values it wrote for every rank.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "collectives/communicator.h"
#include "runtime/device/energy.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
Communicator* g_comm = nullptr;

// The job's scratch directory, the same on every rank (rank 0's pid, broadcast).
fs::path SharedDir(const std::string& name) {
  int pid = ::getpid();
  EXPECT_TRUE(g_comm->Broadcast(&pid, 1, DataType::kI32, 0).ok());
  return fs::path(::testing::TempDir()) / ("fjord_energy_ranks_" + name + "_" + std::to_string(pid));
}

void Write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::trunc) << text;
}

void Zone(const fs::path& root, uint64_t energy_uj) {
  Write(root / "intel-rapl:0/name", "package-0\n");
  Write(root / "intel-rapl:0/max_energy_range_uj", "262143328850\n");
  Write(root / "intel-rapl:0/energy_uj", std::to_string(energy_uj) + "\n");
}

// What the test writes for rank r in window w: a start value and a per-window increase.
uint64_t Start(int r) { return 1000003ull * (r + 1); }
uint64_t Delta(int r, int w) { return 250000ull * (r + 1) + 17ull * w; }

TEST(EnergyRanksTest, EachRanksOwnCountersAreSummedWithOneCollectivePerWindow) {
  const int rank = g_comm->rank(), world = g_comm->size();
  const fs::path dir = SharedDir("own");
  const fs::path mine = dir / ("rank" + std::to_string(rank));
  Zone(mine, Start(rank));
  EnergyMeter::Options o;
  o.powercap_root = mine.string();
  std::unique_ptr<EnergyMeter> meter = EnergyMeter::Open(o);
  ASSERT_TRUE(KeepFirstOnNode(*g_comm, "host-of-this-test", *meter).ok());
  ASSERT_TRUE(meter->measuring()) << ::testing::PrintToString(meter->notes());  // its own tree: kept
  ASSERT_EQ(meter->Read(), 0u);
  uint64_t value = Start(rank);
  for (int w = 1; w <= 3; ++w) {
    value += Delta(rank, w);
    Zone(mine, value);
    StatusOr<WindowEnergy> sum = SumWindowEnergy(*g_comm, meter->Read(), meter->covered(), 0.0, 1.0);
    ASSERT_TRUE(sum.ok()) << sum.status().message();
    uint64_t expected = 0;
    for (int r = 0; r < world; ++r) expected += Delta(r, w);
    EXPECT_EQ(sum->measured_uj, expected) << "window " << w;
    EXPECT_EQ(sum->measured_ranks, world);
    EXPECT_EQ(sum->ranks, world);
  }
  ASSERT_TRUE(g_comm->Barrier().ok());
  if (rank == 0) fs::remove_all(dir);
}

TEST(EnergyRanksTest, ANodesSharedCounterIsCountedOnceAndARankWithoutCountersIsEstimated) {
  const int rank = g_comm->rank(), world = g_comm->size();
  const fs::path dir = SharedDir("shared");
  if (rank == 0) Zone(dir / "node", 5000);
  ASSERT_TRUE(g_comm->Barrier().ok());
  // Ranks 0 .. world-2 share the node's tree (two or more of them under np 3: the sharing case); the
  // last rank has no counter and estimates 40 W.
  EnergyMeter::Options o;
  o.powercap_root = (rank < world - 1 ? dir / "node" : dir / "empty").string();
  fs::create_directories(dir / "empty");
  std::unique_ptr<EnergyMeter> meter = EnergyMeter::Open(o);
  ASSERT_TRUE(KeepFirstOnNode(*g_comm, "one-node", *meter).ok());
  EXPECT_EQ(meter->measuring(), rank == 0);  // the others' copy of the counter is rank 0's
  EXPECT_EQ(meter->covered(), rank < world - 1);
  ASSERT_EQ(meter->Read(), 0u);
  ASSERT_TRUE(g_comm->Barrier().ok());
  if (rank == 0) Zone(dir / "node", 5000 + 64000);
  ASSERT_TRUE(g_comm->Barrier().ok());
  StatusOr<WindowEnergy> sum = SumWindowEnergy(*g_comm, meter->Read(), meter->covered(), 40.0, 0.5);
  ASSERT_TRUE(sum.ok()) << sum.status().message();
  EXPECT_EQ(sum->measured_uj, 64000u);  // once, not world - 1 times
  EXPECT_EQ(sum->measured_ranks, world - 1);
  EXPECT_EQ(sum->estimated_ranks, 1);
  EXPECT_EQ(sum->estimated_uj, 20000000u);  // 40 W x 0.5 s
  ASSERT_TRUE(g_comm->Barrier().ok());
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) {
  using namespace fjord;
  ::testing::InitGoogleTest(&argc, argv);
  CommOptions options;
  options.timeout = std::chrono::seconds(60);
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(options, /*force_mpi=*/true);
  if (!comm.ok()) {
    std::fprintf(stderr, "energy_ranks: %s\n", comm.status().message().c_str());
    return 1;
  }
  g_comm = comm->get();
  const int failed_here = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int32_t failed_anywhere = failed_here;
  const Status s = g_comm->AllReduce(&failed_anywhere, &failed_anywhere, 1, DataType::kI32, ReduceOp::kMax);
  if (!s.ok()) g_comm->Abort("energy_ranks: could not collect the results: " + s.message(), 1);
  g_comm = nullptr;
  comm->reset();
  return failed_anywhere;
}
