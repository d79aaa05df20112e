// Fuzzes the checkpoint manifest readers (runtime/train/checkpoint.h): VerifyCheckpoint and
// ReadCheckpointState on a checkpoint directory whose manifest.json is the input. The directory
// also holds model.bin ("fjord\n", 6 bytes), so a manifest that lists it can get as far as the
// size and sha256 comparison; the seed corpus has such a manifest.
#include <cstdint>
#include <string>

#include "runtime/train/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = fjord::fuzz::ScratchDir("checkpoint_manifest") + "/step_000001";
    std::filesystem::create_directories(d);
    fjord::fuzz::WriteFile(d + "/model.bin", "fjord\n");
    return d;
  }();
  fjord::fuzz::WriteFile(dir + "/manifest.json", fjord::fuzz::AsText(data, size));
  const fjord::Status verified = fjord::VerifyCheckpoint(dir);
  FJORD_FUZZ_EXPECT(verified.ok() || !verified.message().empty(), "refusal without a message");
  fjord::StatusOr<fjord::CheckpointState> state = fjord::ReadCheckpointState(dir);
  FJORD_FUZZ_EXPECT(state.ok() || !state.status().message().empty(), "refusal without a message");
  return 0;
}
