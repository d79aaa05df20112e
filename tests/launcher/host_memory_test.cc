// The CPU memory plan measured against what really bounds a job (runtime/device/device.h,
// AvailableHostMemory): a memory cgroup's limit where it is below the host's MemAvailable (Slurm's
// cgroup plugin, systemd, containers kill a job at that limit), and the host's memory shared by the
// ranks that run on it. The oracle is the limit the test itself writes into a cgroup it makes, and
// the plan's own total for one rank.
//
// Needs root and a memory cgroup controller (v1 or v2); skips with the reason elsewhere.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

using ::testing::HasSubstr;
using testing::RunResult;
using testing::Shell;
using testing::WriteText;

// Above the plan's process allowance of a CUDA build (288 MiB a rank under MPI), with room for a model.
constexpr uint64_t kLimit = uint64_t{1} << 30;

// The byte count of a plan line ("  total   123  0.00 GiB", "  device memory  456 ...").
uint64_t Term(const std::string& out, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("\n  " + name + " +(\\d+) "))) return 0;
  return std::stoull(m[1]);
}

// A memory cgroup of kLimit bytes (v2 where the unified hierarchy offers the memory controller,
// else v1), removed at the end; In(cmd) runs a shell command inside it.
class HostMemoryTest : public testing::TempDirTest {
 protected:
  HostMemoryTest() : TempDirTest("fjord_host_memory_") {}
  void SetUp() override {
    TempDirTest::SetUp();
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to make a memory cgroup";
    const std::string find =
        "v2=$(awk '$9 == \"cgroup2\" {print $5; exit}' /proc/self/mountinfo); "
        "if [ -n \"$v2\" ] && grep -qw memory \"$v2/cgroup.subtree_control\" 2>/dev/null; then echo v2 $v2; "
        "else awk '$9 == \"cgroup\" && $NF ~ /(^|,)memory(,|$)/ {print \"v1\", $5; exit}' "
        "/proc/self/mountinfo; fi";
    const RunResult where = Shell(find);
    std::istringstream in(where.output);
    std::string version, mount;
    in >> version >> mount;
    if (mount.empty()) GTEST_SKIP() << "no memory cgroup controller here (neither v1 nor v2)";
    cgroup_ = mount + "/fjord-host-memory-test-" + std::to_string(::getpid());
    const std::string limit_file = version == "v2" ? "memory.max" : "memory.limit_in_bytes";
    const RunResult made =
        Shell("mkdir " + cgroup_ + " && echo " + std::to_string(kLimit) + " > " + cgroup_ + "/" + limit_file);
    if (made.exit_code != 0) GTEST_SKIP() << "cannot make a memory cgroup: " << made.output;
    WriteText(Path("job.textproto"),
              "model { n_layer: 4 n_head: 4 n_embd: 128 seq_len: 64 vocab_size: 256 }\n"
              "train { micro_batch: 2 steps: 2 threads: 1 }\n"
              "data { train: \"" +
                  Path("tokens.bin") + "\" }\nrun_dir: \"" + Path("run") + "\"\n");
    // An llm.c token shard: 256 int32 header (magic, version, count), then uint16 tokens.
    std::vector<int32_t> header(256, 0);
    header[0] = 20240520, header[1] = 1, header[2] = 1 << 14;
    std::vector<uint16_t> tokens(1 << 14);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 2654435761u) % 256);
    std::ofstream out(Path("tokens.bin"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), header.size() * sizeof(int32_t));
    out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(uint16_t));
  }
  void TearDown() override {
    if (!cgroup_.empty()) {
      Shell("for p in $(cat " + cgroup_ + "/cgroup.procs); do kill -KILL $p; done; sleep 0.2; rmdir " +
            cgroup_);
    }
    TempDirTest::TearDown();
  }
  RunResult In(const std::string& cmd) {
    const std::string script = Path("in-cgroup.sh");
    WriteText(script, "echo $$ > " + cgroup_ + "/cgroup.procs && exec " + cmd + "\n", 0755);
    return Shell("sh " + script);
  }
  std::string cgroup_;
};

TEST_F(HostMemoryTest, ThePlanSeesTheCgroupLimitInsteadOfMemAvailable) {
  const RunResult inside =
      In(std::string(FJORD_BINARY) + " plan " + Path("job.textproto") + " --ranks 1 --device cpu");
  ASSERT_EQ(inside.exit_code, 0) << inside.output;
  const uint64_t device = Term(inside.output, "device memory");
  // The headroom the cgroup's limit leaves: less the plan process's own memory (22 MB for a CPU
  // build, about 230 MB for a CUDA build, which loads the CUDA libraries), far below MemAvailable.
  EXPECT_LE(device, kLimit) << inside.output;
  EXPECT_GT(device, kLimit / 2) << inside.output;
  EXPECT_THAT(inside.output, HasSubstr("memory cgroup")) << inside.output;
  // Outside it, this machine's memory (more than the test's limit on any machine that runs it).
  const RunResult outside =
      Shell(std::string(FJORD_BINARY) + " plan " + Path("job.textproto") + " --ranks 1");
  ASSERT_EQ(outside.exit_code, 0) << outside.output;
  EXPECT_GT(Term(outside.output, "device memory"), kLimit) << outside.output;
}

TEST_F(HostMemoryTest, RanksOnOneHostShareItsMemory) {
  const std::string plan = std::string(FJORD_BINARY) + " plan " + Path("job.textproto") + " --device cpu";
  const RunResult one = In(plan + " --ranks 4 --ranks-per-node 1");
  const RunResult four = In(plan + " --ranks 4");  // default: all 4 on this host
  // Whether the job fits a quarter of the cgroup does not matter here: the table is printed either way.
  ASSERT_NE(Term(four.output, "device memory"), 0u) << four.output;
  const double ratio = static_cast<double>(Term(one.output, "device memory")) /
                       static_cast<double>(Term(four.output, "device memory"));
  EXPECT_NEAR(ratio, 4.0, 0.05) << one.output << four.output;
  EXPECT_THAT(four.output, HasSubstr("shared by 4 ranks")) << four.output;
  const RunResult bad = In(plan + " --ranks 2 --ranks-per-node 3");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_THAT(bad.output, HasSubstr("--ranks-per-node 3")) << bad.output;
}

// A job whose plan exceeds the cgroup's limit is refused by `fjord train` before it allocates,
// naming the cgroup, instead of being killed by the kernel half-way (exit 137, nothing said).
TEST_F(HostMemoryTest, TrainRefusesAJobOverTheCgroupLimitInsteadOfBeingKilled) {
  // 24 layers of n_embd 512, vocab 32768: the plan's total is over 1 GiB (checked below, from the
  // plan itself).
  const std::string big =
      " --set model.n_layer=24 --set model.n_embd=512 --set model.n_head=8 --set model.vocab_size=32768";
  const RunResult plan =
      Shell(std::string(FJORD_BINARY) + " plan " + Path("job.textproto") + " --ranks 1 --device h200" + big);
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  ASSERT_GT(Term(plan.output, "total"), kLimit) << plan.output;
  const RunResult train = In(std::string(FJORD_BINARY) + " train " + Path("job.textproto") + big);
  EXPECT_EQ(train.exit_code, 1) << train.output;
  EXPECT_THAT(train.output, HasSubstr("memory cgroup")) << train.output;
  EXPECT_THAT(train.output, HasSubstr("nothing was allocated")) << train.output;
}

// Two ranks on this host: each rank's share is half of what the cgroup leaves, so a job that fits
// one rank's plan in the whole limit but not in half of it is refused by both, before either
// allocates, naming the sharing.
TEST_F(HostMemoryTest, TwoRanksOnOneHostAreRefusedWhatOneRankFits) {
  std::string set;
  uint64_t total = 0;
  // Grow n_layer until one rank's plan (its process included) needs more than 55% of the limit: more
  // than half, whatever the other rank, mpirun and its daemon already use, and still well under the
  // whole limit.
  for (int layers = 4; layers <= 96; ++layers) {
    set = " --set model.n_embd=256 --set model.n_head=4 --set model.vocab_size=4096 --set model.n_layer=" +
          std::to_string(layers);
    const RunResult p = Shell(std::string(FJORD_BINARY) + " plan " + Path("job.textproto") +
                              " --ranks 2 --device cpu --ranks-per-node 1" + set);
    ASSERT_EQ(p.exit_code, 0) << p.output;
    total = Term(p.output, "total");
    if (total > kLimit * 55 / 100) break;
  }
  ASSERT_GT(total, kLimit * 55 / 100);
  ASSERT_LT(total, kLimit * 80 / 100);
  const RunResult one = In(std::string(FJORD_BINARY) + " plan " + Path("job.textproto") +
                           " --device cpu --ranks 2 --ranks-per-node 1" + set);
  EXPECT_EQ(one.exit_code, 0) << one.output;
  const RunResult two = In(testing::Mpirun(2) + " train " + Path("job.textproto") + set);
  EXPECT_NE(two.exit_code, 0) << two.output;
  EXPECT_THAT(two.output, HasSubstr("shared by its 2 ranks")) << two.output;
  EXPECT_THAT(two.output, HasSubstr("nothing was allocated")) << two.output;
}

}  // namespace
}  // namespace fjord
