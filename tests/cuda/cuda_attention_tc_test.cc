// The experimental tensor-core attention forward (kernels/cuda/attention_tc.cu) against the CPU twin
// and against the SIMT CUDA kernel it may replace, bf16 only; its shape predicate and refusal
// without a device.
//
// Tolerance. The kernel follows the contract of kernels/ops.h except that it rounds each
// probability p_j to bf16 (relative error <= 2^-9, to nearest) before the P V product, while the
// normaliser l sums the fp32 p_j. Against an fp32 computation of the same softmax, an out element
// o = sum_j p_j v_j / l then differs by
//   (a) |sum_j (p~_j - p_j) v_j| / l <= 2^-9 sum_j (p_j / l) |v_j| <= 2^-9 max |v|,
//   (b) the fp32 summation-order differences the SIMT test bounds by 1e-5 absolute and 1e-5
//       relative (scores, exp, online-softmax rescaling, sums of up to T terms), and
//   (c) one rounding to bf16 on each side: ExpectRoundedClose adds one bf16 spacing of the
//       reference.
// So out is checked with atol = 2^-9 max|v| + 1e-5, rtol = 1e-5, plus one spacing. lse involves no
// bf16 rounding (fp32 scores, fp32 p, fp32 l), so it gets the SIMT test's 1e-5 + 1e-5 |lse|. The
// SIMT kernel's fp32 result is itself within (b) of the CPU's, so the same bounds hold against it.
// Where q = 0 every p is exactly 1 (a bf16 value), (a) vanishes and out must agree to (b) + (c):
// that test pins the causal mask and the P V indexing much tighter than the 2^-9 bound can.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using cuda::experimental::attention_forward_tc;
using cuda::experimental::AttentionForwardTensorCoreSupported;
using testing::AttentionShape;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::ExpectRoundedClose;
using testing::kPoison;
using testing::kPoisonBf16;

// hs = 64 (GPT-2) and 128; T = 1, 17, 63, 65, 200 are not multiples of the 64-row tile, 64 is one
// tile exactly, 1024 is GPT-2's context (16 key tiles on the last query tile); NH from 1 to 12.
const AttentionShape kShapes[] = {{1, 1, 64, 1},   {3, 17, 768, 12}, {2, 63, 256, 2},    {1, 64, 128, 1},
                                  {2, 65, 384, 6}, {3, 200, 640, 5}, {1, 1024, 768, 12}, {2, 1024, 256, 2}};

constexpr double kFp32Tol = 1e-5;  // (b): the SIMT attention test's bound, absolute and relative

// max |v| over the v part of qkv: the scale of error (a).
double MaxAbsV(const std::vector<bf16>& qkv, const AttentionShape& s) {
  double max = 0.0;
  for (size_t row = 0; row < size_t{1} * s.B * s.T; ++row)
    for (int c = 2 * s.C; c < 3 * s.C; ++c) max = std::fmax(max, std::fabs(ToFloat(qkv[row * 3 * s.C + c])));
  return max;
}

// Skips below sm_80 as well as without a device.
class CudaAttentionTc : public CudaOpTest {
 protected:
  void SetUp() override {
    CudaOpTest::SetUp();
    if (IsSkipped()) return;
    int device = 0, major = 0;
    FJORD_CUDA_CHECK(cudaGetDevice(&device));
    FJORD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major < 8) GTEST_SKIP() << "tensor-core attention needs sm_80+ (device is sm_" << major << "x)";
  }

  // Runs attention_forward_tc, or the SIMT kernel when simt, on poisoned outputs.
  void RunCuda(const AttentionShape& s, const std::vector<bf16>& qkv, bool simt, std::vector<bf16>* out,
               std::vector<float>* lse) {
    const size_t BT = size_t{1} * s.B * s.T;
    DeviceBuffer<bf16> d_qkv(qkv);
    DeviceBuffer<bf16> d_out(std::vector<bf16>(BT * s.C, kPoisonBf16));
    DeviceBuffer<float> d_lse(std::vector<float>(BT * s.NH, kPoison));
    if (simt)
      cuda::attention_forward(ctx_, d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH);
    else
      attention_forward_tc(ctx_, d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH);
    Sync();
    *out = d_out.Download();
    *lse = d_lse.Download();
  }

  // attention_forward_tc against the CPU twin or the SIMT kernel on every shape; with zero_q
  // (q = 0, every p exactly 1) error (a) vanishes from the bound.
  void Check(bool against_simt, bool zero_q) {
    for (const AttentionShape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH);
      ASSERT_TRUE(AttentionForwardTensorCoreSupported(s.C, s.NH));
      const size_t BT = size_t{1} * s.B * s.T;
      const std::vector<bf16> qkv = testing::AttentionQkv<bf16>(s, 7, zero_q);
      std::vector<bf16> got, ref(BT * s.C, kPoisonBf16);
      std::vector<float> got_lse, ref_lse(BT * s.NH, kPoison);
      RunCuda(s, qkv, false, &got, &got_lse);
      if (against_simt)
        RunCuda(s, qkv, true, &ref, &ref_lse);
      else
        cpu::attention_forward(cpu_ctx_, ref.data(), ref_lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
      const double p_rounding = zero_q ? 0.0 : std::ldexp(MaxAbsV(qkv, s), -9);
      ExpectRoundedClose("attention_tc out", got, ref, p_rounding + kFp32Tol, kFp32Tol);
      ExpectClose("attention_tc lse", got_lse, ref_lse, kFp32Tol, kFp32Tol);
    }
  }
};

TEST_F(CudaAttentionTc, MatchesCpuTwin) { Check(/*against_simt=*/false, /*zero_q=*/false); }
TEST_F(CudaAttentionTc, MatchesSimtKernel) { Check(/*against_simt=*/true, /*zero_q=*/false); }
// Uniform attention (q = 0): out_i is the mean of v_0 .. v_i, lse_i = log(i + 1), P exact in bf16.
TEST_F(CudaAttentionTc, UniformAttentionMatchesCpuTwinTightly) {
  Check(/*against_simt=*/false, /*zero_q=*/true);
}

TEST(CudaAttentionTcContract, SupportsHeadSizes64And128Only) {
  EXPECT_TRUE(AttentionForwardTensorCoreSupported(768, 12));  // GPT-2 124M: hs 64
  EXPECT_TRUE(AttentionForwardTensorCoreSupported(64, 1));
  EXPECT_TRUE(AttentionForwardTensorCoreSupported(1536, 12));  // hs 128
  EXPECT_TRUE(AttentionForwardTensorCoreSupported(640, 5));
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(768, 24));  // hs 32
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(96, 1));    // hs 96
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(256, 1));   // hs 256
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(48, 3));    // hs 16
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(100, 3));   // C not divisible by NH
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(768, 0));
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(0, 12));
  EXPECT_FALSE(AttentionForwardTensorCoreSupported(-768, -12));
}

// Unsupported shapes and misaligned pointers are refused before anything touches the device, so
// this runs without one.
TEST(CudaAttentionTcContract, RefusesUnsupportedCalls) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const OpContext ctx;
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, nullptr, 1, 1, 768, 24), "head sizes 64 and 128");
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, nullptr, 1, 1, 100, 3), "head sizes 64 and 128");
  const bf16* misaligned = reinterpret_cast<const bf16*>(uintptr_t{2});
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, misaligned, 1, 1, 768, 12), "16-byte aligned");
}

}  // namespace
}  // namespace fjord
