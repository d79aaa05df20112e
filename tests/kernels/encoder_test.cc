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

using testing::ExpectClose;
using testing::kPoison;

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

template <typename floatX>
void CheckForward(uint32_t seed) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<floatX> wte = testing::RandomStored<floatX>(V * C, seed),
                            wpe = testing::RandomStored<floatX>(T * C, seed + 1);
  std::vector<floatX> out(B * T * C, testing::Poison<floatX>());
  cpu::encoder_forward(kCtx, out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  ASSERT_GT(testing::Norm(testing::ToDouble(out)), 0.0);
  // One correctly rounded float addition per element: relative error at most 2^-24. bf16: that
  // fp32 sum, then one rounding to bf16.
  testing::ExpectStoredClose("encoder out", out,
                             EncoderRef(tokens, testing::ToDouble(wte), testing::ToDouble(wpe)), 0.0, 6e-8);
}

TEST(Encoder, ForwardIsExact) { CheckForward<float>(2); }
TEST(EncoderBf16, ForwardRoundsTheSumOnce) { CheckForward<bf16>(11); }

// The weight gradients are fp32 in both instantiations; dout has the storage type.
template <typename floatX>
void CheckBackward(uint32_t seed) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<double> wte = testing::ToDouble(testing::RandomStored<floatX>(V * C, seed));
  const std::vector<double> wpe = testing::ToDouble(testing::RandomStored<floatX>(T * C, seed + 1));
  const std::vector<floatX> dout = testing::RandomStored<floatX>(B * T * C, seed + 2);
  const std::vector<double> doutd = testing::ToDouble(dout);
  const std::vector<float> prior_wte = testing::RandomFloats(V * C, seed + 3),
                           prior_wpe = testing::RandomFloats(T * C, seed + 4);

  std::vector<float> dwte = prior_wte, dwpe = prior_wpe;
  cpu::encoder_backward(kCtx, dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);

  auto loss_wte = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, x, wpe));
  };
  auto loss_wpe = [&](const std::vector<double>& x) {
    return testing::WeightedSum(doutd, EncoderRef(tokens, wte, x));
  };
  // At most B*T = 10 float additions of O(1) terms per element: error below 10 * 2^-24 * 11 ~ 7e-6
  // in the worst case, far less in practice (bf16 dout values are read exactly: the same bound).
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

TEST(Encoder, BackwardMatchesFiniteDifferencesAndAccumulates) { CheckBackward<float>(4); }
TEST(EncoderBf16, BackwardAccumulatesIntoFp32Gradients) { CheckBackward<bf16>(13); }

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

// Without learned positions (wpe null, Llama): out is the embedding row exactly, and the token
// gradient is the one computed with positions (dwpe's sums are separate), dwpe untouched.
TEST(Encoder, NullPositionsCopyTheEmbeddingAndSkipTheirGradient) {
  const std::vector<int32_t> tokens = Tokens();
  const std::vector<float> wte = testing::RandomFloats(V * C, 31),
                           dout = testing::RandomFloats(B * T * C, 32);
  std::vector<float> out(B * T * C, kPoison);
  cpu::encoder_forward<float>(kCtx, out.data(), tokens.data(), wte.data(), nullptr, B, T, C);
  std::vector<double> zeros(T * C, 0.0);
  ExpectClose("encoder out without wpe", out, EncoderRef(tokens, testing::ToDouble(wte), zeros), 0, 0);
  const std::vector<float> prior = testing::RandomFloats(V * C, 33);
  std::vector<float> with = prior, without = prior, dwpe(T * C, 0.0f);
  cpu::encoder_backward(kCtx, with.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  cpu::encoder_backward<float>(kCtx, without.data(), nullptr, dout.data(), tokens.data(), B, T, C);
  testing::ExpectSameBits("dwte without dwpe", without, with);
  ASSERT_GT(testing::Norm(dwpe), 0.0);
}

}  // namespace
}  // namespace fjord
