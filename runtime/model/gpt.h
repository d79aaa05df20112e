// The GPT-2 model and the Llama family (GptConfig::arch): parameter layout, activations, forward
// and backward, written once against the backend-neutral op table of kernels/ops.h.
//
// Llama (arch kLlama) is a branch of this class, not a second model: the same flat layer-major
// buffer, arena, op table and callbacks, with its own layout (Hugging Face's names), activations
// and a forward/backward of its own (ForwardLlama / BackwardLlama): RMSNorm, rotary positions
// (rope_theta, Llama 3.1 scaling), SwiGLU, grouped-query attention, optional q/k/v biases, and an
// untied lm_head unless tie_embeddings. docs/ARCHITECTURE.md ("The Llama family") has the reasons.
//
// Architecture (GPT-2 exactly): token + learned position embeddings, n_layer pre-LayerNorm
// blocks (attention, then a 4x MLP with tanh GELU, each added to the residual stream), a final
// LayerNorm, and a classifier tied to the token embedding. The vocabulary is padded to a
// multiple of 128 for the classifier GEMM; padded logits never enter the softmax.
//
// Memory: all parameters live in one contiguous buffer and all parameter gradients in another,
// laid out layer-major in forward order: [wte, wpe, layer 0 ... layer L-1, lnf]. The backward
// pass therefore completes gradients from the end of the buffer towards its start, so later
// issues can reduce contiguous buckets while backward continues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/ops.h"
#include "proto/job.pb.h"

namespace fjord {

class Arena;
class Device;

// Storage of the activations, their gradients and the parameters the model ops read (job spec
// model.dtype). kBf16 is mixed precision: the parameters stay fp32 master weights (what AdamW
// updates and checkpoints store) with a bf16 working copy for the forward and backward passes;
// parameter gradients are fp32 in both (kernels/ops.h, "Precision").
enum class Precision { kFp32, kBf16 };
const char* PrecisionName(Precision p);  // "fp32", "bf16"

struct GptConfig {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int max_seq_len = 0;  // learned positions
  int vocab_size = 0;
  int padded_vocab = 0;  // vocab_size rounded up to a multiple of 128
  Precision precision = Precision::kFp32;
  // Llama family (job spec model.arch LLAMA); GPT-2 leaves the fields below at their defaults.
  enum class Arch { kGpt2, kLlama };
  Arch arch = Arch::kGpt2;
  int n_kv_head = 0;          // key/value heads; n_head for GPT-2 and multi-head Llama
  int intermediate_size = 0;  // SwiGLU hidden width (Llama)
  float rms_norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  bool rope_llama3 = false;  // Llama 3.1 frequency scaling, with the four values below
  double rope_factor = 8.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int rope_original_max_position = 8192;
  bool attention_bias = false;  // q, k, v biases (Llama)
  bool tie_embeddings = true;   // GPT-2 always; Llama when model.tie_embeddings
  // train.recompute: BLOCK. The forward pass keeps only each block's input (its residual stream)
  // and one block's worth of other activations; Backward recomputes each block from its input just
  // before its gradients. Losses and gradients are bit-identical to false on the CPU.
  bool recompute = false;
  // parallel.zero_stage 2 over this many ranks (0: off). The model then has no gradient buffer:
  // Backward writes each unit's gradients (runtime/model/zero_units.h) into the window the caller
  // names with Gpt::SetGradWindow, and the parameter buffer is ZeroUnits::buffer_floats() long so a
  // unit's in-place all-gather stays inside it.
  int grad_shard_ranks = 0;
  // parallel.zero_stage 3 (ZeRO-3; set together with grad_shard_ranks): the model holds no
  // parameter buffer either. Every parameter read goes to the window of its unit that the caller
  // names with Gpt::SetParamWindow, and before the reads of each unit the model calls the
  // ParamsNeededFn set by SetParamsNeeded, so the caller can gather the unit (and prefetch the next).
  int param_shard_ranks = 0;
  bool llama() const { return arch == Arch::kLlama; }
  int head_size() const { return n_embd / n_head; }
  // Width of the packed q, k, v rows: (n_head + 2 n_kv_head) head_size (3 n_embd for GPT-2).
  int qkv_width() const { return (n_head + 2 * n_kv_head) * head_size(); }
  // CUDA, bf16: the tensor-core attention kernels (OpContext::tensor_core_attention); the
  // trainer decides (ResolveAttention in runtime/train/trainer.h). Ignored by the CPU backend.
  bool tensor_core_attention = false;

  // The architecture of `spec`, in fp32: model.dtype depends on the device, so the trainer
  // resolves it (ResolvePrecision in runtime/train/trainer.h) and sets `precision` itself.
  static GptConfig FromSpec(const proto::ModelSpec& spec);
};

// Parameters of `config` (ParamLayout(config).num_params()) in closed form, without building the
// layout (n_layer entries); saturating: SIZE_MAX when the count overflows size_t.
size_t ParamCount(const GptConfig& config);

// Llama: the rotary inverse frequencies inv_freq[i], i < head_size / 2, as Hugging Face computes
// them in fp32: 1 / rope_theta^(2i / head_size), then Llama 3.1's scaling when rope_llama3.
std::vector<float> RopeInvFreq(const GptConfig& config);

// One parameter tensor inside the flat parameter buffer.
struct ParamTensor {
  std::string name;           // e.g. "h.3.attn.c_attn.weight" (GPT-2), "model.layers.3.mlp.up_proj.weight"
  size_t offset = 0;          // in floats, into the parameter buffer
  std::vector<int> shape;     // row-major
  bool weight_decay = false;  // AdamW decays matrices and embeddings only
  size_t size() const;
};

// Offsets (in floats) of every tensor, in layer-major forward order. Each tensor starts on a
// 16-float boundary, except that tensors one GEMM reads as one matrix follow each other without a
// gap (Llama: q_proj, k_proj, v_proj and their biases; gate_proj, up_proj).
class ParamLayout {
 public:
  static constexpr size_t kNone = SIZE_MAX;  // a tensor this architecture does not have
  // GPT-2 names / Llama names: ln1 = input_layernorm, qkv = q_proj (k_proj and v_proj follow),
  // attproj = o_proj, ln2 = post_attention_layernorm, fc = gate_proj (up_proj follows),
  // fcproj = down_proj. Llama has no LayerNorm biases, no o/gate/up/down biases, and q/k/v biases
  // only with attention_bias: those offsets are kNone.
  struct Layer {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, attproj_w, attproj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
    size_t begin, end;  // [begin, end) of the whole layer
  };

  explicit ParamLayout(const GptConfig& config);

  size_t num_params() const { return total_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const Layer& layer(int l) const { return layers_[l]; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  size_t wte() const { return wte_; }          // Llama: model.embed_tokens.weight
  size_t wpe() const { return wpe_; }          // Llama: kNone
  size_t lnf_w() const { return lnf_w_; }      // Llama: model.norm.weight
  size_t lnf_b() const { return lnf_b_; }      // Llama: kNone
  size_t lm_head() const { return lm_head_; }  // the classifier: wte() when tied, else lm_head.weight

 private:
  // pad = false: the next tensor follows without a gap (one GEMM reads both).
  size_t Add(const std::string& name, std::vector<int> shape, bool decay, bool pad = true);

  std::vector<ParamTensor> tensors_;
  std::vector<Layer> layers_;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0, lm_head_ = 0;
  size_t total_ = 0;
};

// A 64-byte aligned float buffer on the host; move-only.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t n);
  ~HostBuffer();
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

// Called during Backward when the gradients of params [begin, end) are complete and will not be
// written again by this backward pass. Ranges arrive in decreasing address order.
using GradReadyFn = std::function<void(size_t begin, size_t end)>;

// param_shard_ranks (ZeRO-3): called before the model reads the parameters of the unit that starts
// at layout offset `unit_begin` (runtime/model/zero_units.h: 0 for the embeddings, a layer's
// begin, lnf_w() for the tail); `next_begin` is the unit it will read after this one in the same
// pass (ParamLayout::kNone: none), for a prefetch. The callback must leave the unit's working
// parameters in a window set with Gpt::SetParamWindow. Order: Forward asks for the embeddings,
// layers 0..L-1, the tail, then the classifier's unit (the embeddings when tied); Backward for the
// classifier's unit, the tail, then layers L-1..0 (each before its recompute with BLOCK).
using ParamsNeededFn = std::function<void(size_t unit_begin, size_t next_begin)>;

// The model with its parameters, gradients and activations for batches of up to max_batch
// sequences of up to max_seq tokens. The optimizer state lives in AdamW (runtime/model/optimizer.h),
// so it can be sharded. Not thread-safe; one instance per rank.
//
// Memory: every buffer lives on one Device (runtime/device/device.h), carved from an Arena: params(),
// grads() and Logits() are device pointers on a CUDA device and host pointers on the CPU.
// host_params() is a host view of the parameters: the parameters themselves on the CPU, a
// mirror on CUDA that SyncParamsToHost() fills and SyncParamsToDevice() uploads (checkpoints,
// initialisation, import and export go through it).
class Gpt {
 public:
  // On the CPU device with an arena of its own: `ops` must be a host backend (CpuOps()). The
  // parameter and gradient buffers hold buffer_size() floats: num_params() rounded up to a
  // multiple of `buffer_multiple` (zero padding), so they split into equal shards.
  Gpt(const GptConfig& config, int max_batch, int max_seq, const Ops& ops, size_t buffer_multiple = 1);
  // On arena.device(), taking ArenaBytes(config, max_batch, max_seq, buffer_multiple) from
  // `arena`, which must outlive the model.
  Gpt(const GptConfig& config, int max_batch, int max_seq, Arena& arena, size_t buffer_multiple = 1);
  ~Gpt();

  // Bytes this model allocates for (config, max_batch, max_seq): parameters (and their bf16
  // working copy in bf16), gradients, and activations with their gradients in config.precision.
  // Static and in closed form (saturating at SIZE_MAX, nothing allocated), so a job can be
  // refused before allocation.
  static size_t MemoryBytes(const GptConfig& config, int max_batch, int max_seq);
  // Arena bytes the second constructor takes (MemoryBytes, padding and alignment, tokens,
  // targets and scratch); saturating like MemoryBytes.
  static size_t ArenaBytes(const GptConfig& config, int max_batch, int max_seq, size_t buffer_multiple);
  // ArenaBytes in its parts (their sum), for the memory plan (runtime/model/memory_plan.h):
  // fp32 parameters and the bf16 working copy, fp32 gradients, activations and their gradients
  // (config.recompute shrinks them), and the rest (token and target copies, scratch, rope table).
  struct ArenaTerms {
    size_t parameters = 0, gradients = 0, activations = 0, workspace = 0;
  };
  static ArenaTerms ArenaTermsFor(const GptConfig& config, int max_batch, int max_seq,
                                  size_t buffer_multiple);
  // Refuses, before anything is allocated, a model this host cannot hold: FailedPrecondition
  // naming the parameter count (ParamCount), the bytes needed (on the CPU MemoryBytes plus
  // `extra_copies` fp32 buffers of the parameters split in `shards`, e.g. 2 and the ZeRO-1 world
  // size for the AdamW state; on CUDA the host mirror of the parameters), the bytes available
  // (AvailableHostBytes), the fields that make it large, and `what_to_do`. Every path that builds
  // a model from a job spec, checkpoint or import calls it first: a model of 2^31 layers must end
  // in this message, not std::bad_alloc. On CUDA the device memory is left to Arena::Create.
  static Status CheckMemory(const GptConfig& config, int max_batch, int max_seq, int extra_copies, int shards,
                            const Device& device, const std::string& what_to_do);

  // bf16: rounds the fp32 master weights to the bf16 working copy the model ops read, by
  // cast_to_bf16 with `seed` (0: to nearest even; otherwise stochastic rounding, the same on every
  // rank and device for the same seed). The trainer calls it after each update with a seed from
  // the step (RoundSeed), so a resumed run rounds as the uninterrupted one did. fp32: nothing.
  // SyncParamsToDevice calls it with seed 0.
  void RoundWorkingParams(uint64_t seed);
  // The same for buffer elements [begin, end) only, each rounded as in the whole-buffer cast
  // (its buffer index in the hash): what is left to round when AdamW wrote the rest of the
  // working copy itself (ZeRO-1: the other ranks' shards, after the all-gather).
  void RoundWorkingParams(uint64_t seed, size_t begin, size_t end);

  // GPT-2 initialisation from `seed`: N(0, 0.02) for matrices and embeddings, residual
  // projections scaled by 1/sqrt(2 n_layer), zero biases, unit LayerNorm weights; padded
  // vocabulary rows zero. The same values on every device (drawn on the host, then uploaded).
  // Llama: Hugging Face's (initializer_range 0.02): N(0, 0.02) for every matrix and embedding, zero
  // biases, unit RMSNorm weights, padded rows zero.
  void InitGpt2(uint64_t seed);
  // The same values into `into` (num_params() host floats by layout offset), the model untouched
  // (ZeRO-3: the trainer packs this rank's shard from them).
  void InitGpt2(uint64_t seed, float* into) const;

  // Runs the model on host tokens[B*T] (B <= max_batch, T <= max_seq). With host targets[B*T] it
  // returns the mean cross-entropy and, when dloss_scale > 0, leaves the loss gradient (scaled by
  // dloss_scale / (B*T) per position) ready for Backward. Without targets it returns 0 and
  // leaves logits for Logits(). Waits for the device (the loss is read back).
  float Forward(const int32_t* tokens, const int32_t* targets, int B, int T, float dloss_scale);

  // Accumulates parameter gradients of the last Forward (which must have had targets and
  // dloss_scale > 0) into grads(). Calls on_ready, if set, as layers complete; on a CUDA device
  // the kernels that write that range have been enqueued on the compute stream, not finished
  // (Device::OrderAfterCompute / StageToHost order a consumer after them).
  void Backward(const GradReadyFn& on_ready = nullptr);

  // Sets every parameter gradient to zero (start of an accumulation). Not with grad_shard_ranks.
  void ZeroGrads();

  // grad_shard_ranks: gradients of parameters [begin, end) go to window[0, end - begin) until the
  // next call for the same slot (0 or 1; two windows are active at once: the embeddings', written
  // at both ends of Backward when the classifier is tied, and the unit being processed). Backward
  // reads and adds to what the window holds. A gradient write outside every window is a bug
  // (FJORD_CHECK).
  void SetGradWindow(int slot, size_t begin, size_t end, float* window);

  // param_shard_ranks: parameters [begin, end) are read from window (working precision: bf16 in
  // bf16, else fp32; window[0] is parameter `begin`) until the next call for the same slot (0, 1 or
  // 2: the embeddings', kept for a whole step, and two alternating layer windows). A parameter read
  // outside every window is a bug (FJORD_CHECK). SetParamsNeeded sets the callback (may be null).
  void SetParamWindow(int slot, size_t begin, size_t end, const void* window);
  void SetParamsNeeded(ParamsNeededFn fn) { params_needed_ = std::move(fn); }

  // Sum of squares of all parameter gradients (not with grad_shard_ranks), and of n values at x
  // (backend memory).
  float GradSumSquares();
  float SumSquares(const float* x, size_t n);

  // Logits [B, T, padded_vocab] of the last Forward without targets (backend memory). fp32 only.
  const float* Logits() const;

  // Host view of the parameters (see the class comment) and its synchronisation; on the CPU both
  // calls only refresh the bf16 working copy (SyncParamsToDevice, in bf16).
  float* host_params();
  const float* host_params() const;
  void SyncParamsToHost();
  void SyncParamsToDevice();

  const GptConfig& config() const { return config_; }
  Precision precision() const { return config_.precision; }
  const ParamLayout& layout() const { return layout_; }
  size_t num_params() const { return layout_.num_params(); }
  size_t buffer_size() const { return buffer_size_; }
  Device& device() const { return device_; }
  const Ops& ops() const { return ops_; }
  float* params() { return params_; }
  // What the model ops read: params() in fp32, the bf16 working copy in bf16 (backend memory).
  const void* working_params() const { return working_params_; }
  // The bf16 working copy for AdamW to write in its pass (AdamW::Step), null in fp32.
  bf16* working_params_bf16() {
    return config_.precision == Precision::kBf16 ? static_cast<bf16*>(working_params_) : nullptr;
  }
  const float* params() const { return params_; }
  float* grads() { return grads_; }
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }

 private:
  // Activations (A), their gradients (G) and fp32 statistics (F) by byte offset (see ActOffsets
  // in gpt.cc); the parameters the ops read (P, the working copy) and their gradients (D) by
  // element offset into the parameter layout.
  template <typename floatX>
  floatX* A(size_t offset) {
    return reinterpret_cast<floatX*>(acts_ + offset);
  }
  template <typename floatX>
  floatX* G(size_t offset) {
    return reinterpret_cast<floatX*>(dacts_ + offset);
  }
  float* F(size_t offset) { return reinterpret_cast<float*>(acts_ + offset); }
  template <typename floatX>
  floatX* P(size_t offset) {
    if (working_params_ != nullptr) return static_cast<floatX*>(working_params_) + offset;
    for (const ParamWindow& w : param_windows_) {
      if (offset - w.begin < w.size)
        return static_cast<floatX*>(const_cast<void*>(w.window)) + (offset - w.begin);
    }
    OutsideParamWindows(offset);
  }
  [[noreturn]] void OutsideParamWindows(size_t offset) const;
  // The unit (runtime/model/zero_units.h) that holds layer l's parameters, or the tail for l == L.
  size_t UnitBegin(int l) const { return l < config_.n_layer ? layout_.layer(l).begin : layout_.lnf_w(); }
  // The unit the classifier reads: the embeddings when tied, else the tail (lm_head).
  size_t ClassifierUnit() const { return layout_.lm_head() == layout_.wte() ? 0 : layout_.lnf_w(); }
  void NeedParams(size_t unit_begin, size_t next_begin) {
    if (params_needed_) params_needed_(unit_begin, next_begin);
  }
  float* D(size_t offset) {
    if (grads_ != nullptr) return grads_ + offset;
    for (const GradWindow& w : grad_windows_) {
      if (offset - w.begin < w.size) return w.window + (offset - w.begin);
    }
    return OutsideGradWindows(offset);
  }
  [[noreturn]] float* OutsideGradWindows(size_t offset) const;
  // An optional parameter tensor (a Llama bias): null when the layout has none.
  template <typename floatX>
  const floatX* POpt(size_t offset) {
    return offset == ParamLayout::kNone ? nullptr : P<floatX>(offset);
  }
  float* DOpt(size_t offset) { return offset == ParamLayout::kNone ? nullptr : D(offset); }
  template <typename floatX>
  float ForwardAs(int B, int T, bool with_targets, float dloss_scale);
  template <typename floatX>
  void BackwardAs(const GradReadyFn& on_ready);
  template <typename floatX>
  void ForwardLlama(int B, int T);
  // Block l of the last Forward's batch from its input norm's output on (GPT-2: through
  // attention, res2, ln2 and the MLP to fcproj; Llama the same with rope, residual_forward and
  // SwiGLU), leaving res3 and the next norm to the caller.
  template <typename floatX>
  void BlockForward(int l);
  // recompute: block l's activations again from its stored input, before its backward.
  template <typename floatX>
  void RecomputeBlock(int l);
  template <typename floatX>
  void BackwardLlama(const GradReadyFn& on_ready);
  // The classifier and the loss after the final norm (both architectures).
  template <typename floatX>
  float ClassifierForward(int B, int T, bool with_targets, float dloss_scale);
  void Allocate(Arena& arena, size_t buffer_multiple);

  GptConfig config_;
  ParamLayout layout_;
  Device& device_;
  const Ops& ops_;
  OpContext ctx_;  // the device's, with tensor_core_attention from the config
  int max_batch_, max_seq_;
  int B_ = 0, T_ = 0;
  bool has_dlogits_ = false;
  std::unique_ptr<Arena> own_arena_;  // the first constructor's
  size_t buffer_size_ = 0;
  float* params_ = nullptr;         // fp32 master weights
  void* working_params_ = nullptr;  // what the ops read: params_ in fp32, a bf16 copy in bf16
  float* grads_ = nullptr;          // null with grad_shard_ranks: grad_windows_ instead
  struct GradWindow {
    size_t begin = 0, size = 0;
    float* window = nullptr;
  };
  GradWindow grad_windows_[2];
  struct ParamWindow {
    size_t begin = 0, size = 0;
    const void* window = nullptr;
  };
  ParamWindow param_windows_[3];
  ParamsNeededFn params_needed_;
  char* acts_ = nullptr;
  char* dacts_ = nullptr;
  size_t dacts_bytes_ = 0;
  int32_t* tokens_ = nullptr;  // device copies of the last Forward's tokens and targets
  int32_t* targets_ = nullptr;
  float* scratch_ = nullptr;  // sum_squares' output
  float* rope_ = nullptr;     // Llama: cos, sin of each position and frequency [max_seq, hs/2, 2]
  HostBuffer host_params_;    // CUDA only: the host mirror
  std::vector<float> host_losses_;
  std::vector<size_t> act_offsets_;   // bytes into acts_, see ActOffsets in gpt.cc
  std::vector<size_t> grad_offsets_;  // bytes into dacts_ (act_offsets_ unless config.recompute)
  size_t block_grad_bytes_ = 0;       // recompute: dacts_ bytes of one block's gradients but dres3
};

}  // namespace fjord
