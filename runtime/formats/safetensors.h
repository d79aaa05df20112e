// safetensors: the tensor file format of the Hugging Face ecosystem, read and written here
// without the reference library.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of a UTF-8 JSON object
//   {"NAME": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// (possibly padded with trailing spaces), then the tensor bytes, little-endian and row-major.
// Offsets are relative to the first byte after the header. The byte buffer is covered exactly:
// tensors sorted by offset are contiguous, without gaps, overlaps or trailing bytes, and each
// holds prod(shape) * sizeof(dtype) bytes.
//
// The writer pads the header with spaces so the data starts 8-byte aligned (as the reference
// writer does) and writes through a temporary file. The reader loads the file into memory and
// checks every rule above before it hands out a tensor; a refusal names the file, the tensor and
// the rule broken.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fjord {

enum class Dtype {
  kBool,
  kU8,
  kI8,
  kF8E4M3,
  kF8E5M2,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64
};

// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...) and the size of one element in bytes.
std::string_view DtypeName(Dtype dtype);
size_t DtypeSize(Dtype dtype);
std::optional<Dtype> ParseDtype(std::string_view name);

// A tensor to write: `data` holds prod(shape) elements of `dtype` in little-endian row-major
// order and stays owned by the caller.
struct SafetensorsTensorRef {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes `tensors` (in the given order) and `metadata` to `path` atomically. Refuses empty or
// duplicate names, the reserved name "__metadata__", negative dimensions and null data for a
// non-empty tensor, naming the tensor.
Status WriteSafetensors(const std::string& path, const std::vector<SafetensorsTensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

// One tensor of a file that was read; `data` points into the owning Safetensors.
struct SafetensorsTensor {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // not aligned beyond 1 byte in general: copy, do not cast
  size_t num_bytes = 0;
  int64_t num_elements() const;
};

// A validated file in memory. Move-only: tensors point into its buffer.
class Safetensors {
 public:
  Safetensors(Safetensors&&) = default;
  Safetensors& operator=(Safetensors&&) = default;
  Safetensors(const Safetensors&) = delete;
  Safetensors& operator=(const Safetensors&) = delete;

  const std::string& path() const { return path_; }
  // In order of their data offsets.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor named `name`, or nullptr.
  const SafetensorsTensor* Find(std::string_view name) const;

 private:
  friend StatusOr<Safetensors> ReadSafetensors(const std::string& path);
  Safetensors() = default;

  std::string path_;
  std::unique_ptr<const std::string> bytes_;  // heap-held so moves keep tensor pointers valid
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Reads and validates the file at `path` (see the rules at the top of this header).
StatusOr<Safetensors> ReadSafetensors(const std::string& path);

// Converts an F32, F16 or BF16 tensor into num_elements() floats at `out` (exact: every F16 and
// BF16 value is a float). Other dtypes are refused naming the tensor.
Status TensorToFloat32(const SafetensorsTensor& tensor, const std::string& path, float* out);

}  // namespace fjord
