#include "runtime/train/model_io.h"

#include <filesystem>
#include <vector>

#include "runtime/device/device.h"
#include "runtime/formats/hf_gpt2.h"
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
  if (config.llama()) {
    return opened.Refuse(
        dir, CheckpointUse::kExport,
        FailedPrecondition(
            dir + "/job.textproto: model.arch is LLAMA, but fjord export writes GPT-2 models only "
                  "(--format hf: GPT2LMHeadModel; llmc, llmc-bf16: llm.c's GPT-2 file); the Llama "
                  "family's Hugging Face export is not implemented yet: use the checkpoint with fjord "
                  "train, eval and sample"));
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
      written = ExportHfGpt2(out, DimsOf(config), slots, model.params(), model.buffer_size());
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

Status ImportModel(const std::string& source, ModelFormat format, const std::string& out_dir) {
  Gpt2Dims dims;
  if (format == ModelFormat::kHuggingFace) {
    FJORD_ASSIGN_OR_RETURN(dims, ReadHfGpt2Config(source));
  } else {
    FJORD_ASSIGN_OR_RETURN(LlmcHeader header, ReadLlmcHeader(source));
    dims = header.dims;
  }
  const std::string model_text =
      "model { n_layer: " + std::to_string(dims.n_layer) + " n_head: " + std::to_string(dims.n_head) +
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
  if (format == ModelFormat::kHuggingFace) {
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
