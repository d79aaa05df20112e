// The tensor list is generated from the dimensions and matched to the caller's slots by name, so
// a layout change on the model side (order, alignment padding) needs no change here.
#include "runtime/formats/gpt2_params.h"

#include <algorithm>
#include <unordered_map>

namespace fjord {
namespace {

constexpr int kPerLayerKinds = 12;  // kLn1W .. kFcprojB

// Our name suffix for each per-layer kind, in kind order.
constexpr const char* kLayerSuffix[kPerLayerKinds] = {
    "ln_1.weight",        "ln_1.bias",        "attn.c_attn.weight", "attn.c_attn.bias",
    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",        "ln_2.bias",
    "mlp.c_fc.weight",    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};

std::vector<int> ShapeOf(Gpt2Kind kind, const Gpt2Dims& d) {
  const int C = d.n_embd;
  switch (kind) {
    case Gpt2Kind::kWte:
      return {d.padded_vocab, C};
    case Gpt2Kind::kWpe:
      return {d.max_seq_len, C};
    case Gpt2Kind::kQkvW:
      return {3 * C, C};
    case Gpt2Kind::kQkvB:
      return {3 * C};
    case Gpt2Kind::kAttprojW:
      return {C, C};
    case Gpt2Kind::kFcW:
      return {4 * C, C};
    case Gpt2Kind::kFcB:
      return {4 * C};
    case Gpt2Kind::kFcprojW:
      return {C, 4 * C};
    default:
      return {C};  // LayerNorm weights and biases, attproj and fcproj biases
  }
}

std::string ShapeText(const std::vector<int>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

Status ValidateGpt2Dims(const Gpt2Dims& d) {
  if (d.n_layer <= 0 || d.n_head <= 0 || d.n_embd <= 0 || d.max_seq_len <= 0 || d.vocab_size <= 0) {
    return InvalidArgument("model dimensions must be positive: n_layer " + std::to_string(d.n_layer) +
                           ", n_head " + std::to_string(d.n_head) + ", n_embd " + std::to_string(d.n_embd) +
                           ", max_seq_len " + std::to_string(d.max_seq_len) + ", vocab_size " +
                           std::to_string(d.vocab_size));
  }
  if (d.n_embd % d.n_head != 0) {
    return InvalidArgument("n_embd " + std::to_string(d.n_embd) + " is not divisible by n_head " +
                           std::to_string(d.n_head));
  }
  if (d.padded_vocab < d.vocab_size) {
    return InvalidArgument("padded_vocab " + std::to_string(d.padded_vocab) + " is smaller than vocab_size " +
                           std::to_string(d.vocab_size));
  }
  return OkStatus();
}

size_t Gpt2Tensor::size() const {
  size_t n = 1;
  for (int d : shape) n *= static_cast<size_t>(d);
  return n;
}

StatusOr<Gpt2Params> Gpt2Params::Match(const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                                       size_t buffer_floats, const std::string& what) {
  FJORD_RETURN_IF_ERROR(ValidateGpt2Dims(dims).WithContext(what));
  Gpt2Params p;
  p.dims_ = dims;
  auto add = [&](Gpt2Kind kind, int layer, std::string name) {
    p.tensors_.push_back({kind, layer, std::move(name), ShapeOf(kind, dims), 0});
  };
  add(Gpt2Kind::kWte, -1, "wte.weight");
  add(Gpt2Kind::kWpe, -1, "wpe.weight");
  for (int l = 0; l < dims.n_layer; ++l) {
    for (int k = 0; k < kPerLayerKinds; ++k) {
      add(static_cast<Gpt2Kind>(static_cast<int>(Gpt2Kind::kLn1W) + k), l,
          "h." + std::to_string(l) + "." + kLayerSuffix[k]);
    }
  }
  add(Gpt2Kind::kLnfW, -1, "ln_f.weight");
  add(Gpt2Kind::kLnfB, -1, "ln_f.bias");

  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < p.tensors_.size(); ++i) index[p.tensors_[i].name] = i;
  std::vector<bool> seen(p.tensors_.size(), false);
  for (const ParamSlot& slot : slots) {
    const auto it = index.find(slot.name);
    if (it == index.end()) {
      return InvalidArgument(what + ": parameter \"" + slot.name + "\" is not a GPT-2 tensor of a " +
                             std::to_string(dims.n_layer) +
                             "-layer model; the parameter layout does not match");
    }
    Gpt2Tensor& t = p.tensors_[it->second];
    if (seen[it->second]) return InvalidArgument(what + ": parameter \"" + slot.name + "\" is listed twice");
    seen[it->second] = true;
    if (slot.shape != t.shape) {
      return InvalidArgument(what + ": parameter \"" + slot.name + "\" has shape " + ShapeText(slot.shape) +
                             " but the model dimensions imply " + ShapeText(t.shape));
    }
    if (slot.offset > buffer_floats || t.size() > buffer_floats - slot.offset) {
      return InvalidArgument(what + ": parameter \"" + slot.name + "\" at offset " +
                             std::to_string(slot.offset) + " with " + std::to_string(t.size()) +
                             " floats does not fit the buffer of " + std::to_string(buffer_floats) +
                             " floats");
    }
    t.offset = slot.offset;
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    if (!seen[i])
      return InvalidArgument(what + ": parameter \"" + p.tensors_[i].name + "\" is missing from the layout");
  }
  std::vector<const Gpt2Tensor*> by_offset;
  for (const Gpt2Tensor& t : p.tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Gpt2Tensor* a, const Gpt2Tensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i - 1]->offset + by_offset[i - 1]->size() > by_offset[i]->offset) {
      return InvalidArgument(what + ": parameters \"" + by_offset[i - 1]->name + "\" and \"" +
                             by_offset[i]->name + "\" overlap in the buffer");
    }
  }
  return p;
}

const Gpt2Tensor& Gpt2Params::At(Gpt2Kind kind, int layer) const {
  switch (kind) {
    case Gpt2Kind::kWte:
      return tensors_[0];
    case Gpt2Kind::kWpe:
      return tensors_[1];
    case Gpt2Kind::kLnfW:
      return tensors_[tensors_.size() - 2];
    case Gpt2Kind::kLnfB:
      return tensors_[tensors_.size() - 1];
    default:
      return tensors_[2 + static_cast<size_t>(layer) * kPerLayerKinds +
                      (static_cast<int>(kind) - static_cast<int>(Gpt2Kind::kLn1W))];
  }
}

}  // namespace fjord
