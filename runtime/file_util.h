// Whole-file reads and atomic writes for the interchange formats (safetensors, llm.c checkpoints,
// config.json). A writer goes through a temporary file in the target's directory, fsyncs it and
// renames it over the target, so a reader (or a crash) sees the old file or the new one, never a
// half-written one. Errors name the path and what to check.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fjord {

// A borrowed byte range; the caller keeps `data` alive for the duration of the call.
struct ByteSpan {
  const void* data = nullptr;
  size_t size = 0;
};

// Reads the file at `path` whole. `what` ("safetensors file", "vocabulary") starts the message
// when the file cannot be opened or read.
StatusOr<std::string> ReadWholeFile(const std::string& path, const std::string& what);

// Writes the concatenation of `pieces` to `path` atomically: PATH.tmp.PID, fsync, rename, then
// a best-effort fsync of the directory. On failure the temporary file is removed and `path` is
// untouched.
Status WriteFileAtomic(const std::string& path, const std::vector<ByteSpan>& pieces);

// Lower-case hex SHA-256 of `bytes` (OpenSSL).
std::string Sha256Hex(std::string_view bytes);

// Lower-case hex SHA-256 of the file at `path`, read in 1 MiB chunks. Errors name `what`
// ("shard", "checkpoint file"), the path and the system's reason: NotFound when the file does not
// exist, FailedPrecondition when it cannot be opened or read.
StatusOr<std::string> Sha256File(const std::string& path, const std::string& what);

// Owns a POSIX file descriptor: closes it on destruction (which also drops any flock on it).
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  // Closes now; false when close(2) reported an error (a late write error on some file systems).
  bool Close();

 private:
  int fd_;
};

}  // namespace fjord
