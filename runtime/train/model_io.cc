#include "runtime/train/model_io.h"

#include <cstdio>
#include <filesystem>
#include <optional>
#include <vector>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/device/device.h"
#include "runtime/formats/hf_gpt2.h"
#include "runtime/formats/hf_llama.h"
#include "runtime/formats/llmc_checkpoint.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"

namespace fjord {
namespace fs = std::filesystem;

StatusOr<ModelFormat> ParseModelFormat(const std::string& name) {
  if (name == "hf") return ModelFormat::kHuggingFace;
  if (name == "llmc") return ModelFormat::kLlmc;
  if (name == "llmc-bf16") return ModelFormat::kLlmcBf16;
  return InvalidArgument("--format '" + name +
                         "' is not one of hf (Hugging Face safetensors + config.json), "
                         "llmc (llm.c fp32 checkpoint), llmc-bf16 (llm.c bf16 checkpoint)");
}

std::vector<ParamSlot> SlotsOf(const ParamLayout& layout) {
  std::vector<ParamSlot> slots;
  for (const ParamTensor& t : layout.tensors()) slots.push_back(ParamSlot{t.name, t.shape, t.offset});
  return slots;
}

Gpt2Dims DimsOf(const GptConfig& c) {
  return Gpt2Dims{c.n_layer, c.n_head, c.n_embd, c.max_seq_len, c.vocab_size, c.padded_vocab};
}

Status ExportModel(const std::string& checkpoint, const std::string& out, ModelFormat format,
                   const CheckpointAccess& access) {
  FJORD_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpointDir(checkpoint));
  FJORD_ASSIGN_OR_RETURN(proto::JobSpec job, LoadCheckpointJob(dir));
  CheckpointAccess export_access = access;
  export_access.use = CheckpointUse::kExport;
  FJORD_ASSIGN_OR_RETURN(OpenedCheckpoint opened, OpenCheckpointOutsideJob(dir, job, export_access));
  const GptConfig config = GptConfig::FromSpec(job.model());
  if (config.llama() && format != ModelFormat::kHuggingFace) {
    return opened.Refuse(
        dir, CheckpointUse::kExport,
        FailedPrecondition(dir + "/job.textproto: model.arch is LLAMA, but --format " +
                           (format == ModelFormat::kLlmc ? "llmc" : "llmc-bf16") +
                           " writes llm.c's GPT-2 file only; export a Llama-family model with --format hf"));
  }
  // The export writes one more copy of the weights (transposed tensors, the file's buffer).
  if (Status fits = Gpt::CheckMemory(config, 1, 1, 1, 1, CpuDevice(),
                                     "export on a host with more memory, or check that " + dir +
                                         "/job.textproto describes the model that was trained");
      !fits.ok()) {
    return opened.Refuse(dir, CheckpointUse::kExport, fits.WithContext(dir));
  }
  Gpt model(config, 1, 1, CpuOps());
  if (Status s = LoadCheckpointWeights(dir, model, &opened.seal); !s.ok()) {
    return opened.Refuse(dir, CheckpointUse::kExport, s);
  }
  const std::vector<ParamSlot> slots = SlotsOf(model.layout());
  Status written = Internal("unknown model format");
  switch (format) {
    case ModelFormat::kHuggingFace:
      written = config.llama()
                    ? ExportHfLlama(out, HfLlamaConfigOf(config), slots, model.params(), model.buffer_size())
                    : ExportHfGpt2(out, DimsOf(config), slots, model.params(), model.buffer_size());
      break;
    case ModelFormat::kLlmc:
    case ModelFormat::kLlmcBf16:
      written =
          WriteLlmcCheckpoint(out, DimsOf(config), slots, model.params(), model.buffer_size(),
                              format == ModelFormat::kLlmc ? LlmcPrecision::kFp32 : LlmcPrecision::kBf16);
      break;
  }
  if (!opened.audit.empty()) {
    std::error_code ec;
    const fs::path absolute = fs::absolute(out, ec);
    AuditRecord rec;
    rec.Str("dir", dir)
        .Str("tenant", opened.tenant)
        .Str("out", ec ? out : absolute.string())
        .Str("format", format == ModelFormat::kHuggingFace ? "hf"
                       : format == ModelFormat::kLlmc      ? "llmc"
                                                           : "llmc-bf16")
        .Bool("plaintext", true)
        .Bool("was_encrypted", opened.seal.key != nullptr)
        .Bool("ok", written.ok());
    if (!written.ok()) rec.Str("error", written.message());
    FJORD_RETURN_IF_ERROR(opened.Record("checkpoint_exported", rec));
  }
  return written;
}

HfLlamaConfig HfLlamaConfigOf(const GptConfig& c) {
  HfLlamaConfig h;
  h.model_type = c.attention_bias ? "qwen2" : "llama";
  h.n_layer = c.n_layer;
  h.n_head = c.n_head;
  h.n_kv_head = c.n_kv_head;
  h.n_embd = c.n_embd;
  h.intermediate_size = c.intermediate_size;
  h.max_position_embeddings = c.max_seq_len;
  h.vocab_size = c.vocab_size;
  h.padded_vocab = c.padded_vocab;
  h.rms_norm_eps = c.rms_norm_eps;
  h.rope_theta = c.rope_theta;
  h.rope_llama3 = c.rope_llama3;
  h.rope_factor = c.rope_factor;
  h.rope_low_freq_factor = c.rope_low_freq_factor;
  h.rope_high_freq_factor = c.rope_high_freq_factor;
  h.rope_original_max_position = c.rope_original_max_position;
  h.attention_bias = c.attention_bias;
  h.tie_embeddings = c.tie_embeddings;
  return h;
}

namespace {

// The model section of a job spec for an imported Llama-family config.
std::string LlamaModelText(const HfLlamaConfig& h) {
  const auto num = [](double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return std::string(buf);
  };
  std::string t = "model { arch: LLAMA n_layer: " + std::to_string(h.n_layer) +
                  " n_head: " + std::to_string(h.n_head) + " n_kv_head: " + std::to_string(h.n_kv_head) +
                  " n_embd: " + std::to_string(h.n_embd) +
                  " seq_len: " + std::to_string(h.max_position_embeddings) +
                  " vocab_size: " + std::to_string(h.vocab_size) +
                  " intermediate_size: " + std::to_string(h.intermediate_size) +
                  " rms_norm_eps: " + num(h.rms_norm_eps) + " rope_theta: " + num(h.rope_theta);
  if (h.rope_llama3) {
    t += " rope_scaling { rope_type: LLAMA3 factor: " + num(h.rope_factor) +
         " low_freq_factor: " + num(h.rope_low_freq_factor) +
         " high_freq_factor: " + num(h.rope_high_freq_factor) +
         " original_max_position_embeddings: " + std::to_string(h.rope_original_max_position) + " }";
  }
  t += std::string(" attention_bias: ") + (h.attention_bias ? "true" : "false") +
       " tie_embeddings: " + (h.tie_embeddings ? "true" : "false") + " }\n";
  return t;
}

// config.json's model_type ("gpt2" where it is missing or unreadable: the GPT-2 reader reports that).
std::string HfModelType(const std::string& dir) {
  StatusOr<std::string> text = ReadWholeFile(dir + "/config.json", "Hugging Face config");
  if (!text.ok()) return "gpt2";
  StatusOr<JsonValue> json = ParseJson(*text, dir + "/config.json");
  if (!json.ok()) return "gpt2";
  const JsonValue* type = json->Find("model_type");
  return type && type->is_string() ? type->text() : "gpt2";
}

}  // namespace

Status ImportModel(const std::string& source, ModelFormat format, const std::string& out_dir) {
  Gpt2Dims dims;
  std::optional<HfLlamaConfig> llama;
  if (format == ModelFormat::kHuggingFace && HfModelType(source) != "gpt2") {
    FJORD_ASSIGN_OR_RETURN(llama, ReadHfLlamaConfig(source));
    dims.vocab_size = llama->vocab_size;
    dims.padded_vocab = llama->padded_vocab;
  } else if (format == ModelFormat::kHuggingFace) {
    FJORD_ASSIGN_OR_RETURN(dims, ReadHfGpt2Config(source));
  } else {
    FJORD_ASSIGN_OR_RETURN(LlmcHeader header, ReadLlmcHeader(source));
    dims = header.dims;
  }
  const std::string model_text =
      llama
          ? LlamaModelText(*llama)
          : "model { n_layer: " + std::to_string(dims.n_layer) + " n_head: " + std::to_string(dims.n_head) +
                " n_embd: " + std::to_string(dims.n_embd) + " seq_len: " + std::to_string(dims.max_seq_len) +
                " vocab_size: " + std::to_string(dims.vocab_size) + " }\n";
  // The data fields only document where the weights came from: an imported checkpoint is used
  // by sample and eval, or as train.init_from of a job that names its own data.
  FJORD_ASSIGN_OR_RETURN(proto::JobSpec job,
                         ParseJobSpec(model_text + "data { train: \"(imported from " + source +
                                          ")\" }\nrun_dir: \"" + out_dir + "\"\n",
                                      "<import of " + source + ">", {}));
  const GptConfig config = GptConfig::FromSpec(job.model());
  if (config.padded_vocab != dims.padded_vocab) {
    return InvalidArgument(source + ": padded vocabulary " + std::to_string(dims.padded_vocab) +
                           " differs from fjord's padding of " + std::to_string(dims.vocab_size) + " to " +
                           std::to_string(config.padded_vocab) +
                           " (a multiple of 128); write the file with that padding (llm.c's own) or import "
                           "a Hugging Face export of the model instead");
  }
  // The zero AdamW state written with the weights: one more buffer of the parameters' size.
  FJORD_RETURN_IF_ERROR(
      Gpt::CheckMemory(config, 1, 1, 1, 1, CpuDevice(),
                       "import on a host with more memory, or check the model's dimensions in " + source)
          .WithContext("cannot import " + source));
  Gpt model(config, 1, 1, CpuOps());
  const std::vector<ParamSlot> slots = SlotsOf(model.layout());
  if (llama) {
    FJORD_RETURN_IF_ERROR(ImportHfLlama(source, *llama, slots, model.params(), model.buffer_size()));
  } else if (format == ModelFormat::kHuggingFace) {
    FJORD_RETURN_IF_ERROR(ImportHfGpt2(source, dims, slots, model.params(), model.buffer_size()));
  } else {
    FJORD_RETURN_IF_ERROR(ReadLlmcCheckpoint(source, dims, slots, model.params(), model.buffer_size()));
  }
  const std::vector<float> zeros(model.num_params(), 0.0f);
  // SaveCheckpoint writes OUT/step_000000; move it to OUT itself so OUT is the checkpoint.
  const fs::path staging = fs::path(out_dir).string() + ".import";
  FJORD_ASSIGN_OR_RETURN(std::string written, SaveCheckpoint(staging.string(), CheckpointState{}, job, model,
                                                             zeros.data(), zeros.data()));
  std::error_code ec;
  if (fs::exists(out_dir))
    return FailedPrecondition(out_dir + " exists; choose a new directory for the import");
  fs::rename(written, out_dir, ec);
  if (ec) return Internal("cannot move " + written + " to " + out_dir + ": " + ec.message());
  fs::remove_all(staging, ec);
  return OkStatus();
}

}  // namespace fjord
