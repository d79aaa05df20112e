// POSIX file descriptors behind a small RAII owner; the atomic write is the same recipe as token
// shards (runtime/data.cc) and checkpoints use.
#include "runtime/file_util.h"

#include <openssl/evp.h>
#include <openssl/sha.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <utility>

namespace fjord {
namespace {

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
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

Status WriteFileAtomic(const std::string& path, const std::vector<ByteSpan>& pieces) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return FailedPrecondition("cannot create " + tmp + ": " + ErrnoText() +
                              "; check that the directory exists and is writable");
  }
  auto fail = [&](const std::string& step) {
    const std::string reason = ErrnoText();
    ::unlink(tmp.c_str());
    return FailedPrecondition(step + " " + tmp + " failed: " + reason +
                              "; check free disk space and permissions");
  };
  for (const ByteSpan& piece : pieces) {
    const char* p = static_cast<const char*>(piece.data);
    size_t left = piece.size;
    while (left > 0) {
      const ssize_t n = ::write(fd.get(), p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return fail("write to");
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd.get()) != 0) return fail("fsync of");
  if (!fd.Close()) return fail("close of");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename to " + path + " of");
  // Make the rename durable; failing to sync a directory is not worth refusing over.
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  Fd dir_fd(::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
  return OkStatus();
}

namespace {

std::string Hex(const unsigned char* digest, size_t n) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}

}  // namespace

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  return Hex(digest, sizeof(digest));
}

StatusOr<std::string> Sha256File(const std::string& path, const std::string& what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return (errno == ENOENT ? NotFound : FailedPrecondition)("cannot open " + what + " " + path + ": " + ErrnoText());
  }
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPrecondition("cannot read " + what + " " + path + ": " + ErrnoText());
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(n));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  return Hex(digest, len);
}

}  // namespace fjord
