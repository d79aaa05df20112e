// Fuzzes ReadShard (runtime/data/data.h): the llm.c token shard header and tokens. ReadShard takes a
// path, so each input is written to a scratch file first. An accepted shard must hold exactly the
// header's count of tokens, each below the vocabulary size.
#include <cstdint>
#include <cstring>
#include <string>

#include "runtime/data/data.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
// GPT-2's vocabulary: uint16 tokens above it exist, so the per-token check is reachable.
constexpr int kVocab = 50257;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fjord::fuzz::ScratchDir("shard") + "/shard.bin";
  fjord::fuzz::WriteFile(path, fjord::fuzz::AsText(data, size));
  fjord::StatusOr<std::vector<uint32_t>> tokens = fjord::ReadShard(path, kVocab);
  if (!tokens.ok()) return 0;
  int32_t count = 0;
  FJORD_FUZZ_EXPECT(size >= 12, "accepted a shard without a header");
  std::memcpy(&count, data + 8, 4);
  FJORD_FUZZ_EXPECT(static_cast<size_t>(count) == tokens->size(), "token count differs from the header");
  for (uint32_t t : *tokens) FJORD_FUZZ_EXPECT(t < kVocab, "accepted token " + std::to_string(t));
  return 0;
}
