// The memory plan of a training job (issue 19, `fjord plan`): per rank, the bytes of parameters,
// gradients, optimizer state, activations, communication buffers and workspace, their total
// against a device's memory, and a verdict. The one implementation of "does it fit": `fjord plan`
// prints it, `fjord train` and `fjord launch` refuse a job whose plan does not fit before any rank
// allocates, and the trainer's arena is the plan's arena terms (Gpt::ArenaTermsFor and
// AdamW::ArenaBytes), so the plan is what is allocated, not a second estimate of it.
#pragma once

#include <cstddef>
#include <string>

#include "common/status.h"
#include "runtime/model/gpt.h"

namespace fjord {

// Where the plan is measured against: a name and its memory in bytes (one rank's share).
struct PlanDevice {
  std::string name;  // "H100", "H200", "cpu (...)"
  size_t bytes = 0;
  bool cuda = false;
  // The CPU: what bounds the host's memory (AvailableHostMemory: "MemAvailable" or a cgroup) and how
  // many ranks share it; bytes is the host's available memory / ranks_on_host.
  std::string bound;
  int ranks_on_host = 1;
  size_t host_bytes = 0;  // the CPU: the host's available memory before the division
  // Count the rank's process itself (MemoryPlan::process): its code, libraries, thread stacks and,
  // with several ranks, Open MPI's buffers and shared-memory segments. True for the CPU: host
  // memory is what the process lives in.
  bool counts_process = false;
};

// --device NAME: h100 (80 GB, the 81559 MiB nvidia-smi reports), h200 (141 GB, 143771 MiB) or cpu
// (this host's available memory, AvailableHostMemory in runtime/device/device.h, shared equally by
// the `ranks_on_host` ranks that run on it); case-insensitive. InvalidArgument naming the choices
// otherwise.
StatusOr<PlanDevice> PlanDeviceNamed(const std::string& name, int ranks_on_host = 1);

// The highest parallel.zero_stage the trainer builds.
constexpr int kMaxZeroStage = 3;

struct MemoryPlanInputs {
  GptConfig config;  // with precision and recompute resolved
  int micro_batch = 1;
  int seq_len = 1;
  int ranks = 1;
  int zero_stage = 0;  // 0 to 3
  bool nccl = false;   // CUDA with NCCL and ranks > 1: NCCL's buffers on the device
};

struct MemoryPlan {
  MemoryPlanInputs in;
  PlanDevice device;
  size_t params = 0;  // ParamCount
  // Per rank, in bytes.
  size_t parameters = 0, gradients = 0, optimizer = 0, activations = 0, communication = 0, workspace = 0;
  // The process outside the arena (PlanDevice::counts_process): an allowance, measured (docs/
  // PERFORMANCE.md "Memory plan"); 0 on a GPU.
  size_t process = 0;
  // What a checkpoint save adds on the rank that writes it (rank 0), outside the arena, in host
  // memory (counted where counts_process): the full AdamW m and v gathered from the shards (8 bytes
  // a parameter) at ZeRO stage 1 over several ranks and at stage 2 (on any number: its unit map is
  // always used), there with the gathered shards beside them while they are unpacked (4 more). The
  // plan is one per rank; this term is rank 0's.
  size_t checkpoint = 0;
  size_t arena_bytes = 0;  // what the trainer's arena takes: every term but communication and the
                           // CUDA workspace
  size_t total() const;
  // What the ranks of one host need together where they share its memory (the CPU with
  // ranks_on_host K > 1): K x (total - checkpoint) + the checkpoint once (rank 0's); else total().
  size_t host_need() const;
  bool shared_host() const { return device.ranks_on_host > 1 && device.counts_process; }
  bool fits() const { return shared_host() ? host_need() <= device.host_bytes : total() <= device.bytes; }
  // The table `fjord plan` prints: one line per term, the total, the device's memory, the verdict.
  std::string Table() const;
  // OkStatus when it fits; else FailedPrecondition naming the total, the device's memory, the
  // largest term with the setting that makes it large, and what would make the job fit (a higher
  // parallel.zero_stage, more ranks with a ZeRO stage, train.recompute: BLOCK, a smaller
  // train.micro_batch), each verified by planning it; it
  // keeps CheckMemory's words ("the model has P parameters and needs N bytes").
  Status Verdict() const;
};

// The plan of `in` on `device`. Saturating (SIZE_MAX terms) for models larger than 2^64 bytes.
MemoryPlan PlanMemory(const MemoryPlanInputs& in, const PlanDevice& device);

}  // namespace fjord
