// CUDA GELU, residual, fill_zero and the bf16 casts against their CPU twins; the model ops for both
// storage types (float and bf16).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::AsFloats;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::ExpectRoundedClose;
using testing::kPoison;
using testing::Poison;
using testing::Random;

// Small and odd: a partial block only.
constexpr size_t kSmall = 37;
// Many blocks, odd.
constexpr size_t kMedium = 1'000'003;
// More than one grid-stride sweep (65536 blocks x 256 threads = 16.8M), and odd. Used once: the
// loop is the same in every elementwise kernel, and large host inputs are slow to generate.
constexpr size_t kLarge = 17'000'003;

// The bit patterns of bf16 data, for exact comparisons.
std::vector<uint16_t> Bits(const std::vector<bf16>& x) {
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) bits[i] = x[i].bits;
  return bits;
}

class CudaElementwise : public CudaOpTest {
 protected:
  template <typename floatX>
  void CheckGeluForward(const std::vector<size_t>& sizes) {
    for (size_t n : sizes) {
      const std::vector<floatX> x = Random<floatX>(n, 1, -8.0f, 8.0f);
      DeviceBuffer<floatX> d_x(x), d_out(std::vector<floatX>(n, Poison<floatX>()));
      cuda::gelu_forward(ctx_, d_out.get(), d_x.get(), n);
      Sync();
      std::vector<floatX> ref(n, Poison<floatX>());
      cpu::gelu_forward(cpu_ctx_, ref.data(), x.data(), n);
      const std::vector<floatX> got = d_out.Download();
      ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
      // Same formula (kernels/pointwise_math.h); device expf and the host's polynomial Exp differ by
      // ~2 ulp, and nvcc may fuse multiply-adds: a few float ulps of O(1) values (with bf16, plus
      // the one bf16 ulp by which that can flip the final rounding).
      ExpectRoundedClose("gelu out", got, ref, 1e-6, 1e-5);
    }
  }

  template <typename floatX>
  void CheckGeluBackward() {
    for (size_t n : {kSmall, kMedium}) {
      const std::vector<floatX> x = Random<floatX>(n, 2, -8.0f, 8.0f);
      const std::vector<floatX> dout = Random<floatX>(n, 3);
      const std::vector<floatX> prior = Random<floatX>(n, 4);
      DeviceBuffer<floatX> d_x(x), d_dout(dout), d_dinp(prior);
      cuda::gelu_backward(ctx_, d_dinp.get(), d_x.get(), d_dout.get(), n);
      Sync();
      std::vector<floatX> ref = prior;
      cpu::gelu_backward(cpu_ctx_, ref.data(), x.data(), dout.data(), n);
      const std::vector<floatX> got = d_dinp.Download();
      ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
      // As for the forward; the derivative is O(1) and added to an O(1) prior.
      ExpectRoundedClose("gelu dinp", got, ref, 2e-6, 1e-5);
    }
  }

  template <typename floatX>
  void CheckResidual() {
    for (size_t n : {kSmall, kMedium}) {
      const std::vector<floatX> a = Random<floatX>(n, 5), b = Random<floatX>(n, 6);
      const std::vector<floatX> dout = Random<floatX>(n, 7);
      const std::vector<floatX> prior_a = Random<floatX>(n, 8), prior_b = Random<floatX>(n, 9);
      DeviceBuffer<floatX> d_a(a), d_b(b), d_out(std::vector<floatX>(n, Poison<floatX>())), d_dout(dout);
      DeviceBuffer<floatX> d_da(prior_a), d_db(prior_b);
      cuda::residual_forward(ctx_, d_out.get(), d_a.get(), d_b.get(), n);
      cuda::residual_backward(ctx_, d_da.get(), d_db.get(), d_dout.get(), n);
      Sync();
      std::vector<floatX> out(n, Poison<floatX>()), da = prior_a, db = prior_b;
      cpu::residual_forward(cpu_ctx_, out.data(), a.data(), b.data(), n);
      cpu::residual_backward(cpu_ctx_, da.data(), db.data(), dout.data(), n);
      const std::vector<float> got = AsFloats(d_out.Download());
      ASSERT_GT(testing::Norm(got), 0.0);
      // One correctly rounded IEEE addition per element on both sides (for bf16, of the same two
      // exact values, then the same rounding to bf16): bitwise equal.
      ExpectClose("residual out", got, AsFloats(out), 0.0, 0.0);
      ExpectClose("residual da", AsFloats(d_da.Download()), AsFloats(da), 0.0, 0.0);
      ExpectClose("residual db", AsFloats(d_db.Download()), AsFloats(db), 0.0, 0.0);
    }
  }

  template <typename floatX>
  void CheckFillZero() {
    const size_t n = 1001;
    DeviceBuffer<floatX> d_x(std::vector<floatX>(n + 2, Poison<floatX>()));
    cuda::fill_zero(ctx_, d_x.get() + 1, n);
    Sync();
    const std::vector<float> got = AsFloats(d_x.Download());
    for (size_t i = 1; i <= n; ++i) ASSERT_EQ(got[i], 0.0f) << "index " << i - 1;
    EXPECT_TRUE(std::isnan(got[0])) << "wrote before the range";
    EXPECT_TRUE(std::isnan(got[n + 1])) << "wrote past the range";
  }
};

TEST_F(CudaElementwise, GeluForwardMatchesCpu) { CheckGeluForward<float>({kSmall, kMedium, kLarge}); }
TEST_F(CudaElementwise, GeluBackwardMatchesCpuAndAccumulates) { CheckGeluBackward<float>(); }
TEST_F(CudaElementwise, ResidualMatchesCpuExactly) { CheckResidual<float>(); }
TEST_F(CudaElementwise, FillZeroZeroesExactlyTheRange) { CheckFillZero<float>(); }

TEST_F(CudaElementwise, Bf16GeluForwardMatchesCpu) { CheckGeluForward<bf16>({kSmall, kMedium}); }
TEST_F(CudaElementwise, Bf16GeluBackwardMatchesCpuAndAccumulates) { CheckGeluBackward<bf16>(); }
TEST_F(CudaElementwise, Bf16ResidualMatchesCpuExactly) { CheckResidual<bf16>(); }
TEST_F(CudaElementwise, Bf16FillZeroZeroesExactlyTheRange) { CheckFillZero<bf16>(); }

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
      // A nonzero index0 with the stochastic seed: the shifted hash must agree too.
      const size_t index0 = seed == 0 ? 0 : 12345;
      DeviceBuffer<bf16> d_b(std::vector<bf16>(n, bf16{0xdead}));
      cuda::cast_to_bf16(ctx_, d_b.get(), d_x.get(), n, seed, index0);
      Sync();
      std::vector<bf16> ref(n, bf16{0xbeef});
      cpu::cast_to_bf16(cpu_ctx_, ref.data(), x.data(), n, seed, index0);
      const std::vector<bf16> got = d_b.Download();
      ASSERT_EQ(Bits(got), Bits(ref)) << "seed " << seed << ", n " << n;
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
