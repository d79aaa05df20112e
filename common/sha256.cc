#include "common/sha256.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/file_util.h"
#include "common/text.h"

namespace fjord {

std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  if (code == 0) return "no OpenSSL error recorded";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

struct Sha256::Impl {
  struct Free {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
  };
  std::unique_ptr<EVP_MD_CTX, Free> ctx{EVP_MD_CTX_new()};
  Status status;

  void Check(bool ok, const char* call) {
    if (!ok && status.ok()) status = Internal(std::string("SHA-256: ") + call + " failed: " + OpenSslError());
  }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  impl_->Check(impl_->ctx != nullptr, "EVP_MD_CTX_new");
  if (impl_->status.ok())
    impl_->Check(EVP_DigestInit_ex(impl_->ctx.get(), EVP_sha256(), nullptr) == 1, "EVP_DigestInit_ex");
}

Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t size) {
  if (!impl_->status.ok() || size == 0) return;
  impl_->Check(EVP_DigestUpdate(impl_->ctx.get(), data, size) == 1, "EVP_DigestUpdate");
}

StatusOr<std::string> Sha256::FinishHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (impl_->status.ok())
    impl_->Check(EVP_DigestFinal_ex(impl_->ctx.get(), digest, &n) == 1, "EVP_DigestFinal_ex");
  if (!impl_->status.ok()) return impl_->status;
  return HexEncode(digest, n);
}

StatusOr<std::string> Sha256Hex(std::string_view bytes) {
  Sha256 h;
  h.Update(bytes.data(), bytes.size());
  return h.FinishHex();
}

StatusOr<std::string> Sha256File(const std::string& path, const std::string& what) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return (errno == ENOENT ? NotFound : FailedPrecondition)("cannot open " + what + " " + path + ": " +
                                                             std::strerror(errno));
  }
  Sha256 h;
  std::vector<char> buffer(1 << 20);
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailedPrecondition("cannot read " + what + " " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    h.Update(buffer.data(), static_cast<size_t>(n));
  }
  return h.FinishHex();
}

}  // namespace fjord
