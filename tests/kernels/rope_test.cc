// Rotary embeddings against Hugging Face's definition written here in double: q_embed =
// q * cos + rotate_half(q) * sin with rotate_half(x) = cat(-x[hs/2:], x[:hs/2]) and cos, sin =
// cat(freqs, freqs), on the q and k heads of a packed grouped-query qkv row, v untouched; the
// backward pass (accumulating) by central finite differences of that reference.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;

const OpContext kCtx;

struct Shape {
  int B, T, NH, NKV, hs;
  size_t n() const { return static_cast<size_t>(B) * T * (NH + 2 * NKV) * hs; }
};
const Shape kShapes[] = {{2, 5, 4, 2, 8}, {1, 7, 3, 3, 4}, {2, 3, 6, 1, 16}};

// freqs[t, i] = (cos, sin) of t * theta^(-2i / hs), theta 10000 as in Llama 2.
std::vector<float> Freqs(const Shape& s) {
  std::vector<float> f(static_cast<size_t>(s.T) * s.hs);
  for (int t = 0; t < s.T; ++t)
    for (int i = 0; i < s.hs / 2; ++i) {
      const double angle = t * std::pow(10000.0, -2.0 * i / s.hs);
      f[t * s.hs + 2 * i] = static_cast<float>(std::cos(angle));
      f[t * s.hs + 2 * i + 1] = static_cast<float>(std::sin(angle));
    }
  return f;
}

std::vector<double> RopeRef(const Shape& s, const std::vector<double>& x, const std::vector<float>& f) {
  std::vector<double> y = x;
  const int half = s.hs / 2, R = (s.NH + 2 * s.NKV) * s.hs;
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = 0; h < s.NH + s.NKV; ++h) {  // q heads, then k heads; v follows unchanged
        const size_t o = static_cast<size_t>(b * s.T + t) * R + h * s.hs;
        for (int d = 0; d < s.hs; ++d) {
          const double c = f[t * s.hs + 2 * (d % half)], sn = f[t * s.hs + 2 * (d % half) + 1];
          const double rotated = d < half ? -x[o + d + half] : x[o + d - half];
          y[o + d] = x[o + d] * c + rotated * sn;
        }
      }
  return y;
}

TEST(Rope, ForwardMatchesRotateHalfDefinition) {
  for (const Shape& s : kShapes) {
    const auto x = testing::RandomFloats(s.n(), 1);
    const auto f = Freqs(s);
    std::vector<float> out(s.n(), testing::kPoison);
    cpu::rope_forward(kCtx, out.data(), x.data(), f.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    ExpectClose("rope out", out, RopeRef(s, testing::ToDouble(x), f), 1e-6, 1e-6);
  }
}

TEST(Rope, BackwardMatchesFiniteDifferencesAndAccumulates) {
  for (const Shape& s : kShapes) {
    const auto x = testing::RandomFloats(s.n(), 2), dout = testing::RandomFloats(s.n(), 3);
    const auto prior = testing::RandomFloats(s.n(), 4);
    const auto f = Freqs(s);
    std::vector<float> dx = prior;
    cpu::rope_backward(kCtx, dx.data(), dout.data(), f.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    const auto dd = testing::ToDouble(dout);
    const auto g = testing::NumericalGradient(
        [&](const std::vector<double>& v) { return testing::WeightedSum(dd, RopeRef(s, v, f)); },
        testing::ToDouble(x));
    ExpectClose("rope dinp", dx, testing::Plus(prior, g), 1e-6, 1e-6);
  }
}

TEST(RopeBf16, ForwardAndBackwardRoundOnce) {
  for (const Shape& s : kShapes) {
    const auto x = testing::RandomBf16(s.n(), 5), dout = testing::RandomBf16(s.n(), 6);
    const auto prior = testing::RandomBf16(s.n(), 7);
    const auto f = Freqs(s);
    std::vector<bf16> out(s.n(), testing::kPoisonBf16), dx = prior;
    cpu::rope_forward(kCtx, out.data(), x.data(), f.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    testing::ExpectBf16Close("rope out", out, RopeRef(s, testing::ToDouble(x), f), 1e-6, 1e-6);
    cpu::rope_backward(kCtx, dx.data(), dout.data(), f.data(), s.B, s.T, s.NH, s.NKV, s.hs);
    const auto dd = testing::ToDouble(dout);
    const auto g = testing::NumericalGradient(
        [&](const std::vector<double>& v) { return testing::WeightedSum(dd, RopeRef(s, v, f)); },
        testing::ToDouble(x));
    testing::ExpectBf16Close("rope dinp", dx, testing::Plus(testing::ToDouble(prior), g), 1e-6, 1e-6);
  }
}

}  // namespace
}  // namespace fjord
