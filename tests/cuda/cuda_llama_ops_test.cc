// The Llama family's CUDA ops against their CPU twins, for both storage types: rmsnorm (forward,
// backward), rope (forward, backward), swiglu (forward, backward), the encoder without learned
// positions. Grouped-query attention (SIMT and tensor-core) against the multi-head kernels run on
// the same input with K and V repeated per query head (Hugging Face's repeat_kv done on the host):
// the forward pass and dq must agree bitwise (the same arithmetic per head), dk and dv with the sum
// over the group's heads. cuda_attention_test.cc compares the SIMT kernels with the CPU twin on
// grouped-query shapes too. Skips without a device (the tensor-core part below sm_80).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/cuda/attention_tc.cuh"
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

class CudaLlamaOps : public CudaOpTest {
 protected:
  template <typename floatX>
  void CheckRmsNorm() {
    for (const auto& [N, C] : {std::pair<size_t, int>{37, 40}, {300, 2048}, {5, 7}}) {
      SCOPED_TRACE(::testing::Message() << "N=" << N << " C=" << C);
      const std::vector<floatX> x = Random<floatX>(N * C, 1, -2.0f, 2.0f),
                                w = Random<floatX>(C, 2, 0.5f, 1.5f);
      const std::vector<floatX> dout = Random<floatX>(N * C, 3), prior = Random<floatX>(N * C, 4);
      const std::vector<float> dw_prior = testing::RandomFloats(C, 5);
      std::vector<floatX> out(N * C, Poison<floatX>()), dx = prior;
      std::vector<float> rstd(N, kPoison), dw = dw_prior;
      cpu::rmsnorm_forward(cpu_ctx_, out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
      cpu::rmsnorm_backward(cpu_ctx_, dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                            C);
      DeviceBuffer<floatX> d_x(x), d_w(w), d_out(std::vector<floatX>(N * C, Poison<floatX>())), d_dout(dout),
          d_dx(prior);
      DeviceBuffer<float> d_rstd(std::vector<float>(N, kPoison)), d_dw(dw_prior);
      cuda::rmsnorm_forward(ctx_, d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, C, 1e-5f);
      cuda::rmsnorm_backward(ctx_, d_dx.get(), d_dw.get(), d_dout.get(), d_x.get(), d_w.get(), d_rstd.get(),
                             N, C);
      Sync();
      // fp32 sums of C squares in another order (the CPU sums in double): a few ulps.
      ExpectRoundedClose("rmsnorm out", d_out.Download(), out, 1e-6, 1e-5);
      ExpectClose("rmsnorm rstd", d_rstd.Download(), rstd, 0, 1e-5);
      ExpectRoundedClose("rmsnorm dinp", d_dx.Download(), dx, 1e-5, 1e-4);
      // dweight sums N rows of O(1) products in fp32 (the CPU in double).
      ExpectClose("rmsnorm dweight", d_dw.Download(), dw, 1e-5 * N, 1e-4);
    }
  }

  template <typename floatX>
  void CheckRope() {
    const int B = 2, T = 45, NH = 8, NKV = 2, hs = 64;
    const size_t n = size_t{1} * B * T * (NH + 2 * NKV) * hs;
    std::vector<float> freqs(size_t{1} * T * hs);
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < hs / 2; ++i) {
        const double angle = t * std::pow(500000.0, -2.0 * i / hs);
        freqs[t * hs + 2 * i] = static_cast<float>(std::cos(angle));
        freqs[t * hs + 2 * i + 1] = static_cast<float>(std::sin(angle));
      }
    const std::vector<floatX> x = Random<floatX>(n, 6), dout = Random<floatX>(n, 7),
                              prior = Random<floatX>(n, 8);
    std::vector<floatX> out(n, Poison<floatX>()), dx = prior;
    cpu::rope_forward(cpu_ctx_, out.data(), x.data(), freqs.data(), B, T, NH, NKV, hs);
    cpu::rope_backward(cpu_ctx_, dx.data(), dout.data(), freqs.data(), B, T, NH, NKV, hs);
    DeviceBuffer<floatX> d_x(x), d_out(std::vector<floatX>(n, Poison<floatX>())), d_dout(dout), d_dx(prior);
    DeviceBuffer<float> d_freqs(freqs);
    cuda::rope_forward(ctx_, d_out.get(), d_x.get(), d_freqs.get(), B, T, NH, NKV, hs);
    cuda::rope_backward(ctx_, d_dx.get(), d_dout.get(), d_freqs.get(), B, T, NH, NKV, hs);
    Sync();
    // The same two-term fp32 expression; only FMA contraction may differ.
    ExpectRoundedClose("rope out", d_out.Download(), out, 1e-7, 1e-6);
    ExpectRoundedClose("rope dinp", d_dx.Download(), dx, 1e-7, 1e-6);
  }

  template <typename floatX>
  void CheckSwiglu() {
    const size_t N = 300;
    const int H = 688;
    const std::vector<floatX> inp = Random<floatX>(N * 2 * H, 9, -6.0f, 6.0f),
                              dout = Random<floatX>(N * H, 10);
    const std::vector<floatX> prior = Random<floatX>(N * 2 * H, 11);
    std::vector<floatX> out(N * H, Poison<floatX>()), dinp = prior;
    cpu::swiglu_forward(cpu_ctx_, out.data(), inp.data(), N, H);
    cpu::swiglu_backward(cpu_ctx_, dinp.data(), inp.data(), dout.data(), N, H);
    DeviceBuffer<floatX> d_inp(inp), d_out(std::vector<floatX>(N * H, Poison<floatX>())), d_dout(dout),
        d_dinp(prior);
    cuda::swiglu_forward(ctx_, d_out.get(), d_inp.get(), N, H);
    cuda::swiglu_backward(ctx_, d_dinp.get(), d_inp.get(), d_dout.get(), N, H);
    Sync();
    // expf against the CPU's Exp (~2 ulp) inside the sigmoid.
    ExpectRoundedClose("swiglu out", d_out.Download(), out, 1e-6, 1e-5);
    ExpectRoundedClose("swiglu dinp", d_dinp.Download(), dinp, 1e-6, 1e-5);
  }

  template <typename floatX>
  void CheckEncoderWithoutPositions() {
    const int B = 3, T = 17, C = 96, V = 50;
    const std::vector<int32_t> tokens = testing::RandomInts(B * T, 12, V);
    const std::vector<floatX> wte = Random<floatX>(size_t{1} * V * C, 13);
    std::vector<floatX> out(size_t{1} * B * T * C, Poison<floatX>());
    cpu::encoder_forward<floatX>(cpu_ctx_, out.data(), tokens.data(), wte.data(), nullptr, B, T, C);
    DeviceBuffer<int32_t> d_tokens(tokens);
    DeviceBuffer<floatX> d_wte(wte), d_out(std::vector<floatX>(out.size(), Poison<floatX>()));
    cuda::encoder_forward<floatX>(ctx_, d_out.get(), d_tokens.get(), d_wte.get(), nullptr, B, T, C);
    Sync();
    testing::ExpectSameBits("encoder out without wpe", d_out.Download(), out);
  }
};

TEST_F(CudaLlamaOps, RmsNormMatchesCpu) { CheckRmsNorm<float>(); }
TEST_F(CudaLlamaOps, Bf16RmsNormMatchesCpu) { CheckRmsNorm<bf16>(); }
TEST_F(CudaLlamaOps, RopeMatchesCpu) { CheckRope<float>(); }
TEST_F(CudaLlamaOps, Bf16RopeMatchesCpu) { CheckRope<bf16>(); }
TEST_F(CudaLlamaOps, SwigluMatchesCpu) { CheckSwiglu<float>(); }
TEST_F(CudaLlamaOps, Bf16SwigluMatchesCpu) { CheckSwiglu<bf16>(); }
TEST_F(CudaLlamaOps, EncoderWithoutPositionsMatchesCpu) { CheckEncoderWithoutPositions<float>(); }
TEST_F(CudaLlamaOps, Bf16EncoderWithoutPositionsMatchesCpu) { CheckEncoderWithoutPositions<bf16>(); }

// Grouped-query attention against multi-head attention on K and V repeated per query head.
class CudaGroupedQueryAttention : public CudaOpTest {
 protected:
  // qkv of (B, T, NH query heads, NKV kv heads, hs) expanded to NH key/value heads.
  static std::vector<bf16> RepeatKv(const std::vector<bf16>& qkv, int BT, int NH, int NKV, int hs) {
    const size_t W = size_t{1} * (NH + 2 * NKV) * hs, W3 = size_t{3} * NH * hs;
    std::vector<bf16> out(BT * W3);
    for (int r = 0; r < BT; ++r) {
      for (int c = 0; c < NH * hs; ++c) out[r * W3 + c] = qkv[r * W + c];
      for (int h = 0; h < NH; ++h)
        for (int part = 1; part <= 2; ++part)
          for (int d = 0; d < hs; ++d)
            out[r * W3 + part * NH * hs + h * hs + d] =
                qkv[r * W + (NH + (part - 1) * NKV + h / (NH / NKV)) * hs + d];
    }
    return out;
  }

  void Check(bool tensor_core) {
    const int B = 2, T = 130, NH = 8, NKV = 2, hs = 64, C = NH * hs, BT = B * T;
    const testing::AttentionShape s{B, T, C, NH, NKV};
    const std::vector<bf16> qkv = testing::AttentionQkv<bf16>(s, 21);
    const std::vector<bf16> mha = RepeatKv(qkv, BT, NH, NKV, hs);
    const std::vector<bf16> dout = Random<bf16>(size_t{1} * BT * C, 22);
    OpContext ctx = ctx_;
    ctx.tensor_core_attention = tensor_core;
    // Forward both ways.
    DeviceBuffer<bf16> d_qkv(qkv), d_mha(mha), d_out(size_t{1} * BT * C), d_out_mha(size_t{1} * BT * C);
    DeviceBuffer<float> d_lse(size_t{1} * BT * NH), d_lse_mha(size_t{1} * BT * NH);
    cuda::attention_forward(ctx, d_out.get(), d_lse.get(), d_qkv.get(), B, T, C, NH, NKV);
    cuda::attention_forward(ctx, d_out_mha.get(), d_lse_mha.get(), d_mha.get(), B, T, C, NH, NH);
    Sync();
    const std::vector<bf16> out = d_out.Download();
    ASSERT_GT(testing::Norm(AsFloats(out)), 0.0);
    testing::ExpectSameBits("grouped-query out", out, d_out_mha.Download());
    testing::ExpectSameBits("grouped-query lse", d_lse.Download(), d_lse_mha.Download());
    // Backward from zero gradients: dq bitwise, dk and dv as the sums over each group's heads
    // (the grouped kernel sums the heads in fp32 and rounds once; the test sums the multi-head
    // kernel's rounded per-head values in double: one bf16 rounding per head apart).
    DeviceBuffer<bf16> d_dout(dout), d_dqkv(std::vector<bf16>(qkv.size(), FromFloat<bf16>(0.0f))),
        d_dmha(std::vector<bf16>(mha.size(), FromFloat<bf16>(0.0f)));
    cuda::attention_backward(ctx, d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), B, T, C,
                             NH, NKV);
    cuda::attention_backward(ctx, d_dmha.get(), d_dout.get(), d_mha.get(), d_out.get(), d_lse.get(), B, T, C,
                             NH, NH);
    Sync();
    const std::vector<double> got = testing::ToDouble(d_dqkv.Download()),
                              ref = testing::ToDouble(d_dmha.Download());
    const size_t W = size_t{1} * (NH + 2 * NKV) * hs, W3 = size_t{3} * C;
    std::vector<double> g, r, tol;
    for (int row = 0; row < BT; ++row) {
      for (int c = 0; c < C; ++c) {  // dq
        g.push_back(got[row * W + c]);
        r.push_back(ref[row * W3 + c]);
        tol.push_back(0.0);
      }
      for (int part = 1; part <= 2; ++part)
        for (int kv = 0; kv < NKV; ++kv)
          for (int d = 0; d < hs; ++d) {
            double sum = 0.0, mag = 0.0;
            for (int h = kv * (NH / NKV); h < (kv + 1) * (NH / NKV); ++h) {
              const double x = ref[row * W3 + part * C + h * hs + d];
              sum += x;
              mag += std::fabs(x);
            }
            g.push_back(got[row * W + (NH + (part - 1) * NKV + kv) * hs + d]);
            r.push_back(sum);
            tol.push_back(mag * std::ldexp(1.0, -8) * 2 + 1e-30);
          }
    }
    testing::ExpectWithin("grouped-query dqkv", g, r, tol);
  }
};

TEST_F(CudaGroupedQueryAttention, SimtEqualsMultiHeadOnRepeatedKv) { Check(false); }

TEST_F(CudaGroupedQueryAttention, TensorCoreEqualsMultiHeadOnRepeatedKv) {
  int device = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  if (major < 8) GTEST_SKIP() << "tensor-core attention needs sm_80+";
  Check(true);
}

}  // namespace
}  // namespace fjord
