// The GPT-2 parameter set as the interchange formats (Hugging Face, llm.c) see it, decoupled from
// the model code: callers describe their flat parameter buffer as a list of slots (name, shape,
// offset in floats), which is what ParamLayout::tensors() holds, and the formats look tensors up
// here by kind and layer.
//
// Names and shapes are ours (runtime/model/gpt.h): "wte.weight" [padded_vocab, C], "wpe.weight"
// [max_seq_len, C], "h.L.ln_1.weight" [C], "h.L.attn.c_attn.weight" [3C, C] (output rows, like
// llm.c), ..., "ln_f.bias" [C]. Matching a layout refuses a missing, duplicated, unknown or
// misshapen tensor and slots that overlap or leave the buffer, so a format never writes outside
// the tensor it means.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/status.h"

namespace fjord {

// Model dimensions. padded_vocab >= vocab_size is the number of wte rows in our buffer.
struct Gpt2Dims {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int max_seq_len = 0;
  int vocab_size = 0;
  int padded_vocab = 0;

  // vocab_size rounded up to a multiple of 128, as the model pads it.
  static int PadVocab(int vocab_size) { return (vocab_size + 127) / 128 * 128; }
};

// Refuses non-positive sizes, n_embd not divisible by n_head and padded_vocab < vocab_size.
Status ValidateGpt2Dims(const Gpt2Dims& dims);

// One tensor of the caller's flat float buffer.
struct ParamSlot {
  std::string name;
  std::vector<int> shape;
  size_t offset = 0;  // in floats
};

// Tensor kinds in llm.c's checkpoint order (each kind for all layers together).
enum class Gpt2Kind {
  kWte,
  kWpe,
  kLn1W,
  kLn1B,
  kQkvW,
  kQkvB,
  kAttprojW,
  kAttprojB,
  kLn2W,
  kLn2B,
  kFcW,
  kFcB,
  kFcprojW,
  kFcprojB,
  kLnfW,
  kLnfB
};
inline constexpr int kNumGpt2Kinds = 16;
// True for the kinds that exist once per layer.
inline bool IsPerLayer(Gpt2Kind kind) {
  return kind != Gpt2Kind::kWte && kind != Gpt2Kind::kWpe && kind != Gpt2Kind::kLnfW &&
         kind != Gpt2Kind::kLnfB;
}

struct Gpt2Tensor {
  Gpt2Kind kind;
  int layer = -1;    // -1 for wte, wpe, ln_f
  std::string name;  // our name, e.g. "h.3.mlp.c_fc.weight"
  std::vector<int> shape;
  size_t offset = 0;  // in floats, into the caller's buffer
  size_t size() const;
};

// The tensors of a model with `dims`, each placed at the offset of the caller's slot.
class Gpt2Params {
 public:
  // Matches `slots` against the tensors `dims` implies; every slot must lie inside a buffer of
  // `buffer_floats` floats. Errors start with `what` (e.g. "cannot export to DIR").
  static StatusOr<Gpt2Params> Match(const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                                    size_t buffer_floats, const std::string& what);

  const Gpt2Dims& dims() const { return dims_; }
  // Layer-major forward order: wte, wpe, h.0.* (ln_1 .. mlp.c_proj), ..., ln_f.weight, ln_f.bias.
  const std::vector<Gpt2Tensor>& tensors() const { return tensors_; }
  // The tensor of `kind` in `layer` (layer ignored for global kinds).
  const Gpt2Tensor& At(Gpt2Kind kind, int layer = 0) const;

 private:
  Gpt2Dims dims_;
  std::vector<Gpt2Tensor> tensors_;
};

}  // namespace fjord
