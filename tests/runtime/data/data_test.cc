// Token shards, the loader and fjord prep. The oracles are the token vectors and bytes the tests
// write themselves: shards are also built by hand, corrupted on disk, and loader output is
// compared with slices of the raw token stream.
#include "runtime/data/data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A fresh directory per test, removed afterwards.
class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // Parameterized names hold '/' ("Sizes/LoaderEpochTest"); keep the directory flat.
    std::string name = std::string(info->test_suite_name()) + "_" + info->name();
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = fs::path(::testing::TempDir()) / ("fjord_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

void AppendLe32(std::string* bytes, int32_t v) {
  const uint32_t u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) bytes->push_back(static_cast<char>((u >> (8 * i)) & 0xFF));
}

// The bytes of a shard, built by hand from the format description in runtime/data/data.h.
std::string ShardBytes(const std::vector<uint16_t>& tokens, int32_t magic = 20240520, int32_t version = 1,
                       int64_t count = -1) {
  std::string bytes;
  AppendLe32(&bytes, magic);
  AppendLe32(&bytes, version);
  AppendLe32(&bytes, static_cast<int32_t>(count < 0 ? static_cast<int64_t>(tokens.size()) : count));
  bytes.resize(1024, '\0');
  for (uint16_t t : tokens) {
    bytes.push_back(static_cast<char>(t & 0xFF));
    bytes.push_back(static_cast<char>(t >> 8));
  }
  return bytes;
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Overwrites bytes of an existing file at `offset`.
void Patch(const std::string& path, size_t offset, const std::string& bytes) {
  std::string contents = ReadBytes(path);
  ASSERT_LE(offset + bytes.size(), contents.size());
  contents.replace(offset, bytes.size(), bytes);
  WriteBytes(path, contents);
}

std::vector<int32_t> RandomTokens(size_t n, int32_t below, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(below));
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Shards

TEST_F(DataTest, ShardRoundTripsAndHasTheDocumentedBytes) {
  std::vector<int32_t> tokens = RandomTokens(3000, 65536, 1);
  tokens[0] = 0;
  tokens[1] = 65535;
  ASSERT_TRUE(WriteShard(Path("a.bin"), tokens).ok());

  std::vector<uint16_t> expected(tokens.begin(), tokens.end());
  EXPECT_EQ(ReadBytes(Path("a.bin")), ShardBytes(expected));
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 65536);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read.value(), std::vector<uint32_t>(tokens.begin(), tokens.end()));
  // Atomic write: nothing but the shard is left in the directory.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(DataTest, ShardWrittenByHandIsRead) {
  const std::vector<uint16_t> tokens = {7, 0, 255, 256, 1000, 65535, 42};
  WriteBytes(Path("hand.bin"), ShardBytes(tokens));
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("hand.bin"), 65536);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read.value(), std::vector<uint32_t>(tokens.begin(), tokens.end()));
}

// Version 2 (uint32 tokens, issue 18): bytes built by hand from the format description.
std::string ShardBytes32(const std::vector<uint32_t>& tokens) {
  std::string bytes;
  AppendLe32(&bytes, 20240520);
  AppendLe32(&bytes, 2);
  AppendLe32(&bytes, static_cast<int32_t>(tokens.size()));
  bytes.resize(1024, '\0');
  for (uint32_t t : tokens) AppendLe32(&bytes, static_cast<int32_t>(t));
  return bytes;
}

TEST_F(DataTest, ShardVersion2HoldsUint32TokensAndRoundTrips) {
  const std::vector<int32_t> tokens = {0, 65535, 65536, 128255, 7, 2000000000};
  ASSERT_TRUE(WriteShard(Path("a.bin"), tokens, kShardVersionUint32).ok());
  const std::vector<uint32_t> expected(tokens.begin(), tokens.end());
  EXPECT_EQ(ReadBytes(Path("a.bin")), ShardBytes32(expected));
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 2000000001);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read.value(), expected);
  // The vocabulary check applies to uint32 tokens too, with their 4-byte offsets.
  read = ReadShard(Path("a.bin"), 128256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("token 2000000000 at index 5 (byte offset " + std::to_string(1024 + 4 * 5) + ")"));
  // A version 2 file cut inside its tokens is refused with the 4-byte width.
  fs::resize_file(Path("a.bin"), 1024 + 4 * 6 - 2);
  read = ReadShard(Path("a.bin"), 2000000001);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("header says 6 tokens of 4 bytes = 1048 bytes expected"));
}

TEST_F(DataTest, ShardVersionFollowsTheVocabularySize) {
  EXPECT_EQ(ShardVersionFor(256), 1);
  EXPECT_EQ(ShardVersionFor(65536), 1);
  EXPECT_EQ(ShardVersionFor(65537), 2);
  EXPECT_EQ(ShardVersionFor(128256), 2);
  EXPECT_FALSE(WriteShard(Path("a.bin"), {1}, 3).ok());
  EXPECT_FALSE(WriteShard(Path("a.bin"), {-1}, kShardVersionUint32).ok());
}

TEST_F(DataTest, ShardEmptyIsValid) {
  ASSERT_TRUE(WriteShard(Path("empty.bin"), {}).ok());
  EXPECT_EQ(ReadBytes(Path("empty.bin")).size(), 1024u);
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("empty.bin"), 256);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_TRUE(read->empty());
}

TEST_F(DataTest, ShardWriteReplacesAnExistingShard) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3, 4}).ok());
  ASSERT_TRUE(WriteShard(Path("a.bin"), {9, 8}).ok());
  EXPECT_EQ(ReadBytes(Path("a.bin")), ShardBytes({9, 8}));
}

TEST_F(DataTest, ShardWriteRefusesTokensOutsideUint16) {
  for (int32_t bad : {-1, 65536}) {
    SCOPED_TRACE(bad);
    const Status s = WriteShard(Path("bad.bin"), {1, 2, bad, 3});
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(s.message(), HasSubstr(Path("bad.bin")));
    EXPECT_THAT(s.message(),
                HasSubstr("token " + std::to_string(bad) + " at index 2 does not fit in uint16"));
    if (bad > 0) {
      EXPECT_THAT(s.message(), HasSubstr("write version 2 (uint32)"));
    }
    EXPECT_FALSE(fs::exists(Path("bad.bin")));
  }
}

TEST_F(DataTest, ShardWriteIntoMissingDirectoryIsRefused) {
  const std::string path = Path("no/such/dir/a.bin");
  const Status s = WriteShard(path, {1, 2});
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr(path));
  EXPECT_THAT(s.message(), HasSubstr("check that the directory exists and is writable"));
}

TEST_F(DataTest, ShardMissingIsNotFound) {
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("nope.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("nope.bin") + ": no such file"));
}

TEST_F(DataTest, ShardThatCannotBeOpenedNamesTheErrorAndWhatToCheck) {
  WriteBytes(Path("file"), "a regular file, not a directory");
  const std::string path = Path("file/a.bin");  // ENOTDIR, not ENOENT
  StatusOr<std::vector<uint32_t>> read = ReadShard(path, 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(read.status().message(), StartsWith("shard " + path + ": cannot open it: Not a directory"));
  EXPECT_THAT(read.status().message(), HasSubstr("check the path and its permissions"));
}

TEST_F(DataTest, ShardThatIsADirectoryIsRefused) {
  fs::create_directories(Path("dir.bin"));
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("dir.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(), StartsWith("shard " + Path("dir.bin") + " is not a regular file"));
  EXPECT_THAT(read.status().message(), HasSubstr("point data.train / data.val at the .bin shard files"));
}

TEST_F(DataTest, ShardWriteThatCannotBeRenamedIntoPlaceLeavesNoTemporary) {
  // A non-empty directory where the shard goes: the temporary file is written, the rename fails.
  fs::create_directories(Path("out/a.bin/inside"));
  const Status s = WriteShard(Path("out/a.bin"), {1, 2, 3});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), StartsWith("cannot write shard " + Path("out/a.bin") + ": rename to " +
                                      Path("out/a.bin") + " of " + Path("out/a.bin.tmp.")));
  EXPECT_THAT(s.message(), HasSubstr("failed: Is a directory"));
  EXPECT_THAT(s.message(), HasSubstr("check free disk space and permissions"));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(Path("out"))) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"a.bin"});  // no a.bin.tmp.PID
  EXPECT_TRUE(fs::is_directory(Path("out/a.bin/inside")));
}

TEST_F(DataTest, AtomicWriteThatCannotBeRenamedIntoPlaceLeavesNoTemporary) {
  fs::create_directories(Path("out/state/inside"));
  const std::string text = "1 abc\n";
  const Status s = WriteFileAtomic(Path("out/state"), {{text.data(), text.size()}});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), StartsWith("rename to " + Path("out/state") + " of " + Path("out/state.tmp.")));
  EXPECT_THAT(s.message(), HasSubstr("failed: Is a directory; check free disk space and permissions"));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(Path("out"))) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"state"});
}

TEST_F(DataTest, ShardShorterThanHeaderIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3}).ok());
  fs::resize_file(Path("a.bin"), 100);
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("a.bin") + ": the file has 100 bytes"));
  EXPECT_THAT(read.status().message(), HasSubstr("shorter than the 1024-byte header"));
  EXPECT_THAT(read.status().message(), HasSubstr("create shards with `fjord prep`"));
}

TEST_F(DataTest, ShardWithWrongMagicIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3}).ok());
  Patch(Path("a.bin"), 0, std::string("\x01\x00\x00\x00", 4));  // magic := 1
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("shard " + Path("a.bin") + ": magic number 1 is not 20240520"));
  EXPECT_THAT(read.status().message(),
              HasSubstr("not an llm.c token shard; create shards with `fjord prep`"));
}

TEST_F(DataTest, ShardWithUnsupportedVersionIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3}).ok());
  Patch(Path("a.bin"), 4, std::string("\x03\x00\x00\x00", 4));  // version := 3
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("a.bin") + ": version 3 is not supported"));
  EXPECT_THAT(read.status().message(), HasSubstr("fjord reads version 1, uint16 tokens, and version 2"));
  EXPECT_THAT(read.status().message(), HasSubstr("re-create the shard with `fjord prep`"));
}

TEST_F(DataTest, ShardTruncatedInTheTokensIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), RandomTokens(100, 256, 2)).ok());
  fs::resize_file(Path("a.bin"), 1024 + 150);
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("shard " + Path("a.bin") + ": header says 100 tokens of 2 bytes = " +
                        std::to_string(1024 + 2 * 100) + " bytes expected, file has " +
                        std::to_string(1024 + 150) + " bytes: truncated or corrupt"));
  EXPECT_THAT(read.status().message(), HasSubstr("re-create the shard with `fjord prep`"));
}

TEST_F(DataTest, ShardWithTrailingBytesIsRefused) {
  WriteBytes(Path("a.bin"), ShardBytes({1, 2, 3}) + "xx");
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("header says 3 tokens of 2 bytes = 1030 bytes expected, file has 1032 bytes"));
}

TEST_F(DataTest, ShardWithNegativeCountIsRefused) {
  WriteBytes(Path("a.bin"), ShardBytes({}, 20240520, 1, /*count=*/0xFFFFFFFFll));
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("shard " + Path("a.bin") + ": the header's token count is negative"));
}

TEST_F(DataTest, ShardTokenOutsideVocabularyNamesIndexAndOffset) {
  std::vector<int32_t> tokens = RandomTokens(500, 256, 3);
  ASSERT_TRUE(WriteShard(Path("a.bin"), tokens).ok());
  const size_t index = 137;
  const size_t offset = 1024 + 2 * index;
  Patch(Path("a.bin"), offset, std::string("\x2C\x01", 2));          // token 300, little-endian
  Patch(Path("a.bin"), 1024 + 2 * 400, std::string("\xFF\xFF", 2));  // a later bad token is not the one named
  StatusOr<std::vector<uint32_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(read.status().message(),
              HasSubstr("shard " + Path("a.bin") + ": token 300 at index 137 (byte offset " +
                        std::to_string(offset) + ")"));
  EXPECT_THAT(
      read.status().message(),
      HasSubstr("model.vocab_size is 256; the shard was made for a larger vocabulary (re-run fjord prep with "
                "the right tokenizer or raise model.vocab_size)"));
  // The same bytes are fine for a vocabulary that holds every token.
  EXPECT_TRUE(ReadShard(Path("a.bin"), 65536).ok());
}

// ---------------------------------------------------------------------------------------------
// Globs

TEST_F(DataTest, ShardGlobReturnsSortedRegularFiles) {
  for (const char* name : {"b.bin", "a.bin", "c.bin", "x.txt"}) WriteBytes(Path(name), "");
  fs::create_directories(Path("d.bin"));
  StatusOr<std::vector<std::string>> files = ExpandShardGlob(Path("*.bin"), "data.train");
  ASSERT_TRUE(files.ok()) << files.status().message();
  EXPECT_EQ(files.value(), (std::vector<std::string>{Path("a.bin"), Path("b.bin"), Path("c.bin")}));
  // A plain path is its own match.
  files = ExpandShardGlob(Path("c.bin"), "data.train");
  ASSERT_TRUE(files.ok()) << files.status().message();
  EXPECT_EQ(files.value(), std::vector<std::string>{Path("c.bin")});
}

TEST_F(DataTest, ShardGlobWithoutMatchNamesFieldAndPattern) {
  const std::string pattern = Path("train_*.bin");
  StatusOr<std::vector<std::string>> files = ExpandShardGlob(pattern, "data.train");
  ASSERT_FALSE(files.ok());
  EXPECT_THAT(files.status().message(), StartsWith("data.train: no file matches '" + pattern + "'"));
  EXPECT_THAT(files.status().message(), HasSubstr("create shards with `fjord prep`"));
}

TEST_F(DataTest, ShardGlobMatchingOnlyDirectoriesIsRefused) {
  fs::create_directories(Path("shards"));
  StatusOr<std::vector<std::string>> files = ExpandShardGlob(Path("shard*"), "data.val");
  ASSERT_FALSE(files.ok());
  EXPECT_THAT(files.status().message(),
              StartsWith("data.val: '" + Path("shard*") + "' matches only directories"));
  EXPECT_THAT(files.status().message(), HasSubstr("point it at the .bin shard files"));
}

TEST_F(DataTest, ShardGlobEmptyPatternIsRefused) {
  StatusOr<std::vector<std::string>> files = ExpandShardGlob("", "data.val");
  ASSERT_FALSE(files.ok());
  EXPECT_THAT(files.status().message(), StartsWith("data.val is empty"));
  EXPECT_THAT(files.status().message(), HasSubstr("e.g. \"data/train_*.bin\""));
}

// ---------------------------------------------------------------------------------------------
// Loader

constexpr int kT = 8;

// The order documented in runtime/data/data.h, written again from that text over shards held in
// memory: the oracle for the streaming loader (which reads shards one at a time, ahead, on another
// thread, and drops them).
class OracleStream {
 public:
  OracleStream(std::vector<std::vector<int32_t>> shards, uint64_t seed, bool shuffle)
      : shards_(std::move(shards)), seed_(seed), shuffle_(shuffle) {
    for (size_t s = 0; s < shards_.size(); ++s) {
      const uint64_t n = shards_[s].size();
      windows_.push_back(n >= kT + 1 ? (n - 1) / kT : 0);
      if (windows_.back() > 0) eligible_.push_back(static_cast<uint32_t>(s));
      total_ += windows_.back();
    }
  }
  uint64_t windows() const { return total_; }

  // Inputs (T tokens) then the target of the last input: the window of sequence i.
  std::vector<int32_t> Window(uint64_t i) const {
    const uint64_t e = i / total_;
    uint64_t k = i % total_;
    std::vector<uint32_t> order = eligible_;
    if (shuffle_) {
      const std::vector<uint64_t> p = Shuffle(Hash(e, kShards), eligible_.size());
      for (size_t j = 0; j < p.size(); ++j) order[j] = eligible_[p[j]];
    }
    for (uint32_t s : order) {
      if (k >= windows_[s]) {
        k -= windows_[s];
        continue;
      }
      uint64_t start = k * kT;
      if (shuffle_) {
        const uint64_t choices = shards_[s].size() - windows_[s] * kT;
        start = Hash2(e, s, kOffset) % choices + Shuffle(Hash2(e, s, kOrder), windows_[s])[k] * kT;
      }
      return std::vector<int32_t>(shards_[s].begin() + start, shards_[s].begin() + start + kT + 1);
    }
    ADD_FAILURE() << "sequence " << i << " not found";
    return {};
  }

 private:
  static constexpr uint64_t kShards = 0x7368617264732121ull, kOrder = 0x6F72646572212121ull,
                            kOffset = 0x6F66667365742121ull;
  static uint64_t Mix(uint64_t x) {  // SplitMix64's finalizer
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }
  uint64_t Hash(uint64_t e, uint64_t salt) const { return Mix(seed_ ^ Mix(e ^ salt)); }
  uint64_t Hash2(uint64_t e, uint64_t s, uint64_t salt) const { return Mix(Hash(e, salt) ^ Mix(s)); }
  static std::vector<uint64_t> Shuffle(uint64_t seed, uint64_t n) {
    std::vector<uint64_t> v(n);
    for (uint64_t i = 0; i < n; ++i) v[i] = i;
    std::mt19937_64 rng(seed);
    for (uint64_t i = n; i > 1; --i) {
      const uint64_t limit = ~uint64_t{0} - ~uint64_t{0} % i;
      uint64_t x;
      do {
        x = rng();
      } while (x >= limit);
      std::swap(v[i - 1], v[x % i]);
    }
    return v;
  }

  std::vector<std::vector<int32_t>> shards_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<uint64_t> windows_;
  std::vector<uint32_t> eligible_;
  uint64_t total_ = 0;
};

class LoaderTest : public DataTest {
 protected:
  // Writes `shards` as s_000.bin, s_001.bin, ... and returns their glob.
  std::string WriteShards(const std::vector<std::vector<int32_t>>& shards, const std::string& prefix = "s") {
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[32];
      std::snprintf(name, sizeof(name), "%s_%03zu.bin", prefix.c_str(), i);
      EXPECT_TRUE(WriteShard(Path(name), shards[i]).ok());
    }
    return Path(prefix + "_*.bin");
  }

  // A stream of n tokens cut into shards of uneven sizes (one of them too short for a window).
  static std::vector<std::vector<int32_t>> Cut(const std::vector<int32_t>& stream) {
    const size_t n = stream.size();
    const size_t cuts[] = {0, n / 3, n / 3 + 5, n / 2 + 1, n};
    std::vector<std::vector<int32_t>> shards;
    for (int i = 0; i < 4; ++i) shards.emplace_back(stream.begin() + cuts[i], stream.begin() + cuts[i + 1]);
    return shards;
  }

  // Identity stream: token j is j, so a window's first input token is its place in the stream.
  static std::vector<int32_t> Iota(size_t n) {
    std::vector<int32_t> v(n);
    for (size_t j = 0; j < n; ++j) v[j] = static_cast<int32_t>(j);
    return v;
  }

  DataLoader Open(const std::string& glob, uint64_t seed, bool shuffle = true, int vocab = 65536) {
    StatusOr<DataLoader> loader = DataLoader::Open(glob, "data.train", vocab, kT, seed, shuffle);
    EXPECT_TRUE(loader.ok()) << loader.status().message();
    return std::move(loader).value();
  }

  struct Batch {
    std::vector<int32_t> inputs, targets;
  };
  static Batch Fill(const DataLoader& loader, uint64_t first, int B) {
    Batch batch{std::vector<int32_t>(B * kT, -7), std::vector<int32_t>(B * kT, -7)};
    const Status s = loader.Fill(first, B, batch.inputs.data(), batch.targets.data());
    EXPECT_TRUE(s.ok()) << s.message();
    return batch;
  }

  // The oracle's windows [first, first + B) as a Batch.
  static Batch Expected(const OracleStream& oracle, uint64_t first, int B) {
    Batch batch;
    for (int b = 0; b < B; ++b) {
      const std::vector<int32_t> w = oracle.Window(first + b);
      batch.inputs.insert(batch.inputs.end(), w.begin(), w.end() - 1);
      batch.targets.insert(batch.targets.end(), w.begin() + 1, w.end());
    }
    return batch;
  }

 public:
  // Start offsets of sequences [first, first + n), read from an identity stream.
  static std::vector<int64_t> Starts(const DataLoader& loader, uint64_t first, uint64_t n) {
    const Batch batch = Fill(loader, first, static_cast<int>(n));
    std::vector<int64_t> starts;
    for (uint64_t b = 0; b < n; ++b) starts.push_back(batch.inputs[b * kT]);
    return starts;
  }
};

TEST_F(LoaderTest, SequencesAreSlicesOfOneShardAndTargetsAreShiftedByOne) {
  const std::vector<std::vector<int32_t>> shards = Cut(RandomTokens(1000, 50257, 4));
  DataLoader loader = Open(WriteShards(shards), 1337);
  EXPECT_EQ(loader.num_tokens(), 1000u);
  EXPECT_EQ(loader.files().size(), 4u);
  const int B = 150;  // more than an epoch's worth, so two epochs are covered
  const Batch batch = Fill(loader, 100, B);
  for (int b = 0; b < B; ++b) {
    SCOPED_TRACE(b);
    const int32_t* in = &batch.inputs[b * kT];
    const int32_t* tg = &batch.targets[b * kT];
    bool found = false;
    for (const std::vector<int32_t>& shard : shards) {
      for (auto it = std::search(shard.begin(), shard.end(), in, in + kT); it != shard.end() && !found;
           it = std::search(it + 1, shard.end(), in, in + kT)) {
        const size_t start = static_cast<size_t>(it - shard.begin());
        found = start + kT + 1 <= shard.size() && std::equal(tg, tg + kT, shard.begin() + start + 1);
      }
    }
    EXPECT_TRUE(found) << "inputs and targets are not one slice of one shard";
  }
}

// Every epoch visits each window of each shard once; a shard's windows share the epoch's offset.
class LoaderEpochTest : public LoaderTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(LoaderEpochTest, EachEpochVisitsEveryWindowExactlyOnce) {
  const size_t n = GetParam();
  const std::vector<std::vector<int32_t>> shards = Cut(Iota(n));
  DataLoader loader = Open(WriteShards(shards), 99);
  const uint64_t w = loader.sequences_per_epoch();
  uint64_t expected_w = 0;
  std::vector<size_t> shard_of(n);
  std::vector<size_t> base;  // first token of each shard in the stream
  for (size_t s = 0, at = 0; s < shards.size(); at += shards[s].size(), ++s) {
    base.push_back(at);
    for (size_t j = 0; j < shards[s].size(); ++j) shard_of[at + j] = s;
    if (shards[s].size() >= kT + 1) expected_w += (shards[s].size() - 1) / kT;  // data.h
  }
  EXPECT_EQ(w, expected_w);
  std::set<int64_t> offsets;
  for (uint64_t epoch = 0; epoch < 6; ++epoch) {
    SCOPED_TRACE(epoch);
    const Batch batch = Fill(loader, epoch * w, static_cast<int>(w));
    std::vector<std::vector<int64_t>> starts(shards.size());
    for (uint64_t b = 0; b < w; ++b) {
      const int64_t start = batch.inputs[b * kT];
      const size_t s = shard_of[start];
      ASSERT_LE(start - base[s] + kT + 1, shards[s].size()) << "window runs past its shard";
      for (int t = 0; t < kT; ++t) ASSERT_EQ(batch.targets[b * kT + t], start + t + 1);
      starts[s].push_back(start - static_cast<int64_t>(base[s]));
    }
    for (size_t s = 0; s < shards.size(); ++s) {
      const uint64_t ws = shards[s].size() >= kT + 1 ? (shards[s].size() - 1) / kT : 0;
      ASSERT_EQ(starts[s].size(), ws) << "shard " << s;
      if (ws == 0) continue;
      std::sort(starts[s].begin(), starts[s].end());
      const int64_t offset = starts[s].front();
      EXPECT_LT(offset, kT);
      for (uint64_t k = 0; k < ws; ++k) EXPECT_EQ(starts[s][k], offset + static_cast<int64_t>(k) * kT);
      offsets.insert(offset);
    }
  }
  if (n >= 30 * kT) {
    EXPECT_GT(offsets.size(), 1u) << "the epoch offsets never change";
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, LoaderEpochTest,
                         ::testing::Values(3 * kT + 4, 4 * kT + 3, 10 * kT + 3, 100 * kT + 1, 1000));

// The equivalence: every rank of every world size, stepping through three epochs with
// micro-batches and gradient accumulation, and restarting from a step (a resume) with new
// loaders, sees exactly the oracle's global batch.
TEST_F(LoaderTest, MatchesTheInMemoryOracleForEveryWorldSizeAcrossEpochsAndResume) {
  std::vector<std::vector<int32_t>> shards;
  for (int s = 0; s < 6; ++s) shards.push_back(RandomTokens(60 + 37 * s, 50000, 20 + s));
  const std::string glob = WriteShards(shards);
  const OracleStream oracle(shards, 4242, /*shuffle=*/true);
  const int B = 3, accum = 2;
  for (int world : {1, 2, 3, 4}) {
    SCOPED_TRACE(world);
    const uint64_t global = static_cast<uint64_t>(B) * accum * world;
    const int steps = static_cast<int>(3 * oracle.windows() / global) + 1;
    for (int resume : {0, steps / 2}) {
      SCOPED_TRACE(resume);
      std::vector<DataLoader> ranks;
      for (int r = 0; r < world; ++r) ranks.push_back(Open(glob, 4242));
      ASSERT_EQ(ranks[0].sequences_per_epoch(), oracle.windows());
      for (int step = resume; step < steps; ++step) {
        for (int micro = 0; micro < accum; ++micro) {
          for (int r = 0; r < world; ++r) {
            const uint64_t first = step * global + (static_cast<uint64_t>(micro) * world + r) * B;
            const Batch got = Fill(ranks[r], first, B);
            const Batch want = Expected(oracle, first, B);
            ASSERT_EQ(got.inputs, want.inputs) << "step " << step << " rank " << r;
            ASSERT_EQ(got.targets, want.targets) << "step " << step << " rank " << r;
          }
        }
      }
    }
  }
}

TEST_F(LoaderTest, UnshuffledMatchesTheOracle) {
  const std::vector<std::vector<int32_t>> shards = Cut(RandomTokens(500, 1000, 9));
  DataLoader loader = Open(WriteShards(shards), 5, /*shuffle=*/false);
  const OracleStream oracle(shards, 5, /*shuffle=*/false);
  const Batch got = Fill(loader, 0, static_cast<int>(2 * oracle.windows()));
  const Batch want = Expected(oracle, 0, static_cast<int>(2 * oracle.windows()));
  EXPECT_EQ(got.inputs, want.inputs);
  EXPECT_EQ(got.targets, want.targets);
}

TEST_F(LoaderTest, ResultDoesNotDependOnPartitionOrCallOrder) {
  const std::string glob = WriteShards(Cut(Iota(500)));
  DataLoader a = Open(glob, 7);
  const uint64_t w = a.sequences_per_epoch();
  const uint64_t first = 3 * w - 2;  // the batch straddles the end of epoch 2
  const Batch whole = Fill(a, first, 4);
  const Batch head = Fill(a, first, 2);
  const Batch tail = Fill(a, first + 2, 2);
  std::vector<int32_t> joined = head.inputs;
  joined.insert(joined.end(), tail.inputs.begin(), tail.inputs.end());
  EXPECT_EQ(whole.inputs, joined);
  joined = head.targets;
  joined.insert(joined.end(), tail.targets.begin(), tail.targets.end());
  EXPECT_EQ(whole.targets, joined);

  // A loader that served other epochs first (different shards resident) and a copy give the same.
  DataLoader b = Open(glob, 7);
  Fill(b, 10 * w, 3);
  Fill(b, 0, 1);
  Fill(b, 5 * w + 1, 2);
  EXPECT_EQ(Fill(b, first, 4).inputs, whole.inputs);
  const DataLoader c = b;
  EXPECT_EQ(Fill(c, first, 4).inputs, whole.inputs);
  // One sequence at a time, in reverse order.
  for (int i = 3; i >= 0; --i) {
    EXPECT_EQ(Fill(b, first + i, 1).inputs,
              std::vector<int32_t>(whole.inputs.begin() + i * kT, whole.inputs.begin() + (i + 1) * kT));
  }
}

TEST_F(LoaderTest, ConcurrentFillsMatchSerialOnes) {
  const std::string glob = WriteShards(Cut(Iota(3000)));
  DataLoader serial = Open(glob, 3), shared = Open(glob, 3);
  const uint64_t w = serial.sequences_per_epoch();
  constexpr int kThreads = 4, kRounds = 20, B = 5;
  // Thread i reads from epochs i, i + 4, ... so shards are read, evicted and read again concurrently.
  std::vector<std::vector<Batch>> got(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < kRounds; ++r) got[i].push_back(Fill(shared, (i + kThreads * r) * w + 3, B));
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    for (int r = 0; r < kRounds; ++r) {
      EXPECT_EQ(got[i][r].inputs, Fill(serial, (i + kThreads * r) * w + 3, B).inputs) << i << " " << r;
    }
  }
}

TEST_F(LoaderTest, SeedChangesTheOrderAndTheSameSeedRepeatsIt) {
  const std::string glob = WriteShards(Cut(Iota(2000)));
  DataLoader one = Open(glob, 1), again = Open(glob, 1), two = Open(glob, 2);
  const uint64_t w = one.sequences_per_epoch();
  EXPECT_EQ(Starts(one, 0, 2 * w), Starts(again, 0, 2 * w));
  EXPECT_NE(Starts(one, 0, w), Starts(two, 0, w));
  EXPECT_NE(Starts(one, 0, w), Starts(one, w, w)) << "epochs repeat the same order";
}

TEST_F(LoaderTest, ShuffleVisitsShardsInAnEpochDependentOrder) {
  // 8 shards of 10 windows: the shard of each sequence, run-length encoded, is the epoch's shard order.
  std::vector<std::vector<int32_t>> shards;
  for (int s = 0; s < 8; ++s) shards.push_back(std::vector<int32_t>(10 * kT + 1, s));
  DataLoader loader = Open(WriteShards(shards), 11);
  const uint64_t w = loader.sequences_per_epoch();
  ASSERT_EQ(w, 80u);
  std::set<std::vector<int64_t>> orders;
  for (uint64_t e = 0; e < 4; ++e) {
    std::vector<int64_t> order;
    for (int64_t s : Starts(loader, e * w, w)) {
      if (order.empty() || order.back() != s) order.push_back(s);
    }
    EXPECT_EQ(order.size(), 8u) << "a shard's windows are not consecutive in epoch " << e;
    orders.insert(order);
  }
  EXPECT_GT(orders.size(), 1u) << "every epoch visits the shards in the same order";
}

TEST_F(LoaderTest, NoShuffleServesShardsAndWindowsInOrder) {
  const std::vector<std::vector<int32_t>> shards = Cut(Iota(100));  // 33, 5, 13 and 49 tokens
  DataLoader loader = Open(WriteShards(shards), 5, /*shuffle=*/false);
  const uint64_t w = loader.sequences_per_epoch();
  std::vector<int64_t> expected;
  int64_t base = 0;
  for (const auto& shard : shards) {
    const int64_t ws = shard.size() >= kT + 1 ? (static_cast<int64_t>(shard.size()) - 1) / kT : 0;
    for (int64_t k = 0; k < ws; ++k) expected.push_back(base + k * kT);
    base += static_cast<int64_t>(shard.size());
  }
  EXPECT_EQ(w, expected.size());
  std::vector<int64_t> twice = expected;
  twice.insert(twice.end(), expected.begin(), expected.end());
  EXPECT_EQ(Starts(loader, 0, 2 * w), twice);
}

TEST_F(LoaderTest, VersionsOneAndTwoMixInOneGlob) {
  std::vector<int32_t> wide = RandomTokens(40, 100000, 8);
  std::vector<int32_t> narrow = RandomTokens(40, 60000, 9);
  ASSERT_TRUE(WriteShard(Path("m_000.bin"), narrow).ok());
  ASSERT_TRUE(WriteShard(Path("m_001.bin"), wide, kShardVersionUint32).ok());
  StatusOr<DataLoader> loader = DataLoader::Open(Path("m_*.bin"), "data.train", 100000, kT, 1, false);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  const OracleStream oracle({narrow, wide}, 1, false);
  EXPECT_EQ(Fill(*loader, 0, 8).inputs, Expected(oracle, 0, 8).inputs);
}

TEST_F(LoaderTest, RefusesTooFewTokens) {
  const std::string glob = WriteShards({Iota(8), Iota(2), Iota(1)});
  StatusOr<DataLoader> loader = DataLoader::Open(glob, "data.val", 65536, kT, 1, false);
  ASSERT_FALSE(loader.ok());
  const std::string& m = loader.status().message();
  EXPECT_THAT(m, StartsWith("data.val: 11 tokens in 3 file(s) matching '" + glob + "'"));
  EXPECT_THAT(m, HasSubstr(Path("s_000.bin") + " (8 tokens)"));
  EXPECT_THAT(m, HasSubstr(Path("s_002.bin") + " (1 tokens)"));
  EXPECT_THAT(m, HasSubstr("one sequence needs seq_len + 1 = 9 tokens within one shard"));
  EXPECT_THAT(m, HasSubstr("or lower train.seq_len"));
}

TEST_F(LoaderTest, OpenReadsOnlyHeadersAndABadTokenIsRefusedWhenItsShardIsRead) {
  // Shard 1 holds token 256 at index 7, outside a 256-id vocabulary: Open does not read tokens, the
  // first Fill that needs shard 1 refuses it, naming the field, the shard, the index and the offset.
  std::vector<int32_t> bad = RandomTokens(30, 256, 5);
  bad[7] = 256;
  const std::string glob = WriteShards({RandomTokens(30, 256, 4), bad});
  StatusOr<DataLoader> loader = DataLoader::Open(glob, "data.train", 256, kT, 1, /*shuffle=*/false);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  EXPECT_EQ(loader->stats().shard_reads, 0u);
  std::vector<int32_t> in(kT), tg(kT);
  EXPECT_TRUE(loader->Fill(0, 1, in.data(), tg.data()).ok());
  const Status s = loader->Fill(3, 1, in.data(), tg.data());  // shard 1's first window
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), StartsWith("data.train: shard " + Path("s_001.bin") +
                                      ": token 256 at index 7 (byte offset 1038)"));
  EXPECT_THAT(s.message(), HasSubstr("raise model.vocab_size"));
}

TEST_F(LoaderTest, ShardTruncatedOrRewrittenAfterOpenIsRefusedAtReadNamingIt) {
  const std::string glob = WriteShards({RandomTokens(100, 256, 1), RandomTokens(100, 256, 2)});
  DataLoader loader = Open(glob, 1, /*shuffle=*/false);
  fs::resize_file(Path("s_001.bin"), 1024 + 2 * 50);
  std::vector<int32_t> in(kT), tg(kT);
  Status s = loader.Fill(13, 1, in.data(), tg.data());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), StartsWith("data.train: shard " + Path("s_001.bin") + ": header says 100 tokens"));
  EXPECT_THAT(s.message(), HasSubstr("truncated or corrupt"));
  // Rewritten with another count: the header no longer matches what Open saw.
  ASSERT_TRUE(WriteShard(Path("s_001.bin"), RandomTokens(50, 256, 3)).ok());
  s = loader.Fill(13, 1, in.data(), tg.data());
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("shard " + Path("s_001.bin") +
                                     " changed after the job opened it (version 1, 100 tokens then; "
                                     "version 1, 50 tokens now)"));
  // Removed: named too.
  fs::remove(Path("s_001.bin"));
  s = loader.Fill(13, 1, in.data(), tg.data());
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("shard " + Path("s_001.bin") + ": no such file"));
  // Shard 0 is still served.
  EXPECT_TRUE(loader.Fill(0, 1, in.data(), tg.data()).ok());
}

// Memory does not grow with the data: walking two epochs of 4 or 48 shards, a rank holds at most the
// shards one Fill touches plus one read ahead.
TEST_F(LoaderTest, ResidentShardsDoNotGrowWithTheNumberOfShards) {
  for (int count : {4, 48}) {
    SCOPED_TRACE(count);
    std::vector<std::vector<int32_t>> shards;
    for (int s = 0; s < count; ++s) shards.push_back(RandomTokens(20 * kT + 1, 1000, s));
    DataLoader loader = Open(WriteShards(shards, std::string("n") + std::to_string(count)), 17);
    const uint64_t w = loader.sequences_per_epoch();
    for (uint64_t i = 0; i < 2 * w; i += 4) Fill(loader, i, 4);
    const DataLoader::Stats stats = loader.stats();
    const uint64_t shard_bytes = 1024 + 2 * (20 * kT + 1);
    EXPECT_LE(stats.max_resident_shards, 3u);  // a batch across a shard boundary, and one ahead
    EXPECT_LE(stats.max_resident_bytes, 3 * shard_bytes);
    // Each shard is read in each epoch (the last of one epoch may open the next, read once).
    EXPECT_GE(stats.shard_reads, 2u * count - 1);
  }
}

// Once the loader has read ahead, the step that crosses into the next shard does not wait for it.
TEST_F(LoaderTest, TheNextShardIsReadAheadOffTheCallingThread) {
  std::vector<std::vector<int32_t>> shards;
  for (int s = 0; s < 3; ++s) shards.push_back(RandomTokens(4 * kT + 1, 1000, s));
  DataLoader loader = Open(WriteShards(shards), 1, /*shuffle=*/false);
  Fill(loader, 0, 4);  // shard 0 whole; asks for shard 1
  EXPECT_EQ(loader.stats().waited_reads, 1u);
  for (int i = 0; i < 1000 && loader.stats().shard_reads < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(loader.stats().shard_reads, 2u) << "shard 1 was not read ahead within 10 s";
  Fill(loader, 4, 4);  // shard 1
  EXPECT_EQ(loader.stats().waited_reads, 1u);
}

TEST_F(LoaderTest, NonPositiveSequenceLengthIsRefusedBeforeAnyShardIsRead) {
  StatusOr<DataLoader> loader = DataLoader::Open(Path("none_*.bin"), "data.train", 256, 0, 1, true);
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(loader.status().message(), StartsWith("data.train: sequence length 0 must be at least 1"));
  EXPECT_THAT(loader.status().message(), HasSubstr("set train.seq_len (or model.seq_len) to 1 or more"));
}

TEST_F(LoaderTest, NoMatchingShardsIsRefused) {
  StatusOr<DataLoader> loader = DataLoader::Open(Path("none_*.bin"), "data.train", 256, kT, 1, true);
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(),
              StartsWith("data.train: no file matches '" + Path("none_*.bin") + "'"));
}

}  // namespace
}  // namespace fjord
