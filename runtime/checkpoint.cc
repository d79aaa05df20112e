#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "runtime/config.h"

namespace fjord {
namespace fs = std::filesystem;

namespace {

enum HeaderField { kMagic, kVersion, kNLayer, kNHead, kNEmbd, kMaxSeq, kVocab, kPaddedVocab, kParamsLo,
                   kParamsHi, kStep, kHeaderInts = 256 };

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
  return h;
}

std::string ErrnoText() { return std::strerror(errno); }

// Writes the pieces to `path` and fsyncs it.
Status WriteFileSynced(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return Internal("cannot create " + path + ": " + ErrnoText());
  for (const auto& [data, bytes] : pieces) {
    const char* p = static_cast<const char*>(data);
    size_t left = bytes;
    while (left > 0) {
      ssize_t w = ::write(fd, p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        std::string err = ErrnoText();
        ::close(fd);
        return Internal("cannot write " + path + ": " + err + " (is the disk full?)");
      }
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return Internal("cannot flush " + path + ": " + ErrnoText());
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

StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir, int step, const proto::JobSpec& job,
                                     const Gpt& model, const float* adam_m, const float* adam_v) {
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec) return Internal("cannot create checkpoint directory " + checkpoints_dir + ": " + ec.message());
  const std::string final_dir = (fs::path(checkpoints_dir) / StepName(step)).string();
  const std::string tmp_dir = final_dir + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec) return Internal("cannot create " + tmp_dir + ": " + ec.message());

  const std::vector<int32_t> header = MakeHeader(model, step);
  const size_t header_bytes = header.size() * sizeof(int32_t);
  const size_t param_bytes = model.num_params() * sizeof(float);
  Status s = WriteFileSynced(tmp_dir + "/model.bin", {{header.data(), header_bytes}, {model.params(), param_bytes}});
  if (s.ok()) {
    s = WriteFileSynced(tmp_dir + "/optimizer.bin", {{header.data(), header_bytes},
                                                     {adam_m, param_bytes},
                                                     {adam_v, param_bytes}});
  }
  if (s.ok()) {
    const std::string text = JobSpecToText(job);
    s = WriteFileSynced(tmp_dir + "/job.textproto", {{text.data(), text.size()}});
  }
  if (!s.ok()) {
    fs::remove_all(tmp_dir, ec);
    return s.WithContext("writing checkpoint for step " + std::to_string(step));
  }
  FsyncDir(tmp_dir);
  // A checkpoint of the same step (a re-run) is replaced only once the new one is complete.
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) return Internal("cannot rename " + tmp_dir + " to " + final_dir + ": " + ec.message());
  FsyncDir(checkpoints_dir);
  return final_dir;
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

Status LoadCheckpointWeights(const std::string& dir, Gpt& model) {
  const std::string path = (fs::path(dir) / "model.bin").string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path);
  std::vector<int32_t> header(kHeaderInts);
  in.read(reinterpret_cast<char*>(header.data()), kHeaderInts * sizeof(int32_t));
  if (!in) return DataLoss(path + ": shorter than its 1024-byte header (truncated checkpoint)");
  if (header[kMagic] != kModelMagic) {
    return DataLoss(path + ": magic " + std::to_string(header[kMagic]) + " is not fjord's " +
                    std::to_string(kModelMagic) + " (not a fjord checkpoint)");
  }
  if (header[kVersion] != kModelVersion) {
    return DataLoss(path + ": version " + std::to_string(header[kVersion]) + " is not supported (expected " +
                    std::to_string(kModelVersion) + ")");
  }
  const std::vector<int32_t> expected = MakeHeader(model, header[kStep]);
  static const char* kNames[] = {"magic", "version", "model.n_layer", "model.n_head", "model.n_embd",
                                 "model.seq_len", "model.vocab_size", "padded vocab", "parameter count",
                                 "parameter count"};
  for (int f = kNLayer; f <= kParamsHi; ++f) {
    if (header[f] != expected[f]) {
      return FailedPrecondition(path + ": " + kNames[f] + " is " + std::to_string(header[f]) +
                                " in the checkpoint but " + std::to_string(expected[f]) + " in the model");
    }
  }
  in.read(reinterpret_cast<char*>(model.params()), static_cast<std::streamsize>(model.num_params() * sizeof(float)));
  if (!in) return DataLoss(path + ": file ends before all " + std::to_string(model.num_params()) +
                           " parameters were read (truncated checkpoint)");
  return OkStatus();
}

}  // namespace fjord
