// RankInfoFromEnvironment from the launcher variables of Open MPI, PMIx and Slurm (set with
// setenv; GetEnv reads only the variables listed in common/env.cc), and the choice of backend.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "collectives/communicator.h"

namespace fjord {
namespace {

const char* const kVars[] = {"OMPI_COMM_WORLD_RANK",
                             "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE",
                             "PMIX_RANK",
                             "SLURM_PROCID",
                             "SLURM_NTASKS",
                             "SLURM_LOCALID",
                             "SLURM_NTASKS_PER_NODE"};

// Starts every test from an environment without launcher variables, and restores it after.
class RankInfoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      if (const char* value = std::getenv(v)) saved_.emplace_back(v, value);
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }
  std::vector<std::pair<std::string, std::string>> saved_;
};

std::string Hostname() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return host;
}

TEST_F(RankInfoTest, WithoutLauncherIsRankZeroOfOne) {
  const RankInfo info = RankInfoFromEnvironment();
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.local_size, 1);
  EXPECT_EQ(info.host, Hostname());
  EXPECT_FALSE(info.host.empty());
}

TEST_F(RankInfoTest, OpenMpi) {
  setenv("OMPI_COMM_WORLD_RANK", "5", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "8", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  // Open MPI's variables win over Slurm's (mpirun inside an allocation sets both).
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_NTASKS", "1", 1);
  const RankInfo info = RankInfoFromEnvironment();
  EXPECT_EQ(info.rank, 5);
  EXPECT_EQ(info.world_size, 8);
  EXPECT_EQ(info.local_rank, 1);
  EXPECT_EQ(info.local_size, 4);
}

TEST_F(RankInfoTest, Slurm) {
  setenv("SLURM_PROCID", "3", 1);
  setenv("SLURM_NTASKS", "6", 1);
  setenv("SLURM_LOCALID", "0", 1);
  setenv("SLURM_NTASKS_PER_NODE", "3", 1);
  const RankInfo info = RankInfoFromEnvironment();
  EXPECT_EQ(info.rank, 3);
  EXPECT_EQ(info.world_size, 6);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_EQ(info.local_size, 3);
}

TEST_F(RankInfoTest, PmixRankBeforeSlurm) {
  setenv("PMIX_RANK", "2", 1);
  setenv("SLURM_PROCID", "9", 1);
  setenv("SLURM_NTASKS", "4", 1);
  const RankInfo info = RankInfoFromEnvironment();
  EXPECT_EQ(info.rank, 2);
  EXPECT_EQ(info.world_size, 4);
}

TEST_F(RankInfoTest, OneRankLaunchGetsTheSelfCommunicator) {
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "1", 1);
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  ASSERT_TRUE(comm.ok()) << comm.status().message();
  EXPECT_STREQ((*comm)->backend(), "self");
}

TEST(AlgorithmTest, ParseAndName) {
  for (Algorithm a : {Algorithm::kAuto, Algorithm::kMpi, Algorithm::kRing, Algorithm::kTree}) {
    StatusOr<Algorithm> parsed = ParseAlgorithm(AlgorithmName(a));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, a);
  }
  StatusOr<Algorithm> bad = ParseAlgorithm("nccl");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("use auto, mpi, ring or tree"), std::string::npos);
  EXPECT_EQ(DataTypeSize(DataType::kBF16), 2u);
  EXPECT_STREQ(DataTypeName(DataType::kF16), "half");
  EXPECT_STREQ(ReduceOpName(ReduceOp::kAvg), "avg");
}

}  // namespace
}  // namespace fjord
