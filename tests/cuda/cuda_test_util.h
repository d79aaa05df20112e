// Helpers for CUDA op tests: a fixture that skips without a device and owns a stream, an RAII
// device buffer, and inputs and comparisons for both storage types of the model ops (float and
// bf16, kernels/ops.h). Each test runs the CUDA op and its CPU twin (the oracle) on the same inputs
// and compares with tests/kernels/test_util.h's ExpectClose, or ExpectRoundedClose below.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"
#include "tests/kernels/test_util.h"

namespace fjord::testing {

// True when the CUDA runtime sees at least one device (false without a driver, too).
inline bool HaveCudaDevice() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the error so later calls do not report it
    return false;
  }
  return count > 0;
}

// x rounded to floatX (to nearest even, as the ops round their outputs). A bf16 test's inputs are
// bf16 values, so both backends read exactly the same numbers.
template <typename floatX>
std::vector<floatX> Rounded(const std::vector<float>& x) {
  std::vector<floatX> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = FromFloat<floatX>(x[i]);
  return out;
}

// RandomFloats (uniform in [lo, hi), reproducible from `seed`) rounded to floatX.
template <typename floatX>
std::vector<floatX> Random(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  return Rounded<floatX>(RandomFloats(n, seed, lo, hi));
}

// The exact values of float or bf16 data as floats, for ExpectClose, Norm and arithmetic.
inline std::vector<float> AsFloats(const std::vector<float>& x) { return x; }
inline std::vector<float> AsFloats(const std::vector<bf16>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = ToFloat(x[i]);
  return out;
}

// The shape of an attention op test: NH query heads of C / NH channels and kv() key/value heads
// (NKV; 0 means NH, multi-head), so qkv[B, T, width()] with width() = 3C for multi-head.
struct AttentionShape {
  int B, T, C, NH;
  int NKV = 0;
  int kv() const { return NKV > 0 ? NKV : NH; }
  int width() const { return (NH + 2 * kv()) * (C / NH); }
};

// qkv for shape s as floatX values: q and k in [-2, 2], so that scaled scores spread over a few
// units and the softmax is far from uniform; v in [-1, 1]. zero_q makes q = 0: every score 0, so
// attention is uniform over the visible keys and every probability is exactly 1 before normalising.
template <typename floatX>
std::vector<floatX> AttentionQkv(const AttentionShape& s, uint32_t seed, bool zero_q = false) {
  const size_t W = s.width(), QK = static_cast<size_t>(s.NH + s.kv()) * (s.C / s.NH);  // q and k columns
  std::vector<float> qkv = RandomFloats(size_t{1} * s.B * s.T * W, seed);
  for (size_t row = 0; row < size_t{1} * s.B * s.T; ++row)
    for (size_t c = 0; c < QK; ++c)
      qkv[row * W + c] *= (zero_q && c < static_cast<size_t>(s.C)) ? 0.0f : 2.0f;
  return Rounded<floatX>(qkv);
}

// One bf16 ulp at v: the spacing 2^(e - 7) of the binade [2^e, 2^(e+1)) that holds |v| (8
// significant bits), 2^-133 among the subnormals.
inline double Bf16Spacing(bf16 v) {
  const int exponent = (v.bits >> 7) & 0xff;
  return std::ldexp(1.0, (exponent == 0 ? 1 : exponent) - 127 - 7);
}

// Compares a floatX output of a CUDA op with its CPU twin's, when the two fp32 results each side
// computes before storing differ by at most atol + rtol |ref| (the bound a float test argues for
// the op). float: exactly ExpectClose. bf16: each side rounds its fp32 result once to nearest, and
// two fp32 values within that bound round to bf16 values at most the bound plus one bf16 spacing
// apart (a boundary between them sends them to neighbours), so one Bf16Spacing(ref) is added.
inline void ExpectRoundedClose(const std::string& name, const std::vector<float>& got,
                               const std::vector<float>& ref, double atol, double rtol) {
  ExpectClose(name, got, ref, atol, rtol);
}
inline void ExpectRoundedClose(const std::string& name, const std::vector<bf16>& got,
                               const std::vector<bf16>& ref, double atol, double rtol) {
  ASSERT_EQ(got.size(), ref.size()) << name << ": size mismatch";
  const std::vector<double> g = ToDouble(got), r = ToDouble(ref);
  std::vector<double> tol(r.size());
  for (size_t i = 0; i < r.size(); ++i) tol[i] = atol + rtol * std::fabs(r[i]) + Bf16Spacing(ref[i]);
  ExpectWithin(WithBounds(name, atol, rtol, ", plus one bf16 ulp"), g, r, tol);
}

// Owns n elements of device memory; copies deleted.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    FJORD_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_), (n > 0 ? n : 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() { (void)cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return ptr_; }
  size_t size() const { return n_; }

  // Synchronous copies (legacy default stream); call CudaOpTest::Sync() first after async work.
  void Upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), n_);
    FJORD_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    FJORD_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

// Skips the test when no device is present; otherwise gives it a stream and an OpContext on it.
// The CPU twin gets cpu_ctx_ (the CPU backend ignores the context).
class CudaOpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveCudaDevice()) GTEST_SKIP() << "no CUDA device";
    FJORD_CUDA_CHECK(cudaStreamCreate(&stream_));
    ctx_.stream = stream_;
  }
  void TearDown() override {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }
  // Waits for the ops enqueued on the stream and fails on any asynchronous error.
  void Sync() {
    FJORD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    FJORD_CUDA_CHECK(cudaGetLastError());
  }

  cudaStream_t stream_ = nullptr;
  OpContext ctx_;
  const OpContext cpu_ctx_;
};

}  // namespace fjord::testing
