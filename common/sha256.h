// SHA-256, the one implementation (OpenSSL EVP): data manifests, the audit hash chain, checkpoint
// records, job and inventory digests, key ids. Every EVP call is checked; a failure of OpenSSL
// itself is an Internal error carrying OpenSSL's own error string, never a made-up digest.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fjord {

// Incremental SHA-256. The first failing EVP call is kept, later updates are ignored, and
// FinishHex returns that failure. Not thread-safe; one owner.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size);
  // Lower-case hex digest (64 characters); the object must not be updated afterwards.
  StatusOr<std::string> FinishHex();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Lower-case hex SHA-256 of `bytes`.
StatusOr<std::string> Sha256Hex(std::string_view bytes);

// Lower-case hex SHA-256 of the file at `path`, read in 1 MiB chunks. Errors name `what`
// ("shard", "checkpoint file"), the path and the system's reason: NotFound when the file does not
// exist, FailedPrecondition when it cannot be opened or read.
StatusOr<std::string> Sha256File(const std::string& path, const std::string& what);

// OpenSSL's oldest queued error as text ("no OpenSSL error recorded" when none), clearing the
// queue: for the messages of OpenSSL failures.
std::string OpenSslError();

}  // namespace fjord
