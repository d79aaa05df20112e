#include "launcher/launch/restart.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/host.h"
#include "common/json.h"
#include "launcher/launch/rank_status.h"
#include "launcher/launch/run.h"

namespace fjord {

int RunWithRestarts(int max_restarts, const std::function<int(int attempt)>& attempt,
                    const std::function<bool()>& stopped, AuditLog* audit, const std::string& who) {
  for (int k = 0;; ++k) {
    const int code = attempt(k);
    if (code == 0 || stopped()) return code;
    if (k >= max_restarts) {
      if (max_restarts > 0) {
        std::fprintf(stderr,
                     "%s: the job failed (exit %d) after %d restart(s), the most --max-restarts allows\n",
                     who.c_str(), code, k);
      }
      return code;
    }
    std::fprintf(
        stderr,
        "%s: the job failed (exit %d); restart %d of %d from its newest intact checkpoint (--resume)\n",
        who.c_str(), code, k + 1, max_restarts);
    std::fflush(stderr);
    if (audit != nullptr) {
      StatusOr<AuditAnchor> appended = audit->Append("job_restart", AuditRecord()
                                                                        .Int("restart", k + 1)
                                                                        .Int("max_restarts", max_restarts)
                                                                        .Int("failed_exit_code", code));
      if (!appended.ok()) {
        std::fprintf(stderr, "%s: error: cannot record the restart: %s\n", who.c_str(),
                     appended.status().message().c_str());
        return 1;
      }
    }
  }
}

}  // namespace fjord

// ---- fjord launch --max-restarts ----------------------------------------------------------------

namespace fjord {
namespace {

std::string PlacementText(const Placement& p) {
  std::string out;
  for (const PlacedNode& n : p.nodes)
    out += (out.empty() ? "" : ", ") + n.node.hostname() + " (" + Plural(n.ranks, "rank", "ranks") + ")";
  return out;
}

}  // namespace

StatusOr<LaunchOptions> OptionsForRestart(const LaunchOptions& options, uint64_t global_batch,
                                          LaunchPlan* plan) {
  LaunchOptions next = options;
  if (std::find(next.train_flags.begin(), next.train_flags.end(), "--resume") == next.train_flags.end())
    next.train_flags.push_back("--resume");
  next.overrides.push_back("train.global_batch=" + std::to_string(global_batch));
  StatusOr<LaunchPlan> planned = PlanLaunch(next);
  // With --min-nodes the job may shrink: the most ranks up to its count that the nodes left hold.
  for (int np = options.np - 1; !planned.ok() && options.min_nodes > 0 && np >= 1 &&
                                planned.status().code() == StatusCode::kFailedPrecondition;
       --np) {
    LaunchOptions fewer = next;
    fewer.np = np;
    StatusOr<LaunchPlan> p = PlanLaunch(fewer);
    if (p.ok()) {
      next = fewer;
      planned = std::move(p);
    }
  }
  if (!planned.ok()) {
    std::string failed;
    for (const ExcludedNode& e : options.exclude)
      failed += (failed.empty() ? "" : "; ") + e.hostname + ": " + e.reason;
    return Status(
        planned.status().code(),
        "no placement for the restart within the job's residency on the nodes left (excluded for "
        "this job: " +
            failed + "): " + planned.status().message() +
            (options.min_nodes > 0 ? std::string("")
                                   : "; a restart keeps the job's " + Plural(options.np, "rank", "ranks") +
                                         " unless --min-nodes lets it shrink"));
  }
  const int nodes = static_cast<int>(planned->placement.nodes.size());
  if (options.min_nodes > 0 && nodes < options.min_nodes) {
    return FailedPrecondition("the healthy allowed nodes left hold the job on " +
                              Plural(nodes, "node", "nodes") + " (" + PlacementText(planned->placement) +
                              "), fewer than --min-nodes " + std::to_string(options.min_nodes));
  }
  const uint64_t per_rank = static_cast<uint64_t>(planned->job.train().micro_batch());
  const uint64_t step = per_rank * static_cast<uint64_t>(next.np);
  if (step == 0 || global_batch % step != 0) {
    return FailedPrecondition(
        "the global batch of " + std::to_string(global_batch) + " sequences cannot be kept on " +
        Plural(next.np, "rank", "ranks") + " (" + PlacementText(planned->placement) +
        "): it is not divisible by train.micro_batch " + std::to_string(per_rank) + " x " +
        std::to_string(next.np) + " ranks = " + std::to_string(step) +
        "; choose a global batch that divides by micro_batch x the rank counts the job may run on");
  }
  *plan = std::move(*planned);
  return next;
}

int RunLaunch(const LaunchOptions& options) {
  if (options.max_restarts == 0) return RunLaunchAttempt(options, nullptr);
  LaunchOptions current = options;
  uint64_t global_batch = 0;
  for (int k = 0;; ++k) {
    LaunchAttempt attempt;
    const auto began = std::chrono::steady_clock::now();
    const int code = RunLaunchAttempt(current, &attempt);
    if (code == 0 || ChildStopRequested() || !attempt.started || attempt.stopped) return code;
    const double ran_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    const proto::TrainSpec& train = attempt.plan.job.train();
    if (global_batch == 0) {
      global_batch = train.global_batch() > 0
                         ? static_cast<uint64_t>(train.global_batch())
                         : static_cast<uint64_t>(train.micro_batch()) * train.grad_accum() * current.np;
    }
    if (k >= options.max_restarts) {
      std::fprintf(stderr,
                   "fjord launch: the job failed (exit %d) after %d restart(s), the most --max-restarts "
                   "allows\n",
                   code, k);
      return code;
    }
    StatusOr<std::unique_ptr<AuditLog>> audit =
        AuditLog::Open(attempt.plan.audit_log, "launch@" + ThisHostname());
    if (!audit.ok()) {
      std::fprintf(stderr, "fjord launch: error: cannot record the restart: %s\n",
                   audit.status().message().c_str());
      return code;
    }
    // Which node failed: the ranks' own start and end records (launch/rank_status.h).
    StatusOr<std::vector<RankStatus>> statuses = ReadRankStatuses(attempt.rank_status_dir);
    FailedNodes failed;
    if (statuses.ok()) {
      failed = attempt.plan.mode == LaunchMode::kSbatch
                   ? FindFailedSlurmNodes(*statuses, attempt.plan.placement.ranks)
                   : FindFailedNodes(*statuses, attempt.plan.placement);
    } else {
      failed.evidence = statuses.status().message();
    }
    std::vector<ExcludedNode> newly;
    for (const std::string& h : failed.hosts) {
      newly.push_back({h, "failed in attempt " + std::to_string(k + 1) + " (launch " + attempt.launch_id +
                              "): excluded for this job by --max-restarts"});
      current.exclude.push_back(newly.back());
    }
    std::string cause = "the job exited with " + std::to_string(code) + "; " +
                        (failed.hosts.empty() ? "no failed node identified (" + failed.evidence + ")"
                                              : "failed: " + failed.evidence);
    std::fprintf(stderr, "fjord launch: %s\n", cause.c_str());
    for (const ExcludedNode& e : newly)
      std::fprintf(stderr, "fjord launch: excluding node %s for this job\n", e.hostname.c_str());
    // What job_restart and restart_refused both say first: the failed attempt and why it failed.
    AuditRecord record;
    record.Str("launch_id", attempt.launch_id)
        .Int("restart", k + 1)
        .Int("max_restarts", options.max_restarts)
        .Int("failed_exit_code", code)
        .Str("cause", cause);
    LaunchPlan next_plan;
    StatusOr<LaunchOptions> next = OptionsForRestart(current, global_batch, &next_plan);
    if (!next.ok()) {
      const std::string message = "restart " + std::to_string(k + 1) + " of " +
                                  std::to_string(options.max_restarts) +
                                  " refused: " + next.status().message();
      std::fprintf(stderr, "fjord launch: error: %s\n", message.c_str());
      StatusOr<AuditAnchor> logged = (*audit)->Append(
          "restart_refused", record.Raw("excluded", ExcludedJson(current.exclude)).Str("message", message));
      if (!logged.ok()) {
        std::fprintf(stderr, "fjord launch: warning: cannot record the refusal: %s\n",
                     logged.status().message().c_str());
      }
      return code;
    }
    const int accum =
        static_cast<int>(global_batch / (static_cast<uint64_t>(next_plan.job.train().micro_batch()) *
                                         static_cast<uint64_t>(next->np)));
    std::fprintf(
        stderr,
        "fjord launch: restart %d of %d on %s: %s, global batch %llu (grad_accum %d), from the newest "
        "intact checkpoint (--resume); the failed attempt ran %.1f s\n",
        k + 1, options.max_restarts,
        Plural(static_cast<int>(next_plan.placement.nodes.size()), "node", "nodes").c_str(),
        PlacementText(next_plan.placement).c_str(), static_cast<unsigned long long>(global_batch), accum,
        ran_s);
    std::fflush(stderr);
    StatusOr<AuditAnchor> logged =
        (*audit)->Append("job_restart", record.Raw("excluded", ExcludedJson(newly))
                                            .Raw("nodes", NodesJson(next_plan.placement))
                                            .Int("ranks", next->np)
                                            .Int("global_batch", static_cast<int64_t>(global_batch))
                                            .Int("grad_accum", accum));
    if (!logged.ok()) {
      std::fprintf(stderr, "fjord launch: error: cannot record the restart: %s\n",
                   logged.status().message().c_str());
      return 1;
    }
    current = *next;
  }
}

}  // namespace fjord
