// The experimental tensor-core attention (kernels/cuda/attention_tc.cu), forward and backward,
// against the CPU twin and against the SIMT CUDA kernels they may replace, bf16 only; the shape
// predicate and the refusals without a device.
//
// Forward tolerance. The kernel follows the contract of kernels/ops.h except that it rounds each
// probability p_j to bf16 (to nearest: relative error <= 2^-8, bf16 having 8 significant bits)
// before the P V product, while the normaliser l sums the fp32 p_j. Against an fp32 computation of
// the same softmax, an out element o = sum_j p_j v_j / l then differs by
//   (a) |sum_j (p~_j - p_j) v_j| / l <= 2^-8 sum_j (p_j / l) |v_j| <= 2^-8 max |v|,
//   (b) the fp32 summation-order differences the SIMT test bounds by 1e-5 absolute and 1e-5
//       relative (scores, exp, online-softmax rescaling, sums of up to T terms), and
//   (c) one rounding to bf16 on each side: ExpectRoundedClose adds one bf16 spacing of the
//       reference.
// So out is checked with atol = 2^-8 max|v| + 1e-5, rtol = 1e-5, plus one spacing. lse involves no
// bf16 rounding (fp32 scores, fp32 p, fp32 l), so it gets the SIMT test's 1e-5 + 1e-5 |lse|. The
// SIMT kernel's fp32 result is itself within (b) of the CPU's, so the same bounds hold against it.
// Where q = 0 every p is exactly 1 (a bf16 value), (a) vanishes and out must agree to (b) + (c):
// that test pins the causal mask and the P V indexing much tighter than the 2^-8 bound can.
//
// Backward tolerance, per element of dqkv. Each dq, dk, dv element is prior + an fp32 sum of
// terms: dv_j = sum_{i>=j} p_ij dout_i, dk_j = scale sum_{i>=j} ds_ij q_i,
// dq_i = scale sum_{j<=i} ds_ij k_j with ds_ij = p_ij (dP_ij - D_i). Call M the sum of the terms'
// magnitudes (for dv: sum_i p_ij |dout_i|; for dk: scale sum_i |ds_ij| |q_i|; for dq:
// scale sum_j |ds_ij| |k_j|, per channel) and N the same sums with p in place of |ds| (dk, dq; 0
// for dv). The kernel differs from the fp32 algorithm by
//   (a) p (for dv) and ds (for dk, dq) rounded to bf16 before their MMA: at most 2^-8 M;
//   (b) fp32 differences in the terms and their sums, on either side: the scores and so p carry a
//       relative error of ~1e-6 (hs-long dot products of O(1) values), dP and D an absolute one
//       of ~1e-6, and a sum of up to 1024 terms ~1e-7 T relative in the worst realistic case;
//       bounded here by 1e-4 M + 1e-5 N (the N term covers ds = p (dP - D) when dP - D cancels);
//   (c) one bf16 rounding of prior + sum on each side: one bf16 spacing of the reference.
// So tol = (2^-8 + 1e-4) M + 1e-5 N + Bf16Spacing(ref). A wrong index (a swapped channel, key or
// query, a misplaced fragment element, a tile read twice or skipped) replaces a sum of n terms of
// random sign, of size about M / sqrt(n), by an unrelated one: an error of the same size, more
// than 2^-8 M for every n < 2^16; a mask off by one adds or drops one term, more than 2^-8 M for
// the early rows and keys (few terms), which every shape has. The prior is drawn from
// [-1/4, 1/4] so that its bf16 spacing (c) stays well below the gradients.
// The exact-arithmetic case (BackwardExactCase) makes every p exactly 1 and every ds a small
// integer, so (a) and (b) vanish except for the CPU's rounding of ds times the scale at hs = 128.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using cuda::experimental::attention_backward_tc;
using cuda::experimental::attention_forward_tc;
using cuda::experimental::AttentionForwardTensorCoreSupported;
using testing::AttentionShape;
using testing::Bf16Spacing;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::ExpectRoundedClose;
using testing::kPoison;
using testing::kPoisonBf16;
using testing::Random;

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

// The magnitudes of the backward tolerance (header comment) for every element of dqkv, laid out
// like dqkv: M, the sum of |terms| of the element's fp32 sum, and N, the same with p for |ds|
// (dq and dk; 0 for dv). Computed in double from the inputs both sides read.
struct BackwardMagnitudes {
  std::vector<double> M, N;
};

BackwardMagnitudes Magnitudes(const AttentionShape& s, const std::vector<bf16>& qkv,
                              const std::vector<bf16>& dout, const std::vector<bf16>& out,
                              const std::vector<float>& lse) {
  const int hs = s.C / s.NH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(hs)));
  const size_t C3 = size_t{3} * s.C;
  const std::vector<double> x = testing::ToDouble(qkv), dy = testing::ToDouble(dout),
                            y = testing::ToDouble(out);
  BackwardMagnitudes m{std::vector<double>(qkv.size(), 0.0), std::vector<double>(qkv.size(), 0.0)};
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h) {
      const size_t head = size_t{1} * b * s.T * C3 + size_t{1} * h * hs;   // q of row 0 in qkv and dqkv
      const size_t rows = size_t{1} * b * s.T * s.C + size_t{1} * h * hs;  // row 0 in out and dout
      for (int i = 0; i < s.T; ++i) {
        const double* q = &x[head + i * C3];
        const double* dy_i = &dy[rows + size_t{1} * i * s.C];
        double D = 0.0;
        for (int d = 0; d < hs; ++d) D += dy_i[d] * y[rows + size_t{1} * i * s.C + d];
        const double row_lse = lse[(size_t{1} * b * s.NH + h) * s.T + i];
        for (int j = 0; j <= i; ++j) {
          const double* k = &x[head + j * C3 + s.C];
          const double* v = &x[head + j * C3 + 2 * s.C];
          double score = 0.0, dp = 0.0;
          for (int d = 0; d < hs; ++d) {
            score += q[d] * k[d];
            dp += dy_i[d] * v[d];
          }
          const double p = std::exp(score * scale - row_lse);
          const double ds = std::fabs(p * (dp - D)) * scale, ps = p * scale;
          double* m_q = &m.M[head + i * C3];
          double* n_q = &m.N[head + i * C3];
          double* m_k = &m.M[head + j * C3 + s.C];
          double* n_k = &m.N[head + j * C3 + s.C];
          double* m_v = &m.M[head + j * C3 + 2 * s.C];
          for (int d = 0; d < hs; ++d) {
            m_q[d] += ds * std::fabs(k[d]);
            n_q[d] += ps * std::fabs(k[d]);
            m_k[d] += ds * std::fabs(q[d]);
            n_k[d] += ps * std::fabs(q[d]);
            m_v[d] += p * std::fabs(dy_i[d]);
          }
        }
      }
    }
  return m;
}

// dqkv as doubles minus the prior, to show that a backward pass added something.
double DeltaNorm(const std::vector<bf16>& dqkv, const std::vector<bf16>& prior) {
  const std::vector<double> a = testing::ToDouble(dqkv), b = testing::ToDouble(prior);
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += (a[i] - b[i]) * (a[i] - b[i]);
  return std::sqrt(sum);
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
      cuda::attention_forward(ctx_, d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH, s.NH);
    else
      attention_forward_tc(ctx_, d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.C, s.NH, s.NH);
    Sync();
    *out = d_out.Download();
    *lse = d_lse.Download();
  }

  // The inputs of a backward test: qkv, dout, the prior dqkv, and out and lse (the CPU twin's
  // forward results unless the test sets them), uploaded once.
  struct BackwardInputs {
    std::vector<bf16> qkv, dout, out, prior;
    std::vector<float> lse;
  };

  // Runs attention_backward_tc, or the SIMT kernel when simt, on a copy of the prior.
  std::vector<bf16> RunBackward(const AttentionShape& s, const BackwardInputs& in, bool simt) {
    DeviceBuffer<bf16> d_qkv(in.qkv), d_dout(in.dout), d_out(in.out), d_dqkv(in.prior);
    DeviceBuffer<float> d_lse(in.lse);
    if (simt)
      cuda::attention_backward(ctx_, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), s.B,
                               s.T, s.C, s.NH, s.NH);
    else
      attention_backward_tc(ctx_, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), s.B, s.T,
                            s.C, s.NH, s.NH);
    Sync();
    return d_dqkv.Download();
  }

  static BackwardInputs RandomBackwardInputs(const AttentionShape& s, const OpContext& cpu_ctx) {
    const size_t BT = size_t{1} * s.B * s.T;
    BackwardInputs in;
    in.qkv = testing::AttentionQkv<bf16>(s, 11);
    in.dout = Random<bf16>(BT * s.C, 12);
    in.prior = Random<bf16>(BT * 3 * s.C, 13, -0.25f, 0.25f);
    in.out.assign(BT * s.C, kPoisonBf16);
    in.lse.assign(BT * s.NH, kPoison);
    cpu::attention_forward(cpu_ctx, in.out.data(), in.lse.data(), in.qkv.data(), s.B, s.T, s.C, s.NH, s.NH);
    return in;
  }

  // attention_backward_tc against the CPU twin or the SIMT kernel on every shape, with the
  // per-element tolerance of the header comment.
  void CheckBackward(bool against_simt) {
    for (const AttentionShape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH);
      const BackwardInputs in = RandomBackwardInputs(s, cpu_ctx_);
      const std::vector<bf16> got = RunBackward(s, in, false);
      std::vector<bf16> ref = in.prior;
      if (against_simt)
        ref = RunBackward(s, in, true);
      else
        cpu::attention_backward(cpu_ctx_, ref.data(), in.dout.data(), in.qkv.data(), in.out.data(),
                                in.lse.data(), s.B, s.T, s.C, s.NH, s.NH);
      ASSERT_GT(DeltaNorm(got, in.prior), 0.0);
      const BackwardMagnitudes m = Magnitudes(s, in.qkv, in.dout, in.out, in.lse);
      std::vector<double> tol(ref.size());
      for (size_t e = 0; e < ref.size(); ++e)
        tol[e] = (std::ldexp(1.0, -8) + 1e-4) * m.M[e] + 1e-5 * m.N[e] + Bf16Spacing(ref[e]);
      testing::ExpectWithin("attention_backward_tc dqkv", testing::ToDouble(got), testing::ToDouble(ref),
                            tol);
    }
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
        cpu::attention_forward(cpu_ctx_, ref.data(), ref_lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.NH);
      const double p_rounding = zero_q ? 0.0 : std::ldexp(MaxAbsV(qkv, s), -8);
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

TEST_F(CudaAttentionTc, BackwardMatchesCpuTwinAndAccumulates) { CheckBackward(/*against_simt=*/false); }
TEST_F(CudaAttentionTc, BackwardMatchesSimtKernel) { CheckBackward(/*against_simt=*/true); }

// Exact arithmetic: q lives in the first half of the channels and k in the second, so every score
// is exactly 0; lse = 0 (the backward takes lse as given), so every unmasked p = Exp(0) = 1, a bf16
// value; q, k, v, dout, out and the prior are integers in [-1, 1] ([-4, 4] for the prior), so dP and
// D are integers of size <= hs, ds = dP - D an integer of size <= 2 hs <= 256 (a bf16 value), and
// every sum an integer below 2^24 (times the scale): the kernel's sums are exact and error (a) is
// zero. The CPU twin multiplies each ds by the scale before summing; at hs = 128 (scale
// 1/sqrt(128), not a power of two) its sum of up to T = 1024 rounded terms errs by at most
// T 2^-24 M = 2^-14 M, so tol = 2^-12 M + one spacing. Pins the mask and every index far tighter
// than the random cases.
TEST_F(CudaAttentionTc, BackwardExactCase) {
  for (const AttentionShape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH);
    const int hs = s.C / s.NH;
    const size_t BT = size_t{1} * s.B * s.T;
    const std::vector<int32_t> units = testing::RandomInts(BT * 5 * s.C, 21, 3);   // -1, 0, 1 after the shift
    const std::vector<int32_t> priors = testing::RandomInts(BT * 3 * s.C, 22, 9);  // -4 .. 4 after the shift
    size_t next = 0;
    const auto unit = [&] { return FromFloat<bf16>(static_cast<float>(units[next++] - 1)); };
    BackwardInputs in;
    in.qkv.resize(BT * 3 * s.C);
    for (size_t row = 0; row < BT; ++row)
      for (int c = 0; c < 3 * s.C; ++c) {
        const int channel = c % hs;
        const bool q_zero = c < s.C && channel >= hs / 2,
                   k_zero = c >= s.C && c < 2 * s.C && channel < hs / 2;
        in.qkv[row * 3 * s.C + c] = q_zero || k_zero ? FromFloat<bf16>(0.0f) : unit();
      }
    in.dout.resize(BT * s.C);
    in.out.resize(BT * s.C);
    for (bf16& x : in.dout) x = unit();
    for (bf16& x : in.out) x = unit();
    in.prior.resize(BT * 3 * s.C);
    for (size_t e = 0; e < in.prior.size(); ++e)
      in.prior[e] = FromFloat<bf16>(static_cast<float>(priors[e] - 4));
    in.lse.assign(BT * s.NH, 0.0f);

    const std::vector<bf16> got = RunBackward(s, in, false);
    std::vector<bf16> ref = in.prior;
    cpu::attention_backward(cpu_ctx_, ref.data(), in.dout.data(), in.qkv.data(), in.out.data(), in.lse.data(),
                            s.B, s.T, s.C, s.NH, s.NH);
    ASSERT_GT(DeltaNorm(got, in.prior), 0.0);
    const BackwardMagnitudes m = Magnitudes(s, in.qkv, in.dout, in.out, in.lse);
    std::vector<double> tol(ref.size());
    for (size_t e = 0; e < ref.size(); ++e) tol[e] = std::ldexp(m.M[e], -12) + Bf16Spacing(ref[e]);
    testing::ExpectWithin("attention_backward_tc dqkv (exact case)", testing::ToDouble(got),
                          testing::ToDouble(ref), tol);
  }
}

// No atomics, one writer per element, a fixed summation order: repeated calls agree bitwise.
TEST_F(CudaAttentionTc, BackwardIsBitwiseReproducible) {
  const AttentionShape s{2, 200, 256, 2};
  const BackwardInputs in = RandomBackwardInputs(s, cpu_ctx_);
  const std::vector<bf16> first = RunBackward(s, in, false);
  for (int run = 0; run < 2; ++run) {
    const std::vector<bf16> again = RunBackward(s, in, false);
    ASSERT_EQ(again.size(), first.size());
    size_t differ = 0;
    for (size_t e = 0; e < first.size(); ++e) differ += again[e].bits != first[e].bits;
    EXPECT_EQ(differ, 0u) << "run " << run + 1;
  }
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
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, nullptr, 1, 1, 768, 24, 24),
               "head sizes 64 and 128");
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, nullptr, 1, 1, 100, 3, 3),
               "head sizes 64 and 128");
  const bf16* misaligned = reinterpret_cast<const bf16*>(uintptr_t{2});
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, misaligned, 1, 1, 768, 12, 12), "16-byte aligned");
  EXPECT_DEATH(attention_backward_tc(ctx, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 768, 24, 24),
               "head sizes 64 and 128");
  EXPECT_DEATH(attention_backward_tc(ctx, nullptr, nullptr, misaligned, nullptr, nullptr, 1, 1, 768, 12, 12),
               "16-byte aligned");
  bf16* misaligned_dqkv = reinterpret_cast<bf16*>(uintptr_t{2});
  EXPECT_DEATH(
      attention_backward_tc(ctx, misaligned_dqkv, nullptr, nullptr, nullptr, nullptr, 1, 1, 768, 12, 12),
      "dqkv 4-byte aligned");
  // Key/value heads must divide the query heads.
  EXPECT_DEATH(attention_forward_tc(ctx, nullptr, nullptr, nullptr, 1, 1, 768, 12, 5), "NKV dividing NH");
  EXPECT_DEATH(attention_backward_tc(ctx, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 768, 12, 5),
               "NKV dividing NH");
}

}  // namespace
}  // namespace fjord
