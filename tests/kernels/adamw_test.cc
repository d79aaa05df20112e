// AdamW over three steps against a closed-form double implementation that carries its own state,
// and the form that also writes the bf16 working copy against the plain update followed by the
// rounding the cast would do.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"
#include "tests/kernels/test_util.h"

namespace fjord {
namespace {

using testing::ExpectClose;

const OpContext kCtx;

TEST(AdamW, ThreeStepsMatchDoubleClosedForm) {
  constexpr size_t n = 1001;
  constexpr float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
  std::vector<float> params = testing::RandomFloats(n, 1), m(n, 0.0f), v(n, 0.0f);
  std::vector<double> p_ref = testing::ToDouble(params), m_ref(n, 0.0), v_ref(n, 0.0);
  for (int t = 1; t <= 3; ++t) {
    const std::vector<float> grads = testing::RandomFloats(n, 10 + t);
    const std::vector<float> before = params;
    cpu::adamw_update(kCtx, params.data(), grads.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd,
                      grad_scale, t, nullptr, 0, 0);
    for (size_t i = 0; i < n; ++i) {
      const double g = static_cast<double>(grads[i]) * grad_scale;
      m_ref[i] = beta1 * m_ref[i] + (1.0 - beta1) * g;
      v_ref[i] = beta2 * v_ref[i] + (1.0 - beta2) * g * g;
      const double m_hat = m_ref[i] / (1.0 - std::pow(static_cast<double>(beta1), t));
      const double v_hat = v_ref[i] / (1.0 - std::pow(static_cast<double>(beta2), t));
      p_ref[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * p_ref[i]);
    }
    std::vector<float> step(n);
    for (size_t i = 0; i < n; ++i) step[i] = params[i] - before[i];
    ASSERT_GT(testing::Norm(step), 0.0) << "step " << t;
    // Parameters are O(1) and move by ~lr per step; float rounding of the parameter (2^-24 per
    // step) and of the O(lr) update leave ~3e-7 after three steps. A wrong bias correction or
    // decay term moves them by >= lr * wd = 1e-3.
    ExpectClose("params step " + std::to_string(t), params, p_ref, 1e-6, 1e-6);
    // Moments are O(0.5) and O(0.25) with a few float roundings each.
    ExpectClose("m step " + std::to_string(t), m, m_ref, 1e-7, 1e-6);
    ExpectClose("v step " + std::to_string(t), v, v_ref, 1e-8, 1e-6);
  }
}

// With params_bf16 the update must leave params, m and v bit for bit as without it, and write
// exactly ToBf16(new param, seed, index0 + i): the cast_to_bf16 of the updated range at its offset
// in the buffer. One element past the range stays poisoned.
TEST(AdamW, Bf16OutputIsTheUpdateThenTheShiftedCast) {
  testing::ForEachAdamWBf16Case([](const testing::AdamWBf16Case& c) {
    std::vector<float> params_ref = c.params, m_ref = c.m, v_ref = c.v;
    c.Run(cpu::adamw_update, kCtx, params_ref.data(), c.grads.data(), m_ref.data(), v_ref.data(), nullptr);
    std::vector<bf16> expected(c.n + 1, testing::kPoisonBf16);
    for (size_t i = 0; i < c.n; ++i) expected[i].bits = ToBf16(params_ref[i], c.seed, c.index0 + i);

    std::vector<float> params = c.params, m = c.m, v = c.v;
    std::vector<bf16> out(c.n + 1, testing::kPoisonBf16);
    c.Run(cpu::adamw_update, kCtx, params.data(), c.grads.data(), m.data(), v.data(), out.data());
    testing::ExpectSameBits("params, " + c.where, params, params_ref);
    testing::ExpectSameBits("m, " + c.where, m, m_ref);
    testing::ExpectSameBits("v, " + c.where, v, v_ref);
    testing::ExpectSameBits("bf16, " + c.where, out, expected);
  });
}

}  // namespace
}  // namespace fjord
