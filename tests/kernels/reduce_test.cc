// sum_squares against a double sum, and a case that a float accumulator gets visibly wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

const OpContext kCtx;

TEST(SumSquares, MatchesDoubleSum) {
  constexpr size_t n = 100003;
  const std::vector<float> x = testing::RandomFloats(n, 1, -2.0f, 2.0f);
  double ref = 0.0;
  for (float v : x) ref += static_cast<double>(v) * v;
  float out = testing::kPoison;
  cpu::sum_squares(kCtx, &out, x.data(), n);
  ASSERT_GT(ref, 0.0);
  // Accumulated in double, so only the final rounding to float remains: 2^-24 relative.
  EXPECT_NEAR(out, ref, 6e-8 * ref);
}

TEST(SumSquares, KeepsSmallTermsAfterALargeOne) {
  // 1e4^2 = 1e8, where a float's spacing is 8: each 1e-4 term vanishes in a float running sum,
  // but the 1e6 of them add 100. Only higher-precision accumulation reaches 1e8 + 100.
  constexpr size_t n = 1000001;
  std::vector<float> x(n, 1e-2f);
  x[0] = 1e4f;
  double ref = 1e8;
  for (size_t i = 1; i < n; ++i) ref += static_cast<double>(x[i]) * x[i];
  float out = testing::kPoison;
  cpu::sum_squares(kCtx, &out, x.data(), n);
  EXPECT_NEAR(out, ref, 8.0);  // one float spacing at 1e8
}

TEST(SumSquares, EmptyIsZero) {
  float out = testing::kPoison;
  cpu::sum_squares(kCtx, &out, nullptr, 0);
  EXPECT_EQ(out, 0.0f);
}

}  // namespace
}  // namespace fjord
