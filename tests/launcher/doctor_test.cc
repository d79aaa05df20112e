// `fjord doctor` on this machine (launcher/doctor.h), through the binary. What each row should say is
// decided here independently of doctor's code: whether an NVIDIA driver loads (dlopen in the test),
// whether mpirun exists, what the test made wrong on purpose. The report is read with protobuf's JSON
// parser into proto DoctorReport. The multi-node run is in tests/runtime/tenancy/netns_cluster_test.cc.
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <map>

#include "proto/doctor.pb.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

class DoctorTest : public testing::TempDirTest {
 protected:
  DoctorTest() : TempDirTest("doctor_") {}
  // Runs doctor with --json; the report by check name.
  std::map<std::string, proto::DoctorCheck> Doctor(const std::string& args, RunResult* r,
                                                   const std::string& env = "") {
    *r = Shell("{ " + env + " " + FJORD_BINARY + " doctor --json " + args + "; } 2>/dev/null");
    proto::DoctorReport report;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(r->output, &report).ok()) << r->output;
    std::map<std::string, proto::DoctorCheck> by_name;
    for (const proto::DoctorCheck& c : report.check()) by_name[c.name()] = c;
    return by_name;
  }
};

bool Loads(const char* library) {
  void* h = ::dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (h != nullptr) ::dlclose(h);
  return h != nullptr;
}

TEST_F(DoctorTest, EveryCheckOnThisMachineAndExitOneExactlyWhenOneFails) {
  RunResult r;
  auto checks = Doctor("", &r);
  for (const char* name : {"mpi", "nccl", "cublas", "node identity", "checkpoint space", "lease dir", "clock",
                           "user namespaces", "threads"}) {
    EXPECT_EQ(checks.count(name), 1u) << name << " missing:\n" << r.output;
  }
  bool failed = false;
  for (const auto& [name, c] : checks) {
    failed |= c.level() == proto::DoctorCheck::FAIL;
    EXPECT_FALSE(c.host().empty()) << name;
    if (c.level() != proto::DoctorCheck::OK) {
      EXPECT_FALSE(c.fix().empty()) << name << " says no fix";
    }
  }
  EXPECT_EQ(r.exit_code, failed ? 1 : 0) << r.output;
  // A CPU-only node: "no GPU" is a WARN, and the GPU libraries are WARN (needed on GPU nodes only).
  if (!Loads("libcuda.so.1") && !Loads("libnvidia-ml.so.1")) {
    ASSERT_EQ(checks.count("gpu"), 1u) << r.output;
    EXPECT_EQ(checks["gpu"].level(), proto::DoctorCheck::WARN);
    EXPECT_THAT(checks["gpu"].detail(), HasSubstr("no GPU"));
    if (!Loads("libnccl.so.2")) {
      EXPECT_EQ(checks["nccl"].level(), proto::DoctorCheck::WARN);
    }
  }
  // mpirun is installed here: two local ranks start and reduce.
  if (Shell("command -v mpirun").exit_code == 0) {
    EXPECT_EQ(checks["mpi"].level(), proto::DoctorCheck::OK) << checks["mpi"].detail();
    EXPECT_THAT(checks["mpi"].detail(), HasSubstr("started 2 local ranks"));
  }
  EXPECT_EQ(checks["checkpoint space"].level(), proto::DoctorCheck::WARN);  // no --job
  EXPECT_EQ(checks["lease dir"].level(), proto::DoctorCheck::WARN);         // no --inventory
}

TEST_F(DoctorTest, ASingleRankUnderMpirunStartsNoMpirunOfItsOwn) {
  // One planned node (launch --doctor) gives a one-rank doctor under mpirun: its MPI row is the
  // launcher's, never a nested mpirun (which would inherit the launcher's environment).
  RunResult r = Shell(testing::Mpirun(1) + " doctor --json");
  const size_t begin = r.output.find('{'), end = r.output.rfind('}');
  ASSERT_NE(begin, std::string::npos) << r.output;
  proto::DoctorReport report;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(r.output.substr(begin, end - begin + 1), &report).ok())
      << r.output;
  bool found = false;
  for (const proto::DoctorCheck& c : report.check()) {
    if (c.name() != "mpi") continue;
    found = true;
    EXPECT_EQ(c.level(), proto::DoctorCheck::OK) << c.detail();
    EXPECT_THAT(c.detail(), HasSubstr("started by the launcher, one of 1"));
  }
  EXPECT_TRUE(found) << r.output;
}

TEST_F(DoctorTest, TheTableGivesEveryRowAndWhatToDo) {
  RunResult r = RunFjord("doctor");
  EXPECT_THAT(r.output, HasSubstr("HOST"));
  EXPECT_THAT(r.output, HasSubstr("CHECK"));
  EXPECT_THAT(r.output, HasSubstr("lease dir"));
  EXPECT_THAT(r.output, HasSubstr("-> give --inventory INV.textproto"));
  EXPECT_THAT(r.output, HasSubstr("fjord doctor: "));
  EXPECT_THAT(r.output, HasSubstr(" host(s): "));
}

TEST_F(DoctorTest, AnIdentityOfAnotherHostFailsAndTheExitSaysSo) {
  WriteText(Path("other.textproto"), "hostname: \"otherhost\" jurisdiction: \"NO\" site: \"osl1\"\n");
  RunResult r;
  auto checks = Doctor("", &r, "FJORD_NODE_IDENTITY=" + Path("other.textproto"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(checks["node identity"].level(), proto::DoctorCheck::FAIL);
  EXPECT_THAT(checks["node identity"].detail(), HasSubstr("names host \"otherhost\" but this host is"));
  EXPECT_THAT(checks["node identity"].fix(), HasSubstr("fjord node init"));
}

TEST_F(DoctorTest, LeaseDirAndCheckpointSpaceOfTheJobAndInventory) {
  WriteText(Path("inv.textproto"),
            "lease_dir: \"" + Path("leases") +
                "\"\nnode { hostname: \"a\" jurisdiction: \"NO\" site: \"osl1\" slots: 1 }\n");
  WriteText(Path("job.textproto"),
            "model { n_layer: 1 n_head: 2 n_embd: 32 seq_len: 32 vocab_size: 256 }\n"
            "train { micro_batch: 2 steps: 4 lr: 1e-3 }\ndata { train: \"x_*.bin\" }\n"
            "run_dir: \"" +
                Path("run") + "\"\n");
  RunResult r;
  auto checks = Doctor("--inventory " + Path("inv.textproto") + " --job " + Path("job.textproto"), &r);
  EXPECT_EQ(checks["lease dir"].level(), proto::DoctorCheck::FAIL) << checks["lease dir"].detail();
  EXPECT_THAT(checks["lease dir"].detail(),
              HasSubstr(Path("leases") + " (lease_dir of " + Path("inv.textproto") + ") is missing"));
  EXPECT_EQ(r.exit_code, 1);
  // The checkpoint directory does not exist yet: its nearest existing parent is checked.
  EXPECT_EQ(checks["checkpoint space"].level(), proto::DoctorCheck::OK)
      << checks["checkpoint space"].detail();
  EXPECT_THAT(checks["checkpoint space"].detail(), HasSubstr(Path("run") + "/checkpoints: "));
  EXPECT_THAT(checks["checkpoint space"].detail(), HasSubstr("free on " + dir_.string()));
  std::filesystem::create_directories(Path("leases"));
  checks = Doctor("--inventory " + Path("inv.textproto"), &r);
  EXPECT_EQ(checks["lease dir"].level(), proto::DoctorCheck::OK) << checks["lease dir"].detail();
}

}  // namespace
}  // namespace fjord
