// Encryption at rest for tenancy: AES-256-GCM sealed files (checkpoints encrypted with the
// tenant's key) through OpenSSL's EVP interface. SHA-256 is common/sha256.h.
//
// Sealed file format, version 1 (all integers little-endian):
//   offset  0  8 bytes  magic "FJSEALED"
//   offset  8  4 bytes  version = 1
//   offset 12  4 bytes  cipher  = 1 (AES-256-GCM)
//   offset 16 12 bytes  nonce, fresh from the OS random generator for every file
//   offset 28  N bytes  ciphertext (N = plaintext length)
//   then      16 bytes  GCM authentication tag
// The authenticated data is the 28-byte header followed by a caller-chosen `context` string (for
// checkpoints: tenant id and file name), so a file moved to another name or another tenant fails
// authentication like a modified one. A random 96-bit nonce per file keeps the chance of a repeated
// nonce under one key negligible for any realistic number of files (about 2^-33 after 2^32 files).
//
// Decryption checks the tag before returning anything: a wrong key, a flipped byte anywhere (header,
// ciphertext or tag), a truncated file or a different context all give the same refusal, "wrong key
// or modified file", because GCM cannot tell them apart and guessing would mislead.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"

namespace fjord {

// A 256-bit AES key. Move-only; the bytes are wiped (OPENSSL_cleanse) when it is destroyed or
// moved from, so a key does not linger in freed memory.
class EncryptionKey {
 public:
  static constexpr size_t kBytes = 32;
  explicit EncryptionKey(const std::array<uint8_t, kBytes>& bytes);
  ~EncryptionKey();
  EncryptionKey(EncryptionKey&& other) noexcept;
  EncryptionKey& operator=(EncryptionKey&& other) noexcept;
  EncryptionKey(const EncryptionKey&) = delete;
  EncryptionKey& operator=(const EncryptionKey&) = delete;

  const uint8_t* data() const { return bytes_.data(); }
  // 16 hex characters naming the key without revealing it: SHA-256("fjord key id v1" || key),
  // truncated. Recorded in checkpoint tenant records, so a wrong key is named before decryption.
  StatusOr<std::string> KeyId() const;

 private:
  std::array<uint8_t, kBytes> bytes_;
};

// Reads a key file: exactly 32 raw bytes, or 64 hex digits (an optional trailing newline allowed),
// as `openssl rand -hex 32 > key` writes. Refuses (naming the path and what to do) a missing file,
// a file another user can read or write (mode & 077 != 0, as ssh does for private keys), and any
// other length or content. `field` names where the path came from, e.g.
// "checkpoint.encryption_key_file".
StatusOr<EncryptionKey> LoadEncryptionKey(const std::string& path, const std::string& field);

inline constexpr char kSealMagic[8] = {'F', 'J', 'S', 'E', 'A', 'L', 'E', 'D'};
inline constexpr size_t kSealHeaderBytes = 28;
inline constexpr size_t kSealTagBytes = 16;

// True when `bytes` starts with the sealed-file magic.
bool IsSealed(std::string_view bytes);

// Encrypts `plaintext` (given as pieces, concatenated) into the sealed format. `context` is
// authenticated but not stored; Unseal must be given the same.
StatusOr<std::string> Seal(const std::vector<ByteSpan>& plaintext, const EncryptionKey& key,
                           std::string_view context);

// Decrypts and authenticates `sealed`; `source` names it in errors (a path). Refusals:
// not a sealed file (DataLoss), unknown version or cipher (FailedPrecondition), and "wrong key or
// modified file" (DataLoss) for any authentication failure. Nothing is returned unless the tag
// verified; the partial plaintext is wiped.
StatusOr<std::string> Unseal(std::string_view sealed, const EncryptionKey& key, std::string_view context,
                             const std::string& source);

// Seal + atomic write (temporary file, fsync, rename): a reader sees the old file or the complete
// new one. Encrypts piece by piece in 1 MiB chunks, so the plaintext is not copied whole.
Status WriteSealedFile(const std::string& path, const std::vector<ByteSpan>& plaintext,
                       const EncryptionKey& key, std::string_view context);

// Reads the file at `path` and Unseals it.
StatusOr<std::string> ReadSealedFile(const std::string& path, const EncryptionKey& key,
                                     std::string_view context);

// The AES-256-GCM primitive under Seal and Unseal, with the caller's 96-bit nonce and associated
// data: returns ciphertext || 16-byte tag, and (decrypt) the plaintext only when the tag verifies
// (else DataLoss with an empty message). For the known-answer test (NIST GCM vectors) only: a
// caller-chosen nonce repeated under one key breaks GCM, so everything else uses Seal, which draws
// a fresh nonce per file.
StatusOr<std::string> Aes256GcmEncryptWithNonce(const EncryptionKey& key,
                                                const std::array<uint8_t, 12>& nonce, std::string_view aad,
                                                std::string_view plaintext);
StatusOr<std::string> Aes256GcmDecryptWithNonce(const EncryptionKey& key,
                                                const std::array<uint8_t, 12>& nonce, std::string_view aad,
                                                std::string_view sealed);

}  // namespace fjord
