// CUDA matmul forward and backward (cuBLASLt + the dbias column sum) against the CPU twin, for both
// storage types (float and bf16; dweight and dbias are fp32 either way).
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::AsFloats;
using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;
using testing::ExpectRoundedClose;
using testing::Poison;
using testing::Random;

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what the runtime gives cuBLASLt on Hopper

// Tolerance of an fp32 GEMM against the CPU's, per term of the K-long dot products. With inputs
// uniform in [-1, 1] the running sums grow like sqrt(k / 9), and each of the K additions rounds
// with error up to 2^-24 times that, so one implementation's error has a standard deviation of
// about 2^-24 * K / 4.2 = 1.4e-8 K and the difference of two about 2e-8 K. 3e-7 K is 15 sigma:
// never hit by rounding, while a wrong index, transpose or missed accumulation is off by O(1).
// The bf16 GEMMs (tensor cores) multiply bf16 values exactly and accumulate in fp32, but the
// hardware may truncate rather than round when it adds a step of 8 or 16 products to the
// accumulator: K / 8 errors below 2^-23 of the running sum, all of one sign, i.e. at most
// 1.5e-8 K |sum|. With |sum| ~ sqrt(K / 9) that stays under 3e-7 K for |sum| up to ~20, and the
// 1e-5 relative term covers the rare larger sums, so the same bound serves both storage types.
double GemmAtol(size_t K) { return 3e-7 * static_cast<double>(K); }

struct Shape {
  size_t N;
  int C;
  int OC;
};

// Odd sizes below any tile, N and OC just past powers of two, and GPT-2 small's QKV projection
// (N = B*T rows of a small batch).
const Shape kShapes[] = {{7, 13, 11}, {129, 48, 130}, {300, 64, 130}, {256, 768, 2304}};

// Owns a cuBLASLt handle and a workspace for the matmul ops, on top of CudaOpTest's stream.
class CudaMatmul : public CudaOpTest {
 protected:
  void SetUp() override {
    CudaOpTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cublasLtCreate(&handle_), CUBLAS_STATUS_SUCCESS);
    workspace_ = std::make_unique<DeviceBuffer<uint8_t>>(kWorkspaceBytes);
    ctx_.blas = handle_;
    ctx_.workspace = workspace_->get();
    ctx_.workspace_bytes = kWorkspaceBytes;
  }
  void TearDown() override {
    if (handle_ != nullptr) (void)cublasLtDestroy(handle_);
    workspace_.reset();
    CudaOpTest::TearDown();
  }

  template <typename floatX>
  void CheckForward() {
    for (const Shape& s : kShapes) {
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE(::testing::Message()
                     << "N=" << s.N << " C=" << s.C << " OC=" << s.OC << " bias=" << with_bias);
        const std::vector<floatX> inp = Random<floatX>(s.N * s.C, 1);
        const std::vector<floatX> weight = Random<floatX>(size_t{1} * s.OC * s.C, 2);
        const std::vector<floatX> bias = Random<floatX>(s.OC, 3);
        DeviceBuffer<floatX> d_inp(inp), d_weight(weight), d_bias(bias);
        DeviceBuffer<floatX> d_out(std::vector<floatX>(s.N * s.OC, Poison<floatX>()));
        cuda::matmul_forward(ctx_, d_out.get(), d_inp.get(), d_weight.get(),
                             with_bias ? d_bias.get() : nullptr, s.N, s.C, s.OC);
        Sync();
        std::vector<floatX> out(s.N * s.OC, Poison<floatX>());
        cpu::matmul_forward(cpu_ctx_, out.data(), inp.data(), weight.data(),
                            with_bias ? bias.data() : nullptr, s.N, s.C, s.OC);
        const std::vector<floatX> got = d_out.Download();
        ASSERT_GT(testing::Norm(AsFloats(got)), 0.0);
        // With bf16, plus the one ulp by which the fp32 difference can flip the final rounding.
        ExpectRoundedClose("matmul out", got, out, GemmAtol(s.C), 1e-5);
      }
    }
  }

  // Runs matmul_backward on both backends from the same prior gradients and compares; dinp and
  // dbias are optional (null) as in the op's contract. `ctx` is the CUDA context to use.
  template <typename floatX>
  void CheckBackward(const OpContext& ctx, const Shape& s, bool with_dinp, bool with_dbias, uint32_t seed) {
    const std::vector<floatX> inp = Random<floatX>(s.N * s.C, seed);
    const std::vector<floatX> weight = Random<floatX>(size_t{1} * s.OC * s.C, seed + 1);
    const std::vector<floatX> dout = Random<floatX>(s.N * s.OC, seed + 2);
    std::vector<floatX> dinp = Random<floatX>(s.N * s.C, seed + 3);
    std::vector<float> dweight = testing::RandomFloats(size_t{1} * s.OC * s.C, seed + 4);
    std::vector<float> dbias = testing::RandomFloats(s.OC, seed + 5);
    DeviceBuffer<floatX> d_inp(inp), d_weight(weight), d_dout(dout), d_dinp(dinp);
    DeviceBuffer<float> d_dweight(dweight), d_dbias(dbias);
    cuda::matmul_backward(ctx, with_dinp ? d_dinp.get() : nullptr, d_dweight.get(),
                          with_dbias ? d_dbias.get() : nullptr, d_dout.get(), d_inp.get(), d_weight.get(),
                          s.N, s.C, s.OC);
    Sync();
    const std::vector<floatX> prior_dinp = dinp;
    const std::vector<float> prior_dbias = dbias;
    cpu::matmul_backward(cpu_ctx_, with_dinp ? dinp.data() : nullptr, dweight.data(),
                         with_dbias ? dbias.data() : nullptr, dout.data(), inp.data(), weight.data(), s.N,
                         s.C, s.OC);
    // Accumulation: the prior (random, O(1)) values are part of the expected result, so an op
    // that overwrote instead of adding would fail by O(1). bf16 dinp: plus one ulp for the
    // rounding of prior + product.
    ExpectRoundedClose("matmul dinp", d_dinp.Download(), dinp, GemmAtol(s.OC), 1e-5);
    ExpectClose("matmul dweight", d_dweight.Download(), dweight, GemmAtol(s.N), 1e-5);
    // dbias: N values in [-1, 1] summed in float (chunks, then partials) against the CPU's double;
    // the same random-walk argument as the GEMMs, with K = N.
    ExpectClose("matmul dbias", d_dbias.Download(), dbias, GemmAtol(s.N), 1e-5);
    if (!with_dinp)
      ExpectClose("matmul dinp untouched", AsFloats(d_dinp.Download()), AsFloats(prior_dinp), 0.0, 0.0);
    if (!with_dbias) ExpectClose("matmul dbias untouched", d_dbias.Download(), prior_dbias, 0.0, 0.0);
  }

  template <typename floatX>
  void CheckBackwardVariants(uint32_t seed) {
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
      CheckBackward<floatX>(ctx_, s, false, false, seed);
      CheckBackward<floatX>(ctx_, s, true, false, seed + 10);
      CheckBackward<floatX>(ctx_, s, false, true, seed + 20);
    }
  }

  // Without a workspace the GEMMs must still find algorithms and dbias takes its one-pass path.
  template <typename floatX>
  void CheckWithoutWorkspace() {
    OpContext ctx = ctx_;
    ctx.workspace = nullptr;
    ctx.workspace_bytes = 0;
    for (const Shape& s : kShapes) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
      CheckBackward<floatX>(ctx, s, true, true, 50);
    }
  }

  // Operands one element past an allocation (4-byte aligned for float, 2-byte for bf16): the
  // alignment preferences must let the heuristic pick kernels that cope, and the results must not
  // change.
  template <typename floatX>
  void CheckUnaligned() {
    const Shape s{33, 48, 130};
    const std::vector<floatX> inp = Random<floatX>(s.N * s.C + 1, 60);
    const std::vector<floatX> weight = Random<floatX>(size_t{1} * s.OC * s.C + 1, 61);
    const std::vector<floatX> bias = Random<floatX>(s.OC + 1, 62);
    DeviceBuffer<floatX> d_inp(inp), d_weight(weight), d_bias(bias);
    DeviceBuffer<floatX> d_out(std::vector<floatX>(s.N * s.OC + 1, Poison<floatX>()));
    cuda::matmul_forward(ctx_, d_out.get() + 1, d_inp.get() + 1, d_weight.get() + 1, d_bias.get() + 1, s.N,
                         s.C, s.OC);
    Sync();
    std::vector<floatX> out(s.N * s.OC + 1, Poison<floatX>());
    cpu::matmul_forward(cpu_ctx_, out.data() + 1, inp.data() + 1, weight.data() + 1, bias.data() + 1, s.N,
                        s.C, s.OC);
    const std::vector<floatX> got = d_out.Download();
    ASSERT_GT(testing::Norm(AsFloats(std::vector<floatX>(got.begin() + 1, got.end()))), 0.0);
    ExpectRoundedClose("matmul out (unaligned)", std::vector<floatX>(got.begin() + 1, got.end()),
                       std::vector<floatX>(out.begin() + 1, out.end()), GemmAtol(s.C), 1e-5);

    const std::vector<floatX> dout = Random<floatX>(s.N * s.OC + 1, 63);
    std::vector<floatX> dinp = Random<floatX>(s.N * s.C + 1, 64);
    std::vector<float> dweight = testing::RandomFloats(size_t{1} * s.OC * s.C + 1, 65);
    std::vector<float> dbias = testing::RandomFloats(s.OC + 1, 66);
    DeviceBuffer<floatX> d_dout(dout), d_dinp(dinp);
    DeviceBuffer<float> d_dweight(dweight), d_dbias(dbias);
    cuda::matmul_backward(ctx_, d_dinp.get() + 1, d_dweight.get() + 1, d_dbias.get() + 1, d_dout.get() + 1,
                          d_inp.get() + 1, d_weight.get() + 1, s.N, s.C, s.OC);
    Sync();
    cpu::matmul_backward(cpu_ctx_, dinp.data() + 1, dweight.data() + 1, dbias.data() + 1, dout.data() + 1,
                         inp.data() + 1, weight.data() + 1, s.N, s.C, s.OC);
    ExpectRoundedClose("matmul dinp (unaligned)", d_dinp.Download(), dinp, GemmAtol(s.OC), 1e-5);
    ExpectClose("matmul dweight (unaligned)", d_dweight.Download(), dweight, GemmAtol(s.N), 1e-5);
    ExpectClose("matmul dbias (unaligned)", d_dbias.Download(), dbias, GemmAtol(s.N), 1e-5);
  }

  // The same call twice gives bitwise the same gradients (no atomics in the bias sum, and cuBLASLt
  // is reproducible for a fixed algorithm and workspace).
  template <typename floatX>
  void CheckReproducible() {
    const Shape s{1000, 64, 130};
    const std::vector<floatX> inp = Random<floatX>(s.N * s.C, 70);
    const std::vector<floatX> weight = Random<floatX>(size_t{1} * s.OC * s.C, 71);
    const std::vector<floatX> dout = Random<floatX>(s.N * s.OC, 72);
    DeviceBuffer<floatX> d_inp(inp), d_weight(weight), d_dout(dout);
    std::vector<float> first_dx, first_dw, first_db;
    for (int run = 0; run < 3; ++run) {
      DeviceBuffer<floatX> d_dinp(std::vector<floatX>(s.N * s.C, FromFloat<floatX>(0.0f)));
      DeviceBuffer<float> d_dweight(std::vector<float>(size_t{1} * s.OC * s.C, 0.0f));
      DeviceBuffer<float> d_dbias(std::vector<float>(s.OC, 0.0f));
      cuda::matmul_backward(ctx_, d_dinp.get(), d_dweight.get(), d_dbias.get(), d_dout.get(), d_inp.get(),
                            d_weight.get(), s.N, s.C, s.OC);
      Sync();
      if (run == 0) {
        first_dx = AsFloats(d_dinp.Download());
        first_dw = d_dweight.Download();
        first_db = d_dbias.Download();
        ASSERT_GT(testing::Norm(first_db), 0.0);
      } else {
        ExpectClose("dinp rerun", AsFloats(d_dinp.Download()), first_dx, 0.0, 0.0);
        ExpectClose("dweight rerun", d_dweight.Download(), first_dw, 0.0, 0.0);
        ExpectClose("dbias rerun", d_dbias.Download(), first_db, 0.0, 0.0);
      }
    }
  }

  cublasLtHandle_t handle_ = nullptr;
  std::unique_ptr<DeviceBuffer<uint8_t>> workspace_;
};

TEST_F(CudaMatmul, ForwardMatchesCpu) { CheckForward<float>(); }

TEST_F(CudaMatmul, BackwardMatchesCpuAndAccumulates) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    CheckBackward<float>(ctx_, s, true, true, 10);
  }
}

TEST_F(CudaMatmul, BackwardWithoutInputOrBiasGradient) { CheckBackwardVariants<float>(20); }
TEST_F(CudaMatmul, WorksWithoutWorkspace) { CheckWithoutWorkspace<float>(); }
TEST_F(CudaMatmul, UnalignedOperands) { CheckUnaligned<float>(); }
TEST_F(CudaMatmul, BackwardIsBitwiseReproducible) { CheckReproducible<float>(); }

// bf16: A and B CUDA_R_16BF, out and dinp bf16, dweight fp32 (kernels/cuda/matmul.cu).
TEST_F(CudaMatmul, Bf16ForwardMatchesCpu) { CheckForward<bf16>(); }

TEST_F(CudaMatmul, Bf16BackwardMatchesCpuAndAccumulates) {
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    CheckBackward<bf16>(ctx_, s, true, true, 110);
  }
}

TEST_F(CudaMatmul, Bf16BackwardWithoutInputOrBiasGradient) { CheckBackwardVariants<bf16>(120); }
TEST_F(CudaMatmul, Bf16WorksWithoutWorkspace) { CheckWithoutWorkspace<bf16>(); }
TEST_F(CudaMatmul, Bf16UnalignedOperands) { CheckUnaligned<bf16>(); }
TEST_F(CudaMatmul, Bf16BackwardIsBitwiseReproducible) { CheckReproducible<bf16>(); }

// Without a cuBLASLt handle the op refuses before touching the device (so this runs anywhere).
TEST(CudaMatmulContract, RefusesContextWithoutBlasHandle) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const OpContext ctx;
  EXPECT_DEATH(cuda::matmul_forward<float>(ctx, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "OpContext::blas");
  EXPECT_DEATH(cuda::matmul_forward<bf16>(ctx, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "OpContext::blas");
}

}  // namespace
}  // namespace fjord
