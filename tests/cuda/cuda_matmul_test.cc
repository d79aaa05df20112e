// CUDA matmul forward and backward (cuBLASLt + the dbias column sum) and the fused
// matmul_gelu_forward (cuBLASLt's GELU_AUX_BIAS epilogue, or its fallback) against the CPU twins,
// for both storage types (float and bf16; dweight and dbias are fp32 either way).
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <type_traits>
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

// ---- matmul_gelu_forward: shapes and bounds ----------------------------------------------------
// The CUDA op against its CPU twin, which is matmul_forward into pre, then gelu_forward of the
// stored pre (kernels/ops.h).
//
// pre: exactly matmul_forward's comparison (GemmAtol(C) and 1e-5; bf16 plus one ulp).
//
// out. Write a_cuda and a_cpu for the two backends' fp32 values of pre before any rounding; the
// matmul comparison bounds |a_cuda - a_cpu| <= T = GemmAtol(C) + 1e-5 |pre|. The twin computes
// GeluForward(pre_cpu), pre_cpu being a_cpu stored (rounded, for bf16). The CUDA op computes
//   fused (GELU_AUX_BIAS): cuBLASLt's GELU of a_cuda itself, the fp32 value before pre_cuda is
//                          rounded from it;
//   fallback:              GeluForward(pre_cuda) in gelu_forward's kernel.
// 1. Input: the two GELUs' arguments differ by at most T plus, for bf16, half an ulp of pre_cpu
//    (fused) or half an ulp of each stored pre (fallback); the bound takes the latter, which
//    covers both. |GELU'| <= kGeluMaxSlope = 1.13 bounds how far that moves GELU.
// 2. Formula: gelu_forward's kernel and the CPU's GeluForward differ by at most 1e-6 + 1e-5 |out|
//    (cuda_elementwise_test's bound). cuBLASLt's GELU is the tanh form evaluated in fp32 (its
//    formula is not documented beyond that); we allow it the bound our GeluForward meets against
//    the exact formula (1e-6 + 1e-5 |out|, elementwise_test.cc), so the two differ by at most
//    twice that, plus 2^-22 |pre| for the tanh form's cancellation in 1 + tanh(a) when pre < 0
//    (tanh(a) near -1 carries an absolute error of a few 2^-25, which 0.5 pre multiplies).
// 3. Rounding: each side rounds its out once to floatX: nothing more for float (within the 1e-5
//    relative term), half an ulp of each stored out for bf16.
// The test cannot see which path the heuristic chose for a fusable shape, so it allows the fused
// bound there; it reports the path it inferred (the fallback's out is bitwise gelu_forward of its
// pre). Shapes that must fall back are held to the fallback's bound and checked to be bitwise
// that composition.
constexpr double kGeluAtol = 1e-6, kGeluRtol = 1e-5;
const double kTanhCancellation = std::ldexp(1.0, -22);

// Fusable: OC a multiple of 8 (cuBLASLt's rule for the aux leading dimension; the op also needs a
// 16-byte aligned pre, which a fresh allocation is): below any tile, N odd, and GPT-2 small's MLP
// fc layer (OC = 4C) for a small batch.
const Shape kGeluShapes[] = {{7, 16, 24}, {129, 48, 192}, {300, 64, 256}, {256, 768, 3072}};
// OC % 8 != 0: the op must fall back.
const Shape kGeluFallbackShapes[] = {{7, 13, 11}, {129, 48, 130}};

// GELU bends in about [-3, 3]. Weights in [-3/sqrt(C), 3/sqrt(C)] make each product's variance
// 1/C, so the GEMM part of pre is about N(0, 1) and the bias in [-1, 1] shifts it: pre covers the
// bend as well as both nearly linear tails. (GemmAtol, argued for weights in [-1, 1], only gets
// more conservative.)
float WeightScale(int C) { return 3.0f / std::sqrt(static_cast<float>(C)); }

// Half a storage ulp at x: 0 for float (see 3. above), half of Bf16Spacing for bf16.
double HalfUlp(float) { return 0.0; }
double HalfUlp(bf16 x) { return 0.5 * testing::Bf16Spacing(x); }

// Bound on |out_cuda[i] - out_cpu[i]| (derivation above); `fused` allows cuBLASLt's GELU.
template <typename floatX>
std::vector<double> GeluOutBound(int C, const std::vector<floatX>& pre_cuda,
                                 const std::vector<floatX>& pre_cpu, const std::vector<floatX>& out_cuda,
                                 const std::vector<floatX>& out_cpu, bool fused) {
  std::vector<double> bound(out_cpu.size());
  for (size_t i = 0; i < bound.size(); ++i) {
    const double pre = std::fabs(ToFloat(pre_cpu[i]));
    const double out = std::max(std::fabs(ToFloat(out_cpu[i])), std::fabs(ToFloat(out_cuda[i])));
    const double input = GemmAtol(C) + 1e-5 * pre + HalfUlp(pre_cpu[i]) + HalfUlp(pre_cuda[i]);
    const double ours = kGeluAtol + kGeluRtol * out;
    const double formula = fused ? 2.0 * ours + kTanhCancellation * pre : ours;
    bound[i] = testing::kGeluMaxSlope * input + formula + HalfUlp(out_cpu[i]) + HalfUlp(out_cuda[i]);
  }
  return bound;
}

template <typename floatX>
bool SameBits(const std::vector<floatX>& a, const std::vector<floatX>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(floatX)) == 0;
}

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

  // matmul_gelu_forward on both backends from the same inputs, compared as derived above. The CUDA
  // op's pre lies pre_offset elements into its allocation (1 misaligns it). With must_fall_back the
  // op must have run matmul_forward then gelu_forward; otherwise the path it took is reported.
  template <typename floatX>
  void CheckMatmulGelu(const Shape& s, size_t pre_offset, bool must_fall_back, uint32_t seed) {
    SCOPED_TRACE(::testing::Message()
                 << "N=" << s.N << " C=" << s.C << " OC=" << s.OC << " pre offset=" << pre_offset);
    const size_t n = s.N * s.OC;
    const float ws = WeightScale(s.C);
    const std::vector<floatX> inp = Random<floatX>(s.N * s.C, seed);
    const std::vector<floatX> weight = Random<floatX>(size_t{1} * s.OC * s.C, seed + 1, -ws, ws);
    const std::vector<floatX> bias = Random<floatX>(s.OC, seed + 2);
    DeviceBuffer<floatX> d_inp(inp), d_weight(weight), d_bias(bias);
    DeviceBuffer<floatX> d_out(std::vector<floatX>(n, Poison<floatX>()));
    DeviceBuffer<floatX> d_pre(std::vector<floatX>(n + pre_offset, Poison<floatX>()));
    floatX* const pre_ptr = d_pre.get() + pre_offset;
    cuda::matmul_gelu_forward(ctx_, d_out.get(), pre_ptr, d_inp.get(), d_weight.get(), d_bias.get(), s.N, s.C,
                              s.OC);
    Sync();
    std::vector<floatX> out(n, Poison<floatX>()), pre(n, Poison<floatX>());
    cpu::matmul_gelu_forward(cpu_ctx_, out.data(), pre.data(), inp.data(), weight.data(), bias.data(), s.N,
                             s.C, s.OC);
    const std::vector<floatX> got_out = d_out.Download();
    const std::vector<floatX> got_pre_all = d_pre.Download();
    const std::vector<floatX> got_pre(got_pre_all.begin() + pre_offset, got_pre_all.end());
    ASSERT_GT(testing::Norm(AsFloats(got_out)), 0.0);
    ExpectRoundedClose("matmul_gelu pre", got_pre, pre, GemmAtol(s.C), 1e-5);
    testing::ExpectWithin("matmul_gelu out", testing::ToDouble(got_out), testing::ToDouble(out),
                          GeluOutBound(s.C, got_pre, pre, got_out, out, !must_fall_back));

    // The fallback's out is gelu_forward of its own pre, bit for bit; the fused epilogue's is not
    // (different GELU argument and evaluation), except by a coincidence over every element.
    DeviceBuffer<floatX> d_gelu(std::vector<floatX>(n, Poison<floatX>()));
    cuda::gelu_forward(ctx_, d_gelu.get(), pre_ptr, n);
    Sync();
    const bool fell_back = SameBits(d_gelu.Download(), got_out);
    if (must_fall_back) {
      EXPECT_TRUE(fell_back) << "out is not gelu_forward of pre: the op did not fall back";
    } else {
      const char* type = std::is_same_v<floatX, float> ? "fp32" : "bf16";
      std::printf("matmul_gelu_forward %s N=%zu C=%d OC=%d: %s\n", type, s.N, s.C, s.OC,
                  fell_back ? "fell back (matmul_forward + gelu_forward)" : "ran the GELU_AUX_BIAS epilogue");
    }
  }

  template <typename floatX>
  void CheckMatmulGeluShapes(uint32_t seed) {
    for (const Shape& s : kGeluShapes) CheckMatmulGelu<floatX>(s, 0, false, seed);
  }

  template <typename floatX>
  void CheckMatmulGeluFallback(uint32_t seed) {
    for (const Shape& s : kGeluFallbackShapes) CheckMatmulGelu<floatX>(s, 0, true, seed);
    // A fusable shape, but pre one element past an aligned allocation (4 or 2 bytes aligned).
    CheckMatmulGelu<floatX>(kGeluShapes[1], 1, true, seed + 10);
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

TEST_F(CudaMatmul, MatmulGeluMatchesCpu) { CheckMatmulGeluShapes<float>(80); }
TEST_F(CudaMatmul, MatmulGeluFallbackMatchesCpu) { CheckMatmulGeluFallback<float>(90); }
TEST_F(CudaMatmul, Bf16MatmulGeluMatchesCpu) { CheckMatmulGeluShapes<bf16>(180); }
TEST_F(CudaMatmul, Bf16MatmulGeluFallbackMatchesCpu) { CheckMatmulGeluFallback<bf16>(190); }

// Without a cuBLASLt handle the op refuses before touching the device (so this runs anywhere).
TEST(CudaMatmulContract, RefusesContextWithoutBlasHandle) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const OpContext ctx;
  EXPECT_DEATH(cuda::matmul_forward<float>(ctx, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "OpContext::blas");
  EXPECT_DEATH(cuda::matmul_forward<bf16>(ctx, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "OpContext::blas");
  // A bias pointer that is never dereferenced: the handle check comes first.
  const float bias = 0.0f;
  EXPECT_DEATH(cuda::matmul_gelu_forward<float>(ctx, nullptr, nullptr, nullptr, nullptr, &bias, 1, 1, 1),
               "OpContext::blas");
}

// matmul_gelu_forward requires a bias, and says so before touching the device.
TEST(CudaMatmulContract, MatmulGeluRefusesNullBias) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const OpContext ctx;
  EXPECT_DEATH(cuda::matmul_gelu_forward<float>(ctx, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "needs a bias");
  EXPECT_DEATH(cuda::matmul_gelu_forward<bf16>(ctx, nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1),
               "needs a bias");
}

}  // namespace
}  // namespace fjord
