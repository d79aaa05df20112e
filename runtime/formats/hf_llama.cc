// Import reads one safetensors file at a time (a shard of a large model need not share memory with
// the others) and converts each tensor to float32 straight into its slot.
#include "runtime/formats/hf_llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "common/file_util.h"
#include "common/json.h"
#include "runtime/formats/safetensors.h"

namespace fjord {
namespace {

namespace fs = std::filesystem;

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool IsVocabTensor(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

// The shape of a slot in the Hugging Face file: the vocabulary rows unpadded.
std::vector<int64_t> HfShape(const ParamSlot& s, const HfLlamaConfig& c) {
  std::vector<int64_t> shape(s.shape.begin(), s.shape.end());
  if (IsVocabTensor(s.name)) shape[0] = c.vocab_size;
  return shape;
}

// "model.layers.N.self_attn.rotary_emb.inv_freq": a buffer older transformers versions saved.
bool IsRotaryBuffer(const std::string& name) {
  return name.find(".rotary_emb.inv_freq") != std::string::npos;
}

// The double `v` printed so that it reads back exactly ("%.17g"), as JSON.
std::string Num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// The shortest decimal that reads back as the float `v` (1e-06, not 9.99999997e-07).
std::string FloatNum(float v) {
  char buf[40];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(v));
    if (std::strtof(buf, nullptr) == v) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string ConfigJson(const HfLlamaConfig& c) {
  const bool qwen = c.attention_bias;
  const auto i = [](int v) { return std::to_string(v); };
  std::string rope_scaling = "null";
  if (c.rope_llama3) {
    rope_scaling = "{\"factor\": " + Num(c.rope_factor) +
                   ", \"high_freq_factor\": " + Num(c.rope_high_freq_factor) +
                   ", \"low_freq_factor\": " + Num(c.rope_low_freq_factor) +
                   ", \"original_max_position_embeddings\": " + i(c.rope_original_max_position) +
                   ", \"rope_type\": \"llama3\"}";
  }
  std::string s = "{\n";
  s += std::string("  \"architectures\": [\"") + (qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM") + "\"],\n";
  s += std::string("  \"model_type\": \"") + (qwen ? "qwen2" : "llama") + "\",\n";
  s += "  \"attention_dropout\": 0.0,\n";
  if (!qwen) s += "  \"attention_bias\": false,\n  \"mlp_bias\": false,\n  \"pretraining_tp\": 1,\n";
  if (qwen) s += "  \"use_sliding_window\": false,\n  \"sliding_window\": null,\n";
  s += "  \"head_dim\": " + i(c.n_embd / c.n_head) + ",\n";
  s += "  \"hidden_act\": \"silu\",\n";
  s += "  \"hidden_size\": " + i(c.n_embd) + ",\n";
  s += "  \"initializer_range\": 0.02,\n";
  s += "  \"intermediate_size\": " + i(c.intermediate_size) + ",\n";
  s += "  \"max_position_embeddings\": " + i(c.max_position_embeddings) + ",\n";
  s += "  \"num_attention_heads\": " + i(c.n_head) + ",\n";
  s += "  \"num_hidden_layers\": " + i(c.n_layer) + ",\n";
  s += "  \"num_key_value_heads\": " + i(c.n_kv_head) + ",\n";
  s += "  \"rms_norm_eps\": " + FloatNum(static_cast<float>(c.rms_norm_eps)) + ",\n";
  s += "  \"rope_scaling\": " + rope_scaling + ",\n";
  s += "  \"rope_theta\": " + Num(c.rope_theta) + ",\n";
  s += std::string("  \"tie_word_embeddings\": ") + (c.tie_embeddings ? "true" : "false") + ",\n";
  s += "  \"torch_dtype\": \"float32\",\n";
  s += "  \"use_cache\": true,\n";
  s += "  \"vocab_size\": " + i(c.vocab_size) + "\n";
  return s + "}\n";
}

}  // namespace

StatusOr<HfLlamaConfig> ReadHfLlamaConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "Hugging Face config"));
  FJORD_ASSIGN_OR_RETURN(JsonValue config, ParseJson(text, path));
  auto at = [&](const JsonValue& v) {
    return path + ":" + std::to_string(v.line()) + ":" + std::to_string(v.column());
  };
  if (!config.is_object()) return InvalidArgument(at(config) + ": config.json must be a JSON object");
  HfLlamaConfig c;
  const JsonValue* type = config.Find("model_type");
  if (!type || !type->is_string() ||
      (type->text() != "llama" && type->text() != "mistral" && type->text() != "qwen2")) {
    return InvalidArgument(
        (type ? at(*type) : path) + ": model_type is " +
        (type ? (type->is_string() ? JsonQuote(type->text()) : "not a string") : "missing") +
        "; fjord imports \"llama\", \"mistral\" and \"qwen2\" (LlamaForCausalLM, "
        "MistralForCausalLM, Qwen2ForCausalLM) and, with a GPT-2 config, \"gpt2\"");
  }
  c.model_type = type->text();
  if (const JsonValue* a = config.Find("architectures"); a && a->is_array()) {
    static const std::map<std::string, std::string> kArch = {
        {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}};
    for (const JsonValue& v : a->array()) {
      if (!v.is_string() || v.text() != kArch.at(c.model_type)) {
        return InvalidArgument(at(v) + ": architectures names " +
                               (v.is_string() ? JsonQuote(v.text()) : "?") + "; a model_type \"" +
                               c.model_type + "\" checkpoint is imported as " + kArch.at(c.model_type) +
                               " only (no heads for other tasks)");
      }
    }
  }
  auto integer = [&](const char* key, bool required, int* out) -> Status {
    const JsonValue* v = config.Find(key);
    if (!v || v->is_null()) {
      if (!required) return OkStatus();
      return InvalidArgument(path + ": missing \"" + key +
                             "\"; a config.json written by save_pretrained names hidden_size, "
                             "num_hidden_layers, num_attention_heads, intermediate_size, "
                             "max_position_embeddings and vocab_size");
    }
    const std::optional<int64_t> n = v->AsInt64();
    if (!n || *n <= 0 || *n > (int64_t{1} << 30)) {
      return InvalidArgument(at(*v) + ": \"" + key + "\" must be a positive integer");
    }
    *out = static_cast<int>(*n);
    return OkStatus();
  };
  auto number = [&](const JsonValue* v, const char* key, double* out) -> Status {
    if (!v || v->is_null()) return OkStatus();
    if (!v->is_number() || !(v->number() > 0) || !std::isfinite(v->number())) {
      return InvalidArgument(at(*v) + ": \"" + key + "\" must be a positive number");
    }
    *out = v->number();
    return OkStatus();
  };
  FJORD_RETURN_IF_ERROR(integer("num_hidden_layers", true, &c.n_layer));
  FJORD_RETURN_IF_ERROR(integer("num_attention_heads", true, &c.n_head));
  FJORD_RETURN_IF_ERROR(integer("hidden_size", true, &c.n_embd));
  FJORD_RETURN_IF_ERROR(integer("intermediate_size", true, &c.intermediate_size));
  FJORD_RETURN_IF_ERROR(integer("max_position_embeddings", true, &c.max_position_embeddings));
  FJORD_RETURN_IF_ERROR(integer("vocab_size", true, &c.vocab_size));
  c.n_kv_head = c.n_head;
  FJORD_RETURN_IF_ERROR(integer("num_key_value_heads", false, &c.n_kv_head));
  c.padded_vocab = (c.vocab_size + 127) / 128 * 128;
  FJORD_RETURN_IF_ERROR(number(config.Find("rms_norm_eps"), "rms_norm_eps", &c.rms_norm_eps));
  FJORD_RETURN_IF_ERROR(number(config.Find("rope_theta"), "rope_theta", &c.rope_theta));
  if (c.n_embd % c.n_head != 0) {
    return InvalidArgument(at(*config.Find("hidden_size")) + ": hidden_size " + std::to_string(c.n_embd) +
                           " is not a multiple of num_attention_heads " + std::to_string(c.n_head));
  }
  if (c.n_head % c.n_kv_head != 0) {
    return InvalidArgument(at(*config.Find("num_key_value_heads")) + ": num_key_value_heads " +
                           std::to_string(c.n_kv_head) + " does not divide num_attention_heads " +
                           std::to_string(c.n_head));
  }
  const std::string unsupported = " is not supported: fjord's Llama family ";
  if (const JsonValue* v = config.Find("head_dim"); v && !v->is_null()) {
    if (!(v->AsInt64() && *v->AsInt64() == c.n_embd / c.n_head)) {
      return InvalidArgument(at(*v) + ": head_dim " + v->text() + unsupported +
                             "has head_dim = hidden_size / num_attention_heads (" +
                             std::to_string(c.n_embd / c.n_head) + ") only");
    }
  }
  if (const JsonValue* v = config.Find("hidden_act"); v && !(v->is_string() && v->text() == "silu")) {
    return InvalidArgument(at(*v) + ": hidden_act " + (v->is_string() ? JsonQuote(v->text()) : "?") +
                           unsupported + "uses SwiGLU with SiLU (\"silu\") only");
  }
  if (const JsonValue* v = config.Find("mlp_bias"); v && !(v->is_bool() && !v->bool_value())) {
    return InvalidArgument(at(*v) + ": mlp_bias true" + unsupported + "has no MLP biases");
  }
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2Attention always has q/k/v biases
  } else if (const JsonValue* v = config.Find("attention_bias"); v && !(v->is_bool() && !v->bool_value())) {
    return InvalidArgument(
        at(*v) + ": attention_bias true" + unsupported +
        "has q/k/v biases only as Qwen 2 does (LlamaAttention's attention_bias also adds an "
        "o_proj bias)");
  }
  if (const JsonValue* v = config.Find("pretraining_tp");
      v && !v->is_null() && !(v->AsInt64() && *v->AsInt64() == 1)) {
    return InvalidArgument(at(*v) + ": pretraining_tp " + v->text() + unsupported +
                           "computes the unsplit projections (pretraining_tp 1) only");
  }
  if (const JsonValue* v = config.Find("tie_word_embeddings"); v && !v->is_null()) {
    if (!v->is_bool()) return InvalidArgument(at(*v) + ": tie_word_embeddings must be true or false");
    c.tie_embeddings = v->bool_value();
  }
  // Sliding windows: the same function as full attention only when no sequence exceeds them.
  const JsonValue* window = config.Find("sliding_window");
  const bool window_used = c.model_type == "mistral" || (config.Find("use_sliding_window") &&
                                                         config.Find("use_sliding_window")->is_bool() &&
                                                         config.Find("use_sliding_window")->bool_value());
  if (window_used && window && !window->is_null() &&
      !(window->AsInt64() && *window->AsInt64() >= c.max_position_embeddings)) {
    return InvalidArgument(
        at(*window) + ": sliding_window " + window->text() + " is shorter than max_position_embeddings " +
        std::to_string(c.max_position_embeddings) +
        ": sliding windows are not supported: fjord's Llama family attends to the whole "
        "causal context. Set sliding_window to null (or "
        "use_sliding_window to false) only if you train on sequences no longer than the window");
  }
  for (const char* moe : {"num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                          "n_routed_experts"}) {
    if (const JsonValue* v = config.Find(moe); v && !v->is_null() && !(v->AsInt64() && *v->AsInt64() == 0)) {
      return InvalidArgument(at(*v) + ": " + moe + " " + v->text() +
                             ": mixtures of experts are not supported: fjord's Llama family has one dense "
                             "SwiGLU MLP per layer");
    }
  }
  if (const JsonValue* v = config.Find("rope_scaling"); v && !v->is_null()) {
    const JsonValue* t = v->Find("rope_type");
    if (!t) t = v->Find("type");
    if (!v->is_object() || !t || !t->is_string()) {
      return InvalidArgument(at(*v) + ": rope_scaling must be null or an object with a \"rope_type\"");
    }
    if (t->text() == "llama3") {
      c.rope_llama3 = true;
      FJORD_RETURN_IF_ERROR(number(v->Find("factor"), "rope_scaling.factor", &c.rope_factor));
      FJORD_RETURN_IF_ERROR(
          number(v->Find("low_freq_factor"), "rope_scaling.low_freq_factor", &c.rope_low_freq_factor));
      FJORD_RETURN_IF_ERROR(
          number(v->Find("high_freq_factor"), "rope_scaling.high_freq_factor", &c.rope_high_freq_factor));
      for (const char* key :
           {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
        if (!v->Find(key)) {
          return InvalidArgument(at(*v) + ": rope_scaling of type \"llama3\" needs \"" + key + "\"");
        }
      }
      const JsonValue* o = v->Find("original_max_position_embeddings");
      if (!(o->AsInt64() && *o->AsInt64() > 0 && *o->AsInt64() < (int64_t{1} << 30))) {
        return InvalidArgument(at(*o) +
                               ": rope_scaling.original_max_position_embeddings must be a positive integer");
      }
      c.rope_original_max_position = static_cast<int>(*o->AsInt64());
    } else if (t->text() != "default") {
      return InvalidArgument(at(*t) + ": rope_scaling.rope_type " + JsonQuote(t->text()) + unsupported +
                             "implements plain rotary positions and \"llama3\" scaling only");
    }
    if (c.rope_llama3 && c.model_type == "mistral") {
      return InvalidArgument(at(*t) + ": rope_scaling" + unsupported +
                             "follows transformers 4.45's MistralForCausalLM, which has no rope scaling");
    }
  }
  return c;
}

Status ImportHfLlama(const std::string& dir, const HfLlamaConfig& config, const std::vector<ParamSlot>& slots,
                     float* params, size_t buffer_floats) {
  const std::string what = "cannot import a Hugging Face " + config.model_type + " model from " + dir;
  std::map<std::string, const ParamSlot*> ours;
  for (const ParamSlot& s : slots) {
    size_t n = 1;
    for (int d : s.shape) n *= static_cast<size_t>(d);
    if (s.offset + n > buffer_floats) return Internal(what + ": slot " + s.name + " lies outside the buffer");
    ours[s.name] = &s;
  }
  // The files to read, each with the tensors the index says it holds (empty: a single file).
  std::map<std::string, std::set<std::string>> files;
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (fs::exists(dir + "/model.safetensors")) {
    files["model.safetensors"];
  } else if (fs::exists(index_path)) {
    FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(index_path, "safetensors index"));
    FJORD_ASSIGN_OR_RETURN(JsonValue index, ParseJson(text, index_path));
    const JsonValue* map = index.Find("weight_map");
    if (!map || !map->is_object()) {
      return InvalidArgument(what + ": " + index_path + " has no \"weight_map\" object");
    }
    for (const auto& [name, file] : map->object()) {
      const std::string at =
          index_path + ":" + std::to_string(file.line()) + ":" + std::to_string(file.column());
      if (!file.is_string() || file.text().empty() || file.text().find('/') != std::string::npos ||
          file.text() == "." || file.text() == "..") {
        return InvalidArgument(at + ": weight_map[" + JsonQuote(name) +
                               "] must name a file in the same directory");
      }
      files[file.text()].insert(name);
    }
  } else {
    return InvalidArgument(what + ": neither model.safetensors nor model.safetensors.index.json is there" +
                           (fs::exists(dir + "/pytorch_model.bin")
                                ? "; only safetensors are read: convert with save_pretrained(dir, "
                                  "safe_serialization=True)"
                                : ""));
  }
  std::map<std::string, std::string> found;  // slot name -> file
  std::vector<float> staging;
  for (const auto& [file, listed] : files) {
    const std::string path = dir + "/" + file;
    FJORD_ASSIGN_OR_RETURN(Safetensors st, ReadSafetensors(path));
    for (const std::string& name : listed) {
      if (!st.Find(name)) {
        return InvalidArgument(what + ": " + index_path + " places \"" + name + "\" in " + file +
                               ", which does not hold it; the index and the shards are from different saves");
      }
    }
    for (const SafetensorsTensor& t : st.tensors()) {
      if (!listed.empty() && !listed.count(t.name)) {
        return InvalidArgument(what + ": " + path + " holds \"" + t.name + "\", which " + index_path +
                               " does not list; the index and the shards are from different saves");
      }
      if (IsRotaryBuffer(t.name)) continue;
      const bool tied_head = t.name == "lm_head.weight" && config.tie_embeddings;
      const auto it = ours.find(tied_head ? "model.embed_tokens.weight" : t.name);
      if (it == ours.end()) {
        return InvalidArgument(what + ": " + path + ": unexpected tensor \"" + t.name + "\"; a " +
                               std::to_string(config.n_layer) +
                               "-layer model of this config.json has no such weight");
      }
      const ParamSlot& slot = *it->second;
      const std::vector<int64_t> shape = HfShape(slot, config);
      if (t.shape != shape) {
        return InvalidArgument(what + ": " + path + ": tensor \"" + t.name + "\" has shape " +
                               ShapeText(t.shape) + ", expected " + ShapeText(shape) + " from config.json");
      }
      if (tied_head) {  // checked against the embedding once everything is read
        staging.resize(static_cast<size_t>(t.num_elements()));
        FJORD_RETURN_IF_ERROR(TensorToFloat32(t, path, staging.data()).WithContext(what));
        found["lm_head.weight(tied)"] = path;
        continue;
      }
      if (!found.emplace(t.name, path).second) {
        return InvalidArgument(what + ": tensor \"" + t.name + "\" is in both " + found[t.name] + " and " +
                               path);
      }
      float* dst = params + slot.offset;
      FJORD_RETURN_IF_ERROR(TensorToFloat32(t, path, dst).WithContext(what));
      if (IsVocabTensor(t.name)) {
        const size_t real = static_cast<size_t>(config.vocab_size) * config.n_embd;
        const size_t padded = static_cast<size_t>(slot.shape[0]) * config.n_embd;
        std::memset(dst + real, 0, (padded - real) * sizeof(float));
      }
    }
  }
  for (const ParamSlot& s : slots) {
    if (!found.count(s.name)) {
      return InvalidArgument(
          what + ": tensor \"" + s.name + "\" is missing" +
          (s.name == "lm_head.weight" ? " (config.json says tie_word_embeddings false)" : ""));
    }
  }
  if (found.count("lm_head.weight(tied)")) {
    const ParamSlot& wte = *ours.at("model.embed_tokens.weight");
    if (std::memcmp(staging.data(), params + wte.offset, staging.size() * sizeof(float)) != 0) {
      return InvalidArgument(what +
                             ": lm_head.weight differs from model.embed_tokens.weight although config.json "
                             "says tie_word_embeddings true; fix config.json");
    }
  }
  return OkStatus();
}

Status ExportHfLlama(const std::string& dir, const HfLlamaConfig& config, const std::vector<ParamSlot>& slots,
                     const float* params, size_t buffer_floats) {
  const std::string what = "cannot export a Hugging Face Llama-family model to " + dir;
  std::vector<SafetensorsTensorRef> refs;
  for (const ParamSlot& s : slots) {
    size_t n = 1;
    for (int d : s.shape) n *= static_cast<size_t>(d);
    if (s.offset + n > buffer_floats) return Internal(what + ": slot " + s.name + " lies outside the buffer");
    refs.push_back({s.name, Dtype::kF32, HfShape(s, config), params + s.offset});
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FailedPrecondition(what + ": cannot create the directory: " + ec.message());
  FJORD_RETURN_IF_ERROR(
      WriteSafetensors(dir + "/model.safetensors", refs, {{"format", "pt"}, {"producer", "fjord"}})
          .WithContext(what));
  const std::string json = ConfigJson(config);
  return WriteFileAtomic(dir + "/config.json", {{json.data(), json.size()}}).WithContext(what);
}

}  // namespace fjord
