// Shared helpers for kernel tests: seeded inputs, NaN poisoning, tolerant comparison against a
// double-precision reference (one comparison loop, ExpectWithin, with a bound per element; the
// others derive the bounds from atol and rtol, plus the bf16 rounding for bf16 outputs), GELU in
// double, central finite differences in double, and bitwise comparison for ops whose contract is
// to equal a composition of others.
//
// Every kernel test follows the same shape: a naive double reference forward written in the test,
// the float kernel compared with it (forward), and the kernel's backward compared with finite
// differences of that same reference applied to L = sum(dout * out) (gradient check). The bf16
// instantiation of each op is checked against the same references (helpers at the end), mostly by
// the same test body written once over the storage type floatX.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace fjord::testing {

inline constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

// n floats uniform in [lo, hi), reproducible from `seed`.
inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// n ints uniform in [0, bound), reproducible from `seed`.
inline std::vector<int32_t> RandomInts(size_t n, uint32_t seed, int32_t bound) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int32_t> dist(0, bound - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(gen);
  return v;
}

inline std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

template <typename T>
double Norm(const std::vector<T>& v) {
  double s = 0.0;
  for (T x : v) s += static_cast<double>(x) * static_cast<double>(x);
  return std::sqrt(s);
}

// Expects |got[i] - ref[i]| <= tol[i] for every i (NaN never passes): the one comparison loop that
// the tolerant comparisons below share, usable directly for an output whose bound depends on
// another tensor (GELU of a GEMM's result depends on the GEMM's). Reports the mismatches, the first
// one, the largest |error| and the largest |error| / bound, so a wrong index pattern is visible at a
// glance and a passing run still shows how close it came.
inline void ExpectWithin(const std::string& name, const std::vector<double>& got,
                         const std::vector<double>& ref, const std::vector<double>& tol) {
  ASSERT_EQ(got.size(), ref.size()) << name << ": size mismatch";
  ASSERT_EQ(tol.size(), ref.size()) << name << ": bound size mismatch";
  size_t bad = 0;
  size_t first = 0;
  double worst = 0.0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    if (!(err <= tol[i])) {  // written so that NaN counts as a mismatch
      if (bad == 0) first = i;
      ++bad;
    }
    if (err > worst || std::isnan(err)) worst = err;
    if (tol[i] > 0.0) worst_ratio = std::max(worst_ratio, err / tol[i]);
  }
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << got.size() << " elements differ; first at index "
                     << first << ": got " << got[first] << ", expected " << ref[first] << " (bound "
                     << tol[first] << "); largest error " << worst << ", largest error / bound "
                     << worst_ratio;
}

// name, followed by the bounds atol and rtol, for ExpectWithin's report.
inline std::string WithBounds(const std::string& name, double atol, double rtol, const char* extra = "") {
  std::ostringstream s;
  s << name << " (atol " << atol << ", rtol " << rtol << extra << ")";
  return s.str();
}

// Expects |got[i] - ref[i]| <= atol + rtol * |ref[i]| for every i (NaN never passes).
template <typename G, typename R>
void ExpectClose(const std::string& name, const std::vector<G>& got, const std::vector<R>& ref, double atol,
                 double rtol) {
  ASSERT_EQ(got.size(), ref.size()) << name << ": size mismatch";
  std::vector<double> g(got.size()), r(ref.size()), tol(ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    g[i] = static_cast<double>(got[i]);
    r[i] = static_cast<double>(ref[i]);
    tol[i] = atol + rtol * std::fabs(r[i]);
  }
  ExpectWithin(WithBounds(name, atol, rtol), g, r, tol);
}

// GELU, tanh form (kernels/ops.h, gelu_forward), in double.
inline double GeluRef(double x) {
  const double k = std::sqrt(2.0 / std::numbers::pi);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// A bound on |d GeluRef / dx| (its extremes are +1.1290 and -0.1290, at x = +-1.42): how far a
// difference in GELU's input can move its output.
inline constexpr double kGeluMaxSlope = 1.13;

// Gradient of the scalar f at x by central differences in double. With double arithmetic and
// h = 1e-6 relative to a unit-scale x, truncation (~h^2) and rounding (~1e-16 / h) errors are both
// below 1e-9, far under any float kernel's tolerance, so a mismatch is the kernel's.
inline std::vector<double> NumericalGradient(const std::function<double(const std::vector<double>&)>& f,
                                             std::vector<double> x, double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = f(x);
    x[i] = saved - h;
    const double minus = f(x);
    x[i] = saved;
    grad[i] = (plus - minus) / (2.0 * h);
  }
  return grad;
}

// sum_i w[i] * y[i], the scalar loss whose gradient w.r.t. y is w.
inline double WeightedSum(const std::vector<double>& w, const std::vector<double>& y) {
  double s = 0.0;
  for (size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

// Elementwise a + b, for expected values of accumulating (+=) backward ops.
template <typename A, typename B>
std::vector<double> Plus(const std::vector<A>& a, const std::vector<B>& b) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = static_cast<double>(a[i]) + static_cast<double>(b[i]);
  return out;
}

// ---- bf16 ------------------------------------------------------------------------------------
// A bf16 test draws its inputs as bf16 values and gives the very same values to the op and, widened
// exactly to double, to the reference, so the reference sees no input rounding: what remains is
// the op's fp32 arithmetic (bounded as in the float test) and the one rounding of each output.

// A bf16 quiet NaN, to poison outputs so that an element the op leaves unwritten fails.
inline constexpr bf16 kPoisonBf16{0x7fc0};

// The value of x, decoded here rather than by the code under test.
inline double Bf16Value(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Each value truncated to its top 16 bits: a bf16 value of the same sign and no larger magnitude,
// so the values stay in the range they were drawn from.
inline std::vector<bf16> TruncateToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &v[i], sizeof(u));
    out[i].bits = static_cast<uint16_t>(u >> 16);
  }
  return out;
}

// n bf16 values in [lo, hi), reproducible from `seed`.
inline std::vector<bf16> RandomBf16(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return TruncateToBf16(RandomFloats(n, seed, lo, hi));
}

// Each value rounded to nearest even by FromFloat<bf16>, the ops' own rounding (cast_test.cc
// checks it against an independent oracle): the float op's result as a bf16 op should store it.
inline std::vector<bf16> RoundToBf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = FromFloat<bf16>(v[i]);
  return out;
}

inline std::vector<double> ToDouble(const std::vector<bf16>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = Bf16Value(v[i]);
  return out;
}

// The same values as floats (exact), to run the float op on a bf16 test's inputs.
inline std::vector<float> ToFloats(const std::vector<bf16>& v) {
  const std::vector<double> d = ToDouble(v);
  return {d.begin(), d.end()};
}

// Half the spacing of bf16 values around x, taken from x's binade (8 significant bits: spacing
// 2^(e-7) in [2^e, 2^(e+1)); subnormals share the spacing 2^-133). Rounding to nearest moves a
// value by at most this much to reach x, also when it crosses a power of two on the way.
inline double Bf16HalfUlp(double x) {
  if (x == 0.0) return std::ldexp(1.0, -134);
  return std::ldexp(1.0, std::max(std::ilogb(x), -126) - 8);
}

// Expects each got[i] to be an fp32 result within atol + rtol |ref[i]| of ref[i] (the float test's
// bound for the same computation), rounded once to bf16: |got - ref| <= atol + rtol |ref| plus half
// a bf16 spacing at got, that is at most 2^-8 |got|. A second rounding, or rounding by truncation,
// errs by up to a whole spacing, past this bound for a share of the elements. NaN never passes.
inline void ExpectBf16Close(const std::string& name, const std::vector<bf16>& got,
                            const std::vector<double>& ref, double atol, double rtol) {
  ASSERT_EQ(got.size(), ref.size()) << name << ": size mismatch";
  const std::vector<double> g = ToDouble(got);
  std::vector<double> tol(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) tol[i] = atol + rtol * std::fabs(ref[i]) + Bf16HalfUlp(g[i]);
  ExpectWithin(WithBounds(name, atol, rtol, ", plus half a bf16 spacing"), g, ref, tol);
}

// Expects got and expected to be the same or adjacent bf16 values (neither NaN).
inline void ExpectBf16WithinOneUlp(const std::string& name, const std::vector<bf16>& got,
                                   const std::vector<bf16>& expected) {
  ASSERT_EQ(got.size(), expected.size()) << name << ": size mismatch";
  // Sign-magnitude patterns as integers ordered like the values (both zeros map to 0), so that
  // adjacent values differ by one, across zero and binade boundaries alike.
  auto ordered = [](bf16 x) { return (x.bits & 0x8000) ? -(x.bits & 0x7fff) : static_cast<int>(x.bits); };
  size_t bad = 0;
  size_t first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool ok = !std::isnan(Bf16Value(got[i])) && !std::isnan(Bf16Value(expected[i])) &&
                    std::abs(ordered(got[i]) - ordered(expected[i])) <= 1;
    if (!ok) {
      if (bad == 0) first = i;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << got.size() << " elements differ; first at index "
                     << first << ": got " << Bf16Value(got[first]) << ", expected "
                     << Bf16Value(expected[first]);
}

// ---- Either storage type ------------------------------------------------------------------------

// The quiet NaN of each storage type (kPoison, kPoisonBf16), for tests written once over floatX.
template <typename floatX>
floatX Poison();
template <>
inline float Poison<float>() {
  return kPoison;
}
template <>
inline bf16 Poison<bf16>() {
  return kPoisonBf16;
}

// Drawn values as values of storage type floatX: bf16 by truncation (TruncateToBf16), which keeps
// them in the range they were drawn from.
template <typename floatX>
std::vector<floatX> Stored(const std::vector<float>& v);
template <>
inline std::vector<float> Stored<float>(const std::vector<float>& v) {
  return v;
}
template <>
inline std::vector<bf16> Stored<bf16>(const std::vector<float>& v) {
  return TruncateToBf16(v);
}

// n values of storage type floatX in [lo, hi), reproducible from `seed`: RandomFloats, RandomBf16.
template <typename floatX>
std::vector<floatX> RandomStored(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return Stored<floatX>(RandomFloats(n, seed, lo, hi));
}

// Half the spacing of stored values at x: 0 for float (a float test's bound already holds for the
// fp32 value the op stores), Bf16HalfUlp for bf16.
inline double StoredHalfUlp(float) { return 0.0; }
inline double StoredHalfUlp(bf16 x) { return Bf16HalfUlp(Bf16Value(x)); }

// An fp32 result within atol + rtol |ref| of ref, stored as floatX: ExpectClose for float,
// ExpectBf16Close (half a bf16 spacing more, for the one rounding) for bf16.
inline void ExpectStoredClose(const std::string& name, const std::vector<float>& got,
                              const std::vector<double>& ref, double atol, double rtol) {
  ExpectClose(name, got, ref, atol, rtol);
}
inline void ExpectStoredClose(const std::string& name, const std::vector<bf16>& got,
                              const std::vector<double>& ref, double atol, double rtol) {
  ExpectBf16Close(name, got, ref, atol, rtol);
}

// The bit pattern of a stored value, to check for +0 exactly (a -0 or a NaN compares otherwise).
inline uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline uint32_t Bits(bf16 x) { return x.bits; }

// Expects got and expected to hold the same bytes: for ops whose contract is bitwise equality.
template <typename T>
void ExpectSameBits(const std::string& name, const std::vector<T>& got, const std::vector<T>& expected) {
  ASSERT_EQ(got.size(), expected.size()) << name << ": size mismatch";
  size_t bad = 0;
  size_t first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &expected[i], sizeof(T)) != 0) {
      if (bad == 0) first = i;
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << got.size()
                     << " elements differ in their bits; first at index " << first << ": got "
                     << ToDouble(std::vector<T>{got[first]})[0] << ", expected "
                     << ToDouble(std::vector<T>{expected[first]})[0];
}

// Expects every value of v (float or bf16) to be finite. Where two results are compared bitwise,
// an element that both sides left poisoned would otherwise pass.
template <typename T>
void ExpectFinite(const std::string& name, const std::vector<T>& v) {
  size_t bad = 0;
  for (double x : ToDouble(v)) bad += std::isfinite(x) ? 0 : 1;
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << v.size() << " values are not finite";
}

// One AdamW step (t = 3 from random moments, v above m^2 so the update is O(lr) as in training and
// backends differing by an ulp in it stay comparable) in the cases the tests of its bf16 output
// sweep: n around vector widths and grid strides, seed 0 (to nearest) and stochastic, the updated
// range at the start of a buffer and inside it (index0). Run calls a backend's adamw_update
// (cpu:: or cuda::) on buffers of that backend holding this case's inputs.
struct AdamWBf16Case {
  size_t n;
  uint64_t seed;
  size_t index0;
  std::vector<float> params, grads, m, v;
  std::string where;  // names the case in failure messages

  template <typename Op>
  void Run(Op op, const OpContext& ctx, float* p, const float* g, float* m_out, float* v_out,
           bf16* out) const {
    op(ctx, p, g, m_out, v_out, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 3, out, seed, index0);
  }
};

// Calls fn(case) for each case, stopping at the first fatal failure.
template <typename Fn>
void ForEachAdamWBf16Case(Fn&& fn) {
  for (size_t n : {size_t{1}, size_t{17}, size_t{1000}, size_t{100003}}) {
    for (uint64_t seed : {uint64_t{0}, uint64_t{0x9e3779b97f4a7c15}}) {
      for (size_t index0 : {size_t{0}, size_t{12345}}) {
        fn(AdamWBf16Case{n, seed, index0, RandomFloats(n, 1), RandomFloats(n, 2),
                         RandomFloats(n, 3, -0.1f, 0.1f), RandomFloats(n, 4, 0.01f, 0.02f),
                         "n " + std::to_string(n) + ", seed " + std::to_string(seed) + ", index0 " +
                             std::to_string(index0)});
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

}  // namespace fjord::testing
