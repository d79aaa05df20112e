// LayerNorm against a double reference; backward by finite differences of that reference. The
// bf16 instantiation against the same references, and against the float op's results rounded.
// residual_layernorm_forward, in both types: bit for bit residual_forward + layernorm_forward, and
// against the double reference (its residual against a + b in double).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectBf16Close;
using testing::ExpectClose;
using testing::kPoison;
using testing::kPoisonBf16;

const OpContext kCtx;

// C = 37 spans three thread-owned channel blocks of the dweight/dbias pass (16 + 16 + 5).
constexpr size_t N = 7;
constexpr int C = 37;

struct LayerNormRef {
  std::vector<double> out, mean, rstd;
};

// Rows of C = w.size() values, as many as x holds.
LayerNormRef LayerNormForwardRef(const std::vector<double>& x, const std::vector<double>& w,
                                 const std::vector<double>& b) {
  const int C = static_cast<int>(w.size());
  const size_t N = x.size() / C;
  LayerNormRef r{std::vector<double>(N * C), std::vector<double>(N), std::vector<double>(N)};
  for (size_t n = 0; n < N; ++n) {
    double m = 0.0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    double var = 0.0;
    for (int c = 0; c < C; ++c) var += (x[n * C + c] - m) * (x[n * C + c] - m);
    const double s = 1.0 / std::sqrt(var / C + 1e-5);
    for (int c = 0; c < C; ++c) r.out[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
    r.mean[n] = m;
    r.rstd[n] = s;
  }
  return r;
}

// Rows with a non-zero mean and differing spreads, so centring and scaling are both exercised.
std::vector<float> Input(uint32_t seed) {
  std::vector<float> x = testing::RandomFloats(N * C, seed);
  for (size_t n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) x[n * C + c] = x[n * C + c] * (1.0f + n) + 0.5f * n;
  return x;
}

TEST(LayerNorm, ForwardMatchesDoubleReference) {
  const std::vector<float> x = Input(1);
  const std::vector<float> w = testing::RandomFloats(C, 2, 0.5f, 1.5f), b = testing::RandomFloats(C, 3);
  std::vector<float> out(N * C, kPoison), mean(N, kPoison), rstd(N, kPoison);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  const LayerNormRef ref =
      LayerNormForwardRef(testing::ToDouble(x), testing::ToDouble(w), testing::ToDouble(b));
  ASSERT_GT(testing::Norm(out), 0.0);
  // Statistics accumulate in double and are rounded to float once; each output then takes ~4 float
  // roundings of O(1) values (~5e-7), absolute near zero where norm * w cancels b.
  ExpectClose("layernorm out", out, ref.out, 1e-6, 1e-6);
  ExpectClose("layernorm mean", mean, ref.mean, 1e-7, 1e-6);
  ExpectClose("layernorm rstd", rstd, ref.rstd, 0.0, 1e-6);
}

TEST(LayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const std::vector<float> x = Input(4);
  const std::vector<float> w = testing::RandomFloats(C, 5, 0.5f, 1.5f), b = testing::RandomFloats(C, 6);
  const std::vector<float> dout = testing::RandomFloats(N * C, 7);
  std::vector<float> out(N * C), mean(N), rstd(N);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);

  const std::vector<float> prior_x = testing::RandomFloats(N * C, 8), prior_w = testing::RandomFloats(C, 9),
                           prior_b = testing::RandomFloats(C, 10);
  std::vector<float> dx = prior_x, dw = prior_w, db = prior_b;
  cpu::layernorm_backward(kCtx, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, C);

  const std::vector<double> xd = testing::ToDouble(x), wd = testing::ToDouble(w), bd = testing::ToDouble(b);
  const std::vector<double> doutd = testing::ToDouble(dout);
  auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                  const std::vector<double>& bb) {
    return testing::WeightedSum(doutd, LayerNormForwardRef(xx, ww, bb).out);
  };
  const auto gx =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(v, wd, bd); }, xd);
  const auto gw =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(xd, v, bd); }, wd);
  const auto gb =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(xd, wd, v); }, bd);
  // Sums accumulate in double; per-element float roundings of O(1) terms scaled by rstd (up to ~2
  // here), then the += onto an O(1) prior: a few 1e-7, with margin for cancelling differences.
  ExpectClose("layernorm dinp", dx, testing::Plus(prior_x, gx), 3e-6, 1e-6);
  ExpectClose("layernorm dweight", dw, testing::Plus(prior_w, gw), 3e-6, 1e-6);
  ExpectClose("layernorm dbias", db, testing::Plus(prior_b, gb), 3e-6, 1e-6);
}

TEST(LayerNormBf16, ForwardMatchesDoubleReference) {
  const std::vector<bf16> x = testing::TruncateToBf16(Input(11));
  const std::vector<bf16> w = testing::RandomBf16(C, 12, 0.5f, 1.5f), b = testing::RandomBf16(C, 13);
  std::vector<bf16> out(N * C, kPoisonBf16);
  std::vector<float> mean(N, kPoison), rstd(N, kPoison);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  const LayerNormRef ref =
      LayerNormForwardRef(testing::ToDouble(x), testing::ToDouble(w), testing::ToDouble(b));
  // The float test's fp32 bounds; out is then rounded once to bf16, the statistics stay fp32.
  ExpectBf16Close("layernorm out", out, ref.out, 1e-6, 1e-6);
  ExpectClose("layernorm mean", mean, ref.mean, 1e-7, 1e-6);
  ExpectClose("layernorm rstd", rstd, ref.rstd, 0.0, 1e-6);
}

TEST(LayerNormBf16, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const std::vector<bf16> x = testing::TruncateToBf16(Input(14));
  const std::vector<bf16> w = testing::RandomBf16(C, 15, 0.5f, 1.5f), b = testing::RandomBf16(C, 16);
  const std::vector<bf16> dout = testing::RandomBf16(N * C, 17);
  std::vector<bf16> out(N * C);
  std::vector<float> mean(N), rstd(N);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);

  const std::vector<bf16> prior_x = testing::RandomBf16(N * C, 18);
  const std::vector<float> prior_w = testing::RandomFloats(C, 19), prior_b = testing::RandomFloats(C, 20);
  std::vector<bf16> dx = prior_x;
  std::vector<float> dw = prior_w, db = prior_b;
  cpu::layernorm_backward(kCtx, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, C);

  const std::vector<double> xd = testing::ToDouble(x), wd = testing::ToDouble(w), bd = testing::ToDouble(b);
  const std::vector<double> doutd = testing::ToDouble(dout);
  auto loss = [&](const std::vector<double>& xx, const std::vector<double>& ww,
                  const std::vector<double>& bb) {
    return testing::WeightedSum(doutd, LayerNormForwardRef(xx, ww, bb).out);
  };
  const auto gx =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(v, wd, bd); }, xd);
  const auto gw =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(xd, v, bd); }, wd);
  const auto gb =
      testing::NumericalGradient([&](const std::vector<double>& v) { return loss(xd, wd, v); }, bd);
  // The float test's fp32 bounds; dinp = prior + gradient is then rounded once to bf16.
  ExpectBf16Close("layernorm dinp", dx, testing::Plus(testing::ToDouble(prior_x), gx), 3e-6, 1e-6);
  ExpectClose("layernorm dweight", dw, testing::Plus(prior_w, gw), 3e-6, 1e-6);
  ExpectClose("layernorm dbias", db, testing::Plus(prior_b, gb), 3e-6, 1e-6);
}

TEST(LayerNormBf16, MatchesTheFloatOpRounded) {
  // Both instantiations run the same fp32 arithmetic on the same values, so each bf16 output is
  // the float op's output rounded, up to a last-bit difference in the fp32 value (the compiler may
  // vectorise the two instantiations' reductions differently) that can move the rounding by one.
  const std::vector<bf16> x = testing::TruncateToBf16(Input(21));
  const std::vector<bf16> w = testing::RandomBf16(C, 22, 0.5f, 1.5f), b = testing::RandomBf16(C, 23);
  const std::vector<bf16> dout = testing::RandomBf16(N * C, 24), prior = testing::RandomBf16(N * C, 25);
  const std::vector<float> xf = testing::ToFloats(x), wf = testing::ToFloats(w), bf = testing::ToFloats(b);
  const std::vector<float> doutf = testing::ToFloats(dout);

  std::vector<bf16> out(N * C, kPoisonBf16);
  std::vector<float> mean(N), rstd(N), outf(N * C), meanf(N), rstdf(N);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  cpu::layernorm_forward(kCtx, outf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(), N,
                         C);
  testing::ExpectBf16WithinOneUlp("layernorm out", out, testing::RoundToBf16(outf));

  std::vector<bf16> dx = prior;
  std::vector<float> dxf = testing::ToFloats(prior), dw(C, 0.0f), db(C, 0.0f);
  cpu::layernorm_backward(kCtx, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(),
                          rstd.data(), N, C);
  cpu::layernorm_backward(kCtx, dxf.data(), dw.data(), db.data(), doutf.data(), xf.data(), wf.data(),
                          meanf.data(), rstdf.data(), N, C);
  testing::ExpectBf16WithinOneUlp("layernorm dinp", dx, testing::RoundToBf16(dxf));
}

// ---- residual_layernorm_forward ------------------------------------------------------------------

struct Shape {
  size_t N;
  int C;
};

// One row; C odd and prime (no vector width divides it) below and above GPT-2 small's 768; N past
// 256 rows.
const Shape kFusedShapes[] = {{1, 97}, {1, 769}, {257, 97}, {257, 769}};

// Drawn values as inputs of storage type floatX: bf16 by truncation, which keeps them in range.
template <typename floatX>
std::vector<floatX> Stored(const std::vector<float>& v);
template <>
std::vector<float> Stored<float>(const std::vector<float>& v) {
  return v;
}
template <>
std::vector<bf16> Stored<bf16>(const std::vector<float>& v) {
  return testing::TruncateToBf16(v);
}

template <typename floatX>
struct FusedInputs {
  std::vector<floatX> a, b, w, bias;
};

// The two addends of a residual add: a stream with row means and spreads that differ by row, and a
// smaller branch output, so the sum is not dominated by either; LayerNorm weights around 1.
template <typename floatX>
FusedInputs<floatX> MakeFusedInputs(const Shape& s, uint32_t seed) {
  std::vector<float> a = testing::RandomFloats(s.N * s.C, seed);
  for (size_t n = 0; n < s.N; ++n)
    for (int c = 0; c < s.C; ++c) a[n * s.C + c] = a[n * s.C + c] * (1.0f + n % 5) + 0.25f * (n % 7);
  return {Stored<floatX>(a), Stored<floatX>(testing::RandomFloats(s.N * s.C, seed + 1, -0.5f, 0.5f)),
          Stored<floatX>(testing::RandomFloats(s.C, seed + 2, 0.5f, 1.5f)),
          Stored<floatX>(testing::RandomFloats(s.C, seed + 3))};
}

// The outputs of one forward, poisoned until the op under test writes them.
template <typename floatX>
struct FusedOutputs {
  explicit FusedOutputs(const Shape& s)
      : residual(s.N * s.C, testing::Poison<floatX>()),
        out(s.N * s.C, testing::Poison<floatX>()),
        mean(s.N, kPoison),
        rstd(s.N, kPoison) {}
  std::vector<floatX> residual, out;
  std::vector<float> mean, rstd;
};

template <typename floatX>
void CheckFusedMatchesComposition() {
  for (const Shape& s : kFusedShapes) {
    SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
    const FusedInputs<floatX> in = MakeFusedInputs<floatX>(s, 31);
    FusedOutputs<floatX> fused(s), pair(s);
    cpu::residual_layernorm_forward(kCtx, fused.residual.data(), fused.out.data(), fused.mean.data(),
                                    fused.rstd.data(), in.a.data(), in.b.data(), in.w.data(), in.bias.data(),
                                    s.N, s.C);
    cpu::residual_forward(kCtx, pair.residual.data(), in.a.data(), in.b.data(), s.N * s.C);
    cpu::layernorm_forward(kCtx, pair.out.data(), pair.mean.data(), pair.rstd.data(), pair.residual.data(),
                           in.w.data(), in.bias.data(), s.N, s.C);
    testing::ExpectFinite("fused residual", fused.residual);
    testing::ExpectFinite("fused out", fused.out);
    testing::ExpectFinite("fused mean", fused.mean);
    testing::ExpectFinite("fused rstd", fused.rstd);
    testing::ExpectSameBits("residual", fused.residual, pair.residual);
    testing::ExpectSameBits("out", fused.out, pair.out);
    testing::ExpectSameBits("mean", fused.mean, pair.mean);
    testing::ExpectSameBits("rstd", fused.rstd, pair.rstd);
  }
}

TEST(ResidualLayerNorm, EqualsResidualThenLayerNormBitwise) { CheckFusedMatchesComposition<float>(); }
TEST(ResidualLayerNormBf16, EqualsResidualThenLayerNormBitwise) { CheckFusedMatchesComposition<bf16>(); }

// residual against a + b in double, rounded once to floatX; out and the statistics against the
// double LayerNorm of the residual as stored (with bf16 that rounding is the op's contract, and is
// checked first), with the bounds of the plain forward tests above.
TEST(ResidualLayerNorm, MatchesDoubleReference) {
  for (const Shape& s : kFusedShapes) {
    SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
    const FusedInputs<float> in = MakeFusedInputs<float>(s, 41);
    FusedOutputs<float> got(s);
    cpu::residual_layernorm_forward(kCtx, got.residual.data(), got.out.data(), got.mean.data(),
                                    got.rstd.data(), in.a.data(), in.b.data(), in.w.data(), in.bias.data(),
                                    s.N, s.C);
    // One fp32 rounding of the exact sum: within 2^-24 of it, relatively.
    ExpectClose("residual", got.residual, testing::Plus(in.a, in.b), 0.0, 0x1p-24);
    const LayerNormRef ref = LayerNormForwardRef(testing::ToDouble(got.residual), testing::ToDouble(in.w),
                                                 testing::ToDouble(in.bias));
    ExpectClose("out", got.out, ref.out, 1e-6, 1e-6);
    ExpectClose("mean", got.mean, ref.mean, 1e-7, 1e-6);
    ExpectClose("rstd", got.rstd, ref.rstd, 0.0, 1e-6);
  }
}

TEST(ResidualLayerNormBf16, MatchesDoubleReference) {
  for (const Shape& s : kFusedShapes) {
    SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
    const FusedInputs<bf16> in = MakeFusedInputs<bf16>(s, 51);
    FusedOutputs<bf16> got(s);
    cpu::residual_layernorm_forward(kCtx, got.residual.data(), got.out.data(), got.mean.data(),
                                    got.rstd.data(), in.a.data(), in.b.data(), in.w.data(), in.bias.data(),
                                    s.N, s.C);
    // The exact sum rounded once to bf16: within half a bf16 spacing.
    ExpectBf16Close("residual", got.residual, testing::Plus(testing::ToDouble(in.a), testing::ToDouble(in.b)),
                    0.0, 0.0);
    const LayerNormRef ref = LayerNormForwardRef(testing::ToDouble(got.residual), testing::ToDouble(in.w),
                                                 testing::ToDouble(in.bias));
    ExpectBf16Close("out", got.out, ref.out, 1e-6, 1e-6);
    ExpectClose("mean", got.mean, ref.mean, 1e-7, 1e-6);
    ExpectClose("rstd", got.rstd, ref.rstd, 0.0, 1e-6);
  }
}

}  // namespace
}  // namespace fjord
