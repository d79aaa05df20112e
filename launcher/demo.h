// `fjord demo`: the whole product on an embedded default, with nothing to download or write by
// hand: a generated corpus, token shards, a small GPT trained on it, and a sample.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/status.h"
#include "proto/job.pb.h"
#include "runtime/tenancy/tenancy.h"

namespace fjord {

// The embedded job spec of the demo (text format); data paths and run_dir are filled in by
// RunDemoJob.
extern const char kDemoJob[];

// Deterministic English-like text of about `bytes` bytes from a small grammar: enough structure
// for a small model to learn visibly within a minute on a CPU.
std::string GenerateDemoCorpus(size_t bytes, uint64_t seed);

struct DemoOptions {
  std::string dir = "runs/demo";       // corpus, shards, metrics and checkpoints go here
  std::vector<std::string> overrides;  // --set PATH=VALUE applied to kDemoJob
};

// kDemoJob with the data and run_dir of options.dir, then options.overrides, validated.
StatusOr<proto::JobSpec> DemoJobSpec(const DemoOptions& options);

// Rank 0 writes the corpus and the shards while the others wait; all ranks train `job`
// (from DemoJobSpec) behind `tenancy` (Tenancy::Start: the data gate, the audit log); rank 0 samples.
Status RunDemoJob(const DemoOptions& options, const proto::JobSpec& job, Communicator& comm,
                  const Tenancy& tenancy);

}  // namespace fjord
