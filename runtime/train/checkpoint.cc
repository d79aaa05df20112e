#include "runtime/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/env.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "runtime/train/config.h"

namespace fjord {
namespace fs = std::filesystem;

namespace {

enum HeaderField {
  kMagic,
  kVersion,
  kNLayer,
  kNHead,
  kNEmbd,
  kMaxSeq,
  kVocab,
  kPaddedVocab,
  kParamsLo,
  kParamsHi,
  kStep,
  // The Llama family (0 for GPT-2, so GPT-2 headers are those of earlier versions): arch, key/value
  // heads, SwiGLU width, flags (1: attention_bias, 2: tie_embeddings).
  kArch,
  kNKvHead,
  kIntermediate,
  kArchFlags,
  kHeaderInts = 256
};

std::vector<int32_t> MakeHeader(const Gpt& model, int step) {
  std::vector<int32_t> h(kHeaderInts, 0);
  const GptConfig& c = model.config();
  h[kMagic] = kModelMagic;
  h[kVersion] = kModelVersion;
  h[kNLayer] = c.n_layer;
  h[kNHead] = c.n_head;
  h[kNEmbd] = c.n_embd;
  h[kMaxSeq] = c.max_seq_len;
  h[kVocab] = c.vocab_size;
  h[kPaddedVocab] = c.padded_vocab;
  const uint64_t n = model.num_params();
  h[kParamsLo] = static_cast<int32_t>(n & 0xffffffffu);
  h[kParamsHi] = static_cast<int32_t>(n >> 32);
  h[kStep] = step;
  if (c.llama()) {
    h[kArch] = 1;
    h[kNKvHead] = c.n_kv_head;
    h[kIntermediate] = c.intermediate_size;
    h[kArchFlags] = (c.attention_bias ? 1 : 0) | (c.tie_embeddings ? 2 : 0);
  }
  return h;
}

std::string ErrnoText() { return std::strerror(errno); }

// Writes the pieces to `path`, a new file (never through anything planted there), and fsyncs it.
Status WriteFileSynced(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces,
                       mode_t mode) {
  FJORD_ASSIGN_OR_RETURN(Fd fd, CreateNewFile(path, mode, "checkpoint"));
  for (const auto& [data, bytes] : pieces) FJORD_RETURN_IF_ERROR(WriteAll(fd.get(), data, bytes, path));
  if (::fsync(fd.get()) != 0 || !fd.Close()) return Internal("cannot flush " + path + ": " + ErrnoText());
  return OkStatus();
}

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string StepName(int step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%06d", step);
  return name;
}

}  // namespace

StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir, const CheckpointState& state,
                                     const proto::JobSpec& job, const Gpt& model, const float* adam_m,
                                     const float* adam_v, const CheckpointSeal* seal, const float* params) {
  const int step = state.step;
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec) return Internal("cannot create checkpoint directory " + checkpoints_dir + ": " + ec.message());
  const std::string final_dir = (fs::path(checkpoints_dir) / StepName(step)).string();
  // A tenant's checkpoint is private to the job's user from the moment it exists: directory 0700,
  // files 0600 (docs/SOVEREIGNTY.md, "Files fjord writes"). The temporary directory has a random
  // name and must be new, so nothing planted beside the checkpoints can receive its files.
  const bool tenant = seal != nullptr && !seal->tenant.empty();
  const mode_t dir_mode = tenant ? 0700 : 0755, file_mode = tenant ? 0600 : 0644;
  const std::string job_text = JobSpecToText(job);
  FJORD_ASSIGN_OR_RETURN(const std::string job_sha256, Sha256Hex(job_text));
  const std::string tmp_dir = RandomTempName(final_dir);
  FJORD_RETURN_IF_ERROR(
      CreateNewDirectory(tmp_dir, dir_mode, "writing checkpoint for step " + std::to_string(step)));

  const std::vector<int32_t> header = MakeHeader(model, step);
  const size_t header_bytes = header.size() * sizeof(int32_t);
  const size_t param_bytes = model.num_params() * sizeof(float);
  struct File {
    const char* name;
    std::vector<std::pair<const void*, size_t>> pieces;
  };
  const File files[] = {
      {"model.bin",
       {{header.data(), header_bytes}, {params != nullptr ? params : model.host_params(), param_bytes}}},
      {"optimizer.bin", {{header.data(), header_bytes}, {adam_m, param_bytes}, {adam_v, param_bytes}}},
      {"job.textproto", {{job_text.data(), job_text.size()}}},
  };
  // The seal of this checkpoint: the job's, with the job digest and step that every sealed file's
  // authenticated data binds (runtime/tenancy/tenancy.h).
  CheckpointSeal file_seal;
  if (seal != nullptr) {
    file_seal = *seal;
    file_seal.job_sha256 = job_sha256;
    file_seal.step = step;
  }
  static const std::optional<std::string> crash_hook = TestHook("crash_in_checkpoint");
  std::string manifest_files;
  Status s;
  for (const File& f : files) {
    const std::string path = tmp_dir + "/" + f.name;
    if (seal != nullptr && seal->key && std::string(f.name) != "job.textproto") {
      // Tensors are sealed with the tenant's key (AES-256-GCM), the tenant and file name bound in.
      std::vector<ByteSpan> spans;
      for (const auto& [data, size] : f.pieces) spans.push_back({data, size});
      s = WriteCheckpointFile(path, spans, file_seal);
    } else {
      s = WriteFileSynced(path, f.pieces, file_mode);
    }
    if (!s.ok()) break;
    if (crash_hook && std::atoi(crash_hook->c_str()) == step) {
      std::fprintf(stderr, "fjord: TEST HOOK crash_in_checkpoint: exiting after writing %s of step %d\n",
                   path.c_str(), step);
      std::_Exit(3);
    }
    StatusOr<std::string> digest = Sha256File(path, "checkpoint file");
    if (!digest.ok()) {
      s = digest.status();
      break;
    }
    const size_t bytes = fs::file_size(path, ec);  // on disk: sealed files are larger
    if (!manifest_files.empty()) manifest_files += ",\n";
    manifest_files += "    \"" + std::string(f.name) + "\": {\"bytes\": " + std::to_string(bytes) +
                      ", \"sha256\": \"" + *digest + "\"}";
  }
  if (s.ok()) {
    const std::string manifest =
        "{\n  \"format\": \"fjord-checkpoint\",\n  \"version\": 2,\n  \"step\": " + std::to_string(step) +
        ",\n  \"sequences_consumed\": " + std::to_string(state.sequences_consumed) +
        ",\n  \"world_size\": " + std::to_string(state.world_size) +
        ",\n  \"zero_stage\": " + std::to_string(state.zero_stage) +
        ",\n  \"seed\": " + std::to_string(state.seed) + ",\n  \"job_sha256\": \"" + job_sha256 +
        "\",\n  \"written_utc\": \"" + UtcNow() + "\",\n  \"files\": {\n" + manifest_files + "\n  }\n}\n";
    s = WriteFileSynced(tmp_dir + "/manifest.json", {{manifest.data(), manifest.size()}}, file_mode);
  }
  // The tenant record last: it holds the digests of every file above, manifest.json included, so
  // the manifest's step and data position are as authenticated as the tensors.
  if (s.ok() && seal != nullptr) {
    s = WriteCheckpointTenantRecord(tmp_dir, file_seal,
                                    {"model.bin", "optimizer.bin", "job.textproto", "manifest.json"});
  }
  if (!s.ok()) {
    fs::remove_all(tmp_dir, ec);
    return s.WithContext("writing checkpoint for step " + std::to_string(step) +
                         " (the previous checkpoints are intact)");
  }
  FsyncDir(tmp_dir);
  // A checkpoint of the same step (a re-run) is replaced only once the new one is complete.
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return Internal("cannot rename " + tmp_dir + " to " + final_dir + ": " + ec.message());
  FsyncDir(checkpoints_dir);
  return final_dir;
}

std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir) {
  std::vector<std::string> dirs;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return dirs;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool digits = name.size() > 5 && name.find_first_not_of("0123456789", 5) == std::string::npos;
    if (name.starts_with("step_") && digits && entry.is_directory()) dirs.push_back(entry.path().string());
  }
  // Newest first: by step number (names are zero-padded, but may outgrow the padding).
  std::sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) {
    const std::string na = fs::path(a).filename().string(), nb = fs::path(b).filename().string();
    return na.size() != nb.size() ? na.size() > nb.size() : na > nb;
  });
  return dirs;
}

Status PruneCheckpoints(const std::string& checkpoints_dir, int keep_last) {
  std::error_code ec;
  const std::vector<std::string> dirs = ListCheckpoints(checkpoints_dir);
  for (size_t i = keep_last > 0 ? static_cast<size_t>(keep_last) : dirs.size(); i < dirs.size(); ++i) {
    fs::remove_all(dirs[i], ec);
    if (ec) return Internal("cannot remove old checkpoint " + dirs[i] + ": " + ec.message());
  }
  return OkStatus();
}

namespace {

StatusOr<JsonValue> ReadManifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "manifest.json").string();
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "checkpoint manifest"));
  StatusOr<JsonValue> json = ParseJson(text, path);
  if (!json.ok()) return DataLoss(json.status().message() + " (damaged checkpoint)");
  if (!json->is_object() || json->Find("format") == nullptr ||
      json->Find("format")->text() != "fjord-checkpoint") {
    return DataLoss(path + ": not a fjord checkpoint manifest (no \"format\": \"fjord-checkpoint\")");
  }
  return json;
}

StatusOr<uint64_t> ManifestUint(const JsonValue& manifest, const std::string& dir, const char* key) {
  const JsonValue* v = manifest.Find(key);
  std::optional<uint64_t> n = v != nullptr ? v->AsUint64() : std::nullopt;
  if (!n) return DataLoss(dir + "/manifest.json: field \"" + key + "\" is missing or not a whole number");
  return *n;
}

}  // namespace

Status VerifyCheckpoint(const std::string& dir) {
  FJORD_ASSIGN_OR_RETURN(JsonValue manifest, ReadManifest(dir));
  const JsonValue* files = manifest.Find("files");
  if (files == nullptr || !files->is_object() || files->object().empty()) {
    return DataLoss(dir + "/manifest.json: no \"files\" listed");
  }
  for (const auto& [name, entry] : files->object()) {
    // Only plain names of regular files: a manifest must not make the reader open files outside
    // the checkpoint.
    if (!IsPlainFileName(name)) {
      return DataLoss(dir + "/manifest.json: file name " + JsonQuote(name) +
                      " is not a plain file name in the checkpoint");
    }
    const std::string path = (fs::path(dir) / name).string();
    if (std::error_code lec; fs::is_symlink(fs::symlink_status(path, lec))) {
      return DataLoss(path + ": a symbolic link (listed in manifest.json), not a file of the checkpoint");
    }
    const JsonValue* bytes = entry.Find("bytes");
    const JsonValue* sha = entry.Find("sha256");
    if (bytes == nullptr || !bytes->AsUint64() || sha == nullptr || !sha->is_string()) {
      return DataLoss(dir + "/manifest.json: entry for " + name + " lacks bytes or sha256");
    }
    std::error_code ec;
    if (!fs::exists(path, ec)) return DataLoss(path + ": missing (listed in manifest.json)");
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return DataLoss(path + ": not a regular file (" + ec.message() + "; listed in manifest.json)");
    if (size != *bytes->AsUint64()) {
      return DataLoss(path + ": " + std::to_string(size) + " bytes, manifest.json says " +
                      std::to_string(*bytes->AsUint64()) + " (truncated or replaced)");
    }
    FJORD_ASSIGN_OR_RETURN(std::string digest, Sha256File(path, "checkpoint file"));
    if (digest != sha->text()) {
      return DataLoss(path + ": sha256 " + digest + " does not match manifest.json's " + sha->text() +
                      " (the file was modified or corrupted)");
    }
  }
  return OkStatus();
}

StatusOr<CheckpointState> ReadCheckpointState(const std::string& dir) {
  FJORD_ASSIGN_OR_RETURN(JsonValue manifest, ReadManifest(dir));
  CheckpointState state;
  FJORD_ASSIGN_OR_RETURN(uint64_t step, ManifestUint(manifest, dir, "step"));
  FJORD_ASSIGN_OR_RETURN(state.sequences_consumed, ManifestUint(manifest, dir, "sequences_consumed"));
  FJORD_ASSIGN_OR_RETURN(uint64_t world, ManifestUint(manifest, dir, "world_size"));
  FJORD_ASSIGN_OR_RETURN(uint64_t zero, ManifestUint(manifest, dir, "zero_stage"));
  FJORD_ASSIGN_OR_RETURN(state.seed, ManifestUint(manifest, dir, "seed"));
  state.step = static_cast<int>(step);
  state.world_size = static_cast<int>(world);
  state.zero_stage = static_cast<int>(zero);
  const std::pair<const char*, std::string*> texts[] = {{"job_sha256", &state.job_sha256},
                                                        {"written_utc", &state.written_utc}};
  for (const auto& [key, out] : texts) {
    if (const JsonValue* v = manifest.Find(key); v != nullptr && v->is_string()) *out = v->text();
  }
  return state;
}

std::string DescribeCheckpoint(const std::string& dir) {
  StatusOr<CheckpointState> state = ReadCheckpointState(dir);
  if (!state.ok()) return dir + " (" + state.status().message() + ")";
  return dir + " (step " + std::to_string(state->step) + ", job sha256 " + state->job_sha256.substr(0, 12) +
         ", written " + (state->written_utc.empty() ? "at an unrecorded time" : state->written_utc) + ")";
}

StatusOr<std::string> NewestGoodCheckpoint(const std::string& checkpoints_dir,
                                           std::vector<std::string>* skipped) {
  const std::vector<std::string> dirs = ListCheckpoints(checkpoints_dir);
  for (const std::string& dir : dirs) {
    Status s = VerifyCheckpoint(dir);
    if (s.ok()) return dir;
    if (skipped != nullptr) skipped->push_back(dir + ": " + s.message());
  }
  return NotFound(dirs.empty() ? "no checkpoint in " + checkpoints_dir
                               : "no intact checkpoint in " + checkpoints_dir + " (" +
                                     std::to_string(dirs.size()) + " damaged)");
}

StatusOr<std::string> ResolveCheckpointDir(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("checkpoint " + path + " does not exist");
  if (fs::exists(fs::path(path) / "model.bin")) return path;
  for (const fs::path& base : {fs::path(path), fs::path(path) / "checkpoints"}) {
    if (!fs::is_directory(base, ec)) continue;
    std::string newest;
    for (const auto& entry : fs::directory_iterator(base, ec)) {
      const std::string name = entry.path().filename().string();
      if (name.starts_with("step_") && name.find('.') == std::string::npos &&
          fs::exists(entry.path() / "model.bin") && name > fs::path(newest).filename().string()) {
        newest = entry.path().string();
      }
    }
    if (!newest.empty()) return newest;
  }
  return NotFound("no checkpoint in " + path +
                  ": expected a step directory with model.bin, or a run directory with checkpoints/step_*");
}

StatusOr<proto::JobSpec> LoadCheckpointJob(const std::string& dir) {
  return LoadJobSpec((fs::path(dir) / "job.textproto").string(), {});
}

Status LoadCheckpointWeights(const std::string& dir, Gpt& model, const CheckpointSeal* seal, float* into) {
  const std::string path = (fs::path(dir) / "model.bin").string();
  FJORD_ASSIGN_OR_RETURN(std::string contents, ReadCheckpointFile(path, seal ? *seal : CheckpointSeal()));
  std::istringstream in(std::move(contents), std::ios::binary);
  std::vector<int32_t> header(kHeaderInts);
  in.read(reinterpret_cast<char*>(header.data()), kHeaderInts * sizeof(int32_t));
  if (!in) return DataLoss(path + ": shorter than its 1024-byte header (truncated checkpoint)");
  if (header[kMagic] != kModelMagic) {
    return DataLoss(path + ": magic " + std::to_string(header[kMagic]) + " is not fjord's " +
                    std::to_string(kModelMagic) + " (not a fjord checkpoint)");
  }
  if (header[kVersion] != kModelVersion) {
    return DataLoss(path + ": version " + std::to_string(header[kVersion]) + " is not supported (expected " +
                    std::to_string(kModelVersion) +
                    "): it was written by another fjord version; read it with that version");
  }
  const std::vector<int32_t> expected = MakeHeader(model, header[kStep]);
  static const char* kNames[] = {"magic",
                                 "version",
                                 "model.n_layer",
                                 "model.n_head",
                                 "model.n_embd",
                                 "model.seq_len",
                                 "model.vocab_size",
                                 "padded vocab",
                                 "parameter count",
                                 "parameter count",
                                 "step",
                                 "model.arch (0 GPT2, 1 LLAMA)",
                                 "model.n_kv_head",
                                 "model.intermediate_size",
                                 "model.attention_bias + 2 x model.tie_embeddings"};
  // The architecture first (a GPT-2 checkpoint under a Llama job differs in everything), then the shape.
  for (int f : {kArch, kNKvHead, kIntermediate, kArchFlags, kNLayer, kNHead, kNEmbd, kMaxSeq, kVocab,
                kPaddedVocab, kParamsLo, kParamsHi}) {
    if (header[f] != expected[f]) {
      return FailedPrecondition(path + ": " + kNames[f] + " is " + std::to_string(header[f]) +
                                " in the checkpoint but " + std::to_string(expected[f]) + " in the model");
    }
  }
  in.read(reinterpret_cast<char*>(into != nullptr ? into : model.host_params()),
          static_cast<std::streamsize>(model.num_params() * sizeof(float)));
  if (!in)
    return DataLoss(path + ": file ends before all " + std::to_string(model.num_params()) +
                    " parameters were read (truncated checkpoint)");
  if (into == nullptr) model.SyncParamsToDevice();
  return OkStatus();
}

Status LoadCheckpointOptimizer(const std::string& dir, const Gpt& model, float* adam_m, float* adam_v,
                               const CheckpointSeal* seal) {
  const std::string path = (fs::path(dir) / "optimizer.bin").string();
  FJORD_ASSIGN_OR_RETURN(std::string contents, ReadCheckpointFile(path, seal ? *seal : CheckpointSeal()));
  std::istringstream in(std::move(contents), std::ios::binary);
  std::vector<int32_t> header(kHeaderInts);
  in.read(reinterpret_cast<char*>(header.data()), kHeaderInts * sizeof(int32_t));
  if (!in || header[kMagic] != kModelMagic)
    return DataLoss(path + ": not a fjord optimizer state (bad header)");
  const std::vector<int32_t> expected = MakeHeader(model, header[kStep]);
  if (!std::equal(expected.begin() + kNLayer, expected.begin() + kParamsHi + 1, header.begin() + kNLayer) ||
      !std::equal(expected.begin() + kArch, expected.begin() + kArchFlags + 1, header.begin() + kArch)) {
    return FailedPrecondition(path +
                              ": the optimizer state is for another model shape than model.bin's (its header "
                              "differs); restore the checkpoint from a copy you trust");
  }
  const std::streamsize bytes = static_cast<std::streamsize>(model.num_params() * sizeof(float));
  in.read(reinterpret_cast<char*>(adam_m), bytes);
  in.read(reinterpret_cast<char*>(adam_v), bytes);
  if (!in) return DataLoss(path + ": file ends before the AdamW state was read (truncated checkpoint)");
  return OkStatus();
}

}  // namespace fjord
