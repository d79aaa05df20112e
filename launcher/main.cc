// fjord: one executable, one subcommand per task, each defined with CLI11 (launcher/cli.h) by an
// Add...() here or next to its code. Argument errors exit 2 with the usage of the subcommand;
// failures of the task itself exit 1 with a message that says what to do.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/communicator.h"
#include "common/env.h"
#include "common/host.h"
#include "common/text.h"
#include "launcher/audit_cmd.h"
#include "launcher/bench_cli.h"
#include "launcher/cli.h"
#include "launcher/demo.h"
#include "launcher/doctor.h"
#include "launcher/launch.h"
#include "launcher/launch/rank_status.h"
#include "launcher/node_cmd.h"
#include "launcher/report_cmd.h"
#include "launcher/run_local.h"
#include "launcher/version.h"
#include "runtime/data/data.h"
#include "runtime/data/prep.h"
#include "runtime/data/tokenizer.h"
#include "runtime/formats/llmc_checkpoint.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"
#include "runtime/train/inference.h"
#include "runtime/train/model_io.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace {

// "fjord CMD: error: MESSAGE", once: a message that already starts with "fjord CMD: " (as some
// library messages do) is not prefixed twice.
int Fail(const char* command, const Status& status) {
  const std::string prefix = "fjord " + std::string(command) + ": ";
  std::string message = status.message();
  while (message.starts_with(prefix)) message.erase(0, prefix.size());
  std::fprintf(stderr, "%serror: %s\n", prefix.c_str(), message.c_str());
  return 1;
}

// Like Fail, on every rank: with more than one rank the error also ends the others (a rank
// that fails alone would leave the rest waiting in a collective until their timeout).
int FailAll(const char* command, const Status& status, Communicator& comm) {
  if (comm.size() == 1) return Fail(command, status);
  comm.Abort("fjord " + std::string(command) + ": error on rank " + std::to_string(comm.rank()) + ": " +
                 status.message(),
             1);
  return 1;  // not reached: Abort ends the process (GCC does not trust [[noreturn]] on a virtual)
}

// Runs `body` for `job` behind the gates, in their order (docs/SOVEREIGNTY.md): gate 2 (this
// node's identity, before any data, communicator or GPU; a refusal exits here, and under mpirun that
// ends the other ranks, still in MPI_Init), the communicator, the tenancy context (rank 0 audits;
// its data policy is what every loader of `body` gets), then `body`, then the job_end record.
// The job's tenancy while its body runs, for the trainer's signal watcher (OnRankSignal).
std::atomic<const Tenancy*> g_running_tenancy{nullptr};

// How a rank ends on a signal or the loss of its parent (SetSignalEndHook): its end record for
// fjord launch --max-restarts (launch/rank_status.h) and, when the rank is ending, rank 0's job_end
// with the signal.
void OnRankSignal(int sig, const std::string& how, const std::string& detail, bool exiting) {
  if (how == "waiting") return RecordRankWaiting(detail);
  RecordRankEnd(how, detail);
  const Tenancy* tenancy = g_running_tenancy.load();
  if (exiting && tenancy != nullptr) {
    (void)tenancy->RecordJobEnd(
        Internal("rank ended by " + (how == "parent_lost" ? how : strsignal(sig)) + ": " + detail), sig);
  }
}

int RunGatedJob(const char* command, const proto::JobSpec& job,
                const std::function<Status(Communicator&, const Tenancy&)>& body) {
  StatusOr<RankGateResult> gate = RankGate(job);
  if (!gate.ok()) return Fail(command, gate.status());
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptionsFor(job));
  if (!comm.ok()) return Fail(command, comm.status());
  // Under Slurm the node is Slurm's name for it: what a restart excludes (sbatch --exclude).
  RecordRankStart((*comm)->rank(), GetEnv("SLURMD_NODENAME").value_or(ThisHostname()));
  SetSignalEndFile(RankSignalFile());
  // Any other exit() of the process (MPI's own error handling when a peer's connection drops ends
  // the rank through exit): it was alive when the peer went.
  std::atexit(
      [] { RecordRankEnd("exit", "the process exited outside fjord's paths (e.g. MPI's error handling)"); });
  StatusOr<std::unique_ptr<Tenancy>> tenancy = Tenancy::Start(job, *gate, **comm);
  if (!tenancy.ok()) {
    RecordRankEnd("error", tenancy.status().message());
    return FailAll(command, tenancy.status(), **comm);
  }
  g_running_tenancy = tenancy->get();
  SetSignalEndHook(OnRankSignal);
  const Status result = body(**comm, **tenancy);
  RecordRankEnd(result.ok() ? "ok" : "error", result.message());
  (void)(*tenancy)->RecordJobEnd(result);
  if (!result.ok()) return FailAll(command, result, **comm);
  return 0;
}

// Refuses a run_dir that cannot be created or written, naming it (before the gates, which would
// otherwise meet it as the directory of the audit log). Writes nothing: it looks at the nearest
// existing directory on the way.
Status CheckRunDirWritable(const proto::JobSpec& job) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path at = fs::absolute(job.run_dir(), ec);
  while (!at.empty() && !fs::exists(at, ec) && at != at.parent_path()) at = at.parent_path();
  std::string problem;
  if (!fs::is_directory(at, ec)) {
    problem = at.string() + " is not a directory";
  } else if (::access(at.c_str(), W_OK | X_OK) != 0) {
    problem = at.string() + " is not writable (" + std::strerror(errno) + ")";
  }
  if (problem.empty()) return OkStatus();
  return FailedPrecondition("run_dir " + job.run_dir() + " cannot be created or written: " + problem +
                            "; choose another run_dir (--set run_dir=DIR) or fix the permissions");
}

// --key FILE and --audit-log FILE of the commands that read a checkpoint outside a training job.
void AddAccess(cli::Command& c, CheckpointAccess& access) {
  c.add_option("--key", access.key_file, "the tenant's checkpoint key, to read a sealed checkpoint")
      ->type_name("FILE");
  c.add_option("--audit-log", access.audit_log, "where the opening of a sealed checkpoint is recorded")
      ->type_name("FILE");
}

// "Job spec sections (proto/job.proto): model { }, train { }, ..., run_dir, device": the top level of
// the schema, from its descriptor.
std::string JobSpecSections() {
  const google::protobuf::Descriptor* d = proto::JobSpec::descriptor();
  std::string out = "Job spec sections (protobuf text format, schema in proto/job.proto): ";
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    out += (i ? ", " : "") + f->name() +
           (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE ? " { }" : "");
  }
  return out + ".";
}

// Why the positional arguments of train or config are not one job spec, naming the culprit: a
// --set whose value was given apart ("--set a.b 8"), or several files (a glob the shell expanded).
std::string JobCountProblem(const std::vector<std::string>& jobs) {
  if (jobs.empty()) return "give the job spec (JOB.textproto)";
  std::string extra;
  for (size_t i = 0; i < jobs.size(); ++i) extra += (i ? " " : "") + ("'" + jobs[i] + "'");
  const auto looks_like_a_job = [](const std::string& a) { return a.ends_with(".textproto"); };
  const long files = std::count_if(jobs.begin(), jobs.end(), looks_like_a_job);
  if (files > 1) {
    return "give exactly one job spec; got " + std::to_string(jobs.size()) + " arguments (" + extra +
           "): did the shell expand a glob? Name one file";
  }
  for (const std::string& a : jobs) {
    if (!looks_like_a_job(a)) {
      return "give exactly one job spec; '" + a + "' is an extra argument (of " + extra +
             "). A --set takes PATH=VALUE as one argument: --set train.steps=20, not --set train.steps 20";
    }
  }
  return "give exactly one job spec; got " + extra;
}

void AddConfig(CLI::App& app) {
  struct Args {
    std::vector<std::string> job, overrides;
    bool print = false;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "config",
      "print the resolved job spec: the file, its --set overrides and every default filled in");
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  cli::Required(c->add_flag("--print", a->print, "print the resolved job spec in text format"));
  c->add_option("--set", a->overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->footer(JobSpecSections());
  c->run = [c, a] {
    if (a->job.size() != 1) return cli::UsageError(*c, JobCountProblem(a->job));
    if (!a->print) return cli::UsageError(*c, "give --print (the only action of fjord config)");
    StatusOr<proto::JobSpec> job = LoadJobSpec(a->job[0], a->overrides);
    if (!job.ok()) return Fail("config", job.status());
    std::fputs(JobSpecToText(*job).c_str(), stdout);
    return 0;
  };
}

void AddTrain(CLI::App& app) {
  struct Args {
    std::vector<std::string> job, overrides;
    bool resume = false;
    TrainOptions options;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "train",
      "train a model as the job spec says; --resume continues from the newest intact checkpoint");
  c->footer(
      JobSpecSections() +
      "\n`fjord config --print JOB.textproto [--set PATH=VALUE]...` prints the resolved job, every default "
      "filled in; `fjord train JOB.textproto --dry-run` checks the job, its data and the plan without "
      "training.\n\n"
      "Stopping: SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stops every rank after the current step with a "
      "checkpoint and "
      "exit 0; a second signal exits at once.\n"
      "Under mpirun, send SIGUSR1 to mpirun (kill -USR1 MPIRUN_PID): it forwards it to every rank and exits "
      "0. "
      "Ctrl-C makes mpirun kill the ranks 1 s after its SIGTERM, too soon for a large checkpoint, and exit "
      "1: "
      "give mpirun --mca odls_base_sigkill_timeout 120, or start the job with fjord launch and stop it with "
      "kill -TERM LAUNCH_PID (launch forwards it as SIGUSR1).");
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  c->add_option("--set", a->overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->add_flag("--resume", a->resume, "continue from the newest intact checkpoint");
  c->add_flag("--overwrite", a->options.overwrite,
              "remove an earlier run's metrics, TensorBoard files and checkpoints from run_dir first "
              "(without it, a run_dir holding another run is refused)");
  c->add_flag("--accept-changes", a->options.accept_changes,
              "with --resume: accept a job that changes the global batch or the learning-rate schedule "
              "of the checkpoint's run (each change is printed either way)");
  c->add_flag("--dry-run", a->options.dry_run,
              "check the job, its data, the batch plan, memory and run_dir; print the plan; train nothing");
  c->add_flag("--quiet", a->options.quiet, "print only the summary");
  c->add_flag("--json", a->options.json_lines, "print one JSON object per step");
  c->run = [c, a] {
    if (a->job.size() != 1) return cli::UsageError(*c, JobCountProblem(a->job));
    if (a->resume && a->options.overwrite) {
      return cli::UsageError(
          *c, "give --resume (continue the run in run_dir) or --overwrite (replace it), not both");
    }
    std::vector<std::string> overrides = a->overrides;
    if (a->resume) overrides.push_back("checkpoint.resume=true");
    StatusOr<proto::JobSpec> job = LoadJobSpec(a->job[0], overrides);
    if (!job.ok()) return Fail("train", job.status());
    if (Status writable = CheckRunDirWritable(*job); !writable.ok()) return Fail("train", writable);
    return RunGatedJob("train", *job, [&](Communicator& comm, const Tenancy& tenancy) {
      TrainOptions options = a->options;
      options.tenancy = &tenancy;
      return Train(*job, options, comm).status();
    });
  };
}

// fjord plan: the memory plan of a job per rank (runtime/model/memory_plan.h), the same that
// `fjord train` and `fjord launch` check before anything is allocated. Exit 0 when it fits, 1 when it
// does not (the table, then why and what would make it fit).
void AddPlan(CLI::App& app) {
  struct Args {
    std::vector<std::string> job, overrides;
    int ranks = 0, ranks_per_node = 0;
    std::string device;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "plan",
      "print a job's memory per rank (parameters, gradients, optimizer, activations...) and whether it fits");
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  cli::Required(c->add_option("--ranks", a->ranks, "data-parallel ranks")->type_name("N"));
  c->add_option("--device", a->device,
                "h100, h200 or cpu (this host's available memory); default cpu for device: CPU, else h100")
      ->type_name("NAME");
  c->add_option(
       "--ranks-per-node", a->ranks_per_node,
       "--device cpu: ranks that share one host's memory (default: all of --ranks, as `mpirun -np N` "
       "on this host runs them)")
      ->type_name("K");
  c->add_option("--set", a->overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->run = [c, a] {
    if (a->job.size() != 1) return cli::UsageError(*c, "give exactly one job spec (JOB.textproto)");
    if (a->ranks < 1)
      return cli::UsageError(*c, "--ranks " + std::to_string(a->ranks) + ": give at least 1 rank");
    if (a->ranks_per_node < 0 || a->ranks_per_node > a->ranks) {
      return cli::UsageError(*c, "--ranks-per-node " + std::to_string(a->ranks_per_node) +
                                     ": give between 1 and --ranks (" + std::to_string(a->ranks) + ")");
    }
    StatusOr<proto::JobSpec> job = LoadJobSpec(a->job[0], a->overrides);
    if (!job.ok()) return Fail("plan", job.status());
    const std::string name = !a->device.empty() ? a->device : job->device() == proto::CPU ? "cpu" : "h100";
    StatusOr<PlanDevice> device = PlanDeviceNamed(name, a->ranks_per_node > 0 ? a->ranks_per_node : a->ranks);
    if (!device.ok()) return cli::UsageError(*c, device.status().message());
    const MemoryPlan plan = PlanMemory(JobPlanInputs(*job, a->ranks, device->cuda), *device);
    std::fputs(plan.Table().c_str(), stdout);
    if (Status verdict = plan.Verdict(); !verdict.ok()) return Fail("plan", verdict);
    return 0;
  };
}

// The C escapes \n, \t, \r and \\ in a command-line string (for --delimiter '\n\n').
StatusOr<std::string> UnescapeC(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out.push_back(text[i]);
      continue;
    }
    const char next = i + 1 < text.size() ? text[++i] : '\0';
    switch (next) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
        out.push_back('\\');
        break;
      default:
        return InvalidArgument("unknown escape '\\" + std::string(1, next) + "' at character " +
                               std::to_string(i) + "; use \\n, \\t, \\r or \\\\");
    }
  }
  return out;
}

void AddPrep(CLI::App& app) {
  struct Args {
    PrepOptions options;
    std::vector<std::string> inputs;
    std::string tokenizer = "byte", vocab, jurisdictions, sites, format = "text", eot = "auto";
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "prep",
      "tokenize text into llm.c token shards (with --tenant: and a manifest of tenant, residency, sha256)");
  cli::Required(c->add_option("--input", a->inputs,
                              "the text to tokenize: files or globs, plain, gzip or zstd; repeatable")
                    ->type_name("FILE"));
  cli::Required(c->add_option("--out", a->options.out_dir, "where the shards go")->type_name("DIR"));
  c->add_option("--format", a->format, "text (default) or jsonl (one JSON object per line)")
      ->type_name("text|jsonl");
  c->add_option("--delimiter", a->options.delimiter,
                "text: ends each document (default \\n, a line; C escapes allowed, e.g. \\n\\n), or none: "
                "one document per file")
      ->type_name("STR");
  c->add_option("--json-field", a->options.json_field, "jsonl: the field holding the text (default text)")
      ->type_name("NAME");
  c->add_option("--eot", a->eot,
                "the id put before each document: auto (the tokenizer's end-of-text, GPT-2's 50256), none, "
                "or an id")
      ->type_name("auto|none|ID");
  cli::AddNumber(*c, "--val-fraction", a->options.val_fraction, "F",
                 "the share of documents for validation (every 1/F-th document)");
  cli::AddNumber<int64_t>(*c, "--val-docs", a->options.val_docs, "N",
                          "the first N documents for validation (instead of --val-fraction)", 0);
  cli::AddNumber<int64_t>(*c, "--shard-tokens", a->options.shard_tokens, "N",
                          "tokens per shard at most (default 100000000)", 1, 2147483647);
  a->options.threads = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 256u));
  cli::AddNumber(*c, "--threads", a->options.threads, "N",
                 "tokenizer threads (default: every core; the shards are the same for any N)", 1, 256);
  c->add_flag("--quiet", a->quiet, "no progress line");
  c->add_option("--tokenizer", a->tokenizer,
                "byte (default), gpt2 (vocab.json + merges.txt) or hf (a Hugging Face tokenizer.json)")
      ->type_name("byte|gpt2|hf");
  c->add_option("--vocab", a->vocab, "the tokenizer's files: gpt2's DIR, hf's tokenizer.json or its DIR")
      ->type_name("DIR");
  c->add_option("--tenant", a->options.tenant, "the tenant the shards belong to (writes a manifest)")
      ->type_name("ID");
  c->add_option("--jurisdiction", a->jurisdictions, "where the shards may be opened")->type_name("CC[,CC]");
  c->add_option("--site", a->sites, "the sites within them")->type_name("S[,S]");
  c->run = [c, a] {
    PrepOptions options = a->options;
    if (a->inputs.empty() || options.out_dir.empty()) {
      return cli::UsageError(*c, "--input FILE and --out DIR are required");
    }
    if (!options.tenant.empty()) {
      if (StatusOr<LocalNode> node = ReadNodeIdentity(); !node.ok()) {
        std::fprintf(
            stderr,
            "fjord prep: warning: tenant %s's shards are prepared on a node without a usable identity "
            "(%s): nothing checks that this node lies in the tenant's jurisdictions. Prepare them on a "
            "node of the tenant's residency whose operator wrote its identity file "
            "(docs/SOVEREIGNTY.md)\n",
            options.tenant.c_str(), node.status().message().c_str());
      }
    }
    options.inputs = a->inputs;
    options.allowed_jurisdictions = SplitList(a->jurisdictions);
    options.allowed_sites = SplitList(a->sites);
    options.progress = !a->quiet;
    if (a->format != "text" && a->format != "jsonl") {
      return cli::UsageError(*c, "--format " + a->format + ": use text or jsonl");
    }
    options.jsonl = a->format == "jsonl";
    if (options.jsonl && c->count("--delimiter") > 0) {
      return cli::UsageError(*c, "--delimiter is for --format text; jsonl has one document per line");
    }
    if (!options.jsonl && c->count("--json-field") > 0) {
      return cli::UsageError(*c, "--json-field is for --format jsonl");
    }
    if (options.delimiter == "none") {
      options.delimiter.clear();
    } else if (c->count("--delimiter") > 0) {
      StatusOr<std::string> delimiter = UnescapeC(options.delimiter);
      if (!delimiter.ok() || delimiter->empty()) {
        return cli::UsageError(*c, "--delimiter: " + (delimiter.ok() ? std::string("must not be empty")
                                                                     : delimiter.status().message()));
      }
      options.delimiter = *delimiter;
    }
    if (c->count("--val-docs") > 0 && c->count("--val-fraction") > 0) {
      return cli::UsageError(*c, "give --val-fraction or --val-docs, not both");
    }
    if (a->eot == "auto") {
      options.eot = kEotAuto;
    } else if (a->eot == "none") {
      options.eot = kEotNone;
    } else {
      char* end = nullptr;
      const long long id = std::strtoll(a->eot.c_str(), &end, 10);
      if (a->eot.empty() || *end != '\0' || id < 0) {
        return cli::UsageError(*c, "--eot " + a->eot + ": use auto, none, or a token id (e.g. 50256)");
      }
      options.eot = id;
    }
    if (a->tokenizer != "byte" && c->count("--vocab") == 0) {
      return cli::UsageError(*c, "--tokenizer " + a->tokenizer +
                                     " needs --vocab DIR (gpt2: vocab.json + merges.txt, or encoder.json + "
                                     "vocab.bpe; hf: tokenizer.json)");
    }
    StatusOr<std::unique_ptr<Tokenizer>> tokenizer = MakeTokenizer(a->tokenizer, a->vocab);
    if (!tokenizer.ok()) return Fail("prep", tokenizer.status());
    if (!(*tokenizer)->can_encode()) {
      return Fail("prep",
                  InvalidArgument("--tokenizer " + a->tokenizer +
                                  " only decodes (it has no merges); prep with --tokenizer gpt2 or hf"));
    }
    StatusOr<PrepResult> result = PrepareShards(options, **tokenizer);
    if (!result.ok()) return Fail("prep", result.status());
    std::printf(
        "fjord prep: %lld documents (%lld bytes): %lld train tokens in %zu shard(s), %lld val tokens (%lld "
        "documents) in %zu shard(s) under %s\n",
        static_cast<long long>(result->documents), static_cast<long long>(result->input_bytes),
        static_cast<long long>(result->train_tokens), result->train_files.size(),
        static_cast<long long>(result->val_tokens), static_cast<long long>(result->val_documents),
        result->val_files.size(), options.out_dir.c_str());
    if (!result->manifest_path.empty()) {
      std::printf("fjord prep: manifest %s: tenant %s, jurisdictions %s\n", result->manifest_path.c_str(),
                  options.tenant.c_str(), JoinList(options.allowed_jurisdictions).c_str());
    }
    return 0;
  };
}

void AddEval(CLI::App& app) {
  struct Args {
    std::string checkpoint, data, batches;
    EvalOptions options;
    CheckpointAccess access;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "eval", "print a checkpoint's mean loss on token shards as JSON; --key reads a sealed checkpoint");
  cli::Required(c->add_option("--checkpoint", a->checkpoint, "the checkpoint")->type_name("DIR"));
  cli::Required(c->add_option("--data", a->data, "the token shards")->type_name("GLOB"));
  c->add_option("--batches", a->batches,
                "batches to evaluate, or all: the whole split (default: the job's train.eval_batches)")
      ->type_name("N|all")
      ->check(CLI::Validator(
          [](std::string& text) {
            int n = 0;
            if (text == "all" || (CLI::detail::lexical_cast(text, n) && n > 0)) return std::string();
            return "'" + text + "' is neither a positive number of batches nor 'all'";
          },
          ""));
  cli::AddNumber(*c, "--micro-batch", a->options.micro_batch, "B",
                 "sequences per batch (default: the checkpoint's train.micro_batch)", 1);
  cli::AddNumber(*c, "--seq-len", a->options.seq_len, "T",
                 "tokens per sequence (default: the checkpoint's training sequence length)", 1);
  AddAccess(*c, a->access);
  c->run = [c, a] {
    if (a->checkpoint.empty() || a->data.empty()) {
      return cli::UsageError(*c, "--checkpoint DIR and --data GLOB are required");
    }
    EvalOptions options = a->options;
    if (!a->batches.empty())
      options.batches = a->batches == "all" ? EvalOptions::kAll : std::stoi(a->batches);
    StatusOr<EvalResult> result = EvaluateCheckpoint(a->checkpoint, a->data, options, a->access);
    if (!result.ok()) return Fail("eval", result.status());
    std::fprintf(stderr, "fjord eval: checkpoint %s\n", DescribeCheckpoint(result->checkpoint).c_str());
    if (result->capped) {
      std::fprintf(stderr,
                   "fjord eval: note: %s holds %d batch(es) of %d x %d tokens, fewer than the %d asked for; "
                   "evaluated them all\n",
                   a->data.c_str(), result->batches, result->micro_batch, result->seq_len,
                   result->requested_batches);
    }
    std::printf(
        "{\"loss\": %.6f, \"tokens\": %lld, \"batches\": %d, \"micro_batch\": %d, \"seq_len\": %d, "
        "\"capped\": %s}\n",
        result->loss, static_cast<long long>(result->tokens), result->batches, result->micro_batch,
        result->seq_len, result->capped ? "true" : "false");
    return 0;
  };
}

void AddSample(CLI::App& app) {
  struct Args {
    std::string checkpoint;
    SampleOptions options;
    CheckpointAccess access;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "sample",
      "generate text from a checkpoint, streamed as it is produced; --key reads a sealed checkpoint");
  cli::Required(c->add_option("--checkpoint", a->checkpoint, "the checkpoint")->type_name("DIR"));
  c->add_option("--prompt", a->options.prompt, "the text to continue")->type_name("TEXT");
  cli::AddNumber(*c, "--tokens", a->options.tokens, "N", "tokens to generate (default 256)");
  cli::AddNumber(*c, "--temperature", a->options.temperature, "T", "0 is greedy (default 1)");
  cli::AddNumber(*c, "--top-k", a->options.top_k, "K", "sample from the K likeliest tokens (0: all)");
  cli::AddNumber(*c, "--top-p", a->options.top_p, "P", "nucleus sampling: the smallest set with this mass");
  cli::AddNumber(*c, "--seed", a->options.seed, "S", "random seed");
  c->add_option(
       "--tokenizer", a->options.tokenizer,
       "the tokenizer the shards were made with: byte, gpt2, hf or llmc (llm.c's gpt2_tokenizer.bin; "
       "decode only). Default: gpt2 with --vocab, else byte")
      ->type_name("byte|gpt2|hf|llmc");
  c->add_option("--vocab", a->options.vocab_dir, "the tokenizer's files, as for prep")->type_name("DIR");
  AddAccess(*c, a->access);
  c->run = [c, a] {
    if (a->checkpoint.empty()) return cli::UsageError(*c, "--checkpoint DIR is required");
    SampleOptions options = a->options;
    options.on_loaded = [&](const std::string& dir) {
      std::fprintf(stderr, "fjord sample: checkpoint %s\n", DescribeCheckpoint(dir).c_str());
      std::fputs(options.prompt.c_str(), stdout);
    };
    StatusOr<std::string> text = SampleCheckpoint(
        a->checkpoint, options,
        [](const std::string& piece) {
          std::fputs(piece.c_str(), stdout);
          std::fflush(stdout);
        },
        a->access);
    std::fputc('\n', stdout);
    if (!text.ok()) return Fail("sample", text.status());
    return 0;
  };
}

void AddExport(CLI::App& app) {
  struct Args {
    std::string checkpoint, out, format = "hf";
    CheckpointAccess access;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(app, "export",
                                    "write a checkpoint's weights for Hugging Face (PATH/model.safetensors + "
                                    "config.json) or llm.c; a sealed "
                                    "checkpoint needs --key, and its plaintext export is audited");
  cli::Required(c->add_option("--checkpoint", a->checkpoint, "the checkpoint")->type_name("DIR"));
  cli::Required(c->add_option("--out", a->out, "where the weights go")->type_name("PATH"));
  c->add_option("--format", a->format, "hf (default), llmc or llmc-bf16")->type_name("hf|llmc|llmc-bf16");
  AddAccess(*c, a->access);
  c->run = [c, a] {
    if (a->checkpoint.empty() || a->out.empty()) {
      return cli::UsageError(*c, "--checkpoint DIR and --out PATH are required");
    }
    StatusOr<ModelFormat> format = ParseModelFormat(a->format);
    if (!format.ok()) return Fail("export", format.status());
    Status s = ExportModel(a->checkpoint, a->out, *format, a->access);
    if (!s.ok()) return Fail("export", s);
    StatusOr<std::string> dir = ResolveCheckpointDir(a->checkpoint);
    std::printf("fjord export: wrote %s from checkpoint %s\n", a->out.c_str(),
                dir.ok() ? DescribeCheckpoint(*dir).c_str() : a->checkpoint.c_str());
    if (c->count("--key") > 0) {
      std::fprintf(stderr,
                   "fjord export: note: %s holds the sealed checkpoint's weights in plaintext; the export is "
                   "recorded in the audit log. Keep it inside the tenant's residency\n",
                   a->out.c_str());
    }
    return 0;
  };
}

// Whether `path` is a file whose first int32 is llm.c's model magic (kLlmcModelMagic).
bool StartsWithLlmcMagic(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  int32_t magic = 0;
  const bool read = std::fread(&magic, sizeof(magic), 1, f) == 1;
  std::fclose(f);
  return read && magic == kLlmcModelMagic;
}

void AddImport(CLI::App& app) {
  struct Args {
    std::string from, out, format;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "import",
      "make a fjord checkpoint from Hugging Face weights (GPT2LMHeadModel, LlamaForCausalLM, "
      "MistralForCausalLM, Qwen2ForCausalLM; single or sharded safetensors) or an llm.c checkpoint (for "
      "train.init_from)");
  cli::Required(c->add_option("--from", a->from, "the weights")->type_name("PATH"));
  cli::Required(c->add_option("--out", a->out, "the new checkpoint")->type_name("DIR"));
  c->add_option("--format", a->format,
                "hf or llmc (default: llmc when the file starts with llm.c's magic, else hf)")
      ->type_name("hf|llmc");
  c->run = [c, a] {
    if (a->from.empty() || a->out.empty())
      return cli::UsageError(*c, "--from PATH and --out DIR are required");
    std::string format_name = a->format;
    if (format_name.empty()) {
      format_name = StartsWithLlmcMagic(a->from) ? "llmc" : "hf";
      std::printf("fjord import: --format %s (%s)\n", format_name.c_str(),
                  format_name == "llmc" ? "the file starts with llm.c's checkpoint magic 20240326"
                                        : "not an llm.c checkpoint; give --format llmc to insist");
    }
    StatusOr<ModelFormat> format = ParseModelFormat(format_name);
    if (!format.ok()) return Fail("import", format.status());
    Status s = ImportModel(a->from, *format, a->out);
    if (!s.ok()) return Fail("import", s);
    std::printf("fjord import: wrote checkpoint %s\n", a->out.c_str());
    return 0;
  };
}

void AddDemo(CLI::App& app) {
  auto options = std::make_shared<DemoOptions>();
  cli::Command* c = cli::AddCommand(
      app, "demo", "generate a corpus, prep it, train the embedded small model and sample from it");
  c->add_option(
       "--dir", options->dir,
       "where the corpus, shards and run go (default runs/demo; an earlier demo run there is replaced)")
      ->type_name("DIR");
  c->add_option("--set", options->overrides, "override a field of the demo's job spec")
      ->type_name("PATH=VALUE");
  c->run = [options] {
    StatusOr<proto::JobSpec> job = DemoJobSpec(*options);
    if (!job.ok()) return Fail("demo", job.status());
    return RunGatedJob("demo", *job, [&](Communicator& comm, const Tenancy& tenancy) {
      return RunDemoJob(*options, *job, comm, tenancy);
    });
  };
}

int Main(int argc, char** argv) {
  // Test overrides (FJORD_NODE_IDENTITY, FJORD_TEST_HOOK) only where the node's operator enabled them.
  if (Status overrides = CheckTestOverrides(); !overrides.ok()) {
    std::fprintf(stderr, "fjord: error: %s\n", overrides.message().c_str());
    return 1;
  }
  std::unique_ptr<CLI::App> app = cli::MakeApp();
  app->set_version_flag("--version", VersionText(), "print the version, commit, build type and libraries");
  AddTrain(*app);
  AddPlan(*app);
  AddConfig(*app);
  AddPrep(*app);
  AddLaunchCommand(*app);
  AddRunCommand(*app);
  AddAuditCommand(*app);
  AddReportCommand(*app);
  AddEval(*app);
  AddSample(*app);
  AddExport(*app);
  AddImport(*app);
  AddDemo(*app);
  AddBenchCommand(*app);
  AddNodeCommand(*app);
  AddDoctorCommand(*app);
  return cli::Run(*app, argc, argv);
}

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) { return fjord::Main(argc, argv); }
