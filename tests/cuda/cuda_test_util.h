// Helpers for CUDA op tests: a fixture that skips without a device and owns a stream, and an RAII
// device buffer. Each test runs the CUDA op and its CPU twin (the oracle) on the same inputs and
// compares with tests/kernels/test_util.h's ExpectClose.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/ops.h"
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
