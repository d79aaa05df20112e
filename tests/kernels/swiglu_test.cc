// SwiGLU against the double formula silu(gate) * up, silu(g) = g / (1 + e^-g), on rows [gate | up];
// backward (accumulating into both halves) by central finite differences of that formula.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;

const OpContext kCtx;
const int kShapes[][2] = {{3, 5}, {70, 300}};  // (N, H); the second crosses the parallel threshold

std::vector<double> SwigluRef(const std::vector<double>& inp, int N, int H) {
  std::vector<double> out(static_cast<size_t>(N) * H);
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < H; ++c) {
      const double g = inp[r * 2 * H + c], u = inp[r * 2 * H + H + c];
      out[r * H + c] = g / (1.0 + std::exp(-g)) * u;
    }
  return out;
}

TEST(Swiglu, ForwardMatchesDoubleFormula) {
  for (const auto& shape : kShapes) {
    const int N = shape[0], H = shape[1];  // named copies: lambdas below capture them
    const auto inp = testing::RandomFloats(2 * N * H, 1, -6.0f, 6.0f);
    std::vector<float> out(N * H, testing::kPoison);
    cpu::swiglu_forward(kCtx, out.data(), inp.data(), N, H);
    ExpectClose("swiglu out", out, SwigluRef(testing::ToDouble(inp), N, H), 1e-6, 1e-5);
  }
}

TEST(Swiglu, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const auto& shape : kShapes) {
    const int N = shape[0], H = shape[1];  // named copies: lambdas below capture them
    if (N * H > 1000) continue;            // finite differences of every input: the small shape suffices
    const auto inp = testing::RandomFloats(2 * N * H, 2, -6.0f, 6.0f), dout = testing::RandomFloats(N * H, 3);
    const auto prior = testing::RandomFloats(2 * N * H, 4);
    std::vector<float> dinp = prior;
    cpu::swiglu_backward(kCtx, dinp.data(), inp.data(), dout.data(), N, H);
    const auto dd = testing::ToDouble(dout);
    const auto g = testing::NumericalGradient(
        [&](const std::vector<double>& v) { return testing::WeightedSum(dd, SwigluRef(v, N, H)); },
        testing::ToDouble(inp));
    ASSERT_GT(testing::Norm(g), 0.0);
    ExpectClose("swiglu dinp", dinp, testing::Plus(prior, g), 1e-5, 1e-5);
  }
}

TEST(SwigluBf16, ForwardAndBackwardRoundOnce) {
  const int N = 3, H = 5;
  const auto inp = testing::RandomBf16(2 * N * H, 5, -6.0f, 6.0f), dout = testing::RandomBf16(N * H, 6);
  const auto prior = testing::RandomBf16(2 * N * H, 7);
  std::vector<bf16> out(N * H, testing::kPoisonBf16), dinp = prior;
  cpu::swiglu_forward(kCtx, out.data(), inp.data(), N, H);
  testing::ExpectBf16Close("swiglu out", out, SwigluRef(testing::ToDouble(inp), N, H), 1e-6, 1e-5);
  cpu::swiglu_backward(kCtx, dinp.data(), inp.data(), dout.data(), N, H);
  const auto dd = testing::ToDouble(dout);
  const auto g = testing::NumericalGradient(
      [&](const std::vector<double>& v) { return testing::WeightedSum(dd, SwigluRef(v, N, H)); },
      testing::ToDouble(inp));
  testing::ExpectBf16Close("swiglu dinp", dinp, testing::Plus(testing::ToDouble(prior), g), 1e-5, 1e-5);
}

}  // namespace
}  // namespace fjord
