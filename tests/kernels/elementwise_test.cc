// GELU, residual and fill_zero against double references; backward by central differences. The
// bf16 instantiations against the same references, and against the float ops' results rounded.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectBf16Close;
using testing::ExpectBf16WithinOneUlp;
using testing::ExpectClose;
using testing::GeluRef;
using testing::kPoisonBf16;
using testing::Norm;
using testing::RandomBf16;
using testing::RandomFloats;
using testing::ToDouble;
using testing::ToFloats;

const OpContext kCtx;

// Above the kernels' parallel threshold and not a multiple of any vector width.
constexpr size_t kN = 20011;

TEST(PointwiseMath, ExpMatchesLibmWithinTwoUlpAndClamps) {
  // Exp replaces libm inside the softmax, attention and GELU loops; it must be as good as expf.
  double worst = 0.0;
  for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(Exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2.5e-7);  // ~2 ulp (2^-23 = 1.19e-7)
  EXPECT_EQ(Exp(0.0f), 1.0f);
  // Out-of-range inputs clamp instead of reaching 0 or inf, so e * s products stay finite.
  EXPECT_GT(Exp(-1000.0f), 0.0f);
  EXPECT_LT(Exp(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isfinite(Exp(1000.0f)));
  EXPECT_TRUE(std::isfinite(Exp(-std::numeric_limits<float>::infinity())));
  // NaN propagates, so a diverged model still shows a NaN loss.
  EXPECT_TRUE(std::isnan(Exp(std::numeric_limits<float>::quiet_NaN())));
}

template <typename floatX>
void CheckGeluForward(uint32_t seed) {
  const std::vector<floatX> x = testing::RandomStored<floatX>(kN, seed, -6.0f, 6.0f);
  std::vector<floatX> out(kN, testing::Poison<floatX>());
  cpu::gelu_forward(kCtx, out.data(), x.data(), kN);
  const std::vector<double> xd = ToDouble(x);
  std::vector<double> ref(kN);
  for (size_t i = 0; i < kN; ++i) ref[i] = GeluRef(xd[i]);
  ASSERT_GT(Norm(ToDouble(out)), 0.0);
  // A few float roundings, but the exponent 2a (|2a| up to ~80 here) carries a relative rounding
  // error that becomes an absolute error of the same size in e^(-2a); the resulting error is below
  // ~1e-5 relative, and absolute near the zero crossing and in the far negative tail. bf16: that
  // fp32 bound, then one rounding to bf16.
  testing::ExpectStoredClose("gelu out", out, ref, 1e-6, 1e-5);
}

TEST(Gelu, ForwardMatchesDoubleFormula) { CheckGeluForward<float>(1); }
TEST(GeluBf16, ForwardMatchesDoubleFormula) { CheckGeluForward<bf16>(21); }

template <typename floatX>
void CheckGeluBackward(uint32_t seed) {
  const std::vector<floatX> x = testing::RandomStored<floatX>(kN, seed, -6.0f, 6.0f);
  const std::vector<floatX> dout = testing::RandomStored<floatX>(kN, seed + 1);
  const std::vector<floatX> prior = testing::RandomStored<floatX>(kN, seed + 2);
  std::vector<floatX> dinp = prior;
  cpu::gelu_backward(kCtx, dinp.data(), x.data(), dout.data(), kN);
  const std::vector<double> xd = ToDouble(x), doutd = ToDouble(dout), priord = ToDouble(prior);
  // L = sum(dout * gelu(x)) is separable, so its central difference in x[i] is
  // dout[i] * (gelu(x[i] + h) - gelu(x[i] - h)) / 2h; in double with h = 1e-6 this is exact to ~1e-9.
  const double h = 1e-6;
  std::vector<double> ref(kN);
  for (size_t i = 0; i < kN; ++i)
    ref[i] = priord[i] + doutd[i] * (GeluRef(xd[i] + h) - GeluRef(xd[i] - h)) / (2.0 * h);
  const std::vector<double> dinpd = ToDouble(dinp);
  std::vector<double> delta(kN);
  for (size_t i = 0; i < kN; ++i) delta[i] = dinpd[i] - priord[i];
  ASSERT_GT(Norm(delta), 0.0);
  // The derivative is O(1) (max ~1.13) and computed with a handful of float ops, plus the float
  // rounding of the += onto an O(1) prior: atol 2e-6, rtol 1e-5. bf16: that fp32 bound for prior +
  // gradient, then one rounding to bf16.
  testing::ExpectStoredClose("gelu dinp", dinp, ref, 2e-6, 1e-5);
}

TEST(Gelu, BackwardMatchesFiniteDifferencesAndAccumulates) { CheckGeluBackward<float>(2); }
TEST(GeluBf16, BackwardMatchesFiniteDifferencesAndAccumulates) { CheckGeluBackward<bf16>(22); }

// In place equals out of place, bit for bit (memcmp) and as values (no NaN passes).
template <typename floatX>
void CheckGeluInPlaceForward(uint32_t seed) {
  std::vector<floatX> x = testing::RandomStored<floatX>(1001, seed, -3.0f, 3.0f);
  std::vector<floatX> expected(x.size(), testing::Poison<floatX>());
  cpu::gelu_forward(kCtx, expected.data(), x.data(), x.size());
  cpu::gelu_forward(kCtx, x.data(), x.data(), x.size());
  ExpectClose("gelu in place", ToDouble(x), ToDouble(expected), 0.0, 0.0);
  EXPECT_EQ(std::memcmp(x.data(), expected.data(), x.size() * sizeof(floatX)), 0);
}

TEST(Gelu, InPlaceForward) { CheckGeluInPlaceForward<float>(5); }
TEST(GeluBf16, InPlaceForward) { CheckGeluInPlaceForward<bf16>(25); }

template <typename floatX>
void CheckResidualForward(uint32_t seed) {
  const std::vector<floatX> a = testing::RandomStored<floatX>(kN, seed);
  const std::vector<floatX> b = testing::RandomStored<floatX>(kN, seed + 1);
  std::vector<floatX> out(kN, testing::Poison<floatX>());
  cpu::residual_forward(kCtx, out.data(), a.data(), b.data(), kN);
  ASSERT_GT(Norm(ToDouble(out)), 0.0);
  // One correctly rounded float addition: relative error at most 2^-24. bf16: that fp32 addition,
  // then one rounding to bf16.
  testing::ExpectStoredClose("residual out", out, testing::Plus(ToDouble(a), ToDouble(b)), 0.0, 6e-8);
}

TEST(Residual, ForwardIsExactSum) { CheckResidualForward<float>(6); }
TEST(ResidualBf16, ForwardRoundsTheSumOnce) { CheckResidualForward<bf16>(29); }

TEST(Residual, BackwardMatchesFiniteDifferencesAndAccumulates) {
  constexpr size_t n = 37;
  const std::vector<float> a = RandomFloats(n, 8);
  const std::vector<float> b = RandomFloats(n, 9);
  const std::vector<double> dout = testing::ToDouble(RandomFloats(n, 10));
  const std::vector<float> dout_f(dout.begin(), dout.end());
  const std::vector<float> prior_a = RandomFloats(n, 11);
  const std::vector<float> prior_b = RandomFloats(n, 12);
  std::vector<float> da = prior_a, db = prior_b;
  cpu::residual_backward(kCtx, da.data(), db.data(), dout_f.data(), n);

  const std::vector<double> ad = testing::ToDouble(a), bd = testing::ToDouble(b);
  auto loss_a = [&](const std::vector<double>& x) {
    return testing::WeightedSum(dout, testing::Plus(x, bd));
  };
  auto loss_b = [&](const std::vector<double>& x) {
    return testing::WeightedSum(dout, testing::Plus(ad, x));
  };
  // dout + prior, both O(1), rounded once to float, against a difference quotient exact to ~1e-9.
  ExpectClose("residual da", da, testing::Plus(prior_a, testing::NumericalGradient(loss_a, ad)), 1e-7, 1e-6);
  ExpectClose("residual db", db, testing::Plus(prior_b, testing::NumericalGradient(loss_b, bd)), 1e-7, 1e-6);
}

// Zeroes (+0) exactly [1, n] of a poisoned buffer, leaving the poison on either side.
template <typename floatX>
void CheckFillZero() {
  for (size_t n : {size_t{13}, kN}) {
    std::vector<floatX> x(n + 2, testing::Poison<floatX>());
    cpu::fill_zero(kCtx, x.data() + 1, n);
    for (size_t i = 1; i <= n; ++i) ASSERT_EQ(testing::Bits(x[i]), 0u) << "n=" << n << " index " << i - 1;
    const uint32_t poison = testing::Bits(testing::Poison<floatX>());
    EXPECT_EQ(testing::Bits(x[0]), poison) << "wrote before the range";
    EXPECT_EQ(testing::Bits(x[n + 1]), poison) << "wrote past the range";
  }
}

TEST(FillZero, ZeroesExactlyTheRange) { CheckFillZero<float>(); }
TEST(FillZeroBf16, ZeroesExactlyTheRange) { CheckFillZero<bf16>(); }

// The CPU twins of each other: a bf16 op runs the float op's fp32 arithmetic on the same values
// and rounds once, so its outputs are the float op's rounded to bf16. One ulp of slack leaves the
// compiler free to evaluate the two instantiations' fp32 expressions differently in the last bit.
TEST(GeluBf16, MatchesTheFloatOpRounded) {
  const std::vector<bf16> x = RandomBf16(kN, 26, -6.0f, 6.0f);
  const std::vector<bf16> dout = RandomBf16(kN, 27), prior = RandomBf16(kN, 28);
  const std::vector<float> xf = ToFloats(x), doutf = ToFloats(dout);
  std::vector<bf16> out(kN, kPoisonBf16), dinp = prior;
  std::vector<float> outf(kN), dinpf = ToFloats(prior);
  cpu::gelu_forward(kCtx, out.data(), x.data(), kN);
  cpu::gelu_forward(kCtx, outf.data(), xf.data(), kN);
  ExpectBf16WithinOneUlp("gelu out", out, testing::RoundToBf16(outf));
  cpu::gelu_backward(kCtx, dinp.data(), x.data(), dout.data(), kN);
  cpu::gelu_backward(kCtx, dinpf.data(), xf.data(), doutf.data(), kN);
  ExpectBf16WithinOneUlp("gelu dinp", dinp, testing::RoundToBf16(dinpf));
}

TEST(ResidualBf16, BackwardAccumulates) {
  constexpr size_t n = 37;
  const std::vector<bf16> dout = RandomBf16(n, 31), prior_a = RandomBf16(n, 32), prior_b = RandomBf16(n, 33);
  std::vector<bf16> da = prior_a, db = prior_b;
  cpu::residual_backward(kCtx, da.data(), db.data(), dout.data(), n);
  // d(dout . (a + b))/da = d/db = dout: prior + dout in fp32 (2^-24 relative), rounded once.
  ExpectBf16Close("residual da", da, testing::Plus(ToDouble(prior_a), ToDouble(dout)), 0.0, 6e-8);
  ExpectBf16Close("residual db", db, testing::Plus(ToDouble(prior_b), ToDouble(dout)), 0.0, 6e-8);
}

TEST(ResidualBf16, MatchesTheFloatOpRounded) {
  const std::vector<bf16> a = RandomBf16(kN, 34), b = RandomBf16(kN, 35), dout = RandomBf16(kN, 36);
  const std::vector<float> af = ToFloats(a), bf = ToFloats(b), doutf = ToFloats(dout);
  std::vector<bf16> out(kN, kPoisonBf16), da = a, db = b;
  std::vector<float> outf(kN), daf = af, dbf = bf;
  cpu::residual_forward(kCtx, out.data(), a.data(), b.data(), kN);
  cpu::residual_forward(kCtx, outf.data(), af.data(), bf.data(), kN);
  ExpectBf16WithinOneUlp("residual out", out, testing::RoundToBf16(outf));
  cpu::residual_backward(kCtx, da.data(), db.data(), dout.data(), kN);
  cpu::residual_backward(kCtx, daf.data(), dbf.data(), doutf.data(), kN);
  ExpectBf16WithinOneUlp("residual da", da, testing::RoundToBf16(daf));
  ExpectBf16WithinOneUlp("residual db", db, testing::RoundToBf16(dbf));
}

}  // namespace
}  // namespace fjord
