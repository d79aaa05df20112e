// Fully connected layer against naive double loops; backward by finite differences, with and
// without bias and input gradient; the bf16 instantiation against the same references. The fused
// matmul_gelu_forward against its definition (bit for bit) and against GELU of the double GEMM.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;

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

template <typename floatX>
void CheckForward(bool with_bias, std::span<const Shape> shapes, uint32_t seed) {
  for (const Shape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    const std::vector<floatX> inp = testing::RandomStored<floatX>(s.N * s.C, seed),
                              w = testing::RandomStored<floatX>(s.OC * s.C, seed + 1);
    const std::vector<floatX> bias = testing::RandomStored<floatX>(s.OC, seed + 2);
    std::vector<floatX> out(s.N * s.OC, testing::Poison<floatX>());
    cpu::matmul_forward<floatX>(kCtx, out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr,
                                s.N, s.C, s.OC);
    const std::vector<double> bd = testing::ToDouble(bias);
    const auto ref = MatmulRef(s, testing::ToDouble(inp), testing::ToDouble(w), with_bias ? &bd : nullptr);
    ASSERT_GT(testing::Norm(testing::ToDouble(out)), 0.0);
    // A float dot product of C <= 19 terms in [-1, 1]: error well under C * 2^-24 * C ~ 2e-5 worst
    // case; the bound is absolute because cancelling sums can be near zero. bf16: that bound for
    // the fp32 GEMM (bias added in fp32), then one rounding to bf16.
    testing::ExpectStoredClose("matmul out", out, ref, 2e-5, 1e-5);
  }
}

template <typename floatX>
void CheckBackward(bool with_bias, std::span<const Shape> shapes, uint32_t seed) {
  for (const Shape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    const std::vector<floatX> inp = testing::RandomStored<floatX>(s.N * s.C, seed),
                              w = testing::RandomStored<floatX>(s.OC * s.C, seed + 1);
    const std::vector<floatX> bias = testing::RandomStored<floatX>(s.OC, seed + 2),
                              dout = testing::RandomStored<floatX>(s.N * s.OC, seed + 3);
    // dinp has the storage type; the parameter gradients are fp32 in both instantiations.
    const std::vector<floatX> prior_inp = testing::RandomStored<floatX>(s.N * s.C, seed + 4);
    const std::vector<float> prior_w = testing::RandomFloats(s.OC * s.C, seed + 5),
                             prior_b = testing::RandomFloats(s.OC, seed + 6);
    std::vector<floatX> dinp = prior_inp;
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
    // Float contractions over OC <= 70 (dinp) or N <= 37 (dweight, dbias) terms in [-1, 1], plus an
    // O(1) prior: a few 1e-6 in practice; 3e-5 absolute leaves room without hiding a wrong term.
    // bf16: the same bounds; dinp = prior + dout @ weight is then rounded once to bf16, while the
    // parameter gradients accumulate in fp32.
    testing::ExpectStoredClose("matmul dinp", dinp, testing::Plus(testing::ToDouble(prior_inp), gi), 3e-5,
                               1e-5);
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

std::string BiasName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "WithBias" : "NoBias";
}

class Matmul : public ::testing::TestWithParam<bool> {};  // parameter: with bias

TEST_P(Matmul, ForwardMatchesDoubleReference) { CheckForward<float>(GetParam(), kShapes, 1); }
TEST_P(Matmul, BackwardMatchesFiniteDifferencesAndAccumulates) {
  CheckBackward<float>(GetParam(), kShapes, 4);
}
INSTANTIATE_TEST_SUITE_P(Bias, Matmul, ::testing::Bool(), BiasName);

class MatmulBf16 : public ::testing::TestWithParam<bool> {};  // parameter: with bias

TEST_P(MatmulBf16, ForwardMatchesDoubleReference) { CheckForward<bf16>(GetParam(), kBf16Shapes, 21); }
TEST_P(MatmulBf16, BackwardMatchesFiniteDifferencesAndAccumulates) {
  CheckBackward<bf16>(GetParam(), kBf16Shapes, 24);
}
INSTANTIATE_TEST_SUITE_P(Bias, MatmulBf16, ::testing::Bool(), BiasName);

// With dinp null, dweight and dbias are still those of the full backward.
template <typename floatX>
void CheckNullDinpStillGivesWeightGrad(const Shape& s, uint32_t seed) {
  const std::vector<floatX> inp = testing::RandomStored<floatX>(s.N * s.C, seed),
                            w = testing::RandomStored<floatX>(s.OC * s.C, seed + 1);
  const std::vector<floatX> dout = testing::RandomStored<floatX>(s.N * s.OC, seed + 2);
  std::vector<floatX> dinp_ref(s.N * s.C, floatX{});
  std::vector<float> dw_ref(s.OC * s.C, 0.0f), db_ref(s.OC, 0.0f);
  cpu::matmul_backward(kCtx, dinp_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), inp.data(), w.data(),
                       s.N, s.C, s.OC);
  std::vector<float> dw(s.OC * s.C, 0.0f), db(s.OC, 0.0f);
  cpu::matmul_backward<floatX>(kCtx, nullptr, dw.data(), db.data(), dout.data(), inp.data(), w.data(), s.N,
                               s.C, s.OC);
  ASSERT_GT(testing::Norm(dw), 0.0);
  ExpectClose("dweight without dinp", dw, dw_ref, 0.0, 0.0);
  ExpectClose("dbias without dinp", db, db_ref, 0.0, 0.0);
}

TEST(MatmulNoInputGrad, NullDinpStillGivesWeightGrad) {
  CheckNullDinpStillGivesWeightGrad<float>(kShapes[0], 11);
}
TEST(MatmulBf16NoInputGrad, NullDinpStillGivesWeightGrad) {
  CheckNullDinpStillGivesWeightGrad<bf16>(kBf16Shapes[1], 31);
}

// ---- matmul_gelu_forward ----------------------------------------------------------------------
// The CPU op is defined as matmul_forward into pre, then gelu_forward from the stored pre: it must
// be exactly that. It is also held against GELU of the double GEMM, so that the test does not only
// compare the op with its own building blocks.

// A single row (bf16's fp32 copies follow N) and 259 rows (split over two threads in blocks of 16,
// with a remainder); C and OC prime, so that no vector width divides them.
const Shape kGeluShapes[] = {{1, 97, 203}, {259, 97, 203}};

// GELU bends in about [-3, 3]. Weights in [-3/sqrt(C), 3/sqrt(C)] make each product's variance
// 1/C, so the GEMM part of pre is about N(0, 1) and the bias in [-1, 1] shifts it: pre covers the
// bend as well as both nearly linear tails.
float WeightScale(int C) { return 3.0f / std::sqrt(static_cast<float>(C)); }

template <typename floatX>
bool SameBits(const std::vector<floatX>& a, const std::vector<floatX>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(floatX)) == 0;
}

template <typename floatX>
void CheckMatmulGelu(uint32_t seed) {
  for (const Shape& s : kGeluShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    const size_t n = s.N * s.OC;
    const float ws = WeightScale(s.C);
    const std::vector<floatX> inp = testing::RandomStored<floatX>(s.N * s.C, seed),
                              w = testing::RandomStored<floatX>(size_t{1} * s.OC * s.C, seed + 1, -ws, ws),
                              bias = testing::RandomStored<floatX>(s.OC, seed + 2);
    std::vector<floatX> out(n, testing::Poison<floatX>()), pre(n, testing::Poison<floatX>());
    cpu::matmul_gelu_forward(kCtx, out.data(), pre.data(), inp.data(), w.data(), bias.data(), s.N, s.C, s.OC);

    // The definition, bit for bit.
    std::vector<floatX> out2(n, testing::Poison<floatX>()), pre2(n, testing::Poison<floatX>());
    cpu::matmul_forward(kCtx, pre2.data(), inp.data(), w.data(), bias.data(), s.N, s.C, s.OC);
    cpu::gelu_forward(kCtx, out2.data(), pre2.data(), n);
    ASSERT_GT(testing::Norm(testing::ToDouble(out)), 0.0);
    EXPECT_TRUE(SameBits(pre, pre2)) << "pre is not matmul_forward's result";
    EXPECT_TRUE(SameBits(out, out2)) << "out is not gelu_forward of pre";

    // The double oracle. pre: the matmul test's bound for the fp32 GEMM (then, for bf16, half an
    // ulp for its one rounding). Here the C = 97 terms are below 3/sqrt(97) = 0.3 in magnitude and
    // the partial sums O(1), so each of the 97 additions rounds by ~2^-24 with random signs: ~1e-6
    // in all, and 2e-5 is far above it while a missing term or bias is off by ~0.1.
    constexpr double kPreAtol = 2e-5, kPreRtol = 1e-5;
    // out = GeluForward(stored pre), rounded once for bf16. Its input differs from the exact pre by
    // at most kPreAtol + kPreRtol |pre| (plus half an ulp of the stored bf16 pre), which moves GELU
    // by at most kGeluMaxSlope times that; GeluForward is within 1e-6 + 1e-5 |GELU| of the double
    // formula (elementwise_test.cc's bound, taken at the larger of the two outputs); bf16 adds half
    // an ulp of out for its rounding.
    constexpr double kGeluAtol = 1e-6, kGeluRtol = 1e-5;
    const std::vector<double> bd = testing::ToDouble(bias);
    const std::vector<double> pre_ref = MatmulRef(s, testing::ToDouble(inp), testing::ToDouble(w), &bd);
    const std::vector<double> pre_got = testing::ToDouble(pre), out_got = testing::ToDouble(out);
    std::vector<double> out_ref(n), pre_tol(n), out_tol(n);
    for (size_t i = 0; i < n; ++i) {
      out_ref[i] = testing::GeluRef(pre_ref[i]);
      pre_tol[i] = kPreAtol + kPreRtol * std::fabs(pre_ref[i]) + testing::StoredHalfUlp(pre[i]);
      out_tol[i] = testing::kGeluMaxSlope * pre_tol[i] + kGeluAtol +
                   kGeluRtol * std::max(std::fabs(out_ref[i]), std::fabs(out_got[i])) +
                   testing::StoredHalfUlp(out[i]);
    }
    testing::ExpectWithin("matmul_gelu pre", pre_got, pre_ref, pre_tol);
    testing::ExpectWithin("matmul_gelu out", out_got, out_ref, out_tol);
  }
}

TEST(MatmulGelu, IsMatmulThenGeluAndMatchesDoubleReference) { CheckMatmulGelu<float>(41); }
TEST(MatmulGeluBf16, IsMatmulThenGeluAndMatchesDoubleReference) { CheckMatmulGelu<bf16>(51); }

}  // namespace
}  // namespace fjord
