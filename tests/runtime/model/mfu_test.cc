// MFU's two halves against independent counts: the model FLOPs per token against the multiply-adds
// of every matmul of the model's shapes, counted here from the architecture (and GPT-2 124M
// against llm.c's published parameter count); the peaks against the data-sheet table and the
// closed form threads x GHz x FLOPs/cycle on synthetic /proc/cpuinfo texts.
#include "runtime/model/mfu.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace fjord {
namespace {

GptConfig Config(int L, int H, int C, int T, int V) {
  proto::ModelSpec spec;
  spec.set_n_layer(L);
  spec.set_n_head(H);
  spec.set_n_embd(C);
  spec.set_seq_len(T);
  spec.set_vocab_size(V);
  return GptConfig::FromSpec(spec);
}

// Training FLOPs per token counted from the architecture: 2 FLOPs per multiply-add, backward
// twice forward (one product for the input gradient, one for the weight gradient).
struct Counted {
  double matmul_macs = 0;     // weight matmuls, per token
  double attention_macs = 0;  // Q.K and P.V under the causal mask, per token (mean over positions)
  double other_params = 0;    // parameters outside matmuls: biases, LayerNorms, positions
};

Counted Count(int L, int C, int T_max, int Vp, int T) {
  Counted c;
  const double d = C;
  const double per_layer[][2] = {{d, 3.0 * d}, {d, d}, {d, 4.0 * d}, {4.0 * d, d}};  // in x out
  for (int l = 0; l < L; ++l) {
    for (const auto& m : per_layer) c.matmul_macs += m[0] * m[1];
    // Position t attends to t + 1 keys: Q.K and P.V each take (t + 1) x head_size per head.
    double sum = 0;
    for (int t = 0; t < T; ++t) sum += 2.0 * (t + 1) * C;
    c.attention_macs += sum / T;
    c.other_params += 3.0 * C + C + 4.0 * C + C  // biases of qkv, attn proj, fc, fc proj
                      + 4.0 * C;                 // two LayerNorms
  }
  c.matmul_macs += static_cast<double>(C) * Vp;                // classifier against the tied embedding
  c.other_params += 2.0 * C + static_cast<double>(T_max) * C;  // ln_f, positions
  return c;
}

TEST(MfuTest, FlopsPerTokenMatchesACountOfTheMatmuls) {
  struct Case {
    int L, H, C, T_max, V, T;
  } cases[] = {{1, 2, 32, 32, 256, 32}, {2, 4, 64, 128, 1000, 96}, {3, 3, 48, 64, 50257, 64}};
  for (const Case& k : cases) {
    const GptConfig config = Config(k.L, k.H, k.C, k.T_max, k.V);
    const Counted c = Count(k.L, k.C, k.T_max, config.padded_vocab, k.T);
    // llm.c's convention: 6 x every parameter (the matmul weights plus the few others) plus
    // 6 L C T for attention, where the exact causal mean is 6 L C (T + 1).
    const double expected = 6.0 * (c.matmul_macs + c.other_params) + 6.0 * c.attention_macs - 6.0 * k.L * k.C;
    const double got = ModelFlopsPerToken(config, k.T);
    EXPECT_GT(got, 0.0);
    EXPECT_EQ(got, expected) << k.L << " " << k.C << " " << k.T;
  }
}

TEST(MfuTest, Gpt2SmallMatchesLlmc) {
  // llm.c prints num_parameters: 124475904 for GPT-2 124M (vocab padded to 50304).
  const GptConfig config = Config(12, 12, 768, 1024, 50257);
  EXPECT_EQ(config.padded_vocab, 50304);
  EXPECT_EQ(ModelFlopsPerToken(config, 1024), 6.0 * 124475904 + 6.0 * 12 * 768 * 1024);
}

// Llama: the matmuls of grouped-query attention (k and v at n_kv_head heads), the three SwiGLU
// matrices and an untied lm_head; the input embedding is a lookup and does not count, RMSNorm
// weights and (attention_bias) q/k/v biases count as parameters. Attention's score and value
// matmuls are GPT-2's: every query head scores every visible key.
TEST(MfuTest, LlamaFlopsPerTokenMatchesACountOfTheMatmuls) {
  struct Case {
    int L, H, KV, C, I, T_max, V, T;
    bool bias, tied;
  } cases[] = {{2, 4, 2, 64, 176, 64, 256, 48, false, false},
               {3, 8, 2, 128, 352, 128, 1000, 96, true, false},
               {1, 4, 4, 64, 160, 32, 300, 32, false, true}};
  for (const Case& k : cases) {
    proto::ModelSpec spec;
    spec.set_arch(proto::ModelSpec::LLAMA);
    spec.set_n_layer(k.L);
    spec.set_n_head(k.H);
    spec.set_n_kv_head(k.KV);
    spec.set_n_embd(k.C);
    spec.set_intermediate_size(k.I);
    spec.set_seq_len(k.T_max);
    spec.set_vocab_size(k.V);
    spec.set_attention_bias(k.bias);
    spec.set_tie_embeddings(k.tied);
    const GptConfig config = GptConfig::FromSpec(spec);
    const double d = k.C, kv = static_cast<double>(k.KV) * (k.C / k.H), I = k.I;
    double macs = 0, attention = 0, other = 0;
    for (int l = 0; l < k.L; ++l) {
      macs += d * d + 2 * d * kv + d * d;  // q, k, v, o
      macs += 2 * d * I + I * d;           // gate, up, down
      double sum = 0;
      for (int t = 0; t < k.T; ++t) sum += 2.0 * (t + 1) * k.C;
      attention += sum / k.T;
      other += 2 * d + (k.bias ? d + 2 * kv : 0.0);  // two RMSNorms, q/k/v biases
    }
    macs += d * config.padded_vocab;  // lm_head (or the tied embedding as the classifier)
    other += d;                       // model.norm
    const double expected = 6.0 * (macs + other) + 6.0 * attention - 6.0 * k.L * k.C;
    EXPECT_EQ(ModelFlopsPerToken(config, k.T), expected) << k.L << " " << k.C << " " << k.T;
  }
}

TEST(MfuTest, GpuRankPeakFromTheDeviceOrTheJob) {
  proto::JobSpec job;
  const RankPeak h100 = GpuRankPeak(job, "cuda:0 NVIDIA H100 80GB HBM3 (0000:19:00.0, sm_90, 79.1 GiB)");
  EXPECT_EQ(h100.flops, 989.0e12);
  EXPECT_THAT(h100.source, ::testing::HasSubstr("bf16 dense peak of cuda:0 NVIDIA H100"));
  const RankPeak unknown = GpuRankPeak(job, "cuda:0 Some Future GPU");
  EXPECT_EQ(unknown.flops, 0.0);
  EXPECT_THAT(unknown.source, ::testing::HasSubstr("set train.peak_tflops"));
  job.mutable_train()->set_peak_tflops(123.5);
  EXPECT_EQ(GpuRankPeak(job, "cuda:0 NVIDIA H100 80GB HBM3").flops, 123.5e12);
  EXPECT_EQ(GpuRankPeak(job, "cuda:0 NVIDIA H100 80GB HBM3").source, "train.peak_tflops");
}

TEST(MfuTest, GpuPeaksByDeviceName) {
  EXPECT_EQ(GpuPeakTflops("NVIDIA H100 80GB HBM3", Precision::kBf16), 989.0);
  EXPECT_EQ(GpuPeakTflops("NVIDIA H100 80GB HBM3", Precision::kFp32), 67.0);
  EXPECT_EQ(GpuPeakTflops("NVIDIA H200", Precision::kBf16), 989.0);
  EXPECT_EQ(GpuPeakTflops("NVIDIA H100 PCIe", Precision::kBf16), 756.0);
  EXPECT_EQ(GpuPeakTflops("NVIDIA A100-SXM4-80GB", Precision::kBf16), 312.0);
  EXPECT_EQ(GpuPeakTflops("nvidia a100-pcie-40gb", Precision::kFp32), 19.5);
  EXPECT_EQ(GpuPeakTflops("Tesla T4", Precision::kBf16), 0.0);
  EXPECT_EQ(GpuPeakTflops("", Precision::kBf16), 0.0);
}

constexpr char kAvx512[] =
    "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.138\n"
    "flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw\n\nprocessor\t: 1\ncpu MHz\t\t: 1000.0\n";

TEST(MfuTest, CpuPeakIsThreadsTimesClockTimesVectorWidth) {
  CpuPeak p = EstimateCpuPeak(2, kAvx512, "");
  EXPECT_EQ(p.flops_per_cycle, 64);
  EXPECT_DOUBLE_EQ(p.ghz, 2.596138);  // the first CPU's clock
  EXPECT_DOUBLE_EQ(p.flops, 2 * 2.596138e9 * 64);
  p = EstimateCpuPeak(4, kAvx512, "3700000\n");  // cpuinfo_max_freq (kHz) wins
  EXPECT_DOUBLE_EQ(p.flops, 4 * 3.7e9 * 64);
  p = EstimateCpuPeak(8, "cpu MHz\t: 3000\nflags\t: sse avx fma avx2\n", "");
  EXPECT_EQ(p.flops_per_cycle, 32);
  EXPECT_DOUBLE_EQ(p.flops, 8 * 3e9 * 32);
  p = EstimateCpuPeak(1, "cpu MHz\t: 2000\nflags\t: sse avx avx2\n", "");  // AVX2 without FMA
  EXPECT_EQ(p.flops_per_cycle, 8);
  p = EstimateCpuPeak(1, "cpu MHz dynamic\t: 2000\nflags\t: avx512fx\n", "");  // neither field matches
  EXPECT_EQ(p.flops_per_cycle, 8);
  EXPECT_EQ(p.flops, 0.0);  // no clock: unknown
  EXPECT_EQ(EstimateCpuPeak(0, kAvx512, "").flops, 0.0);
}

TEST(MfuTest, PeakFromTheJobSpecWins) {
  proto::JobSpec job;
  job.mutable_train()->set_peak_tflops(2.5);
  const RankPeak peak = CpuRankPeak(job, 1);
  EXPECT_EQ(peak.flops, 2.5e12);
  EXPECT_EQ(peak.source, "train.peak_tflops");
}

TEST(MfuTest, MfuAndItsText) {
  EXPECT_DOUBLE_EQ(Mfu(6e9, 1000.0, 2e13), 0.3);
  EXPECT_TRUE(std::isnan(Mfu(6e9, 1000.0, 0.0)));
  EXPECT_EQ(FormatMfu(0.3), "30%");
  EXPECT_EQ(FormatMfu(0.1234), "12.3%");
  EXPECT_EQ(FormatMfu(0.0001234), "0.0123%");
  EXPECT_EQ(FormatMfu(NAN), "-");
}

}  // namespace
}  // namespace fjord
