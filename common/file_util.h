// Whole-file reads and atomic writes for the interchange formats (safetensors, llm.c checkpoints,
// config.json). A writer goes through a temporary file in the target's directory, fsyncs it and
// renames it over the target, so a reader (or a crash) sees the old file or the new one, never a
// half-written one. Errors name the path and what to check.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
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

// Owns a POSIX file descriptor: closes it on destruction (which also drops any flock on it).
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  // Closes now; false when close(2) reported an error (a late write error on some file systems).
  bool Close();

 private:
  int fd_;
};

// Writes all of `data` to `fd` (retrying short writes and EINTR); the error names `path`, the
// system's reason and what to check.
Status WriteAll(int fd, const void* data, size_t size, const std::string& path);

// Creates `path` for writing; it must not exist yet (O_CREAT | O_EXCL | O_NOFOLLOW), so a file or a
// symbolic link someone planted at that name, even a dangling one, is never opened or written
// through. `mode` as for open(2), less the umask. `what` starts the error message.
StatusOr<Fd> CreateNewFile(const std::string& path, mode_t mode, const std::string& what);

// A new file that atomically replaces `path` when committed: PATH.tmp.<16 random hex digits>,
// made by CreateNewFile in the target's directory (an unpredictable name, so nobody can plant
// anything there first). Commit fsyncs it, renames it over `path` (a symbolic link at `path` is
// replaced, never written through) and makes the rename durable; until then readers see the old
// file. Destroying an uncommitted AtomicFile removes the temporary file. Not thread-safe.
class AtomicFile {
 public:
  static StatusOr<AtomicFile> Create(const std::string& path, mode_t mode = 0644);
  AtomicFile(AtomicFile&& other) noexcept
      : path_(std::move(other.path_)),
        tmp_(std::move(other.tmp_)),
        fd_(std::move(other.fd_)),
        done_(std::exchange(other.done_, true)) {}
  ~AtomicFile();
  // Writes all of `data`; on failure the message names the temporary file and the reason.
  Status Write(const void* data, size_t size);
  Status Commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  AtomicFile(std::string path, std::string tmp, Fd fd)
      : path_(std::move(path)), tmp_(std::move(tmp)), fd_(std::move(fd)) {}
  Status Fail(const std::string& step);
  std::string path_, tmp_;
  Fd fd_;
  bool done_ = false;
};

// Writes the concatenation of `pieces` to `path` atomically through an AtomicFile whose mode is
// `mode` (less the umask) from its creation: no moment where the file is more readable. On
// failure the temporary file is removed and `path` is untouched.
Status WriteFileAtomic(const std::string& path, const std::vector<ByteSpan>& pieces, mode_t mode = 0644);

// Makes the directory `path` (its parent must exist), which must not exist yet: mkdir(2) neither
// follows nor accepts an existing symbolic link. `mode` less the umask.
Status CreateNewDirectory(const std::string& path, mode_t mode, const std::string& what);

// From now on, every file and directory this process (and any child it starts) creates is private
// to its user: umask 077, so 0600 files and 0700 directories whatever mode the creator asks for.
// Called once a process knows it handles a tenant's job or checkpoint (docs/SOVEREIGNTY.md, "Files
// fjord writes"); never undone.
void KeepNewFilesPrivate();

// PATH.tmp.<16 random hex digits> (OpenSSL RAND_bytes): the name of a temporary file or directory
// beside `path` that nobody can predict.
std::string RandomTempName(const std::string& path);

}  // namespace fjord
