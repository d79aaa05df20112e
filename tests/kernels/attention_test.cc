// Causal attention against a naive double softmax(q k^T / sqrt(hs)) v, including the saved
// log-sum-exp; backward by finite differences of that reference w.r.t. all of qkv.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;
using testing::kPoison;

const OpContext kCtx;

struct Shape {
  int B, T, C, NH;
};

// hs = 4 and hs = 8; the second has rows long enough (33) for softmax to matter.
const Shape kShapes[] = {{2, 5, 12, 3}, {1, 33, 16, 2}};

struct AttentionRef {
  std::vector<double> out, lse;
};

AttentionRef AttentionForwardRef(const Shape& s, const std::vector<double>& qkv) {
  const int hs = s.C / s.NH, C3 = 3 * s.C;
  AttentionRef r{std::vector<double>(s.B * s.T * s.C), std::vector<double>(s.B * s.NH * s.T)};
  std::vector<double> score(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.T; ++i) {
        const double* q = &qkv[(b * s.T + i) * C3 + h * hs];
        double max = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[(b * s.T + j) * C3 + s.C + h * hs];
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) dot += q[d] * k[d];
          score[j] = dot / std::sqrt(static_cast<double>(hs));
          max = std::max(max, score[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(score[j] - max);
        for (int d = 0; d < hs; ++d) {
          double acc = 0.0;
          for (int j = 0; j <= i; ++j)
            acc += std::exp(score[j] - max) / sum * qkv[(b * s.T + j) * C3 + 2 * s.C + h * hs + d];
          r.out[(b * s.T + i) * s.C + h * hs + d] = acc;
        }
        r.lse[(b * s.NH + h) * s.T + i] = max + std::log(sum);
      }
  return r;
}

// Scores of a few units, so some rows are peaked and some flat.
std::vector<float> Qkv(const Shape& s, uint32_t seed) {
  return testing::RandomFloats(s.B * s.T * 3 * s.C, seed, -2.0f, 2.0f);
}

TEST(Attention, ForwardMatchesDoubleReference) {
  for (const Shape& s : kShapes) {
    const std::vector<float> qkv = Qkv(s, 1);
    std::vector<float> out(s.B * s.T * s.C, kPoison), lse(s.B * s.NH * s.T, kPoison);
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    const AttentionRef ref = AttentionForwardRef(s, testing::ToDouble(qkv));
    ASSERT_GT(testing::Norm(out), 0.0);
    // Float dots over hs <= 8 terms, exp and a convex combination of O(1) values: errors of a few
    // 1e-7; outputs can cancel to near zero, hence mostly absolute.
    ExpectClose("attention out", out, ref.out, 2e-6, 1e-5);
    ExpectClose("attention lse", lse, ref.lse, 2e-6, 1e-6);
  }
}

TEST(Attention, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const Shape& s : kShapes) {
    const std::vector<float> qkv = Qkv(s, 2);
    const std::vector<float> dout = testing::RandomFloats(s.B * s.T * s.C, 3);
    std::vector<float> out(s.B * s.T * s.C), lse(s.B * s.NH * s.T);
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    const std::vector<float> prior = testing::RandomFloats(qkv.size(), 4);
    std::vector<float> dqkv = prior;
    cpu::attention_backward(kCtx, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C,
                            s.NH);

    const auto doutd = testing::ToDouble(dout);
    const auto grad = testing::NumericalGradient(
        [&](const std::vector<double>& x) {
          return testing::WeightedSum(doutd, AttentionForwardRef(s, x).out);
        },
        testing::ToDouble(qkv));
    ASSERT_GT(testing::Norm(grad), 0.0);
    // Gradients are O(1) sums over up to T = 33 rows of float products, with p recomputed from the
    // float lse: a few 1e-6 in practice.
    ExpectClose("attention dqkv", dqkv, testing::Plus(prior, grad), 2e-5, 1e-5);
  }
}

TEST(Attention, IsCausal) {
  // Changing the last position's k and v must not change any earlier output.
  const Shape s = kShapes[1];
  std::vector<float> qkv = Qkv(s, 5);
  std::vector<float> out1(s.B * s.T * s.C), out2(out1.size()), lse(s.B * s.NH * s.T);
  cpu::attention_forward(kCtx, out1.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  for (int c = s.C; c < 3 * s.C; ++c) qkv[(s.T - 1) * 3 * s.C + c] += 1.0f;
  cpu::attention_forward(kCtx, out2.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  const size_t earlier = static_cast<size_t>(s.T - 1) * s.C;
  for (size_t i = 0; i < earlier; ++i) ASSERT_EQ(out1[i], out2[i]) << "index " << i;
  bool last_changed = false;
  for (size_t i = earlier; i < out1.size(); ++i) last_changed |= out1[i] != out2[i];
  EXPECT_TRUE(last_changed);
}

}  // namespace
}  // namespace fjord
