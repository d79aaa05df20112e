// Moving a model in and out of fjord: Hugging Face GPT-2 (safetensors + config.json) and llm.c
// checkpoints, to and from fjord checkpoint directories (runtime/train/checkpoint.h). The formats
// themselves live in fjord_formats (hf_gpt2.h, llmc_checkpoint.h); this file maps our
// ParamLayout onto them.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/formats/gpt2_params.h"
#include "runtime/formats/hf_llama.h"
#include "runtime/model/gpt.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

enum class ModelFormat { kHuggingFace, kLlmc, kLlmcBf16 };

// "hf", "llmc", "llmc-bf16"; anything else is an error listing these.
StatusOr<ModelFormat> ParseModelFormat(const std::string& name);

std::vector<ParamSlot> SlotsOf(const ParamLayout& layout);
Gpt2Dims DimsOf(const GptConfig& config);
// A Llama-family model's Hugging Face config (Qwen2ForCausalLM when it has q/k/v biases, else
// LlamaForCausalLM).
HfLlamaConfig HfLlamaConfigOf(const GptConfig& config);

// Writes the weights of the checkpoint at `checkpoint` (see ResolveCheckpointDir) to `out`:
// a directory with model.safetensors and config.json for kHuggingFace, a file for llm.c.
// A tenant's checkpoint passes OpenCheckpointOutsideJob with `access` first (a sealed one needs
// access.key_file: writing its weights out in plaintext is explicit); after writing, the export
// is recorded in the audit log as "checkpoint_exported" (plaintext, out, format, tenant).
Status ExportModel(const std::string& checkpoint, const std::string& out, ModelFormat format,
                   const CheckpointAccess& access = {});

// Reads weights from `source` (an HF directory, or an llm.c .bin file) and writes a fjord
// checkpoint directory at `out_dir` (weights, zero AdamW state, a job spec with the model's
// dimensions) that `fjord sample`, `fjord eval` and train.init_from accept.
Status ImportModel(const std::string& source, ModelFormat format, const std::string& out_dir);

}  // namespace fjord
