// TensorBoard event files: scalars a run writes (loss, learning rate, throughput) that
// TensorBoard reads as is (`tensorboard --logdir RUN_DIR`).
//
// File: RUN_DIR/events.out.tfevents.<unix seconds>.<host>, a sequence of TFRecords:
//   uint64 length, uint32 masked_crc32c(length bytes), data, uint32 masked_crc32c(data)
// (little-endian; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8), each data an Event
// protobuf. The first event carries file_version "brain.Event:2"; each scalar is an Event with
// wall_time, step and a Summary holding one Value {tag, simple_value}.
//
// The two messages are encoded by hand (five fields, write-only): no generated code and no
// dependency on the proto library for a file format frozen since TensorFlow 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace fjord {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `size` bytes, continuing from `crc`
// (0 to start). Crc32c("123456789") == 0xE3069283.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);

// The TFRecord mask applied to a CRC stored in a file.
uint32_t MaskCrc32c(uint32_t crc);

// Appends scalar events to one event file. Not thread-safe: one writer per run, used from the
// thread that logs metrics. Records are buffered and written out by Flush(), by a full buffer
// and by the destructor; Flush() reports write errors, the destructor cannot.
class TensorBoardWriter {
 public:
  // Creates RUN_DIR (and parents) if needed and a new event file in it, and writes the
  // file_version event. An existing file of the same name is never overwritten: the name then
  // gets a ".<pid>.<n>" suffix.
  static StatusOr<std::unique_ptr<TensorBoardWriter>> Open(const std::string& run_dir);

  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // Queues the scalar `value` of series `tag` at `step`, stamped with the current wall time.
  Status AddScalar(const std::string& tag, int64_t step, float value);

  // Writes the queued records to the file (to the OS; no fsync: metrics are not checkpoints).
  Status Flush();

  const std::string& path() const { return path_; }

 private:
  TensorBoardWriter(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  void AppendRecord(const std::string& event);

  int fd_;
  std::string path_;
  std::string buffer_;
};

}  // namespace fjord
