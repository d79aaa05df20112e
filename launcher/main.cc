// fjord: one executable, one subcommand per task. Argument errors exit 2 with the usage of the
// subcommand; failures of the task itself exit 1 with a message that says what to do.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "launcher/bench_cli.h"
#include "launcher/demo.h"
#include "launcher/audit_cmd.h"
#include "launcher/launch.h"
#include "runtime/train/config.h"
#include "runtime/data/data.h"
#include "runtime/data/bpe_tokenizer.h"
#include "runtime/train/inference.h"
#include "runtime/train/model_io.h"
#include "runtime/data/tokenizer.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace {

struct Command {
  const char* name;
  const char* usage;
  const char* summary;
  std::vector<std::string> value_flags;  // flags that take a value (--flag VALUE or --flag=VALUE)
  std::vector<std::string> bool_flags;
  int (*run)(const struct Args&);
  std::vector<std::string> optional_value_flags = {};  // --flag or --flag=VALUE (never --flag VALUE)
};

struct Args {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;

  bool Has(const std::string& f) const { return flags.count(f) > 0; }
  std::string Get(const std::string& f, const std::string& fallback = "") const {
    auto it = flags.find(f);
    return it == flags.end() ? fallback : it->second;
  }
  std::vector<std::string> All(const std::string& f) const {
    std::vector<std::string> out;
    for (auto [it, end] = flags.equal_range(f); it != end; ++it) out.push_back(it->second);
    return out;
  }
};

int Fail(const char* command, const Status& status) {
  std::fprintf(stderr, "fjord %s: error: %s\n", command, status.message().c_str());
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

// Parses a number flag strictly; on error prints the flag and the expected type.
template <typename T>
bool ParseNumber(const char* command, const std::string& flag, const std::string& text, T* out) {
  char* end = nullptr;
  errno = 0;
  if constexpr (std::is_floating_point_v<T>) {
    *out = static_cast<T>(std::strtod(text.c_str(), &end));
  } else if constexpr (std::is_unsigned_v<T>) {
    *out = static_cast<T>(std::strtoull(text.c_str(), &end, 10));
  } else {
    *out = static_cast<T>(std::strtoll(text.c_str(), &end, 10));
  }
  if (text.empty() || *end != '\0' || errno != 0) {
    std::fprintf(stderr, "fjord %s: error: %s '%s' is not a %s\n", command, flag.c_str(), text.c_str(),
                 std::is_floating_point_v<T> ? "number" : "whole number");
    return false;
  }
  return true;
}

// Runs `body` for `job` behind the gates, in their order (docs/SOVEREIGNTY.md): gate 2 (this
// node's identity, before any data, communicator or GPU; a refusal exits here, and under mpirun that
// ends the other ranks, still in MPI_Init), the communicator, the tenancy context (rank 0 audits;
// its data policy is what every loader of `body` gets), then `body`, then the job_end record.
int RunGatedJob(const char* command, const proto::JobSpec& job,
                const std::function<Status(Communicator&, const Tenancy&)>& body) {
  StatusOr<RankGateResult> gate = RankGate(job);
  if (!gate.ok()) return Fail(command, gate.status());
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptionsFor(job));
  if (!comm.ok()) return Fail(command, comm.status());
  StatusOr<std::unique_ptr<Tenancy>> tenancy = Tenancy::Start(job, *gate, **comm);
  if (!tenancy.ok()) return FailAll(command, tenancy.status(), **comm);
  const Status result = body(**comm, **tenancy);
  (void)(*tenancy)->RecordJobEnd(result);
  if (!result.ok()) return FailAll(command, result, **comm);
  return 0;
}

int RunTrain(const Args& args) {
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "fjord train: error: give exactly one job spec (JOB.textproto)\n");
    return 2;
  }
  std::vector<std::string> overrides = args.All("--set");
  if (args.Has("--resume")) overrides.push_back("checkpoint.resume=true");
  StatusOr<proto::JobSpec> job = LoadJobSpec(args.positional[0], overrides);
  if (!job.ok()) return Fail("train", job.status());
  return RunGatedJob("train", *job, [&](Communicator& comm, const Tenancy& tenancy) {
    TrainOptions options;
    options.quiet = args.Has("--quiet");
    options.json_lines = args.Has("--json");
    options.tenancy = &tenancy;
    return Train(*job, options, comm).status();
  });
}

int RunPrep(const Args& args) {
  PrepOptions options;
  options.input = args.Get("--input");
  options.out_dir = args.Get("--out");
  if (options.input.empty() || options.out_dir.empty()) {
    std::fprintf(stderr, "fjord prep: error: --input FILE and --out DIR are required\n");
    return 2;
  }
  options.tenant = args.Get("--tenant");
  options.allowed_jurisdictions = SplitList(args.Get("--jurisdiction"));
  options.allowed_sites = SplitList(args.Get("--site"));
  if (args.Has("--val-fraction") &&
      !ParseNumber("prep", "--val-fraction", args.Get("--val-fraction"), &options.val_fraction)) {
    return 2;
  }
  const std::string tokenizer_name = args.Get("--tokenizer", "byte");
  if (tokenizer_name == "gpt2" && !args.Has("--vocab")) {
    std::fprintf(stderr, "fjord prep: error: --tokenizer gpt2 needs --vocab DIR (vocab.json + merges.txt, or "
                         "encoder.json + vocab.bpe)\n");
    return 2;
  }
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      tokenizer_name == "gpt2" ? MakeGpt2Tokenizer(args.Get("--vocab")) : MakeTokenizer(tokenizer_name);
  if (!tokenizer.ok()) return Fail("prep", tokenizer.status());
  StatusOr<PrepResult> result = PrepareShards(options, **tokenizer);
  if (!result.ok()) return Fail("prep", result.status());
  std::printf("fjord prep: %lld train tokens in %zu shard(s), %lld val tokens in %zu shard(s) under %s\n",
              static_cast<long long>(result->train_tokens), result->train_files.size(),
              static_cast<long long>(result->val_tokens), result->val_files.size(), options.out_dir.c_str());
  if (!result->manifest_path.empty()) {
    std::printf("fjord prep: manifest %s: tenant %s, jurisdictions %s\n", result->manifest_path.c_str(),
                options.tenant.c_str(), JoinList(options.allowed_jurisdictions).c_str());
  }
  return 0;
}

// --key FILE and --audit-log FILE of the commands that read a checkpoint outside a training job.
CheckpointAccess AccessFrom(const Args& args) {
  CheckpointAccess access;
  access.key_file = args.Get("--key");
  access.audit_log = args.Get("--audit-log");
  return access;
}

int RunEval(const Args& args) {
  const std::string checkpoint = args.Get("--checkpoint"), data = args.Get("--data");
  if (checkpoint.empty() || data.empty()) {
    std::fprintf(stderr, "fjord eval: error: --checkpoint DIR and --data GLOB are required\n");
    return 2;
  }
  int batches = 0;
  if (args.Has("--batches") && !ParseNumber("eval", "--batches", args.Get("--batches"), &batches)) return 2;
  StatusOr<EvalResult> result = EvaluateCheckpoint(checkpoint, data, batches, AccessFrom(args));
  if (!result.ok()) return Fail("eval", result.status());
  std::printf("{\"loss\": %.6f, \"tokens\": %lld, \"batches\": %d}\n", result->loss,
              static_cast<long long>(result->tokens), result->batches);
  return 0;
}

int RunSample(const Args& args) {
  SampleOptions options;
  const std::string checkpoint = args.Get("--checkpoint");
  if (checkpoint.empty()) {
    std::fprintf(stderr, "fjord sample: error: --checkpoint DIR is required\n");
    return 2;
  }
  options.prompt = args.Get("--prompt");
  options.vocab_dir = args.Get("--vocab");
  if ((args.Has("--tokens") && !ParseNumber("sample", "--tokens", args.Get("--tokens"), &options.tokens)) ||
      (args.Has("--temperature") &&
       !ParseNumber("sample", "--temperature", args.Get("--temperature"), &options.temperature)) ||
      (args.Has("--top-k") && !ParseNumber("sample", "--top-k", args.Get("--top-k"), &options.top_k)) ||
      (args.Has("--top-p") && !ParseNumber("sample", "--top-p", args.Get("--top-p"), &options.top_p)) ||
      (args.Has("--seed") && !ParseNumber("sample", "--seed", args.Get("--seed"), &options.seed))) {
    return 2;
  }
  std::fputs(options.prompt.c_str(), stdout);
  StatusOr<std::string> text = SampleCheckpoint(
      checkpoint, options,
      [](const std::string& piece) {
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      },
      AccessFrom(args));
  std::fputc('\n', stdout);
  if (!text.ok()) return Fail("sample", text.status());
  return 0;
}

int RunExport(const Args& args) {
  const std::string checkpoint = args.Get("--checkpoint"), out = args.Get("--out");
  if (checkpoint.empty() || out.empty()) {
    std::fprintf(stderr, "fjord export: error: --checkpoint DIR and --out PATH are required\n");
    return 2;
  }
  StatusOr<ModelFormat> format = ParseModelFormat(args.Get("--format", "hf"));
  if (!format.ok()) return Fail("export", format.status());
  Status s = ExportModel(checkpoint, out, *format, AccessFrom(args));
  if (!s.ok()) return Fail("export", s);
  std::printf("fjord export: wrote %s\n", out.c_str());
  if (args.Has("--key")) {
    std::fprintf(stderr, "fjord export: note: %s holds the sealed checkpoint's weights in plaintext; the export is "
                         "recorded in the audit log. Keep it inside the tenant's residency\n", out.c_str());
  }
  return 0;
}

int RunImport(const Args& args) {
  const std::string from = args.Get("--from"), out = args.Get("--out");
  if (from.empty() || out.empty()) {
    std::fprintf(stderr, "fjord import: error: --from PATH and --out DIR are required\n");
    return 2;
  }
  StatusOr<ModelFormat> format = ParseModelFormat(args.Get("--format", "hf"));
  if (!format.ok()) return Fail("import", format.status());
  Status s = ImportModel(from, *format, out);
  if (!s.ok()) return Fail("import", s);
  std::printf("fjord import: wrote checkpoint %s\n", out.c_str());
  return 0;
}

int RunDemo(const Args& args) {
  DemoOptions options;
  options.dir = args.Get("--dir", options.dir);
  options.overrides = args.All("--set");
  StatusOr<proto::JobSpec> job = DemoJobSpec(options);
  if (!job.ok()) return Fail("demo", job.status());
  return RunGatedJob("demo", *job, [&](Communicator& comm, const Tenancy& tenancy) {
    return RunDemoJob(options, *job, comm, tenancy);
  });
}

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"train", "fjord train JOB.textproto [--set PATH=VALUE]... [--resume] [--quiet | --json]",
       "train a model as the job spec says; --resume continues from the newest intact checkpoint", {"--set"},
       {"--quiet", "--json", "--resume"}, RunTrain},
      {"prep",
       "fjord prep --input FILE --out DIR [--val-fraction F] [--tokenizer byte|gpt2 --vocab DIR] "
       "[--tenant ID --jurisdiction CC[,CC] [--site S[,S]]]",
       "tokenize text into llm.c token shards (with --tenant: and a manifest of tenant, residency, sha256)",
       {"--input", "--out", "--val-fraction", "--tokenizer", "--vocab", "--tenant", "--jurisdiction", "--site"}, {},
       RunPrep},
      {"launch", kLaunchUsage, kLaunchSummary, LaunchValueFlags(), LaunchBoolFlags(),
       [](const Args& a) { return RunLaunchCommand(a.positional, a.flags); }, LaunchOptionalValueFlags()},
      {"audit", kAuditUsage, kAuditSummary, AuditValueFlags(), {}, [](const Args& a) { return RunAuditCommand(a.positional, a.flags); }},
      {"eval", "fjord eval --checkpoint DIR --data GLOB [--batches N] [--key FILE] [--audit-log FILE]",
       "print a checkpoint's mean loss on token shards as JSON; --key reads a sealed checkpoint",
       {"--checkpoint", "--data", "--batches", "--key", "--audit-log"}, {}, RunEval},
      {"sample",
       "fjord sample --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--top-p P] "
       "[--seed S] [--vocab DIR] [--key FILE] [--audit-log FILE]",
       "generate text from a checkpoint, streamed as it is produced; --key reads a sealed checkpoint",
       {"--checkpoint", "--prompt", "--tokens", "--temperature", "--top-k", "--top-p", "--seed", "--vocab", "--key",
        "--audit-log"},
       {}, RunSample},
      {"export",
       "fjord export --checkpoint DIR --out PATH [--format hf|llmc|llmc-bf16] [--key FILE] [--audit-log FILE]",
       "write a checkpoint's weights for Hugging Face (PATH/model.safetensors + config.json) or llm.c; a sealed "
       "checkpoint needs --key, and its plaintext export is audited",
       {"--checkpoint", "--out", "--format", "--key", "--audit-log"}, {}, RunExport},
      {"import", "fjord import --from PATH --out DIR [--format hf|llmc]",
       "make a fjord checkpoint from Hugging Face GPT-2 weights or an llm.c checkpoint (for train.init_from)",
       {"--from", "--out", "--format"}, {}, RunImport},
      {"demo", "fjord demo [--dir DIR] [--set PATH=VALUE]...",
       "generate a corpus, prep it, train the embedded small model and sample from it", {"--dir", "--set"}, {},
       RunDemo},
  };
  return commands;
}

void PrintHelp(FILE* out) {
  std::fprintf(out, "fjord: data-parallel GPT training that keeps every tenant inside its jurisdictions\n\n");
  for (const Command& c : Commands()) std::fprintf(out, "  %-8s %s\n           %s\n", c.name, c.summary, c.usage);
  std::fprintf(out, "  %-8s %s\n           %s\n", "bench", kBenchSummary, kBenchUsage);
}

int Main(int argc, char** argv) {
  // Test overrides (FJORD_NODE_IDENTITY, FJORD_TEST_HOOK) only where the node's operator enabled them.
  if (Status overrides = CheckTestOverrides(); !overrides.ok()) {
    std::fprintf(stderr, "fjord: error: %s\n", overrides.message().c_str());
    return 1;
  }
  if (argc < 2 || std::string(argv[1]) == "help" || std::string(argv[1]) == "--help" ||
      std::string(argv[1]) == "-h") {
    PrintHelp(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  if (name == "bench") return RunBenchCommand(argc - 2, argv + 2);
  const Command* command = nullptr;
  for (const Command& c : Commands()) {
    if (name == c.name) command = &c;
  }
  if (command == nullptr) {
    std::fprintf(stderr, "fjord: error: unknown command '%s'\n\n", name.c_str());
    PrintHelp(stderr);
    return 2;
  }
  Args args;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: %s\n", command->usage);
      return 0;
    }
    if (!a.starts_with("--")) {
      args.positional.push_back(a);
      continue;
    }
    std::string value;
    bool has_value = false;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    const auto& vf = command->value_flags;
    const auto& bf = command->bool_flags;
    if (std::find(vf.begin(), vf.end(), a) != vf.end()) {
      if (!has_value) {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "fjord %s: error: %s needs a value\nusage: %s\n", command->name, a.c_str(),
                       command->usage);
          return 2;
        }
        value = argv[++i];
      }
      args.flags.emplace(a, value);
    } else if ((std::find(bf.begin(), bf.end(), a) != bf.end() && !has_value) ||
               std::find(command->optional_value_flags.begin(), command->optional_value_flags.end(), a) !=
                   command->optional_value_flags.end()) {
      args.flags.emplace(a, value);
    } else {
      std::fprintf(stderr, "fjord %s: error: unknown option '%s'\nusage: %s\n", command->name, argv[i],
                   command->usage);
      return 2;
    }
  }
  return command->run(args);
}

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) { return fjord::Main(argc, argv); }
