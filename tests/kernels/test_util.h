// Shared helpers for kernel tests: seeded inputs, NaN poisoning, tolerant comparison against a
// double-precision reference, and central finite differences in double.
//
// Every kernel test follows the same shape: a naive double reference forward written in the test,
// the float kernel compared with it (forward), and the kernel's backward compared with finite
// differences of that same reference applied to L = sum(dout * out) (gradient check).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

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

// Expects |got[i] - ref[i]| <= atol + rtol * |ref[i]| for every i (NaN never passes). Reports the
// number of mismatches and the first one, so a wrong index pattern is visible at a glance.
template <typename G, typename R>
void ExpectClose(const std::string& name, const std::vector<G>& got, const std::vector<R>& ref, double atol,
                 double rtol) {
  ASSERT_EQ(got.size(), ref.size()) << name << ": size mismatch";
  size_t bad = 0;
  size_t first = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    const double r = static_cast<double>(ref[i]);
    const double err = std::fabs(g - r);
    const double tol = atol + rtol * std::fabs(r);
    if (!(err <= tol)) {  // written so that NaN counts as a mismatch
      if (bad == 0) first = i;
      ++bad;
    }
    if (err > worst || std::isnan(err)) worst = err;
  }
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << got.size() << " elements differ; first at index "
                     << first << ": got " << static_cast<double>(got[first]) << ", expected "
                     << static_cast<double>(ref[first]) << " (atol " << atol << ", rtol " << rtol
                     << "); worst abs error " << worst;
}

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

}  // namespace fjord::testing
