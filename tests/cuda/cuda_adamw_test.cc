// CUDA AdamW against its CPU twin over three steps.
#include <gtest/gtest.h>

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
                       wd, grad_scale, t);
    Sync();
    const std::vector<float> before = params;
    cpu::adamw_update(cpu_ctx_, params.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd,
                      grad_scale, t);
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

}  // namespace
}  // namespace fjord
