// Token shards, the loader and fjord prep. The oracles are the token vectors and bytes the tests
// write themselves: shards are also built by hand, corrupted on disk, and loader output is
// compared with slices of the raw token stream.
#include "runtime/data/data.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
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
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 65536);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read.value(), expected);
  // Atomic write: nothing but the shard is left in the directory.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(DataTest, ShardWrittenByHandIsRead) {
  const std::vector<uint16_t> tokens = {7, 0, 255, 256, 1000, 65535, 42};
  WriteBytes(Path("hand.bin"), ShardBytes(tokens));
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("hand.bin"), 65536);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read.value(), tokens);
}

TEST_F(DataTest, ShardEmptyIsValid) {
  ASSERT_TRUE(WriteShard(Path("empty.bin"), {}).ok());
  EXPECT_EQ(ReadBytes(Path("empty.bin")).size(), 1024u);
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("empty.bin"), 256);
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
    EXPECT_THAT(s.message(), HasSubstr("use a tokenizer with at most 65536 ids"));
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
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("nope.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("nope.bin") + ": no such file"));
}

TEST_F(DataTest, ShardThatCannotBeOpenedNamesTheErrorAndWhatToCheck) {
  WriteBytes(Path("file"), "a regular file, not a directory");
  const std::string path = Path("file/a.bin");  // ENOTDIR, not ENOENT
  StatusOr<std::vector<uint16_t>> read = ReadShard(path, 256);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(read.status().message(), StartsWith("shard " + path + ": cannot open it: Not a directory"));
  EXPECT_THAT(read.status().message(), HasSubstr("check the path and its permissions"));
}

TEST_F(DataTest, ShardThatIsADirectoryIsRefused) {
  fs::create_directories(Path("dir.bin"));
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("dir.bin"), 256);
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
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("a.bin") + ": the file has 100 bytes"));
  EXPECT_THAT(read.status().message(), HasSubstr("shorter than the 1024-byte header"));
  EXPECT_THAT(read.status().message(), HasSubstr("create shards with `fjord prep`"));
}

TEST_F(DataTest, ShardWithWrongMagicIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3}).ok());
  Patch(Path("a.bin"), 0, std::string("\x01\x00\x00\x00", 4));  // magic := 1
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("shard " + Path("a.bin") + ": magic number 1 is not 20240520"));
  EXPECT_THAT(read.status().message(),
              HasSubstr("not an llm.c token shard; create shards with `fjord prep`"));
}

TEST_F(DataTest, ShardWithUnsupportedVersionIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), {1, 2, 3}).ok());
  Patch(Path("a.bin"), 4, std::string("\x02\x00\x00\x00", 4));  // version := 2
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(), HasSubstr("shard " + Path("a.bin") + ": version 2 is not supported"));
  EXPECT_THAT(read.status().message(), HasSubstr("re-create the shard with `fjord prep`"));
}

TEST_F(DataTest, ShardTruncatedInTheTokensIsRefused) {
  ASSERT_TRUE(WriteShard(Path("a.bin"), RandomTokens(100, 256, 2)).ok());
  fs::resize_file(Path("a.bin"), 1024 + 150);
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(
      read.status().message(),
      HasSubstr("shard " + Path("a.bin") + ": header says 100 tokens = " + std::to_string(1024 + 2 * 100) +
                " bytes expected, file has " + std::to_string(1024 + 150) + " bytes: truncated or corrupt"));
  EXPECT_THAT(read.status().message(), HasSubstr("re-create the shard with `fjord prep`"));
}

TEST_F(DataTest, ShardWithTrailingBytesIsRefused) {
  WriteBytes(Path("a.bin"), ShardBytes({1, 2, 3}) + "xx");
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(read.status().message(),
              HasSubstr("header says 3 tokens = 1030 bytes expected, file has 1032 bytes"));
}

TEST_F(DataTest, ShardWithNegativeCountIsRefused) {
  WriteBytes(Path("a.bin"), ShardBytes({}, 20240520, 1, /*count=*/0xFFFFFFFFll));
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
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
  StatusOr<std::vector<uint16_t>> read = ReadShard(Path("a.bin"), 256);
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

class LoaderTest : public DataTest {
 protected:
  // Writes `stream` as shards of uneven sizes (so windows cross shard boundaries) and returns the glob.
  std::string WriteStream(const std::vector<int32_t>& stream) {
    const size_t cuts[] = {stream.size() / 3, stream.size() / 3 + 5};
    size_t begin = 0;
    for (int i = 0; i < 3; ++i) {
      const size_t end = i < 2 ? std::min(cuts[i], stream.size()) : stream.size();
      EXPECT_TRUE(WriteShard(Path("s_" + std::to_string(i) + ".bin"),
                             std::vector<int32_t>(stream.begin() + begin, stream.begin() + end))
                      .ok());
      begin = end;
    }
    return Path("s_*.bin");
  }

  // Identity stream: token j is j, so a window's first input token is its start offset.
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
    loader.Fill(first, B, batch.inputs.data(), batch.targets.data());
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

TEST_F(LoaderTest, SequencesAreSlicesOfTheStreamAndTargetsAreShiftedByOne) {
  const std::vector<int32_t> stream = RandomTokens(1000, 50257, 4);
  DataLoader loader = Open(WriteStream(stream), 1337);
  EXPECT_EQ(loader.num_tokens(), stream.size());
  EXPECT_EQ(loader.files().size(), 3u);
  const int B = 40;  // more than an epoch's worth, so two epochs are covered
  const Batch batch = Fill(loader, 100, B);
  for (int b = 0; b < B; ++b) {
    SCOPED_TRACE(b);
    const int32_t* in = &batch.inputs[b * kT];
    const int32_t* tg = &batch.targets[b * kT];
    auto it = std::search(stream.begin(), stream.end(), in, in + kT);
    ASSERT_NE(it, stream.end()) << "inputs are not a slice of the stream";
    const size_t start = static_cast<size_t>(it - stream.begin());
    ASSERT_LE(start + kT + 1, stream.size());
    for (int t = 0; t < kT; ++t) EXPECT_EQ(tg[t], stream[start + t + 1]);
  }
}

// Every epoch visits each of its W windows once; windows fit and share the epoch's offset.
class LoaderEpochTest : public LoaderTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(LoaderEpochTest, EachEpochVisitsEveryWindowExactlyOnce) {
  const size_t n = GetParam();
  const std::vector<int32_t> stream = Iota(n);
  DataLoader loader = Open(WriteStream(stream), 99);
  const uint64_t w = loader.sequences_per_epoch();
  EXPECT_EQ(w, std::max<uint64_t>(1, (n - kT) / kT));  // documented in runtime/data/data.h
  std::set<int64_t> offsets;
  for (uint64_t epoch = 0; epoch < 6; ++epoch) {
    SCOPED_TRACE(epoch);
    const Batch batch = Fill(loader, epoch * w, static_cast<int>(w));
    std::vector<int64_t> starts;
    for (uint64_t b = 0; b < w; ++b) {
      const int64_t start = batch.inputs[b * kT];
      ASSERT_LE(static_cast<size_t>(start) + kT + 1, n) << "window runs past the data";
      for (int t = 0; t < kT; ++t) {
        ASSERT_EQ(batch.inputs[b * kT + t], stream[start + t]);
        ASSERT_EQ(batch.targets[b * kT + t], stream[start + t + 1]);
      }
      starts.push_back(start);
    }
    std::sort(starts.begin(), starts.end());
    const int64_t offset = starts.front();
    EXPECT_LT(offset, kT);
    for (uint64_t k = 0; k < w; ++k) EXPECT_EQ(starts[k], offset + static_cast<int64_t>(k) * kT);
    offsets.insert(offset);
  }
  if (n >= 3 * kT) {
    EXPECT_GT(offsets.size(), 1u) << "the epoch offset never changes";
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, LoaderEpochTest,
                         ::testing::Values(kT + 1, kT + 2, 2 * kT - 1, 2 * kT, 2 * kT + 1, 10 * kT + 3,
                                           1000));

TEST_F(LoaderTest, ResultDoesNotDependOnPartitionOrCallOrder) {
  const std::string glob = WriteStream(Iota(500));
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

  // A loader that served other epochs first (different cache contents) and a copy give the same.
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

// The order in which epoch `epoch` visits its windows: window k starts at offset + k * T.
std::vector<int64_t> WindowOrder(const DataLoader& loader, uint64_t epoch) {
  const uint64_t w = loader.sequences_per_epoch();
  std::vector<int64_t> order = LoaderTest::Starts(loader, epoch * w, w);
  const int64_t offset = *std::min_element(order.begin(), order.end());
  for (int64_t& start : order) start = (start - offset) / kT;
  return order;
}

TEST_F(LoaderTest, ConcurrentFillsMatchSerialOnes) {
  const std::string glob = WriteStream(Iota(3000));
  DataLoader serial = Open(glob, 3), shared = Open(glob, 3);
  const uint64_t w = serial.sequences_per_epoch();
  constexpr int kThreads = 4, kRounds = 20, B = 5;
  // Thread i reads from epochs i, i + 4, ... so the two-entry cache is contended and evicted.
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
  const std::string glob = WriteStream(Iota(2000));
  DataLoader one = Open(glob, 1), again = Open(glob, 1), two = Open(glob, 2);
  const uint64_t w = one.sequences_per_epoch();
  EXPECT_EQ(Starts(one, 0, 2 * w), Starts(again, 0, 2 * w));
  EXPECT_NE(WindowOrder(one, 0), WindowOrder(two, 0));
  EXPECT_NE(WindowOrder(one, 0), WindowOrder(one, 1)) << "epochs repeat the same order";
}

TEST_F(LoaderTest, NoShuffleServesWindowsInOrder) {
  const size_t n = 100;
  DataLoader loader = Open(WriteStream(Iota(n)), 5, /*shuffle=*/false);
  const uint64_t w = loader.sequences_per_epoch();
  EXPECT_EQ(w, (n - 1) / kT);
  std::vector<int64_t> expected;
  for (int epoch = 0; epoch < 2; ++epoch) {
    for (uint64_t k = 0; k < w; ++k) expected.push_back(static_cast<int64_t>(k) * kT);
  }
  EXPECT_EQ(Starts(loader, 0, 2 * w), expected);
}

TEST_F(LoaderTest, RefusesTooFewTokens) {
  const std::string glob = WriteStream(Iota(kT));
  StatusOr<DataLoader> loader = DataLoader::Open(glob, "data.val", 65536, kT, 1, false);
  ASSERT_FALSE(loader.ok());
  const std::string& m = loader.status().message();
  EXPECT_THAT(m, StartsWith("data.val: 8 tokens in 3 file(s) matching '" + glob + "'"));
  EXPECT_THAT(m, HasSubstr(Path("s_0.bin") + " (2 tokens)"));
  EXPECT_THAT(m, HasSubstr(Path("s_2.bin") + " (1 tokens)"));
  EXPECT_THAT(m, HasSubstr("one sequence needs seq_len + 1 = 9 tokens"));
  EXPECT_THAT(m, HasSubstr("add data (run fjord prep on a longer text) or lower train.seq_len"));
}

TEST_F(LoaderTest, ShardErrorsNameTheField) {
  // Shards hold tokens [0, 100), [100, 105) and [105, 300): the first one >= 256 is 256, at index
  // 256 - 105 of the third shard.
  const std::string glob = WriteStream(Iota(300));
  StatusOr<DataLoader> loader = DataLoader::Open(glob, "data.train", 256, kT, 1, true);
  ASSERT_FALSE(loader.ok());
  EXPECT_THAT(loader.status().message(), StartsWith("data.train: shard " + Path("s_2.bin") +
                                                    ": token 256 at index 151 (byte offset 1326)"));
  EXPECT_THAT(loader.status().message(), HasSubstr("raise model.vocab_size"));
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

// ---------------------------------------------------------------------------------------------
// fjord prep

class PrepTest : public DataTest {
 protected:
  std::string WriteText(const std::string& text) {
    WriteBytes(Path("input.txt"), text);
    return Path("input.txt");
  }
  std::string Concat(const std::vector<std::string>& files) {
    std::string bytes;
    for (const std::string& f : files) {
      StatusOr<std::vector<uint16_t>> shard = ReadShard(f, 256);
      EXPECT_TRUE(shard.ok()) << shard.status().message();
      if (shard.ok()) {
        for (uint16_t t : shard.value()) bytes.push_back(static_cast<char>(t));
      }
    }
    return bytes;
  }
};

std::string SampleText(size_t n) {
  std::mt19937 rng(11);
  std::string text;
  for (size_t i = 0; i < n; ++i) text.push_back(static_cast<char>(rng() & 0xFF));
  return text;
}

TEST_F(PrepTest, ShardsConcatenateBackToTheInput) {
  const std::string text = SampleText(10000);
  PrepOptions options{WriteText(text), Path("out"), 0.1, 1000};
  StatusOr<PrepResult> result = PrepareShards(options, *MakeByteTokenizer());
  ASSERT_TRUE(result.ok()) << result.status().message();
  EXPECT_EQ(result->train_tokens, 9000);
  EXPECT_EQ(result->val_tokens, 1000);
  std::vector<std::string> train;
  for (int i = 0; i < 9; ++i) train.push_back(Path("out/train_00000" + std::to_string(i) + ".bin"));
  EXPECT_EQ(result->train_files, train);
  EXPECT_EQ(result->val_files, std::vector<std::string>{Path("out/val_000000.bin")});
  const std::string train_text = Concat(result->train_files);
  const std::string val_text = Concat(result->val_files);
  EXPECT_EQ(train_text, text.substr(0, 9000));
  EXPECT_EQ(train_text + val_text, text);
  // What the trainer sees through the glob.
  StatusOr<std::vector<std::string>> globbed = ExpandShardGlob(Path("out/train_*.bin"), "data.train");
  ASSERT_TRUE(globbed.ok()) << globbed.status().message();
  EXPECT_EQ(globbed.value(), train);
}

TEST_F(PrepTest, SplitFollowsValFraction) {
  const std::string text = SampleText(777);
  for (double fraction : {0.0, 0.05, 0.25, 0.5, 0.9}) {
    SCOPED_TRACE(fraction);
    fs::remove_all(Path("out"));
    StatusOr<PrepResult> result =
        PrepareShards({WriteText(text), Path("out"), fraction, 100}, *MakeByteTokenizer());
    ASSERT_TRUE(result.ok()) << result.status().message();
    EXPECT_LE(std::abs(static_cast<double>(result->val_tokens) - 777 * fraction), 0.5);
    EXPECT_EQ(result->train_tokens + result->val_tokens, 777);
    EXPECT_EQ(Concat(result->train_files) + Concat(result->val_files), text);
    EXPECT_EQ(result->val_files.empty(), fraction == 0.0);
    EXPECT_EQ(fs::exists(Path("out/val_000000.bin")), fraction > 0.0);
  }
}

TEST_F(PrepTest, RerunInPlaceReplacesTheShards) {
  // Same shard counts, different text: every shard is replaced, none is left over.
  ASSERT_TRUE(PrepareShards({WriteText(SampleText(300)), Path("out"), 0.1, 100}, *MakeByteTokenizer()).ok());
  std::string text = SampleText(290);
  std::reverse(text.begin(), text.end());
  StatusOr<PrepResult> result = PrepareShards({WriteText(text), Path("out"), 0.2, 100}, *MakeByteTokenizer());
  ASSERT_TRUE(result.ok()) << result.status().message();
  EXPECT_EQ(Concat(result->train_files) + Concat(result->val_files), text);
}

TEST_F(PrepTest, ShardsFeedTheLoader) {
  const std::string text = SampleText(2000);
  StatusOr<PrepResult> result = PrepareShards({WriteText(text), Path("out"), 0.1, 512}, *MakeByteTokenizer());
  ASSERT_TRUE(result.ok()) << result.status().message();
  StatusOr<DataLoader> loader = DataLoader::Open(Path("out/train_*.bin"), "data.train", 256, 16, 3, true);
  ASSERT_TRUE(loader.ok()) << loader.status().message();
  EXPECT_EQ(loader->num_tokens(), 1800u);
}

// Refusals: each builds the bad input and checks the message.
TEST_F(PrepTest, MissingInputIsNotFound) {
  StatusOr<PrepResult> r = PrepareShards({Path("nope.txt"), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("input " + Path("nope.txt") + ": no such file"));
  EXPECT_THAT(r.status().message(), HasSubstr("give the text file to tokenize"));
}

TEST_F(PrepTest, EmptyInputIsRefused) {
  StatusOr<PrepResult> r = PrepareShards({WriteText(""), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("input " + Path("input.txt") + " is empty"));
  EXPECT_THAT(r.status().message(), HasSubstr("give a non-empty text file"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(PrepTest, ValFractionOutsideUnitIntervalIsRefused) {
  const std::string input = WriteText(SampleText(100));
  for (double bad : {1.0, -0.1, 1.5, std::nan("")}) {
    SCOPED_TRACE(bad);
    StatusOr<PrepResult> r = PrepareShards({input, Path("out"), bad, 100}, *MakeByteTokenizer());
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("is outside [0, 1)"));
    EXPECT_THAT(r.status().message(), HasSubstr("use e.g. 0.1, or 0 for no validation shard"));
  }
}

TEST_F(PrepTest, TinyValidationPartIsRefused) {
  StatusOr<PrepResult> r =
      PrepareShards({WriteText("0123456789"), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr(Path("input.txt") + " has 10 tokens"));
  EXPECT_THAT(r.status().message(), HasSubstr("keeps 1 for validation"));
  EXPECT_THAT(r.status().message(), HasSubstr("the validation part needs at least 2 tokens"));
  EXPECT_THAT(r.status().message(), HasSubstr("or val_fraction 0"));
}

TEST_F(PrepTest, TinyTrainPartIsRefused) {
  StatusOr<PrepResult> r = PrepareShards({WriteText("abcd"), Path("out"), 0.8, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("has 4 tokens"));
  EXPECT_THAT(r.status().message(), HasSubstr("1 for training"));
  EXPECT_THAT(r.status().message(), HasSubstr("the train part needs at least 2 tokens"));
  EXPECT_THAT(r.status().message(), HasSubstr("use a longer text or a smaller val_fraction"));
  // A single byte cannot train even without validation.
  r = PrepareShards({WriteText("a"), Path("out"), 0.0, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("the train part needs at least 2 tokens"));
}

TEST_F(PrepTest, LeftoverShardsAreRefusedNotMixed) {
  fs::create_directories(Path("out"));
  ASSERT_TRUE(WriteShard(Path("out/train_000007.bin"), {1, 2, 3}).ok());
  StatusOr<PrepResult> r =
      PrepareShards({WriteText(SampleText(300)), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr(Path("out/train_000007.bin") + " is left from an earlier prep"));
  EXPECT_THAT(r.status().message(), HasSubstr("delete it or choose an empty output directory"));
  EXPECT_FALSE(fs::exists(Path("out/train_000000.bin")));
}

TEST_F(PrepTest, OutputDirThatIsAFileIsRefused) {
  WriteBytes(Path("out"), "not a directory");
  StatusOr<PrepResult> r =
      PrepareShards({WriteText(SampleText(100)), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("cannot create the output directory " + Path("out")));
  EXPECT_THAT(r.status().message(), HasSubstr("choose another directory"));
}

TEST_F(PrepTest, NonPositiveShardTokensIsRefused) {
  StatusOr<PrepResult> r =
      PrepareShards({WriteText(SampleText(100)), Path("out"), 0.1, 0}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("shard_tokens 0 must be at least 1"));
}

TEST_F(PrepTest, EmptyOutputDirIsRefused) {
  StatusOr<PrepResult> r = PrepareShards({WriteText(SampleText(100)), "", 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("the output directory is empty"));
  EXPECT_THAT(r.status().message(), HasSubstr("give a directory for the shards"));
}

// A tokenizer with more ids than a uint16 shard can hold.
class WideTokenizer : public Tokenizer {
 public:
  std::string name() const override { return "wide"; }
  int vocab_size() const override { return 65537; }
  std::vector<int32_t> Encode(std::string_view text) const override {
    return std::vector<int32_t>(text.size(), 65536);
  }
  std::string Decode(const std::vector<int32_t>&) const override { return ""; }
};

TEST_F(PrepTest, TokenizerWithMoreIdsThanUint16IsRefusedBeforeWriting) {
  StatusOr<PrepResult> r =
      PrepareShards({WriteText(SampleText(100)), Path("out"), 0.1, 100}, WideTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("tokenizer \"wide\" has 65537 ids but shards store uint16"));
  EXPECT_THAT(r.status().message(), HasSubstr("use a smaller tokenizer"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(PrepTest, InputThatIsADirectoryIsRefused) {
  fs::create_directories(Path("texts"));
  StatusOr<PrepResult> r = PrepareShards({Path("texts"), Path("out"), 0.1, 100}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("input " + Path("texts") + " is not a regular file"));
  EXPECT_THAT(r.status().message(), HasSubstr("give a text file"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

TEST_F(PrepTest, MoreShardsThanSixDigitsIsRefusedBeforeWriting) {
  StatusOr<PrepResult> r =
      PrepareShards({WriteText(std::string(1'000'001, 'x')), Path("out"), 0.0, 1}, *MakeByteTokenizer());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("1000001 shards of 1 tokens would overflow the 6-digit shard numbers"));
  EXPECT_THAT(r.status().message(), HasSubstr("raise shard_tokens"));
  EXPECT_FALSE(fs::exists(Path("out")));
}

}  // namespace
}  // namespace fjord
