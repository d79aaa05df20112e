// Fuzzes LoadCheckpointWeights (runtime/train/checkpoint.h): the 1024-byte model.bin header (magic,
// version, dimensions, parameter count) and the parameters after it, loaded into a tiny model
// (1 layer, 1 head, 8 channels, 4 positions, 16 tokens). The input is written as model.bin of a
// scratch checkpoint directory.
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/ops.h"
#include "runtime/model/gpt.h"
#include "runtime/train/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = fjord::fuzz::ScratchDir("model_bin");
  static fjord::Gpt* model = [] {
    fjord::proto::ModelSpec spec;
    spec.set_n_layer(1);
    spec.set_n_head(1);
    spec.set_n_embd(8);
    spec.set_seq_len(4);
    spec.set_vocab_size(16);
    return new fjord::Gpt(fjord::GptConfig::FromSpec(spec), 1, 4, fjord::CpuOps());
  }();
  fjord::fuzz::WriteFile(dir + "/model.bin", fjord::fuzz::AsText(data, size));
  const fjord::Status s = fjord::LoadCheckpointWeights(dir, *model);
  FJORD_FUZZ_EXPECT(s.ok() || !s.message().empty(), "refusal without a message");
  if (s.ok()) {
    FJORD_FUZZ_EXPECT(size >= 1024 + model->num_params() * sizeof(float), "accepted a short model.bin");
  }
  return 0;
}
