// Reading streams each llm.c tensor straight into its slot (through a small staging buffer for
// bf16), so a GPT-2 sized checkpoint is never held twice in memory. Writing fp32 hands the
// caller's tensors to the atomic writer as they are; bf16 converts into one buffer first.
#include "runtime/formats/llmc_checkpoint.h"

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/file_util.h"

namespace fjord {
namespace {

static_assert(std::endian::native == std::endian::little, "llm.c checkpoints are little-endian");

constexpr int kHeaderInts = 256;
constexpr size_t kHeaderBytes = kHeaderInts * sizeof(int32_t);
constexpr int32_t kShardMagic = 20240520;  // llm.c token shards, a common mix-up

// llm.c's order: kinds outermost, layers inside.
template <typename Fn>
void ForEachInLlmcOrder(const Gpt2Params& p, Fn fn) {
  for (int k = 0; k < kNumGpt2Kinds; ++k) {
    const Gpt2Kind kind = static_cast<Gpt2Kind>(k);
    const int layers = IsPerLayer(kind) ? p.dims().n_layer : 1;
    for (int l = 0; l < layers; ++l) fn(p.At(kind, l));
  }
}

size_t CountParams(const Gpt2Params& p) {
  size_t n = 0;
  for (const Gpt2Tensor& t : p.tensors()) n += t.size();
  return n;
}

uint16_t FloatToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays a quiet NaN
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

StatusOr<LlmcHeader> ReadLlmcHeader(const std::string& path) {
  const std::string what = "llm.c checkpoint " + path;
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + what + "; check the path and its permissions");
  int32_t h[kHeaderInts] = {};
  in.read(reinterpret_cast<char*>(h), kHeaderBytes);
  if (in.gcount() != static_cast<std::streamsize>(kHeaderBytes)) {
    return DataLoss(
        what + ": " + std::to_string(in.gcount()) +
        " bytes, shorter than the 1024-byte header; the file is truncated or not an llm.c checkpoint");
  }
  if (h[0] != kLlmcModelMagic) {
    return InvalidArgument(what + ": magic " + std::to_string(h[0]) + " is not " +
                           std::to_string(kLlmcModelMagic) +
                           (h[0] == kShardMagic ? "; this is an llm.c token shard, not a model checkpoint"
                                                : "; the file is not an llm.c model checkpoint"));
  }
  if (h[1] != 3 && h[1] != 5) {
    return InvalidArgument(what + ": version " + std::to_string(h[1]) +
                           " is not supported; versions 3 (float32) and 5 (bfloat16) are, as written by "
                           "llm.c's current train_gpt2.py");
  }
  LlmcHeader header;
  header.precision = static_cast<LlmcPrecision>(h[1]);
  header.dims = {h[4], h[5], h[6], h[2], h[3], h[7]};
  FJORD_RETURN_IF_ERROR(
      ValidateGpt2Dims(header.dims).WithContext(what + " header (maxT, V, L, NH, C, Vp at ints 2..7)"));
  // In 128 bits: a corrupt header must not wrap around to a plausible size.
  const Gpt2Dims& d = header.dims;
  const unsigned __int128 C = d.n_embd, L = d.n_layer;
  const unsigned __int128 num_params = (static_cast<unsigned __int128>(d.padded_vocab) + d.max_seq_len) * C +
                                       L * (12 * C * C + 13 * C) + 2 * C;
  const unsigned element = header.precision == LlmcPrecision::kFp32 ? 4 : 2;
  const unsigned __int128 expected = kHeaderBytes + num_params * element;
  std::error_code ec;
  const uint64_t actual = std::filesystem::file_size(path, ec);
  if (ec || actual != expected) {
    const auto text = [](unsigned __int128 v) {
      return v > UINT64_MAX ? std::string("more than 2^64") : std::to_string(static_cast<uint64_t>(v));
    };
    return DataLoss(what + ": " + std::to_string(actual) + " bytes, but the header's model (" +
                    text(num_params) + " parameters of " + std::to_string(element) + " bytes) needs " +
                    text(expected) + "; the file is truncated or its header is wrong");
  }
  return header;
}

Status ReadLlmcCheckpoint(const std::string& path, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                          float* params, size_t buffer_floats) {
  const std::string what = "cannot read llm.c checkpoint " + path;
  FJORD_ASSIGN_OR_RETURN(LlmcHeader header, ReadLlmcHeader(path));
  const std::pair<const char*, std::pair<int, int>> compare[] = {
      {"maxT (int 2)", {header.dims.max_seq_len, dims.max_seq_len}},
      {"V (int 3)", {header.dims.vocab_size, dims.vocab_size}},
      {"L (int 4)", {header.dims.n_layer, dims.n_layer}},
      {"NH (int 5)", {header.dims.n_head, dims.n_head}},
      {"C (int 6)", {header.dims.n_embd, dims.n_embd}},
      {"Vp (int 7)", {header.dims.padded_vocab, dims.padded_vocab}}};
  for (const auto& [field, values] : compare) {
    if (values.first != values.second) {
      return InvalidArgument(what + ": header field " + field + " is " + std::to_string(values.first) +
                             " but the model being loaded has " + std::to_string(values.second) +
                             "; build the model from the checkpoint's header");
    }
  }
  FJORD_ASSIGN_OR_RETURN(Gpt2Params p, Gpt2Params::Match(dims, slots, buffer_floats, what));
  std::ifstream in(path, std::ios::binary);
  in.seekg(kHeaderBytes);
  std::vector<uint16_t> staging;
  bool ok = static_cast<bool>(in);
  ForEachInLlmcOrder(p, [&](const Gpt2Tensor& t) {
    if (!ok) return;
    float* dst = params + t.offset;
    if (header.precision == LlmcPrecision::kFp32) {
      in.read(reinterpret_cast<char*>(dst), static_cast<std::streamsize>(t.size() * 4));
    } else {
      staging.resize(t.size());
      in.read(reinterpret_cast<char*>(staging.data()), static_cast<std::streamsize>(t.size() * 2));
      for (size_t i = 0; i < t.size(); ++i)
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(staging[i]) << 16);
    }
    ok = static_cast<bool>(in);
  });
  if (!ok) return DataLoss(what + ": read failed (the file changed while being read?)");
  return OkStatus();
}

Status WriteLlmcCheckpoint(const std::string& path, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                           const float* params, size_t buffer_floats, LlmcPrecision precision) {
  const std::string what = "cannot write llm.c checkpoint " + path;
  FJORD_ASSIGN_OR_RETURN(Gpt2Params p, Gpt2Params::Match(dims, slots, buffer_floats, what));
  int32_t header[kHeaderInts] = {};
  header[0] = kLlmcModelMagic;
  header[1] = static_cast<int32_t>(precision);
  header[2] = dims.max_seq_len;
  header[3] = dims.vocab_size;
  header[4] = dims.n_layer;
  header[5] = dims.n_head;
  header[6] = dims.n_embd;
  header[7] = dims.padded_vocab;
  std::vector<ByteSpan> pieces = {{header, kHeaderBytes}};
  std::vector<uint16_t> narrowed;
  if (precision == LlmcPrecision::kFp32) {
    ForEachInLlmcOrder(p, [&](const Gpt2Tensor& t) { pieces.push_back({params + t.offset, t.size() * 4}); });
  } else {
    narrowed.reserve(CountParams(p));
    ForEachInLlmcOrder(p, [&](const Gpt2Tensor& t) {
      for (size_t i = 0; i < t.size(); ++i) narrowed.push_back(FloatToBf16(params[t.offset + i]));
    });
    pieces.push_back({narrowed.data(), narrowed.size() * 2});
  }
  return WriteFileAtomic(path, pieces).WithContext(what);
}

}  // namespace fjord
