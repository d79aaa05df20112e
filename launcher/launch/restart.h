// Restarting a job from its last checkpoint when a rank dies (torchrun's --max-restarts): the loop
// that `fjord run` uses, and that `fjord launch` can use across nodes. Each attempt after the first
// resumes (fjord train --resume: the newest intact checkpoint, exact on any world size).
#pragma once

#include <functional>
#include <string>

#include "common/status.h"
#include "launcher/launch/plan.h"
#include "runtime/tenancy/audit.h"

namespace fjord {

// Runs attempt(k) for k = 0, 1, ... (its exit code). An attempt that exits 0, or that was asked to
// stop (stopped() true: a clean stop on request is not a failure), ends the loop; any other exit is a
// failure, after which the job runs again while fewer than `max_restarts` restarts have happened.
// Each restart is announced on stderr as "`who`: ..." and appended to `audit` (when not null) as a
// job_restart record (restart number, max_restarts, the failed attempt's exit code); a failed append
// ends the loop with that error (exit 1). Returns the last attempt's exit code.
int RunWithRestarts(int max_restarts, const std::function<int(int attempt)>& attempt,
                    const std::function<bool()>& stopped, AuditLog* audit, const std::string& who);

// `fjord launch --max-restarts N [--min-nodes M]`: the attempt after `failed` (its plan) with
// `options.exclude` already naming every failed node. Places the same job on the remaining nodes
// with the same code and residency checks as the first launch (PlanLaunch); keeps the rank count,
// or, with options.min_nodes > 0, takes the most ranks up to it that fit (never fewer than
// min_nodes nodes); keeps the global batch (`global_batch`, sequences per step, set by the caller
// from the first attempt): train.global_batch is set to it, so grad_accum follows the new world
// size; adds --resume. Refuses with the reason: no placement within the residency (PlanLaunch's
// message, naming each node not allowed), fewer than min_nodes nodes, a global batch not divisible
// by train.micro_batch x the new rank count. `plan` receives the new plan.
StatusOr<LaunchOptions> OptionsForRestart(const LaunchOptions& options, uint64_t global_batch,
                                          LaunchPlan* plan);

}  // namespace fjord
