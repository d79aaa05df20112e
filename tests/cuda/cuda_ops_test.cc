// The CUDA op table: complete, and (with a device) one training step of a one-layer GPT called
// through it matches the same step through the CPU table.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
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

// Needs no device: taking the ops' addresses links every fjord::cuda definition.
TEST(CudaOps, TableHoldsEveryCudaOp) {
  const Ops& ops = CudaOps();
  EXPECT_EQ(std::string(ops.name), "cuda");
  FJORD_OP_LIST(FJORD_EXPECT_CUDA_ENTRY)
}

// Sizes of the one-layer model: hs = 16, T not a multiple of the attention tile, padded vocabulary.
constexpr int B = 2, T = 37, C = 48, NH = 3, V = 61, Vp = 64;
constexpr size_t BT = size_t{B} * T;
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

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

// Parameters (gradients share their offsets), activations and activation gradients of a one-layer
// GPT-2 as runtime/gpt.cc lays it out.
struct Model {
  Arena params, acts, dacts;
  size_t wte = params.Add("wte", size_t{Vp} * C), wpe = params.Add("wpe", size_t{T} * C),
         ln1w = params.Add("ln1.w", C), ln1b = params.Add("ln1.b", C), qkvw = params.Add("qkv.w", 3 * C * C),
         qkvb = params.Add("qkv.b", 3 * C), projw = params.Add("proj.w", C*C),
         projb = params.Add("proj.b", C), ln2w = params.Add("ln2.w", C), ln2b = params.Add("ln2.b", C),
         fcw = params.Add("fc.w", 4 * C * C), fcb = params.Add("fc.b", 4 * C),
         fcprojw = params.Add("fcproj.w", 4 * C * C), fcprojb = params.Add("fcproj.b", C),
         lnfw = params.Add("lnf.w", C), lnfb = params.Add("lnf.b", C);
  size_t x0 = acts.Add("x0", BT*C), ln1 = acts.Add("ln1", BT*C), ln1_mean = acts.Add("ln1.mean", BT),
         ln1_rstd = acts.Add("ln1.rstd", BT), qkv = acts.Add("qkv", BT * 3 * C),
         atty = acts.Add("atty", BT*C), lse = acts.Add("lse", BT*NH), proj = acts.Add("proj", BT*C),
         x1 = acts.Add("x1", BT*C), ln2 = acts.Add("ln2", BT*C), ln2_mean = acts.Add("ln2.mean", BT),
         ln2_rstd = acts.Add("ln2.rstd", BT), fch = acts.Add("fch", BT * 4 * C),
         fch_gelu = acts.Add("fch_gelu", BT * 4 * C), fcproj = acts.Add("fcproj", BT*C),
         x2 = acts.Add("x2", BT*C), lnf = acts.Add("lnf", BT*C), lnf_mean = acts.Add("lnf.mean", BT),
         lnf_rstd = acts.Add("lnf.rstd", BT), logits = acts.Add("logits", BT*Vp),
         losses = acts.Add("losses", BT);
  size_t dlnf = dacts.Add("dlnf", BT*C), dx2 = dacts.Add("dx2", BT*C), dfcproj = dacts.Add("dfcproj", BT*C),
         dfch_gelu = dacts.Add("dfch_gelu", BT * 4 * C), dfch = dacts.Add("dfch", BT * 4 * C),
         dln2 = dacts.Add("dln2", BT*C), dx1 = dacts.Add("dx1", BT*C), dproj = dacts.Add("dproj", BT*C),
         datty = dacts.Add("datty", BT*C), dqkv = dacts.Add("dqkv", BT * 3 * C),
         dln1 = dacts.Add("dln1", BT*C), dx0 = dacts.Add("dx0", BT*C);
};

// Base pointers of one backend's buffers (host for CPU, device for CUDA).
struct Buffers {
  float *P, *G, *A, *dA, *m, *v, *norm;
  const int32_t *tokens, *targets;
};

// One training step through `ops`: zero the gradients, forward with the fused classifier,
// backward in reverse, gradient norm, one AdamW step.
void Step(const Ops& ops, const OpContext& ctx, const Model& md, const Buffers& b) {
  float *P = b.P, *G = b.G, *A = b.A, *dA = b.dA;
  const size_t n = md.params.total();
  ops.fill_zero(ctx, G, n);
  ops.fill_zero(ctx, dA, md.dacts.total());

  ops.encoder_forward(ctx, A + md.x0, b.tokens, P + md.wte, P + md.wpe, B, T, C);
  ops.layernorm_forward(ctx, A + md.ln1, A + md.ln1_mean, A + md.ln1_rstd, A + md.x0, P + md.ln1w,
                        P + md.ln1b, BT, C);
  ops.matmul_forward(ctx, A + md.qkv, A + md.ln1, P + md.qkvw, P + md.qkvb, BT, C, 3 * C);
  ops.attention_forward(ctx, A + md.atty, A + md.lse, A + md.qkv, B, T, C, NH);
  ops.matmul_forward(ctx, A + md.proj, A + md.atty, P + md.projw, P + md.projb, BT, C, C);
  ops.residual_forward(ctx, A + md.x1, A + md.x0, A + md.proj, BT * C);
  ops.layernorm_forward(ctx, A + md.ln2, A + md.ln2_mean, A + md.ln2_rstd, A + md.x1, P + md.ln2w,
                        P + md.ln2b, BT, C);
  ops.matmul_forward(ctx, A + md.fch, A + md.ln2, P + md.fcw, P + md.fcb, BT, C, 4 * C);
  ops.gelu_forward(ctx, A + md.fch_gelu, A + md.fch, BT * 4 * C);
  ops.matmul_forward(ctx, A + md.fcproj, A + md.fch_gelu, P + md.fcprojw, P + md.fcprojb, BT, 4 * C, C);
  ops.residual_forward(ctx, A + md.x2, A + md.x1, A + md.fcproj, BT * C);
  ops.layernorm_forward(ctx, A + md.lnf, A + md.lnf_mean, A + md.lnf_rstd, A + md.x2, P + md.lnfw,
                        P + md.lnfb, BT, C);
  ops.matmul_forward(ctx, A + md.logits, A + md.lnf, P + md.wte, nullptr, BT, C, Vp);
  ops.fused_classifier(ctx, A + md.logits, A + md.losses, b.targets, BT, V, Vp, 1.0f / BT, 1);

  ops.matmul_backward(ctx, dA + md.dlnf, G + md.wte, nullptr, A + md.logits, A + md.lnf, P + md.wte, BT, C,
                      Vp);
  ops.layernorm_backward(ctx, dA + md.dx2, G + md.lnfw, G + md.lnfb, dA + md.dlnf, A + md.x2, P + md.lnfw,
                         A + md.lnf_mean, A + md.lnf_rstd, BT, C);
  ops.residual_backward(ctx, dA + md.dx1, dA + md.dfcproj, dA + md.dx2, BT * C);
  ops.matmul_backward(ctx, dA + md.dfch_gelu, G + md.fcprojw, G + md.fcprojb, dA + md.dfcproj,
                      A + md.fch_gelu, P + md.fcprojw, BT, 4 * C, C);
  ops.gelu_backward(ctx, dA + md.dfch, A + md.fch, dA + md.dfch_gelu, BT * 4 * C);
  ops.matmul_backward(ctx, dA + md.dln2, G + md.fcw, G + md.fcb, dA + md.dfch, A + md.ln2, P + md.fcw, BT, C,
                      4 * C);
  ops.layernorm_backward(ctx, dA + md.dx1, G + md.ln2w, G + md.ln2b, dA + md.dln2, A + md.x1, P + md.ln2w,
                         A + md.ln2_mean, A + md.ln2_rstd, BT, C);
  ops.residual_backward(ctx, dA + md.dx0, dA + md.dproj, dA + md.dx1, BT * C);
  ops.matmul_backward(ctx, dA + md.datty, G + md.projw, G + md.projb, dA + md.dproj, A + md.atty,
                      P + md.projw, BT, C, C);
  ops.attention_backward(ctx, dA + md.dqkv, dA + md.datty, A + md.qkv, A + md.atty, A + md.lse, B, T, C, NH);
  ops.matmul_backward(ctx, dA + md.dln1, G + md.qkvw, G + md.qkvb, dA + md.dqkv, A + md.ln1, P + md.qkvw, BT,
                      C, 3 * C);
  ops.layernorm_backward(ctx, dA + md.dx0, G + md.ln1w, G + md.ln1b, dA + md.dln1, A + md.x0, P + md.ln1w,
                         A + md.ln1_mean, A + md.ln1_rstd, BT, C);
  ops.encoder_backward(ctx, G + md.wte, G + md.wpe, dA + md.dx0, b.tokens, B, T, C);

  ops.sum_squares(ctx, b.norm, G, n);
  // eps = 1 keeps the first step smooth in g (with a tiny eps it is lr * sign(g), and a gradient
  // that cancels to ~0 could flip sign between backends).
  ops.adamw_update(ctx, P, G, b.m, b.v, n, 1e-3f, 0.9f, 0.95f, 1.0f, 0.1f, 1.0f, 1);
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
  cublasLtHandle_t handle_ = nullptr;
  std::unique_ptr<DeviceBuffer<uint8_t>> workspace_;
};

TEST_F(CudaOpsModel, OneLayerTrainingStepMatchesCpuTable) {
  const Model md;
  const size_t n = md.params.total();
  // Weights ~ N(0, 0.02)-like scale as in GPT-2 (uniform of that spread), LayerNorm weights near 1.
  std::vector<float> params = testing::RandomFloats(n, 1, -0.035f, 0.035f);
  for (size_t off : {md.ln1w, md.ln2w, md.lnfw}) {
    const std::vector<float> w = testing::RandomFloats(C, static_cast<uint32_t>(off), 0.8f, 1.2f);
    std::copy(w.begin(), w.end(), params.begin() + off);
  }
  // wte and wpe larger, so the residual stream is O(1) and the logits are not all equal.
  for (size_t i = 0; i < size_t{Vp} * C + size_t{T} * C; ++i) params[i] *= 20.0f;
  const std::vector<int32_t> tokens = testing::RandomInts(BT, 2, V), targets = testing::RandomInts(BT, 3, V);

  // CPU step.
  std::vector<float> P = params, G(n), A(md.acts.total()), dA(md.dacts.total()), m(n, 0.0f), v(n, 0.0f);
  float norm = testing::kPoison;
  Step(CpuOps(), cpu_ctx_, md,
       {P.data(), G.data(), A.data(), dA.data(), m.data(), v.data(), &norm, tokens.data(), targets.data()});

  // CUDA step; activations poisoned so that anything left unwritten shows up.
  DeviceBuffer<float> d_P(params), d_G(std::vector<float>(n, testing::kPoison)),
      d_A(std::vector<float>(md.acts.total(), testing::kPoison)),
      d_dA(std::vector<float>(md.dacts.total(), testing::kPoison)), d_m(std::vector<float>(n, 0.0f)),
      d_v(std::vector<float>(n, 0.0f)), d_norm(std::vector<float>{testing::kPoison});
  DeviceBuffer<int32_t> d_tokens(tokens), d_targets(targets);
  Step(CudaOps(), ctx_, md,
       {d_P.get(), d_G.get(), d_A.get(), d_dA.get(), d_m.get(), d_v.get(), d_norm.get(), d_tokens.get(),
        d_targets.get()});
  Sync();

  // This test checks the wiring (every entry is the right op, pointers are device pointers, the
  // ops compose); each op's precision is checked against its CPU twin in its own test, to ~1e-5.
  // Through ~25 ops the differences stay below 1e-4 of each tensor's largest value, while a wrong
  // op, argument or missing accumulation is off by a large fraction of it.
  const std::vector<float> got_A = d_A.Download();
  const std::vector<float> got_losses = Slice(got_A, md.losses, BT), losses = Slice(A, md.losses, BT);
  ASSERT_GT(testing::Norm(losses), 0.0);
  ExpectClose("losses", got_losses, losses, 1e-4, 1e-4);

  const std::vector<float> got_G = d_G.Download(), got_P = d_P.Download();
  for (const Arena::Tensor& t : md.params.tensors()) {
    const double scale = MaxAbs(G, t.offset, t.size);
    ASSERT_GT(scale, 0.0) << t.name << " has no gradient on the CPU";
    ExpectClose("grad " + t.name, Slice(got_G, t.offset, t.size), Slice(G, t.offset, t.size), 1e-4 * scale,
                1e-3);
    // AdamW with eps = 1 moves each parameter by lr * g / (|g| + 1) + lr * wd * p, so a gradient
    // error of 1e-4 relative moves it by far less than 1e-7.
    ExpectClose("param " + t.name, Slice(got_P, t.offset, t.size), Slice(P, t.offset, t.size), 1e-7, 1e-5);
  }
  // sum_squares writes its result to device memory on the CUDA table.
  const float got_norm = d_norm.Download()[0];
  ASSERT_GT(norm, 0.0f);
  EXPECT_NEAR(got_norm, norm, 1e-3 * norm);
}

}  // namespace
}  // namespace fjord
