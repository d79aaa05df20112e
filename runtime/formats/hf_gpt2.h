// Weights to and from Hugging Face transformers' GPT2LMHeadModel: a directory with
// model.safetensors and config.json, which `GPT2LMHeadModel.from_pretrained(dir)` loads as is.
//
// Mapping (ours -> HF state dict):
//   wte.weight [Vp, C]             -> transformer.wte.weight [V, C]: the first V rows; the padded
//                                     rows are dropped on export and zeroed on import
//   wpe.weight, h.L.ln_{1,2}.*, h.L.*.bias, ln_f.*  -> transformer.<same name>, same shape
//   h.L.attn.c_attn.weight [3C, C] -> transformer.h.L.attn.c_attn.weight [C, 3C] (transposed: HF's
//   h.L.attn.c_proj.weight [C, C]  -> ... [C, C] (transposed)        Conv1D computes x @ W + b,
//   h.L.mlp.c_fc.weight [4C, C]    -> ... [C, 4C] (transposed)       we store output rows,
//   h.L.mlp.c_proj.weight [C, 4C]  -> ... [4C, C] (transposed)       like llm.c)
//   lm_head.weight: tied to wte; not written, and on import accepted only if equal to wte.
//
// Export writes F32 and the metadata {"format": "pt"} transformers requires. Import accepts the
// names with or without the "transformer." prefix (GPT2Model checkpoints such as the original
// gpt2 upload have none), F32/F16/BF16 data, and ignores the attention mask buffers
// (h.L.attn.bias, h.L.attn.masked_bias) older transformers versions saved. config.json options
// that change the math (activation, LayerNorm epsilon, MLP width, untied head, attention
// scaling) are refused unless they match fjord's GPT-2, so an import never silently computes a
// different function.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/formats/gpt2_params.h"

namespace fjord {

// Writes DIR/model.safetensors and DIR/config.json (creating DIR), each file atomically, for
// the model `dims` whose parameters sit at `slots` in `params` (buffer_floats floats).
Status ExportHfGpt2(const std::string& dir, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                    const float* params, size_t buffer_floats);

// Reads DIR/config.json into dims (max_seq_len = n_positions, padded_vocab = vocab_size rounded
// up to 128), refusing a non-GPT-2 config or options fjord's model does not implement.
StatusOr<Gpt2Dims> ReadHfGpt2Config(const std::string& dir);

// Fills the tensors at `slots` in `params` from DIR/model.safetensors after checking that
// DIR/config.json describes `dims`; padded wte rows are set to zero. Bytes of `params` outside
// the slots are not touched. On error `params` may be partly written.
Status ImportHfGpt2(const std::string& dir, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                    float* params, size_t buffer_floats);

}  // namespace fjord
