// Reduction kernels and bf16 / f16 conversions (design in reduce.h).
#include "collectives/reduce.h"

#include <bit>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

// The loops below are elementwise; out may alias an operand exactly, which is no loop-carried
// dependence, so tell the compiler it may vectorize without its runtime overlap check (which
// would otherwise send in-place calls down the scalar path).
#if defined(__clang__)
#define FJORD_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FJORD_IVDEP _Pragma("GCC ivdep")
#else
#define FJORD_IVDEP
#endif

namespace fjord {
namespace {

template <typename T, typename F>
void Elementwise(void* out, const void* a, const void* b, size_t count, F f) {
  T* o = static_cast<T*>(out);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  FJORD_IVDEP
  for (size_t i = 0; i < count; ++i) o[i] = f(x[i], y[i]);
}

// max that gives NaN when either operand is NaN, whatever their order, so ranks that combine
// the same values in a different order agree.
inline float MaxF(float x, float y) {
  const float m = x > y ? x : y;
  return x != x ? x : m;
}

inline float Bf16(uint16_t v) { return std::bit_cast<float>(static_cast<uint32_t>(v) << 16); }

inline uint16_t ToBf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? ((x >> 16) | 0x40u) : rounded);
}

// F. Giesen's half <-> float conversions (round to nearest even), public domain.
inline float Half(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // inf, NaN
  } else if (exp == 0) {
    o += 1u << 23;  // zero, subnormal: renormalize through float arithmetic (exact)
    o = std::bit_cast<uint32_t>(std::bit_cast<float>(o) - std::bit_cast<float>(113u << 23));
  }
  return std::bit_cast<float>(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}

inline uint16_t ToHalf(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint32_t o;
  if (f >= ((127u + 16u) << 23)) {
    o = f > (255u << 23) ? 0x7e00u : 0x7c00u;  // NaN -> quiet NaN, too large -> inf
  } else if (f < (113u << 23)) {
    // Subnormal or zero: adding 0.5f aligns the 10 mantissa bits at the bottom and rounds to
    // nearest even in the FPU.
    const uint32_t magic = 126u << 23;
    o = std::bit_cast<uint32_t>(std::bit_cast<float>(f) + std::bit_cast<float>(magic)) - magic;
  } else {
    const uint32_t mant_odd = (f >> 13) & 1u;
    f += ((15u - 127u) << 23) + 0xfffu + mant_odd;
    o = f >> 13;
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

void ReduceF16(uint16_t* out, const uint16_t* a, const uint16_t* b, size_t count, bool max) {
  size_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= count; i += 8) {
    const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256 y = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    __m256 r;
    if (max) {
      const __m256 m = _mm256_max_ps(x, y);  // x > y ? x : y, as MaxF
      r = _mm256_blendv_ps(m, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    } else {
      r = _mm256_add_ps(x, y);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
  }
#endif
  for (; i < count; ++i) {
    const float x = Half(a[i]), y = Half(b[i]);
    out[i] = ToHalf(max ? MaxF(x, y) : x + y);
  }
}

}  // namespace

float Bf16ToFloat(uint16_t bits) { return Bf16(bits); }
uint16_t FloatToBf16(float value) { return ToBf16(value); }
float HalfToFloat(uint16_t bits) { return Half(bits); }
uint16_t FloatToHalf(float value) { return ToHalf(value); }

Status CheckReduction(DataType dtype, ReduceOp op) {
  if (op != ReduceOp::kSum && op != ReduceOp::kAvg && op != ReduceOp::kMax) {
    return InvalidArgument("unknown reduction op " + std::to_string(static_cast<int>(op)));
  }
  if (DataTypeSize(dtype) == 0)
    return InvalidArgument("unknown data type " + std::to_string(static_cast<int>(dtype)));
  if (dtype == DataType::kU8 && op == ReduceOp::kAvg) {
    return InvalidArgument(
        "avg is not supported on uint8 (its sum wraps modulo 256); reduce in int32 instead");
  }
  return OkStatus();
}

void ReduceBuffers(void* out, const void* a, const void* b, size_t count, DataType dtype, ReduceOp op) {
  const bool max = op == ReduceOp::kMax;
  switch (dtype) {
    case DataType::kF32:
      if (max) {
        Elementwise<float>(out, a, b, count, MaxF);
      } else {
        Elementwise<float>(out, a, b, count, [](float x, float y) { return x + y; });
      }
      return;
    case DataType::kBF16:
      if (max) {
        Elementwise<uint16_t>(out, a, b, count,
                              [](uint16_t x, uint16_t y) { return ToBf16(MaxF(Bf16(x), Bf16(y))); });
      } else {
        Elementwise<uint16_t>(out, a, b, count,
                              [](uint16_t x, uint16_t y) { return ToBf16(Bf16(x) + Bf16(y)); });
      }
      return;
    case DataType::kF16:
      ReduceF16(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(a), static_cast<const uint16_t*>(b),
                count, max);
      return;
    case DataType::kI32:
      if (max) {
        Elementwise<int32_t>(out, a, b, count, [](int32_t x, int32_t y) { return x > y ? x : y; });
      } else {
        Elementwise<int32_t>(out, a, b, count, [](int32_t x, int32_t y) {
          return static_cast<int32_t>(static_cast<uint32_t>(x) + static_cast<uint32_t>(y));
        });
      }
      return;
    case DataType::kU8:
      if (max) {
        Elementwise<uint8_t>(out, a, b, count, [](uint8_t x, uint8_t y) { return x > y ? x : y; });
      } else {
        Elementwise<uint8_t>(out, a, b, count,
                             [](uint8_t x, uint8_t y) { return static_cast<uint8_t>(x + y); });
      }
      return;
  }
}

void FinishAverage(void* buf, size_t count, DataType dtype, int world_size) {
  if (world_size == 1) return;
  const float n = static_cast<float>(world_size);
  switch (dtype) {
    case DataType::kF32: {
      float* p = static_cast<float*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = p[i] / n;
      return;
    }
    case DataType::kBF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = ToBf16(Bf16(p[i]) / n);
      return;
    }
    case DataType::kF16: {
      uint16_t* p = static_cast<uint16_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = ToHalf(Half(p[i]) / n);
      return;
    }
    case DataType::kI32: {
      int32_t* p = static_cast<int32_t*>(buf);
      for (size_t i = 0; i < count; ++i) p[i] = p[i] / world_size;
      return;
    }
    case DataType::kU8:
      return;  // refused by CheckReduction
  }
}

void StoreInteger(DataType dtype, int64_t v, void* dst) {
  switch (dtype) {
    case DataType::kF32: {
      const float f = static_cast<float>(v);
      std::memcpy(dst, &f, 4);
      return;
    }
    case DataType::kBF16: {
      const uint16_t b = FloatToBf16(static_cast<float>(v));
      std::memcpy(dst, &b, 2);
      return;
    }
    case DataType::kF16: {
      const uint16_t h = FloatToHalf(static_cast<float>(v));
      std::memcpy(dst, &h, 2);
      return;
    }
    case DataType::kI32: {
      const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(v));
      std::memcpy(dst, &x, 4);
      return;
    }
    case DataType::kU8: {
      const uint8_t x = static_cast<uint8_t>(v & 0xff);
      std::memcpy(dst, &x, 1);
      return;
    }
  }
}

}  // namespace fjord
