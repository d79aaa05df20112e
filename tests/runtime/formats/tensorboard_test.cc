// TensorBoard event files. Oracles: CRC-32C computed bit by bit here (no table), the published
// check value, and protobuf's generic wire-format parser (UnknownFieldSet) decoding the events
// without our encoder's help.
#include "runtime/formats/tensorboard.h"

#include <gmock/gmock.h>
#include <google/protobuf/unknown_field_set.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::google::protobuf::UnknownField;
using ::google::protobuf::UnknownFieldSet;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using testing_util::ReadBytes;

uint32_t BitwiseCrc32c(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char byte : data) {
    crc ^= byte;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

uint32_t Mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

TEST(Crc32c, MatchesTheCheckValueAndABitwiseImplementation) {
  EXPECT_EQ(Crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(BitwiseCrc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c("", 0), 0u);
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    std::string s(rng() % 300, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    ASSERT_EQ(Crc32c(s.data(), s.size()), BitwiseCrc32c(s));
    const size_t cut = s.size() / 3;  // continuing from a partial CRC equals one pass
    ASSERT_EQ(Crc32c(s.data() + cut, s.size() - cut, Crc32c(s.data(), cut)), BitwiseCrc32c(s));
    ASSERT_EQ(MaskCrc32c(BitwiseCrc32c(s)), Mask(BitwiseCrc32c(s)));
  }
}

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::string tag;
  float value = 0;
  bool has_summary = false;
};

// Parses TFRecord framing, verifying both masked CRCs, and decodes each Event generically.
std::vector<Event> ReadEvents(const std::string& path) {
  const std::string bytes = ReadBytes(path);
  std::vector<Event> events;
  size_t pos = 0;
  while (pos < bytes.size()) {
    EXPECT_LE(pos + 12, bytes.size()) << "truncated record header";
    if (pos + 12 > bytes.size()) break;
    const std::string len_bytes = bytes.substr(pos, 8);
    uint64_t len;
    uint32_t len_crc, data_crc;
    std::memcpy(&len, len_bytes.data(), 8);
    std::memcpy(&len_crc, bytes.data() + pos + 8, 4);
    EXPECT_EQ(len_crc, Mask(BitwiseCrc32c(len_bytes))) << "length CRC at " << pos;
    EXPECT_LE(pos + 12 + len + 4, bytes.size()) << "truncated record";
    if (pos + 12 + len + 4 > bytes.size()) break;
    const std::string data = bytes.substr(pos + 12, len);
    std::memcpy(&data_crc, bytes.data() + pos + 12 + len, 4);
    EXPECT_EQ(data_crc, Mask(BitwiseCrc32c(data))) << "data CRC at " << pos;
    pos += 12 + len + 4;

    UnknownFieldSet fields;
    EXPECT_TRUE(fields.ParseFromString(data));
    Event e;
    for (int i = 0; i < fields.field_count(); ++i) {
      const UnknownField& f = fields.field(i);
      if (f.number() == 1 && f.type() == UnknownField::TYPE_FIXED64) {
        e.wall_time = std::bit_cast<double>(f.fixed64());
      } else if (f.number() == 2 && f.type() == UnknownField::TYPE_VARINT) {
        e.step = static_cast<int64_t>(f.varint());
      } else if (f.number() == 3 && f.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
        e.file_version = f.length_delimited();
      } else if (f.number() == 5 && f.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
        e.has_summary = true;
        UnknownFieldSet summary, value;
        EXPECT_TRUE(summary.ParseFromString(f.length_delimited()));
        EXPECT_EQ(summary.field_count(), 1);
        EXPECT_EQ(summary.field(0).number(), 1);  // Summary.value
        EXPECT_TRUE(value.ParseFromString(summary.field(0).length_delimited()));
        for (int j = 0; j < value.field_count(); ++j) {
          const UnknownField& v = value.field(j);
          if (v.number() == 1 && v.type() == UnknownField::TYPE_LENGTH_DELIMITED)
            e.tag = v.length_delimited();
          else if (v.number() == 2 && v.type() == UnknownField::TYPE_FIXED32)
            e.value = std::bit_cast<float>(v.fixed32());
          else
            ADD_FAILURE() << "unexpected Summary.Value field " << v.number();
        }
      } else {
        ADD_FAILURE() << "unexpected Event field " << f.number() << " of type " << f.type();
      }
    }
    events.push_back(e);
  }
  return events;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class TensorBoardTest : public testing_util::ScratchDirTest {};

TEST_F(TensorBoardTest, WritesScalarsThatAnIndependentReaderDecodes) {
  const double before = Now();
  StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(Path("run/tb"));
  ASSERT_TRUE(w.ok()) << w.status().message();
  const struct {
    const char* tag;
    int64_t step;
    float value;
  } scalars[] = {{"train/loss", 1, 2.5f},
                 {"train/loss", 2, 2.25f},
                 {"lr", 2, 3e-4f},
                 {"train/loss", int64_t{1} << 40, -0.0f},
                 {"tokens_per_s", 3, 1.5e6f},
                 {"neg/step", -5, -7.75f}};
  for (const auto& s : scalars) ASSERT_TRUE(w.value()->AddScalar(s.tag, s.step, s.value).ok());
  ASSERT_TRUE(w.value()->Flush().ok());
  const double after = Now();

  const std::string path = w.value()->path();
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  EXPECT_EQ(path.substr(0, path.rfind('/')), Path("run/tb"));
  EXPECT_THAT(path.substr(path.rfind('/') + 1), MatchesRegex("events\\.out\\.tfevents\\.[0-9]+\\..*"));
  EXPECT_THAT(path, HasSubstr(std::string(".") + host));

  const std::vector<Event> events = ReadEvents(path);
  ASSERT_EQ(events.size(), 1 + std::size(scalars));
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_FALSE(events[0].has_summary);
  for (size_t i = 0; i < std::size(scalars); ++i) {
    const Event& e = events[i + 1];
    EXPECT_TRUE(e.has_summary);
    EXPECT_EQ(e.tag, scalars[i].tag);
    EXPECT_EQ(e.step, scalars[i].step);
    EXPECT_EQ(std::bit_cast<uint32_t>(e.value), std::bit_cast<uint32_t>(scalars[i].value)) << e.tag;
    EXPECT_GE(e.wall_time, before - 1);
    EXPECT_LE(e.wall_time, after + 1);
  }
}

TEST_F(TensorBoardTest, DestructorFlushesAndWritersNeverShareAFile) {
  std::string first, second;
  {
    StatusOr<std::unique_ptr<TensorBoardWriter>> a = TensorBoardWriter::Open(dir_.string());
    StatusOr<std::unique_ptr<TensorBoardWriter>> b = TensorBoardWriter::Open(dir_.string());
    ASSERT_TRUE(a.ok() && b.ok());
    first = a.value()->path();
    second = b.value()->path();
    ASSERT_TRUE(a.value()->AddScalar("a", 1, 1.0f).ok());
    ASSERT_TRUE(b.value()->AddScalar("b", 1, 2.0f).ok());
    EXPECT_EQ(ReadEvents(first).size(), 1u);  // buffered until a flush
  }
  EXPECT_NE(first, second);
  const std::vector<Event> a = ReadEvents(first), b = ReadEvents(second);
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(a[1].tag, "a");
  EXPECT_EQ(b[1].tag, "b");
}

TEST_F(TensorBoardTest, ManyScalarsFlushOnTheirOwn) {
  StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(dir_.string());
  ASSERT_TRUE(w.ok());
  for (int i = 0; i < 5000; ++i) ASSERT_TRUE(w.value()->AddScalar("loss", i, static_cast<float>(i)).ok());
  const std::vector<Event> partial = ReadEvents(w.value()->path());
  EXPECT_GT(partial.size(), 1u);  // the 64 KiB buffer filled at least once
  ASSERT_TRUE(w.value()->Flush().ok());
  const std::vector<Event> all = ReadEvents(w.value()->path());
  ASSERT_EQ(all.size(), 5001u);
  for (int i = 0; i < 5000; ++i) ASSERT_EQ(all[i + 1].step, i);
}

TEST_F(TensorBoardTest, OpenRefusesARunDirThatIsAFile) {
  testing_util::WriteBytes(Path("file"), "x");
  StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(Path("file"));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("cannot open a TensorBoard event file in " + Path("file")),
                    HasSubstr("cannot create the directory")));
}

// The event file itself cannot be created (here: the process is out of file descriptors): the
// error names the file and the reason, and no writer is returned.
TEST_F(TensorBoardTest, OpenReportsAnEventFileThatCannotBeCreated) {
  ASSERT_TRUE(std::filesystem::create_directories(Path("run")));
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = 64;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fds;
  for (int fd; (fd = ::dup(0)) >= 0;) fds.push_back(fd);  // use up every descriptor below the limit
  const int dup_errno = errno;
  StatusOr<std::unique_ptr<TensorBoardWriter>> w = TensorBoardWriter::Open(Path("run"));
  for (int fd : fds) ::close(fd);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_EQ(dup_errno, EMFILE);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(),
              AllOf(HasSubstr("cannot open a TensorBoard event file in " + Path("run") + ": cannot create " +
                              Path("run") + "/events.out.tfevents."),
                    HasSubstr(std::strerror(EMFILE))));
  EXPECT_TRUE(std::filesystem::is_empty(Path("run")));  // nothing half-made
}

}  // namespace
}  // namespace fjord
