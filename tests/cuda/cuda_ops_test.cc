// The CUDA op table: complete for both storage types, and (with a device) one training step of a
// one-layer GPT called through it matches the same step through the CPU table, in fp32 and in bf16.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/ops.h"
#include "tests/cuda/cuda_test_util.h"

namespace fjord {
namespace {

using testing::CudaOpTest;
using testing::DeviceBuffer;
using testing::ExpectClose;

#define FJORD_EXPECT_CUDA_ENTRY(name, ...) \
  EXPECT_NE(ops.name, nullptr) << #name;   \
  EXPECT_EQ(ops.name, &cuda::name) << #name;
#define FJORD_EXPECT_CUDA_F32_ENTRY(name, ...) \
  EXPECT_NE(ops.f32.name, nullptr) << #name;   \
  EXPECT_EQ(ops.f32.name, &cuda::name<float>) << #name;
#define FJORD_EXPECT_CUDA_BF16_ENTRY(name, ...) \
  EXPECT_NE(ops.bf16x.name, nullptr) << #name;  \
  EXPECT_EQ(ops.bf16x.name, &cuda::name<bf16>) << #name;

// Needs no device: taking the ops' addresses links every fjord::cuda definition, both
// instantiations of each model op included.
TEST(CudaOps, TableHoldsEveryCudaOp) {
  const Ops& ops = CudaOps();
  EXPECT_EQ(std::string(ops.name), "cuda");
  FJORD_MODEL_OP_LIST(FJORD_EXPECT_CUDA_F32_ENTRY, float)
  FJORD_MODEL_OP_LIST(FJORD_EXPECT_CUDA_BF16_ENTRY, bf16)
  FJORD_OP_LIST(FJORD_EXPECT_CUDA_ENTRY)
  EXPECT_EQ(&ops.model<float>(), &ops.f32);
  EXPECT_EQ(&ops.model<bf16>(), &ops.bf16x);
}

// Sizes of the one-layer model: hs = 16, T not a multiple of the attention tile, padded vocabulary.
constexpr int B = 2, T = 37, C = 48, NH = 3, V = 61, Vp = 64;
constexpr size_t BT = size_t{B} * T;
constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr float kLr = 1e-3f;  // the step's AdamW learning rate

// Offsets of named tensors in one flat buffer, each 16-float aligned like the model's.
class Arena {
 public:
  size_t Add(const std::string& name, size_t n) {
    const size_t offset = total_;
    tensors_.push_back({name, offset, n});
    total_ = (total_ + n + 15) / 16 * 16;
    return offset;
  }
  size_t total() const { return total_; }
  struct Tensor {
    std::string name;
    size_t offset, size;
  };
  const std::vector<Tensor>& tensors() const { return tensors_; }

 private:
  size_t total_ = 0;
  std::vector<Tensor> tensors_;
};

// Parameters (gradients share their offsets), activations (floatX), their fp32 statistics (LayerNorm
// mean and rstd, lse, losses) and activation gradients (floatX) of a one-layer GPT-2 as
// runtime/model/gpt.cc lays it out.
struct Model {
  Arena params, acts, stats, dacts;
  size_t wte = params.Add("wte", size_t{Vp} * C), wpe = params.Add("wpe", size_t{T} * C),
         ln1w = params.Add("ln1.w", C), ln1b = params.Add("ln1.b", C), qkvw = params.Add("qkv.w", 3 * C * C),
         qkvb = params.Add("qkv.b", 3 * C), projw = params.Add("proj.w", C*C),
         projb = params.Add("proj.b", C), ln2w = params.Add("ln2.w", C), ln2b = params.Add("ln2.b", C),
         fcw = params.Add("fc.w", 4 * C * C), fcb = params.Add("fc.b", 4 * C),
         fcprojw = params.Add("fcproj.w", 4 * C * C), fcprojb = params.Add("fcproj.b", C),
         lnfw = params.Add("lnf.w", C), lnfb = params.Add("lnf.b", C);
  size_t x0 = acts.Add("x0", BT*C), ln1 = acts.Add("ln1", BT*C), ln1_mean = stats.Add("ln1.mean", BT),
         ln1_rstd = stats.Add("ln1.rstd", BT), qkv = acts.Add("qkv", BT * 3 * C),
         atty = acts.Add("atty", BT*C), lse = stats.Add("lse", BT*NH), proj = acts.Add("proj", BT*C),
         x1 = acts.Add("x1", BT*C), ln2 = acts.Add("ln2", BT*C), ln2_mean = stats.Add("ln2.mean", BT),
         ln2_rstd = stats.Add("ln2.rstd", BT), fch = acts.Add("fch", BT * 4 * C),
         fch_gelu = acts.Add("fch_gelu", BT * 4 * C), fcproj = acts.Add("fcproj", BT*C),
         x2 = acts.Add("x2", BT*C), lnf = acts.Add("lnf", BT*C), lnf_mean = stats.Add("lnf.mean", BT),
         lnf_rstd = stats.Add("lnf.rstd", BT), logits = acts.Add("logits", BT*Vp),
         losses = stats.Add("losses", BT);
  size_t dlnf = dacts.Add("dlnf", BT*C), dx2 = dacts.Add("dx2", BT*C), dfcproj = dacts.Add("dfcproj", BT*C),
         dfch_gelu = dacts.Add("dfch_gelu", BT * 4 * C), dfch = dacts.Add("dfch", BT * 4 * C),
         dln2 = dacts.Add("dln2", BT*C), dx1 = dacts.Add("dx1", BT*C), dproj = dacts.Add("dproj", BT*C),
         datty = dacts.Add("datty", BT*C), dqkv = dacts.Add("dqkv", BT * 3 * C),
         dln1 = dacts.Add("dln1", BT*C), dx0 = dacts.Add("dx0", BT*C);
};

// Base pointers of one backend's buffers (host for CPU, device for CUDA) for storage type floatX.
template <typename floatX>
struct Buffers {
  float* P;   // fp32 parameters, which AdamW updates (the master weights)
  floatX* W;  // the parameters the model ops read: P itself for float, its bf16 copy for bf16
  float *G, *S;
  floatX *A, *dA;
  float *m, *v, *norm;
  const int32_t *tokens, *targets;
};

// The parameters the floatX model ops read: the fp32 parameters P themselves for float (the bf16
// copy W is then unused), W for bf16, which the step fills from P with cast_to_bf16.
template <typename floatX>
floatX* ModelWeights(float* P, floatX* W) {
  if constexpr (std::is_same_v<floatX, float>) {
    return P;
  } else {
    return W;
  }
}

// One training step through `ops` in storage type floatX: zero the gradients, (bf16: round the
// parameters to the bf16 copy the model reads), forward as runtime/model/gpt.cc runs it (the MLP's GEMM
// and GELU fused, the fused classifier), backward in reverse, gradient norm, one AdamW step on the
// fp32 parameters.
template <typename floatX>
void Step(const Ops& ops, const OpContext& ctx, const Model& md, const Buffers<floatX>& b) {
  const ModelOps<floatX>& x = ops.model<floatX>();
  float *P = b.P, *G = b.G, *S = b.S;
  floatX *W = b.W, *A = b.A, *dA = b.dA;
  const size_t n = md.params.total();
  ops.f32.fill_zero(ctx, G, n);
  x.fill_zero(ctx, dA, md.dacts.total());
  if constexpr (std::is_same_v<floatX, bf16>) ops.cast_to_bf16(ctx, W, P, n, 0, 0);

  x.encoder_forward(ctx, A + md.x0, b.tokens, W + md.wte, W + md.wpe, B, T, C);
  x.layernorm_forward(ctx, A + md.ln1, S + md.ln1_mean, S + md.ln1_rstd, A + md.x0, W + md.ln1w, W + md.ln1b,
                      BT, C);
  x.matmul_forward(ctx, A + md.qkv, A + md.ln1, W + md.qkvw, W + md.qkvb, BT, C, 3 * C);
  x.attention_forward(ctx, A + md.atty, S + md.lse, A + md.qkv, B, T, C, NH, NH);
  x.matmul_forward(ctx, A + md.proj, A + md.atty, W + md.projw, W + md.projb, BT, C, C);
  x.residual_forward(ctx, A + md.x1, A + md.x0, A + md.proj, BT * C);
  x.layernorm_forward(ctx, A + md.ln2, S + md.ln2_mean, S + md.ln2_rstd, A + md.x1, W + md.ln2w, W + md.ln2b,
                      BT, C);
  x.matmul_gelu_forward(ctx, A + md.fch_gelu, A + md.fch, A + md.ln2, W + md.fcw, W + md.fcb, BT, C, 4 * C);
  x.matmul_forward(ctx, A + md.fcproj, A + md.fch_gelu, W + md.fcprojw, W + md.fcprojb, BT, 4 * C, C);
  x.residual_forward(ctx, A + md.x2, A + md.x1, A + md.fcproj, BT * C);
  x.layernorm_forward(ctx, A + md.lnf, S + md.lnf_mean, S + md.lnf_rstd, A + md.x2, W + md.lnfw, W + md.lnfb,
                      BT, C);
  x.matmul_forward(ctx, A + md.logits, A + md.lnf, W + md.wte, nullptr, BT, C, Vp);
  x.fused_classifier(ctx, A + md.logits, S + md.losses, b.targets, BT, V, Vp, 1.0f / BT, 1);

  x.matmul_backward(ctx, dA + md.dlnf, G + md.wte, nullptr, A + md.logits, A + md.lnf, W + md.wte, BT, C, Vp);
  x.layernorm_backward(ctx, dA + md.dx2, G + md.lnfw, G + md.lnfb, dA + md.dlnf, A + md.x2, W + md.lnfw,
                       S + md.lnf_mean, S + md.lnf_rstd, BT, C);
  x.residual_backward(ctx, dA + md.dx1, dA + md.dfcproj, dA + md.dx2, BT * C);
  x.matmul_backward(ctx, dA + md.dfch_gelu, G + md.fcprojw, G + md.fcprojb, dA + md.dfcproj, A + md.fch_gelu,
                    W + md.fcprojw, BT, 4 * C, C);
  x.gelu_backward(ctx, dA + md.dfch, A + md.fch, dA + md.dfch_gelu, BT * 4 * C);
  x.matmul_backward(ctx, dA + md.dln2, G + md.fcw, G + md.fcb, dA + md.dfch, A + md.ln2, W + md.fcw, BT, C,
                    4 * C);
  x.layernorm_backward(ctx, dA + md.dx1, G + md.ln2w, G + md.ln2b, dA + md.dln2, A + md.x1, W + md.ln2w,
                       S + md.ln2_mean, S + md.ln2_rstd, BT, C);
  x.residual_backward(ctx, dA + md.dx0, dA + md.dproj, dA + md.dx1, BT * C);
  x.matmul_backward(ctx, dA + md.datty, G + md.projw, G + md.projb, dA + md.dproj, A + md.atty, W + md.projw,
                    BT, C, C);
  x.attention_backward(ctx, dA + md.dqkv, dA + md.datty, A + md.qkv, A + md.atty, S + md.lse, B, T, C, NH,
                       NH);
  x.matmul_backward(ctx, dA + md.dln1, G + md.qkvw, G + md.qkvb, dA + md.dqkv, A + md.ln1, W + md.qkvw, BT, C,
                    3 * C);
  x.layernorm_backward(ctx, dA + md.dx0, G + md.ln1w, G + md.ln1b, dA + md.dln1, A + md.x0, W + md.ln1w,
                       S + md.ln1_mean, S + md.ln1_rstd, BT, C);
  x.encoder_backward(ctx, G + md.wte, G + md.wpe, dA + md.dx0, b.tokens, B, T, C);

  ops.sum_squares(ctx, b.norm, G, n);
  // eps = 1 keeps the first step smooth in g (with a tiny eps it is lr * sign(g), and a gradient
  // that cancels to ~0 could flip sign between backends).
  ops.adamw_update(ctx, P, G, b.m, b.v, n, kLr, 0.9f, 0.95f, 1.0f, 0.1f, 1.0f, 1, nullptr, 0, 0);
}

// max |x| over a range, for tolerances relative to a tensor's scale.
double MaxAbs(const std::vector<float>& x, size_t offset, size_t size) {
  double m = 0.0;
  for (size_t i = offset; i < offset + size; ++i) m = std::max(m, std::fabs(static_cast<double>(x[i])));
  return m;
}

std::vector<float> Slice(const std::vector<float>& x, size_t offset, size_t size) {
  return std::vector<float>(x.begin() + offset, x.begin() + offset + size);
}

// Euclidean distance of two equally long ranges.
double Distance(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  return std::sqrt(s);
}

// The outputs of one step that the tests compare: losses, parameter gradients, the updated fp32
// parameters and the gradient norm.
struct StepResult {
  std::vector<float> S, G, P;
  float norm;
};

class CudaOpsModel : public CudaOpTest {
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

  // Weights ~ N(0, 0.02)-like scale as in GPT-2 (uniform of that spread), LayerNorm weights near 1;
  // wte and wpe larger, so the residual stream is O(1) and the logits are not all equal.
  std::vector<float> Params() const {
    std::vector<float> params = testing::RandomFloats(md_.params.total(), 1, -0.035f, 0.035f);
    for (size_t off : {md_.ln1w, md_.ln2w, md_.lnfw}) {
      const std::vector<float> w = testing::RandomFloats(C, static_cast<uint32_t>(off), 0.8f, 1.2f);
      std::copy(w.begin(), w.end(), params.begin() + off);
    }
    for (size_t i = 0; i < size_t{Vp} * C + size_t{T} * C; ++i) params[i] *= 20.0f;
    return params;
  }

  template <typename floatX>
  StepResult CpuStep(const std::vector<float>& params) const {
    const size_t n = md_.params.total();
    std::vector<float> P = params, G(n), S(md_.stats.total()), m(n, 0.0f), v(n, 0.0f);
    std::vector<floatX> W(n), A(md_.acts.total()), dA(md_.dacts.total());
    float norm = testing::kPoison;
    Step<floatX>(CpuOps(), cpu_ctx_, md_,
                 {P.data(), ModelWeights(P.data(), W.data()), G.data(), S.data(), A.data(), dA.data(),
                  m.data(), v.data(), &norm, tokens_.data(), targets_.data()});
    return {S, G, P, norm};
  }

  // The CUDA step; activations, statistics and gradients poisoned so that anything left unwritten
  // shows up.
  template <typename floatX>
  StepResult CudaStep(const std::vector<float>& params) {
    const size_t n = md_.params.total();
    DeviceBuffer<float> d_P(params), d_G(std::vector<float>(n, testing::kPoison)),
        d_S(std::vector<float>(md_.stats.total(), testing::kPoison)), d_m(std::vector<float>(n, 0.0f)),
        d_v(std::vector<float>(n, 0.0f)), d_norm(std::vector<float>{testing::kPoison});
    DeviceBuffer<floatX> d_W(std::vector<floatX>(n, testing::Poison<floatX>())),
        d_A(std::vector<floatX>(md_.acts.total(), testing::Poison<floatX>())),
        d_dA(std::vector<floatX>(md_.dacts.total(), testing::Poison<floatX>()));
    DeviceBuffer<int32_t> d_tokens(tokens_), d_targets(targets_);
    Step<floatX>(CudaOps(), ctx_, md_,
                 {d_P.get(), ModelWeights(d_P.get(), d_W.get()), d_G.get(), d_S.get(), d_A.get(), d_dA.get(),
                  d_m.get(), d_v.get(), d_norm.get(), d_tokens.get(), d_targets.get()});
    Sync();
    // sum_squares writes its result to device memory on the CUDA table.
    return {d_S.Download(), d_G.Download(), d_P.Download(), d_norm.Download()[0]};
  }

  const Model md_;
  const std::vector<int32_t> tokens_ = testing::RandomInts(BT, 2, V),
                             targets_ = testing::RandomInts(BT, 3, V);
  cublasLtHandle_t handle_ = nullptr;
  std::unique_ptr<DeviceBuffer<uint8_t>> workspace_;
};

TEST_F(CudaOpsModel, OneLayerTrainingStepMatchesCpuTable) {
  const std::vector<float> params = Params();
  const StepResult cpu = CpuStep<float>(params);
  const StepResult got = CudaStep<float>(params);

  // This test checks the wiring (every entry is the right op, pointers are device pointers, the
  // ops compose); each op's precision is checked against its CPU twin in its own test, to ~1e-5.
  // Through ~25 ops the differences stay below 1e-4 of each tensor's largest value, while a wrong
  // op, argument or missing accumulation is off by a large fraction of it.
  const std::vector<float> losses = Slice(cpu.S, md_.losses, BT);
  ASSERT_GT(testing::Norm(losses), 0.0);
  ExpectClose("losses", Slice(got.S, md_.losses, BT), losses, 1e-4, 1e-4);

  for (const Arena::Tensor& t : md_.params.tensors()) {
    const double scale = MaxAbs(cpu.G, t.offset, t.size);
    ASSERT_GT(scale, 0.0) << t.name << " has no gradient on the CPU";
    ExpectClose("grad " + t.name, Slice(got.G, t.offset, t.size), Slice(cpu.G, t.offset, t.size),
                1e-4 * scale, 1e-3);
    // AdamW with eps = 1 moves each parameter by lr * g / (|g| + 1) + lr * wd * p, so a gradient
    // error of 1e-4 relative moves it by far less than 1e-7.
    ExpectClose("param " + t.name, Slice(got.P, t.offset, t.size), Slice(cpu.P, t.offset, t.size), 1e-7,
                1e-5);
  }
  ASSERT_GT(cpu.norm, 0.0f);
  EXPECT_NEAR(got.norm, cpu.norm, 1e-3 * cpu.norm);
}

// The same step in bf16 (bf16 parameter copy, activations and activation gradients; fp32
// statistics, parameter gradients, master weights and AdamW) through the bf16x entries. The two
// backends round the same fp32 values to bf16 except where their fp32 results (1e-5 apart, as
// above) straddle a rounding boundary; there an element differs by one bf16 ulp (2^-8 to 2^-7
// relative) and the difference spreads through the later ops. How far is not something to bound a
// priori, so the test measures the scale of bf16 rounding itself: the CPU's bf16 step against its
// fp32 step, where every element of every activation carries its own rounding error. Per tensor,
// the backends' bf16 steps must be within twice that distance of each other: the triangle
// inequality's bound if the CUDA step is as far from fp32 as the CPU's (independent rounding
// would give sqrt(2), and the backends round most elements identically, so far less). A wrong
// entry, argument or accumulation differs by a large fraction of the tensor instead.
TEST_F(CudaOpsModel, Bf16OneLayerTrainingStepMatchesCpuTable) {
  const std::vector<float> params = Params();
  const StepResult fp32 = CpuStep<float>(params);
  const StepResult cpu = CpuStep<bf16>(params);
  const StepResult got = CudaStep<bf16>(params);

  // Per tensor: the backends within twice the bf16 rounding effect, and that effect (measured on
  // the CPU) a small fraction of the tensor, so that the bound is not vacuous: bf16's rounding (at
  // most 2^-8 relative per stored value) through the ~25 ops of one layer stays within a few
  // percent; 10% is the limit checked.
  auto check = [](const std::string& name, const std::vector<float>& got, const std::vector<float>& cpu,
                  const std::vector<float>& fp32) {
    const double rounding = Distance(cpu, fp32);
    EXPECT_LT(rounding, 0.1 * testing::Norm(fp32))
        << name << ": the CPU's bf16 step is far from its fp32 step";
    EXPECT_LE(Distance(got, cpu), 2.0 * rounding + 1e-6 * testing::Norm(fp32))
        << name << ": the CUDA and CPU bf16 steps differ by more than bf16 rounding does";
  };
  check("losses", Slice(got.S, md_.losses, BT), Slice(cpu.S, md_.losses, BT), Slice(fp32.S, md_.losses, BT));
  ASSERT_GT(testing::Norm(Slice(cpu.S, md_.losses, BT)), 0.0);
  double grad_distance = 0.0;
  for (const Arena::Tensor& t : md_.params.tensors()) {
    const std::vector<float> got_g = Slice(got.G, t.offset, t.size), cpu_g = Slice(cpu.G, t.offset, t.size);
    ASSERT_GT(testing::Norm(cpu_g), 0.0) << t.name << " has no gradient on the CPU";
    check("grad " + t.name, got_g, cpu_g, Slice(fp32.G, t.offset, t.size));
    // AdamW (fp32, eps = 1) moves a parameter by lr * (g / (|g| + 1) + wd p) from the same p, and
    // g / (|g| + 1) is 1-Lipschitz, so the parameters differ by at most lr times the gradients'
    // difference, plus the fp32 tolerance of the float step above (1e-7 + 1e-5 |p|) per element.
    const std::vector<float> cpu_p = Slice(cpu.P, t.offset, t.size);
    const double got_grad_distance = Distance(got_g, cpu_g);
    EXPECT_LE(
        Distance(Slice(got.P, t.offset, t.size), cpu_p),
        kLr * got_grad_distance + 1e-7 * std::sqrt(static_cast<double>(t.size)) + 1e-5 * testing::Norm(cpu_p))
        << "param " << t.name;
    grad_distance = std::hypot(grad_distance, got_grad_distance);
  }
  // |(sum of squares of g1) - (sum of squares of g2)| = | |g1| - |g2| | (|g1| + |g2|)
  // <= |g1 - g2| (|g1| + |g2|), plus the float step's 1e-3 relative for the sums themselves.
  ASSERT_GT(cpu.norm, 0.0f);
  EXPECT_NEAR(got.norm, cpu.norm,
              grad_distance * (std::sqrt(got.norm) + std::sqrt(cpu.norm)) + 1e-3 * cpu.norm);
}

}  // namespace
}  // namespace fjord
