// `fjord bench` (contract in bench_cli.h): option parsing in nccl-tests' spelling, choice of
// backend, printing on rank 0.
//
// The options keep nccl-tests' spellings (-b 8 -e 1G -f 2, also -b8 and --minbytes=8), which CLI11
// accepts as getopt does. Every rank parses the same argv and validates it before any communicator
// exists, so a bad argument ends every rank with exit code 2 and one message from each, never a job
// half started.
#include "launcher/bench_cli.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "collectives/bench/bench.h"
#include "collectives/communicator.h"
#include "common/env.h"
#include "common/file_util.h"
#include "launcher/cli.h"
#if defined(FJORD_HAVE_NCCL)
#include "collectives/nccl/nccl_communicator.h"
#endif

namespace fjord {

namespace {

constexpr char kFooter[] =
    R"(COLLECTIVE: allreduce, allgather, reducescatter, broadcast, reduce, alltoall, sendrecv (or nccl-tests' names:
all_reduce, all_reduce_perf, ...); or p2p, the
matrix of bandwidth and latency between every pair of nodes (mpirun -np N --map-by node fjord bench p2p).
Sizes take K, M, G suffixes, powers of 1024.

Exit code: 0 when every check passed, 1 when any element was wrong or the run failed, 2 for bad
arguments. docs/BENCH.md explains the columns and how bus bandwidth is derived.)";

// The options, as nccl-tests spells them; value_name nullptr: a flag.
struct Spec {
  const char* shrt;
  const char* lng;
  const char* value_name;
  const char* help;
};
constexpr Spec kSpecs[] = {
    {"-b", "--minbytes", "MIN", "smallest size (default 8); p2p: latency message (default 8)"},
    {"-e", "--maxbytes", "MAX", "largest size (default 32M); p2p: bandwidth message (default 16M)"},
    {"-f", "--stepfactor", "FACTOR", "multiply the size by FACTOR (default 2)"},
    {"-i", "--stepbytes", "STEP", "or add STEP to it (instead of -f)"},
    {"-n", "--iters", "ITERS", "timed iterations per measurement (default 20)"},
    {"-w", "--warmup_iters", "WARMUP", "untimed iterations before them (default 5; p2p 2)"},
    {"-c", "--check", "0|1", "verify each result bit for bit, count #wrong (default 1)"},
    {"-o", "--op", "sum|avg|max", "reduction (default sum)"},
    {"-d", "--datatype", "TYPE", "float, half, bfloat16, int32, uint8 (default float)"},
    {"-r", "--root", "ROOT", "root of broadcast and reduce (default 0)"},
    {"-a", "--average", "avg|min|max",
     "how the ranks' times combine (also 1, 2, 3 as in nccl-tests; default avg)"},
    {nullptr, "--repeat", "R",
     "time each loop of -n iterations R times, report the fastest (default 1; for shared machines where a "
     "descheduled rank spoils a loop)"},
    {nullptr, "--backend", "mpi|nccl", "host memory over MPI (default), or device memory over NCCL"},
    {nullptr, "--algo", "A[,A...]",
     "MPI backend: auto, mpi (the MPI library's own), ring, tree; several measure each size under each, back "
     "to "
     "back, and compare them"},
    {nullptr, "--json", "FILE", "also write the results as JSON (rank 0)"},
    {nullptr, "--per-rank", nullptr, "p2p: every rank is a node (default: the first rank on each host)"},
    {nullptr, "--threshold", "F",
     "p2p: flag bandwidth below F x median, latency above median / F (default 0.7)"},
    // nccl-tests options that fjord takes at their one meaningful value, or refuses saying why.
    {"-g", "--ngpus", "1", "GPUs per rank: 1 (fjord runs one rank per GPU; start more ranks instead)"},
    {"-t", "--nthreads", "1", "threads per rank: 1 (one thread per rank drives its device)"},
    {"-m", "--agg_iters", "1", "operations aggregated per iteration: 1"},
    {"-p", "--parallel_init", "0", "parallel communicator init: 0"},
    {"-z", "--blocking", "0", "nccl-tests' blocking mode: 0 (fjord bench has no other)"},
    {"-N", "--run_cycles", "CYCLES", "not supported: the nearest is --repeat R"},
    {"-T", "--timeout", "SECONDS", "not supported: the communicator's own timeout applies"},
    {"-C", "--report_cputime", "0", "report CPU time: 0 (fjord reports wall time)"},
};

// nccl-tests' options above: the one value fjord takes, and what the option would mean here.
struct NcclTestsOption {
  const char* lng;
  const char* accepted;
  const char* meaning;
};
constexpr NcclTestsOption kNcclTestsOptions[] = {
    {"--ngpus", "1",
     "fjord runs one rank per GPU; for N GPUs per node start N ranks per node (mpirun -np, --map-by)"},
    {"--nthreads", "1", "each rank is one process with one thread driving its device; start more ranks"},
    {"--agg_iters", "1", "fjord times one collective call per iteration"},
    {"--parallel_init", "0", "fjord creates one communicator per process"},
    {"--blocking", "0", "fjord bench times its collectives one after the other; there is no other mode"},
    {"--run_cycles", "", "fjord bench runs the sweep once; --repeat R times each loop R times instead"},
    {"--timeout", "", "fjord bench has no timeout flag; the communicator's own timeout applies"},
    {"--report_cputime", "0", "fjord bench reports wall time only"},
};

// nccl-tests' binary and collective names ("all_reduce_perf", "reduce_scatter") as fjord's ("allreduce").
std::string FjordCollectiveName(std::string name) {
  if (name.ends_with("_perf")) name.resize(name.size() - 5);
  name.erase(std::remove(name.begin(), name.end(), '_'), name.end());
  return name;
}

// What the command line gave: the collective, and each option's value by long name.
struct BenchArgs {
  std::vector<std::string> collective;
  std::map<std::string, std::string> values;
};

struct CliOptions {
  bool p2p = false;
  BenchOptions bench;
  P2pOptions p2p_options;
  bool warmup_given = false, factor_given = false, step_given = false, repeat_given = false;
  std::string backend = "mpi";
  std::vector<Algorithm> algos = {Algorithm::kAuto};
  bool algo_given = false;
  std::string json;
};

// An argument error: the message, then exit code 2.
struct UsageError {
  std::string message;
};

std::optional<size_t> ParseSize(const std::string& text) {
  if (text.empty() || text[0] < '0' || text[0] > '9') return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0) return std::nullopt;
  unsigned shift = 0;
  if (*end == 'K' || *end == 'k')
    shift = 10, ++end;
  else if (*end == 'M' || *end == 'm')
    shift = 20, ++end;
  else if (*end == 'G' || *end == 'g')
    shift = 30, ++end;
  if (*end != '\0' || (shift > 0 && v > (~0ULL >> shift))) return std::nullopt;
  return static_cast<size_t>(v << shift);
}

std::optional<long> ParseInt(const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0) return std::nullopt;
  return v;
}

std::optional<DataType> ParseDtype(const std::string& t) {
  if (t == "float" || t == "float32" || t == "fp32" || t == "f32") return DataType::kF32;
  if (t == "half" || t == "float16" || t == "fp16" || t == "f16") return DataType::kF16;
  if (t == "bfloat16" || t == "bf16") return DataType::kBF16;
  if (t == "int32" || t == "int" || t == "i32") return DataType::kI32;
  if (t == "uint8" || t == "u8") return DataType::kU8;
  return std::nullopt;
}

// Checks the parsed options; throws nothing: returns the error instead.
std::optional<UsageError> Parse(const CLI::App& command, const BenchArgs& args, CliOptions* o) {
  if (args.collective.empty()) return UsageError{"give a collective (allreduce, ..., or p2p)"};
  if (args.collective.size() > 1) return UsageError{"unexpected argument '" + args.collective[1] + "'"};
  const std::string coll = FjordCollectiveName(args.collective[0]);
  if (coll == "p2p") {
    o->p2p = true;
  } else {
    StatusOr<BenchCollective> c = ParseBenchCollective(coll);
    if (!c.ok()) return UsageError{c.status().message()};
    o->bench.collective = *c;
  }
  for (const Spec& spec : kSpecs) {
    if (command.count(spec.lng) == 0) continue;
    const std::string lng = spec.lng;
    const std::string name = spec.shrt != nullptr ? std::string(spec.shrt) + "/" + lng : lng;
    const std::string value = args.values.at(lng);
    auto bad = [&](const std::string& expected) {
      return UsageError{name + " '" + value + "' is not " + expected};
    };
    if (const auto* nt = std::find_if(std::begin(kNcclTestsOptions), std::end(kNcclTestsOptions),
                                      [&](const NcclTestsOption& t) { return lng == t.lng; });
        nt != std::end(kNcclTestsOptions)) {
      if (value == nt->accepted) continue;
      return UsageError{
          name + " " + value + " is not supported: " + nt->meaning +
          (*nt->accepted ? std::string(" (") + name + " " + nt->accepted + " is accepted)" : "")};
    }
    if (lng == "--minbytes" || lng == "--maxbytes" || lng == "--stepbytes") {
      const std::optional<size_t> v = ParseSize(value);
      if (!v) return bad("a size (a whole number of bytes, optionally with K, M or G)");
      if (lng == "--minbytes") o->bench.min_bytes = o->p2p_options.latency_bytes = *v;
      if (lng == "--maxbytes") o->bench.max_bytes = o->p2p_options.bandwidth_bytes = *v;
      if (lng == "--stepbytes") o->bench.step_bytes = *v, o->step_given = true;
    } else if (lng == "--stepfactor") {
      char* end = nullptr;
      const double f = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(f > 1.0)) return bad("a factor above 1");
      o->bench.factor = f;
      o->factor_given = true;
    } else if (lng == "--iters" || lng == "--warmup_iters" || lng == "--root" || lng == "--repeat") {
      const std::optional<long> v = ParseInt(value);
      const long min = lng == "--iters" || lng == "--repeat" ? 1 : 0;
      if (!v || *v < min || *v > 100'000'000)
        return bad(min == 1 ? "a whole number >= 1" : "a whole number >= 0");
      if (lng == "--iters") o->bench.iters = o->p2p_options.iters = static_cast<int>(*v);
      if (lng == "--warmup_iters") {
        o->bench.warmup = o->p2p_options.warmup = static_cast<int>(*v);
        o->warmup_given = true;
      }
      if (lng == "--root") o->bench.root = static_cast<int>(*v);
      if (lng == "--repeat") o->bench.repeat = static_cast<int>(*v), o->repeat_given = true;
    } else if (lng == "--check") {
      if (value == "1" || value == "on" || value == "true") {
        o->bench.check = o->p2p_options.check = true;
      } else if (value == "0" || value == "off" || value == "false") {
        o->bench.check = o->p2p_options.check = false;
      } else {
        return bad("0 or 1");
      }
    } else if (lng == "--op") {
      if (value == "sum")
        o->bench.op = ReduceOp::kSum;
      else if (value == "avg")
        o->bench.op = ReduceOp::kAvg;
      else if (value == "max")
        o->bench.op = ReduceOp::kMax;
      else if (value == "prod" || value == "min" || value == "all") {
        return UsageError{"-o " + value +
                          " is not supported: fjord's communicator reduces with sum, avg or max"};
      } else {
        return bad("sum, avg or max");
      }
    } else if (lng == "--datatype") {
      const std::optional<DataType> d = ParseDtype(value);
      if (!d) return bad("a data type (float, half, bfloat16, int32, uint8)");
      o->bench.dtype = *d;
    } else if (lng == "--average") {
      if (value == "avg" || value == "1")
        o->bench.combine = TimeCombine::kAvg;
      else if (value == "min" || value == "2")
        o->bench.combine = TimeCombine::kMin;
      else if (value == "max" || value == "3")
        o->bench.combine = TimeCombine::kMax;
      else
        return bad("avg, min or max (1, 2 or 3)");
    } else if (lng == "--backend") {
      if (value != "mpi" && value != "nccl") return bad("mpi or nccl");
      o->backend = value;
    } else if (lng == "--algo") {
      o->algos.clear();
      o->algo_given = true;
      for (size_t pos = 0; pos <= value.size();) {
        const size_t comma = std::min(value.find(',', pos), value.size());
        StatusOr<Algorithm> a = ParseAlgorithm(value.substr(pos, comma - pos));
        if (!a.ok()) return UsageError{"--algo: " + a.status().message()};
        for (Algorithm seen : o->algos) {
          if (seen == *a) return UsageError{"--algo lists " + std::string(AlgorithmName(*a)) + " twice"};
        }
        o->algos.push_back(*a);
        pos = comma + 1;
      }
    } else if (lng == "--json") {
      if (value.empty()) return bad("a file name");
      o->json = value;
    } else if (lng == "--per-rank") {
      o->p2p_options.per_rank = true;
    } else if (lng == "--threshold") {
      char* end = nullptr;
      const double t = std::strtod(value.c_str(), &end);
      if (value.empty() || *end != '\0' || !(t > 0 && t < 1)) return bad("a fraction between 0 and 1");
      o->p2p_options.threshold = t;
    }
  }
  if (o->factor_given && o->step_given) return UsageError{"give -f (factor) or -i (increment), not both"};
  if (o->step_given) {
    if (o->bench.step_bytes == 0) return UsageError{"-i must be at least 1 byte"};
    o->bench.factor = 0;
  }
  if (!o->p2p) {
    if (o->bench.min_bytes == 0) return UsageError{"-b must be at least 1 byte"};
    if (o->bench.max_bytes < o->bench.min_bytes) {
      return UsageError{"-e " + std::to_string(o->bench.max_bytes) + " is below -b " +
                        std::to_string(o->bench.min_bytes)};
    }
  } else {
    if (o->p2p_options.latency_bytes == 0 || o->p2p_options.bandwidth_bytes == 0) {
      return UsageError{"p2p message sizes (-b, -e) must be at least 1 byte"};
    }
    if (!o->warmup_given) o->p2p_options.warmup = 2;
  }
  if (o->backend == "nccl" && o->algo_given && (o->algos.size() != 1 || o->algos[0] != Algorithm::kAuto)) {
    return UsageError{"--algo chooses among the MPI backend's algorithms; NCCL picks its own (drop --algo)"};
  }
  if (o->p2p && o->algos.size() > 1) return UsageError{"p2p measures one communicator: give one --algo"};
  if (o->p2p && o->repeat_given)
    return UsageError{"--repeat applies to the collectives; p2p reports medians already"};
  // The root must be a rank; the world size is known from the launcher before MPI starts.
  const int world = RankInfoFromEnvironment().world_size;
  if (!o->p2p && BenchHasRoot(o->bench.collective) && (o->bench.root < 0 || o->bench.root >= world)) {
    return UsageError{"-r " + std::to_string(o->bench.root) + " is not a rank: the job has " +
                      std::to_string(world) + " rank(s), so use -r 0.." + std::to_string(world - 1)};
  }
  if (!o->p2p && BenchHasReduction(o->bench.collective) && o->bench.op == ReduceOp::kAvg &&
      o->bench.dtype == DataType::kU8) {
    return UsageError{"-o avg on uint8 is refused (a wrapped sum has no meaningful average): use sum or max"};
  }
  return std::nullopt;
}

// Reads FJORD_TEST_HOOK bench_corrupt=RANK:INDEX.
std::optional<UsageError> ReadCorruptHook(BenchOptions* o) {
  std::optional<std::string> hook = TestHook("bench_corrupt");
  if (!hook) return std::nullopt;
  const size_t colon = hook->find(':');
  const std::optional<long> rank = ParseInt(hook->substr(0, colon));
  const std::optional<size_t> index =
      colon == std::string::npos ? std::nullopt : ParseSize(hook->substr(colon + 1));
  if (!rank || *rank < 0 || !index) {
    return UsageError{"FJORD_TEST_HOOK bench_corrupt='" + *hook +
                      "' is not RANK:INDEX (e.g. bench_corrupt=1:0)"};
  }
  o->corrupt_rank = static_cast<int>(*rank);
  o->corrupt_index = *index;
  return std::nullopt;
}

// --json goes where the user says, as a shell redirection would put it: a regular file, or a device
// or pipe (/dev/stdout), written in place rather than replaced (a rename would replace the device).
// false with errno set when it cannot be written.
bool WriteFile(const std::string& path, const std::string& text) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  return fd.get() >= 0 && WriteAll(fd.get(), text.data(), text.size(), path).ok() && fd.Close();
}

// Reports a failure. Every rank reaches its own copy of a failure in a collective; one that only
// some ranks see (a timeout names the others) ends the job, so no rank waits for the rest.
int Fail(const Status& status, Communicator* comm) {
  if (comm != nullptr && comm->size() > 1) {
    comm->Abort("fjord bench: error on rank " + std::to_string(comm->rank()) + ": " + status.message(), 1);
  }
  std::fprintf(stderr, "fjord bench: error: %s\n", status.message().c_str());
  return 1;
}

struct Backend {
  std::vector<std::unique_ptr<Communicator>> owned;  // destroyed in reverse: NCCL before its bootstrap
  std::vector<BenchTarget> targets;
  Communicator* control = nullptr;
  std::unique_ptr<BenchMemory> memory;
  std::string name;

  ~Backend() {
    targets.clear();
    memory.reset();
    while (!owned.empty()) owned.pop_back();
  }
};

Status MakeBackend(const CliOptions& o, Backend* b) {
  if (o.backend == "nccl") {
#if defined(FJORD_HAVE_NCCL)
    FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> bootstrap, CreateCommunicator(CommOptions{}));
    b->owned.push_back(std::move(bootstrap));
    b->control = b->owned.back().get();
    FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> nccl,
                           CreateNcclCommunicator(CommOptions{}, *b->control));
    b->owned.push_back(std::move(nccl));
    b->targets.push_back({"nccl", b->owned.back().get()});
    FJORD_ASSIGN_OR_RETURN(b->memory, CreateNcclBenchMemory(*b->owned.back()));
    b->name = "nccl";
    return OkStatus();
#else
    return FailedPrecondition(
        "this fjord was built without NCCL (it needs the CUDA toolkit and nccl.h / libnccl at configure "
        "time); "
        "rebuild on a GPU node, or use --backend mpi");
#endif
  }
  for (Algorithm a : o.algos) {
    CommOptions options;
    options.algorithm = a;
    FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm, CreateCommunicator(options));
    b->owned.push_back(std::move(comm));
    b->targets.push_back({AlgorithmName(a), b->owned.back().get()});
  }
  b->control = b->owned.front().get();
  b->memory = CreateHostBenchMemory();
  b->name = b->control->backend();
  return OkStatus();
}

int RunP2pCommand(const CliOptions& o, Backend& b) {
  Communicator& control = *b.control;
  StatusOr<BenchContext> context = GatherBenchContext(control, *b.memory, b.name);
  if (!context.ok()) return Fail(context.status(), &control);
  StatusOr<P2pResult> result = RunP2p(o.p2p_options, *b.targets[0].comm, control, *b.memory);
  if (!result.ok()) {
    // Fewer than two nodes is the same verdict on every rank: no need to abort the job.
    if (result.status().code() == StatusCode::kFailedPrecondition) {
      if (control.rank() == 0)
        std::fprintf(stderr, "fjord bench p2p: error: %s\n", result.status().message().c_str());
      return 1;
    }
    return Fail(result.status(), &control);
  }
  if (control.rank() == 0) {
    std::fputs(FormatP2p(o.p2p_options, *context, *result).c_str(), stdout);
    std::fflush(stdout);
    if (!o.json.empty() && !WriteFile(o.json, P2pJson(o.p2p_options, *context, *result))) {
      std::fprintf(stderr, "fjord bench p2p: error: cannot write --json %s: %s\n", o.json.c_str(),
                   std::strerror(errno));
      return 1;
    }
  }
  if (result->wrong_total > 0) {
    if (control.rank() == 0) {
      std::fprintf(stderr, "fjord bench p2p: %lld byte(s) arrived wrong (see the wrong matrix in --json)\n",
                   result->wrong_total);
    }
    return 1;
  }
  return 0;
}

int RunSweepCommand(const CliOptions& o, Backend& b) {
  Communicator& control = *b.control;
  const bool root = control.rank() == 0;
  StatusOr<BenchContext> context = GatherBenchContext(control, *b.memory, b.name);
  if (!context.ok()) return Fail(context.status(), &control);
  const bool streaming = b.targets.size() == 1;
  if (root && streaming) {
    std::fputs(FormatBenchHeader(o.bench, *context, b.targets[0].label).c_str(), stdout);
    std::fflush(stdout);
  }
  StatusOr<std::vector<BenchTable>> tables =
      RunBenchSweep(o.bench, b.targets, control, *b.memory, [&](size_t, const BenchRow& row) {
        if (root && streaming) {
          std::fputs(FormatBenchRow(o.bench, row).c_str(), stdout);
          std::fflush(stdout);
        }
      });
  if (!tables.ok()) return Fail(tables.status(), &control);
  long long wrong = 0;
  for (const BenchTable& t : *tables) wrong += t.wrong;
  if (root) {
    for (const BenchTable& t : *tables) {
      if (!streaming) {
        std::fputs(FormatBenchHeader(o.bench, *context, t.label).c_str(), stdout);
        for (const BenchRow& row : t.rows) std::fputs(FormatBenchRow(o.bench, row).c_str(), stdout);
      }
      std::fputs(FormatBenchFooter(t).c_str(), stdout);
    }
    std::fputs(FormatBenchComparison(*tables).c_str(), stdout);
    std::fflush(stdout);
    if (!o.json.empty() && !WriteFile(o.json, BenchJson(o.bench, *context, *tables))) {
      std::fprintf(stderr, "fjord bench: error: cannot write --json %s: %s\n", o.json.c_str(),
                   std::strerror(errno));
      return 1;
    }
    if (wrong > 0) {
      std::fprintf(
          stderr,
          "fjord bench %s: %lld element(s) wrong (the #wrong column): the interconnect or the collective "
          "corrupted data\n",
          BenchCollectiveName(o.bench.collective), wrong);
    }
  }
  return wrong > 0 ? 1 : 0;
}

int RunBench(const cli::Command& command, const BenchArgs& args) {
  CliOptions o;
  std::optional<UsageError> error = Parse(command, args, &o);
  if (!error && !o.p2p) error = ReadCorruptHook(&o.bench);
  if (error) return cli::UsageError(command, error->message);
  Backend backend;
  const Status made = MakeBackend(o, &backend);
  if (!made.ok()) return Fail(made, backend.control);
  return o.p2p ? RunP2pCommand(o, backend) : RunSweepCommand(o, backend);
}

}  // namespace

void AddBenchCommand(CLI::App& app) {
  cli::Command* c = cli::AddCommand(app, "bench",
                                    "interconnect benchmark in the nccl-tests format (time, algbw, busbw, "
                                    "#wrong), or a p2p matrix that flags "
                                    "slow links");
  c->launcher = "mpirun -np N ";
  auto args = std::make_shared<BenchArgs>();
  c->add_option("COLLECTIVE", args->collective, "what to measure (below)")->type_name("");
  for (const Spec& s : kSpecs) {
    const std::string names = (s.shrt != nullptr ? std::string(s.shrt) + "," : "") + s.lng;
    std::string& value = args->values[s.lng];
    if (s.value_name == nullptr) {
      c->add_flag(names, value, s.help);
    } else {
      c->add_option(names, value, s.help)->type_name(s.value_name);
    }
  }
  c->footer(kFooter);
  c->run = [c, args] { return RunBench(*c, *args); };
}

}  // namespace fjord
