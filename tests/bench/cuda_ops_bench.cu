// Times every CUDA op of kernels/ops.h at GPT-2 124M shapes (scripts/gpu-check.sh runs it on the
// H200): median of --reps launches after 3 warm-ups, timed with CUDA events on one stream, inputs
// random (never zeros: they hide bugs and can run faster). Reports the bytes each op must move at
// least (inputs read once, outputs written once, accumulated outputs read and written) as GB/s against a
// measured device-to-device copy, and GEMM / attention FLOPs as TFLOP/s; the fused matmul_gelu_forward is
// shown next to the matmul_forward + gelu_forward pair it replaces. The model ops run in both storage types
// (kernels/ops.h): fp32 first, then bf16 (names suffixed "bf16"; bytes counted at 2 per bf16 tensor
// element and 4 per fp32 one: statistics, parameter gradients, losses). The bf16 GEMM rows are the
// ones to hold against the bf16 cuBLAS ceiling from tests/bench/torch_gpu_step.py --ceilings. The row
// `attention_forward tc bf16` times the experimental tensor-core forward (kernels/cuda/
// attention_tc.cu, what model.attention: TENSOR_CORE selects) on inputs like those of `attention_forward
// bf16`, both counting the causal FLOPs, and `attention_backward tc bf16` its backward like
// `attention_backward bf16` (both counting 2.5x the forward's FLOPs); they are left out below
// sm_80. `adamw_update bf16` is the update that also writes the bf16 working copy (2 bytes more
// per parameter), the optimizer pass of a bf16 training step. One line per op (stdout is line
// buffered, so the rows before a fatal error survive it), then a JSON line; fill_zero (a memset)
// is timed once, in fp32, after the other ops, and the two tensor-core rows come last of all: those
// kernels have not yet passed on a GPU, and a fault in them would end the process.
//
// usage: cuda_ops_bench [--batch B] [--seq T] [--reps N]
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/cuda/attention_tc.cuh"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/ops.h"
#include "kernels/pointwise_math.h"

namespace {

template <typename T>
__global__ void FillRandom(T* x, size_t n, uint32_t seed, float scale, float offset) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    x[i] = fjord::FromFloat<T>(offset + scale * (static_cast<float>(h) / 4294967296.0f - 0.5f));
  }
}

__global__ void FillTokens(int32_t* x, size_t n, int V) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    x[i] = static_cast<int32_t>((i * 2654435761u) % static_cast<size_t>(V));
  }
}

// n random values of type T (float or bf16) in [offset - scale / 2, offset + scale / 2).
template <typename T = float>
T* Random(size_t n, uint32_t seed, float scale = 1.0f, float offset = 0.0f) {
  T* p = nullptr;
  FJORD_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  FillRandom<<<1024, 256>>>(p, n, seed, scale, offset);
  FJORD_CUDA_CHECK_LAUNCH();
  return p;
}

// The compute capability's major number of the current device.
int DeviceMajor() {
  int device = 0, major = 0;
  FJORD_CUDA_CHECK(cudaGetDevice(&device));
  FJORD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major;
}

// Prints and records one op: name, bytes it must move, FLOPs, and the work to time.
using Report =
    std::function<void(const std::string& name, double bytes, double flops, const std::function<void()>& fn)>;

// The fp32 buffers every storage type shares: LayerNorm statistics, lse, losses and parameter
// gradients. dw doubles as dwpe (T * C <= 4 * C * C for T <= 3072).
struct Fp32Buffers {
  float *dw, *dbias, *mean, *rstd, *lse, *dwte, *losses;
  int32_t* tokens;
};

// Times every model op of `ops` with floatX activations, parameters and activation gradients at
// GPT-2 124M shapes (fill_zero excepted), names suffixed with `suffix`.
template <typename floatX>
void ReportModelOps(const Report& report, const fjord::ModelOps<floatX>& ops, const fjord::OpContext& ctx,
                    const Fp32Buffers& fb, int B, int T, int C, int NH, int V, int Vp,
                    const std::string& suffix) {
  const size_t BT = static_cast<size_t>(B) * T, N = BT;
  // Buffers, random; LayerNorm weights near 1.
  floatX *x = Random<floatX>(BT * 4 * C, 1), *y = Random<floatX>(BT * 4 * C, 2),
         *z = Random<floatX>(BT * 4 * C, 3);
  floatX *dx = Random<floatX>(BT * 4 * C, 4), *w = Random<floatX>(size_t{4} * C * C, 5, 0.04f);
  floatX *bias = Random<floatX>(4 * C, 7, 0.1f), *lnw = Random<floatX>(C, 9, 0.2f, 1.0f);
  floatX *wte = Random<floatX>(static_cast<size_t>(Vp) * C, 13, 0.04f),
         *wpe = Random<floatX>(static_cast<size_t>(T) * C, 15);
  floatX* logits = Random<floatX>(BT * Vp, 16, 4.0f);
  FJORD_CUDA_CHECK(cudaDeviceSynchronize());
  const double f = sizeof(float), e = sizeof(floatX);
  const double hs = C / NH;
  float *dw = fb.dw, *dbias = fb.dbias, *mean = fb.mean, *rstd = fb.rstd, *lse = fb.lse, *dwte = fb.dwte;
  int32_t* tokens = fb.tokens;
  report("encoder_forward" + suffix, e * (2.0 * BT * C + double(T) * C) + 4.0 * BT, 0,
         [&] { ops.encoder_forward(ctx, x, tokens, wte, wpe, B, T, C); });
  // dout and tokens read; the dwte rows of the tokens (at most B T of them) and dwpe read and written.
  report("encoder_backward" + suffix, e * BT * C + f * (2.0 * BT * C + 2.0 * T * C) + 4.0 * BT, 0,
         [&] { ops.encoder_backward(ctx, dwte, dw, y, tokens, B, T, C); });
  report("layernorm_forward" + suffix, e * (2.0 * N * C + 2.0 * C) + f * 2.0 * N, 0,
         [&] { ops.layernorm_forward(ctx, y, mean, rstd, x, lnw, bias, N, C); });
  // The residual add into z and the LayerNorm of z in one op: a, b, weight and bias read; residual,
  // out, mean and rstd written (the pair of ops would also read z back).
  report("residual_layernorm_forward" + suffix, e * (4.0 * N * C + 2.0 * C) + f * 2.0 * N, 0,
         [&] { ops.residual_layernorm_forward(ctx, z, y, mean, rstd, x, dx, lnw, bias, N, C); });
  report("layernorm_backward" + suffix, e * (3.0 * N * C + N * C) + f * (2.0 * N + 4.0 * C), 0,
         [&] { ops.layernorm_backward(ctx, dx, dw, dbias, y, x, lnw, mean, rstd, N, C); });
  for (auto [name, in, out] :
       {std::tuple{"matmul_forward qkv", C, 3 * C}, std::tuple{"matmul_forward fc", C, 4 * C},
        std::tuple{"matmul_forward fcproj", 4 * C, C}}) {
    report(name + suffix, e * (N * in + double(in) * out + N * out), 2.0 * N * in * out,
           [&, in = in, out = out] { ops.matmul_forward(ctx, y, x, w, bias, N, in, out); });
  }
  report("matmul_forward classifier" + suffix, e * (N * C + double(Vp) * C + N * Vp), 2.0 * N * C * Vp,
         [&] { ops.matmul_forward(ctx, logits, x, wte, nullptr, N, C, Vp); });
  // The MLP's fc GEMM with its GELU: the fused op (cuBLASLt's GELU_AUX_BIAS epilogue where offered)
  // and the two ops it replaces, the same work: read inp and weight, write pre and out.
  const double fc_bytes = e * (N * C + 4.0 * C * C + 2.0 * N * 4 * C), fc_flops = 2.0 * N * C * 4 * C;
  report("matmul_gelu_forward fc" + suffix, fc_bytes, fc_flops,
         [&] { ops.matmul_gelu_forward(ctx, z, y, x, w, bias, N, C, 4 * C); });
  report("matmul_forward+gelu fc" + suffix, fc_bytes, fc_flops, [&] {
    ops.matmul_forward(ctx, y, x, w, bias, N, C, 4 * C);
    ops.gelu_forward(ctx, z, y, N * 4 * C);
  });
  for (auto [name, in, out] :
       {std::tuple{"matmul_backward qkv", C, 3 * C}, std::tuple{"matmul_backward fc", C, 4 * C},
        std::tuple{"matmul_backward fcproj", 4 * C, C}}) {
    // dout, inp and weight read; dinp, dweight and dbias accumulate (read and written).
    report(name + suffix,
           e * (N * out + 3.0 * N * in + double(in) * out) + f * (2.0 * double(in) * out + 2.0 * out),
           4.0 * N * in * out,
           [&, in = in, out = out] { ops.matmul_backward(ctx, dx, dw, dbias, y, x, w, N, in, out); });
  }
  report("matmul_backward classifier" + suffix,
         e * (N * Vp + 3.0 * N * C + double(Vp) * C) + f * 2.0 * Vp * C, 4.0 * N * C * Vp,
         [&] { ops.matmul_backward(ctx, dx, dwte, nullptr, logits, x, wte, N, C, Vp); });
  // Causal attention: QK^T and PV over the T (T + 1) / 2 unmasked scores; backward about 2.5x
  // forward.
  const double attn_flops = 2.0 * 2.0 * B * NH * (double(T) * (T + 1) / 2.0) * hs;
  const double attn_forward_bytes = e * (3.0 * N * C + N * C) + f * N * NH;
  report("attention_forward" + suffix, attn_forward_bytes, attn_flops,
         [&] { ops.attention_forward(ctx, y, lse, x, B, T, C, NH, NH); });
  const double attn_backward_bytes = e * (3.0 * N * C + 2.0 * N * C + 3.0 * N * C) + f * N * NH;
  report("attention_backward" + suffix, attn_backward_bytes, 2.5 * attn_flops,
         [&] { ops.attention_backward(ctx, dx, z, x, y, lse, B, T, C, NH, NH); });
  report("gelu_forward" + suffix, e * 2.0 * N * 4 * C, 0, [&] { ops.gelu_forward(ctx, y, x, N * 4 * C); });
  report("gelu_backward" + suffix, e * 4.0 * N * 4 * C, 0,
         [&] { ops.gelu_backward(ctx, dx, x, y, N * 4 * C); });
  report("residual_forward" + suffix, e * 3.0 * N * C, 0, [&] { ops.residual_forward(ctx, z, x, y, N * C); });
  report("residual_backward" + suffix, e * 5.0 * N * C, 0,
         [&] { ops.residual_backward(ctx, dx, z, y, N * C); });
  report("fused_classifier" + suffix, e * 2.0 * N * Vp + f * N + 4.0 * N, 0,
         [&] { ops.fused_classifier(ctx, logits, fb.losses, tokens, N, V, Vp, 1.0f / N, 1); });
  for (floatX* buffer : {x, y, z, dx, w, bias, lnw, wte, wpe, logits}) FJORD_CUDA_CHECK(cudaFree(buffer));
}

// The experimental tensor-core attention (not in the op table), bf16, with the bytes and FLOPs of
// the SIMT rows `attention_forward bf16` and `attention_backward bf16`; nothing below sm_80. Run
// after every other op (header comment).
void ReportTensorCoreAttention(const Report& report, const fjord::OpContext& ctx, float* lse, int B, int T,
                               int C, int NH) {
  namespace tc = fjord::cuda::experimental;
  if (!tc::AttentionForwardTensorCoreSupported(C, NH) || DeviceMajor() < 8) return;
  const size_t BT = static_cast<size_t>(B) * T, N = BT;
  fjord::bf16 *qkv = Random<fjord::bf16>(3 * BT * C, 31), *out = Random<fjord::bf16>(BT * C, 32),
              *dout = Random<fjord::bf16>(BT * C, 33), *dqkv = Random<fjord::bf16>(3 * BT * C, 34);
  FJORD_CUDA_CHECK(cudaDeviceSynchronize());
  const double f = sizeof(float), e = sizeof(fjord::bf16), hs = C / NH;
  const double attn_flops = 2.0 * 2.0 * B * NH * (double(T) * (T + 1) / 2.0) * hs;
  report("attention_forward tc bf16", e * (3.0 * N * C + N * C) + f * N * NH, attn_flops,
         [&] { tc::attention_forward_tc(ctx, out, lse, qkv, B, T, C, NH, NH); });
  report("attention_backward tc bf16", e * (3.0 * N * C + 2.0 * N * C + 3.0 * N * C) + f * N * NH,
         2.5 * attn_flops,
         [&] { tc::attention_backward_tc(ctx, dqkv, dout, qkv, out, lse, B, T, C, NH, NH); });
  for (fjord::bf16* buffer : {qkv, out, dout, dqkv}) FJORD_CUDA_CHECK(cudaFree(buffer));
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each row out as it is timed (header comment)
  int B = 4, T = 1024, reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--batch"))
      B = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seq"))
      T = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps"))
      reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: %s [--batch B] [--seq T] [--reps N]\n", argv[0]);
      return 2;
    }
  }
  const int C = 768, NH = 12, V = 50257, Vp = 50304;
  const size_t BT = static_cast<size_t>(B) * T;
  using fjord::OpContext;
  const fjord::Ops& ops = fjord::CudaOps();
  OpContext ctx;
  cudaStream_t stream;
  FJORD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasLtHandle_t blas;
  if (cublasLtCreate(&blas) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuda_ops_bench: cublasLtCreate failed\n");
    return 1;
  }
  const size_t ws = (size_t{32} << 20) + 32 * BT;
  void* workspace = nullptr;
  FJORD_CUDA_CHECK(cudaMalloc(&workspace, ws));
  ctx.stream = stream, ctx.blas = blas, ctx.workspace = workspace, ctx.workspace_bytes = ws;

  // fp32 buffers, random; rstd positive. The floatX ones belong to ReportModelOps.
  Fp32Buffers fb;
  fb.dw = Random(size_t{4} * C * C, 6), fb.dbias = Random(4 * C, 8), fb.mean = Random(BT, 10);
  fb.rstd = Random(BT, 11, 0.5f, 1.0f), fb.lse = Random(BT * NH, 12, 1.0f, 3.0f);
  fb.dwte = Random(size_t{Vp} * C, 14), fb.losses = Random(BT, 17);
  float* out1 = Random(1, 18);
  const size_t P = 124475904;  // GPT-2 124M parameters (padded vocabulary)
  float *p = Random(P, 19, 0.04f), *g = Random(P, 20, 0.01f), *m = Random(P, 21, 0.001f),
        *v = Random(P, 22, 1e-6f, 1e-6f);
  fjord::bf16* pw = Random<fjord::bf16>(P, 23);  // the bf16 working copy the fused AdamW writes
  FJORD_CUDA_CHECK(cudaMalloc(&fb.tokens, BT * sizeof(int32_t)));
  FillTokens<<<256, 256>>>(fb.tokens, BT, V);
  FJORD_CUDA_CHECK_LAUNCH();
  FJORD_CUDA_CHECK(cudaDeviceSynchronize());

  cudaEvent_t start, stop;
  FJORD_CUDA_CHECK(cudaEventCreate(&start));
  FJORD_CUDA_CHECK(cudaEventCreate(&stop));
  auto time_ms = [&](const std::function<void()>& fn) {
    for (int i = 0; i < 3; ++i) fn();
    std::vector<float> ms;
    for (int i = 0; i < reps; ++i) {
      FJORD_CUDA_CHECK(cudaEventRecord(start, stream));
      fn();
      FJORD_CUDA_CHECK(cudaEventRecord(stop, stream));
      FJORD_CUDA_CHECK(cudaEventSynchronize(stop));
      float t = 0;
      FJORD_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return static_cast<double>(ms[ms.size() / 2]);
  };

  // The copy ceiling: 1 GiB device to device, bytes read + written.
  const size_t copy_bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  FJORD_CUDA_CHECK(cudaMalloc(&a, copy_bytes));
  FJORD_CUDA_CHECK(cudaMalloc(&b, copy_bytes));
  FJORD_CUDA_CHECK(cudaMemsetAsync(a, 1, copy_bytes, stream));
  const double copy_ms =
      time_ms([&] { FJORD_CUDA_CHECK(cudaMemcpyAsync(b, a, copy_bytes, cudaMemcpyDeviceToDevice, stream)); });
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e6);
  std::printf("cuda_ops_bench: B %d T %d, C %d, NH %d, Vp %d; copy ceiling %.0f GB/s (1 GiB, read + write)\n",
              B, T, C, NH, Vp, copy_gbs);
  std::printf("%-32s %10s %10s %10s %8s\n", "op", "ms", "GB/s", "TFLOP/s", "%copy");
  std::string json = "{\"batch\": " + std::to_string(B) + ", \"seq\": " + std::to_string(T) +
                     ", \"copy_gb_s\": " + std::to_string(copy_gbs) + ", \"ops\": {";
  const Report report = [&](const std::string& name, double bytes, double flops,
                            const std::function<void()>& fn) {
    const double ms = time_ms(fn);
    FJORD_CUDA_CHECK(cudaGetLastError());
    const double gbs = bytes / (ms * 1e6), tflops = flops / (ms * 1e9);
    std::printf("%-32s %10.4f %10.0f %10.2f %7.0f%%\n", name.c_str(), ms, gbs, tflops,
                100.0 * gbs / copy_gbs);
    json += std::string(json.back() == '{' ? "" : ", ") + "\"" + name + "\": {\"ms\": " + std::to_string(ms) +
            ", \"gb_s\": " + std::to_string(gbs) + ", \"tflop_s\": " + std::to_string(tflops) + "}";
  };
  ReportModelOps(report, ops.f32, ctx, fb, B, T, C, NH, V, Vp, "");
  ReportModelOps(report, ops.bf16x, ctx, fb, B, T, C, NH, V, Vp, " bf16");
  const double f = sizeof(float);
  report("adamw_update 124M", f * 7.0 * P, 0, [&] {
    ops.adamw_update(ctx, p, g, m, v, P, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1, nullptr, 0, 0);
  });
  report("adamw_update bf16 124M", (f * 7.0 + 2.0) * P, 0,
         [&] { ops.adamw_update(ctx, p, g, m, v, P, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1, pw, 7, 0); });
  report("sum_squares 124M", f * P, 0, [&] { ops.sum_squares(ctx, out1, g, P); });
  report("fill_zero 124M", f * P, 0, [&] { ops.f32.fill_zero(ctx, g, P); });
  ReportTensorCoreAttention(report, ctx, fb.lse, B, T, C, NH);
  std::printf("cuda_ops_bench_json %s}}\n", json.c_str());
  FJORD_CUDA_CHECK(cudaDeviceSynchronize());
  return 0;
}
