// Device selection through the real binary: `device: CUDA` where no GPU can be used and
// `parallel.comm_backend: NCCL` on the CPU are refused with the rank, the host and what to do,
// before anything is written; AUTO says which device it took and how large its arena is, and
// the arena is zeroed before it is freed (read back under FJORD_TEST_HOOK=arena_verify_zero).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "runtime/device/device.h"
#include "tests/launcher/cli_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::RunFjord;
using testing::RunResult;
using testing::Shell;

class DeviceCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("fjord_device_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
            "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    for (int i = 0; text.size() < 6000; ++i) text += "fjord " + std::to_string(i % 97) + " stays home. ";
    std::ofstream(dir_ / "corpus.txt") << text;
    // One line, one document: no validation split (prep takes whole documents for it).
    RunResult r = RunFjord("prep --input " + P("corpus.txt") + " --out " + P("data") + " --val-fraction 0");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(dir_ / "job.textproto")
        << "model { n_layer: 1 n_head: 2 n_embd: 16 seq_len: 16 vocab_size: 256 }\n"
           "train { micro_batch: 2 steps: 2 lr: 1e-3 threads: 1 }\n"
           "data { train: \"" +
               P("data/train_*.bin") + "\" }\n";
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    host_ = host;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string P(const std::string& name) const { return (dir_ / name).string(); }
  std::string Train(const std::string& extra) const {
    return " train " + P("job.textproto") + " --set run_dir=" + P("run") + " " + extra;
  }

  fs::path dir_;
  std::string host_;
};

TEST_F(DeviceCliTest, CudaWithoutAUsableGpuIsRefusedNamingRankHostAndRemedy) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is visible: device: CUDA is valid here";
  RunResult r = RunFjord(Train("--set device=CUDA"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("device: CUDA was asked for"));
  EXPECT_THAT(r.output, HasSubstr("rank 0 on host " + host_));
  EXPECT_THAT(r.output, HasSubstr("set device: AUTO"));
  EXPECT_THAT(r.output, HasSubstr("device: CPU"));
  EXPECT_THAT(r.output, Not(HasSubstr("FATAL")));
  // Only the audit log (which records the refusal) may exist: no metrics, no checkpoint.
  EXPECT_FALSE(fs::exists(P("run/metrics.jsonl"))) << "nothing may be written before the device is known";
  EXPECT_FALSE(fs::exists(P("run/checkpoints")));
}

TEST_F(DeviceCliTest, NcclOnTheCpuIsRefused) {
  RunResult r = RunFjord(Train("--set device=CPU --set parallel.comm_backend=NCCL"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("parallel.comm_backend: NCCL needs a CUDA device, but rank 0 on host " +
                                  host_ + " trains on the CPU (device: CPU)"));
  EXPECT_THAT(r.output, HasSubstr("set parallel.comm_backend: MPI (or AUTO)"));
  EXPECT_FALSE(fs::exists(P("run/metrics.jsonl")));
}

TEST_F(DeviceCliTest, TensorCoreAttentionOnTheCpuIsRefused) {
  RunResult r = RunFjord(Train("--set device=CPU --set model.attention=TENSOR_CORE"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("model.attention: TENSOR_CORE cannot run here: this rank trains on the CPU"));
  EXPECT_THAT(r.output, HasSubstr("rank 0 on host " + host_));
  EXPECT_THAT(r.output, HasSubstr("set model.attention: SIMT or ATTENTION_AUTO"));
  EXPECT_FALSE(fs::exists(P("run/metrics.jsonl")));
}

TEST_F(DeviceCliTest, AutoLogsItsChoiceAndTheArenaIsZeroedBeforeRelease) {
  RunResult r = Shell("FJORD_TEST_HOOK=arena_verify_zero " + std::string(FJORD_BINARY) + Train(""));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const bool gpu = CudaDeviceCount() > 0;
  std::smatch logged, checked;
  ASSERT_TRUE(
      std::regex_search(r.output, logged,
                        std::regex("fjord train: device (\\S+).* \\(device: AUTO\\), (\\S+) \\(model.dtype: "
                                   "DTYPE_AUTO\\), (\\S+) attention \\(model.attention: ATTENTION_AUTO\\), "
                                   "arena [0-9.]+ GiB \\(([0-9]+) bytes\\)")))
      << r.output;
  EXPECT_THAT(logged[1].str(), HasSubstr(gpu ? "cuda:" : "cpu"));
  EXPECT_EQ(logged[2].str(), gpu ? "bf16" : "fp32");  // AUTO precision follows the device
  EXPECT_EQ(logged[3].str(), gpu ? "simt" : "cpu");  // AUTO attention: SIMT until the TC kernels are verified
  ASSERT_TRUE(std::regex_search(
      r.output, checked,
      std::regex("arena model, gradients, activations and AdamW state: ([0-9]+) bytes zeroed and "
                 "read back, ([0-9]+) non-zero")))
      << r.output;
  EXPECT_EQ(checked[1].str(), logged[4].str()) << "the arena released is the one logged";
  EXPECT_EQ(checked[2].str(), "0");
  EXPECT_GT(std::stoull(logged[4].str()), 0u);
}

// tests/bench/torch_gpu_step.py --loss, which scripts/gpu-check.sh runs on the GPU against fjord's loss,
// reads `fjord export`'s safetensors and cuts the token shard as fjord's loader does: on the CPU
// its fp32 loss equals `fjord eval`'s on the same checkpoint and batches (to print precision, a
// few fp32 ulps of the sum). Skips where python3 has no torch.
TEST_F(DeviceCliTest, TorchScriptLossMatchesFjordEval) {
  const std::string py = "/usr/bin/python3";
  if (Shell(py + " -c 'import torch'").exit_code != 0) GTEST_SKIP() << py << " has no torch";
  RunResult r = RunFjord(Train("--quiet --set train.steps=3"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("export --checkpoint " + P("run") + " --out " + P("export"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFjord("eval --checkpoint " + P("run") + " --data " + P("data/train_000000.bin") + " --batches 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::smatch ours, theirs;
  ASSERT_TRUE(std::regex_search(r.output, ours, std::regex("\\{\"loss\": ([0-9.]+), \"tokens\": 96,")))
      << r.output;
  const double a = std::stod(ours[1].str());  // before r.output, which ours points into, changes
  r = Shell("OMP_NUM_THREADS=1 " + py + " " + FJORD_SOURCE_DIR + "/tests/bench/torch_gpu_step.py --loss " +
            P("export") + " --tokens " + P("data/train_000000.bin") +
            " --batch 2 --seq-len 16 --eval-batches 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(std::regex_search(r.output, theirs, std::regex("\"loss_fp32\": ([0-9.]+)"))) << r.output;
  const double b = std::stod(theirs[1].str());
  EXPECT_GT(a, 1.0);
  EXPECT_NEAR(a, b, 2e-6 * a);
}

}  // namespace
}  // namespace fjord
