// Verifiable inputs for collective tests (after nccl-tests' verifiable.h): every rank's element i
// is a small integer, distinct across ranks at the same index, chosen so that every partial and
// final reduction is exactly representable in the dtype. Results are then compared bit for bit.
//
//   f32 / bf16 / f16, sum and avg: n * ((5 i + 3 r + 1) mod 7 - 3): partial sums stay within
//     +-3 n^2 <= 243 (exact in bf16 up to 9 ranks) and the sum divides by n.
//   f32 / bf16 / f16, max: (5 i + 3 r + 1) mod 11 - 5.
//   i32: large, signed, not multiples of n, so avg exercises truncating division.
//   u8: spread over 0..255, so sums wrap.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "collectives/reduce.h"

namespace fjord::testing {

inline long long InputValue(DataType dtype, ReduceOp op, int world, int rank, size_t i) {
  const long long r = rank;
  const long long x = static_cast<long long>(i % 1000003);
  switch (dtype) {
    case DataType::kF32:
    case DataType::kBF16:
    case DataType::kF16:
      if (op == ReduceOp::kMax) return (5 * x + 3 * r + 1) % 11 - 5;
      return world * ((5 * x + 3 * r + 1) % 7 - 3);
    case DataType::kI32:
      return (x * 7919 + r * 104729) % 100003 - 50000;
    case DataType::kU8:
      return (x * 37 + r * 101 + 11) % 256;
  }
  return 0;
}

inline void Store(DataType dtype, long long v, void* dst) { StoreInteger(dtype, v, dst); }

// The exact reduction over ranks 0..world-1 of element i.
inline long long ExpectedValue(DataType dtype, ReduceOp op, int world, size_t i) {
  long long acc = InputValue(dtype, op, world, 0, i);
  for (int r = 1; r < world; ++r) {
    const long long v = InputValue(dtype, op, world, r, i);
    acc = op == ReduceOp::kMax ? std::max(acc, v) : acc + v;
  }
  if (op == ReduceOp::kAvg) acc /= world;  // exact for floats by construction; truncating for i32
  if (dtype == DataType::kU8) acc &= 0xff;
  return acc;
}

// count elements of rank's input, starting at element `first` of the global index space.
inline std::vector<std::byte> Inputs(DataType dtype, ReduceOp op, int world, int rank, size_t count,
                                     size_t first = 0) {
  const size_t es = DataTypeSize(dtype);
  std::vector<std::byte> out(count * es);
  for (size_t i = 0; i < count; ++i)
    Store(dtype, InputValue(dtype, op, world, rank, first + i), out.data() + i * es);
  return out;
}

inline std::vector<std::byte> Expected(DataType dtype, ReduceOp op, int world, size_t count,
                                       size_t first = 0) {
  const size_t es = DataTypeSize(dtype);
  std::vector<std::byte> out(count * es);
  for (size_t i = 0; i < count; ++i)
    Store(dtype, ExpectedValue(dtype, op, world, first + i), out.data() + i * es);
  return out;
}

// Index of the first element that differs, with both values in hex, or "" when equal.
inline std::string FirstDifference(const void* got, const void* want, size_t count, DataType dtype) {
  const size_t es = DataTypeSize(dtype);
  const auto* g = static_cast<const unsigned char*>(got);
  const auto* w = static_cast<const unsigned char*>(want);
  for (size_t i = 0; i < count; ++i) {
    if (std::memcmp(g + i * es, w + i * es, es) != 0) {
      auto hex = [&](const unsigned char* p) {
        std::string s = "0x";
        for (size_t b = es; b-- > 0;) {
          static const char* digits = "0123456789abcdef";
          s += digits[p[b] >> 4];
          s += digits[p[b] & 15];
        }
        return s;
      };
      return "element " + std::to_string(i) + " of " + std::to_string(count) + ": got " + hex(g + i * es) +
             ", want " + hex(w + i * es);
    }
  }
  return "";
}

inline const std::vector<DataType>& AllDataTypes() {
  static const std::vector<DataType> all = {DataType::kF32, DataType::kBF16, DataType::kF16, DataType::kI32,
                                            DataType::kU8};
  return all;
}

inline const std::vector<ReduceOp>& AllReduceOps() {
  static const std::vector<ReduceOp> all = {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax};
  return all;
}

inline bool Meaningful(DataType dtype, ReduceOp op) {
  return !(dtype == DataType::kU8 && op == ReduceOp::kAvg);
}

}  // namespace fjord::testing
