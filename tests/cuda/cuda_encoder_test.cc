// CUDA encoder_forward against its CPU twin, for both storage types (float and bf16).
#include <gtest/gtest.h>

#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::AsFloats;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::Poison;
using testing::Random;

class CudaEncoder : public CudaOpTest {
 protected:
  template <typename floatX>
  void CheckForward() {
    // Odd C (no vector alignment), repeated tokens, T not a power of two.
    constexpr int B = 3, T = 37, C = 67, V = 50;
    const std::vector<int32_t> tokens = testing::RandomInts(B * T, 1, V);
    const std::vector<floatX> wte = Random<floatX>(V * C, 2), wpe = Random<floatX>(T * C, 3);
    DeviceBuffer<int32_t> d_tokens(tokens);
    DeviceBuffer<floatX> d_wte(wte), d_wpe(wpe), d_out(std::vector<floatX>(B * T * C, Poison<floatX>()));
    cuda::encoder_forward(ctx_, d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C);
    Sync();
    std::vector<floatX> ref(B * T * C, Poison<floatX>());
    cpu::encoder_forward(cpu_ctx_, ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    const std::vector<float> got = AsFloats(d_out.Download());
    ASSERT_GT(testing::Norm(got), 0.0);
    // One IEEE addition of the same two values on both sides (with bf16, then the same rounding to
    // bf16): bitwise equal.
    ExpectClose("encoder out", got, AsFloats(ref), 0.0, 0.0);
  }
};

TEST_F(CudaEncoder, ForwardMatchesCpuExactly) { CheckForward<float>(); }
TEST_F(CudaEncoder, Bf16ForwardMatchesCpuExactly) { CheckForward<bf16>(); }

}  // namespace
}  // namespace fjord
