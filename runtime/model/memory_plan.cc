#include "runtime/model/memory_plan.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <utility>
#include <vector>

#include "common/saturating.h"
#include "common/text.h"
#include "runtime/device/device.h"
#include "runtime/model/zero_units.h"

namespace fjord {
namespace {

using sat::Add;  // saturating size arithmetic (common/saturating.h)
using sat::Mul;
using sat::RoundUp;

// NCCL's own device buffers for a ring over several ranks: NCCL_BUFFSIZE (4 MiB) for each of up to
// 32 channels, send and receive, plus its work FIFOs; an allowance, not a measurement.
constexpr size_t kNcclAllowance = size_t{512} << 20;
// A rank's process outside its arena, on the host: peak RSS of `fjord train` on a 1-layer model
// (arena under 2 MiB) was 22 MB alone and 65 MB a rank under mpirun -np 2 (Open MPI 4.1.4's
// buffers and shared-memory segments), Debian 12, 2026-12-07; allowances with room for mpirun and
// its daemon, which a cgroup confining the job charges too. A CUDA build loads the CUDA runtime,
// cuBLAS(Lt) and NCCL even to train on the CPU: 227 MB for `fjord plan`, 232 MB for that train
// alone and 237 MB a rank under mpirun -np 2 (CUDA 13, the same machine, 2026-12-08).
#ifdef FJORD_HAVE_CUDA
constexpr size_t kProcessAllowance = size_t{256} << 20;
constexpr size_t kMpiProcessAllowance = size_t{288} << 20;
#else
constexpr size_t kProcessAllowance = size_t{32} << 20;
constexpr size_t kMpiProcessAllowance = size_t{96} << 20;
#endif

}  // namespace

StatusOr<PlanDevice> PlanDeviceNamed(const std::string& name, int ranks_on_host) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (n == "h100") return PlanDevice{"H100", size_t{81559} << 20, true};
  if (n == "h200") return PlanDevice{"H200", size_t{143771} << 20, true};
  if (n == "cpu") {
    const HostMemory host = AvailableHostMemory();
    const int k = std::max(ranks_on_host, 1);
    PlanDevice cpu{"cpu (" + host.bound + " of this host" +
                       (k > 1 ? ", shared by " + std::to_string(k) + " ranks" : std::string()) + ")",
                   host.bytes / static_cast<size_t>(k),
                   false,
                   host.bound,
                   k,
                   host.bytes,
                   true};
    return cpu;
  }
  return InvalidArgument("--device " + name + ": unknown device; choose h100 (80 GB), h200 (141 GB) or cpu " +
                         "(this host's available memory)");
}

size_t MemoryPlan::total() const {
  return Add(Add(Add(parameters, gradients), Add(optimizer, activations)),
             Add(Add(Add(communication, workspace), process), checkpoint));
}

size_t MemoryPlan::host_need() const {
  if (!shared_host()) return total();
  const size_t t = total();
  if (t == SIZE_MAX) return SIZE_MAX;
  return Add(Mul(static_cast<size_t>(device.ranks_on_host), t - checkpoint), checkpoint);
}

MemoryPlan PlanMemory(const MemoryPlanInputs& in, const PlanDevice& device) {
  MemoryPlan plan;
  plan.in = in;
  plan.device = device;
  const int ranks = std::max(in.ranks, 1);
  // As the trainer lays out its buffers: ZeRO-1 pads them to 16 x ranks floats so each rank's
  // optimizer shard is buffer / ranks long.
  const bool zero = in.zero_stage == 1 && ranks > 1;
  const size_t multiple = zero ? Mul(16, ranks) : 16;
  plan.params = ParamCount(in.config);
  // ZeRO-2 (runtime/train/unit_reducer.h): no full gradient buffer in the model; the gradients are
  // this rank's shard of the unit map plus the embeddings' window and two layer windows. ZeRO-3
  // (runtime/train/param_gatherer.h) the same for the parameters: no parameter buffer in the model;
  // the fp32 master shard, in bf16 the bf16 working shard, and the gather windows (embeddings and
  // two layer windows) in the working precision.
  GptConfig config = in.config;
  config.grad_shard_ranks = in.zero_stage >= 2 ? ranks : 0;
  config.param_shard_ranks = in.zero_stage == 3 ? ranks : 0;
  const Gpt::ArenaTerms t = Gpt::ArenaTermsFor(config, in.micro_batch, in.seq_len, multiple);
  size_t optimizer_count = zero ? RoundUp(plan.params, multiple) / ranks : plan.params;
  size_t unit_gradients = 0, unit_parameters = 0;
  if (in.zero_stage >= 2) {
    const ZeroUnits::Sizes z = ZeroUnits::SizesFor(config, ranks);
    optimizer_count = z.shard;
    const auto r = [](size_t floats) { return RoundUp(Mul(floats, sizeof(float)), Arena::kAlign); };
    unit_gradients =
        Add(Add(r(z.shard), r(z.embeddings_window)), Mul(2, r(z.layer_window)));  // UnitReducer::ArenaBytes
    if (in.zero_stage == 3) {                                                     // ParamGatherer::ArenaBytes
      const bool half = config.precision == Precision::kBf16;
      const size_t element = half ? sizeof(bf16) : sizeof(float);
      const auto w = [element](size_t n) { return RoundUp(Mul(n, element), Arena::kAlign); };
      unit_parameters =
          Add(Add(r(z.shard), half ? w(z.shard) : 0), Add(w(z.embeddings_window), Mul(2, w(z.layer_window))));
    }
  }
  plan.parameters = Add(t.parameters, unit_parameters);
  plan.gradients = Add(t.gradients, unit_gradients);
  plan.optimizer = Mul(2, RoundUp(Mul(optimizer_count, sizeof(float)), Arena::kAlign));  // AdamW::ArenaBytes
  plan.activations = t.activations;
  plan.workspace = t.workspace;
  plan.arena_bytes =
      Add(Add(Add(plan.parameters, plan.gradients), Add(t.activations, t.workspace)), plan.optimizer);
  if (device.counts_process) {
    plan.process = ranks > 1 ? kMpiProcessAllowance : kProcessAllowance;
    // The trainer's Checkpoint: rank 0 gathers m and v whole (buffer floats each, in std::vectors).
    if (ranks > 1 && in.zero_stage == 1) plan.checkpoint = Mul(8, RoundUp(plan.params, multiple));
    if (in.zero_stage >= 2) {  // the unit map is used on one rank too
      const ZeroUnits::Sizes z = ZeroUnits::SizesFor(config, ranks);
      const size_t buffer = std::max(RoundUp(plan.params, 16), z.buffer);
      plan.checkpoint = Add(Mul(8, buffer), Mul(4, Mul(z.shard, ranks)));
      // Stage 3: the full weights too (the model holds none), gathered the same way.
      if (in.zero_stage == 3) plan.checkpoint = Add(plan.checkpoint, Mul(4, buffer));
    }
  }
  if (device.cuda) {
    plan.workspace = Add(plan.workspace, CudaWorkspaceBytes(in.micro_batch, in.seq_len));
    if (in.nccl && ranks > 1) plan.communication = kNcclAllowance;
  }
  // On the CPU (and CUDA with MPI, which stages through pinned host memory) the gradients are
  // reduced in place in their own buffer: no device memory for communication.
  return plan;
}

std::string MemoryPlan::Table() const {
  const GptConfig& c = in.config;
  std::string out;
  char line[512];
  std::snprintf(
      line, sizeof(line),
      "memory plan per rank: %s, %zu parameters, %d rank(s), ZeRO stage %d, micro-batch %d x %d tokens, "
      "%s, recompute %s, on %s\n",
      c.llama() ? "Llama" : "GPT-2", params, in.ranks, in.zero_stage, in.micro_batch, in.seq_len,
      PrecisionName(c.precision), c.recompute ? "BLOCK" : "NONE", device.name.c_str());
  out += line;
  const std::pair<const char*, size_t> rows[] = {
      {"parameters", parameters},   {"gradients", gradients},         {"optimizer state", optimizer},
      {"activations", activations}, {"communication", communication}, {"workspace", workspace},
      {"process", process},         {"checkpoint", checkpoint}};
  for (const auto& [name, bytes] : rows) {
    std::snprintf(line, sizeof(line), "  %-16s %22s  %s\n", name,
                  bytes == SIZE_MAX ? "overflow" : std::to_string(bytes).c_str(), GiBText(bytes).c_str());
    out += line;
  }
  std::snprintf(line, sizeof(line), "  %-16s %22s  %s\n", "total",
                total() == SIZE_MAX ? "overflow" : std::to_string(total()).c_str(), GiBText(total()).c_str());
  out += line;
  std::snprintf(line, sizeof(line), "  %-16s %22zu  %s\n", "device memory", device.bytes,
                GiBText(device.bytes).c_str());
  out += line;
  const size_t need = host_need(), have = shared_host() ? device.host_bytes : device.bytes;
  if (shared_host()) {
    std::snprintf(line, sizeof(line),
                  "  %-16s %22s  %s (%d ranks x (total - checkpoint) + checkpoint once)\n", "host need",
                  need == SIZE_MAX ? "overflow" : std::to_string(need).c_str(), GiBText(need).c_str(),
                  device.ranks_on_host);
    out += line;
    std::snprintf(line, sizeof(line), "  %-16s %22zu  %s\n", "host memory", have, GiBText(have).c_str());
    out += line;
  }
  char pct[32] = "-";
  if (need != SIZE_MAX && have > 0) {
    std::snprintf(pct, sizeof(pct), "%.1f%%", 100.0 * static_cast<double>(need) / have);
  }
  out += std::string("verdict: ") + (fits() ? "fits" : "does not fit") + " (" + pct + " of " + device.name +
         ")\n";
  return out;
}

Status MemoryPlan::Verdict() const {
  if (fits()) return OkStatus();
  const GptConfig& c = in.config;
  struct Term {
    const char* name;
    size_t bytes;
    std::string why;
  };
  const std::string batch =
      "train.micro_batch = " + std::to_string(in.micro_batch) + ", seq_len = " + std::to_string(in.seq_len);
  const std::string model = "model.n_layer = " + std::to_string(c.n_layer) +
                            ", model.n_embd = " + std::to_string(c.n_embd) +
                            ", model.vocab_size = " + std::to_string(c.vocab_size);
  std::vector<Term> terms = {
      {"parameters", parameters, model},
      {"gradients", gradients, model},
      {"optimizer state", optimizer, model + ", parallel.zero_stage = " + std::to_string(in.zero_stage)},
      {"activations", activations,
       batch + ", train.recompute = " + std::string(c.recompute ? "BLOCK" : "NONE") + ", " + model},
      {"communication", communication, "parallel.comm_backend"},
      {"workspace", workspace, batch},
      {"process", process, "the rank's code, libraries and MPI buffers"},
      {"checkpoint", checkpoint,
       "rank 0 gathers the AdamW state whole to save it, parallel.zero_stage = " +
           std::to_string(in.zero_stage)}};
  const Term& largest = *std::max_element(terms.begin(), terms.end(),
                                          [](const Term& a, const Term& b) { return a.bytes < b.bytes; });
  // What would make it fit, each verified by planning it: a higher stage on these ranks, more
  // ranks (at stages 1 to 3: all shard the optimizer state, 2 and 3 the gradients, 3 the
  // parameters), recompute, a
  // smaller micro-batch.
  std::vector<std::string> fixes;
  if (in.ranks > 1) {
    for (int stage = in.zero_stage + 1; stage <= kMaxZeroStage; ++stage) {
      MemoryPlanInputs higher = in;
      higher.zero_stage = stage;
      if (PlanMemory(higher, device).fits()) {
        fixes.push_back("a higher parallel.zero_stage: " + std::to_string(stage));
        break;
      }
    }
  }
  for (int stage = std::max(in.zero_stage, 1); stage <= kMaxZeroStage; ++stage) {
    bool found = false;
    for (int ranks = std::max(in.ranks, 1) * 2; ranks <= 4096 && !found; ranks *= 2) {
      MemoryPlanInputs more = in;
      more.ranks = ranks;
      more.zero_stage = stage;
      if (PlanMemory(more, device).fits()) {
        fixes.push_back(std::to_string(ranks) + " ranks with parallel.zero_stage: " + std::to_string(stage) +
                        (device.ranks_on_host > 1
                             ? " on more hosts (" + std::to_string(device.ranks_on_host) +
                                   " a host at most: ranks on one host share its memory)"
                             : std::string()));
        found = true;
      }
    }
    if (found) break;
  }
  if (!c.recompute) {
    MemoryPlanInputs r = in;
    r.config.recompute = true;
    if (PlanMemory(r, device).fits()) fixes.push_back("train.recompute: BLOCK");
  }
  for (int b = in.micro_batch / 2; b >= 1; b /= 2) {
    MemoryPlanInputs smaller = in;
    smaller.micro_batch = b;
    if (PlanMemory(smaller, device).fits()) {
      fixes.push_back("train.micro_batch: " + std::to_string(b) +
                      " (raise train.grad_accum to keep the batch)");
      break;
    }
  }
  const std::string what_to_do =
      fixes.empty() ? "no setting available today makes it fit; use a "
                      "smaller model (model.n_layer, model.n_embd) or a device with more memory"
                    : [&] {
                        std::string s = "any of these would make it fit: ";
                        for (size_t i = 0; i < fixes.size(); ++i) s += (i ? "; " : "") + fixes[i];
                        return s;
                      }();
  return FailedPrecondition(
      "the model has " + (params == SIZE_MAX ? std::string("more than 2^64") : std::to_string(params)) +
      " parameters and needs " + BytesText(total()) + " per rank (the memory plan: " +
      std::to_string(in.ranks) + " rank(s), ZeRO stage " + std::to_string(in.zero_stage) + "), but " +
      (device.cuda ? "one " + device.name + " has " + BytesText(device.bytes)
       : shared_host()
           ? "its " + std::to_string(device.ranks_on_host) + " ranks on this host need " +
                 BytesText(host_need()) + " together (the checkpoint row once) and the host has " +
                 BytesText(device.host_bytes) + " available (" + device.bound + ", shared by its " +
                 std::to_string(device.ranks_on_host) + " ranks)"
           : "this host has " + BytesText(device.bytes) + " available (" + device.bound + ")") +
      "; the largest part is " + largest.name + ", " + BytesText(largest.bytes) + " (" + largest.why +
      "); nothing was allocated: " + what_to_do + " (`fjord plan` prints every term)");
}

}  // namespace fjord
