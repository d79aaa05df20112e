// An independent GPT-2 forward pass in double precision, written as directly from the GPT-2
// definition as possible (naive loops, no shared code with kernels/ or runtime/ except the
// parameter offsets). Tests use it as the oracle for the model's loss and, through central
// finite differences, for its gradients. With a `store` function it also emulates a storage
// precision: `store` is applied to the parameters and to every activation the model keeps in
// memory, at the points where it keeps them (model.dtype BF16: round to the nearest bf16), while
// the arithmetic between those points stays in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "runtime/model/gpt.h"

namespace fjord::testing {

// Mean cross-entropy of the model with parameters `p` (layout of `layout`) on tokens/targets.
inline double ReferenceGptLoss(const GptConfig& c, const ParamLayout& layout,
                               const std::vector<double>& params, const std::vector<int32_t>& tokens,
                               const std::vector<int32_t>& targets, int B, int T,
                               const std::function<double(double)>& store = nullptr) {
  const int C = c.n_embd, NH = c.n_head, hs = C / NH;
  auto kept = [&](std::vector<double> v) {
    if (store)
      for (double& x : v) x = store(x);
    return v;
  };
  const std::vector<double> p = kept(params);
  auto layernorm = [&](const std::vector<double>& x, size_t w, size_t b) {
    std::vector<double> y(x.size());
    for (int r = 0; r < B * T; ++r) {
      double mean = 0, var = 0;
      for (int i = 0; i < C; ++i) mean += x[r * C + i];
      mean /= C;
      for (int i = 0; i < C; ++i) var += (x[r * C + i] - mean) * (x[r * C + i] - mean);
      var /= C;
      for (int i = 0; i < C; ++i)
        y[r * C + i] = (x[r * C + i] - mean) / std::sqrt(var + 1e-5) * p[w + i] + p[b + i];
    }
    return kept(std::move(y));
  };
  // y[r, o] = sum_i x[r, i] * W[o, i] + bias[o]
  auto linear = [&](const std::vector<double>& x, int in, size_t w, size_t b, int out, bool has_bias) {
    std::vector<double> y(static_cast<size_t>(B) * T * out);
    for (int r = 0; r < B * T; ++r)
      for (int o = 0; o < out; ++o) {
        double s = has_bias ? p[b + o] : 0.0;
        for (int i = 0; i < in; ++i)
          s += x[static_cast<size_t>(r) * in + i] * p[w + static_cast<size_t>(o) * in + i];
        y[static_cast<size_t>(r) * out + o] = s;
      }
    return kept(std::move(y));
  };
  std::vector<double> x(static_cast<size_t>(B) * T * C);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int i = 0; i < C; ++i)
        x[(b * T + t) * C + i] = p[layout.wte() + tokens[b * T + t] * C + i] + p[layout.wpe() + t * C + i];
  x = kept(std::move(x));
  for (int l = 0; l < c.n_layer; ++l) {
    const ParamLayout::Layer& w = layout.layer(l);
    std::vector<double> qkv = linear(layernorm(x, w.ln1_w, w.ln1_b), C, w.qkv_w, w.qkv_b, 3 * C, true);
    std::vector<double> y(x.size(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < NH; ++h)
        for (int t = 0; t < T; ++t) {
          std::vector<double> score(t + 1);
          double mx = -1e300, sum = 0;
          for (int u = 0; u <= t; ++u) {
            double s = 0;
            for (int i = 0; i < hs; ++i)
              s += qkv[(b * T + t) * 3 * C + h * hs + i] * qkv[(b * T + u) * 3 * C + C + h * hs + i];
            score[u] = s / std::sqrt(static_cast<double>(hs));
            mx = std::max(mx, score[u]);
          }
          for (int u = 0; u <= t; ++u) sum += std::exp(score[u] - mx);
          for (int u = 0; u <= t; ++u) {
            const double a = std::exp(score[u] - mx) / sum;
            for (int i = 0; i < hs; ++i)
              y[(b * T + t) * C + h * hs + i] += a * qkv[(b * T + u) * 3 * C + 2 * C + h * hs + i];
          }
        }
    y = kept(std::move(y));
    std::vector<double> att = linear(y, C, w.attproj_w, w.attproj_b, C, true);
    for (size_t i = 0; i < x.size(); ++i) x[i] += att[i];
    x = kept(std::move(x));
    std::vector<double> h = linear(layernorm(x, w.ln2_w, w.ln2_b), C, w.fc_w, w.fc_b, 4 * C, true);
    for (double& v : h) v = 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
    h = kept(std::move(h));
    std::vector<double> mlp = linear(h, 4 * C, w.fcproj_w, w.fcproj_b, C, true);
    for (size_t i = 0; i < x.size(); ++i) x[i] += mlp[i];
    x = kept(std::move(x));
  }
  std::vector<double> logits =
      linear(layernorm(x, layout.lnf_w(), layout.lnf_b()), C, layout.wte(), 0, c.vocab_size, false);
  double loss = 0;
  for (int r = 0; r < B * T; ++r) {
    double mx = -1e300, sum = 0;
    for (int v = 0; v < c.vocab_size; ++v)
      mx = std::max(mx, logits[static_cast<size_t>(r) * c.vocab_size + v]);
    for (int v = 0; v < c.vocab_size; ++v)
      sum += std::exp(logits[static_cast<size_t>(r) * c.vocab_size + v] - mx);
    loss += -(logits[static_cast<size_t>(r) * c.vocab_size + targets[r]] - mx - std::log(sum));
  }
  return loss / (B * T);
}

}  // namespace fjord::testing
