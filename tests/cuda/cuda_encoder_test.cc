// CUDA encoder_forward against its CPU twin.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::kPoison;

class CudaEncoder : public CudaOpTest {};

TEST_F(CudaEncoder, ForwardMatchesCpuExactly) {
  // Odd C (no vector alignment), repeated tokens, T not a power of two.
  constexpr int B = 3, T = 37, C = 67, V = 50;
  const std::vector<int32_t> tokens = testing::RandomInts(B * T, 1, V);
  const std::vector<float> wte = testing::RandomFloats(V * C, 2), wpe = testing::RandomFloats(T * C, 3);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<float> d_wte(wte), d_wpe(wpe), d_out(std::vector<float>(B * T * C, kPoison));
  cuda::encoder_forward(ctx_, d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C);
  Sync();
  std::vector<float> ref(B * T * C, kPoison);
  cpu::encoder_forward(cpu_ctx_, ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  const std::vector<float> got = d_out.Download();
  ASSERT_GT(testing::Norm(got), 0.0);
  // One IEEE addition of the same two floats on both sides: bitwise equal.
  ExpectClose("encoder out", got, ref, 0.0, 0.0);
}

}  // namespace
}  // namespace fjord
