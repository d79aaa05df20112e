#include "launcher/demo.h"

#include <cstdio>
#include <filesystem>
#include <random>

#include "common/file_util.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer.h"
#include "runtime/train/config.h"
#include "runtime/train/inference.h"
#include "runtime/train/trainer.h"

namespace fjord {
namespace fs = std::filesystem;

const char kDemoJob[] = R"pb(
  model { n_layer: 2 n_head: 4 n_embd: 128 seq_len: 64 vocab_size: 256 }
  train {
    micro_batch: 16
    global_batch: 32
    steps: 200
    seed: 1337
    lr: 3e-3
    warmup_steps: 20
    min_lr: 3e-4
    weight_decay: 0.1
    grad_clip: 1.0
    eval_every: 50
    eval_batches: 8
    log_every: 25
  }
)pb";

std::string GenerateDemoCorpus(size_t bytes, uint64_t seed) {
  static const char* kAdjectives[] = {"quiet", "cold", "green", "old", "bright", "deep", "small", "swift"};
  static const char* kNouns[] = {"fjord",    "river", "turbine", "valley",
                                 "engineer", "model", "winter",  "boat"};
  static const char* kVerbs[] = {"feeds",   "crosses", "powers", "follows",
                                 "watches", "trains",  "warms",  "carries"};
  static const char* kEndings[] = {".", ".", ".", "!", " at dawn.", " in the north."};
  std::mt19937_64 rng(seed);
  auto pick = [&rng](const auto& words) { return words[rng() % std::size(words)]; };
  std::string text;
  text.reserve(bytes + 128);
  while (text.size() < bytes) {
    std::string sentence = std::string("the ") + pick(kAdjectives) + " " + pick(kNouns) + " " + pick(kVerbs) +
                           " the " + pick(kAdjectives) + " " + pick(kNouns) + pick(kEndings);
    sentence[0] = static_cast<char>(sentence[0] - 'a' + 'A');
    text += sentence;
    text += rng() % 4 == 0 ? "\n" : " ";
  }
  return text;
}

// Writes the corpus and its shards under `dir`.
Status PrepareDemoData(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Internal("cannot create " + dir.string() + ": " + ec.message());
  const std::string corpus = (dir / "corpus.txt").string();
  const std::string text = GenerateDemoCorpus(400'000, 20261128);
  FJORD_RETURN_IF_ERROR(WriteFileAtomic(corpus, {{text.data(), text.size()}}));
  PrepOptions prep;
  prep.input = corpus;
  prep.out_dir = (dir / "data").string();
  prep.val_fraction = 0.1;
  std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer();
  FJORD_ASSIGN_OR_RETURN(PrepResult shards, PrepareShards(prep, *tokenizer));
  std::printf("fjord demo: corpus %s -> %lld train / %lld val tokens in %s\n", corpus.c_str(),
              static_cast<long long>(shards.train_tokens), static_cast<long long>(shards.val_tokens),
              prep.out_dir.c_str());
  return OkStatus();
}

StatusOr<proto::JobSpec> DemoJobSpec(const DemoOptions& options) {
  const fs::path dir = options.dir;
  std::vector<std::string> overrides = {"data.train=" + (dir / "data" / "train_*.bin").string(),
                                        "data.val=" + (dir / "data" / "val_*.bin").string(),
                                        "run_dir=" + dir.string()};
  overrides.insert(overrides.end(), options.overrides.begin(), options.overrides.end());
  return ParseJobSpec(kDemoJob, "<embedded demo job>", overrides);
}

Status RunDemoJob(const DemoOptions& options, const proto::JobSpec& job, Communicator& comm,
                  const Tenancy& tenancy) {
  const fs::path dir = options.dir;
  // Rank 0 prepares the data; a failure there is reported by every rank after the barrier.
  int ok = 1;
  Status prepared;
  if (comm.rank() == 0) {
    prepared = PrepareDemoData(dir);
    ok = prepared.ok() ? 1 : 0;
  }
  FJORD_RETURN_IF_ERROR(comm.Broadcast(&ok, 1, DataType::kI32, 0));
  if (!prepared.ok()) return prepared;
  if (ok == 0) return Internal("rank 0 could not prepare the demo data (see its message)");

  FJORD_ASSIGN_OR_RETURN(TrainResult trained,
                         Train(job, TrainOptions{.tenancy = &tenancy, .overwrite = true}, comm));
  if (comm.rank() != 0) return OkStatus();

  SampleOptions sample;
  sample.prompt = "The quiet fjord";
  sample.tokens = 120;
  sample.temperature = 0.8f;
  std::printf("fjord demo: sample from %s\n%s", trained.checkpoint_dir.c_str(), sample.prompt.c_str());
  FJORD_ASSIGN_OR_RETURN(std::string text,
                         SampleCheckpoint(trained.checkpoint_dir, sample, [](const std::string& p) {
                           std::fputs(p.c_str(), stdout);
                           std::fflush(stdout);
                         }));
  std::printf("\n");
  return OkStatus();
}

}  // namespace fjord
