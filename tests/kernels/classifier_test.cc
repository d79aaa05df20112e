// Fused softmax + cross-entropy against a double reference; dlogits by finite differences of
// dloss * sum(losses); padded columns exactly zero; logits untouched without a gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;
using testing::kPoison;

const OpContext kCtx;

std::vector<double> LossesRef(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                              size_t N, int V, int Vp) {
  std::vector<double> losses(N);
  for (size_t r = 0; r < N; ++r) {
    const double* x = &logits[r * Vp];
    const double max = *std::max_element(x, x + V);
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += std::exp(x[i] - max);
    losses[r] = -std::log(std::exp(x[targets[r]] - max) / sum);
  }
  return losses;
}

// Logits of a few units with the padded columns poisoned: the kernel must neither read them into
// the softmax nor leave them unwritten in dlogits.
std::vector<float> Logits(size_t N, int V, int Vp, uint32_t seed) {
  std::vector<float> logits = testing::RandomFloats(N * Vp, seed, -4.0f, 4.0f);
  for (size_t r = 0; r < N; ++r)
    for (int i = V; i < Vp; ++i) logits[r * Vp + i] = kPoison;
  return logits;
}

TEST(FusedClassifier, LossesOnlyLeaveLogitsUntouched) {
  constexpr size_t N = 5;
  constexpr int V = 37, Vp = 40;
  const std::vector<int32_t> targets = testing::RandomInts(N, 1, V);
  std::vector<float> logits = Logits(N, V, Vp, 2);
  const std::vector<float> before = logits;
  std::vector<float> losses(N, kPoison);
  cpu::fused_classifier(kCtx, logits.data(), losses.data(), targets.data(), N, V, Vp, 0.2f, 0);
  ASSERT_GT(testing::Norm(losses), 0.0);
  // Losses are O(log V); exp/log in float with a double row sum: a few float roundings.
  ExpectClose("losses", losses, LossesRef(testing::ToDouble(before), targets, N, V, Vp), 1e-6, 1e-6);
  EXPECT_EQ(std::memcmp(logits.data(), before.data(), logits.size() * sizeof(float)), 0);
}

TEST(FusedClassifier, DlogitsMatchFiniteDifferencesAndPaddingIsZero) {
  constexpr size_t N = 5;
  constexpr int V = 37, Vp = 40;
  constexpr float dloss = 0.37f;
  const std::vector<int32_t> targets = testing::RandomInts(N, 3, V);
  std::vector<float> logits = Logits(N, V, Vp, 4);
  const std::vector<double> x = testing::ToDouble(logits);
  std::vector<float> losses(N, kPoison);
  cpu::fused_classifier(kCtx, logits.data(), losses.data(), targets.data(), N, V, Vp, dloss, 1);
  ExpectClose("losses", losses, LossesRef(x, targets, N, V, Vp), 1e-6, 1e-6);

  // d(dloss * sum_r losses_r) / dlogits over the first V columns (the padded ones are not inputs).
  std::vector<double> grad(N * Vp, 0.0);
  for (size_t r = 0; r < N; ++r) {
    const std::vector<double> row(x.begin() + r * Vp, x.begin() + (r + 1) * Vp);
    const std::vector<int32_t> target{targets[r]};
    const std::vector<double> g = testing::NumericalGradient(
        [&](const std::vector<double>& v) { return dloss * LossesRef(v, target, 1, V, Vp)[0]; },
        std::vector<double>(row.begin(), row.begin() + V));
    std::copy(g.begin(), g.end(), grad.begin() + r * Vp);
  }
  ASSERT_GT(testing::Norm(logits), 0.0);
  // dlogits = dloss * (p - onehot) with |.| <= dloss; p carries a few float roundings.
  ExpectClose("dlogits", logits, grad, 1e-7, 1e-5);
  for (size_t r = 0; r < N; ++r)
    for (int i = V; i < Vp; ++i) ASSERT_EQ(logits[r * Vp + i], 0.0f) << "row " << r << " padded column " << i;
}

TEST(FusedClassifier, Gpt2VocabularyRowsSumToZero) {
  // The real padded vocabulary: the loss must stay accurate over ~50k terms, and each row of
  // dlogits = dloss * (p - onehot) sums to zero.
  constexpr size_t N = 3;
  constexpr int V = 50257, Vp = 50304;
  constexpr float dloss = 1.0f / N;
  const std::vector<int32_t> targets = testing::RandomInts(N, 5, V);
  std::vector<float> logits = Logits(N, V, Vp, 6);
  const std::vector<double> x = testing::ToDouble(logits);
  std::vector<float> losses(N, kPoison);
  cpu::fused_classifier(kCtx, logits.data(), losses.data(), targets.data(), N, V, Vp, dloss, 1);
  ASSERT_GT(testing::Norm(losses), 0.0);
  ExpectClose("losses", losses, LossesRef(x, targets, N, V, Vp), 1e-6, 1e-6);
  for (size_t r = 0; r < N; ++r) {
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += logits[r * Vp + i];
    // Each p carries a relative float error ~1e-7; summed over the row, well under 1e-7 * dloss.
    EXPECT_NEAR(sum, 0.0, 1e-7) << "row " << r;
    EXPECT_NEAR(logits[r * Vp + targets[r]], dloss * (std::exp(-static_cast<double>(losses[r])) - 1.0), 1e-7);
    for (int i = V; i < Vp; ++i) ASSERT_EQ(logits[r * Vp + i], 0.0f) << "row " << r << " padded column " << i;
  }
}

}  // namespace
}  // namespace fjord
