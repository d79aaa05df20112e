// Protobuf wire format by hand: tag = (field << 3) | wire type, varints for lengths and int64,
// fixed little-endian 8 bytes for double and 4 for float. CRC-32C is the byte-wise table
// version; the framing is short and written once per scalar, so nothing faster is needed.
#include "runtime/formats/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/host.h"

namespace fjord {
namespace {

static_assert(std::endian::native == std::endian::little, "event files are little-endian");

constexpr size_t kFlushBytes = 64 * 1024;

constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

void PutVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

template <typename T>
void PutFixed(T v, std::string* out) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out->append(bytes, sizeof(T));
}

// Field `field` with a length-delimited payload (wire type 2).
void PutBytesField(int field, const std::string& payload, std::string* out) {
  PutVarint(static_cast<uint64_t>(field) << 3 | 2, out);
  PutVarint(payload.size(), out);
  out->append(payload);
}

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event fields: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
// summary = 5 (Summary). Summary: value = 1 (repeated Value). Value: tag = 1, simple_value = 2.
std::string EventHeader(double wall_time) {
  std::string e;
  PutVarint(1 << 3 | 1, &e);
  PutFixed(wall_time, &e);
  return e;
}

}  // namespace

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = kCrcTable[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t MaskCrc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& run_dir) {
  const std::string what = "cannot open a TensorBoard event file in " + run_dir;
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return FailedPrecondition(what + ": cannot create the directory: " + ec.message());
  const std::string base = run_dir + "/events.out.tfevents." +
                           std::to_string(static_cast<int64_t>(WallTime())) + "." + ThisHostname();
  std::string path = base;
  int fd = -1;
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (attempt > 0) path = base + "." + std::to_string(::getpid()) + "." + std::to_string(attempt);
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    return FailedPrecondition(what + ": cannot create " + path + ": " + std::strerror(errno) +
                              "; check that the run directory is writable");
  }
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(fd, path));
  std::string event = EventHeader(WallTime());
  PutBytesField(3, "brain.Event:2", &event);
  writer->AppendRecord(event);
  FJORD_RETURN_IF_ERROR(writer->Flush());
  return writer;
}

TensorBoardWriter::~TensorBoardWriter() {
  (void)Flush();
  ::close(fd_);
}

void TensorBoardWriter::AppendRecord(const std::string& event) {
  std::string length;
  PutFixed<uint64_t>(event.size(), &length);
  buffer_ += length;
  PutFixed(MaskCrc32c(Crc32c(length.data(), length.size())), &buffer_);
  buffer_ += event;
  PutFixed(MaskCrc32c(Crc32c(event.data(), event.size())), &buffer_);
}

Status TensorBoardWriter::AddScalar(const std::string& tag, int64_t step, float value) {
  std::string v;
  PutBytesField(1, tag, &v);
  PutVarint(2 << 3 | 5, &v);
  PutFixed(value, &v);
  std::string summary;
  PutBytesField(1, v, &summary);
  std::string event = EventHeader(WallTime());
  PutVarint(2 << 3 | 0, &event);
  PutVarint(static_cast<uint64_t>(step), &event);
  PutBytesField(5, summary, &event);
  AppendRecord(event);
  return buffer_.size() >= kFlushBytes ? Flush() : OkStatus();
}

Status TensorBoardWriter::Flush() {
  size_t done = 0;
  while (done < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + done, buffer_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      buffer_.erase(0, done);
      return FailedPrecondition("cannot write TensorBoard events to " + path_ + ": " + std::strerror(errno) +
                                "; check free disk space");
    }
    done += static_cast<size_t>(n);
  }
  buffer_.clear();
  return OkStatus();
}

}  // namespace fjord
