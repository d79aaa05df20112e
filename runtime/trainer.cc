#include "runtime/trainer.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "common/env.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/gpt.h"

namespace fjord {
namespace fs = std::filesystem;

float LearningRate(const proto::TrainSpec& train, int step) {
  const float lr = train.lr();
  const int warmup = train.warmup_steps();
  if (step < warmup) return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const int decay_steps = train.steps() - warmup;
  if (decay_steps <= 1) return lr;
  const double ratio = static_cast<double>(step - warmup) / static_cast<double>(decay_steps - 1);
  const double coeff = 0.5 * (1.0 + std::cos(M_PI * ratio));
  return static_cast<float>(train.min_lr() + coeff * (lr - train.min_lr()));
}

int ConfigureThreads(int threads) {
  int n = threads;
  if (std::optional<long> env = GetEnvInt("OMP_NUM_THREADS"); env && *env > 0) n = static_cast<int>(*env);
  if (n <= 0) {
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  omp_set_num_threads(n);
  return n;
}

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

std::string GiB(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

// Mean loss over `batches` batches of the validation stream, sequences taken in order.
float Evaluate(Gpt& model, const DataLoader& val, int B, int T, int batches, std::vector<int32_t>& inputs,
               std::vector<int32_t>& targets) {
  double sum = 0.0;
  for (int i = 0; i < batches; ++i) {
    val.Fill(static_cast<uint64_t>(i) * B, B, inputs.data(), targets.data());
    sum += model.Forward(inputs.data(), targets.data(), B, T, 0.0f);
  }
  return static_cast<float>(sum / batches);
}

}  // namespace

StatusOr<TrainResult> Train(const proto::JobSpec& job, const TrainOptions& options) {
  const proto::TrainSpec& train = job.train();
  const GptConfig config = GptConfig::FromSpec(job.model());
  const int B = train.micro_batch();
  const int T = TrainSeqLen(job);

  const size_t need = Gpt::MemoryBytes(config, B, T);
  const size_t have = PhysicalMemoryBytes();
  if (have > 0 && need > have * 9 / 10) {
    return FailedPrecondition("the model and batch need " + GiB(need) + " of memory (parameters, gradients, AdamW "
                              "state and activations for train.micro_batch = " + std::to_string(B) +
                              " x seq_len " + std::to_string(T) + ") but this machine has " + GiB(have) +
                              ": lower train.micro_batch or train.seq_len (and raise train.grad_accum), or "
                              "use a smaller model");
  }

  FJORD_ASSIGN_OR_RETURN(DataLoader train_data,
                         DataLoader::Open(job.data().train(), "data.train", config.vocab_size, T, train.seed(),
                                          /*shuffle=*/true));
  std::unique_ptr<DataLoader> val_data;
  if (!job.data().val().empty()) {
    FJORD_ASSIGN_OR_RETURN(DataLoader v, DataLoader::Open(job.data().val(), "data.val", config.vocab_size, T,
                                                          train.seed(), /*shuffle=*/false));
    val_data = std::make_unique<DataLoader>(std::move(v));
  }

  std::error_code ec;
  fs::create_directories(job.run_dir(), ec);
  if (ec) return Internal("cannot create run_dir " + job.run_dir() + ": " + ec.message());
  const std::string metrics_path = (fs::path(job.run_dir()) / "metrics.jsonl").string();
  std::ofstream metrics(metrics_path, std::ios::trunc);
  if (!metrics) return Internal("cannot write " + metrics_path);

  const int threads = ConfigureThreads(train.threads());
  Gpt model(config, B, T, CpuOps());
  model.InitGpt2(train.seed());
  if (!options.quiet) {
    std::printf("fjord train: %zu parameters, %d layers, n_embd %d, vocab %d (padded %d), batch %d x %d x "
                "accum %d, %d threads, %s of model memory, %llu train tokens\n",
                model.num_params(), config.n_layer, config.n_embd, config.vocab_size, config.padded_vocab, B, T,
                train.grad_accum(), threads, GiB(need).c_str(),
                static_cast<unsigned long long>(train_data.num_tokens()));
    std::fflush(stdout);
  }

  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  const int accum = train.grad_accum();
  const uint64_t global_batch = static_cast<uint64_t>(B) * accum;
  TrainResult result;
  const int steps = train.steps();
  for (int step = 0; step < steps; ++step) {
    const Clock::time_point t0 = Clock::now();
    const float lr = LearningRate(train, step);
    model.ZeroGrads();
    double loss_sum = 0.0;
    for (int micro = 0; micro < accum; ++micro) {
      train_data.Fill(static_cast<uint64_t>(step) * global_batch + static_cast<uint64_t>(micro) * B, B,
                      inputs.data(), targets.data());
      loss_sum += model.Forward(inputs.data(), targets.data(), B, T, 1.0f / static_cast<float>(accum));
      model.Backward();
    }
    const float loss = static_cast<float>(loss_sum / accum);
    const float grad_norm = std::sqrt(model.GradSumSquares());
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      return FailedPrecondition("step " + std::to_string(step + 1) + ": loss " + std::to_string(loss) +
                                ", gradient norm " + std::to_string(grad_norm) +
                                " is not finite; lower train.lr or raise train.warmup_steps");
    }
    const float clip = train.grad_clip() > 0.0f && grad_norm > train.grad_clip() ? train.grad_clip() / grad_norm : 1.0f;
    model.AdamW(lr, train.beta1(), train.beta2(), train.eps(), train.weight_decay(), clip, step + 1);
    const double seconds = Seconds(t0, Clock::now());
    const double tokens_per_s = static_cast<double>(global_batch) * T / seconds;
    result.losses.push_back(loss);

    const bool last = step + 1 == steps;
    float val_loss = NAN;
    if (val_data && train.eval_every() > 0 && ((step + 1) % train.eval_every() == 0 || last)) {
      val_loss = Evaluate(model, *val_data, B, T, train.eval_batches(), inputs, targets);
      result.val_losses.push_back(val_loss);
    }

    char line[512];
    int n = std::snprintf(line, sizeof(line),
                          "{\"step\": %d, \"loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6f, \"tokens_per_s\": %.1f, "
                          "\"ms\": %.3f",
                          step + 1, loss, lr, grad_norm, tokens_per_s, seconds * 1000.0);
    if (!std::isnan(val_loss)) n += std::snprintf(line + n, sizeof(line) - n, ", \"val_loss\": %.6f", val_loss);
    std::snprintf(line + n, sizeof(line) - n, "}\n");
    metrics << line;
    metrics.flush();

    if (!options.quiet && ((step + 1) % train.log_every() == 0 || last || !std::isnan(val_loss))) {
      std::printf("step %5d/%d | loss %.4f", step + 1, steps, loss);
      if (!std::isnan(val_loss)) std::printf(" | val %.4f", val_loss);
      std::printf(" | lr %.2e | norm %.3f | %7.1f ms | %8.0f tok/s\n", lr, grad_norm, seconds * 1000.0,
                  tokens_per_s);
      std::fflush(stdout);
    }
  }
  if (steps > 0) {
    FJORD_ASSIGN_OR_RETURN(result.checkpoint_dir,
                           SaveCheckpoint((fs::path(job.run_dir()) / "checkpoints").string(), steps, job, model));
    if (!options.quiet) std::printf("fjord train: checkpoint %s\n", result.checkpoint_dir.c_str());
  }
  return result;
}

}  // namespace fjord
