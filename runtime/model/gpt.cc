#include "runtime/model/gpt.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>

#include "common/check.h"
#include "common/saturating.h"
#include "common/text.h"
#include "runtime/device/device.h"
#include "runtime/model/zero_units.h"

namespace fjord {

const char* PrecisionName(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

GptConfig GptConfig::FromSpec(const proto::ModelSpec& spec) {
  GptConfig c;
  c.n_layer = spec.n_layer();
  c.n_head = spec.n_head();
  c.n_embd = spec.n_embd();
  c.max_seq_len = spec.seq_len();
  c.vocab_size = spec.vocab_size();
  c.padded_vocab = (spec.vocab_size() + 127) / 128 * 128;
  c.n_kv_head = c.n_head;
  if (spec.arch() == proto::ModelSpec::LLAMA) {
    c.arch = Arch::kLlama;
    if (spec.n_kv_head() > 0) c.n_kv_head = spec.n_kv_head();
    c.intermediate_size = spec.intermediate_size();
    c.rms_norm_eps = spec.rms_norm_eps();
    c.rope_theta = spec.rope_theta();
    const proto::ModelSpec::RopeScaling& r = spec.rope_scaling();
    c.rope_llama3 = r.rope_type() == proto::ModelSpec::RopeScaling::LLAMA3;
    c.rope_factor = r.factor();
    c.rope_low_freq_factor = r.low_freq_factor();
    c.rope_high_freq_factor = r.high_freq_factor();
    c.rope_original_max_position = r.original_max_position_embeddings();
    c.attention_bias = spec.attention_bias();
    c.tie_embeddings = spec.tie_embeddings();
  }
  return c;
}

std::vector<float> RopeInvFreq(const GptConfig& c) {
  const int hs = c.head_size();
  std::vector<float> inv(hs / 2);
  constexpr double kPi = 3.14159265358979323846;
  for (int i = 0; i < hs / 2; ++i) {
    // Hugging Face: 1 / base^(arange(0, dim, 2) / dim) in fp32.
    const float f = static_cast<float>(1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / hs));
    if (!c.rope_llama3) {
      inv[i] = f;
      continue;
    }
    // transformers' _compute_llama3_parameters: long wavelengths divided by factor, short ones
    // kept, the band between interpolated.
    const double old_len = c.rope_original_max_position;
    const double low_wavelen = old_len / c.rope_low_freq_factor;
    const double high_wavelen = old_len / c.rope_high_freq_factor;
    const double wavelen = 2.0 * kPi / f;
    double scaled = wavelen > low_wavelen ? f / c.rope_factor : f;
    if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
      const double smooth =
          (old_len / wavelen - c.rope_low_freq_factor) / (c.rope_high_freq_factor - c.rope_low_freq_factor);
      scaled = (1.0 - smooth) * scaled / c.rope_factor + smooth * scaled;
    }
    inv[i] = static_cast<float>(scaled);
  }
  return inv;
}

size_t ParamTensor::size() const {
  size_t n = 1;
  for (int d : shape) n *= static_cast<size_t>(d);
  return n;
}

size_t ParamLayout::Add(const std::string& name, std::vector<int> shape, bool decay, bool pad) {
  ParamTensor t;
  t.name = name;
  t.offset = total_;
  t.shape = std::move(shape);
  t.weight_decay = decay;
  total_ += t.size();
  // Keep every tensor 16-float (64-byte) aligned so vector kernels never straddle tensors (except
  // inside a group one GEMM reads as one matrix).
  if (pad) total_ = (total_ + 15) / 16 * 16;
  tensors_.push_back(t);
  return t.offset;
}

ParamLayout::ParamLayout(const GptConfig& c) {
  const int C = c.n_embd;
  if (c.llama()) {
    // Hugging Face's LlamaForCausalLM names and shapes ([out, in] matrices), embed_tokens and lm_head
    // padded to padded_vocab rows.
    const int hs = c.head_size(), I = c.intermediate_size;
    const int q = c.n_head * hs, kv = c.n_kv_head * hs;
    wte_ = Add("model.embed_tokens.weight", {c.padded_vocab, C}, true);
    wpe_ = lnf_b_ = kNone;
    layers_.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Layer& L = layers_[l];
      L.begin = total_;
      L.ln1_b = L.attproj_b = L.ln2_b = L.fc_b = L.fcproj_b = L.qkv_b = kNone;
      L.ln1_w = Add(p + "input_layernorm.weight", {C}, false);
      L.qkv_w = Add(p + "self_attn.q_proj.weight", {q, C}, true, false);
      Add(p + "self_attn.k_proj.weight", {kv, C}, true, false);
      Add(p + "self_attn.v_proj.weight", {kv, C}, true);
      if (c.attention_bias) {
        L.qkv_b = Add(p + "self_attn.q_proj.bias", {q}, false, false);
        Add(p + "self_attn.k_proj.bias", {kv}, false, false);
        Add(p + "self_attn.v_proj.bias", {kv}, false);
      }
      L.attproj_w = Add(p + "self_attn.o_proj.weight", {C, q}, true);
      L.ln2_w = Add(p + "post_attention_layernorm.weight", {C}, false);
      L.fc_w = Add(p + "mlp.gate_proj.weight", {I, C}, true, false);
      Add(p + "mlp.up_proj.weight", {I, C}, true);
      L.fcproj_w = Add(p + "mlp.down_proj.weight", {C, I}, true);
      L.end = total_;
    }
    lnf_w_ = Add("model.norm.weight", {C}, false);
    lm_head_ = c.tie_embeddings ? wte_ : Add("lm_head.weight", {c.padded_vocab, C}, true);
    FJORD_CHECK(total_ == ParamCount(c), "ParamCount disagrees with the Llama layout: " +
                                             std::to_string(ParamCount(c)) + " vs " + std::to_string(total_));
    return;
  }
  wte_ = Add("wte.weight", {c.padded_vocab, C}, true);
  wpe_ = Add("wpe.weight", {c.max_seq_len, C}, true);
  layers_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    Layer& L = layers_[l];
    L.begin = total_;
    L.ln1_w = Add(p + "ln_1.weight", {C}, false);
    L.ln1_b = Add(p + "ln_1.bias", {C}, false);
    L.qkv_w = Add(p + "attn.c_attn.weight", {3 * C, C}, true);
    L.qkv_b = Add(p + "attn.c_attn.bias", {3 * C}, false);
    L.attproj_w = Add(p + "attn.c_proj.weight", {C, C}, true);
    L.attproj_b = Add(p + "attn.c_proj.bias", {C}, false);
    L.ln2_w = Add(p + "ln_2.weight", {C}, false);
    L.ln2_b = Add(p + "ln_2.bias", {C}, false);
    L.fc_w = Add(p + "mlp.c_fc.weight", {4 * C, C}, true);
    L.fc_b = Add(p + "mlp.c_fc.bias", {4 * C}, false);
    L.fcproj_w = Add(p + "mlp.c_proj.weight", {C, 4 * C}, true);
    L.fcproj_b = Add(p + "mlp.c_proj.bias", {C}, false);
    L.end = total_;
  }
  lnf_w_ = Add("ln_f.weight", {C}, false);
  lnf_b_ = Add("ln_f.bias", {C}, false);
  lm_head_ = wte_;
  FJORD_CHECK(total_ == ParamCount(c), "ParamCount disagrees with the layout: " +
                                           std::to_string(ParamCount(c)) + " vs " + std::to_string(total_));
}

HostBuffer::HostBuffer(size_t n) : size_(n) {
  if (n == 0) return;
  void* p = nullptr;
  const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  FJORD_CHECK(posix_memalign(&p, 64, bytes) == 0,
              "out of host memory allocating " + std::to_string(bytes) + " bytes");
  data_ = static_cast<float*>(p);
  std::memset(data_, 0, bytes);
}

HostBuffer::~HostBuffer() { std::free(data_); }

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

// Activation tensors. Per-layer tensors are indexed (id, layer); global ones come after all
// layers. The classifier's logits and losses come last: their gradients are not mirrored in
// dacts_ (fused_classifier writes dlogits over the logits). LayerNorm statistics, the attention
// log-sum-exp and the losses are fp32; every other activation is stored in config.precision.
namespace {

enum LayerAct {
  kLn1,
  kLn1Mean,
  kLn1Rstd,
  kQkv,
  kQkvRope,  // Llama: q and k after the rotary embedding (none for GPT-2)
  kAtty,
  kLse,
  kAttproj,
  kRes2,
  kLn2,
  kLn2Mean,
  kLn2Rstd,
  kFch,
  kFchGelu,
  kFcproj,
  kRes3,
  kNumLayerActs
};
enum GlobalAct { kEncoded, kLnf, kLnfMean, kLnfRstd, kLogits, kLosses, kNumGlobalActs };

using sat::Add;  // saturating size arithmetic (common/saturating.h)
using sat::Mul;
using sat::RoundUp;

size_t LayerActSize(LayerAct id, const GptConfig& c, size_t BT, size_t B) {
  const size_t C = c.n_embd;
  if (c.llama()) {
    switch (id) {
      case kLn1Mean:
      case kLn2Mean:
        return 0;  // RMSNorm keeps rstd only
      case kLn1Rstd:
      case kLn2Rstd:
        return BT;
      case kQkv:
      case kQkvRope:
        return Mul(BT, c.qkv_width());
      case kLse:
        return Mul(B, Mul(c.n_head, BT / B));
      case kFch:
        return Mul(BT, Mul(2, c.intermediate_size));
      case kFchGelu:
        return Mul(BT, c.intermediate_size);
      default:
        return Mul(BT, C);
    }
  }
  switch (id) {
    case kQkvRope:
      return 0;
    case kLn1Mean:
    case kLn1Rstd:
    case kLn2Mean:
    case kLn2Rstd:
      return BT;
    case kQkv:
      return Mul(BT, Mul(3, C));
    case kLse:
      return Mul(B, Mul(c.n_head, BT / B));
    case kFch:
    case kFchGelu:
      return Mul(BT, Mul(4, C));
    default:
      return Mul(BT, C);
  }
}

bool IsFp32Stat(LayerAct id) {
  return id == kLn1Mean || id == kLn1Rstd || id == kLn2Mean || id == kLn2Rstd || id == kLse;
}

size_t GlobalActSize(GlobalAct id, const GptConfig& c, size_t BT) {
  switch (id) {
    case kLnfMean:
      return c.llama() ? 0 : BT;
    case kLnfRstd:
    case kLosses:
      return BT;
    case kLogits:
      return Mul(BT, c.padded_vocab);
    default:
      return Mul(BT, c.n_embd);
  }
}

bool IsFp32Stat(GlobalAct id) { return id == kLnfMean || id == kLnfRstd || id == kLosses; }

size_t StorageBytes(Precision p) { return p == Precision::kBf16 ? sizeof(bf16) : sizeof(float); }

// Every activation starts 64-byte aligned (the arena's base is 256-aligned): the tensor-core
// attention kernels need qkv, out and dout 16-byte aligned, and vector loads want 16 bytes.
template <typename Act>
size_t ActBytes(Act a, size_t elements, Precision p) {
  return RoundUp(Mul(elements, IsFp32Stat(a) ? sizeof(float) : StorageBytes(p)), 64);
}

// Bytes of one layer's activations (the same for every layer).
size_t LayerActBytes(const GptConfig& c, size_t B, size_t BT) {
  size_t bytes = 0;
  for (int id = 0; id < kNumLayerActs; ++id) {
    const LayerAct a = static_cast<LayerAct>(id);
    bytes = Add(bytes, ActBytes(a, LayerActSize(a, c, BT, B), c.precision));
  }
  return bytes;
}

// With config.recompute (and at least one block) the forward pass keeps only each block's output
// (kRes3, the next block's input) per block; every other block activation has one slot that all
// blocks share, and the gradients have that shared slot plus two residual-stream slots used
// alternately (block l's dres3 and its dres_in). Bytes of kRes3, of the shared slot, and how many
// residual slots the activations and their gradients hold.
struct BlockSlots {
  size_t res = 0, shared = 0, act_res = 0, grad_res = 0;
};
BlockSlots Slots(const GptConfig& c, size_t B, size_t BT) {
  BlockSlots s;
  s.res = ActBytes(kRes3, LayerActSize(kRes3, c, BT, B), c.precision);
  s.shared = LayerActBytes(c, B, BT) - s.res;
  s.act_res = s.grad_res = c.n_layer;
  if (c.recompute && c.n_layer > 0) {
    s.grad_res = std::min(c.n_layer, 2);
  } else {
    // every block its own slots: counted as n_layer shared slots below
    s.shared = Mul(s.shared, c.n_layer);
  }
  return s;
}

// {total bytes, gradient bytes} of the activations in closed form (no per-layer loop): the
// gradients mirror everything before the logits.
std::pair<size_t, size_t> ActTotals(const GptConfig& c, int B, int T) {
  const size_t BT = Mul(B, T);
  const BlockSlots s = Slots(c, B, BT);
  size_t total = Add(s.shared, Mul(s.act_res, s.res)), grad_total = Add(s.shared, Mul(s.grad_res, s.res));
  for (int id = 0; id < kNumGlobalActs; ++id) {
    const GlobalAct a = static_cast<GlobalAct>(id);
    const size_t bytes = ActBytes(a, GlobalActSize(a, c, BT), c.precision);
    total = Add(total, bytes);
    if (a < kLogits) grad_total = Add(grad_total, bytes);
  }
  return {total, grad_total};
}

// Byte offsets of every activation in acts_ (`acts`) and of its gradient in dacts_ (`grads`),
// indexed layer-major (l * kNumLayerActs + id), then the globals, for a model whose size
// CheckMemory has accepted (the tables have n_layer x 16 entries). Without recompute both tables
// are the same: each block's activations in turn, then the globals. With recompute (kRes3 is the
// last layer act, so the shared slot is one contiguous run at offset 0 of both buffers): the
// shared slot, the per-block kRes3 (acts) or the two alternating ones (grads), then the globals.
// Returns the recompute's bytes of the shared gradient slot (0 without recompute).
size_t ActOffsets(const GptConfig& c, int B, int T, std::vector<size_t>* acts, std::vector<size_t>* grads) {
  const size_t BT = static_cast<size_t>(B) * T;
  size_t a = 0, g = 0, shared_bytes = 0;
  acts->clear();
  grads->clear();
  if (c.recompute && c.n_layer > 0) {
    size_t shared[kNumLayerActs];
    for (int id = 0; id < kRes3; ++id) {
      const LayerAct act = static_cast<LayerAct>(id);
      shared[id] = a;
      a += ActBytes(act, LayerActSize(act, c, BT, B), c.precision);
    }
    shared_bytes = g = a;
    const size_t res = ActBytes(kRes3, LayerActSize(kRes3, c, BT, B), c.precision);
    for (int l = 0; l < c.n_layer; ++l) {
      for (int id = 0; id < kNumLayerActs; ++id) {
        acts->push_back(id == kRes3 ? shared_bytes + l * res : shared[id]);
        grads->push_back(id == kRes3 ? shared_bytes + (l % 2) * res : shared[id]);
      }
    }
    a += c.n_layer * res;
    g += std::min(c.n_layer, 2) * res;
  } else {
    for (int l = 0; l < c.n_layer; ++l) {
      for (int id = 0; id < kNumLayerActs; ++id) {
        const LayerAct act = static_cast<LayerAct>(id);
        acts->push_back(a);
        a += ActBytes(act, LayerActSize(act, c, BT, B), c.precision);
      }
    }
    *grads = *acts;
    g = a;
  }
  for (int id = 0; id < kNumGlobalActs; ++id) {
    const GlobalAct act = static_cast<GlobalAct>(id);
    const size_t bytes = ActBytes(act, GlobalActSize(act, c, BT), c.precision);
    acts->push_back(a);
    grads->push_back(g);  // none for the logits and losses (fused_classifier writes dlogits in place)
    a += bytes;
    if (act < kLogits) g += bytes;
  }
  FJORD_CHECK(std::make_pair(a, g) == ActTotals(c, B, T), "activation offsets disagree with ActTotals");
  return shared_bytes;
}

// Bytes of the bf16 working copy of `n` parameters (none in fp32: the ops read the master).
size_t WorkingParamBytes(const GptConfig& c, size_t n) {
  return c.precision == Precision::kBf16 ? Mul(n, sizeof(bf16)) : 0;
}

// Parameters of one transformer block (ParamLayout's, each tensor or GEMM group padded to 16 floats).
size_t LayerParams(const GptConfig& c) {
  const size_t C = c.n_embd, CC = Mul(C, C);
  const auto t = [](size_t n) { return RoundUp(n, 16); };
  if (c.llama()) {
    const size_t qkv = static_cast<size_t>(c.n_head + 2 * c.n_kv_head) * c.head_size();
    const size_t I = c.intermediate_size;
    return Add(Add(Add(Mul(2, t(C)), t(Mul(qkv, C))), Add(c.attention_bias ? t(qkv) : 0, t(CC))),
               Add(t(Mul(2, Mul(I, C))), t(Mul(C, I))));
  }
  return Add(Add(Add(Mul(6, t(C)), t(Mul(3, CC))), Add(t(Mul(3, C)), t(CC))),
             Add(Mul(2, t(Mul(4, CC))), t(Mul(4, C))));
}

// Host bytes ParamLayout and the activation table keep per block (names, shapes, offsets).
constexpr size_t kBookkeepingBytesPerLayer =
    sizeof(ParamLayout::Layer) + 12 * (sizeof(ParamTensor) + 64) + kNumLayerActs * sizeof(size_t);

}  // namespace

size_t ParamCount(const GptConfig& c) {
  const size_t C = c.n_embd;
  if (c.llama()) {
    const size_t embed = RoundUp(Mul(c.padded_vocab, C), 16);
    return Add(Add(embed, c.tie_embeddings ? 0 : embed), Add(Mul(c.n_layer, LayerParams(c)), RoundUp(C, 16)));
  }
  return Add(Add(RoundUp(Mul(c.padded_vocab, C), 16), RoundUp(Mul(c.max_seq_len, C), 16)),
             Add(Mul(c.n_layer, LayerParams(c)), Mul(2, RoundUp(C, 16))));
}

size_t Gpt::MemoryBytes(const GptConfig& config, int max_batch, int max_seq) {
  auto [acts, dacts] = ActTotals(config, max_batch, max_seq);
  const size_t params = ParamCount(config);
  return Add(Add(Mul(2, Mul(params, sizeof(float))), WorkingParamBytes(config, params)), Add(acts, dacts));
}

Gpt::ArenaTerms Gpt::ArenaTermsFor(const GptConfig& config, int max_batch, int max_seq,
                                   size_t buffer_multiple) {
  auto [acts, dacts] = ActTotals(config, max_batch, max_seq);
  size_t padded = RoundUp(ParamCount(config), buffer_multiple);
  if (config.grad_shard_ranks > 0)
    padded = std::max(padded, ZeroUnits::SizesFor(config, config.grad_shard_ranks).buffer);
  const size_t tokens = Mul(Mul(max_batch, max_seq), sizeof(int32_t));
  const size_t working = WorkingParamBytes(config, padded);
  const auto r = [](size_t n) { return RoundUp(n, Arena::kAlign); };
  const size_t rope = config.llama() ? r(Mul(Mul(max_seq, config.head_size()), sizeof(float))) : 0;
  ArenaTerms t;
  // ZeRO-3: no parameter buffer (the shard and the gather windows are the trainer's).
  t.parameters =
      config.param_shard_ranks > 0 ? 0 : Add(r(Mul(padded, sizeof(float))), working > 0 ? r(working) : 0);
  t.gradients = config.grad_shard_ranks > 0 ? 0 : r(Mul(padded, sizeof(float)));
  t.activations = Add(r(acts), r(dacts));
  t.workspace = Add(Add(Mul(2, r(tokens)), r(sizeof(float))), rope);
  return t;
}

size_t Gpt::ArenaBytes(const GptConfig& config, int max_batch, int max_seq, size_t buffer_multiple) {
  const ArenaTerms t = ArenaTermsFor(config, max_batch, max_seq, buffer_multiple);
  return Add(Add(t.parameters, t.gradients), Add(t.activations, t.workspace));
}

Status Gpt::CheckMemory(const GptConfig& config, int max_batch, int max_seq, int extra_copies, int shards,
                        const Device& device, const std::string& what_to_do) {
  // Host bytes for `c`: on CUDA the mirror of the parameters; on the CPU the model, the extra
  // copies and the activations. Plus the per-layer bookkeeping either way.
  const auto need_for = [&](const GptConfig& c) {
    const size_t param_bytes = Mul(ParamCount(c), sizeof(float));
    const size_t on_host = device.is_cuda() ? param_bytes
                                            : Add(MemoryBytes(c, max_batch, max_seq),
                                                  Mul(param_bytes, extra_copies) / std::max(shards, 1));
    return Add(on_host, Mul(c.n_layer, kBookkeepingBytesPerLayer));
  };
  const size_t need = need_for(config);
  const HostMemory host = AvailableHostMemory();
  const size_t have = host.bytes;
  if (need <= have) return OkStatus();
  // What makes it large: the part that grows with model.n_layer, the embeddings, or the
  // activations outside the blocks (the logits).
  GptConfig no_blocks = config;
  no_blocks.n_layer = 0;
  const size_t rest = need_for(no_blocks);
  const size_t blocks = need == SIZE_MAX ? SIZE_MAX : need - std::min(need, rest);
  const size_t activations = device.is_cuda() ? 0 : [&] {
    auto [acts, dacts] = ActTotals(no_blocks, max_batch, max_seq);
    return Add(acts, dacts);
  }();
  const size_t embeddings = rest - std::min(rest, activations);
  std::string largest;
  if (blocks >= embeddings && blocks >= activations) {
    largest = "the transformer blocks, " + BytesText(blocks) +
              " (model.n_layer = " + std::to_string(config.n_layer) + " blocks of " +
              std::to_string(LayerParams(config)) +
              " parameters at model.n_embd = " + std::to_string(config.n_embd) +
              (device.is_cuda() ? std::string(")") : ", with their activations)");
  } else if (embeddings >= activations) {
    largest = "the embeddings, " + BytesText(embeddings) +
              " (model.vocab_size = " + std::to_string(config.vocab_size) +
              ", model.seq_len = " + std::to_string(config.max_seq_len) +
              ", model.n_embd = " + std::to_string(config.n_embd) + ")";
  } else {
    largest = "the logits and activations outside the blocks, " + BytesText(activations) + " (" +
              std::to_string(max_batch) + " sequences of " + std::to_string(max_seq) +
              " tokens: train.micro_batch, seq_len; model.vocab_size = " + std::to_string(config.vocab_size) +
              ")";
  }
  const size_t params = ParamCount(config);
  return FailedPrecondition("the model has " +
                            (params == SIZE_MAX ? std::string("more than 2^64") : std::to_string(params)) +
                            " parameters and needs " + BytesText(need) + " of host memory" +
                            (device.is_cuda() ? " (the host copy of the parameters)"
                                              : " (parameters, gradients" +
                                                    std::string(extra_copies > 0 ? ", optimizer state" : "") +
                                                    " and activations for " + std::to_string(max_batch) +
                                                    " x " + std::to_string(max_seq) + " tokens)") +
                            ", but this host has " + BytesText(have) + " available (" + host.bound +
                            "); the largest part is " + largest + "; nothing was allocated: " + what_to_do);
}

Gpt::Gpt(const GptConfig& config, int max_batch, int max_seq, const Ops& ops, size_t buffer_multiple)
    : config_(config),
      layout_(config),
      device_(CpuDevice()),
      ops_(ops),
      ctx_(CpuDevice().context()),
      max_batch_(max_batch),
      max_seq_(max_seq) {
  FJORD_CHECK(max_seq <= config.max_seq_len, "sequence longer than the model's positions");
  StatusOr<std::unique_ptr<Arena>> arena =
      Arena::Create(device_, ArenaBytes(config, max_batch, max_seq, buffer_multiple), "model");
  FJORD_CHECK(arena.ok(), arena.status().message());
  own_arena_ = std::move(arena).value();
  Allocate(*own_arena_, buffer_multiple);
}

Gpt::Gpt(const GptConfig& config, int max_batch, int max_seq, Arena& arena, size_t buffer_multiple)
    : config_(config),
      layout_(config),
      device_(arena.device()),
      ops_(arena.device().ops()),
      ctx_(arena.device().context()),
      max_batch_(max_batch),
      max_seq_(max_seq) {
  FJORD_CHECK(max_seq <= config.max_seq_len, "sequence longer than the model's positions");
  Allocate(arena, buffer_multiple);
}

Gpt::~Gpt() = default;

void Gpt::Allocate(Arena& arena, size_t buffer_multiple) {
  ctx_.tensor_core_attention = config_.tensor_core_attention;
  block_grad_bytes_ = ActOffsets(config_, max_batch_, max_seq_, &act_offsets_, &grad_offsets_);
  auto [acts, dacts] = ActTotals(config_, max_batch_, max_seq_);
  buffer_size_ = (layout_.num_params() + buffer_multiple - 1) / buffer_multiple * buffer_multiple;
  if (config_.grad_shard_ranks > 0)
    buffer_size_ = std::max(buffer_size_, ZeroUnits(layout_, config_.grad_shard_ranks).buffer_floats());
  const size_t tokens = static_cast<size_t>(max_batch_) * max_seq_;
  FJORD_CHECK(config_.param_shard_ranks == 0 || config_.grad_shard_ranks == config_.param_shard_ranks,
              "param_shard_ranks needs grad_shard_ranks equal to it (ZeRO-3 shards gradients too)");
  if (config_.param_shard_ranks == 0) {
    params_ = arena.Floats(buffer_size_);
    working_params_ = params_;
    if (config_.precision == Precision::kBf16)
      working_params_ = arena.Bytes(WorkingParamBytes(config_, buffer_size_));
  }
  if (config_.grad_shard_ranks == 0) grads_ = arena.Floats(buffer_size_);
  acts_ = static_cast<char*>(arena.Bytes(acts));
  dacts_ = static_cast<char*>(arena.Bytes(dacts));
  dacts_bytes_ = dacts;
  tokens_ = arena.Ints(tokens);
  targets_ = arena.Ints(tokens);
  scratch_ = arena.Floats(1);
  if (device_.is_cuda() && params_ != nullptr) host_params_ = HostBuffer(buffer_size_);
  if (device_.is_cuda()) {
    host_losses_.resize(tokens);
  }
  if (config_.llama()) {
    // cos and sin of t * inv_freq[i] for every position: the angle in fp32 as Hugging Face forms it
    // (position times fp32 inv_freq), its cos and sin in double rounded once.
    const int hs = config_.head_size();
    const std::vector<float> inv = RopeInvFreq(config_);
    std::vector<float> table(static_cast<size_t>(max_seq_) * hs);
    for (int t = 0; t < max_seq_; ++t) {
      for (int i = 0; i < hs / 2; ++i) {
        const float angle = static_cast<float>(t) * inv[i];
        table[static_cast<size_t>(t) * hs + 2 * i] = static_cast<float>(std::cos(static_cast<double>(angle)));
        table[static_cast<size_t>(t) * hs + 2 * i + 1] =
            static_cast<float>(std::sin(static_cast<double>(angle)));
      }
    }
    rope_ = arena.Floats(table.size());
    device_.Upload(rope_, table.data(), table.size() * sizeof(float));
  }
}

float* Gpt::host_params() { return device_.is_cuda() ? host_params_.data() : params_; }
const float* Gpt::host_params() const { return device_.is_cuda() ? host_params_.data() : params_; }

void Gpt::SyncParamsToHost() {
  FJORD_CHECK(params_ != nullptr,
              "SyncParamsToHost: a ZeRO-3 model (param_shard_ranks) has no parameter buffer");
  if (device_.is_cuda()) device_.Download(host_params_.data(), params_, buffer_size_ * sizeof(float));
}

void Gpt::SyncParamsToDevice() {
  FJORD_CHECK(params_ != nullptr,
              "SyncParamsToDevice: a ZeRO-3 model (param_shard_ranks) has no parameter buffer");
  if (device_.is_cuda()) device_.Upload(params_, host_params_.data(), buffer_size_ * sizeof(float));
  RoundWorkingParams(0);
}

void Gpt::RoundWorkingParams(uint64_t seed) { RoundWorkingParams(seed, 0, buffer_size_); }

void Gpt::RoundWorkingParams(uint64_t seed, size_t begin, size_t end) {
  if (config_.precision != Precision::kBf16 || begin >= end) return;
  FJORD_CHECK(params_ != nullptr,
              "RoundWorkingParams: a ZeRO-3 model (param_shard_ranks) has no parameter buffer");
  ops_.cast_to_bf16(ctx_, static_cast<bf16*>(working_params_) + begin, params_ + begin, end - begin, seed,
                    begin);
}

#define FJORD_LAYER_ACT(id, l) (act_offsets_[static_cast<size_t>(l) * kNumLayerActs + (id)])
#define FJORD_GLOBAL_ACT(id) (act_offsets_[static_cast<size_t>(config_.n_layer) * kNumLayerActs + (id)])
#define FJORD_LAYER_GRAD(id, l) (grad_offsets_[static_cast<size_t>(l) * kNumLayerActs + (id)])
#define FJORD_GLOBAL_GRAD(id) (grad_offsets_[static_cast<size_t>(config_.n_layer) * kNumLayerActs + (id)])

void Gpt::InitGpt2(uint64_t seed) {
  FJORD_CHECK(params_ != nullptr, "InitGpt2: a ZeRO-3 model (param_shard_ranks) has no parameter buffer");
  InitGpt2(seed, host_params());
  SyncParamsToDevice();
}

void Gpt::InitGpt2(uint64_t seed, float* p) const {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float residual_scale = 1.0f / std::sqrt(2.0f * config_.n_layer);
  std::memset(p, 0, num_params() * sizeof(float));
  for (const ParamTensor& t : layout_.tensors()) {
    const bool is_ln_weight = config_.llama()
                                  ? t.name.find("norm.weight") != std::string::npos
                                  : t.name.find("ln_") != std::string::npos && t.name.ends_with(".weight");
    const bool is_bias = t.name.ends_with(".bias");
    if (is_ln_weight) {
      for (size_t i = 0; i < t.size(); ++i) p[t.offset + i] = 1.0f;
    } else if (!is_bias) {
      float std = 0.02f;
      if (!config_.llama() && t.name.ends_with("c_proj.weight")) std *= residual_scale;
      size_t n = t.size();
      // Padded vocabulary rows stay zero: no token embeds to them and no logit reads them.
      if (t.offset == layout_.wte() || t.offset == layout_.lm_head())
        n = static_cast<size_t>(config_.vocab_size) * config_.n_embd;
      for (size_t i = 0; i < n; ++i) p[t.offset + i] = std * normal(rng);
    }
  }
}

float Gpt::Forward(const int32_t* tokens, const int32_t* targets, int B, int T, float dloss_scale) {
  FJORD_CHECK(B >= 1 && B <= max_batch_ && T >= 1 && T <= max_seq_,
              "batch " + std::to_string(B) + "x" + std::to_string(T) + " exceeds the model's buffers");
  B_ = B;
  T_ = T;
  const size_t BT = static_cast<size_t>(B) * T;
  device_.Upload(tokens_, tokens, BT * sizeof(int32_t));
  if (targets != nullptr) device_.Upload(targets_, targets, BT * sizeof(int32_t));
  has_dlogits_ = false;
  const bool with_targets = targets != nullptr;
  const float loss = config_.precision == Precision::kBf16
                         ? ForwardAs<bf16>(B, T, with_targets, dloss_scale)
                         : ForwardAs<float>(B, T, with_targets, dloss_scale);
  if (!with_targets) return 0.0f;
  has_dlogits_ = dloss_scale > 0.0f;
  return loss;
}

template <typename floatX>
float Gpt::ForwardAs(int B, int T, bool with_targets, float dloss_scale) {
  if (config_.llama()) {
    ForwardLlama<floatX>(B, T);
    return ClassifierForward<floatX>(B, T, with_targets, dloss_scale);
  }
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int C = config_.n_embd;
  const size_t BT = static_cast<size_t>(B) * T;
  floatX* const encoded = A<floatX>(FJORD_GLOBAL_ACT(kEncoded));
  NeedParams(0, UnitBegin(0));
  ops.encoder_forward(ctx_, encoded, tokens_, P<floatX>(layout_.wte()), P<floatX>(layout_.wpe()), B, T, C);
  // The LayerNorm that reads the residual stream after `l` layers: layer l's ln1, or lnf after the
  // last. Every LayerNorm but the first follows a residual add and is fused with it
  // (residual_layernorm_forward), which saves reading the sum back.
  struct Norm {
    floatX* out;
    float* mean;
    float* rstd;
    const floatX* weight;
    const floatX* bias;
  };
  auto norm_after = [&](int l) -> Norm {
    NeedParams(UnitBegin(l), l < config_.n_layer ? UnitBegin(l + 1) : ClassifierUnit());
    if (l < config_.n_layer) {
      const ParamLayout::Layer& w = layout_.layer(l);
      return {A<floatX>(FJORD_LAYER_ACT(kLn1, l)), F(FJORD_LAYER_ACT(kLn1Mean, l)),
              F(FJORD_LAYER_ACT(kLn1Rstd, l)), P<floatX>(w.ln1_w), P<floatX>(w.ln1_b)};
    }
    return {A<floatX>(FJORD_GLOBAL_ACT(kLnf)), F(FJORD_GLOBAL_ACT(kLnfMean)), F(FJORD_GLOBAL_ACT(kLnfRstd)),
            P<floatX>(layout_.lnf_w()), P<floatX>(layout_.lnf_b())};
  };
  const Norm first = norm_after(0);
  ops.layernorm_forward(ctx_, first.out, first.mean, first.rstd, encoded, first.weight, first.bias, BT, C);
  for (int l = 0; l < config_.n_layer; ++l) {
    BlockForward<floatX>(l);  // reads ln1, written before the loop or by layer l - 1
    const Norm next = norm_after(l + 1);
    ops.residual_layernorm_forward(ctx_, A<floatX>(FJORD_LAYER_ACT(kRes3, l)), next.out, next.mean, next.rstd,
                                   A<floatX>(FJORD_LAYER_ACT(kRes2, l)),
                                   A<floatX>(FJORD_LAYER_ACT(kFcproj, l)), next.weight, next.bias, BT, C);
  }
  return ClassifierForward<floatX>(B, T, with_targets, dloss_scale);
}

template <typename floatX>
void Gpt::ForwardLlama(int B, int T) {
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int C = config_.n_embd;
  const float eps = config_.rms_norm_eps;
  const size_t BT = static_cast<size_t>(B) * T;
  floatX* const encoded = A<floatX>(FJORD_GLOBAL_ACT(kEncoded));
  NeedParams(0, UnitBegin(0));
  ops.encoder_forward(ctx_, encoded, tokens_, P<floatX>(layout_.wte()), nullptr, B, T, C);
  // The RMSNorm that reads the residual stream after `l` layers: layer l's input_layernorm, or
  // model.norm after the last.
  auto norm_after = [&](int l, const floatX* x) {
    NeedParams(UnitBegin(l), l < config_.n_layer ? UnitBegin(l + 1) : ClassifierUnit());
    if (l < config_.n_layer) {
      ops.rmsnorm_forward(ctx_, A<floatX>(FJORD_LAYER_ACT(kLn1, l)), F(FJORD_LAYER_ACT(kLn1Rstd, l)), x,
                          P<floatX>(layout_.layer(l).ln1_w), BT, C, eps);
    } else {
      ops.rmsnorm_forward(ctx_, A<floatX>(FJORD_GLOBAL_ACT(kLnf)), F(FJORD_GLOBAL_ACT(kLnfRstd)), x,
                          P<floatX>(layout_.lnf_w()), BT, C, eps);
    }
  };
  norm_after(0, encoded);
  for (int l = 0; l < config_.n_layer; ++l) {
    BlockForward<floatX>(l);
    floatX* res3 = A<floatX>(FJORD_LAYER_ACT(kRes3, l));
    ops.residual_forward(ctx_, res3, A<floatX>(FJORD_LAYER_ACT(kRes2, l)),
                         A<floatX>(FJORD_LAYER_ACT(kFcproj, l)), BT * C);
    norm_after(l + 1, res3);
  }
}

template <typename floatX>
void Gpt::BlockForward(int l) {
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int B = B_, T = T_, C = config_.n_embd, NH = config_.n_head;
  const size_t BT = static_cast<size_t>(B) * T;
  const ParamLayout::Layer& w = layout_.layer(l);
  const floatX* residual = A<floatX>(l == 0 ? FJORD_GLOBAL_ACT(kEncoded) : FJORD_LAYER_ACT(kRes3, l - 1));
  floatX* ln1 = A<floatX>(FJORD_LAYER_ACT(kLn1, l));
  floatX* qkv = A<floatX>(FJORD_LAYER_ACT(kQkv, l));
  floatX* atty = A<floatX>(FJORD_LAYER_ACT(kAtty, l));
  floatX* attproj = A<floatX>(FJORD_LAYER_ACT(kAttproj, l));
  floatX* res2 = A<floatX>(FJORD_LAYER_ACT(kRes2, l));
  floatX* ln2 = A<floatX>(FJORD_LAYER_ACT(kLn2, l));
  floatX* fch = A<floatX>(FJORD_LAYER_ACT(kFch, l));
  floatX* fch_act = A<floatX>(FJORD_LAYER_ACT(kFchGelu, l));
  floatX* fcproj = A<floatX>(FJORD_LAYER_ACT(kFcproj, l));
  float* lse = F(FJORD_LAYER_ACT(kLse, l));
  if (!config_.llama()) {
    ops.matmul_forward(ctx_, qkv, ln1, P<floatX>(w.qkv_w), P<floatX>(w.qkv_b), BT, C, 3 * C);
    ops.attention_forward(ctx_, atty, lse, qkv, B, T, C, NH, NH);
    ops.matmul_forward(ctx_, attproj, atty, P<floatX>(w.attproj_w), P<floatX>(w.attproj_b), BT, C, C);
    ops.residual_layernorm_forward(ctx_, res2, ln2, F(FJORD_LAYER_ACT(kLn2Mean, l)),
                                   F(FJORD_LAYER_ACT(kLn2Rstd, l)), residual, attproj, P<floatX>(w.ln2_w),
                                   P<floatX>(w.ln2_b), BT, C);
    ops.matmul_gelu_forward(ctx_, fch_act, fch, ln2, P<floatX>(w.fc_w), P<floatX>(w.fc_b), BT, C, 4 * C);
    ops.matmul_forward(ctx_, fcproj, fch_act, P<floatX>(w.fcproj_w), P<floatX>(w.fcproj_b), BT, 4 * C, C);
    return;
  }
  const int NKV = config_.n_kv_head, hs = config_.head_size();
  const int I = config_.intermediate_size, QKV = config_.qkv_width();
  floatX* qkvr = A<floatX>(FJORD_LAYER_ACT(kQkvRope, l));
  ops.matmul_forward(ctx_, qkv, ln1, P<floatX>(w.qkv_w), POpt<floatX>(w.qkv_b), BT, C, QKV);
  ops.rope_forward(ctx_, qkvr, qkv, rope_, B, T, NH, NKV, hs);
  ops.attention_forward(ctx_, atty, lse, qkvr, B, T, C, NH, NKV);
  ops.matmul_forward(ctx_, attproj, atty, P<floatX>(w.attproj_w), nullptr, BT, C, C);
  ops.residual_forward(ctx_, res2, residual, attproj, BT * C);
  ops.rmsnorm_forward(ctx_, ln2, F(FJORD_LAYER_ACT(kLn2Rstd, l)), res2, P<floatX>(w.ln2_w), BT, C,
                      config_.rms_norm_eps);
  ops.matmul_forward(ctx_, fch, ln2, P<floatX>(w.fc_w), nullptr, BT, C, 2 * I);
  ops.swiglu_forward(ctx_, fch_act, fch, BT, I);
  ops.matmul_forward(ctx_, fcproj, fch_act, P<floatX>(w.fcproj_w), nullptr, BT, I, C);
}

// The forward pass normalised block l's input as the previous block's last step (GPT-2: fused with
// its residual add, which kernels/cpu/layernorm.cc keeps bit-identical to layernorm_forward of the
// stored sum); here it is normalised on its own, then the block runs again. The block's gradient
// slots are zeroed first (the ops accumulate): the shared ones and the residual slot that receives
// dres_in (it held the gradient of block l + 1's input, consumed by now). The last block is not
// run again: nothing after it in the forward pass wrote the shared slot.
template <typename floatX>
void Gpt::RecomputeBlock(int l) {
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int C = config_.n_embd;
  const size_t BT = static_cast<size_t>(B_) * T_;
  const ParamLayout::Layer& w = layout_.layer(l);
  const size_t in = l == 0 ? FJORD_GLOBAL_ACT(kEncoded) : FJORD_LAYER_ACT(kRes3, l - 1);
  ops.fill_zero(ctx_, reinterpret_cast<floatX*>(dacts_), block_grad_bytes_ / sizeof(floatX));
  if (l > 0) ops.fill_zero(ctx_, G<floatX>(FJORD_LAYER_GRAD(kRes3, l - 1)), BT * C);
  // The forward pass ran the last block last: the shared slot still holds its activations.
  if (l == config_.n_layer - 1) return;
  if (config_.llama()) {
    ops.rmsnorm_forward(ctx_, A<floatX>(FJORD_LAYER_ACT(kLn1, l)), F(FJORD_LAYER_ACT(kLn1Rstd, l)),
                        A<floatX>(in), P<floatX>(w.ln1_w), BT, C, config_.rms_norm_eps);
  } else {
    ops.layernorm_forward(ctx_, A<floatX>(FJORD_LAYER_ACT(kLn1, l)), F(FJORD_LAYER_ACT(kLn1Mean, l)),
                          F(FJORD_LAYER_ACT(kLn1Rstd, l)), A<floatX>(in), P<floatX>(w.ln1_w),
                          P<floatX>(w.ln1_b), BT, C);
  }
  BlockForward<floatX>(l);
}

template <typename floatX>
float Gpt::ClassifierForward(int B, int T, bool with_targets, float dloss_scale) {
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int C = config_.n_embd, V = config_.vocab_size, Vp = config_.padded_vocab;
  const size_t BT = static_cast<size_t>(B) * T;
  floatX* lnf = A<floatX>(FJORD_GLOBAL_ACT(kLnf));
  floatX* logits = A<floatX>(FJORD_GLOBAL_ACT(kLogits));
  NeedParams(ClassifierUnit(), ParamLayout::kNone);
  ops.matmul_forward(ctx_, logits, lnf, P<floatX>(layout_.lm_head()), nullptr, BT, C, Vp);
  if (!with_targets) return 0.0f;

  float* losses = F(FJORD_GLOBAL_ACT(kLosses));
  ops.fused_classifier(ctx_, logits, losses, targets_, BT, V, Vp, dloss_scale / static_cast<float>(BT),
                       dloss_scale > 0.0f ? 1 : 0);
  if (device_.is_cuda()) {
    device_.Download(host_losses_.data(), losses, BT * sizeof(float));
    losses = host_losses_.data();
  }
  double sum = 0.0;
  for (size_t i = 0; i < BT; ++i) sum += losses[i];
  return static_cast<float>(sum / static_cast<double>(BT));
}

void Gpt::Backward(const GradReadyFn& on_ready) {
  FJORD_CHECK(has_dlogits_, "Backward needs a Forward with targets and dloss_scale > 0 before it");
  has_dlogits_ = false;
  if (config_.precision == Precision::kBf16) {
    BackwardAs<bf16>(on_ready);
  } else {
    BackwardAs<float>(on_ready);
  }
}

template <typename floatX>
void Gpt::BackwardAs(const GradReadyFn& on_ready) {
  if (config_.llama()) return BackwardLlama<floatX>(on_ready);
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int B = B_, T = T_, C = config_.n_embd, NH = config_.n_head, Vp = config_.padded_vocab;
  const size_t BT = static_cast<size_t>(B) * T;
  // Activation gradients accumulate (ops' contract), so they start from zero each pass.
  ops.fill_zero(ctx_, reinterpret_cast<floatX*>(dacts_), dacts_bytes_ / sizeof(floatX));

  const floatX* dlogits = A<floatX>(FJORD_GLOBAL_ACT(kLogits));
  floatX* dlnf = G<floatX>(FJORD_GLOBAL_GRAD(kLnf));
  const int L = config_.n_layer;
  NeedParams(ClassifierUnit(), UnitBegin(L));
  ops.matmul_backward(ctx_, dlnf, D(layout_.wte()), nullptr, dlogits, A<floatX>(FJORD_GLOBAL_ACT(kLnf)),
                      P<floatX>(layout_.wte()), BT, C, Vp);
  NeedParams(UnitBegin(L), L > 0 ? UnitBegin(L - 1) : ParamLayout::kNone);
  const size_t last = L > 0 ? FJORD_LAYER_ACT(kRes3, L - 1) : FJORD_GLOBAL_ACT(kEncoded);
  const size_t dlast = L > 0 ? FJORD_LAYER_GRAD(kRes3, L - 1) : FJORD_GLOBAL_GRAD(kEncoded);
  ops.layernorm_backward(ctx_, G<floatX>(dlast), D(layout_.lnf_w()), D(layout_.lnf_b()), dlnf,
                         A<floatX>(last), P<floatX>(layout_.lnf_w()), F(FJORD_GLOBAL_ACT(kLnfMean)),
                         F(FJORD_GLOBAL_ACT(kLnfRstd)), BT, C);
  if (on_ready) on_ready(layout_.lnf_w(), layout_.num_params());

  for (int l = L - 1; l >= 0; --l) {
    const ParamLayout::Layer& w = layout_.layer(l);
    NeedParams(w.begin, l > 0 ? UnitBegin(l - 1) : ParamLayout::kNone);
    if (config_.recompute) RecomputeBlock<floatX>(l);
    const size_t in = l == 0 ? FJORD_GLOBAL_ACT(kEncoded) : FJORD_LAYER_ACT(kRes3, l - 1);
    const size_t din = l == 0 ? FJORD_GLOBAL_GRAD(kEncoded) : FJORD_LAYER_GRAD(kRes3, l - 1);
    const floatX* residual = A<floatX>(in);
    floatX* dres_in = G<floatX>(din);
    floatX* dres3 = G<floatX>(FJORD_LAYER_GRAD(kRes3, l));
    floatX* dres2 = G<floatX>(FJORD_LAYER_GRAD(kRes2, l));
    floatX* dfcproj = G<floatX>(FJORD_LAYER_GRAD(kFcproj, l));
    floatX* dfch_gelu = G<floatX>(FJORD_LAYER_GRAD(kFchGelu, l));
    floatX* dfch = G<floatX>(FJORD_LAYER_GRAD(kFch, l));
    floatX* dln2 = G<floatX>(FJORD_LAYER_GRAD(kLn2, l));
    floatX* dattproj = G<floatX>(FJORD_LAYER_GRAD(kAttproj, l));
    floatX* datty = G<floatX>(FJORD_LAYER_GRAD(kAtty, l));
    floatX* dqkv = G<floatX>(FJORD_LAYER_GRAD(kQkv, l));
    floatX* dln1 = G<floatX>(FJORD_LAYER_GRAD(kLn1, l));

    ops.residual_backward(ctx_, dres2, dfcproj, dres3, BT * C);
    ops.matmul_backward(ctx_, dfch_gelu, D(w.fcproj_w), D(w.fcproj_b), dfcproj,
                        A<floatX>(FJORD_LAYER_ACT(kFchGelu, l)), P<floatX>(w.fcproj_w), BT, 4 * C, C);
    ops.gelu_backward(ctx_, dfch, A<floatX>(FJORD_LAYER_ACT(kFch, l)), dfch_gelu, BT * 4 * C);
    ops.matmul_backward(ctx_, dln2, D(w.fc_w), D(w.fc_b), dfch, A<floatX>(FJORD_LAYER_ACT(kLn2, l)),
                        P<floatX>(w.fc_w), BT, C, 4 * C);
    ops.layernorm_backward(ctx_, dres2, D(w.ln2_w), D(w.ln2_b), dln2, A<floatX>(FJORD_LAYER_ACT(kRes2, l)),
                           P<floatX>(w.ln2_w), F(FJORD_LAYER_ACT(kLn2Mean, l)),
                           F(FJORD_LAYER_ACT(kLn2Rstd, l)), BT, C);
    ops.residual_backward(ctx_, dres_in, dattproj, dres2, BT * C);
    ops.matmul_backward(ctx_, datty, D(w.attproj_w), D(w.attproj_b), dattproj,
                        A<floatX>(FJORD_LAYER_ACT(kAtty, l)), P<floatX>(w.attproj_w), BT, C, C);
    ops.attention_backward(ctx_, dqkv, datty, A<floatX>(FJORD_LAYER_ACT(kQkv, l)),
                           A<floatX>(FJORD_LAYER_ACT(kAtty, l)), F(FJORD_LAYER_ACT(kLse, l)), B, T, C, NH,
                           NH);
    ops.matmul_backward(ctx_, dln1, D(w.qkv_w), D(w.qkv_b), dqkv, A<floatX>(FJORD_LAYER_ACT(kLn1, l)),
                        P<floatX>(w.qkv_w), BT, C, 3 * C);
    ops.layernorm_backward(ctx_, dres_in, D(w.ln1_w), D(w.ln1_b), dln1, residual, P<floatX>(w.ln1_w),
                           F(FJORD_LAYER_ACT(kLn1Mean, l)), F(FJORD_LAYER_ACT(kLn1Rstd, l)), BT, C);
    if (on_ready) on_ready(w.begin, w.end);
  }
  ops.encoder_backward(ctx_, D(layout_.wte()), D(layout_.wpe()), G<floatX>(FJORD_GLOBAL_GRAD(kEncoded)),
                       tokens_, B, T, C);
  if (on_ready) on_ready(0, L > 0 ? layout_.layer(0).begin : layout_.lnf_w());
}

template <typename floatX>
void Gpt::BackwardLlama(const GradReadyFn& on_ready) {
  const ModelOps<floatX>& ops = ops_.model<floatX>();
  const int B = B_, T = T_, C = config_.n_embd, NH = config_.n_head, NKV = config_.n_kv_head;
  const int hs = config_.head_size(), I = config_.intermediate_size, QKV = config_.qkv_width();
  const int Vp = config_.padded_vocab;
  const size_t BT = static_cast<size_t>(B) * T;
  ops.fill_zero(ctx_, reinterpret_cast<floatX*>(dacts_), dacts_bytes_ / sizeof(floatX));

  const floatX* dlogits = A<floatX>(FJORD_GLOBAL_ACT(kLogits));
  floatX* dlnf = G<floatX>(FJORD_GLOBAL_GRAD(kLnf));
  const int L = config_.n_layer;
  NeedParams(ClassifierUnit(), UnitBegin(L));
  ops.matmul_backward(ctx_, dlnf, D(layout_.lm_head()), nullptr, dlogits, A<floatX>(FJORD_GLOBAL_ACT(kLnf)),
                      P<floatX>(layout_.lm_head()), BT, C, Vp);
  NeedParams(UnitBegin(L), L > 0 ? UnitBegin(L - 1) : ParamLayout::kNone);
  const size_t last = L > 0 ? FJORD_LAYER_ACT(kRes3, L - 1) : FJORD_GLOBAL_ACT(kEncoded);
  const size_t dlast = L > 0 ? FJORD_LAYER_GRAD(kRes3, L - 1) : FJORD_GLOBAL_GRAD(kEncoded);
  ops.rmsnorm_backward(ctx_, G<floatX>(dlast), D(layout_.lnf_w()), dlnf, A<floatX>(last),
                       P<floatX>(layout_.lnf_w()), F(FJORD_GLOBAL_ACT(kLnfRstd)), BT, C);
  // model.norm and, untied, lm_head (after it in the buffer) are final.
  if (on_ready) on_ready(layout_.lnf_w(), layout_.num_params());

  for (int l = L - 1; l >= 0; --l) {
    const ParamLayout::Layer& w = layout_.layer(l);
    NeedParams(w.begin, l > 0 ? UnitBegin(l - 1) : ParamLayout::kNone);
    if (config_.recompute) RecomputeBlock<floatX>(l);
    const size_t in = l == 0 ? FJORD_GLOBAL_ACT(kEncoded) : FJORD_LAYER_ACT(kRes3, l - 1);
    const size_t din = l == 0 ? FJORD_GLOBAL_GRAD(kEncoded) : FJORD_LAYER_GRAD(kRes3, l - 1);
    floatX* dres_in = G<floatX>(din);
    floatX* dres3 = G<floatX>(FJORD_LAYER_GRAD(kRes3, l));
    floatX* dres2 = G<floatX>(FJORD_LAYER_GRAD(kRes2, l));
    floatX* dfcproj = G<floatX>(FJORD_LAYER_GRAD(kFcproj, l));
    floatX* dfch_act = G<floatX>(FJORD_LAYER_GRAD(kFchGelu, l));
    floatX* dfch = G<floatX>(FJORD_LAYER_GRAD(kFch, l));
    floatX* dln2 = G<floatX>(FJORD_LAYER_GRAD(kLn2, l));
    floatX* dattproj = G<floatX>(FJORD_LAYER_GRAD(kAttproj, l));
    floatX* datty = G<floatX>(FJORD_LAYER_GRAD(kAtty, l));
    floatX* dqkvr = G<floatX>(FJORD_LAYER_GRAD(kQkvRope, l));
    floatX* dqkv = G<floatX>(FJORD_LAYER_GRAD(kQkv, l));
    floatX* dln1 = G<floatX>(FJORD_LAYER_GRAD(kLn1, l));

    ops.residual_backward(ctx_, dres2, dfcproj, dres3, BT * C);
    ops.matmul_backward(ctx_, dfch_act, D(w.fcproj_w), nullptr, dfcproj,
                        A<floatX>(FJORD_LAYER_ACT(kFchGelu, l)), P<floatX>(w.fcproj_w), BT, I, C);
    ops.swiglu_backward(ctx_, dfch, A<floatX>(FJORD_LAYER_ACT(kFch, l)), dfch_act, BT, I);
    ops.matmul_backward(ctx_, dln2, D(w.fc_w), nullptr, dfch, A<floatX>(FJORD_LAYER_ACT(kLn2, l)),
                        P<floatX>(w.fc_w), BT, C, 2 * I);
    ops.rmsnorm_backward(ctx_, dres2, D(w.ln2_w), dln2, A<floatX>(FJORD_LAYER_ACT(kRes2, l)),
                         P<floatX>(w.ln2_w), F(FJORD_LAYER_ACT(kLn2Rstd, l)), BT, C);
    ops.residual_backward(ctx_, dres_in, dattproj, dres2, BT * C);
    ops.matmul_backward(ctx_, datty, D(w.attproj_w), nullptr, dattproj, A<floatX>(FJORD_LAYER_ACT(kAtty, l)),
                        P<floatX>(w.attproj_w), BT, C, C);
    ops.attention_backward(ctx_, dqkvr, datty, A<floatX>(FJORD_LAYER_ACT(kQkvRope, l)),
                           A<floatX>(FJORD_LAYER_ACT(kAtty, l)), F(FJORD_LAYER_ACT(kLse, l)), B, T, C, NH,
                           NKV);
    ops.rope_backward(ctx_, dqkv, dqkvr, rope_, B, T, NH, NKV, hs);
    ops.matmul_backward(ctx_, dln1, D(w.qkv_w), DOpt(w.qkv_b), dqkv, A<floatX>(FJORD_LAYER_ACT(kLn1, l)),
                        P<floatX>(w.qkv_w), BT, C, QKV);
    ops.rmsnorm_backward(ctx_, dres_in, D(w.ln1_w), dln1, A<floatX>(in), P<floatX>(w.ln1_w),
                         F(FJORD_LAYER_ACT(kLn1Rstd, l)), BT, C);
    if (on_ready) on_ready(w.begin, w.end);
  }
  ops.encoder_backward(ctx_, D(layout_.wte()), nullptr, G<floatX>(FJORD_GLOBAL_GRAD(kEncoded)), tokens_, B, T,
                       C);
  if (on_ready) on_ready(0, L > 0 ? layout_.layer(0).begin : layout_.lnf_w());
}

void Gpt::ZeroGrads() {
  FJORD_CHECK(grads_ != nullptr, "ZeroGrads: this model has gradient windows (grad_shard_ranks)");
  ops_.f32.fill_zero(ctx_, grads_, buffer_size_);
}

void Gpt::SetGradWindow(int slot, size_t begin, size_t end, float* window) {
  FJORD_CHECK(slot == 0 || slot == 1, "SetGradWindow: slot " + std::to_string(slot));
  grad_windows_[slot] = {begin, end - begin, window};
}

void Gpt::SetParamWindow(int slot, size_t begin, size_t end, const void* window) {
  FJORD_CHECK(slot >= 0 && slot <= 2, "SetParamWindow: slot " + std::to_string(slot));
  param_windows_[slot] = {begin, end - begin, window};
}

void Gpt::OutsideParamWindows(size_t offset) const {
  std::string windows;
  for (const ParamWindow& w : param_windows_)
    windows += " [" + std::to_string(w.begin) + ", +" + std::to_string(w.size) + ")";
  FJORD_CHECK(false, "parameter " + std::to_string(offset) + " read outside the parameter windows" + windows);
  std::abort();
}

float* Gpt::OutsideGradWindows(size_t offset) const {
  FJORD_CHECK(false, "gradient of parameter " + std::to_string(offset) +
                         " written outside the gradient windows [" + std::to_string(grad_windows_[0].begin) +
                         ", +" + std::to_string(grad_windows_[0].size) + ") and [" +
                         std::to_string(grad_windows_[1].begin) + ", +" +
                         std::to_string(grad_windows_[1].size) + ")");
  std::abort();
}

float Gpt::GradSumSquares() {
  FJORD_CHECK(grads_ != nullptr, "GradSumSquares: this model has gradient windows (grad_shard_ranks)");
  return SumSquares(grads_, buffer_size_);
}

float Gpt::SumSquares(const float* x, size_t n) {
  ops_.sum_squares(ctx_, scratch_, x, n);
  float out = 0.0f;
  device_.Download(&out, scratch_, sizeof(float));
  return out;
}

const float* Gpt::Logits() const {
  FJORD_CHECK(config_.precision == Precision::kFp32, "Logits() reads fp32 logits; this model runs in bf16");
  return reinterpret_cast<const float*>(
      acts_ + act_offsets_[static_cast<size_t>(config_.n_layer) * kNumLayerActs + kLogits]);
}

}  // namespace fjord
