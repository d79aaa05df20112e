// Export copies only what must change (the four transposed matrices per layer); every other
// tensor is written straight from the caller's buffer. Import converts each tensor to float32
// first, then places it, so F16/BF16 files need no separate path.
#include "runtime/formats/hf_gpt2.h"

#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <unordered_map>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/formats/safetensors.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

// Prefixes an error with `what`, so a refusal reads from the operation down to its cause.
template <typename T>
StatusOr<T> InContext(StatusOr<T> result, const std::string& what) {
  if (!result.ok()) return result.status().WithContext(what);
  return result;
}

bool IsTransposed(Gpt2Kind kind) {
  return kind == Gpt2Kind::kQkvW || kind == Gpt2Kind::kAttprojW || kind == Gpt2Kind::kFcW ||
         kind == Gpt2Kind::kFcprojW;
}

// The shape of our tensor in the HF state dict.
std::vector<int64_t> HfShape(const Gpt2Tensor& t, const Gpt2Dims& dims) {
  if (t.kind == Gpt2Kind::kWte) return {dims.vocab_size, dims.n_embd};
  if (IsTransposed(t.kind)) return {t.shape[1], t.shape[0]};
  return std::vector<int64_t>(t.shape.begin(), t.shape.end());
}

// out[k * rows + r] = in[r * cols + k]: [rows, cols] -> [cols, rows].
void Transpose(const float* in, int rows, int cols, float* out) {
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < cols; ++k)
      out[static_cast<size_t>(k) * rows + r] = in[static_cast<size_t>(r) * cols + k];
  }
}

// "h.N.attn.bias" or "h.N.attn.masked_bias": causal-mask buffers, not weights.
bool IsMaskBuffer(const std::string& name) {
  if (name.compare(0, 2, "h.") != 0) return false;
  size_t i = 2;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  const std::string rest = name.substr(i);
  return i > 2 && (rest == ".attn.bias" || rest == ".attn.masked_bias");
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string ConfigJson(const Gpt2Dims& d) {
  // GPT-2's <|endoftext|> is both BOS and EOS; other vocabularies have no known special ids.
  const std::string special = d.vocab_size == 50257 ? "50256" : "null";
  const auto i = [](int v) { return std::to_string(v); };
  return "{\n"
         "  \"activation_function\": \"gelu_new\",\n"
         "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
         "  \"attn_pdrop\": 0.0,\n"
         "  \"bos_token_id\": " +
         special +
         ",\n"
         "  \"embd_pdrop\": 0.0,\n"
         "  \"eos_token_id\": " +
         special +
         ",\n"
         "  \"initializer_range\": 0.02,\n"
         "  \"layer_norm_epsilon\": 1e-05,\n"
         "  \"model_type\": \"gpt2\",\n"
         "  \"n_ctx\": " +
         i(d.max_seq_len) +
         ",\n"
         "  \"n_embd\": " +
         i(d.n_embd) +
         ",\n"
         "  \"n_head\": " +
         i(d.n_head) +
         ",\n"
         "  \"n_inner\": null,\n"
         "  \"n_layer\": " +
         i(d.n_layer) +
         ",\n"
         "  \"n_positions\": " +
         i(d.max_seq_len) +
         ",\n"
         "  \"resid_pdrop\": 0.0,\n"
         "  \"tie_word_embeddings\": true,\n"
         "  \"torch_dtype\": \"float32\",\n"
         "  \"vocab_size\": " +
         i(d.vocab_size) +
         "\n"
         "}\n";
}

}  // namespace

Status ExportHfGpt2(const std::string& dir, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                    const float* params, size_t buffer_floats) {
  const std::string what = "cannot export Hugging Face GPT-2 to " + dir;
  FJORD_ASSIGN_OR_RETURN(Gpt2Params p, Gpt2Params::Match(dims, slots, buffer_floats, what));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FailedPrecondition(what + ": cannot create the directory: " + ec.message());

  std::vector<std::vector<float>> transposed;
  transposed.reserve(4 * static_cast<size_t>(dims.n_layer));
  std::vector<SafetensorsTensorRef> refs;
  for (const Gpt2Tensor& t : p.tensors()) {
    const float* data = params + t.offset;
    if (IsTransposed(t.kind)) {
      transposed.emplace_back(t.size());
      Transpose(data, t.shape[0], t.shape[1], transposed.back().data());
      data = transposed.back().data();
    }
    refs.push_back({"transformer." + t.name, Dtype::kF32, HfShape(t, dims), data});
  }
  FJORD_RETURN_IF_ERROR(
      WriteSafetensors(dir + "/model.safetensors", refs, {{"format", "pt"}, {"producer", "fjord"}})
          .WithContext(what));
  const std::string config = ConfigJson(dims);
  return WriteFileAtomic(dir + "/config.json", {{config.data(), config.size()}}).WithContext(what);
}

StatusOr<Gpt2Dims> ReadHfGpt2Config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "Hugging Face config"));
  FJORD_ASSIGN_OR_RETURN(JsonValue config, ParseJson(text, path));
  auto at = [&](const JsonValue& v) {
    return path + ":" + std::to_string(v.line()) + ":" + std::to_string(v.column());
  };
  if (!config.is_object()) return InvalidArgument(at(config) + ": config.json must be a JSON object");
  if (const JsonValue* type = config.Find("model_type");
      type && !(type->is_string() && type->text() == "gpt2")) {
    return InvalidArgument(at(*type) + ": model_type is " +
                           (type->is_string() ? JsonQuote(type->text()) : "not a string") +
                           "; only \"gpt2\" models can be imported");
  }
  auto positive_int = [&](const char* key, const char* fallback, int* out) -> Status {
    const JsonValue* v = config.Find(key);
    if (!v && fallback) v = config.Find(fallback);
    if (!v) {
      return InvalidArgument(path + ": missing \"" + key +
                             "\"; a GPT-2 config.json names n_layer, n_head, n_embd, "
                             "n_positions and vocab_size");
    }
    const std::optional<int64_t> n = v->AsInt64();
    if (!n || *n <= 0 || *n > (int64_t{1} << 30)) {
      return InvalidArgument(at(*v) + ": \"" + key + "\" must be a positive integer");
    }
    *out = static_cast<int>(*n);
    return OkStatus();
  };
  Gpt2Dims d;
  FJORD_RETURN_IF_ERROR(positive_int("n_layer", nullptr, &d.n_layer));
  FJORD_RETURN_IF_ERROR(positive_int("n_head", nullptr, &d.n_head));
  FJORD_RETURN_IF_ERROR(positive_int("n_embd", nullptr, &d.n_embd));
  FJORD_RETURN_IF_ERROR(positive_int("n_positions", "n_ctx", &d.max_seq_len));
  FJORD_RETURN_IF_ERROR(positive_int("vocab_size", nullptr, &d.vocab_size));
  d.padded_vocab = Gpt2Dims::PadVocab(d.vocab_size);
  FJORD_RETURN_IF_ERROR(ValidateGpt2Dims(d).WithContext(path));

  // Options that would make the HF model compute something else than fjord's GPT-2.
  const std::string unsupported = "; fjord's GPT-2 implements ";
  if (const JsonValue* v = config.Find("activation_function");
      v && !(v->is_string() && (v->text() == "gelu_new" || v->text() == "gelu_pytorch_tanh"))) {
    return InvalidArgument(at(*v) + ": activation_function " + (v->is_string() ? JsonQuote(v->text()) : "?") +
                           " is not supported" + unsupported + "the tanh GELU (\"gelu_new\") only");
  }
  if (const JsonValue* v = config.Find("layer_norm_epsilon"); v && !(v->is_number() && v->number() == 1e-5)) {
    return InvalidArgument(at(*v) + ": layer_norm_epsilon " + v->text() + " is not supported" + unsupported +
                           "LayerNorm with epsilon 1e-05 only");
  }
  if (const JsonValue* v = config.Find("n_inner");
      v && !v->is_null() && !(v->AsInt64() && *v->AsInt64() == 4 * int64_t{d.n_embd})) {
    return InvalidArgument(at(*v) + ": n_inner must be null or 4 * n_embd" + unsupported + "a 4x MLP only");
  }
  if (const JsonValue* v = config.Find("tie_word_embeddings"); v && !(v->is_bool() && v->bool_value())) {
    return InvalidArgument(at(*v) + ": tie_word_embeddings must be true" + unsupported +
                           "a classifier tied to the token embedding only");
  }
  if (const JsonValue* v = config.Find("scale_attn_weights"); v && !(v->is_bool() && v->bool_value())) {
    return InvalidArgument(at(*v) + ": scale_attn_weights must be true" + unsupported +
                           "attention scaled by 1/sqrt(head size) only");
  }
  if (const JsonValue* v = config.Find("scale_attn_by_inverse_layer_idx");
      v && !(v->is_bool() && !v->bool_value())) {
    return InvalidArgument(at(*v) + ": scale_attn_by_inverse_layer_idx must be false" + unsupported +
                           "attention scaled by 1/sqrt(head size) only");
  }
  return d;
}

Status ImportHfGpt2(const std::string& dir, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                    float* params, size_t buffer_floats) {
  const std::string what = "cannot import Hugging Face GPT-2 from " + dir;
  FJORD_ASSIGN_OR_RETURN(Gpt2Dims config, InContext(ReadHfGpt2Config(dir), what));
  const std::pair<const char*, std::pair<int, int>> compare[] = {
      {"n_layer", {config.n_layer, dims.n_layer}},
      {"n_head", {config.n_head, dims.n_head}},
      {"n_embd", {config.n_embd, dims.n_embd}},
      {"n_positions", {config.max_seq_len, dims.max_seq_len}},
      {"vocab_size", {config.vocab_size, dims.vocab_size}}};
  for (const auto& [key, values] : compare) {
    if (values.first != values.second) {
      return InvalidArgument(what + ": config.json has " + key + " " + std::to_string(values.first) +
                             " but the model being loaded has " + std::to_string(values.second) +
                             "; build the model from this config.json");
    }
  }
  FJORD_ASSIGN_OR_RETURN(Gpt2Params p, Gpt2Params::Match(dims, slots, buffer_floats, what));

  const std::string path = dir + "/model.safetensors";
  if (!fs::exists(path)) {
    if (fs::exists(dir + "/model.safetensors.index.json")) {
      return InvalidArgument(what +
                             ": the weights are sharded (model.safetensors.index.json); save them as one "
                             "file with save_pretrained(dir, max_shard_size=\"100GB\")");
    }
    if (fs::exists(dir + "/pytorch_model.bin")) {
      return InvalidArgument(what +
                             ": only model.safetensors is read, not pytorch_model.bin; convert with "
                             "save_pretrained(dir, safe_serialization=True)");
    }
  }
  FJORD_ASSIGN_OR_RETURN(Safetensors st, InContext(ReadSafetensors(path), what));
  const std::string in_file = what + ": " + path;

  std::string prefix;
  if (st.Find("transformer.wte.weight")) {
    prefix = "transformer.";
  } else if (!st.Find("wte.weight")) {
    return InvalidArgument(in_file +
                           " has neither transformer.wte.weight nor wte.weight; it is not a GPT-2 "
                           "checkpoint");
  }
  std::unordered_map<std::string, const Gpt2Tensor*> ours;
  for (const Gpt2Tensor& t : p.tensors()) ours[prefix + t.name] = &t;
  std::map<const Gpt2Tensor*, const SafetensorsTensor*> found;
  const SafetensorsTensor* lm_head = nullptr;
  for (const SafetensorsTensor& t : st.tensors()) {
    if (t.name == "lm_head.weight") {
      lm_head = &t;
      continue;
    }
    const auto it = ours.find(t.name);
    if (it == ours.end()) {
      const std::string bare =
          t.name.compare(0, prefix.size(), prefix) == 0 ? t.name.substr(prefix.size()) : t.name;
      if (IsMaskBuffer(bare)) continue;
      return InvalidArgument(in_file + ": unexpected tensor \"" + t.name + "\"; a GPT2LMHeadModel of " +
                             std::to_string(dims.n_layer) + " layers has no such weight");
    }
    const std::vector<int64_t> shape = HfShape(*it->second, dims);
    if (t.shape != shape) {
      return InvalidArgument(in_file + ": tensor \"" + t.name + "\" has shape " + ShapeText(t.shape) +
                             ", expected " + ShapeText(shape));
    }
    found[it->second] = &t;
  }

  std::vector<float> staging;
  for (const Gpt2Tensor& t : p.tensors()) {
    const auto it = found.find(&t);
    if (it == found.end()) {
      return InvalidArgument(in_file + ": tensor \"" + prefix + t.name + "\" is missing");
    }
    const SafetensorsTensor& src = *it->second;
    float* dst = params + t.offset;
    if (IsTransposed(t.kind)) {
      staging.resize(t.size());
      FJORD_RETURN_IF_ERROR(TensorToFloat32(src, path, staging.data()).WithContext(what));
      Transpose(staging.data(), static_cast<int>(src.shape[0]), static_cast<int>(src.shape[1]), dst);
    } else {
      FJORD_RETURN_IF_ERROR(TensorToFloat32(src, path, dst).WithContext(what));
    }
    if (t.kind == Gpt2Kind::kWte) {
      const size_t real = static_cast<size_t>(dims.vocab_size) * dims.n_embd;
      std::memset(dst + real, 0, (t.size() - real) * sizeof(float));
    }
  }
  if (lm_head) {
    const std::vector<int64_t> shape = {dims.vocab_size, dims.n_embd};
    if (lm_head->shape != shape) {
      return InvalidArgument(in_file + ": tensor \"lm_head.weight\" has shape " + ShapeText(lm_head->shape) +
                             ", expected " + ShapeText(shape));
    }
    staging.resize(static_cast<size_t>(lm_head->num_elements()));
    FJORD_RETURN_IF_ERROR(TensorToFloat32(*lm_head, path, staging.data()).WithContext(what));
    if (std::memcmp(staging.data(), params + p.At(Gpt2Kind::kWte).offset, staging.size() * sizeof(float)) !=
        0) {
      return InvalidArgument(in_file +
                             ": lm_head.weight differs from the token embedding; fjord's GPT-2 ties the "
                             "classifier to wte, so an untied head cannot be imported");
    }
  }
  return OkStatus();
}

}  // namespace fjord
