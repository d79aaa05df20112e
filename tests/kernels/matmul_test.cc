// Fully connected layer against naive double loops; backward by finite differences, with and
// without bias and input gradient; the bf16 instantiation against the same references.
#include <gtest/gtest.h>

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

struct Shape {
  size_t N;
  int C, OC;
};

// Odd sizes. With two threads (as CTest runs them) the GEMMs are split into per-thread blocks of 16:
// {5, 19, 70} splits the columns of out, dinp and the rows of dweight (and spans two column blocks
// of the dbias pass); {37, 13, 11} splits the rows of out and dinp.
const Shape kShapes[] = {{7, 13, 11}, {5, 19, 70}, {37, 13, 11}};
// bf16 adds a single row: its GEMMs run on fp32 copies, whose sizes must follow N too.
const Shape kBf16Shapes[] = {{7, 13, 11}, {5, 19, 70}, {37, 13, 11}, {1, 19, 70}};

std::vector<double> MatmulRef(const Shape& s, const std::vector<double>& inp, const std::vector<double>& w,
                              const std::vector<double>* bias) {
  std::vector<double> out(s.N * s.OC);
  for (size_t n = 0; n < s.N; ++n)
    for (int o = 0; o < s.OC; ++o) {
      double acc = bias ? (*bias)[o] : 0.0;
      for (int c = 0; c < s.C; ++c) acc += inp[n * s.C + c] * w[o * s.C + c];
      out[n * s.OC + o] = acc;
    }
  return out;
}

class Matmul : public ::testing::TestWithParam<bool> {};  // parameter: with bias

TEST_P(Matmul, ForwardMatchesDoubleReference) {
  const bool with_bias = GetParam();
  for (const Shape& s : kShapes) {
    const std::vector<float> inp = testing::RandomFloats(s.N * s.C, 1),
                             w = testing::RandomFloats(s.OC * s.C, 2);
    const std::vector<float> bias = testing::RandomFloats(s.OC, 3);
    std::vector<float> out(s.N * s.OC, kPoison);
    cpu::matmul_forward(kCtx, out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, s.N, s.C,
                        s.OC);
    const std::vector<double> bd = testing::ToDouble(bias);
    const auto ref = MatmulRef(s, testing::ToDouble(inp), testing::ToDouble(w), with_bias ? &bd : nullptr);
    ASSERT_GT(testing::Norm(out), 0.0);
    // A float dot product of C <= 19 terms in [-1, 1]: error well under C * 2^-24 * C ~ 2e-5 worst
    // case; the bound is absolute because cancelling sums can be near zero.
    ExpectClose("matmul out", out, ref, 2e-5, 1e-5);
  }
}

TEST_P(Matmul, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const bool with_bias = GetParam();
  for (const Shape& s : kShapes) {
    const std::vector<float> inp = testing::RandomFloats(s.N * s.C, 4),
                             w = testing::RandomFloats(s.OC * s.C, 5);
    const std::vector<float> bias = testing::RandomFloats(s.OC, 6),
                             dout = testing::RandomFloats(s.N * s.OC, 7);
    const std::vector<float> prior_inp = testing::RandomFloats(s.N * s.C, 8);
    const std::vector<float> prior_w = testing::RandomFloats(s.OC * s.C, 9),
                             prior_b = testing::RandomFloats(s.OC, 10);
    std::vector<float> dinp = prior_inp, dw = prior_w, db = prior_b;
    cpu::matmul_backward(kCtx, dinp.data(), dw.data(), with_bias ? db.data() : nullptr, dout.data(),
                         inp.data(), w.data(), s.N, s.C, s.OC);

    const auto id = testing::ToDouble(inp), wd = testing::ToDouble(w), bd = testing::ToDouble(bias);
    const auto doutd = testing::ToDouble(dout);
    auto loss = [&](const std::vector<double>& i, const std::vector<double>& ww,
                    const std::vector<double>& bb) {
      return testing::WeightedSum(doutd, MatmulRef(s, i, ww, with_bias ? &bb : nullptr));
    };
    const auto gi =
        testing::NumericalGradient([&](const std::vector<double>& v) { return loss(v, wd, bd); }, id);
    const auto gw =
        testing::NumericalGradient([&](const std::vector<double>& v) { return loss(id, v, bd); }, wd);
    // Float contractions over OC <= 70 (dinp) or N <= 37 (dweight, dbias) terms in [-1, 1], plus an
    // O(1) prior: a few 1e-6 in practice; 3e-5 absolute leaves room without hiding a wrong term.
    ExpectClose("matmul dinp", dinp, testing::Plus(prior_inp, gi), 3e-5, 1e-5);
    ExpectClose("matmul dweight", dw, testing::Plus(prior_w, gw), 3e-5, 1e-5);
    if (with_bias) {
      const auto gb =
          testing::NumericalGradient([&](const std::vector<double>& v) { return loss(id, wd, v); }, bd);
      ExpectClose("matmul dbias", db, testing::Plus(prior_b, gb), 3e-5, 1e-5);
    } else {
      ExpectClose("matmul dbias untouched", db, prior_b, 0.0, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bias, Matmul, ::testing::Bool(), [](const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "WithBias" : "NoBias";
});

TEST(MatmulNoInputGrad, NullDinpStillGivesWeightGrad) {
  const Shape s = kShapes[0];
  const std::vector<float> inp = testing::RandomFloats(s.N * s.C, 11),
                           w = testing::RandomFloats(s.OC * s.C, 12);
  const std::vector<float> dout = testing::RandomFloats(s.N * s.OC, 13);
  std::vector<float> dw_ref(s.OC * s.C, 0.0f), dinp_ref(s.N * s.C, 0.0f), db_ref(s.OC, 0.0f);
  cpu::matmul_backward(kCtx, dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), w.data(),
                       s.N, s.C, s.OC);
  std::vector<float> dw(s.OC * s.C, 0.0f), db(s.OC, 0.0f);
  cpu::matmul_backward<float>(kCtx, nullptr, dw.data(), db.data(), dout.data(), inp.data(), w.data(), s.N,
                              s.C, s.OC);
  ASSERT_GT(testing::Norm(dw), 0.0);
  ExpectClose("dweight without dinp", dw, dw_ref, 0.0, 0.0);
  ExpectClose("dbias without dinp", db, db_ref, 0.0, 0.0);
}

class MatmulBf16 : public ::testing::TestWithParam<bool> {};  // parameter: with bias

TEST_P(MatmulBf16, ForwardMatchesDoubleReference) {
  const bool with_bias = GetParam();
  for (const Shape& s : kBf16Shapes) {
    const std::vector<bf16> inp = testing::RandomBf16(s.N * s.C, 21), w = testing::RandomBf16(s.OC * s.C, 22);
    const std::vector<bf16> bias = testing::RandomBf16(s.OC, 23);
    std::vector<bf16> out(s.N * s.OC, kPoisonBf16);
    cpu::matmul_forward<bf16>(kCtx, out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, s.N,
                              s.C, s.OC);
    const std::vector<double> bd = testing::ToDouble(bias);
    const auto ref = MatmulRef(s, testing::ToDouble(inp), testing::ToDouble(w), with_bias ? &bd : nullptr);
    // The float test's bound for the fp32 GEMM (bias added in fp32), then one rounding to bf16.
    ExpectBf16Close("matmul out", out, ref, 2e-5, 1e-5);
  }
}

TEST_P(MatmulBf16, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const bool with_bias = GetParam();
  for (const Shape& s : kBf16Shapes) {
    const std::vector<bf16> inp = testing::RandomBf16(s.N * s.C, 24), w = testing::RandomBf16(s.OC * s.C, 25);
    const std::vector<bf16> bias = testing::RandomBf16(s.OC, 26), dout = testing::RandomBf16(s.N * s.OC, 27);
    const std::vector<bf16> prior_inp = testing::RandomBf16(s.N * s.C, 28);
    const std::vector<float> prior_w = testing::RandomFloats(s.OC * s.C, 29),
                             prior_b = testing::RandomFloats(s.OC, 30);
    std::vector<bf16> dinp = prior_inp;
    std::vector<float> dw = prior_w, db = prior_b;
    cpu::matmul_backward(kCtx, dinp.data(), dw.data(), with_bias ? db.data() : nullptr, dout.data(),
                         inp.data(), w.data(), s.N, s.C, s.OC);

    const auto id = testing::ToDouble(inp), wd = testing::ToDouble(w), bd = testing::ToDouble(bias);
    const auto doutd = testing::ToDouble(dout);
    auto loss = [&](const std::vector<double>& i, const std::vector<double>& ww,
                    const std::vector<double>& bb) {
      return testing::WeightedSum(doutd, MatmulRef(s, i, ww, with_bias ? &bb : nullptr));
    };
    const auto gi =
        testing::NumericalGradient([&](const std::vector<double>& v) { return loss(v, wd, bd); }, id);
    const auto gw =
        testing::NumericalGradient([&](const std::vector<double>& v) { return loss(id, v, bd); }, wd);
    // The float test's bounds; dinp = prior + dout @ weight is then rounded once to bf16, while the
    // parameter gradients accumulate in fp32.
    ExpectBf16Close("matmul dinp", dinp, testing::Plus(testing::ToDouble(prior_inp), gi), 3e-5, 1e-5);
    ExpectClose("matmul dweight", dw, testing::Plus(prior_w, gw), 3e-5, 1e-5);
    if (with_bias) {
      const auto gb =
          testing::NumericalGradient([&](const std::vector<double>& v) { return loss(id, wd, v); }, bd);
      ExpectClose("matmul dbias", db, testing::Plus(prior_b, gb), 3e-5, 1e-5);
    } else {
      ExpectClose("matmul dbias untouched", db, prior_b, 0.0, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bias, MatmulBf16, ::testing::Bool(), [](const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "WithBias" : "NoBias";
});

TEST(MatmulBf16NoInputGrad, NullDinpStillGivesWeightGrad) {
  const Shape s = kBf16Shapes[1];
  const std::vector<bf16> inp = testing::RandomBf16(s.N * s.C, 31), w = testing::RandomBf16(s.OC * s.C, 32);
  const std::vector<bf16> dout = testing::RandomBf16(s.N * s.OC, 33);
  std::vector<bf16> dinp_ref(s.N * s.C, bf16{0});
  std::vector<float> dw_ref(s.OC * s.C, 0.0f), db_ref(s.OC, 0.0f);
  cpu::matmul_backward(kCtx, dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), w.data(),
                       s.N, s.C, s.OC);
  std::vector<float> dw(s.OC * s.C, 0.0f), db(s.OC, 0.0f);
  cpu::matmul_backward<bf16>(kCtx, nullptr, dw.data(), db.data(), dout.data(), inp.data(), w.data(), s.N, s.C,
                             s.OC);
  ASSERT_GT(testing::Norm(dw), 0.0);
  ExpectClose("dweight without dinp", dw, dw_ref, 0.0, 0.0);
  ExpectClose("dbias without dinp", db, db_ref, 0.0, 0.0);
}

}  // namespace
}  // namespace fjord
