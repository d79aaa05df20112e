// CUDA LayerNorm forward and backward against the CPU twin, for both storage types (float and
// bf16; mean, rstd and the parameter gradients are fp32 either way). The fused
// residual_layernorm_forward against the CPU's, and bit for bit against the CUDA residual_forward
// followed by the CUDA layernorm_forward.
#include <gtest/gtest.h>

#include <string>
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
using testing::Poison;
using testing::Random;
using testing::Rounded;

struct Shape {
  size_t N;
  int C;
};

// C below one warp, C not a multiple of 32 with N not a multiple of the 8 rows per block, and
// GPT-2 small's C with N spanning many column-sum strides.
const Shape kShapes[] = {{5, 13}, {301, 771}, {1027, 768}};
// The same, and a single row of odd C for the fused forward.
const Shape kFusedShapes[] = {{1, 97}, {5, 13}, {301, 771}, {1027, 768}};

// Rows with non-zero means and differing spreads.
template <typename floatX>
std::vector<floatX> Input(const Shape& s, uint32_t seed) {
  std::vector<float> x = testing::RandomFloats(s.N * s.C, seed);
  for (size_t n = 0; n < s.N; ++n)
    for (int c = 0; c < s.C; ++c) x[n * s.C + c] = x[n * s.C + c] * (1.0f + n % 5) + 0.25f * (n % 7);
  return Rounded<floatX>(x);
}

// The addends of a residual add (a stream with row means and spreads, a smaller branch output) and
// the LayerNorm parameters, as floatX.
template <typename floatX>
struct FusedInputs {
  std::vector<floatX> a, b, w, bias;
};

template <typename floatX>
FusedInputs<floatX> MakeFusedInputs(const Shape& s, uint32_t seed) {
  return {Input<floatX>(s, seed), Random<floatX>(s.N * s.C, seed + 1, -0.5f, 0.5f),
          Random<floatX>(s.C, seed + 2, 0.5f, 1.5f), Random<floatX>(s.C, seed + 3)};
}

template <typename floatX>
struct FusedOutputs {
  std::vector<floatX> residual, out;
  std::vector<float> mean, rstd;
};

class CudaLayerNorm : public CudaOpTest {
 protected:
  // The CUDA residual_layernorm_forward on `in`, its outputs poisoned before the call.
  template <typename floatX>
  FusedOutputs<floatX> RunFused(const Shape& s, const FusedInputs<floatX>& in) {
    DeviceBuffer<floatX> d_a(in.a), d_b(in.b), d_w(in.w), d_bias(in.bias);
    DeviceBuffer<floatX> d_residual(std::vector<floatX>(s.N * s.C, Poison<floatX>())),
        d_out(std::vector<floatX>(s.N * s.C, Poison<floatX>()));
    DeviceBuffer<float> d_mean(std::vector<float>(s.N, kPoison)), d_rstd(std::vector<float>(s.N, kPoison));
    cuda::residual_layernorm_forward(ctx_, d_residual.get(), d_out.get(), d_mean.get(), d_rstd.get(),
                                     d_a.get(), d_b.get(), d_w.get(), d_bias.get(), s.N, s.C);
    Sync();
    return {d_residual.Download(), d_out.Download(), d_mean.Download(), d_rstd.Download()};
  }

  template <typename floatX>
  void CheckForward() {
    for (const Shape& s : kShapes) {
      const std::vector<floatX> x = Input<floatX>(s, 1);
      const std::vector<floatX> w = Random<floatX>(s.C, 2, 0.5f, 1.5f), b = Random<floatX>(s.C, 3);
      DeviceBuffer<floatX> d_x(x), d_w(w), d_b(b);
      DeviceBuffer<floatX> d_out(std::vector<floatX>(s.N * s.C, Poison<floatX>()));
      DeviceBuffer<float> d_mean(std::vector<float>(s.N, kPoison)), d_rstd(std::vector<float>(s.N, kPoison));
      cuda::layernorm_forward(ctx_, d_out.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(), d_b.get(),
                              s.N, s.C);
      Sync();
      std::vector<floatX> out(s.N * s.C, Poison<floatX>());
      std::vector<float> mean(s.N), rstd(s.N);
      cpu::layernorm_forward(cpu_ctx_, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                             s.N, s.C);
      const std::vector<floatX> got = d_out.Download();
      ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
      // The GPU sums row statistics in float (lane-strided, then a warp tree) over up to 771 terms
      // of up to ~6; the CPU twin in double. Relative differences ~1e-7 to 1e-6 in mean and rstd,
      // passed on to O(1) outputs (with bf16, plus the one ulp by which that can flip the final
      // rounding).
      ExpectRoundedClose("layernorm out", got, out, 1e-5, 1e-5);
      ExpectClose("layernorm mean", d_mean.Download(), mean, 1e-6, 1e-5);
      ExpectClose("layernorm rstd", d_rstd.Download(), rstd, 0.0, 1e-5);
    }
  }

  // residual = a + b is one IEEE fp32 addition and the same rounding to floatX on both backends, so
  // it must match the CPU's to the bit; out and the statistics within the plain forward's bounds.
  template <typename floatX>
  void CheckFusedForward() {
    for (const Shape& s : kFusedShapes) {
      SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
      const FusedInputs<floatX> in = MakeFusedInputs<floatX>(s, 11);
      const FusedOutputs<floatX> got = RunFused(s, in);
      std::vector<floatX> residual(s.N * s.C, Poison<floatX>()), out(s.N * s.C, Poison<floatX>());
      std::vector<float> mean(s.N, kPoison), rstd(s.N, kPoison);
      cpu::residual_layernorm_forward(cpu_ctx_, residual.data(), out.data(), mean.data(), rstd.data(),
                                      in.a.data(), in.b.data(), in.w.data(), in.bias.data(), s.N, s.C);
      testing::ExpectFinite("residual", got.residual);
      testing::ExpectSameBits("residual", got.residual, residual);
      ASSERT_GT(testing::Norm(AsFloats(got.out)), 0.0);
      // The bounds of CheckForward (ExpectRoundedClose adds the bf16 ulp of the final rounding).
      ExpectRoundedClose("out", got.out, out, 1e-5, 1e-5);
      ExpectClose("mean", got.mean, mean, 1e-6, 1e-5);
      ExpectClose("rstd", got.rstd, rstd, 0.0, 1e-5);
    }
  }

  // The fused kernel sums the same rounded values in the same lane and warp order and ends in the
  // same device code as the plain one, so the composition is reproduced to the bit.
  template <typename floatX>
  void CheckFusedEqualsComposition() {
    for (const Shape& s : kFusedShapes) {
      SCOPED_TRACE("N " + std::to_string(s.N) + ", C " + std::to_string(s.C));
      const FusedInputs<floatX> in = MakeFusedInputs<floatX>(s, 21);
      const FusedOutputs<floatX> fused = RunFused(s, in);
      DeviceBuffer<floatX> d_a(in.a), d_b(in.b), d_w(in.w), d_bias(in.bias);
      DeviceBuffer<floatX> d_residual(std::vector<floatX>(s.N * s.C, Poison<floatX>())),
          d_out(std::vector<floatX>(s.N * s.C, Poison<floatX>()));
      DeviceBuffer<float> d_mean(std::vector<float>(s.N, kPoison)), d_rstd(std::vector<float>(s.N, kPoison));
      cuda::residual_forward(ctx_, d_residual.get(), d_a.get(), d_b.get(), s.N * s.C);
      cuda::layernorm_forward(ctx_, d_out.get(), d_mean.get(), d_rstd.get(), d_residual.get(), d_w.get(),
                              d_bias.get(), s.N, s.C);
      Sync();
      testing::ExpectFinite("fused residual", fused.residual);
      testing::ExpectFinite("fused out", fused.out);
      testing::ExpectFinite("fused mean", fused.mean);
      testing::ExpectFinite("fused rstd", fused.rstd);
      testing::ExpectSameBits("residual", fused.residual, d_residual.Download());
      testing::ExpectSameBits("out", fused.out, d_out.Download());
      testing::ExpectSameBits("mean", fused.mean, d_mean.Download());
      testing::ExpectSameBits("rstd", fused.rstd, d_rstd.Download());
    }
  }

  template <typename floatX>
  void CheckBackward() {
    for (const Shape& s : kShapes) {
      const std::vector<floatX> x = Input<floatX>(s, 4);
      const std::vector<floatX> w = Random<floatX>(s.C, 5, 0.5f, 1.5f), b = Random<floatX>(s.C, 6);
      const std::vector<floatX> dout = Random<floatX>(s.N * s.C, 7);
      std::vector<floatX> out(s.N * s.C);
      std::vector<float> mean(s.N), rstd(s.N);
      cpu::layernorm_forward(cpu_ctx_, out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                             s.N, s.C);
      const std::vector<floatX> prior_x = Random<floatX>(s.N * s.C, 8);
      const std::vector<float> prior_w = testing::RandomFloats(s.C, 9),
                               prior_b = testing::RandomFloats(s.C, 10);

      // Both backends start from the same saved statistics, so only the backward passes differ.
      DeviceBuffer<floatX> d_x(x), d_w(w), d_dout(dout), d_dx(prior_x);
      DeviceBuffer<float> d_mean(mean), d_rstd(rstd), d_dw(prior_w), d_db(prior_b);
      cuda::layernorm_backward(ctx_, d_dx.get(), d_dw.get(), d_db.get(), d_dout.get(), d_x.get(), d_w.get(),
                               d_mean.get(), d_rstd.get(), s.N, s.C);
      Sync();
      std::vector<floatX> dx = prior_x;
      std::vector<float> dw = prior_w, db = prior_b;
      cpu::layernorm_backward(cpu_ctx_, dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                              mean.data(), rstd.data(), s.N, s.C);
      // dinp: float row means over C terms on the GPU (double on the CPU), scaled by rstd (<= ~2):
      // 1e-5 absolute (with bf16, plus one ulp for the final rounding of prior + gradient).
      ExpectRoundedClose("layernorm dinp", d_dx.Download(), dx, 1e-5, 1e-5);
      // dweight/dbias: the GPU sums N <= 1027 O(1) terms in float (32 sequential partials of ~32
      // rows, then the 32 partials), results up to ~30: error ~ sqrt(32) * 2^-24 * 30 ~ 1e-5 at
      // worst against the CPU's double sums; 1e-4 absolute + 1e-5 relative leaves margin. bf16
      // inputs are exact in fp32, so this holds for them as well.
      ExpectClose("layernorm dweight", d_dw.Download(), dw, 1e-4, 1e-5);
      ExpectClose("layernorm dbias", d_db.Download(), db, 1e-4, 1e-5);
    }
  }
};

TEST_F(CudaLayerNorm, ForwardMatchesCpu) { CheckForward<float>(); }
TEST_F(CudaLayerNorm, BackwardMatchesCpuAndAccumulates) { CheckBackward<float>(); }
TEST_F(CudaLayerNorm, Bf16ForwardMatchesCpu) { CheckForward<bf16>(); }
TEST_F(CudaLayerNorm, Bf16BackwardMatchesCpuAndAccumulates) { CheckBackward<bf16>(); }
TEST_F(CudaLayerNorm, ResidualForwardMatchesCpu) { CheckFusedForward<float>(); }
TEST_F(CudaLayerNorm, ResidualForwardEqualsResidualThenLayerNorm) { CheckFusedEqualsComposition<float>(); }
TEST_F(CudaLayerNorm, Bf16ResidualForwardMatchesCpu) { CheckFusedForward<bf16>(); }
TEST_F(CudaLayerNorm, Bf16ResidualForwardEqualsResidualThenLayerNorm) { CheckFusedEqualsComposition<bf16>(); }

}  // namespace
}  // namespace fjord
