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

template <typename floatX>
void CheckForwardMatchesDoubleReference(uint32_t seed) {
  const std::vector<floatX> x = testing::Stored<floatX>(Input(seed));
  const std::vector<floatX> w = testing::RandomStored<floatX>(C, seed + 1, 0.5f, 1.5f),
                            b = testing::RandomStored<floatX>(C, seed + 2);
  std::vector<floatX> out(N * C, testing::Poison<floatX>());
  std::vector<float> mean(N, kPoison), rstd(N, kPoison);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  const LayerNormRef ref =
      LayerNormForwardRef(testing::ToDouble(x), testing::ToDouble(w), testing::ToDouble(b));
  ASSERT_GT(testing::Norm(testing::ToDouble(out)), 0.0);
  // Statistics accumulate in double and are rounded to float once; each output then takes ~4 float
  // roundings of O(1) values (~5e-7), absolute near zero where norm * w cancels b. bf16: the same
  // fp32 bounds; out is then rounded once to bf16, the statistics stay fp32.
  testing::ExpectStoredClose("layernorm out", out, ref.out, 1e-6, 1e-6);
  ExpectClose("layernorm mean", mean, ref.mean, 1e-7, 1e-6);
  ExpectClose("layernorm rstd", rstd, ref.rstd, 0.0, 1e-6);
}

TEST(LayerNorm, ForwardMatchesDoubleReference) { CheckForwardMatchesDoubleReference<float>(1); }
TEST(LayerNormBf16, ForwardMatchesDoubleReference) { CheckForwardMatchesDoubleReference<bf16>(11); }

template <typename floatX>
void CheckBackwardMatchesFiniteDifferencesAndAccumulates(uint32_t seed) {
  const std::vector<floatX> x = testing::Stored<floatX>(Input(seed));
  const std::vector<floatX> w = testing::RandomStored<floatX>(C, seed + 1, 0.5f, 1.5f),
                            b = testing::RandomStored<floatX>(C, seed + 2);
  const std::vector<floatX> dout = testing::RandomStored<floatX>(N * C, seed + 3);
  std::vector<floatX> out(N * C);
  std::vector<float> mean(N), rstd(N);
  cpu::layernorm_forward(kCtx, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);

  // dinp has the storage type, the parameter gradients are fp32 in both.
  const std::vector<floatX> prior_x = testing::RandomStored<floatX>(N * C, seed + 4);
  const std::vector<float> prior_w = testing::RandomFloats(C, seed + 5),
                           prior_b = testing::RandomFloats(C, seed + 6);
  std::vector<floatX> dx = prior_x;
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
  // Sums accumulate in double; per-element float roundings of O(1) terms scaled by rstd (up to ~2
  // here), then the += onto an O(1) prior: a few 1e-7, with margin for cancelling differences.
  // bf16: the same fp32 bounds; dinp = prior + gradient is then rounded once to bf16.
  testing::ExpectStoredClose("layernorm dinp", dx, testing::Plus(testing::ToDouble(prior_x), gx), 3e-6, 1e-6);
  ExpectClose("layernorm dweight", dw, testing::Plus(prior_w, gw), 3e-6, 1e-6);
  ExpectClose("layernorm dbias", db, testing::Plus(prior_b, gb), 3e-6, 1e-6);
}

TEST(LayerNorm, BackwardMatchesFiniteDifferencesAndAccumulates) {
  CheckBackwardMatchesFiniteDifferencesAndAccumulates<float>(4);
}
TEST(LayerNormBf16, BackwardMatchesFiniteDifferencesAndAccumulates) {
  CheckBackwardMatchesFiniteDifferencesAndAccumulates<bf16>(14);
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
  return {testing::Stored<floatX>(a), testing::RandomStored<floatX>(s.N * s.C, seed + 1, -0.5f, 0.5f),
          testing::RandomStored<floatX>(s.C, seed + 2, 0.5f, 1.5f),
          testing::RandomStored<floatX>(s.C, seed + 3)};
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

// The residual's bound: float, one fp32 rounding of the exact sum, within 2^-24 of it relatively;
// bf16, the exact sum rounded once to bf16, within half a bf16 spacing (ExpectStoredClose's own
// term), with nothing added.
template <typename floatX>
constexpr double kResidualRtol = 0x1p-24;
template <>
constexpr double kResidualRtol<bf16> = 0.0;

// residual against a + b in double, rounded once to floatX; out and the statistics against the
// double LayerNorm of the residual as stored (with bf16 that rounding is the op's contract, and is
// checked first), with the bounds of the plain forward tests above.
template <typename floatX>
void CheckFusedMatchesDoubleReference(uint32_t seed) {
  for (const Shape& s : kFusedShapes) {
    SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
    const FusedInputs<floatX> in = MakeFusedInputs<floatX>(s, seed);
    FusedOutputs<floatX> got(s);
    cpu::residual_layernorm_forward(kCtx, got.residual.data(), got.out.data(), got.mean.data(),
                                    got.rstd.data(), in.a.data(), in.b.data(), in.w.data(), in.bias.data(),
                                    s.N, s.C);
    testing::ExpectStoredClose("residual", got.residual,
                               testing::Plus(testing::ToDouble(in.a), testing::ToDouble(in.b)), 0.0,
                               kResidualRtol<floatX>);
    const LayerNormRef ref = LayerNormForwardRef(testing::ToDouble(got.residual), testing::ToDouble(in.w),
                                                 testing::ToDouble(in.bias));
    testing::ExpectStoredClose("out", got.out, ref.out, 1e-6, 1e-6);
    ExpectClose("mean", got.mean, ref.mean, 1e-7, 1e-6);
    ExpectClose("rstd", got.rstd, ref.rstd, 0.0, 1e-6);
  }
}

TEST(ResidualLayerNorm, MatchesDoubleReference) { CheckFusedMatchesDoubleReference<float>(41); }
TEST(ResidualLayerNormBf16, MatchesDoubleReference) { CheckFusedMatchesDoubleReference<bf16>(51); }

}  // namespace
}  // namespace fjord
