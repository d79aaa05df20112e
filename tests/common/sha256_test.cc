// SHA-256 against the FIPS 180-2 examples ("abc", the two-block message, a million 'a'), whole,
// piecewise and from a file.
#include "common/sha256.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace fjord {
namespace {

constexpr char kAbc[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kTwoBlocks[] = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
constexpr char kMillionA[] = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";

std::string Hex(StatusOr<std::string> s) {
  EXPECT_TRUE(s.ok()) << s.status().message();
  return s.ok() ? *s : "";
}

TEST(CommonSha256, MatchesKnownVectors) {
  EXPECT_EQ(Hex(Sha256Hex("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Hex(Sha256Hex("abc")), kAbc);
  EXPECT_EQ(Hex(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")), kTwoBlocks);
  EXPECT_EQ(Hex(Sha256Hex(std::string(1000000, 'a'))), kMillionA);
  Sha256 h;
  h.Update("a", 1);
  h.Update("", 0);
  h.Update("bc", 2);
  EXPECT_EQ(Hex(h.FinishHex()), kAbc);
  Sha256 million;
  const std::string chunk(997, 'a');  // not a divisor of the block size
  size_t left = 1000000;
  for (; left >= chunk.size(); left -= chunk.size()) million.Update(chunk.data(), chunk.size());
  million.Update(chunk.data(), left);
  EXPECT_EQ(Hex(million.FinishHex()), kMillionA);
}

TEST(CommonSha256, FileDigestsAndMissingFiles) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("fjord_sha256_test." + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string small = (dir / "f").string(), large = (dir / "large").string();
  std::ofstream(small) << "abc";
  std::ofstream(large) << std::string(3 << 20, 'a') << "tail";  // several 1 MiB reads
  StatusOr<std::string> f = Sha256File(small, "file");
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(*f, kAbc);
  EXPECT_EQ(Hex(Sha256File(large, "file")), Hex(Sha256Hex(std::string(3 << 20, 'a') + "tail")));
  const StatusOr<std::string> missing = Sha256File((dir / "missing").string(), "shard");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("cannot open shard " + (dir / "missing").string()),
            std::string::npos)
      << missing.status().message();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fjord
