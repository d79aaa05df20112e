#include "launcher/run_local.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/host.h"
#include "launcher/cli.h"
#include "launcher/launch/rank_status.h"
#include "launcher/launch/restart.h"
#include "launcher/launch/run.h"
#include "launcher/lease.h"
#include "proto/inventory.pb.h"
#include "runtime/tenancy/audit.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/config.h"

namespace fjord {

void AddRunCommand(CLI::App& app) {
  struct Args {
    std::vector<std::string> job, overrides;
    int nproc = 0, max_restarts = 0;
    bool resume = false, overwrite = false, accept_changes = false, quiet = false, json = false;
    std::string mpirun = "mpirun", lease_dir;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(app, "run",
                                    "train on N ranks of this node (torchrun --nproc-per-node); "
                                    "--max-restarts R runs the job again from its "
                                    "newest intact checkpoint when a rank dies");
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  cli::Required(
      cli::AddNumber(*c, "--nproc-per-node", a->nproc, "N", "ranks to start on this node", 1, 4096));
  cli::AddNumber(*c, "--max-restarts", a->max_restarts, "R",
                 "after a failure, run the job again from its newest intact checkpoint, at most R times "
                 "(default 0); each restart is recorded in the job's audit log",
                 0, 1000);
  c->add_option("--set", a->overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->add_flag("--resume", a->resume, "passed on to fjord train (restarts always resume)");
  c->add_flag("--overwrite", a->overwrite, "passed on to fjord train (the first attempt only)");
  c->add_flag("--accept-changes", a->accept_changes, "passed on to fjord train");
  c->add_flag("--quiet", a->quiet, "passed on to fjord train");
  c->add_flag("--json", a->json, "passed on to fjord train");
  c->add_option("--mpirun", a->mpirun, "the mpirun to run")->type_name("PATH");
  c->add_option("--lease-dir", a->lease_dir,
                "lease this node in DIR for the job's lifetime, restarts included, as fjord launch leases "
                "an inventory's nodes in its lease_dir (one job per node; refused while another holds it)")
      ->type_name("DIR");
  c->run = [c, a] {
    if (a->job.size() != 1) return cli::UsageError(*c, "give exactly one job spec (JOB.textproto)");
    if (c->count("--nproc-per-node") == 0) {
      return cli::UsageError(*c, "--nproc-per-node N is required: the number of ranks to start on this node");
    }
    if (a->resume && a->overwrite) return cli::UsageError(*c, "give --resume or --overwrite, not both");
    // The job is checked here first, so that a bad spec is one message, not one per rank.
    StatusOr<proto::JobSpec> job = LoadJobSpec(a->job[0], a->overrides);
    if (!job.ok()) {
      std::fprintf(stderr, "fjord run: error: %s\n", job.status().message().c_str());
      return 1;
    }
    std::unique_ptr<AuditLog> audit;
    if (a->max_restarts > 0) {
      StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(AuditPathFor(*job), "run@" + ThisHostname());
      if (!log.ok()) {
        std::fprintf(stderr, "fjord run: error: --max-restarts records each restart, but %s\n",
                     log.status().message().c_str());
        return 1;
      }
      audit = std::move(*log);
    }
    // The node's lease (docs/SOVEREIGNTY.md, "Node leases"): the keys fjord launch locks for an
    // inventory node of this hostname, so a launch and a run on one node exclude each other.
    std::unique_ptr<NodeLeases> leases;
    if (!a->lease_dir.empty()) {
      StatusOr<std::string> digest = JobDigest(*job);
      if (!digest.ok()) {
        std::fprintf(stderr, "fjord run: error: %s\n", digest.status().message().c_str());
        return 1;
      }
      proto::InventoryNode node;
      node.set_hostname(ThisHostname());
      LeaseRecord record;
      record.tenant = job->tenant().id();
      record.job_sha256 = *digest;
      record.launch_id = "run-" + std::to_string(::getpid());
      record.launch_host = ThisHostname();
      record.pid = ::getpid();
      record.audit_log = std::filesystem::absolute(AuditPathFor(*job)).string();
      LeaseConflict conflict;
      StatusOr<std::unique_ptr<NodeLeases>> taken = TryAcquireLeases(
          std::filesystem::absolute(a->lease_dir).string(), NodeLeaseKeys(node), record, &conflict);
      if (!taken.ok()) {
        std::fprintf(stderr, "fjord run: error: %s\n", taken.status().message().c_str());
        return 1;
      }
      leases = std::move(*taken);
      std::printf("fjord run: leased this node (%s) in %s for the job\n", ThisHostname().c_str(),
                  a->lease_dir.c_str());
      std::fflush(stdout);
    }
    // This executable by its path: "/proc/self/exe" would name mpirun's own helper where it is run.
    std::error_code ec;
    const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    if (ec) {
      std::fprintf(stderr, "fjord run: error: cannot find this executable (/proc/self/exe): %s\n",
                   ec.message().c_str());
      return 1;
    }
    const auto attempt = [&](int k) {
      std::vector<std::string> argv = {
          a->mpirun, "-np", std::to_string(a->nproc), "--bind-to", "none", self, "train", a->job[0]};
      for (const std::string& o : a->overrides) argv.insert(argv.end(), {"--set", o});
      if (a->resume || k > 0) argv.push_back("--resume");
      if (a->overwrite && k == 0) argv.push_back("--overwrite");
      if (a->accept_changes) argv.push_back("--accept-changes");
      if (a->quiet) argv.push_back("--quiet");
      if (a->json) argv.push_back("--json");
      // Every job_start gets its job_end, even when rank 0 was killed before it could write one.
      const std::string audit_path = AuditPathFor(*job);
      const StatusOr<AuditAnchor> before = ReadAuditHead(audit_path);
      const int code = RunChild(argv);
      RecordMissingJobEnd(audit_path, "run@" + ThisHostname(), before.ok() ? before->seq : 0, code, "", "",
                          "fjord run");
      return code;
    };
    return RunWithRestarts(a->max_restarts, attempt, ChildStopRequested, audit.get(), "fjord run");
  };
}

}  // namespace fjord
