// POSIX file descriptors behind a small RAII owner, and the one atomic-write recipe every writer of
// fjord uses (token shards, sealed and plain checkpoint files, manifests, audit heads, exports).
#include "common/file_util.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <utility>

#include "common/text.h"

namespace fjord {
namespace {

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

Fd& Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

bool Fd::Close() { return ::close(std::exchange(fd_, -1)) == 0; }

StatusOr<std::string> ReadWholeFile(const std::string& path, const std::string& what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const Status s = (errno == ENOENT ? NotFound : FailedPrecondition)(
        "cannot open " + what + " " + path + ": " + ErrnoText() + "; check the path and its permissions");
    return s;
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return FailedPrecondition("cannot read " + what + " " + path + ": not a regular file; check the path");
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPrecondition("cannot read " + what + " " + path + ": " + ErrnoText());
    if (n == 0) return DataLoss("cannot read " + what + " " + path + ": the file shrank while being read");
    done += static_cast<size_t>(n);
  }
  return bytes;
}

StatusOr<Fd> CreateNewFile(const std::string& path, mode_t mode, const std::string& what) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) {
    const int err = errno;
    Status s = FailedPrecondition(
        what + ": cannot create " + path + ": " + std::strerror(err) +
        (err == EEXIST ? "; something already exists at that name (a file or a symbolic link someone put "
                         "there): fjord never writes through one; remove it, or check who else writes here"
                       : "; check that the directory exists and is writable"));
    errno = err;  // for callers that retry on EEXIST
    return s;
  }
  return fd;
}

Status CreateNewDirectory(const std::string& path, mode_t mode, const std::string& what) {
  if (::mkdir(path.c_str(), mode) != 0) {
    const int err = errno;
    return FailedPrecondition(what + ": cannot create directory " + path + ": " + std::strerror(err) +
                              (err == EEXIST ? "; something already exists at that name: remove it"
                                             : "; check that its parent exists and is writable"));
  }
  return OkStatus();
}

void KeepNewFilesPrivate() { ::umask(077); }

std::string RandomTempName(const std::string& path) {
  unsigned char r[8];
  if (RAND_bytes(r, sizeof(r)) != 1) {
    // Without randomness the name is guessable, but O_EXCL | O_NOFOLLOW still refuses anything
    // planted there.
    const uint64_t v = static_cast<uint64_t>(::getpid()) << 32 ^ static_cast<uint64_t>(::time(nullptr));
    std::memcpy(r, &v, sizeof(r));
  }
  return path + ".tmp." + HexEncode(r, sizeof(r));
}

StatusOr<AtomicFile> AtomicFile::Create(const std::string& path, mode_t mode) {
  // The rename at Commit replaces whatever file is at `path`: a file or a link is what an atomic
  // write means to replace; a device, pipe or socket is not (as root, `--json /dev/full` once
  // replaced the device node with a file). A directory makes the rename fail by itself.
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 &&
      (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    const char* kind = S_ISCHR(st.st_mode)    ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISFIFO(st.st_mode) ? "a named pipe"
                                              : "a socket";
    return FailedPrecondition("cannot write " + path + ": it is " + kind +
                              ", and fjord writes a file by replacing it whole; name a regular file");
  }
  for (int attempt = 0;; ++attempt) {
    std::string tmp = RandomTempName(path);
    StatusOr<Fd> fd = CreateNewFile(tmp, mode, "cannot write " + path);
    if (fd.ok()) return AtomicFile(path, std::move(tmp), std::move(*fd));
    if (errno != EEXIST || attempt == 3) return fd.status();
  }
}

AtomicFile::~AtomicFile() {
  if (!done_) ::unlink(tmp_.c_str());
}

Status AtomicFile::Fail(const std::string& step) {
  const std::string reason = ErrnoText();
  done_ = true;
  ::unlink(tmp_.c_str());
  return FailedPrecondition(step + " " + tmp_ + " failed: " + reason +
                            "; check free disk space and permissions");
}

Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return FailedPrecondition("write to " + path + " failed: " + (n < 0 ? ErrnoText() : "no progress") +
                                "; check free disk space and permissions");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return OkStatus();
}

Status AtomicFile::Write(const void* data, size_t size) {
  Status s = WriteAll(fd_.get(), data, size, tmp_);
  if (!s.ok()) {
    done_ = true;
    ::unlink(tmp_.c_str());
  }
  return s;
}

Status AtomicFile::Commit() {
  if (::fsync(fd_.get()) != 0) return Fail("fsync of");
  if (!fd_.Close()) return Fail("close of");
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return Fail("rename to " + path_ + " of");
  done_ = true;
  // Make the rename durable; failing to sync a directory is not worth refusing over.
  const std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  Fd dir_fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
  return OkStatus();
}

Status WriteFileAtomic(const std::string& path, const std::vector<ByteSpan>& pieces, mode_t mode) {
  FJORD_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(path, mode));
  for (const ByteSpan& piece : pieces) FJORD_RETURN_IF_ERROR(file.Write(piece.data, piece.size));
  return file.Commit();
}

}  // namespace fjord
