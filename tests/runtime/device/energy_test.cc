// The energy counters (runtime/device/energy.h) against a powercap tree and a fake NVML that the
// test drives: every expected joule count is computed here from the values the test wrote.
#include "runtime/device/energy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "collectives/communicator.h"
#include "collectives/self_communicator.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class EnergyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("fjord_energy_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
             "_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override {
    fs::remove_all(root_);
    ::unsetenv("FJORD_FAKE_NVML_DIR");
  }
  static void Write(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::trunc) << text;
  }
  // A RAPL zone as the kernel lays it out.
  void Zone(const std::string& zone, const std::string& name, uint64_t energy_uj, uint64_t range_uj) {
    Write(root_ / "powercap" / zone / "name", name + "\n");
    Write(root_ / "powercap" / zone / "energy_uj", std::to_string(energy_uj) + "\n");
    Write(root_ / "powercap" / zone / "max_energy_range_uj", std::to_string(range_uj) + "\n");
  }
  void SetEnergy(const std::string& zone, uint64_t energy_uj) {
    Write(root_ / "powercap" / zone / "energy_uj", std::to_string(energy_uj) + "\n");
  }
  EnergyMeter::Options Rapl() const {
    EnergyMeter::Options o;
    o.powercap_root = (root_ / "powercap").string();
    return o;
  }
  fs::path root_;
};

TEST_F(EnergyTest, SteadyCountsOfEveryPackageAreSummedAndSubZonesAndPsysAreNot) {
  const uint64_t range = 262143328850;
  Zone("intel-rapl:0", "package-0", 1000000, range);
  Zone("intel-rapl:1", "package-1", 5000000, range);
  Zone("intel-rapl:0:0", "core", 300, range);  // inside package-0: counting it would count twice
  Zone("intel-rapl:2", "psys", 900, range);    // the platform, which contains the packages
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Rapl());
  ASSERT_EQ(m->keys().size(), 2u) << ::testing::PrintToString(m->notes());
  EXPECT_TRUE(m->measuring());
  EXPECT_EQ(m->Read(), 0u);  // starts the window
  uint64_t p0 = 1000000, p1 = 5000000;
  for (int window = 1; window <= 3; ++window) {
    const uint64_t d0 = 123457 * window, d1 = 9876 + window;
    p0 += d0;
    p1 += d1;
    SetEnergy("intel-rapl:0", p0);
    SetEnergy("intel-rapl:1", p1);
    SetEnergy("intel-rapl:0:0", 300 + 1000000 * window);
    SetEnergy("intel-rapl:2", 900 + 7000000 * window);
    EXPECT_EQ(m->Read(), d0 + d1) << "window " << window;
  }
}

TEST_F(EnergyTest, AWrapAroundAtMaxEnergyRangeIsUndone) {
  const uint64_t range = 1000000;
  Zone("intel-rapl:0", "package-0", range - 100, range);
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Rapl());
  ASSERT_EQ(m->Read(), 0u);
  SetEnergy("intel-rapl:0", 50);  // 100 µJ to the wrap, 50 after it
  EXPECT_EQ(m->Read(), 150u);
  SetEnergy("intel-rapl:0", 50 + 7000);
  EXPECT_EQ(m->Read(), 7000u);
}

TEST_F(EnergyTest, ACounterThatDisappearsMidRunStopsMeasuringAndSaysWhich) {
  Zone("intel-rapl:0", "package-0", 10, 1000000);
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Rapl());
  ASSERT_EQ(m->Read(), 0u);
  SetEnergy("intel-rapl:0", 20);
  ASSERT_EQ(m->Read(), 10u);
  fs::remove(root_ / "powercap/intel-rapl:0/energy_uj");
  EXPECT_EQ(m->Read(), std::nullopt);
  EXPECT_FALSE(m->measuring());
  EXPECT_FALSE(m->covered());
  ASSERT_FALSE(m->notes().empty());
  EXPECT_THAT(m->notes().back(), HasSubstr("intel-rapl:0/energy_uj"));
  EXPECT_THAT(m->notes().back(), HasSubstr("not measured from here on"));
  SetEnergy("intel-rapl:0", 30);  // back again: a window that lost its start is still not measured
  EXPECT_EQ(m->Read(), std::nullopt);
}

TEST_F(EnergyTest, ANonNumericFileIsNotACounterAtStartAndStopsOneMidRun) {
  Zone("intel-rapl:0", "package-0", 10, 1000000);
  Zone("intel-rapl:1", "package-1", 10, 1000000);
  Write(root_ / "powercap/intel-rapl:1/energy_uj", "n/a\n");
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Rapl());
  ASSERT_EQ(m->keys().size(), 1u);
  ASSERT_EQ(m->notes().size(), 1u);
  EXPECT_THAT(m->notes()[0], HasSubstr("intel-rapl:1/energy_uj holds \"n/a\", not a count"));
  ASSERT_EQ(m->Read(), 0u);
  Write(root_ / "powercap/intel-rapl:0/energy_uj", "12x\n");
  EXPECT_EQ(m->Read(), std::nullopt);
  EXPECT_THAT(m->notes().back(), HasSubstr("holds \"12x\""));
}

TEST_F(EnergyTest, NoZoneMeansNotMeasuredWithAReason) {
  fs::create_directories(root_ / "powercap");
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Rapl());
  EXPECT_FALSE(m->covered());
  EXPECT_EQ(m->Read(), 0u);  // reads nothing, but measures nothing either
  ASSERT_EQ(m->notes().size(), 1u);
  EXPECT_THAT(m->notes()[0], HasSubstr("has no intel-rapl:N zone"));
  EnergyMeter::Options missing;
  missing.powercap_root = (root_ / "absent").string();
  EXPECT_THAT(EnergyMeter::Open(missing)->notes().at(0), HasSubstr("absent"));
}

// The fake NVML, loaded through the same dlopen path as libnvidia-ml.so.1.
class NvmlTest : public EnergyTest {
 protected:
  void SetUp() override {
    EnergyTest::SetUp();
    ::setenv("FJORD_FAKE_NVML_DIR", (root_ / "nvml").string().c_str(), 1);
    Write(root_ / "nvml/count", "2\n");
    Write(root_ / "nvml/gpu0", "1000\n");
    Write(root_ / "nvml/gpu1", "777000\n");
  }
  EnergyMeter::Options Gpu(int slot) const {
    EnergyMeter::Options o;
    o.powercap_root = "";
    o.nvml_library = FJORD_FAKE_NVML;
    o.gpu_slot = slot;
    return o;
  }
};

TEST_F(NvmlTest, TheRanksGpuCounterIsReadInMillijoules) {
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Gpu(3));  // slot 3 of 2 GPUs: GPU 1
  ASSERT_EQ(m->keys(), std::vector<std::string>{"nvml:1"}) << ::testing::PrintToString(m->notes());
  EXPECT_THAT(m->names()[0], HasSubstr("Fake GPU 1"));
  ASSERT_EQ(m->Read(), 0u);
  Write(root_ / "nvml/gpu1", std::to_string(777000 + 4321) + "\n");
  Write(root_ / "nvml/gpu0", "999999\n");  // another rank's GPU
  EXPECT_EQ(m->Read(), 4321u * 1000u);
}

TEST_F(NvmlTest, ACounterThatGoesBackOrFailsStopsMeasuring) {
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(Gpu(0));
  ASSERT_EQ(m->Read(), 0u);
  Write(root_ / "nvml/gpu0", "500\n");
  EXPECT_EQ(m->Read(), std::nullopt);
  EXPECT_THAT(m->notes().back(), HasSubstr("went back from 1000 to 500 mJ"));
  std::unique_ptr<EnergyMeter> m2 = EnergyMeter::Open(Gpu(0));
  ASSERT_EQ(m2->Read(), 0u);
  fs::remove(root_ / "nvml/gpu0");
  EXPECT_EQ(m2->Read(), std::nullopt);
  EXPECT_THAT(m2->notes().back(), HasSubstr("Not Supported"));
}

TEST_F(NvmlTest, AMissingLibraryAFailedInitAndNoGpuAreNotMeasuredWithTheReason) {
  EnergyMeter::Options absent = Gpu(0);
  absent.nvml_library = (root_ / "libnvidia-ml-absent.so").string();
  std::unique_ptr<EnergyMeter> m = EnergyMeter::Open(absent);
  EXPECT_FALSE(m->covered());
  ASSERT_EQ(m->notes().size(), 1u);
  EXPECT_THAT(m->notes()[0], HasSubstr("cannot load " + absent.nvml_library));
  Write(root_ / "nvml/init_error", "999\n");
  EXPECT_THAT(EnergyMeter::Open(Gpu(0))->notes().at(0), HasSubstr("nvmlInit: Unknown Error"));
  fs::remove(root_ / "nvml/init_error");
  Write(root_ / "nvml/count", "0\n");
  EXPECT_THAT(EnergyMeter::Open(Gpu(0))->notes().at(0), HasSubstr("no GPU"));
  EXPECT_TRUE(EnergyMeter::Open(Gpu(-1))->notes().empty());  // a CPU rank does not look for NVML
}

TEST(WindowEnergyTest, OneRankIsMeasuredEstimatedOrNeither) {
  std::unique_ptr<Communicator> comm = CreateSelfCommunicator(CommOptions{});
  StatusOr<WindowEnergy> w = SumWindowEnergy(*comm, 2500000, true, 0.0, 2.0);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(w->measured_uj, 2500000u);
  EXPECT_EQ(w->measured_ranks, 1);
  // No counter: rank_power_w x seconds, labelled estimated, never measured.
  w = SumWindowEnergy(*comm, std::nullopt, false, 150.0, 0.25);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->measured_ranks, 0);
  EXPECT_EQ(w->estimated_ranks, 1);
  EXPECT_EQ(w->estimated_uj, 37500000u);
  w = SumWindowEnergy(*comm, std::nullopt, false, 0.0, 0.25);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->measured_ranks + w->estimated_ranks, 0);
  EXPECT_EQ(w->ranks, 1);
}

}  // namespace
}  // namespace fjord
