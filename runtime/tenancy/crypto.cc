// OpenSSL EVP behind RAII owners. Every EVP call is checked; a failure of OpenSSL itself (not of
// authentication) is an Internal error carrying OpenSSL's own error string.
#include "runtime/tenancy/crypto.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <utility>

#include "common/file_util.h"
#include "common/sha256.h"

namespace fjord {
namespace {

constexpr uint32_t kSealVersion = 1;
constexpr uint32_t kCipherAes256Gcm = 1;
constexpr size_t kNonceBytes = 12;
constexpr size_t kChunk = 1 << 20;

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Header bytes of a new sealed file with a fresh nonce.
StatusOr<std::array<uint8_t, kSealHeaderBytes>> NewHeader() {
  std::array<uint8_t, kSealHeaderBytes> h{};
  std::memcpy(h.data(), kSealMagic, sizeof(kSealMagic));
  PutLe32(h.data() + 8, kSealVersion);
  PutLe32(h.data() + 12, kCipherAes256Gcm);
  if (RAND_bytes(h.data() + 16, kNonceBytes) != 1) {
    return Internal("cannot draw a random nonce from OpenSSL: " + OpenSslError());
  }
  return h;
}

// An AES-256-GCM context for `key` and the 96-bit `nonce`, encrypting or decrypting, with the
// `aad` pieces already authenticated.
StatusOr<CipherCtx> GcmStart(const EncryptionKey& key, const uint8_t* nonce,
                             std::initializer_list<std::string_view> aad, bool encrypt) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return Internal("EVP_CIPHER_CTX_new failed: " + OpenSslError());
  const int enc = encrypt ? 1 : 0;
  int len = 0;
  if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr, enc) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kNonceBytes, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce, enc) != 1) {
    return Internal("AES-256-GCM setup failed: " + OpenSslError());
  }
  for (std::string_view a : aad) {
    if (!a.empty() && EVP_CipherUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(a.data()),
                                       static_cast<int>(a.size())) != 1) {
      return Internal("AES-256-GCM setup failed: " + OpenSslError());
    }
  }
  return ctx;
}

// AES-256-GCM under `key` with the 96-bit `nonce`: authenticates the `aad` pieces, then streams
// the plaintext pieces through in kChunk steps, calling `sink(bytes, size)` with ciphertext, then
// the tag. The one encryption path: Seal, WriteSealedFile and the known-answer test all use it.
template <typename Sink>
Status GcmEncrypt(const EncryptionKey& key, const uint8_t* nonce, std::initializer_list<std::string_view> aad,
                  const std::vector<ByteSpan>& plaintext, Sink&& sink) {
  FJORD_ASSIGN_OR_RETURN(CipherCtx ctx, GcmStart(key, nonce, aad, /*encrypt=*/true));
  int len = 0;
  std::vector<uint8_t> out(kChunk + 16);
  for (const ByteSpan& piece : plaintext) {
    const uint8_t* p = static_cast<const uint8_t*>(piece.data);
    for (size_t done = 0; done < piece.size;) {
      const size_t n = std::min(kChunk, piece.size - done);
      if (EVP_EncryptUpdate(ctx.get(), out.data(), &len, p + done, static_cast<int>(n)) != 1) {
        return Internal("AES-256-GCM encryption failed: " + OpenSslError());
      }
      FJORD_RETURN_IF_ERROR(sink(out.data(), static_cast<size_t>(len)));
      done += n;
    }
  }
  if (EVP_EncryptFinal_ex(ctx.get(), out.data(), &len) != 1) {
    return Internal("AES-256-GCM finalization failed: " + OpenSslError());
  }
  FJORD_RETURN_IF_ERROR(sink(out.data(), static_cast<size_t>(len)));
  uint8_t tag[kSealTagBytes];
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kSealTagBytes, tag) != 1) {
    return Internal("AES-256-GCM tag failed: " + OpenSslError());
  }
  return sink(tag, sizeof(tag));
}

// The inverse of GcmEncrypt for `sealed` = ciphertext || tag. DataLoss (no message) when the tag
// does not verify; nothing is returned then and the partial plaintext is wiped.
StatusOr<std::string> GcmDecrypt(const EncryptionKey& key, const uint8_t* nonce,
                                 std::initializer_list<std::string_view> aad, std::string_view sealed) {
  if (sealed.size() < kSealTagBytes) return DataLoss("");
  FJORD_ASSIGN_OR_RETURN(CipherCtx ctx, GcmStart(key, nonce, aad, /*encrypt=*/false));
  int len = 0;
  const size_t n = sealed.size() - kSealTagBytes;
  std::string out(n, '\0');
  uint8_t* o = reinterpret_cast<uint8_t*>(out.data());
  const uint8_t* c = reinterpret_cast<const uint8_t*>(sealed.data());
  for (size_t done = 0; done < n;) {
    const size_t step = std::min(kChunk, n - done);
    if (EVP_DecryptUpdate(ctx.get(), o + done, &len, c + done, static_cast<int>(step)) != 1) {
      OPENSSL_cleanse(out.data(), out.size());
      return Internal("AES-256-GCM decryption failed: " + OpenSslError());
    }
    done += step;
  }
  uint8_t tag[kSealTagBytes];
  std::memcpy(tag, c + n, sizeof(tag));
  uint8_t tail[16];
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kSealTagBytes, tag) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), tail, &len) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    ERR_clear_error();
    return DataLoss("");
  }
  return out;
}

std::string_view HeaderView(const std::array<uint8_t, kSealHeaderBytes>& header) {
  return {reinterpret_cast<const char*>(header.data()), header.size()};
}

}  // namespace

EncryptionKey::EncryptionKey(const std::array<uint8_t, kBytes>& bytes) : bytes_(bytes) {}
EncryptionKey::~EncryptionKey() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }
EncryptionKey::EncryptionKey(EncryptionKey&& other) noexcept : bytes_(other.bytes_) {
  OPENSSL_cleanse(other.bytes_.data(), other.bytes_.size());
}
EncryptionKey& EncryptionKey::operator=(EncryptionKey&& other) noexcept {
  if (this != &other) {
    bytes_ = other.bytes_;
    OPENSSL_cleanse(other.bytes_.data(), other.bytes_.size());
  }
  return *this;
}

StatusOr<std::string> EncryptionKey::KeyId() const {
  Sha256 h;
  static constexpr char kDomain[] = "fjord key id v1";
  h.Update(kDomain, sizeof(kDomain) - 1);
  h.Update(bytes_.data(), bytes_.size());
  FJORD_ASSIGN_OR_RETURN(const std::string hex, h.FinishHex());
  return hex.substr(0, 16);
}

StatusOr<EncryptionKey> LoadEncryptionKey(const std::string& path, const std::string& field) {
  const std::string what = field + ": key file " + path;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return (errno == ENOENT ? NotFound
                            : FailedPrecondition)(what + ": " + std::strerror(errno) +
                                                  "; give the path of the tenant's 32-byte key (create one "
                                                  "with `openssl rand -hex 32 > KEY; chmod 600 KEY`)");
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgument(what + " is not a regular file; give the key file itself");
  if (st.st_uid != ::geteuid() && st.st_uid != 0) {
    // Another user's file: its owner could swap in a key they know (and read what it seals), or
    // read ours. Only this process's user and root may own a tenant's key.
    auto name = [](uid_t uid) {
      const struct passwd* pw = ::getpwuid(uid);
      return std::to_string(uid) + (pw != nullptr ? " (" + std::string(pw->pw_name) + ")" : "");
    };
    return FailedPrecondition(what + " is owned by uid " + name(st.st_uid) + ", not by uid " +
                              name(::geteuid()) +
                              " who runs fjord, nor by root: another user could replace the key; keep the "
                              "tenant's key in a file of your own (copy it, or as root: chown " +
                              std::to_string(::geteuid()) + " " + path + ")");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPrecondition(
        what + " has mode " + mode +
        ": other users may read or change it; a tenant's key must be private to its owner: "
        "run chmod 600 " +
        path);
  }
  StatusOr<std::string> bytes = ReadWholeFile(path, "key file");
  if (!bytes.ok()) return bytes.status().WithContext(field);
  std::string& b = *bytes;
  std::array<uint8_t, EncryptionKey::kBytes> raw{};
  Status result = OkStatus();
  if (b.size() == EncryptionKey::kBytes) {
    std::memcpy(raw.data(), b.data(), raw.size());
  } else {
    std::string_view text(b);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    bool hex = text.size() == 2 * EncryptionKey::kBytes;
    for (size_t i = 0; hex && i < raw.size(); ++i) {
      const int hi = HexValue(text[2 * i]), lo = HexValue(text[2 * i + 1]);
      if (hi < 0 || lo < 0) hex = false;
      raw[i] = static_cast<uint8_t>(hi << 4 | lo);
    }
    if (!hex) {
      result =
          InvalidArgument(what + " holds " + std::to_string(b.size()) +
                          " bytes that are neither exactly 32 raw bytes nor 64 hex digits; an AES-256 key is "
                          "32 bytes: create one with `openssl rand -hex 32 > " +
                          path + "`");
    }
  }
  OPENSSL_cleanse(b.data(), b.size());
  if (!result.ok()) {
    OPENSSL_cleanse(raw.data(), raw.size());
    return result;
  }
  EncryptionKey key(raw);
  OPENSSL_cleanse(raw.data(), raw.size());
  return key;
}

bool IsSealed(std::string_view bytes) {
  return bytes.size() >= sizeof(kSealMagic) && std::memcmp(bytes.data(), kSealMagic, sizeof(kSealMagic)) == 0;
}

StatusOr<std::string> Seal(const std::vector<ByteSpan>& plaintext, const EncryptionKey& key,
                           std::string_view context) {
  FJORD_ASSIGN_OR_RETURN(const auto header, NewHeader());
  size_t total = 0;
  for (const ByteSpan& p : plaintext) total += p.size;
  std::string out;
  out.reserve(kSealHeaderBytes + total + kSealTagBytes);
  out.append(reinterpret_cast<const char*>(header.data()), header.size());
  FJORD_RETURN_IF_ERROR(GcmEncrypt(key, header.data() + 16, {HeaderView(header), context}, plaintext,
                                   [&](const uint8_t* p, size_t n) {
                                     out.append(reinterpret_cast<const char*>(p), n);
                                     return OkStatus();
                                   }));
  return out;
}

StatusOr<std::string> Unseal(std::string_view sealed, const EncryptionKey& key, std::string_view context,
                             const std::string& source) {
  if (!IsSealed(sealed)) {
    return DataLoss(source + " is not a sealed (encrypted) file: it does not start with fjord's seal header");
  }
  if (sealed.size() < kSealHeaderBytes + kSealTagBytes) {
    return DataLoss(
        source + ": " + std::to_string(sealed.size()) +
        " bytes, shorter than a sealed file's header and tag: truncated; wrong key or modified file");
  }
  const uint8_t* h = reinterpret_cast<const uint8_t*>(sealed.data());
  const uint32_t version = GetLe32(h + 8), cipher = GetLe32(h + 12);
  if (version != kSealVersion || cipher != kCipherAes256Gcm) {
    return FailedPrecondition(source + ": sealed-file version " + std::to_string(version) + ", cipher " +
                              std::to_string(cipher) +
                              " is not supported (this fjord reads version 1, cipher 1 = "
                              "AES-256-GCM); wrong key or modified file, or written by a newer fjord");
  }
  StatusOr<std::string> out =
      GcmDecrypt(key, h + 16, {sealed.substr(0, kSealHeaderBytes), context}, sealed.substr(kSealHeaderBytes));
  if (!out.ok() && out.status().code() == StatusCode::kDataLoss) {
    return DataLoss(
        source +
        ": authentication failed: wrong key or modified file (the AES-256-GCM tag does not match). "
        "Check that checkpoint.encryption_key_file is this tenant's key; if it is, the file was "
        "changed or damaged after it was written: restore it from a copy you trust");
  }
  return out;
}

Status WriteSealedFile(const std::string& path, const std::vector<ByteSpan>& plaintext,
                       const EncryptionKey& key, std::string_view context) {
  FJORD_ASSIGN_OR_RETURN(const auto header, NewHeader());
  FJORD_ASSIGN_OR_RETURN(AtomicFile file, AtomicFile::Create(path, 0600));
  auto write_all = [&](const uint8_t* p, size_t n) { return file.Write(p, n); };
  FJORD_RETURN_IF_ERROR(write_all(header.data(), header.size()));
  FJORD_RETURN_IF_ERROR(
      GcmEncrypt(key, header.data() + 16, {HeaderView(header), context}, plaintext, write_all));
  return file.Commit();
}

StatusOr<std::string> ReadSealedFile(const std::string& path, const EncryptionKey& key,
                                     std::string_view context) {
  FJORD_ASSIGN_OR_RETURN(std::string sealed, ReadWholeFile(path, "sealed file"));
  return Unseal(sealed, key, context, path);
}

StatusOr<std::string> Aes256GcmEncryptWithNonce(const EncryptionKey& key,
                                                const std::array<uint8_t, 12>& nonce, std::string_view aad,
                                                std::string_view plaintext) {
  std::string out;
  FJORD_RETURN_IF_ERROR(GcmEncrypt(key, nonce.data(), {aad}, {{plaintext.data(), plaintext.size()}},
                                   [&](const uint8_t* p, size_t n) {
                                     out.append(reinterpret_cast<const char*>(p), n);
                                     return OkStatus();
                                   }));
  return out;
}

StatusOr<std::string> Aes256GcmDecryptWithNonce(const EncryptionKey& key,
                                                const std::array<uint8_t, 12>& nonce, std::string_view aad,
                                                std::string_view sealed) {
  return GcmDecrypt(key, nonce.data(), {aad}, sealed);
}

}  // namespace fjord
