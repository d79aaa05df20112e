// CUDA GELU, residual, fill_zero and the bf16 casts against their CPU twins.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::kPoison;

// Small and odd: a partial block only.
constexpr size_t kSmall = 37;
// Many blocks, odd.
constexpr size_t kMedium = 1'000'003;
// More than one grid-stride sweep (65536 blocks x 256 threads = 16.8M), and odd. Used once: the
// loop is the same in every elementwise kernel, and large host inputs are slow to generate.
constexpr size_t kLarge = 17'000'003;

class CudaElementwise : public CudaOpTest {};

TEST_F(CudaElementwise, GeluForwardMatchesCpu) {
  for (size_t n : {kSmall, kMedium, kLarge}) {
    const std::vector<float> x = testing::RandomFloats(n, 1, -8.0f, 8.0f);
    DeviceBuffer<float> d_x(x), d_out(std::vector<float>(n, kPoison));
    cuda::gelu_forward(ctx_, d_out.get(), d_x.get(), n);
    Sync();
    std::vector<float> ref(n, kPoison);
    cpu::gelu_forward(cpu_ctx_, ref.data(), x.data(), n);
    const std::vector<float> got = d_out.Download();
    ASSERT_GT(testing::Norm(got), 0.0);
    // Same formula (kernels/pointwise_math.h); device expf and the host's polynomial Exp differ by
    // ~2 ulp, and nvcc may fuse multiply-adds: a few float ulps of O(1) values.
    ExpectClose("gelu out", got, ref, 1e-6, 1e-5);
  }
}

TEST_F(CudaElementwise, GeluBackwardMatchesCpuAndAccumulates) {
  for (size_t n : {kSmall, kMedium}) {
    const std::vector<float> x = testing::RandomFloats(n, 2, -8.0f, 8.0f);
    const std::vector<float> dout = testing::RandomFloats(n, 3);
    const std::vector<float> prior = testing::RandomFloats(n, 4);
    DeviceBuffer<float> d_x(x), d_dout(dout), d_dinp(prior);
    cuda::gelu_backward(ctx_, d_dinp.get(), d_x.get(), d_dout.get(), n);
    Sync();
    std::vector<float> ref = prior;
    cpu::gelu_backward(cpu_ctx_, ref.data(), x.data(), dout.data(), n);
    const std::vector<float> got = d_dinp.Download();
    ASSERT_GT(testing::Norm(got), 0.0);
    // As for the forward; the derivative is O(1) and added to an O(1) prior.
    ExpectClose("gelu dinp", got, ref, 2e-6, 1e-5);
  }
}

TEST_F(CudaElementwise, ResidualMatchesCpuExactly) {
  for (size_t n : {kSmall, kMedium}) {
    const std::vector<float> a = testing::RandomFloats(n, 5), b = testing::RandomFloats(n, 6);
    const std::vector<float> dout = testing::RandomFloats(n, 7);
    const std::vector<float> prior_a = testing::RandomFloats(n, 8), prior_b = testing::RandomFloats(n, 9);
    DeviceBuffer<float> d_a(a), d_b(b), d_out(std::vector<float>(n, kPoison)), d_dout(dout);
    DeviceBuffer<float> d_da(prior_a), d_db(prior_b);
    cuda::residual_forward(ctx_, d_out.get(), d_a.get(), d_b.get(), n);
    cuda::residual_backward(ctx_, d_da.get(), d_db.get(), d_dout.get(), n);
    Sync();
    std::vector<float> out(n, kPoison), da = prior_a, db = prior_b;
    cpu::residual_forward(cpu_ctx_, out.data(), a.data(), b.data(), n);
    cpu::residual_backward(cpu_ctx_, da.data(), db.data(), dout.data(), n);
    const std::vector<float> got = d_out.Download();
    ASSERT_GT(testing::Norm(got), 0.0);
    // One correctly rounded IEEE addition per element on both sides: bitwise equal.
    ExpectClose("residual out", got, out, 0.0, 0.0);
    ExpectClose("residual da", d_da.Download(), da, 0.0, 0.0);
    ExpectClose("residual db", d_db.Download(), db, 0.0, 0.0);
  }
}

TEST_F(CudaElementwise, FillZeroZeroesExactlyTheRange) {
  const size_t n = 1001;
  DeviceBuffer<float> d_x(std::vector<float>(n + 2, kPoison));
  cuda::fill_zero(ctx_, d_x.get() + 1, n);
  Sync();
  const std::vector<float> got = d_x.Download();
  for (size_t i = 1; i <= n; ++i) ASSERT_EQ(got[i], 0.0f) << "index " << i - 1;
  EXPECT_TRUE(std::isnan(got[0])) << "wrote before the range";
  EXPECT_TRUE(std::isnan(got[n + 1])) << "wrote past the range";
}

// The casts share ToBf16 / FromBf16 (kernels/pointwise_math.h) and the hash of (seed, i) with
// the CPU twin, so they must agree bit for bit, stochastic rounding included; across a grid-stride
// sweep (the element index feeds the hash) and on raw bit patterns including NaN and infinities.
TEST_F(CudaElementwise, CastsMatchCpuBitForBit) {
  for (size_t n : {kSmall, kLarge}) {
    std::vector<float> x = testing::RandomFloats(n, 5, -1e4f, 1e4f);
    for (size_t i = 0; i < n; i += 97) {  // raw patterns: every exponent, NaNs and infinities
      const uint32_t u = static_cast<uint32_t>(i * 2654435761u);
      std::memcpy(&x[i], &u, sizeof(u));
    }
    DeviceBuffer<float> d_x(x);
    for (uint64_t seed : {uint64_t{0}, uint64_t{2026}}) {
      DeviceBuffer<uint16_t> d_b(std::vector<uint16_t>(n, 0xdead));
      cuda::cast_to_bf16(ctx_, d_b.get(), d_x.get(), n, seed);
      Sync();
      std::vector<uint16_t> ref(n, 0xbeef);
      cpu::cast_to_bf16(cpu_ctx_, ref.data(), x.data(), n, seed);
      const std::vector<uint16_t> got = d_b.Download();
      ASSERT_EQ(got, ref) << "seed " << seed << ", n " << n;
      DeviceBuffer<float> d_back(std::vector<float>(n, kPoison));
      cuda::cast_from_bf16(ctx_, d_back.get(), d_b.get(), n);
      Sync();
      std::vector<float> back_ref(n, kPoison);
      cpu::cast_from_bf16(cpu_ctx_, back_ref.data(), ref.data(), n);
      const std::vector<float> back = d_back.Download();
      ASSERT_EQ(std::memcmp(back.data(), back_ref.data(), n * sizeof(float)), 0);
    }
  }
}

}  // namespace
}  // namespace fjord
