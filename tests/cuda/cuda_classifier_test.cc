// CUDA fused softmax + cross-entropy against the CPU twin, with and without the in-place dlogits,
// for both storage types of the logits (float and bf16; the losses are fp32 either way).
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::AsFloats;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::ExpectRoundedClose;
using testing::kPoison;
using testing::Rounded;

struct Shape {
  size_t N;
  int V, Vp;
};

// A vocabulary below one block's width with padding, one with no padding, and GPT-2's (padded to
// 50304 as the model does) for a few rows.
const Shape kShapes[] = {{5, 13, 16}, {3, 1000, 1000}, {4, 50257, 50304}};

// Logits uniform in [-4, 4]; row 0 stretched to [-100, 100] so that exp(x - max) clamps (Exp's
// -87 floor) and the target is far from the max; padded columns are NaN, which must be ignored
// by the loss and overwritten with 0 by the gradient.
template <typename floatX>
std::vector<floatX> Logits(const Shape& s, uint32_t seed) {
  std::vector<float> x = testing::RandomFloats(s.N * s.Vp, seed, -4.0f, 4.0f);
  for (int i = 0; i < s.V; ++i) x[i] *= 25.0f;
  for (size_t r = 0; r < s.N; ++r)
    for (int i = s.V; i < s.Vp; ++i) x[r * s.Vp + i] = kPoison;
  return Rounded<floatX>(x);
}

class CudaClassifier : public CudaOpTest {
 protected:
  template <typename floatX>
  void CheckWithDlogits() {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
      const std::vector<floatX> logits = Logits<floatX>(s, 1);
      const std::vector<int32_t> targets = testing::RandomInts(s.N, 2, s.V);
      const float dloss = 1.0f / static_cast<float>(s.N);
      DeviceBuffer<floatX> d_logits(logits);
      DeviceBuffer<float> d_losses(std::vector<float>(s.N, kPoison));
      DeviceBuffer<int32_t> d_targets(targets);
      cuda::fused_classifier(ctx_, d_logits.get(), d_losses.get(), d_targets.get(), s.N, s.V, s.Vp, dloss, 1);
      Sync();
      std::vector<floatX> dlogits = logits;
      std::vector<float> losses(s.N, kPoison);
      cpu::fused_classifier(cpu_ctx_, dlogits.data(), losses.data(), targets.data(), s.N, s.V, s.Vp, dloss,
                            1);

      const std::vector<float> got_losses = d_losses.Download();
      ASSERT_GT(testing::Norm(got_losses), 0.0);
      // The backends' exp differ by a few ulp (host polynomial vs expf), so the row sums by <~4e-7
      // relative and log(sum) by that much absolute; the loss (up to ~200 for row 0) is then
      // rounded to float once on each side: one float ulp at the loss's size, i.e. 1.2e-7
      // relative. bf16 logits are exact in fp32, so this holds for them as well.
      ExpectClose("classifier losses", got_losses, losses, 2e-6, 5e-7);

      // dlogits = e * factor - dloss at the target: e and factor each carry <~4e-7 relative
      // difference, so every entry agrees to 2e-6 relative. The target entry subtracts dloss and
      // may cancel (p ~ 1), leaving an absolute error up to ~1e-6 dloss, checked separately; the
      // others get a negligible absolute tolerance, so tiny probabilities are still compared.
      // With bf16 dlogits, plus the one ulp by which that can flip each entry's single rounding.
      std::vector<floatX> got = d_logits.Download();
      std::vector<floatX> got_target(s.N), ref_target(s.N);
      for (size_t r = 0; r < s.N; ++r) {
        const size_t t = r * s.Vp + targets[r];
        got_target[r] = got[t];
        ref_target[r] = dlogits[t];
        got[t] = dlogits[t] = FromFloat<floatX>(0.0f);
      }
      ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
      ExpectRoundedClose("classifier dlogits", got, dlogits, 1e-30, 2e-6);
      ExpectRoundedClose("classifier dlogits at targets", got_target, ref_target, 1e-6 * dloss, 2e-6);
    }
  }

  template <typename floatX>
  void CheckWithoutDlogits() {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " Vp=" << s.Vp);
      const std::vector<floatX> logits = Logits<floatX>(s, 3);
      const std::vector<int32_t> targets = testing::RandomInts(s.N, 4, s.V);
      DeviceBuffer<floatX> d_logits(logits);
      DeviceBuffer<float> d_losses(std::vector<float>(s.N, kPoison));
      DeviceBuffer<int32_t> d_targets(targets);
      cuda::fused_classifier(ctx_, d_logits.get(), d_losses.get(), d_targets.get(), s.N, s.V, s.Vp, 0.5f, 0);
      Sync();
      std::vector<floatX> cpu_logits = logits;
      std::vector<float> losses(s.N, kPoison);
      cpu::fused_classifier(cpu_ctx_, cpu_logits.data(), losses.data(), targets.data(), s.N, s.V, s.Vp, 0.5f,
                            0);
      ExpectClose("classifier losses (no dlogits)", d_losses.Download(), losses, 2e-6, 5e-7);
      // Bitwise, NaN padding included.
      const std::vector<floatX> got = d_logits.Download();
      EXPECT_EQ(std::memcmp(got.data(), logits.data(), logits.size() * sizeof(floatX)), 0);
    }
  }
};

TEST_F(CudaClassifier, LossesAndDlogitsMatchCpu) { CheckWithDlogits<float>(); }
TEST_F(CudaClassifier, WithoutDlogitsLeavesLogitsUntouched) { CheckWithoutDlogits<float>(); }
TEST_F(CudaClassifier, Bf16LossesAndDlogitsMatchCpu) { CheckWithDlogits<bf16>(); }
TEST_F(CudaClassifier, Bf16WithoutDlogitsLeavesLogitsUntouched) { CheckWithoutDlogits<bf16>(); }

}  // namespace
}  // namespace fjord
