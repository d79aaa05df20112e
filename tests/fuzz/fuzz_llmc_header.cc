// Fuzzes ReadLlmcHeader (runtime/formats/llmc_checkpoint.h): magic, version, dimensions and the file size
// the header implies. It takes a path, so each input is written to a scratch file first. An
// accepted header must describe valid dimensions.
#include <cstdint>
#include <string>

#include "runtime/formats/llmc_checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fjord::fuzz::ScratchDir("llmc") + "/model.bin";
  fjord::fuzz::WriteFile(path, fjord::fuzz::AsText(data, size));
  fjord::StatusOr<fjord::LlmcHeader> header = fjord::ReadLlmcHeader(path);
  if (!header.ok()) return 0;
  FJORD_FUZZ_EXPECT(fjord::ValidateGpt2Dims(header->dims).ok(), "accepted invalid dimensions");
  return 0;
}
