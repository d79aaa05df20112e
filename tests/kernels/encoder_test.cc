// Token + position embedding: forward exactly, backward by finite differences with repeated
// tokens, and determinism of the backward scatter across thread counts; the bf16 instantiation
// against the same references.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
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

// Not powers of two; 10 tokens drawn from a vocabulary of 7 must repeat, and we force it too.
constexpr int B = 2, T = 5, C = 13, V = 7;

std::vector<int32_t> Tokens() {
  std::vector<int32_t> tokens = testing::RandomInts(B * T, 1, V);
  tokens[3] = tokens[0];
  tokens[T + 1] = tokens[0];  // same token in both sequences, at different positions
  tokens[T + 2] = tokens[2];  // same token at the same position in both sequences
  return tokens;
}

std::vector<double> EncoderRef(const std::vector<int32_t>& tokens, const std::vector<double>& wte,
                               const std::vector<double>& wpe) {
  std::vector<double> out(B * T * C);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c) out[(b * T + t) * C + c] = wte[tokens[b * T + t] * C + c] + wpe[t * C + c];
  return out;
}

TEST(Encoder, ForwardIsExact) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<float> wte = testing::RandomFloats(V * C, 2), wpe = testing::RandomFloats(T * C, 3);
  std::vector<float> out(B * T * C, kPoison);
  cpu::encoder_forward(kCtx, out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  ASSERT_GT(testing::Norm(out), 0.0);
  // One correctly rounded float addition per element: relative error at most 2^-24.
  ExpectClose("encoder out", out, EncoderRef(tokens, testing::ToDouble(wte), testing::ToDouble(wpe)), 0.0,
              6e-8);
}

TEST(Encoder, BackwardMatchesFiniteDifferencesAndAccumulates) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<double> wte = testing::ToDouble(testing::RandomFloats(V * C, 4));
  const std::vector<double> wpe = testing::ToDouble(testing::RandomFloats(T * C, 5));
  const std::vector<float> dout = testing::RandomFloats(B * T * C, 6);
  const std::vector<double> doutd = testing::ToDouble(dout);
  const std::vector<float> prior_wte = testing::RandomFloats(V * C, 7),
                           prior_wpe = testing::RandomFloats(T * C, 8);

  std::vector<float> dwte = prior_wte, dwpe = prior_wpe;
  cpu::encoder_backward(kCtx, dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);

  auto loss_wte = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, x, wpe));
  };
  auto loss_wpe = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, wte, x));
  };
  // At most B*T = 10 float additions of O(1) terms per element: error below 10 * 2^-24 * 11 ~ 7e-6
  // in the worst case, far less in practice.
  ExpectClose("encoder dwte", dwte, testing::Plus(prior_wte, testing::NumericalGradient(loss_wte, wte)), 1e-5,
              1e-6);
  ExpectClose("encoder dwpe", dwpe, testing::Plus(prior_wpe, testing::NumericalGradient(loss_wpe, wpe)), 1e-5,
              1e-6);
  // Rows of tokens that never occur keep their prior exactly.
  for (int v = 0; v < V; ++v) {
    bool used = false;
    for (int32_t tok : tokens) used |= tok == v;
    if (used) continue;
    for (int c = 0; c < C; ++c) EXPECT_EQ(dwte[v * C + c], prior_wte[v * C + c]) << "token " << v;
  }
}

TEST(Encoder, BackwardIsBitwiseDeterministicAcrossThreadCounts) {
  // Wide enough for several thread-owned channel blocks; many repeats of few tokens.
  constexpr int b = 3, t = 17, c = 70, v = 4;
  const std::vector<int32_t> tokens = testing::RandomInts(b * t, 9, v);
  const std::vector<float> dout = testing::RandomFloats(b * t * c, 10);
  auto run = [&](int threads) {
    std::vector<float> dwte(v * c, 0.0f), dwpe(t * c, 0.0f);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    cpu::encoder_backward(kCtx, dwte.data(), dwpe.data(), dout.data(), tokens.data(), b, t, c);
    omp_set_num_threads(saved);
    dwte.insert(dwte.end(), dwpe.begin(), dwpe.end());
    return dwte;
  };
  const std::vector<float> one = run(1), three = run(3);
  ASSERT_GT(testing::Norm(one), 0.0);
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
}

TEST(EncoderBf16, ForwardRoundsTheSumOnce) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<bf16> wte = testing::RandomBf16(V * C, 11), wpe = testing::RandomBf16(T * C, 12);
  std::vector<bf16> out(B * T * C, kPoisonBf16);
  cpu::encoder_forward(kCtx, out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  // The fp32 sum is the float test's (2^-24 relative), then one rounding to bf16.
  ExpectBf16Close("encoder out", out, EncoderRef(tokens, testing::ToDouble(wte), testing::ToDouble(wpe)), 0.0,
                  6e-8);
}

TEST(EncoderBf16, BackwardAccumulatesIntoFp32Gradients) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<double> wte = testing::ToDouble(testing::RandomBf16(V * C, 13));
  const std::vector<double> wpe = testing::ToDouble(testing::RandomBf16(T * C, 14));
  const std::vector<bf16> dout = testing::RandomBf16(B * T * C, 15);
  const std::vector<double> doutd = testing::ToDouble(dout);
  const std::vector<float> prior_wte = testing::RandomFloats(V * C, 16),
                           prior_wpe = testing::RandomFloats(T * C, 17);

  std::vector<float> dwte = prior_wte, dwpe = prior_wpe;
  cpu::encoder_backward(kCtx, dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);

  auto loss_wte = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, x, wpe));
  };
  auto loss_wpe = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, wte, x));
  };
  // fp32 gradients of exact bf16 dout values: the float test's tolerance.
  ExpectClose("encoder dwte", dwte, testing::Plus(prior_wte, testing::NumericalGradient(loss_wte, wte)), 1e-5,
              1e-6);
  ExpectClose("encoder dwpe", dwpe, testing::Plus(prior_wpe, testing::NumericalGradient(loss_wpe, wpe)), 1e-5,
              1e-6);
}

}  // namespace
}  // namespace fjord
