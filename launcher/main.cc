// fjord: one executable, one subcommand per task, each defined with CLI11 (launcher/cli.h) by an
// Add...() here or next to its code. Argument errors exit 2 with the usage of the subcommand;
// failures of the task itself exit 1 with a message that says what to do.
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/text.h"
#include "launcher/audit_cmd.h"
#include "launcher/bench_cli.h"
#include "launcher/cli.h"
#include "launcher/demo.h"
#include "launcher/doctor.h"
#include "launcher/launch.h"
#include "launcher/node_cmd.h"
#include "launcher/report_cmd.h"
#include "launcher/version.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/config.h"
#include "runtime/train/inference.h"
#include "runtime/train/model_io.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace {

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

// --key FILE and --audit-log FILE of the commands that read a checkpoint outside a training job.
void AddAccess(cli::Command& c, CheckpointAccess& access) {
  c.add_option("--key", access.key_file, "the tenant's checkpoint key, to read a sealed checkpoint")
      ->type_name("FILE");
  c.add_option("--audit-log", access.audit_log, "where the opening of a sealed checkpoint is recorded")
      ->type_name("FILE");
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
  c->add_option("JOB.textproto", a->job, "the job spec")->type_name("");
  c->add_option("--set", a->overrides, "override a field of the job spec")->type_name("PATH=VALUE");
  c->add_flag("--resume", a->resume, "continue from the newest intact checkpoint");
  c->add_flag("--quiet", a->options.quiet, "print only the summary");
  c->add_flag("--json", a->options.json_lines, "print one JSON object per step");
  c->run = [c, a] {
    if (a->job.size() != 1) return cli::UsageError(*c, "give exactly one job spec (JOB.textproto)");
    std::vector<std::string> overrides = a->overrides;
    if (a->resume) overrides.push_back("checkpoint.resume=true");
    StatusOr<proto::JobSpec> job = LoadJobSpec(a->job[0], overrides);
    if (!job.ok()) return Fail("train", job.status());
    return RunGatedJob("train", *job, [&](Communicator& comm, const Tenancy& tenancy) {
      TrainOptions options = a->options;
      options.tenancy = &tenancy;
      return Train(*job, options, comm).status();
    });
  };
}

void AddPrep(CLI::App& app) {
  struct Args {
    PrepOptions options;
    std::string tokenizer = "byte", vocab, jurisdictions, sites;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "prep",
      "tokenize text into llm.c token shards (with --tenant: and a manifest of tenant, residency, sha256)");
  cli::Required(c->add_option("--input", a->options.input, "the text to tokenize")->type_name("FILE"));
  cli::Required(c->add_option("--out", a->options.out_dir, "where the shards go")->type_name("DIR"));
  cli::AddNumber(*c, "--val-fraction", a->options.val_fraction, "F",
                 "the last fraction of the text becomes val");
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
    if (options.input.empty() || options.out_dir.empty()) {
      return cli::UsageError(*c, "--input FILE and --out DIR are required");
    }
    options.allowed_jurisdictions = SplitList(a->jurisdictions);
    options.allowed_sites = SplitList(a->sites);
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
    std::printf("fjord prep: %lld train tokens in %zu shard(s), %lld val tokens in %zu shard(s) under %s\n",
                static_cast<long long>(result->train_tokens), result->train_files.size(),
                static_cast<long long>(result->val_tokens), result->val_files.size(),
                options.out_dir.c_str());
    if (!result->manifest_path.empty()) {
      std::printf("fjord prep: manifest %s: tenant %s, jurisdictions %s\n", result->manifest_path.c_str(),
                  options.tenant.c_str(), JoinList(options.allowed_jurisdictions).c_str());
    }
    return 0;
  };
}

void AddEval(CLI::App& app) {
  struct Args {
    std::string checkpoint, data;
    int batches = 0;
    CheckpointAccess access;
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "eval", "print a checkpoint's mean loss on token shards as JSON; --key reads a sealed checkpoint");
  cli::Required(c->add_option("--checkpoint", a->checkpoint, "the checkpoint")->type_name("DIR"));
  cli::Required(c->add_option("--data", a->data, "the token shards")->type_name("GLOB"));
  cli::AddNumber(*c, "--batches", a->batches, "N", "batches to evaluate (0: all)");
  AddAccess(*c, a->access);
  c->run = [c, a] {
    if (a->checkpoint.empty() || a->data.empty()) {
      return cli::UsageError(*c, "--checkpoint DIR and --data GLOB are required");
    }
    StatusOr<EvalResult> result = EvaluateCheckpoint(a->checkpoint, a->data, a->batches, a->access);
    if (!result.ok()) return Fail("eval", result.status());
    std::printf("{\"loss\": %.6f, \"tokens\": %lld, \"batches\": %d}\n", result->loss,
                static_cast<long long>(result->tokens), result->batches);
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
    std::fputs(a->options.prompt.c_str(), stdout);
    StatusOr<std::string> text = SampleCheckpoint(
        a->checkpoint, a->options,
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
    std::printf("fjord export: wrote %s\n", a->out.c_str());
    if (c->count("--key") > 0) {
      std::fprintf(stderr,
                   "fjord export: note: %s holds the sealed checkpoint's weights in plaintext; the export is "
                   "recorded in the audit log. Keep it inside the tenant's residency\n",
                   a->out.c_str());
    }
    return 0;
  };
}

void AddImport(CLI::App& app) {
  struct Args {
    std::string from, out, format = "hf";
  };
  auto a = std::make_shared<Args>();
  cli::Command* c = cli::AddCommand(
      app, "import",
      "make a fjord checkpoint from Hugging Face weights (GPT2LMHeadModel, LlamaForCausalLM, "
      "MistralForCausalLM, Qwen2ForCausalLM; single or sharded safetensors) or an llm.c checkpoint (for "
      "train.init_from)");
  cli::Required(c->add_option("--from", a->from, "the weights")->type_name("PATH"));
  cli::Required(c->add_option("--out", a->out, "the new checkpoint")->type_name("DIR"));
  c->add_option("--format", a->format, "hf (default) or llmc")->type_name("hf|llmc");
  c->run = [c, a] {
    if (a->from.empty() || a->out.empty())
      return cli::UsageError(*c, "--from PATH and --out DIR are required");
    StatusOr<ModelFormat> format = ParseModelFormat(a->format);
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
  c->add_option("--dir", options->dir, "where the corpus, shards and run go (default runs/demo)")
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
  AddPrep(*app);
  AddLaunchCommand(*app);
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
