// Encryption at rest: key files, sealing round trips, and every way a sealed file can be wrong
// (wrong key, a flipped byte in header, ciphertext or tag, truncation, another context) refused as
// "wrong key or modified file" without returning plaintext.
#include "runtime/tenancy/crypto.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/runtime/tenancy/test_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::ReadText;
using testing::WriteText;

class CryptoTest : public testing::TenancyTest {
 protected:
  EncryptionKey Key(uint8_t fill) {
    std::array<uint8_t, 32> b;
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(fill + i);
    return EncryptionKey(b);
  }
};

TEST_F(CryptoTest, KeyFileRawAndHexLoadTheSameKey) {
  std::string raw(32, '\0');
  for (int i = 0; i < 32; ++i) raw[i] = static_cast<char>(i * 7);
  std::string hex;
  for (unsigned char c : raw) {
    char b[3];
    std::snprintf(b, sizeof(b), "%02x", c);
    hex += b;
  }
  WriteText(Path("raw.key"), raw, 0600);
  WriteText(Path("hex.key"), hex + "\n", 0600);
  StatusOr<EncryptionKey> a = LoadEncryptionKey(Path("raw.key"), "checkpoint.encryption_key_file");
  StatusOr<EncryptionKey> b = LoadEncryptionKey(Path("hex.key"), "checkpoint.encryption_key_file");
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(std::memcmp(a->data(), b->data(), 32), 0);
  EXPECT_EQ(*a->KeyId(), *b->KeyId());
  EXPECT_EQ(a->KeyId()->size(), 16u);
  EXPECT_NE(*a->KeyId(), *Key(1).KeyId());
}

TEST_F(CryptoTest, KeyFileRefusals) {
  const std::string field = "checkpoint.encryption_key_file";
  StatusOr<EncryptionKey> missing = LoadEncryptionKey(Path("nope.key"), field);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr(field + ": key file " + Path("nope.key")));
  EXPECT_THAT(missing.status().message(), HasSubstr("openssl rand -hex 32"));

  WriteText(Path("short.key"), "0123456789abcdef\n", 0600);
  StatusOr<EncryptionKey> short_key = LoadEncryptionKey(Path("short.key"), field);
  ASSERT_FALSE(short_key.ok());
  EXPECT_THAT(short_key.status().message(), HasSubstr("neither exactly 32 raw bytes nor 64 hex digits"));

  WriteText(Path("nothex.key"), std::string(64, 'z'), 0600);
  EXPECT_THAT(LoadEncryptionKey(Path("nothex.key"), field).status().message(), HasSubstr("64 hex digits"));

  WriteText(Path("open.key"), std::string(64, 'a'), 0644);
  StatusOr<EncryptionKey> open = LoadEncryptionKey(Path("open.key"), field);
  ASSERT_FALSE(open.ok());
  EXPECT_THAT(open.status().message(), HasSubstr("mode 0644"));
  EXPECT_THAT(open.status().message(), HasSubstr("chmod 600 " + Path("open.key")));
}

TEST_F(CryptoTest, SealRoundTripsAndHidesThePlaintext) {
  const EncryptionKey key = Key(3);
  const std::string a = "weights of tenant acme", b(3 << 20, 'x');  // second piece spans chunks
  StatusOr<std::string> sealed = Seal({{a.data(), a.size()}, {b.data(), b.size()}}, key, "ctx");
  ASSERT_TRUE(sealed.ok()) << sealed.status().message();
  EXPECT_TRUE(IsSealed(*sealed));
  EXPECT_EQ(sealed->size(), kSealHeaderBytes + a.size() + b.size() + kSealTagBytes);
  EXPECT_EQ(sealed->find("acme"), std::string::npos);
  StatusOr<std::string> opened = Unseal(*sealed, key, "ctx", "x");
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  EXPECT_EQ(*opened, a + b);
  // A fresh nonce per seal: the same plaintext never gives the same file.
  StatusOr<std::string> again = Seal({{a.data(), a.size()}}, key, "ctx");
  StatusOr<std::string> again2 = Seal({{a.data(), a.size()}}, key, "ctx");
  EXPECT_NE(*again, *again2);
  StatusOr<std::string> empty = Seal({}, key, "");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*Unseal(*empty, key, "", "x"), "");
}

std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  return out;
}

// AES-256-GCM known answers, typed from McGrew and Viega, "The Galois/Counter Mode of Operation
// (GCM)" (the NIST submission), Appendix B: test case 14 (zero key, IV and block, no AAD) and test
// case 16 (AES-256, 60-byte plaintext, 20 bytes of AAD, 96-bit IV). An independent oracle for the
// primitive that Seal and Unseal use: a round trip alone would pass with any self-consistent cipher.
TEST_F(CryptoTest, Aes256GcmMatchesTheNistSpecTestCases14And16) {
  struct Vector {
    const char* name;
    const char* key;
    const char* iv;
    const char* aad;
    const char* plaintext;
    const char* ciphertext;
    const char* tag;
  };
  const Vector vectors[] = {
      {"test case 14", "0000000000000000000000000000000000000000000000000000000000000000",
       "000000000000000000000000", "", "00000000000000000000000000000000", "cea7403d4d606b6e074ec5d3baf39d18",
       "d0d1c8a799996bf0265b98b5d48ab919"},
      {"test case 16", "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
       "cafebabefacedbaddecaf888", "feedfacedeadbeeffeedfacedeadbeefabaddad2",
       "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
       "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
       "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
       "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
       "76fc6ece0f4e1768cddf8853bb2d551b"},
  };
  for (const Vector& v : vectors) {
    SCOPED_TRACE(v.name);
    const std::string key_bytes = FromHex(v.key), iv = FromHex(v.iv), aad = FromHex(v.aad);
    const std::string plaintext = FromHex(v.plaintext), expected = FromHex(v.ciphertext) + FromHex(v.tag);
    ASSERT_EQ(key_bytes.size(), 32u);
    ASSERT_EQ(iv.size(), 12u);
    std::array<uint8_t, 32> raw;
    std::memcpy(raw.data(), key_bytes.data(), raw.size());
    const EncryptionKey key(raw);
    std::array<uint8_t, 12> nonce;
    std::memcpy(nonce.data(), iv.data(), nonce.size());
    StatusOr<std::string> sealed = Aes256GcmEncryptWithNonce(key, nonce, aad, plaintext);
    ASSERT_TRUE(sealed.ok()) << sealed.status().message();
    ASSERT_EQ(sealed->size(), plaintext.size() + kSealTagBytes);
    EXPECT_EQ(*sealed, expected);
    StatusOr<std::string> opened = Aes256GcmDecryptWithNonce(key, nonce, aad, expected);
    ASSERT_TRUE(opened.ok()) << opened.status().message();
    EXPECT_EQ(*opened, plaintext);
    std::string bad_tag = expected;
    bad_tag.back() ^= 0x01;
    StatusOr<std::string> refused = Aes256GcmDecryptWithNonce(key, nonce, aad, bad_tag);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kDataLoss);

    // The sealed-file format is this primitive with the file's nonce and AAD = header || context:
    // a file assembled from the known answer's output opens with Unseal.
    std::string header(kSealMagic, sizeof(kSealMagic));
    header += std::string("\x01\x00\x00\x00\x01\x00\x00\x00", 8) + iv;
    ASSERT_EQ(header.size(), kSealHeaderBytes);
    StatusOr<std::string> body = Aes256GcmEncryptWithNonce(key, nonce, header + "ctx", plaintext);
    ASSERT_TRUE(body.ok());
    StatusOr<std::string> unsealed = Unseal(header + *body, key, "ctx", "kat");
    ASSERT_TRUE(unsealed.ok()) << unsealed.status().message();
    EXPECT_EQ(*unsealed, plaintext);
  }
}

TEST_F(CryptoTest, WrongKeyFlippedByteTruncationAndOtherContextAreRefused) {
  const EncryptionKey key = Key(3);
  const std::string text(1000, 'w');
  StatusOr<std::string> sealed = Seal({{text.data(), text.size()}}, key, "tenant=acme");
  ASSERT_TRUE(sealed.ok());
  auto expect_refused = [&](const std::string& bytes, const EncryptionKey& k, const std::string& ctx,
                            const std::string& why) {
    SCOPED_TRACE(why);
    StatusOr<std::string> r = Unseal(bytes, k, ctx, "model.bin");
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("model.bin"));
    EXPECT_THAT(r.status().message(), HasSubstr("wrong key or modified file"));
  };
  expect_refused(*sealed, Key(4), "tenant=acme", "wrong key");
  expect_refused(*sealed, key, "tenant=other", "another context");
  for (size_t at : {size_t{20}, kSealHeaderBytes + 5, sealed->size() - 1}) {  // nonce, ciphertext, tag
    std::string flipped = *sealed;
    flipped[at] ^= 0x01;
    expect_refused(flipped, key, "tenant=acme", "flipped byte at " + std::to_string(at));
  }
  expect_refused(sealed->substr(0, sealed->size() - 7), key, "tenant=acme", "truncated");
  expect_refused(sealed->substr(0, 30), key, "tenant=acme", "shorter than header and tag");
  std::string version = *sealed;
  version[8] = 2;
  expect_refused(version, key, "tenant=acme", "unknown version");
  StatusOr<std::string> plain = Unseal("not sealed at all", key, "", "model.bin");
  ASSERT_FALSE(plain.ok());
  EXPECT_THAT(plain.status().message(), HasSubstr("is not a sealed (encrypted) file"));
}

TEST_F(CryptoTest, SealedFilesAreWrittenAtomicallyAndReadBack) {
  const EncryptionKey key = Key(9);
  const std::string text = "optimizer state";
  ASSERT_TRUE(WriteSealedFile(Path("opt.bin"), {{text.data(), text.size()}}, key, "c").ok());
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos);
  EXPECT_EQ(ReadText(Path("opt.bin")).find(text), std::string::npos);
  StatusOr<std::string> back = ReadSealedFile(Path("opt.bin"), key, "c");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, text);
  Status s = WriteSealedFile(Path("no/such/dir/x.bin"), {{text.data(), text.size()}}, key, "c");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("check that the directory exists"));
}

}  // namespace
}  // namespace fjord
