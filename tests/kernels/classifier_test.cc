// Fused softmax + cross-entropy against a double reference; dlogits by finite differences of
// dloss * sum(losses); padded columns exactly zero; logits untouched without a gradient. The bf16
// instantiation against the same references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectBf16Close;
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

// Logits of a few units, stored as floatX (bf16 by truncation), with the padded columns poisoned:
// the kernel must neither read them into the softmax nor leave them unwritten in dlogits.
template <typename floatX>
std::vector<floatX> Logits(size_t N, int V, int Vp, uint32_t seed) {
  std::vector<floatX> logits = testing::RandomStored<floatX>(N * Vp, seed, -4.0f, 4.0f);
  for (size_t r = 0; r < N; ++r)
    for (int i = V; i < Vp; ++i) logits[r * Vp + i] = testing::Poison<floatX>();
  return logits;
}

// dloss * (softmax(x[r, :V]) - onehot(target)) per row, padded columns 0: the gradient, as a formula.
std::vector<double> DlogitsRef(const std::vector<double>& logits, const std::vector<int32_t>& targets,
                               size_t N, int V, int Vp, double dloss) {
  std::vector<double> grad(N * Vp, 0.0);
  for (size_t r = 0; r < N; ++r) {
    const double* x = &logits[r * Vp];
    const double max = *std::max_element(x, x + V);
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += std::exp(x[i] - max);
    for (int i = 0; i < V; ++i) grad[r * Vp + i] = dloss * (std::exp(x[i] - max) / sum - (i == targets[r]));
  }
  return grad;
}

// Runs fused_classifier on logits (dlogits replace them when `grad`) with the losses poisoned, and
// checks the losses against LossesRef of the logits as given. Losses are O(log V); exp/log in fp32
// with a double row sum: a few float roundings (bf16 logits are read exactly, so the same bound).
template <typename floatX>
std::vector<float> ClassifyCheckingLosses(std::vector<floatX>& logits, const std::vector<int32_t>& targets,
                                          size_t N, int V, int Vp, float dloss, int grad) {
  const std::vector<double> x = testing::ToDouble(logits);
  std::vector<float> losses(N, kPoison);
  cpu::fused_classifier(kCtx, logits.data(), losses.data(), targets.data(), N, V, Vp, dloss, grad);
  ExpectClose("losses", losses, LossesRef(x, targets, N, V, Vp), 1e-6, 1e-6);
  return losses;
}

// Padded columns of dlogits exactly +0.
template <typename floatX>
void ExpectPaddingZero(const std::vector<floatX>& dlogits, size_t N, int V, int Vp) {
  for (size_t r = 0; r < N; ++r)
    for (int i = V; i < Vp; ++i)
      ASSERT_EQ(testing::Bits(dlogits[r * Vp + i]), 0u) << "row " << r << " padded column " << i;
}

template <typename floatX>
void CheckLossesOnlyLeaveLogitsUntouched(size_t N, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "N=" << N);
  constexpr int V = 37, Vp = 40;
  const std::vector<int32_t> targets = testing::RandomInts(N, seed, V);
  std::vector<floatX> logits = Logits<floatX>(N, V, Vp, seed + 1);
  const std::vector<floatX> before = logits;
  const std::vector<float> losses = ClassifyCheckingLosses(logits, targets, N, V, Vp, 0.2f, 0);
  ASSERT_GT(testing::Norm(losses), 0.0);
  EXPECT_EQ(std::memcmp(logits.data(), before.data(), logits.size() * sizeof(floatX)), 0);
}

TEST(FusedClassifier, LossesOnlyLeaveLogitsUntouched) { CheckLossesOnlyLeaveLogitsUntouched<float>(5, 1); }
TEST(FusedClassifierBf16, LossesOnlyLeaveLogitsUntouched) {
  for (const size_t N : {size_t{1}, size_t{5}}) CheckLossesOnlyLeaveLogitsUntouched<bf16>(N, 11);
}

template <typename floatX>
void CheckDlogitsMatchFiniteDifferencesAndPaddingIsZero(uint32_t seed) {
  constexpr size_t N = 5;
  constexpr int V = 37, Vp = 40;
  constexpr float dloss = 0.37f;
  const std::vector<int32_t> targets = testing::RandomInts(N, seed, V);
  std::vector<floatX> logits = Logits<floatX>(N, V, Vp, seed + 1);
  const std::vector<double> x = testing::ToDouble(logits);
  ClassifyCheckingLosses(logits, targets, N, V, Vp, dloss, 1);

  // d(dloss * sum_r losses_r) / dlogits over the first V columns (the padded ones are not inputs).
  std::vector<double> grad(N * Vp, 0.0);
  for (size_t r = 0; r < N; ++r) {
    const std::vector<int32_t> target{targets[r]};
    const std::vector<double> g = testing::NumericalGradient(
        [&](const std::vector<double>& v) { return dloss * LossesRef(v, target, 1, V, Vp)[0]; },
        std::vector<double>(x.begin() + r * Vp, x.begin() + r * Vp + V));
    std::copy(g.begin(), g.end(), grad.begin() + r * Vp);
  }
  ASSERT_GT(testing::Norm(testing::ToDouble(logits)), 0.0);
  // dlogits = dloss * (p - onehot) with |.| <= dloss; p carries a few float roundings. bf16: that
  // fp32 bound, then one rounding to bf16 (the target's dloss * (p - 1) too).
  testing::ExpectStoredClose("dlogits", logits, grad, 1e-7, 1e-5);
  ExpectPaddingZero(logits, N, V, Vp);
}

TEST(FusedClassifier, DlogitsMatchFiniteDifferencesAndPaddingIsZero) {
  CheckDlogitsMatchFiniteDifferencesAndPaddingIsZero<float>(3);
}
TEST(FusedClassifierBf16, DlogitsMatchFiniteDifferencesAndPaddingIsZero) {
  CheckDlogitsMatchFiniteDifferencesAndPaddingIsZero<bf16>(13);
}

TEST(FusedClassifier, Gpt2VocabularyRowsSumToZero) {
  // The real padded vocabulary: the loss must stay accurate over ~50k terms, and each row of
  // dlogits = dloss * (p - onehot) sums to zero.
  constexpr size_t N = 3;
  constexpr int V = 50257, Vp = 50304;
  constexpr float dloss = 1.0f / N;
  const std::vector<int32_t> targets = testing::RandomInts(N, 5, V);
  std::vector<float> logits = Logits<float>(N, V, Vp, 6);
  const std::vector<float> losses = ClassifyCheckingLosses(logits, targets, N, V, Vp, dloss, 1);
  ASSERT_GT(testing::Norm(losses), 0.0);
  for (size_t r = 0; r < N; ++r) {
    double sum = 0.0;
    for (int i = 0; i < V; ++i) sum += logits[r * Vp + i];
    // Each p carries a relative float error ~1e-7; summed over the row, well under 1e-7 * dloss.
    EXPECT_NEAR(sum, 0.0, 1e-7) << "row " << r;
    EXPECT_NEAR(logits[r * Vp + targets[r]], dloss * (std::exp(-static_cast<double>(losses[r])) - 1.0), 1e-7);
  }
  ExpectPaddingZero(logits, N, V, Vp);
}

TEST(FusedClassifierBf16, ConfidentTargetsRoundOnce) {
  // With p[target] large, the target's dlogit dloss * (p - 1) shares its binade with dloss * p, so
  // rounding dloss * p to bf16 before subtracting dloss (a second rounding) errs by up to a whole
  // bf16 spacing of the result, beyond the tolerance in some of these 64 rows.
  constexpr size_t N = 64;
  constexpr int V = 37, Vp = 40;
  constexpr float dloss = 0.37f;
  const std::vector<int32_t> targets = testing::RandomInts(N, 17, V);
  std::vector<bf16> logits = Logits<bf16>(N, V, Vp, 18);
  for (size_t r = 0; r < N; ++r) logits[r * Vp + targets[r]] = bf16{0x40c0};  // 6.0: p[target] ~ 0.6
  const std::vector<double> x = testing::ToDouble(logits);
  ClassifyCheckingLosses(logits, targets, N, V, Vp, dloss, 1);
  ExpectBf16Close("dlogits", logits, DlogitsRef(x, targets, N, V, Vp, dloss), 1e-7, 1e-5);
}

TEST(FusedClassifierBf16, Gpt2VocabularyMatchesDoubleFormula) {
  // The real padded vocabulary: ~50k exps per row, each dlogit rounded once from its fp32 value.
  constexpr size_t N = 3;
  constexpr int V = 50257, Vp = 50304;
  constexpr float dloss = 1.0f / N;
  const std::vector<int32_t> targets = testing::RandomInts(N, 15, V);
  std::vector<bf16> logits = Logits<bf16>(N, V, Vp, 16);
  const std::vector<double> x = testing::ToDouble(logits);
  ClassifyCheckingLosses(logits, targets, N, V, Vp, dloss, 1);
  // The float test's bounds: p carries a few fp32 roundings (1e-5 relative is ample); the target's
  // p - 1 cancels, leaving an absolute error of a few fp32 roundings of dloss (1e-7).
  ExpectBf16Close("dlogits", logits, DlogitsRef(x, targets, N, V, Vp, dloss), 1e-7, 1e-5);
}

}  // namespace
}  // namespace fjord
