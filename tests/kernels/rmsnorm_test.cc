// RMSNorm (Llama) against a direct double formula, out = x / sqrt(mean(x^2) + eps) * weight, with
// the saved rstd; backward (dinp and dweight, both accumulating) by central finite differences of
// that formula. The bf16 instantiation against the same formula plus one rounding per output.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;

const OpContext kCtx;
constexpr float kEps = 1e-5f;

struct RmsRef {
  std::vector<double> out, rstd;
};

RmsRef RmsNormRef(const std::vector<double>& x, const std::vector<double>& w, size_t N, int C, double eps) {
  RmsRef r{std::vector<double>(N * C), std::vector<double>(N)};
  for (size_t i = 0; i < N; ++i) {
    double ms = 0;
    for (int c = 0; c < C; ++c) ms += x[i * C + c] * x[i * C + c];
    r.rstd[i] = 1.0 / std::sqrt(ms / C + eps);
    for (int c = 0; c < C; ++c) r.out[i * C + c] = x[i * C + c] * r.rstd[i] * w[c];
  }
  return r;
}

// C = 7 (below a channel block), 40 (more than two blocks, a partial one); N rows past the
// thread count.
const int kShapes[][2] = {{5, 7}, {37, 40}};

TEST(RmsNorm, ForwardMatchesDoubleFormula) {
  for (const auto& shape : kShapes) {
    const int N = shape[0], C = shape[1];  // named copies: lambdas below capture them
    const auto x = testing::RandomFloats(N * C, 1, -2.0f, 2.0f), w = testing::RandomFloats(C, 2, 0.5f, 1.5f);
    std::vector<float> out(N * C, testing::kPoison), rstd(N, testing::kPoison);
    cpu::rmsnorm_forward(kCtx, out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
    const RmsRef ref = RmsNormRef(testing::ToDouble(x), testing::ToDouble(w), N, C, kEps);
    ExpectClose("rmsnorm out", out, ref.out, 1e-6, 1e-5);
    ExpectClose("rmsnorm rstd", rstd, ref.rstd, 0, 1e-6);
  }
}

TEST(RmsNorm, EpsilonIsTheCallers) {
  // A row of zeros normalises to 0 with rstd = 1 / sqrt(eps), whatever eps is given.
  const int C = 8;
  std::vector<float> x(C, 0.0f), w(C, 1.0f), out(C), rstd(1);
  cpu::rmsnorm_forward(kCtx, out.data(), rstd.data(), x.data(), w.data(), 1, C, 1e-2f);
  EXPECT_NEAR(rstd[0], 10.0, 1e-5);
  for (float o : out) EXPECT_EQ(o, 0.0f);
}

TEST(RmsNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const auto& shape : kShapes) {
    const int N = shape[0], C = shape[1];  // named copies: lambdas below capture them
    const auto x = testing::RandomFloats(N * C, 3, -2.0f, 2.0f), w = testing::RandomFloats(C, 4, 0.5f, 1.5f);
    const auto dout = testing::RandomFloats(N * C, 5);
    std::vector<float> out(N * C), rstd(N);
    cpu::rmsnorm_forward(kCtx, out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
    const auto prior_x = testing::RandomFloats(N * C, 6), prior_w = testing::RandomFloats(C, 7);
    std::vector<float> dx = prior_x, dw = prior_w;
    cpu::rmsnorm_backward(kCtx, dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
    const auto xd = testing::ToDouble(x), wd = testing::ToDouble(w), dd = testing::ToDouble(dout);
    const auto gx = testing::NumericalGradient(
        [&](const std::vector<double>& v) {
          return testing::WeightedSum(dd, RmsNormRef(v, wd, N, C, kEps).out);
        },
        xd);
    const auto gw = testing::NumericalGradient(
        [&](const std::vector<double>& v) {
          return testing::WeightedSum(dd, RmsNormRef(xd, v, N, C, kEps).out);
        },
        wd);
    ASSERT_GT(testing::Norm(gx), 0.0);
    ExpectClose("rmsnorm dinp", dx, testing::Plus(prior_x, gx), 1e-5, 1e-5);
    ExpectClose("rmsnorm dweight", dw, testing::Plus(prior_w, gw), 1e-5, 1e-5);
  }
}

TEST(RmsNormBf16, ForwardAndBackwardMatchTheFloatOpRoundedOnce) {
  for (const auto& shape : kShapes) {
    const int N = shape[0], C = shape[1];  // named copies: lambdas below capture them
    const auto x = testing::RandomBf16(N * C, 8, -2.0f, 2.0f), w = testing::RandomBf16(C, 9, 0.5f, 1.5f);
    std::vector<bf16> out(N * C, testing::kPoisonBf16);
    std::vector<float> rstd(N);
    cpu::rmsnorm_forward(kCtx, out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
    const RmsRef ref = RmsNormRef(testing::ToDouble(x), testing::ToDouble(w), N, C, kEps);
    testing::ExpectBf16Close("rmsnorm out", out, ref.out, 1e-6, 1e-5);
    ExpectClose("rmsnorm rstd", rstd, ref.rstd, 0, 1e-6);

    const auto dout = testing::RandomBf16(N * C, 10);
    const auto prior = testing::RandomBf16(N * C, 11);
    std::vector<bf16> dx = prior;
    std::vector<float> dw(C, 0.0f);
    cpu::rmsnorm_backward(kCtx, dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
    const auto xd = testing::ToDouble(x), wd = testing::ToDouble(w), dd = testing::ToDouble(dout);
    const auto gx = testing::NumericalGradient(
        [&](const std::vector<double>& v) {
          return testing::WeightedSum(dd, RmsNormRef(v, wd, N, C, kEps).out);
        },
        xd);
    testing::ExpectBf16Close("rmsnorm dinp", dx, testing::Plus(testing::ToDouble(prior), gx), 1e-5, 1e-5);
  }
}

}  // namespace
}  // namespace fjord
