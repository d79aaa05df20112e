// CUDA AdamW against its CPU twin over three steps, and its form that also writes the bf16
// working copy.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;

class CudaAdamW : public CudaOpTest {};

TEST_F(CudaAdamW, ThreeStepsMatchCpu) {
  constexpr size_t n = 1'000'003;
  constexpr float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
  std::vector<float> params = testing::RandomFloats(n, 1), m(n, 0.0f), v(n, 0.0f);
  DeviceBuffer<float> d_params(params), d_m(m), d_v(v), d_grads(n);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> grads = testing::RandomFloats(n, 10 + t);
    d_grads.Upload(grads);
    cuda::adamw_update(ctx_, d_params.get(), d_grads.get(), d_m.get(), d_v.get(), n, lr, beta1, beta2, eps,
                       wd, grad_scale, t, nullptr, 0, 0);
    Sync();
    const std::vector<float> before = params;
    cpu::adamw_update(cpu_ctx_, params.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd,
                      grad_scale, t, nullptr, 0, 0);
    const std::vector<float> got = d_params.Download();
    std::vector<float> step(n);
    for (size_t i = 0; i < n; ++i) step[i] = got[i] - before[i];
    ASSERT_GT(testing::Norm(step), 0.0) << "step " << t;
    // Same per-element formula (kernels/pointwise_math.h); nvcc fuses multiply-adds, so moments and
    // the O(lr) update differ in the last bits, and the parameter (O(1)) by about one ulp per step.
    const std::string s = " step " + std::to_string(t);
    ExpectClose("params" + s, got, params, 2e-7, 1e-6);
    // m = b1 m + (1 - b1) g can cancel terms of ~0.45, whose fused and unfused roundings differ by
    // up to ~3e-8 absolute.
    ExpectClose("m" + s, d_m.Download(), m, 1e-7, 1e-6);
    ExpectClose("v" + s, d_v.Download(), v, 1e-10, 1e-6);
  }
}

// The parameters themselves match the CPU only to about an ulp (FMA contraction, above), so the
// bf16 copy cannot be compared with the CPU's where they differ. What must hold exactly: the
// kernel with a bf16 output leaves params, m and v bit for bit as without it, and writes
// ToBf16(the GPU's own new param, seed, index0 + i), the hash the CPU and cast_to_bf16 use; where
// the two backends' params agree, so do their bf16 copies. One element past n stays poisoned.
TEST_F(CudaAdamW, Bf16OutputIsTheGpuUpdateThenTheShiftedCast) {
  testing::ForEachAdamWBf16Case([&](const testing::AdamWBf16Case& c) {
    DeviceBuffer<float> d_grads(c.grads), d_params_ref(c.params), d_m_ref(c.m), d_v_ref(c.v);
    c.Run(cuda::adamw_update, ctx_, d_params_ref.get(), d_grads.get(), d_m_ref.get(), d_v_ref.get(), nullptr);
    DeviceBuffer<float> d_params(c.params), d_m(c.m), d_v(c.v);
    DeviceBuffer<bf16> d_out(std::vector<bf16>(c.n + 1, testing::kPoisonBf16));
    c.Run(cuda::adamw_update, ctx_, d_params.get(), d_grads.get(), d_m.get(), d_v.get(), d_out.get());
    Sync();
    const std::vector<float> got = d_params.Download();
    testing::ExpectSameBits("params, " + c.where, got, d_params_ref.Download());
    testing::ExpectSameBits("m, " + c.where, d_m.Download(), d_m_ref.Download());
    testing::ExpectSameBits("v, " + c.where, d_v.Download(), d_v_ref.Download());
    std::vector<bf16> expected(c.n + 1, testing::kPoisonBf16);
    for (size_t i = 0; i < c.n; ++i) expected[i].bits = ToBf16(got[i], c.seed, c.index0 + i);
    const std::vector<bf16> out = d_out.Download();
    testing::ExpectSameBits("bf16, " + c.where, out, expected);

    std::vector<float> params = c.params, m = c.m, v = c.v;
    std::vector<bf16> cpu_out(c.n);
    c.Run(cpu::adamw_update, cpu_ctx_, params.data(), c.grads.data(), m.data(), v.data(), cpu_out.data());
    ExpectClose("params vs CPU, " + c.where, got, params, 2e-7, 1e-6);
    for (size_t i = 0; i < c.n; ++i) {
      if (std::memcmp(&got[i], &params[i], sizeof(float)) == 0) {
        ASSERT_EQ(out[i].bits, cpu_out[i].bits) << c.where << ", i " << i;
      }
    }
  });
}

}  // namespace
}  // namespace fjord
