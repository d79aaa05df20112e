// Model FLOPs utilisation (MFU): the share of the hardware's peak arithmetic that a training run
// spends on the model's own FLOPs (docs/PERFORMANCE.md, "MFU"). The model side follows llm.c's
// convention so fjord's numbers compare with llm.c's; the peak is the job's
// train.peak_tflops, else a table of GPUs by name, else an estimate for the CPU.
#pragma once

#include <string>
#include <string_view>

#include "proto/job.pb.h"
#include "runtime/model/gpt.h"

namespace fjord {

// Training FLOPs (forward + backward) per token: 6 N + 6 L C T, with N every parameter of the
// model (the tied embedding with its padded vocabulary rows, positions, biases, LayerNorms),
// L = n_layer, C = n_embd and T = `seq_len`, the training sequence length. 6 N counts the weight
// matmuls (2 FLOPs per multiply-add, backward twice forward); 6 L C T the attention score and
// value matmuls under the causal mask (half of PaLM's 12 L H Q T, which counts the whole T x T).
// Llama: N is every parameter but an untied input embedding (a lookup, not a matmul), so 6 N
// counts q/k/v at their grouped-query widths, o_proj, the three SwiGLU matrices and lm_head;
// grouped-query attention does not change 6 L C T (every query head still scores every key).
double ModelFlopsPerToken(const GptConfig& config, int seq_len);

// Dense peak TFLOP/s of a GPU from its name as cudaGetDeviceProperties reports it (e.g.
// "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"): bf16 tensor cores for kBf16, plain FP32 for
// kFp32 (no TF32, no sparsity). 0 when the name is not in the table. Pure; callable from the CUDA
// backend once it knows its device.
double GpuPeakTflops(std::string_view device_name, Precision precision);

// A CPU's theoretical FP32 peak: threads x clock x FP32 FLOPs per cycle per core.
struct CpuPeak {
  double flops = 0.0;       // FLOP/s; 0 when the clock or the threads are unknown
  double ghz = 0.0;         // max clock, else the current clock of the first CPU
  int flops_per_cycle = 0;  // 64 with AVX-512 (2 FMA units assumed), 32 with AVX2 + FMA, else 8
  int threads = 0;
};

// The estimate from the text of /proc/cpuinfo and of cpufreq's cpuinfo_max_freq (kHz; "" when
// absent, then /proc/cpuinfo's "cpu MHz" is used). Pure, for tests.
CpuPeak EstimateCpuPeak(int threads, std::string_view cpuinfo, std::string_view max_freq_khz);

// EstimateCpuPeak with this machine's files (/proc/cpuinfo,
// /sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq).
CpuPeak ThisCpuPeak(int threads);

// Peak FLOP/s of one rank and where the number came from, for the header line.
struct RankPeak {
  double flops = 0.0;  // 0 = unknown (MFU is not reported)
  std::string source;  // e.g. "train.peak_tflops", "CPU estimate: 2 threads x 2.60 GHz x 64 FLOP/cycle"
};

// The peak of one CPU rank of `job` running `threads` threads: train.peak_tflops when > 0, else
// ThisCpuPeak(threads).
RankPeak CpuRankPeak(const proto::JobSpec& job, int threads);

// The peak of one GPU rank of `job` on the device described by `device_description` (it contains
// the name cudaGetDeviceProperties reports): train.peak_tflops when > 0, else the bf16 dense peak
// from GpuPeakTflops (MFU's usual denominator, as llm.c reports it, also for model.dtype FP32,
// whose MFU is therefore far below bf16's), else unknown.
RankPeak GpuRankPeak(const proto::JobSpec& job, std::string_view device_description);

// flops_per_token x tokens_per_s / peak_flops; NaN when peak_flops <= 0 (unknown).
double Mfu(double flops_per_token, double tokens_per_s, double peak_flops);

// "12.3%" (one decimal, "0.01%" style below 0.1%), or "-" for NaN.
std::string FormatMfu(double mfu);

}  // namespace fjord
