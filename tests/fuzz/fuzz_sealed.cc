// Fuzzes the sealed (AES-256-GCM) checkpoint file reader, Unseal (runtime/tenancy/crypto.h), with a fixed
// key and context: the header (magic, version, cipher, nonce), the length checks and the tag. A
// random input must never authenticate; the seed corpus holds a file sealed with this key, so
// mutations of a real sealed file are tried. The same bytes also go through LoadEncryptionKey as
// a key file (32 raw bytes or 64 hex digits).
#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <string>

#include "runtime/tenancy/crypto.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
// Key bytes 0, 1, ..., 31; the seed sealed.bin was made with it and the context "fuzz".
fjord::EncryptionKey FuzzKey() {
  std::array<uint8_t, fjord::EncryptionKey::kBytes> bytes;
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  return fjord::EncryptionKey(bytes);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fjord::EncryptionKey key = FuzzKey();
  static const std::string key_path = fjord::fuzz::ScratchDir("sealed") + "/key";
  const std::string_view bytes = fjord::fuzz::AsText(data, size);

  fjord::StatusOr<std::string> plain = fjord::Unseal(bytes, key, "fuzz", "fuzz.sealed");
  if (plain.ok()) {
    FJORD_FUZZ_EXPECT(fjord::IsSealed(bytes), "unsealed a file without the magic");
    FJORD_FUZZ_EXPECT(plain->size() + fjord::kSealHeaderBytes + fjord::kSealTagBytes == size,
                      "plaintext length differs from the file's");
  } else {
    FJORD_FUZZ_EXPECT(!plain.status().message().empty(), "refusal without a message");
  }

  fjord::fuzz::WriteFile(key_path, bytes);
  ::chmod(key_path.c_str(), 0600);
  fjord::StatusOr<fjord::EncryptionKey> loaded = fjord::LoadEncryptionKey(key_path, "fuzz.key_file");
  FJORD_FUZZ_EXPECT(loaded.ok() || !loaded.status().message().empty(), "refusal without a message");
  return 0;
}
