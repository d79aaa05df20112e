// A stand-in for the fjord binary in the tenancy tests: the same entry points, called in the same
// order as `fjord launch`, `fjord train`, `fjord prep` and `fjord audit` call them once wired
// (docs/SOVEREIGNTY.md, "Wiring"), but `train` stops after the data gate instead of training. It
// lets the gates be tested across the netns cluster on their own, and pins down the call order.
//
//   tenancy_driver launch JOB --inventory INV --np N ...   (AddLaunchCommand; ranks run this driver)
//   tenancy_driver train JOB [--set P=V]...                (RankGate, communicator, Tenancy::Start,
//                                                           DataLoader::Open with the data policy,
//                                                           one Fill: the first shard read)
//   tenancy_driver prep --input F --out D [--tenant T --jurisdiction CC[,CC] --site S]
//   tenancy_driver audit verify LOG                        (AddAuditCommand)
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "collectives/communicator.h"
#include "common/host.h"
#include "common/text.h"
#include "launcher/audit_cmd.h"
#include "launcher/cli.h"
#include "launcher/launch.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/config.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace {

struct Parsed {
  std::vector<std::string> positional;
  std::multimap<std::string, std::string> flags;
};

Parsed Parse(int argc, char** argv, int first, const std::vector<std::string>& value_flags) {
  Parsed p;
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (!a.starts_with("--")) {
      p.positional.push_back(a);
      continue;
    }
    std::string value;
    if (size_t eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (std::find(value_flags.begin(), value_flags.end(), a) != value_flags.end() && i + 1 < argc) {
      value = argv[++i];
    }
    p.flags.emplace(a, value);
  }
  return p;
}

std::vector<std::string> All(const Parsed& p, const std::string& f) {
  std::vector<std::string> out;
  for (auto [it, end] = p.flags.equal_range(f); it != end; ++it) out.push_back(it->second);
  return out;
}

int Train(const Parsed& args) {
  if (args.positional.size() != 1) return 2;
  StatusOr<proto::JobSpec> job = LoadJobSpec(args.positional[0], All(args, "--set"));
  if (!job.ok()) {
    std::fprintf(stderr, "fjord train: error: %s\n", job.status().message().c_str());
    return 1;
  }
  // Gate 2, before any data, communicator or GPU.
  StatusOr<RankGateResult> gate = RankGate(*job);
  if (!gate.ok()) {
    std::fprintf(stderr, "fjord train: error: %s\n", gate.status().message().c_str());
    return 1;
  }
  StatusOr<std::unique_ptr<Communicator>> comm = CreateCommunicator(CommOptionsFor(*job));
  if (!comm.ok()) {
    std::fprintf(stderr, "fjord train: error: %s\n", comm.status().message().c_str());
    return 1;
  }
  auto fail_all = [&](const Status& s) {
    if ((*comm)->size() == 1) {
      std::fprintf(stderr, "fjord train: error: %s\n", s.message().c_str());
      return 1;
    }
    (*comm)->Abort("fjord train: error on rank " + std::to_string((*comm)->rank()) + ": " + s.message(), 1);
    return 1;
  };
  StatusOr<std::unique_ptr<Tenancy>> tenancy = Tenancy::Start(*job, *gate, **comm);
  if (!tenancy.ok()) return fail_all(tenancy.status());
  // Gate 3 for data.
  StatusOr<DataLoader> loader =
      DataLoader::Open(job->data().train(), "data.train", job->model().vocab_size(), TrainSeqLen(*job),
                       job->train().seed(), true, &(*tenancy)->data_policy());
  if (!loader.ok()) {
    (void)(*tenancy)->RecordJobEnd(loader.status());
    return fail_all(loader.status());
  }
  // The loader streams: the first batch reads (and verifies, and audits) the shard it needs, as the
  // first training step would.
  const int T = TrainSeqLen(*job);
  std::vector<int32_t> inputs(T), targets(T);
  if (Status read = loader->Fill(0, 1, inputs.data(), targets.data()); !read.ok()) {
    (void)(*tenancy)->RecordJobEnd(read);
    return fail_all(read);
  }
  std::printf("tenancy_driver: rank %d of %d on %s: %llu train tokens\n", (*comm)->rank(), (*comm)->size(),
              ThisHostname().c_str(), static_cast<unsigned long long>(loader->num_tokens()));
  std::fflush(stdout);
  Status end = (*tenancy)->RecordJobEnd(OkStatus());
  if (!end.ok()) return fail_all(end);
  if ((*comm)->size() > 1) (void)(*comm)->Barrier();
  return 0;
}

int Prep(const Parsed& args) {
  PrepOptions options;
  auto get = [&](const char* f) {
    auto it = args.flags.find(f);
    return it == args.flags.end() ? std::string() : it->second;
  };
  options.input = get("--input");
  options.out_dir = get("--out");
  options.val_fraction = 0.1;
  options.tenant = get("--tenant");
  options.allowed_jurisdictions = SplitList(get("--jurisdiction"));
  options.allowed_sites = SplitList(get("--site"));
  StatusOr<std::unique_ptr<Tokenizer>> tokenizer = MakeTokenizer("byte");
  if (!tokenizer.ok()) return 1;
  StatusOr<PrepResult> result = PrepareShards(options, **tokenizer);
  if (!result.ok()) {
    std::fprintf(stderr, "fjord prep: error: %s\n", result.status().message().c_str());
    return 1;
  }
  std::printf("fjord prep: %lld train tokens, manifest %s\n", static_cast<long long>(result->train_tokens),
              result->manifest_path.empty() ? "(none)" : result->manifest_path.c_str());
  return 0;
}

int Main(int argc, char** argv) {
  if (argc < 2) return 2;
  const std::string cmd = argv[1];
  if (cmd == "launch" || cmd == "audit") {  // the fjord binary's own command line for these
    std::unique_ptr<CLI::App> app = cli::MakeApp();
    AddLaunchCommand(*app);
    AddAuditCommand(*app);
    return cli::Run(*app, argc, argv);
  }
  if (cmd == "train") return Train(Parse(argc, argv, 2, {"--set"}));
  if (cmd == "prep")
    return Prep(Parse(argc, argv, 2, {"--input", "--out", "--tenant", "--jurisdiction", "--site"}));
  std::fprintf(stderr, "tenancy_driver: unknown command %s\n", cmd.c_str());
  return 2;
}

}  // namespace
}  // namespace fjord

int main(int argc, char** argv) { return fjord::Main(argc, argv); }
