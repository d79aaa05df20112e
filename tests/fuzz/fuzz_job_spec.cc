// Fuzzes ParseJobSpec (runtime/train/config.h): protobuf text format plus --set overrides, defaults and
// validation. Input: the job spec text, optionally followed by a line "---" and one override
// ("dotted.path=value") per line. A spec that is accepted must print back (JobSpecToText) to text
// that is accepted again and prints identically: the resolved spec is what a checkpoint stores
// (job.textproto) and LoadCheckpointJob reads back.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/train/config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [spec, rest] = fjord::fuzz::SplitAtLine(fjord::fuzz::AsText(data, size), "---");
  const std::vector<std::string> overrides = fjord::fuzz::Lines(rest);
  fjord::StatusOr<fjord::proto::JobSpec> job = fjord::ParseJobSpec(spec, "fuzz.textproto", overrides);
  if (!job.ok()) {
    FJORD_FUZZ_EXPECT(!job.status().message().empty(), "refusal without a message");
    return 0;
  }
  (void)fjord::TrainSeqLen(*job);
  const std::string text = fjord::JobSpecToText(*job);
  fjord::StatusOr<fjord::proto::JobSpec> again = fjord::ParseJobSpec(text, "resolved.textproto", {});
  FJORD_FUZZ_EXPECT(again.ok(),
                    "the resolved spec does not reload: " + again.status().message() + "\n" + text);
  FJORD_FUZZ_EXPECT(fjord::JobSpecToText(*again) == text, "the resolved spec changes on reload:\n" + text);
  return 0;
}
