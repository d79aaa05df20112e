// Causal attention against a naive double softmax(q k^T / sqrt(hs)) v, including the saved
// log-sum-exp, for multi-head and grouped-query shapes (query head h reads key/value head
// h / (NH / NKV), Hugging Face's repeat_kv, written here from that definition); backward by finite
// differences of that reference w.r.t. all of qkv. The bf16
// instantiation against the same forward reference and an explicit double backward formula.
#include <gtest/gtest.h>

#include <cmath>
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
  int B, T, C, NH, NKV;
  int hs() const { return C / NH; }
  int width() const { return (NH + 2 * NKV) * hs(); }  // a qkv row
};

// hs = 4 and hs = 8, multi-head; the second has rows long enough (33) for softmax to matter. Then
// grouped-query shapes: 4 query heads on 2 key/value heads, and 6 on 1 (multi-query).
const Shape kShapes[] = {{2, 5, 12, 3, 3}, {1, 33, 16, 2, 2}, {2, 9, 16, 4, 2}, {1, 17, 24, 6, 1}};

// Offset of part (0 q, 1 k, 2 v) of query head h's data at (b, t): the k/v head is h / (NH / NKV).
size_t At(const Shape& s, int b, int t, int part, int h) {
  const int g = h / (s.NH / s.NKV);
  const int head = part == 0 ? h : part == 1 ? s.NH + g : s.NH + s.NKV + g;
  return static_cast<size_t>(b * s.T + t) * s.width() + static_cast<size_t>(head) * s.hs();
}

struct AttentionRef {
  std::vector<double> out, lse;
};

AttentionRef AttentionForwardRef(const Shape& s, const std::vector<double>& qkv) {
  const int hs = s.hs();
  AttentionRef r{std::vector<double>(s.B * s.T * s.C), std::vector<double>(s.B * s.NH * s.T)};
  std::vector<double> score(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.T; ++i) {
        const double* q = &qkv[At(s, b, i, 0, h)];
        double max = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[At(s, b, j, 1, h)];
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) dot += q[d] * k[d];
          score[j] = dot / std::sqrt(static_cast<double>(hs));
          max = std::max(max, score[j]);
        }
        double sum = 0.0;
        for (int j = 0; j <= i; ++j) sum += std::exp(score[j] - max);
        for (int d = 0; d < hs; ++d) {
          double acc = 0.0;
          for (int j = 0; j <= i; ++j) acc += std::exp(score[j] - max) / sum * qkv[At(s, b, j, 2, h) + d];
          r.out[(b * s.T + i) * s.C + h * hs + d] = acc;
        }
        r.lse[(b * s.NH + h) * s.T + i] = max + std::log(sum);
      }
  return r;
}

// The backward pass as a formula, for a given `out` rather than the exact one: the bf16 op gets
// the bf16-rounded forward output and uses it in D_i = dout_i . out_i, so finite differences of the
// exact forward (which imply the exact out) are not its oracle. With P the causal softmax and
// dS_ij = P_ij (dout_i . v_j - D_i) / sqrt(hs): dq_i = sum_j dS_ij k_j, dk_j = sum_i dS_ij q_i,
// dv_j = sum_i P_ij dout_i.
std::vector<double> AttentionBackwardRef(const Shape& s, const std::vector<double>& qkv,
                                         const std::vector<double>& dout, const std::vector<double>& out) {
  const int hs = s.hs();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  std::vector<double> dqkv(qkv.size(), 0.0), p(s.T);
  auto at = [&](int b, int t, int part, int h) { return At(s, b, t, part, h); };
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < s.T; ++i) {
        const double* q = &qkv[at(b, i, 0, h)];
        const double* dy = &dout[(b * s.T + i) * s.C + h * hs];
        const double* o = &out[(b * s.T + i) * s.C + h * hs];
        double max = -INFINITY, sum = 0.0, D = 0.0;
        for (int j = 0; j <= i; ++j) {
          double dot = 0.0;
          for (int d = 0; d < hs; ++d) dot += q[d] * qkv[at(b, j, 1, h) + d];
          p[j] = dot * scale;
          max = std::max(max, p[j]);
        }
        for (int j = 0; j <= i; ++j) sum += std::exp(p[j] - max);
        for (int j = 0; j <= i; ++j) p[j] = std::exp(p[j] - max) / sum;
        for (int d = 0; d < hs; ++d) D += dy[d] * o[d];
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[at(b, j, 1, h)];
          const double* v = &qkv[at(b, j, 2, h)];
          double dp = 0.0;
          for (int d = 0; d < hs; ++d) dp += dy[d] * v[d];
          const double ds = p[j] * (dp - D) * scale;
          for (int d = 0; d < hs; ++d) {
            dqkv[at(b, i, 0, h) + d] += ds * k[d];
            dqkv[at(b, j, 1, h) + d] += ds * q[d];
            dqkv[at(b, j, 2, h) + d] += p[j] * dy[d];
          }
        }
      }
  return dqkv;
}

// Scores of a few units, so some rows are peaked and some flat.
std::vector<float> Qkv(const Shape& s, uint32_t seed) {
  return testing::RandomFloats(static_cast<size_t>(s.B) * s.T * s.width(), seed, -2.0f, 2.0f);
}

TEST(Attention, ForwardMatchesDoubleReference) {
  for (const Shape& s : kShapes) {
    const std::vector<float> qkv = Qkv(s, 1);
    std::vector<float> out(s.B * s.T * s.C, kPoison), lse(s.B * s.NH * s.T, kPoison);
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
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
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
    const std::vector<float> prior = testing::RandomFloats(qkv.size(), 4);
    std::vector<float> dqkv = prior;
    cpu::attention_backward(kCtx, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C,
                            s.NH, s.NKV);

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
  cpu::attention_forward(kCtx, out1.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
  for (int c = s.C; c < s.width(); ++c) qkv[(s.T - 1) * s.width() + c] += 1.0f;
  cpu::attention_forward(kCtx, out2.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
  const size_t earlier = static_cast<size_t>(s.T - 1) * s.C;
  for (size_t i = 0; i < earlier; ++i) ASSERT_EQ(out1[i], out2[i]) << "index " << i;
  bool last_changed = false;
  for (size_t i = earlier; i < out1.size(); ++i) last_changed |= out1[i] != out2[i];
  EXPECT_TRUE(last_changed);
}

TEST(AttentionBf16, ForwardMatchesDoubleReference) {
  for (const Shape& s : kShapes) {
    const std::vector<bf16> qkv = testing::TruncateToBf16(Qkv(s, 11));
    std::vector<bf16> out(s.B * s.T * s.C, kPoisonBf16);
    std::vector<float> lse(s.B * s.NH * s.T, kPoison);
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
    const AttentionRef ref = AttentionForwardRef(s, testing::ToDouble(qkv));
    // The float test's fp32 bounds; out is then rounded once to bf16, lse stays fp32.
    ExpectBf16Close("attention out", out, ref.out, 2e-6, 1e-5);
    ExpectClose("attention lse", lse, ref.lse, 2e-6, 1e-6);
  }
}

TEST(AttentionBf16, BackwardMatchesDoubleFormulaAndAccumulates) {
  for (const Shape& s : kShapes) {
    const std::vector<bf16> qkv = testing::TruncateToBf16(Qkv(s, 12));
    const std::vector<bf16> dout = testing::RandomBf16(s.B * s.T * s.C, 13);
    std::vector<bf16> out(s.B * s.T * s.C);
    std::vector<float> lse(s.B * s.NH * s.T);
    cpu::attention_forward(kCtx, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NKV);
    const std::vector<bf16> prior = testing::RandomBf16(qkv.size(), 14);
    std::vector<bf16> dqkv = prior;
    cpu::attention_backward(kCtx, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B, s.T, s.C,
                            s.NH, s.NKV);

    const std::vector<double> qkvd = testing::ToDouble(qkv), doutd = testing::ToDouble(dout);
    // The formula is the gradient when out is exact: check the oracle itself against finite
    // differences of the forward reference first.
    const std::vector<double> exact = AttentionBackwardRef(s, qkvd, doutd, AttentionForwardRef(s, qkvd).out);
    const auto fd = testing::NumericalGradient(
        [&](const std::vector<double>& x) {
          return testing::WeightedSum(doutd, AttentionForwardRef(s, x).out);
        },
        qkvd);
    ExpectClose("attention backward formula", exact, fd, 1e-8, 1e-7);

    const std::vector<double> grad = AttentionBackwardRef(s, qkvd, doutd, testing::ToDouble(out));
    ASSERT_GT(testing::Norm(grad), 0.0);
    // The float test's fp32 bound (p recomputed from the fp32 lse), then one rounding of prior +
    // gradient to bf16.
    ExpectBf16Close("attention dqkv", dqkv, testing::Plus(testing::ToDouble(prior), grad), 2e-5, 1e-5);
  }
}

}  // namespace
}  // namespace fjord
