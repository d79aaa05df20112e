// CUDA sum_squares against its CPU twin (both accumulate in double), its precision on a case a
// float accumulator gets wrong, and bitwise determinism across runs.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::kPoison;

class CudaSumSquares : public CudaOpTest {
 protected:
  float Run(const DeviceBuffer<float>& x, size_t n) {
    DeviceBuffer<float> d_out(std::vector<float>{kPoison});
    cuda::sum_squares(ctx_, d_out.get(), x.get(), n);
    Sync();
    return d_out.Download()[0];
  }
};

TEST_F(CudaSumSquares, MatchesCpu) {
  // 1 element, a partial block, and more elements than the partial grid covers in one sweep.
  for (size_t n : {size_t{1}, size_t{1001}, size_t{20'000'003}}) {
    const std::vector<float> x = testing::RandomFloats(n, 1, -2.0f, 2.0f);
    DeviceBuffer<float> d_x(x);
    const float got = Run(d_x, n);
    float ref = kPoison;
    cpu::sum_squares(cpu_ctx_, &ref, x.data(), n);
    ASSERT_GT(ref, 0.0f);
    // Both sum in double (different order, ~1e-16 relative) and round once to float: at most one
    // float ulp apart when the double sums straddle a rounding boundary.
    EXPECT_NEAR(got, ref, 1.2e-7 * ref) << "n=" << n;
  }
}

TEST_F(CudaSumSquares, KeepsSmallTermsAfterALargeOne) {
  // As in the CPU test: only higher-precision accumulation reaches 1e8 + 100.
  constexpr size_t n = 1'000'001;
  std::vector<float> x(n, 1e-2f);
  x[0] = 1e4f;
  double ref = 1e8;
  for (size_t i = 1; i < n; ++i) ref += static_cast<double>(x[i]) * x[i];
  DeviceBuffer<float> d_x(x);
  EXPECT_NEAR(Run(d_x, n), ref, 8.0);  // one float spacing at 1e8
}

TEST_F(CudaSumSquares, IsBitwiseDeterministic) {
  constexpr size_t n = 5'000'011;
  DeviceBuffer<float> d_x(testing::RandomFloats(n, 2));
  const float first = Run(d_x, n);
  ASSERT_GT(first, 0.0f);
  for (int i = 0; i < 5; ++i) ASSERT_EQ(Run(d_x, n), first) << "run " << i;
}

TEST_F(CudaSumSquares, EmptyIsZero) { EXPECT_EQ(Run(DeviceBuffer<float>(0), 0), 0.0f); }

}  // namespace
}  // namespace fjord
