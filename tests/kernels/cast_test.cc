// bf16 casts against an independent oracle: the bf16 neighbours of x are found by scanning bit
// patterns as numbers (no rounding arithmetic), compared in double, ties broken by the even
// mantissa; stochastic rounding is checked by what it may return (only the two neighbours), how
// often it rounds up (the distance ratio, within 5 standard deviations) and its determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/ops.h"

namespace fjord {
namespace {

double Bf16Value(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// The bit patterns of a vector of bf16, for comparisons of whole vectors.
std::vector<uint16_t> Patterns(const std::vector<bf16>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = v[i].bits;
  return bits;
}

// The two bf16 patterns of x's sign whose magnitudes bracket |x|: `below` with the largest
// magnitude <= |x|, `above` the next one (possibly infinity), found by comparing values in double.
struct Neighbours {
  uint16_t below, above;
};
Neighbours Bracket(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double ax = std::fabs(static_cast<double>(x));
  uint16_t lo = 0;                             // magnitude patterns 0 .. 0x7f80 (inf) are ordered by value
  for (uint16_t m = 0x4000; m > 0; m >>= 1) {  // binary search over the ordered magnitudes
    if (lo + m <= 0x7f80 && Bf16Value(static_cast<uint16_t>(lo + m)) <= ax)
      lo = static_cast<uint16_t>(lo + m);
  }
  return {static_cast<uint16_t>(sign | lo), static_cast<uint16_t>(sign | (lo == 0x7f80 ? lo : lo + 1))};
}

uint16_t NearestEven(float x) {
  if (std::isnan(x)) return 0x7fc0;
  const Neighbours n = Bracket(x);
  const double ax = std::fabs(static_cast<double>(x));
  const double below = std::fabs(Bf16Value(n.below)), above = std::fabs(Bf16Value(n.above));
  if (ax == below) return n.below;
  // Above the largest finite bf16: IEEE rounding compares with 2^128 (the next power of two).
  const double above_for_rounding = std::isinf(above) ? std::ldexp(1.0, 128) : above;
  const double d_below = ax - below, d_above = above_for_rounding - ax;
  if (d_below < d_above) return n.below;
  if (d_above < d_below) return n.above;
  return (n.below & 1) == 0 ? n.below : n.above;
}

std::vector<float> Interesting() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          3.14159265f,
                          -2.71828f,
                          1e-40f,
                          -1e-42f,
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(),
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  // Exact ties and their neighbours: a bf16 value plus half its ulp (low 16 bits 0x8000), for
  // even and odd kept mantissas, and one bit either side.
  for (uint32_t hi : {0x3f80u, 0x3f81u, 0x4049u, 0xc2f7u, 0x0001u, 0x7f7fu}) {
    for (uint32_t low : {0x7fffu, 0x8000u, 0x8001u, 0x0001u, 0xffffu}) {
      const uint32_t u = (hi << 16) | low;
      float f;
      std::memcpy(&f, &u, sizeof(f));
      v.push_back(f);
    }
  }
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  while (v.size() < 20000) {
    const uint32_t u = bits(rng);
    float f;
    std::memcpy(&f, &u, sizeof(f));
    if (!std::isnan(f)) v.push_back(f);
  }
  return v;
}

TEST(CastTest, ToBf16RoundsToNearestEven) {
  const std::vector<float> x = Interesting();
  std::vector<bf16> out(x.size(), bf16{0xdead});
  cpu::cast_to_bf16(OpContext{}, out.data(), x.data(), x.size(), /*seed=*/0, /*index0=*/0);
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(out[i].bits, NearestEven(x[i]))
        << "x = " << x[i] << " (bits 0x" << std::hex << Bits(x[i]) << ")";
  }
}

TEST(CastTest, NanStaysNanAndEveryBf16RoundTrips) {
  std::vector<bf16> all(65536);
  for (uint32_t b = 0; b < 65536; ++b) all[b].bits = static_cast<uint16_t>(b);
  std::vector<float> f(all.size());
  cpu::cast_from_bf16(OpContext{}, f.data(), all.data(), all.size());
  std::vector<bf16> back(all.size());
  for (uint64_t seed : {uint64_t{0}, uint64_t{12345}}) {
    cpu::cast_to_bf16(OpContext{}, back.data(), f.data(), f.size(), seed, 0);
    for (uint32_t b = 0; b < 65536; ++b) {
      ASSERT_EQ(Bits(f[b]), b << 16);  // from_bf16 is exact
      const bool nan = (b & 0x7fff) > 0x7f80;
      if (nan) {
        ASSERT_TRUE(std::isnan(Bf16Value(back[b].bits))) << std::hex << b;
        ASSERT_EQ(back[b].bits & 0x8000, b & 0x8000);
      } else {
        ASSERT_EQ(back[b].bits, b) << "seed " << seed << " bits 0x" << std::hex
                                   << b;  // representable: unchanged
      }
    }
  }
}

TEST(CastTest, StochasticRoundingIsUnbiasedBoundedAndReproducible) {
  const size_t n = 200000;
  for (float x : {1.00390625f + 0.001f, -3.3f, 1.0e-3f, 6.0e4f, 1.0e-39f}) {
    const Neighbours nb = Bracket(x);
    ASSERT_NE(nb.below, nb.above);
    const double below = Bf16Value(nb.below), above = Bf16Value(nb.above);
    const double p_up = (static_cast<double>(x) - below) / (above - below);
    std::vector<float> in(n, x);
    std::vector<bf16> out(n), again(n), other(n);
    cpu::cast_to_bf16(OpContext{}, out.data(), in.data(), n, /*seed=*/42, /*index0=*/0);
    size_t up = 0;
    for (const uint16_t b : Patterns(out)) {
      ASSERT_TRUE(b == nb.below || b == nb.above) << "x " << x << " gave 0x" << std::hex << b;
      up += b == nb.above;
    }
    const double sigma = std::sqrt(n * p_up * (1 - p_up));
    EXPECT_NEAR(static_cast<double>(up), n * p_up, 5 * sigma + 1) << "x = " << x;
    cpu::cast_to_bf16(OpContext{}, again.data(), in.data(), n, 42, 0);
    EXPECT_EQ(Patterns(again), Patterns(out));
    cpu::cast_to_bf16(OpContext{}, other.data(), in.data(), n, 43, 0);
    EXPECT_NE(Patterns(other), Patterns(out));
  }
}

// A range cast on its own with index0 = its offset draws the same hash as the whole-buffer cast,
// which is what lets the trainer round only the ZeRO-1 shards AdamW did not.
TEST(CastTest, RangeWithIndex0RoundsAsTheWholeBuffer) {
  const size_t n = 1000, begin = 300;
  std::vector<float> in(n);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  for (float& x : in) x = dist(rng);
  std::vector<bf16> whole(n), range(n - begin, bf16{0x7fc0}), unshifted(n - begin);
  cpu::cast_to_bf16(OpContext{}, whole.data(), in.data(), n, /*seed=*/99, /*index0=*/0);
  cpu::cast_to_bf16(OpContext{}, range.data(), in.data() + begin, n - begin, 99, begin);
  EXPECT_EQ(Patterns(range), Patterns(std::vector<bf16>(whole.begin() + begin, whole.end())));
  // The index matters: the same range hashed from 0 rounds differently.
  cpu::cast_to_bf16(OpContext{}, unshifted.data(), in.data() + begin, n - begin, 99, 0);
  EXPECT_NE(Patterns(unshifted), Patterns(range));
}

}  // namespace
}  // namespace fjord
