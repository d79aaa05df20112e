// An independent Llama forward pass in double precision, written from Hugging Face's
// modeling_llama.py (LlamaRMSNorm, rotate_half / apply_rotary_pos_emb, repeat_kv, LlamaMLP,
// _compute_llama3_parameters) with naive loops. It shares nothing with kernels/ or runtime/ but
// the tensor names: every tensor is found by its Hugging Face name in the layout, so an offset or
// a q/k/v packing error in the model shows up as a wrong loss. With a `store` function it emulates
// a storage precision like gpt_reference.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "runtime/model/gpt.h"

namespace fjord::testing {

// inv_freq of the rotary embedding in double, as transformers computes it (default and llama3).
inline std::vector<double> ReferenceRopeInvFreq(const GptConfig& c) {
  const int dim = c.n_embd / c.n_head;
  std::vector<double> inv(dim / 2);
  for (int i = 0; i < dim / 2; ++i) inv[i] = 1.0 / std::pow(c.rope_theta, (2.0 * i) / dim);
  if (!c.rope_llama3) return inv;
  const double low_freq_wavelen = c.rope_original_max_position / c.rope_low_freq_factor;
  const double high_freq_wavelen = c.rope_original_max_position / c.rope_high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2 * std::numbers::pi / f;
    if (wavelen < high_freq_wavelen) continue;  // high frequencies: unchanged
    if (wavelen > low_freq_wavelen) {           // low frequencies: divided by factor
      f /= c.rope_factor;
      continue;
    }
    const double smooth = (c.rope_original_max_position / wavelen - c.rope_low_freq_factor) /
                          (c.rope_high_freq_factor - c.rope_low_freq_factor);
    f = (1 - smooth) * f / c.rope_factor + smooth * f;
  }
  return inv;
}

// Mean cross-entropy of the Llama model with parameters `params` (laid out by `layout`).
inline double ReferenceLlamaLoss(const GptConfig& c, const ParamLayout& layout,
                                 const std::vector<double>& params, const std::vector<int32_t>& tokens,
                                 const std::vector<int32_t>& targets, int B, int T,
                                 const std::function<double(double)>& store = nullptr) {
  const int C = c.n_embd, NH = c.n_head, NKV = c.n_kv_head, hs = C / NH, I = c.intermediate_size;
  const int BT = B * T;
  auto kept = [&](std::vector<double> v) {
    if (store)
      for (double& x : v) x = store(x);
    return v;
  };
  const std::vector<double> p = kept(params);
  auto at = [&](const std::string& name) -> size_t {
    for (const ParamTensor& t : layout.tensors())
      if (t.name == name) return t.offset;
    throw std::runtime_error("no tensor " + name);
  };
  auto rmsnorm = [&](const std::vector<double>& x, size_t w) {
    std::vector<double> y(x.size());
    for (int r = 0; r < BT; ++r) {
      double ms = 0;
      for (int i = 0; i < C; ++i) ms += x[r * C + i] * x[r * C + i];
      const double inv = 1.0 / std::sqrt(ms / C + static_cast<double>(c.rms_norm_eps));
      for (int i = 0; i < C; ++i) y[r * C + i] = p[w + i] * (x[r * C + i] * inv);
    }
    return kept(std::move(y));
  };
  // y[r, o] = sum_i x[r, i] W[o, i] (+ bias[o]); nn.Linear's [out, in] weight.
  auto linear = [&](const std::vector<double>& x, int in, const std::string& w, int out,
                    const std::string& b) {
    const size_t wo = at(w);
    const size_t bo = b.empty() ? 0 : at(b);
    std::vector<double> y(static_cast<size_t>(BT) * out);
    for (int r = 0; r < BT; ++r)
      for (int o = 0; o < out; ++o) {
        double s = b.empty() ? 0.0 : p[bo + o];
        for (int i = 0; i < in; ++i)
          s += x[static_cast<size_t>(r) * in + i] * p[wo + static_cast<size_t>(o) * in + i];
        y[static_cast<size_t>(r) * out + o] = s;
      }
    return y;  // stored by the caller (q, k and v are stored once, as one packed activation)
  };
  const std::vector<double> inv_freq = ReferenceRopeInvFreq(c);
  // apply_rotary_pos_emb on [BT, heads * hs]: x * cos + rotate_half(x) * sin, with
  // rotate_half(x) = cat(-x2, x1) and cos, sin = cat(freqs, freqs).
  auto rope = [&](const std::vector<double>& x, int heads) {
    std::vector<double> y(x.size());
    const int half = hs / 2;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < heads; ++h) {
          const size_t o = (static_cast<size_t>(b * T + t) * heads + h) * hs;
          for (int d = 0; d < hs; ++d) {
            const double angle = t * inv_freq[d % half];
            const double rotated = d < half ? -x[o + d + half] : x[o + d - half];
            y[o + d] = x[o + d] * std::cos(angle) + rotated * std::sin(angle);
          }
        }
    return y;
  };

  std::vector<double> x(static_cast<size_t>(BT) * C);
  const size_t embed = at("model.embed_tokens.weight");
  for (int r = 0; r < BT; ++r)
    for (int i = 0; i < C; ++i)
      x[static_cast<size_t>(r) * C + i] = p[embed + static_cast<size_t>(tokens[r]) * C + i];
  x = kept(std::move(x));
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const std::vector<double> h = rmsnorm(x, at(pre + "input_layernorm.weight"));
    const std::string bq = c.attention_bias ? pre + "self_attn.q_proj.bias" : "";
    const std::string bk = c.attention_bias ? pre + "self_attn.k_proj.bias" : "";
    const std::string bv = c.attention_bias ? pre + "self_attn.v_proj.bias" : "";
    std::vector<double> q = kept(linear(h, C, pre + "self_attn.q_proj.weight", NH * hs, bq));
    std::vector<double> k = kept(linear(h, C, pre + "self_attn.k_proj.weight", NKV * hs, bk));
    const std::vector<double> v = kept(linear(h, C, pre + "self_attn.v_proj.weight", NKV * hs, bv));
    q = kept(rope(q, NH));
    k = kept(rope(k, NKV));
    // Causal softmax attention; query head hq uses key/value head hq / (NH / NKV) (repeat_kv).
    std::vector<double> att(static_cast<size_t>(BT) * C), score(T);
    for (int b = 0; b < B; ++b)
      for (int hq = 0; hq < NH; ++hq) {
        const int g = hq / (NH / NKV);
        for (int i = 0; i < T; ++i) {
          double max = -INFINITY;
          for (int j = 0; j <= i; ++j) {
            double dot = 0;
            for (int d = 0; d < hs; ++d)
              dot += q[(static_cast<size_t>(b * T + i) * NH + hq) * hs + d] *
                     k[(static_cast<size_t>(b * T + j) * NKV + g) * hs + d];
            score[j] = dot / std::sqrt(static_cast<double>(hs));
            max = std::max(max, score[j]);
          }
          double sum = 0;
          for (int j = 0; j <= i; ++j) sum += std::exp(score[j] - max);
          for (int d = 0; d < hs; ++d) {
            double acc = 0;
            for (int j = 0; j <= i; ++j)
              acc += std::exp(score[j] - max) / sum * v[(static_cast<size_t>(b * T + j) * NKV + g) * hs + d];
            att[static_cast<size_t>(b * T + i) * C + hq * hs + d] = acc;
          }
        }
      }
    att = kept(std::move(att));
    const std::vector<double> o = kept(linear(att, C, pre + "self_attn.o_proj.weight", C, ""));
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    x = kept(std::move(x));
    const std::vector<double> h2 = rmsnorm(x, at(pre + "post_attention_layernorm.weight"));
    const std::vector<double> gate = kept(linear(h2, C, pre + "mlp.gate_proj.weight", I, ""));
    const std::vector<double> up = kept(linear(h2, C, pre + "mlp.up_proj.weight", I, ""));
    std::vector<double> act(gate.size());
    for (size_t i = 0; i < act.size(); ++i) act[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
    act = kept(std::move(act));
    const std::vector<double> down = kept(linear(act, I, pre + "mlp.down_proj.weight", C, ""));
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
    x = kept(std::move(x));
  }
  const std::vector<double> xf = rmsnorm(x, at("model.norm.weight"));
  const size_t head = c.tie_embeddings ? embed : at("lm_head.weight");
  double loss = 0;
  for (int r = 0; r < BT; ++r) {
    std::vector<double> logits(c.vocab_size);
    double max = -INFINITY;
    for (int o = 0; o < c.vocab_size; ++o) {
      double s = 0;
      for (int i = 0; i < C; ++i)
        s += xf[static_cast<size_t>(r) * C + i] * p[head + static_cast<size_t>(o) * C + i];
      logits[o] = store ? store(s) : s;
      max = std::max(max, logits[o]);
    }
    double sum = 0;
    for (double z : logits) sum += std::exp(z - max);
    loss += -(logits[targets[r]] - max - std::log(sum));
  }
  return loss / BT;
}

}  // namespace fjord::testing
