#include "runtime/train/inference.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "common/host.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer.h"
#include "runtime/device/device.h"
#include "runtime/model/gpt.h"
#include "runtime/tenancy/manifest.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"
#include "runtime/train/trainer.h"

namespace fjord {

namespace {

struct LoadedModel {
  std::string dir;  // the step directory
  proto::JobSpec job;
  std::unique_ptr<Gpt> model;
};

// The weights of the checkpoint in `dir`, whose job is `job`, opened (gate 3) as `opened`.
StatusOr<LoadedModel> LoadOpenedModel(const std::string& dir, const proto::JobSpec& job,
                                      OpenedCheckpoint& opened, int max_batch, int max_seq,
                                      CheckpointUse use) {
  LoadedModel loaded;
  loaded.dir = dir;
  loaded.job = job;
  const GptConfig config = GptConfig::FromSpec(loaded.job.model());
  if (max_seq <= 0) max_seq = config.max_seq_len;
  if (Status fits = Gpt::CheckMemory(config, max_batch, max_seq, 0, 1, CpuDevice(),
                                     "run it on a host with more memory, or check that " + dir +
                                         "/job.textproto describes the model that was trained");
      !fits.ok()) {
    return opened.Refuse(dir, use, fits.WithContext(dir));
  }
  ConfigureThreads(loaded.job.train().threads());
  loaded.model = std::make_unique<Gpt>(config, max_batch, max_seq, CpuOps());
  if (Status s = LoadCheckpointWeights(dir, *loaded.model, &opened.seal); !s.ok()) {
    return opened.Refuse(dir, use, s);
  }
  return loaded;
}

StatusOr<LoadedModel> LoadModel(const std::string& checkpoint, int max_batch, int max_seq,
                                const CheckpointAccess& access) {
  FJORD_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpointDir(checkpoint));
  FJORD_ASSIGN_OR_RETURN(proto::JobSpec job, LoadCheckpointJob(dir));
  FJORD_ASSIGN_OR_RETURN(OpenedCheckpoint opened, OpenCheckpointOutsideJob(dir, job, access));
  return LoadOpenedModel(dir, job, opened, max_batch, max_seq, access.use);
}

}  // namespace

StatusOr<EvalResult> EvaluateCheckpoint(const std::string& checkpoint, const std::string& data_glob,
                                        const EvalOptions& options, const CheckpointAccess& access) {
  if (options.batches < EvalOptions::kAll || options.micro_batch < 0 || options.seq_len < 0) {
    return InvalidArgument("eval: batches " + std::to_string(options.batches) + ", micro_batch " +
                           std::to_string(options.micro_batch) + ", seq_len " +
                           std::to_string(options.seq_len) +
                           ": each must be positive (or 0 for the checkpoint's own; batches -1 for all)");
  }
  FJORD_ASSIGN_OR_RETURN(std::string dir, ResolveCheckpointDir(checkpoint));
  FJORD_ASSIGN_OR_RETURN(proto::JobSpec job, LoadCheckpointJob(dir));
  const int T = options.seq_len > 0 ? options.seq_len : TrainSeqLen(job);
  if (T > job.model().seq_len()) {
    return InvalidArgument("--seq-len " + std::to_string(T) + " is longer than the model's " +
                           std::to_string(job.model().seq_len()) + " positions (model.seq_len of " + dir +
                           "/job.textproto): give at most " + std::to_string(job.model().seq_len()));
  }
  // The checkpoint first (gate 3), then the data through the data gate of the checkpoint's
  // tenant: its shards must have that tenant's manifests allowing this node, as for training.
  CheckpointAccess eval_access = access;
  eval_access.use = CheckpointUse::kEval;
  FJORD_ASSIGN_OR_RETURN(OpenedCheckpoint opened, OpenCheckpointOutsideJob(dir, job, eval_access));
  DataPolicy policy;
  std::unique_ptr<AuditLog> untenanted_log;
  if (!opened.tenant.empty()) {
    StatusOr<LocalNode> node = ReadNodeIdentity();
    if (!node.ok()) {
      return opened.Refuse(dir, CheckpointUse::kEval,
                           FailedPrecondition("fjord eval of tenant " + opened.tenant +
                                              "'s checkpoint reads --data through the "
                                              "tenant's data gate, which needs this node's identity: " +
                                              node.status().message()));
    }
    policy.tenant = opened.tenant;
    policy.host = node->hostname;
    policy.jurisdiction = node->identity.jurisdiction();
    policy.site = node->identity.site();
    policy.allow_unmanifested = job.data().allow_unmanifested();
    policy.audit = opened.audit.front().get();  // the checkpoint's own chain
  } else {
    // The checkpoint's job had no tenant: --data may be only data that no manifest governs. What the
    // gate does is recorded in that job's audit log when it still exists (nothing is created).
    StatusOr<std::unique_ptr<AuditLog>> log = AuditLog::Open(
        access.audit_log.empty() ? AuditPathFor(job) : access.audit_log, "eval@" + ThisHostname(),
        /*create_parent=*/false);
    if (log.ok()) untenanted_log = std::move(*log);
    policy.audit = untenanted_log.get();
  }
  FJORD_ASSIGN_OR_RETURN(
      DataLoader data, DataLoader::Open(data_glob, "--data", job.model().vocab_size(), T, job.train().seed(),
                                        /*shuffle=*/false, &policy));
  const uint64_t available = data.sequences_per_epoch();
  const int B = static_cast<int>(std::min<uint64_t>(
      options.micro_batch > 0 ? options.micro_batch : job.train().micro_batch(), available));
  const int requested = options.batches == 0 ? job.train().eval_batches() : options.batches;
  const uint64_t whole = available / B;
  const int batches = requested == EvalOptions::kAll ? static_cast<int>(std::min<uint64_t>(whole, INT32_MAX))
                                                     : static_cast<int>(std::min<uint64_t>(requested, whole));
  FJORD_ASSIGN_OR_RETURN(LoadedModel loaded, LoadOpenedModel(dir, job, opened, B, T, CheckpointUse::kEval));
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  EvalResult result;
  double sum = 0.0;
  for (int i = 0; i < batches; ++i) {
    FJORD_RETURN_IF_ERROR(data.Fill(static_cast<uint64_t>(i) * B, B, inputs.data(), targets.data()));
    sum += loaded.model->Forward(inputs.data(), targets.data(), B, T, 0.0f);
  }
  result.batches = batches;
  result.micro_batch = B;
  result.seq_len = T;
  result.requested_batches = requested;
  result.capped = requested != EvalOptions::kAll && batches < requested;
  result.checkpoint = dir;
  result.tokens = static_cast<int64_t>(batches) * B * T;
  result.loss = sum / batches;
  return result;
}

StatusOr<std::string> SampleCheckpoint(const std::string& checkpoint, const SampleOptions& options,
                                       const std::function<void(const std::string&)>& on_text,
                                       const CheckpointAccess& access) {
  if (options.tokens < 0)
    return InvalidArgument("--tokens must be >= 0, got " + std::to_string(options.tokens));
  if (!(options.temperature >= 0.0f)) {
    return InvalidArgument("--temperature must be >= 0 (0 is greedy), got " +
                           std::to_string(options.temperature));
  }
  if (options.top_k < 0) return InvalidArgument("--top-k must be >= 0, got " + std::to_string(options.top_k));
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    return InvalidArgument("--top-p must be in (0, 1], got " + std::to_string(options.top_p));
  }
  CheckpointAccess sample_access = access;
  sample_access.use = CheckpointUse::kSample;
  FJORD_ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(checkpoint, 1, 0, sample_access));
  const std::string tokenizer_name = !options.tokenizer.empty()  ? options.tokenizer
                                     : options.vocab_dir.empty() ? "byte"
                                                                 : "gpt2";
  FJORD_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                         MakeTokenizer(tokenizer_name, options.vocab_dir));
  if (!tokenizer->can_encode() && !options.prompt.empty()) {
    return InvalidArgument("--tokenizer " + tokenizer_name +
                           " only decodes (it has no merges), so it cannot read --prompt; sample without a "
                           "prompt (it starts from the end-of-text token) or use --tokenizer gpt2 or hf");
  }
  if (options.on_loaded) options.on_loaded(loaded.dir);
  Gpt& model = *loaded.model;
  const GptConfig& c = model.config();
  if (tokenizer->vocab_size() > c.vocab_size) {
    return InvalidArgument(
        "tokenizer \"" + tokenizer_name + "\" has " + std::to_string(tokenizer->vocab_size()) +
        " tokens but the checkpoint's model has a vocabulary of " + std::to_string(c.vocab_size) +
        "; sample with the tokenizer the training shards were made with");
  }
  std::vector<int32_t> context =
      tokenizer->can_encode() ? tokenizer->Encode(options.prompt) : std::vector<int32_t>{};
  if (context.empty()) {
    if (const std::optional<int32_t> eot = tokenizer->end_of_text()) {
      context.push_back(*eot);
    } else {
      context = tokenizer->Encode("\n");  // a new line
    }
  }
  const size_t prompt_tokens = context.size();
  std::string decoded;  // the decoding of the generated tokens so far
  std::mt19937_64 rng(options.seed);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::string generated;
  std::vector<double> probs(c.vocab_size);
  for (int i = 0; i < options.tokens; ++i) {
    const int T = std::min<int>(static_cast<int>(context.size()), model.max_seq());
    const int32_t* window = context.data() + context.size() - T;
    model.Forward(window, nullptr, 1, T, 0.0f);
    const float* logits = model.Logits() + static_cast<size_t>(T - 1) * c.padded_vocab;
    int next = 0;
    if (options.temperature == 0.0f) {
      next = static_cast<int>(std::max_element(logits, logits + c.vocab_size) - logits);
    } else {
      float threshold = -INFINITY;
      if (options.top_k > 0 && options.top_k < c.vocab_size) {
        std::vector<float> sorted(logits, logits + c.vocab_size);
        std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(),
                         std::greater<float>());
        threshold = sorted[options.top_k - 1];
      }
      const float max_logit = *std::max_element(logits, logits + c.vocab_size);
      double sum = 0.0;
      for (int v = 0; v < c.vocab_size; ++v) {
        probs[v] = logits[v] >= threshold ? std::exp((logits[v] - max_logit) / options.temperature) : 0.0;
        sum += probs[v];
      }
      if (options.top_p < 1.0f) {
        // Keep the most probable tokens until their mass reaches top_p; drop the rest.
        std::vector<int> order(c.vocab_size);
        for (int v = 0; v < c.vocab_size; ++v) order[v] = v;
        std::sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
        double kept = 0.0;
        size_t k = 0;
        while (k < order.size() && kept < options.top_p * sum) kept += probs[order[k++]];
        for (size_t i = k; i < order.size(); ++i) probs[order[i]] = 0.0;
        sum = kept;
      }
      double r = uniform(rng) * sum;
      next = c.vocab_size - 1;
      for (int v = 0; v < c.vocab_size; ++v) {
        r -= probs[v];
        if (r <= 0.0 && probs[v] > 0.0) {
          next = v;
          break;
        }
      }
    }
    context.push_back(next);
    // Decoders may look at neighbouring tokens (Metaspace drops the first token's space), so the
    // new text is what decoding all generated tokens adds to the last decoding.
    std::string now = tokenizer->Decode(std::vector<int32_t>(context.begin() + prompt_tokens, context.end()));
    const std::string piece =
        now.compare(0, decoded.size(), decoded) == 0 ? now.substr(decoded.size()) : tokenizer->Decode({next});
    decoded = std::move(now);
    generated += piece;
    if (on_text) on_text(piece);
  }
  return generated;
}

}  // namespace fjord
