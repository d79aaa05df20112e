// Saturating size arithmetic: a size computed from a job spec or a checkpoint never wraps around to
// a small number; SIZE_MAX (more than any machine holds) stands for "overflows" and stays SIZE_MAX.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fjord::sat {

inline size_t Mul(size_t a, size_t b) {
  size_t r;
  return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}
inline size_t Add(size_t a, size_t b) {
  size_t r;
  return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}
// n rounded up to a multiple of m (m > 0).
inline size_t RoundUp(size_t n, size_t m) { return n > SIZE_MAX - m ? SIZE_MAX : (n + m - 1) / m * m; }

}  // namespace fjord::sat
