// CUDA causal attention (flash-style forward and two-kernel backward) against the CPU twin, for both
// storage types (float and bf16; lse is fp32 either way).
#include <gtest/gtest.h>

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

using Shape = testing::AttentionShape;

// hs = 16, 64 (GPT-2), 128 (the limit), 24 (even, not a multiple of 32: masked channels) and 33
// (odd: the padded shared-memory stride equals hs); T = 37, 70, 45 are not multiples of the 32-row
// tile; T = 1 is a single row, T = 32 exactly one tile.
// Grouped-query shapes (the last three): 8 query heads on 2 key/value heads at hs = 64 (Llama 3's
// ratio 4:1), 6 on 3 at hs = 128, and 4 on 1 (multi-query) at hs = 24.
const Shape kShapes[] = {{2, 37, 48, 3},     {2, 37, 192, 3},  {1, 70, 256, 2}, {2, 45, 72, 3},
                         {1, 40, 99, 3},     {1, 1, 64, 1},    {3, 32, 64, 2},  {2, 45, 512, 8, 2},
                         {1, 70, 768, 6, 3}, {2, 33, 96, 4, 1}};

class CudaAttention : public CudaOpTest {
 protected:
  template <typename floatX>
  void CheckForward() {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message()
                   << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.kv());
      const size_t BT = size_t{1} * s.B * s.T;
      const std::vector<floatX> qkv = testing::AttentionQkv<floatX>(s, 1);
      DeviceBuffer<floatX> d_qkv(qkv);
      DeviceBuffer<floatX> d_out(std::vector<floatX>(BT * s.C, Poison<floatX>()));
      DeviceBuffer<float> d_lse(std::vector<float>(BT * s.NH, kPoison));
      cuda::attention_forward(ctx_, d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH, s.kv());
      Sync();
      std::vector<floatX> out(BT * s.C, Poison<floatX>());
      std::vector<float> lse(BT * s.NH, kPoison);
      cpu::attention_forward(cpu_ctx_, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.kv());
      const std::vector<floatX> got = d_out.Download();
      ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
      // Scores are hs-long float dot products of O(1) terms, so they and lse (|lse| < ~8) agree to
      // a few 1e-7 absolute; p = exp(s - lse) inherits that as relative error, and out, a convex
      // combination of v in [-1, 1], to ~1e-6. The online softmax's rescaling adds a few
      // roundings. With bf16 out, plus the one ulp by which that can flip the final rounding.
      ExpectRoundedClose("attention out", got, out, 1e-5, 1e-5);
      ExpectClose("attention lse", d_lse.Download(), lse, 1e-5, 1e-5);
    }
  }

  template <typename floatX>
  void CheckBackward() {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message()
                   << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.kv());
      const size_t BT = size_t{1} * s.B * s.T;
      const std::vector<floatX> qkv = testing::AttentionQkv<floatX>(s, 2);
      std::vector<floatX> out(BT * s.C);
      std::vector<float> lse(BT * s.NH);
      cpu::attention_forward(cpu_ctx_, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.kv());
      const std::vector<floatX> dout = Random<floatX>(BT * s.C, 3);
      const std::vector<floatX> prior = Random<floatX>(BT * s.width(), 4);

      // Both backends start from the CPU's forward results, so only the backward passes differ.
      DeviceBuffer<floatX> d_qkv(qkv), d_out(out), d_dout(dout), d_dqkv(prior);
      DeviceBuffer<float> d_lse(lse);
      cuda::attention_backward(ctx_, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), s.B,
                               s.T, s.C, s.NH, s.kv());
      Sync();
      std::vector<floatX> dqkv = prior;
      cpu::attention_backward(cpu_ctx_, dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), s.B,
                              s.T, s.C, s.NH, s.kv());
      const std::vector<floatX> got = d_dqkv.Download();
      const std::vector<float> got_values = AsFloats(got), prior_values = AsFloats(prior);
      std::vector<float> delta(got.size());
      for (size_t i = 0; i < got.size(); ++i) delta[i] = got_values[i] - prior_values[i];
      ASSERT_GT(testing::Norm(delta), 0.0);
      // p carries ~1e-6 relative error (as in forward); dP and D are hs-long dot products of O(1)
      // terms (absolute error a few 1e-7), so ds = p (dP - D) / sqrt(hs) is good to ~1e-6 absolute;
      // dq, dk, dv sum up to T <= 70 such terms of size <= ~4 in float. 2e-5 absolute (on top of
      // the O(1) prior) and 1e-4 relative leave a wide margin, while a wrong mask, index or missed
      // accumulation errs by O(0.1) or more. With bf16, plus one ulp for the rounding of prior +
      // gradient, each element having one writer that rounds once.
      ExpectRoundedClose("attention dqkv", got, dqkv, 2e-5, 1e-4);
    }
  }

  // Every element of dqkv has one writer and sums in a fixed order: repeated calls agree bitwise.
  template <typename floatX>
  void CheckReproducible() {
    const Shape s{2, 100, 256, 4, 2};  // grouped-query: each dk, dv sums two query heads
    const size_t BT = size_t{1} * s.B * s.T;
    const std::vector<floatX> qkv = testing::AttentionQkv<floatX>(s, 5);
    std::vector<floatX> out(BT * s.C);
    std::vector<float> lse(BT * s.NH);
    cpu::attention_forward(cpu_ctx_, out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.kv());
    DeviceBuffer<floatX> d_qkv(qkv), d_out(out), d_dout(Random<floatX>(BT * s.C, 6));
    DeviceBuffer<float> d_lse(lse);
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
      DeviceBuffer<floatX> d_dqkv(std::vector<floatX>(BT * s.width(), FromFloat<floatX>(0.0f)));
      cuda::attention_backward(ctx_, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), s.B,
                               s.T, s.C, s.NH, s.kv());
      Sync();
      if (run == 0) {
        first = AsFloats(d_dqkv.Download());
        ASSERT_GT(testing::Norm(first), 0.0);
      } else {
        ExpectClose("dqkv rerun", AsFloats(d_dqkv.Download()), first, 0.0, 0.0);
      }
    }
  }
};

TEST_F(CudaAttention, ForwardMatchesCpu) { CheckForward<float>(); }
TEST_F(CudaAttention, BackwardMatchesCpuAndAccumulates) { CheckBackward<float>(); }
TEST_F(CudaAttention, BackwardIsBitwiseReproducible) { CheckReproducible<float>(); }
TEST_F(CudaAttention, Bf16ForwardMatchesCpu) { CheckForward<bf16>(); }
TEST_F(CudaAttention, Bf16BackwardMatchesCpuAndAccumulates) { CheckBackward<bf16>(); }
TEST_F(CudaAttention, Bf16BackwardIsBitwiseReproducible) { CheckReproducible<bf16>(); }

// Head sizes above 128 are refused, naming the limit, before anything touches the device.
TEST(CudaAttentionContract, RefusesHeadSizeAbove128) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const OpContext ctx;
  EXPECT_DEATH(cuda::attention_forward<float>(ctx, nullptr, nullptr, nullptr, 1, 1, 258, 2, 2),
               "head sizes up to 128");
  EXPECT_DEATH(
      cuda::attention_backward<float>(ctx, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 129, 1, 1),
      "head sizes up to 128");
  EXPECT_DEATH(cuda::attention_forward<bf16>(ctx, nullptr, nullptr, nullptr, 1, 1, 258, 2, 2),
               "head sizes up to 128");
}

}  // namespace
}  // namespace fjord
