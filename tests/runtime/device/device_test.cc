// The device layer on the CPU device: the arena (one allocation, aligned zeroed pieces, zeroed and
// verified before release) and the host-staging path of the gradient reducer, which on a CUDA
// device copies buckets to pinned memory and back. On the CPU the same code runs over host memory,
// so a misplaced offset or a missing upload fails here. Oracles: values written by the test, and
// the reducer's direct path on the same input.
#include "runtime/device/device.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "collectives/communicator.h"
#include "common/check.h"
#include "runtime/model/gpt.h"
#include "runtime/model/optimizer.h"
#include "runtime/train/grad_reducer.h"

namespace fjord {
namespace {

TEST(Arena, HandsOutAlignedZeroedPiecesFromOneAllocation) {
  Device& cpu = CpuDevice();
  StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(cpu, 10000, "test");
  ASSERT_TRUE(arena.ok()) << arena.status().message();
  EXPECT_EQ((*arena)->capacity(), 10240u);  // rounded up to 256 bytes
  float* a = (*arena)->Floats(3);
  int32_t* b = (*arena)->Ints(100);
  float* c = (*arena)->Floats(1);
  for (const void* p :
       {static_cast<const void*>(a), static_cast<const void*>(b), static_cast<const void*>(c)}) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % Arena::kAlign, 0u);
  }
  EXPECT_EQ(reinterpret_cast<char*>(b) - reinterpret_cast<char*>(a), 256);
  EXPECT_EQ(reinterpret_cast<char*>(c) - reinterpret_cast<char*>(b), 512);
  EXPECT_EQ((*arena)->used(), 1024u);
  EXPECT_TRUE(std::all_of(b, b + 100, [](int32_t x) { return x == 0; }));
}

TEST(ArenaDeathTest, TakingMoreThanItHoldsIsABugThatAborts) {
  EXPECT_DEATH(
      {
        StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(CpuDevice(), 1024, "small");
        (*arena)->Floats(300);  // 1200 bytes
      },
      "small arena of 1024 bytes has 1024 left, 1280 asked for");
}

// The destructor never runs on these ways out; the signal path zeroes the arena first. The
// oracle: the handler reads every byte back (arena_verify_zero) after they were all set to 0xAB.
TEST(ArenaDeathTest, AFatalErrorOrASignalZeroesTheArenaBeforeTheProcessEnds) {
  const auto doomed = [](int sig) {
    setenv("FJORD_TEST_HOOK", "arena_verify_zero", 1);
    StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(CpuDevice(), 4096, "doomed");
    std::memset((*arena)->Bytes(4096), 0xAB, 4096);
    if (sig == SIGABRT) FJORD_CHECK(false, "a bug");  // FatalError: abort()
    ::raise(sig);
  };
  EXPECT_DEATH(doomed(SIGABRT),
               "check failed: false: a bug\n(.*\n)*fjord: arena doomed: zeroed on signal 6: 4096 "
               "bytes read back, 0 non-zero");
  EXPECT_EXIT(doomed(SIGTERM), ::testing::KilledBySignal(SIGTERM),
              "fjord: arena doomed: zeroed on signal 15: 4096 bytes read back, 0 non-zero");
  EXPECT_EXIT(doomed(SIGHUP), ::testing::KilledBySignal(SIGHUP),
              "fjord: arena doomed: zeroed on signal 1: 4096 bytes read back, 0 non-zero");
}

TEST(Arena, ImpossibleSizeIsAClearError) {
  StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(CpuDevice(), size_t{1} << 62, "huge");
  ASSERT_FALSE(arena.ok());
  EXPECT_NE(arena.status().message().find("cannot allocate the huge arena of"), std::string::npos)
      << arena.status().message();
  EXPECT_NE(arena.status().message().find("on cpu"), std::string::npos) << arena.status().message();
}

TEST(Arena, NonZeroBytesCountsWhatWasWritten) {
  std::vector<unsigned char> data(3 * (size_t{8} << 20) / 2 + 7, 0);  // spans two read-back chunks
  std::mt19937 rng(3);
  size_t expected = 0;
  for (size_t i = 0; i < data.size(); i += 1 + rng() % 1000) {
    data[i] = static_cast<unsigned char>(1 + rng() % 255);
    ++expected;
  }
  EXPECT_EQ(NonZeroBytes(CpuDevice(), data.data(), data.size()), expected);
}

TEST(Arena, ReleaseZeroesAndVerifiesUnderTheTestHook) {
  StatusOr<std::unique_ptr<Arena>> arena = Arena::Create(CpuDevice(), 4096, "hygiene");
  ASSERT_TRUE(arena.ok());
  float* p = (*arena)->Floats(1024);
  std::fill(p, p + 1024, 1.5f);
  ASSERT_EQ(NonZeroBytes(CpuDevice(), p, 4096), 1024u * 2);  // 1.5f = 0x3fc00000: two zero bytes each
  setenv("FJORD_TEST_HOOK", "arena_verify_zero", 1);
  ::testing::internal::CaptureStderr();
  const Status s = (*arena)->Release();
  const std::string err = ::testing::internal::GetCapturedStderr();
  unsetenv("FJORD_TEST_HOOK");
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_NE(err.find("arena hygiene: 4096 bytes zeroed and read back, 0 non-zero"), std::string::npos) << err;
  EXPECT_TRUE((*arena)->Release().ok());  // a second release does nothing
}

TEST(Device, CpuIsAlwaysAvailableAndCudaIsRefusedWithoutAGpu) {
  RankInfo where;
  where.rank = 3;
  where.host = "node-7";
  StatusOr<std::unique_ptr<Device>> cpu = CreateDevice(proto::CPU, where, 0);
  ASSERT_TRUE(cpu.ok());
  EXPECT_FALSE((*cpu)->is_cuda());
  EXPECT_EQ((*cpu)->description(), "cpu");
  StatusOr<std::unique_ptr<Device>> any = CreateDevice(proto::AUTO, where, CudaWorkspaceBytes(1, 8));
  ASSERT_TRUE(any.ok()) << any.status().message();
  EXPECT_EQ((*any)->is_cuda(), CudaDeviceCount() > 0);
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is visible: device: CUDA is not refused here";
  StatusOr<std::unique_ptr<Device>> cuda = CreateDevice(proto::CUDA, where, 0);
  ASSERT_FALSE(cuda.ok());
  const std::string& m = cuda.status().message();
  EXPECT_NE(m.find("device: CUDA was asked for"), std::string::npos) << m;
  EXPECT_NE(m.find("rank 3 on host node-7"), std::string::npos) << m;
  EXPECT_NE(m.find("device: CPU"), std::string::npos) << m;
}

// The staging path (CUDA + MPI backend) over host memory: every bucket is copied out, reduced on
// the one-rank communicator (average over 1 rank = identity) and copied back, so the gradients
// must come back exactly, and ZeRO-1's shard calls must move exactly the shard.
TEST(GradReducer, HostStagingPathReturnsEveryBucketInPlace) {
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptions{});
  ASSERT_TRUE(comm.ok());
  const size_t n = 1000;
  std::vector<float> grads(n), expected(n);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < n; ++i) expected[i] = grads[i] = normal(rng);
  ReducePath path;
  path.device = &CpuDevice();
  path.stage_through_host = true;
  GradReducer reducer(**comm, grads.data(), n, 64, path);
  EXPECT_EQ(reducer.num_buckets(), 16u);
  reducer.OnReady(500, n);  // launches the buckets that start at or above 500: [552, 1000)
  // Scribble over the device copy after those buckets left: Finish must upload the staged
  // (reduced) values, not keep what is there.
  for (size_t i = 552; i < n; ++i) grads[i] = -1.0f;
  reducer.OnReady(0, 500);
  ASSERT_TRUE(reducer.Finish().ok());
  EXPECT_EQ(grads, expected);

  std::vector<float> params = expected;
  ASSERT_TRUE(reducer.ReduceScatterShard(0, n).ok());
  ASSERT_TRUE(reducer.AllGatherShard(params.data(), 0, n).ok());
  EXPECT_EQ(grads, expected);
  EXPECT_EQ(params, expected);
}

// The model and the optimizer on an arena of the size they ask for, against the same model with
// its own host memory: identical losses and parameters after a step (same ops, same order).
TEST(Gpt, OnASharedArenaMatchesTheStandaloneModel) {
  GptConfig c;
  c.n_layer = 2, c.n_head = 2, c.n_embd = 32, c.max_seq_len = 16, c.vocab_size = 50, c.padded_vocab = 128;
  const int B = 2, T = 16;
  const size_t count = ParamLayout(c).num_params();
  StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(CpuDevice(), Gpt::ArenaBytes(c, B, T, 16) + AdamW::ArenaBytes(count), "test");
  ASSERT_TRUE(arena.ok());
  Gpt shared(c, B, T, **arena, 16);
  AdamW shared_opt(shared.layout(), 0, count, **arena);
  EXPECT_EQ((*arena)->used(), (*arena)->capacity());
  Gpt alone(c, B, T, CpuOps(), 16);
  AdamW alone_opt(alone.layout(), 0, count, CpuOps());
  std::vector<int32_t> tokens(B * T), targets(B * T);
  std::mt19937 rng(9);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = rng() % 50, targets[i] = rng() % 50;
  float losses[2];
  int k = 0;
  for (auto [model, opt] : {std::pair{&shared, &shared_opt}, std::pair{&alone, &alone_opt}}) {
    model->InitGpt2(42);
    model->ZeroGrads();
    losses[k++] = model->Forward(tokens.data(), targets.data(), B, T, 1.0f);
    model->Backward();
    opt->Step(model->params(), model->grads(), 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1);
  }
  EXPECT_GT(losses[0], 1.0f);
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_TRUE(std::equal(shared.params(), shared.params() + count, alone.params()));
  std::vector<float> m(count), v(count);
  shared_opt.StateToHost(m.data(), v.data());
  EXPECT_TRUE(std::equal(m.begin(), m.end(), alone_opt.m()));
  EXPECT_EQ(shared.host_params(), shared.params());  // the CPU's host view is the parameters
}

}  // namespace
}  // namespace fjord
