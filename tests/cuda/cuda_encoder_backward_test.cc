// CUDA encoder_backward (deterministic: sort positions by token, one owner per token) against the
// CPU twin, bit for bit, for both storage types of dout (float and bf16; the gradients are fp32).
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::Random;

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // the runtime's GEMM workspace, reused as scratch

struct Case {
  const char* name;
  int B, T, C, V;
  bool one_token;  // every position holds token V - 1: a single run of B*T rows
};

const Case kCases[] = {
    {"small vocabulary, many repeats, odd C", 3, 37, 67, 50, false},
    {"GPT-2 vocabulary and width", 4, 64, 768, 50257, false},
    {"one token everywhere, C past one channel block", 2, 300, 130, 7, true},
    {"single position", 1, 1, 5, 3, false},
    // The cases above sort at most 600 positions, which CUB does in one tile; a training
    // micro-batch (B*T in the thousands) takes its multi-tile path, whose stability the bitwise
    // comparison checks through the repeats of a small vocabulary.
    {"8192 positions: the sort spans many tiles", 8, 1024, 64, 1000, false},
};

class CudaEncoderBackward : public CudaOpTest {
 protected:
  void SetUp() override {
    CudaOpTest::SetUp();
    if (IsSkipped()) return;
    workspace_ = std::make_unique<DeviceBuffer<uint8_t>>(kWorkspaceBytes);
    ctx_.workspace = workspace_->get();
    ctx_.workspace_bytes = kWorkspaceBytes;
  }
  void TearDown() override {
    workspace_.reset();
    CudaOpTest::TearDown();
  }

  template <typename floatX>
  void Check() {
    for (const Case& k : kCases) {
      SCOPED_TRACE(k.name);
      const size_t BT = size_t{1} * k.B * k.T;
      std::vector<int32_t> tokens = testing::RandomInts(BT, 1, k.V);
      if (k.one_token)
        for (int32_t& t : tokens) t = k.V - 1;
      const std::vector<floatX> dout = Random<floatX>(BT * k.C, 2);
      // Prior gradients: accumulation must add to them, and rows of unused tokens must keep them.
      const std::vector<float> prior_wte = testing::RandomFloats(size_t{1} * k.V * k.C, 3);
      const std::vector<float> prior_wpe = testing::RandomFloats(size_t{1} * k.T * k.C, 4);
      DeviceBuffer<int32_t> d_tokens(tokens);
      DeviceBuffer<floatX> d_dout(dout);
      DeviceBuffer<float> d_dwte(prior_wte), d_dwpe(prior_wpe);
      cuda::encoder_backward(ctx_, d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tokens.get(), k.B, k.T, k.C);
      Sync();
      std::vector<float> dwte = prior_wte, dwpe = prior_wpe;
      cpu::encoder_backward(cpu_ctx_, dwte.data(), dwpe.data(), dout.data(), tokens.data(), k.B, k.T, k.C);
      const std::vector<float> got_wte = d_dwte.Download();
      std::vector<float> delta(got_wte.size());
      for (size_t i = 0; i < delta.size(); ++i) delta[i] = got_wte[i] - prior_wte[i];
      ASSERT_GT(testing::Norm(delta), 0.0);
      // Both backends add the same floats (bf16 values are exact in fp32) in the same order
      // (positions in (t, b) order, onto the prior value), so the results are identical.
      ExpectClose("dwte", got_wte, dwte, 0.0, 0.0);
      ExpectClose("dwpe", d_dwpe.Download(), dwpe, 0.0, 0.0);
    }
  }

  std::unique_ptr<DeviceBuffer<uint8_t>> workspace_;
};

TEST_F(CudaEncoderBackward, MatchesCpuBitwiseAndAccumulates) { Check<float>(); }
TEST_F(CudaEncoderBackward, Bf16MatchesCpuBitwiseAndAccumulates) { Check<bf16>(); }

}  // namespace
}  // namespace fjord
