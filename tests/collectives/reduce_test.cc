// The reduction kernels and conversions: exhaustive round trips of every bf16 and f16 value,
// round-to-nearest-even at every midpoint, the scalar f16 path against F16C, NaN symmetry of max,
// integer wrap-around, and the average's final division.
#include "collectives/reduce.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace fjord {
namespace {

bool IsNan16Half(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool IsNanBf16(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

TEST(HalfTest, EveryHalfSurvivesTheRoundTrip) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (IsNan16Half(static_cast<uint16_t>(h))) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(IsNan16Half(FloatToHalf(f))) << h;
    } else {
      ASSERT_EQ(FloatToHalf(f), h) << "half 0x" << std::hex << h << " -> " << f;
    }
  }
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(HalfToFloat(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // the midpoint above the largest half ties to even: inf
  EXPECT_EQ(FloatToHalf(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -26)), 0x0000);  // below half the smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.5f, -25)), 0x0001);  // above half of it
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
}

// Midpoints between neighbouring halves round to the even one; a hair above rounds up.
TEST(HalfTest, RoundsToNearestEven) {
  int checked = 0;
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const double lo = HalfToFloat(static_cast<uint16_t>(h)), hi = HalfToFloat(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: one more bit than a half has
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const uint16_t even = (h % 2 == 0) ? static_cast<uint16_t>(h) : static_cast<uint16_t>(h + 1);
    ASSERT_EQ(FloatToHalf(mid), even) << h;
    ASSERT_EQ(FloatToHalf(-mid), even | 0x8000) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, 1e9f)), h + 1) << h;
    ASSERT_EQ(FloatToHalf(std::nextafter(mid, -1e9f)), h) << h;
    ++checked;
  }
  EXPECT_EQ(checked, 0x7bff);
}

#if defined(__F16C__)
// The scalar conversion agrees with the hardware's on a sweep of float bit patterns.
TEST(HalfTest, ScalarMatchesF16C) {
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4099) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(bits));
    const uint16_t hw = static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
    const uint16_t sw = FloatToHalf(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(IsNan16Half(sw));
    } else {
      ASSERT_EQ(sw, hw) << "float bits 0x" << std::hex << bits;
    }
  }
}
#endif

TEST(Bf16Test, RoundTripAndRounding) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(b));
    if (IsNanBf16(static_cast<uint16_t>(b))) {
      EXPECT_TRUE(IsNanBf16(FloatToBf16(f)));
      continue;
    }
    ASSERT_EQ(FloatToBf16(f), b);
    if ((b & 0x7fff) < 0x7f7f) {  // finite with a finite successor
      const uint32_t fbits = std::bit_cast<uint32_t>(f);
      const float mid = std::bit_cast<float>(fbits + 0x8000);  // exactly halfway to the next bf16
      const uint16_t even = (b % 2 == 0) ? static_cast<uint16_t>(b) : static_cast<uint16_t>(b + 1);
      ASSERT_EQ(FloatToBf16(mid), even) << b;
      ASSERT_EQ(FloatToBf16(std::bit_cast<float>(fbits + 0x8001)), b + 1) << b;
      ASSERT_EQ(FloatToBf16(std::bit_cast<float>(fbits + 0x7fff)), b) << b;
    }
  }
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);       // rounds up to inf
  EXPECT_TRUE(IsNanBf16(FloatToBf16(std::bit_cast<float>(0x7f800001u))));  // a NaN that would round to inf
}

template <typename T>
std::vector<T> Reduce(const std::vector<T>& a, const std::vector<T>& b, DataType dtype, ReduceOp op) {
  std::vector<T> out(a.size());
  ReduceBuffers(out.data(), a.data(), b.data(), a.size(), dtype, op);
  // In place, into either operand, gives the same.
  std::vector<T> x = a, y = b;
  ReduceBuffers(x.data(), x.data(), b.data(), a.size(), dtype, op);
  ReduceBuffers(y.data(), a.data(), y.data(), a.size(), dtype, op);
  EXPECT_EQ(x, out);
  EXPECT_EQ(y, out);
  return out;
}

TEST(ReduceTest, Float) {
  // 37 elements: vector body and scalar tail.
  std::vector<float> a(37), b(37);
  for (int i = 0; i < 37; ++i) a[i] = 0.5f * i - 3, b[i] = 7 - 0.25f * i;
  const std::vector<float> sum = Reduce(a, b, DataType::kF32, ReduceOp::kSum);
  const std::vector<float> avg = Reduce(a, b, DataType::kF32, ReduceOp::kAvg);  // reduces as a sum
  const std::vector<float> max = Reduce(a, b, DataType::kF32, ReduceOp::kMax);
  for (int i = 0; i < 37; ++i) {
    EXPECT_EQ(sum[i], a[i] + b[i]);
    EXPECT_EQ(avg[i], a[i] + b[i]);
    EXPECT_EQ(max[i], std::max(a[i], b[i]));
  }
}

TEST(ReduceTest, MaxGivesNanWhateverTheOrder) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (DataType dtype : {DataType::kF32, DataType::kBF16, DataType::kF16}) {
    for (int n : {1, 8, 19}) {  // scalar only, one vector, vector + tail
      std::vector<uint32_t> a32(n), b32(n);
      std::vector<uint16_t> a16(n), b16(n);
      for (int i = 0; i < n; ++i) {
        const float x = i % 2 ? nan : 1.0f, y = i % 2 ? 2.0f : nan;
        a32[i] = std::bit_cast<uint32_t>(x), b32[i] = std::bit_cast<uint32_t>(y);
        a16[i] = dtype == DataType::kBF16 ? FloatToBf16(x) : FloatToHalf(x);
        b16[i] = dtype == DataType::kBF16 ? FloatToBf16(y) : FloatToHalf(y);
      }
      for (int order = 0; order < 2; ++order) {
        if (dtype == DataType::kF32) {
          std::vector<uint32_t> out(n);
          ReduceBuffers(out.data(), order ? b32.data() : a32.data(), order ? a32.data() : b32.data(), n,
                        dtype, ReduceOp::kMax);
          for (int i = 0; i < n; ++i) EXPECT_TRUE(std::isnan(std::bit_cast<float>(out[i]))) << i;
        } else {
          std::vector<uint16_t> out(n);
          ReduceBuffers(out.data(), order ? b16.data() : a16.data(), order ? a16.data() : b16.data(), n,
                        dtype, ReduceOp::kMax);
          for (int i = 0; i < n; ++i) {
            EXPECT_TRUE(dtype == DataType::kBF16 ? IsNanBf16(out[i]) : IsNan16Half(out[i])) << i;
          }
        }
      }
    }
  }
}

TEST(ReduceTest, Bf16AndHalfRoundEachStepToNearestEven) {
  for (DataType dtype : {DataType::kBF16, DataType::kF16}) {
    auto enc = [&](float f) { return dtype == DataType::kBF16 ? FloatToBf16(f) : FloatToHalf(f); };
    auto dec = [&](uint16_t v) { return dtype == DataType::kBF16 ? Bf16ToFloat(v) : HalfToFloat(v); };
    // 256 + 1 is a tie in bf16 (8 significant bits) and rounds to even 256; 256 + 3 rounds to 260.
    // In half, 2048 + 1 and 2048 + 3 do the same.
    const float big = dtype == DataType::kBF16 ? 256.0f : 2048.0f;
    std::vector<uint16_t> a(21, enc(big)), b(21), out(21);
    for (int i = 0; i < 21; ++i) b[i] = enc(i % 2 ? 1.0f : 3.0f);
    ReduceBuffers(out.data(), a.data(), b.data(), 21, dtype, ReduceOp::kSum);
    for (int i = 0; i < 21; ++i)
      EXPECT_EQ(dec(out[i]), i % 2 ? big : big + 4) << DataTypeName(dtype) << " " << i;
    ReduceBuffers(out.data(), a.data(), b.data(), 21, dtype, ReduceOp::kMax);
    for (int i = 0; i < 21; ++i) EXPECT_EQ(dec(out[i]), big);
  }
}

TEST(ReduceTest, IntegersWrap) {
  std::vector<int32_t> a = {std::numeric_limits<int32_t>::max(), -5, 7}, b = {1, -7, 5};
  const std::vector<int32_t> sum = Reduce(a, b, DataType::kI32, ReduceOp::kSum);
  EXPECT_EQ(sum, (std::vector<int32_t>{std::numeric_limits<int32_t>::min(), -12, 12}));
  EXPECT_EQ(Reduce(a, b, DataType::kI32, ReduceOp::kMax), (std::vector<int32_t>{a[0], -5, 7}));
  std::vector<uint8_t> x = {250, 3, 128}, y = {10, 4, 128};
  EXPECT_EQ(Reduce(x, y, DataType::kU8, ReduceOp::kSum), (std::vector<uint8_t>{4, 7, 0}));
  EXPECT_EQ(Reduce(x, y, DataType::kU8, ReduceOp::kMax), (std::vector<uint8_t>{250, 4, 128}));
}

TEST(ReduceTest, FinishAverage) {
  std::vector<float> f = {3.0f, -1.0f, 1.0f};
  FinishAverage(f.data(), 3, DataType::kF32, 3);
  EXPECT_EQ(f, (std::vector<float>{1.0f, -1.0f / 3.0f, 1.0f / 3.0f}));
  std::vector<int32_t> i = {7, -7, 6};
  FinishAverage(i.data(), 3, DataType::kI32, 2);
  EXPECT_EQ(i, (std::vector<int32_t>{3, -3, 3}));  // truncation toward zero
  std::vector<uint16_t> b = {FloatToBf16(6.0f), FloatToBf16(1.0f)};
  FinishAverage(b.data(), 2, DataType::kBF16, 3);
  EXPECT_EQ(Bf16ToFloat(b[0]), 2.0f);
  EXPECT_EQ(b[1], FloatToBf16(1.0f / 3.0f));  // float division, then one rounding
  std::vector<uint16_t> h = {FloatToHalf(-8.0f)};
  FinishAverage(h.data(), 1, DataType::kF16, 4);
  EXPECT_EQ(HalfToFloat(h[0]), -2.0f);
}

TEST(ReduceTest, CheckReductionRefusesUint8Average) {
  EXPECT_EQ(CheckReduction(DataType::kU8, ReduceOp::kAvg).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckReduction(DataType::kU8, ReduceOp::kSum).ok());
  EXPECT_TRUE(CheckReduction(DataType::kI32, ReduceOp::kAvg).ok());
  EXPECT_EQ(CheckReduction(static_cast<DataType>(42), ReduceOp::kSum).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckReduction(DataType::kF32, static_cast<ReduceOp>(42)).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fjord
