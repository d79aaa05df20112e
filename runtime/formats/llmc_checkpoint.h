// llm.c's model checkpoint (train_gpt2.c / train_gpt2.cu), read and written so weights move
// between llm.c and fjord in both directions.
//
// Format (little-endian): a header of 256 int32
//   [0] 20240326 magic, [1] version: 3 = float32 parameters, 5 = bfloat16 parameters,
//   [2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp (padded vocabulary), the rest zero,
// then all parameters, each kind for all layers together:
//   wte [Vp, C], wpe [maxT, C], ln1w [L, C], ln1b [L, C], qkvw [L, 3C, C], qkvb [L, 3C],
//   attprojw [L, C, C], attprojb [L, C], ln2w [L, C], ln2b [L, C], fcw [L, 4C, C], fcb [L, 4C],
//   fcprojw [L, C, 4C], fcprojb [L, C], lnfw [C], lnfb [C].
// llm.c stores matrices as [out, in] like fjord, so converting is a permutation from kind-major
// to our layer-major order, no transposes. bfloat16 widens to float exactly; narrowing rounds to
// nearest even.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/formats/gpt2_params.h"

namespace fjord {

inline constexpr int32_t kLlmcModelMagic = 20240326;

// The header's version field names the parameter precision.
enum class LlmcPrecision { kFp32 = 3, kBf16 = 5 };

struct LlmcHeader {
  LlmcPrecision precision = LlmcPrecision::kFp32;
  Gpt2Dims dims;  // max_seq_len = maxT, padded_vocab = Vp
};

// Reads and validates the header of the checkpoint at `path`: magic, version, dimensions, and
// that the file holds exactly the parameters the header implies.
StatusOr<LlmcHeader> ReadLlmcHeader(const std::string& path);

// Reads the checkpoint at `path` into the tensors at `slots` in `params` (buffer_floats floats).
// The header must describe `dims`; a mismatch is refused naming the field. Bytes of `params`
// outside the slots are not touched.
Status ReadLlmcCheckpoint(const std::string& path, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                          float* params, size_t buffer_floats);

// Writes the model at `slots` in `params` to `path` atomically, as version 3 (fp32) or 5 (bf16).
Status WriteLlmcCheckpoint(const std::string& path, const Gpt2Dims& dims, const std::vector<ParamSlot>& slots,
                           const float* params, size_t buffer_floats, LlmcPrecision precision);

}  // namespace fjord
