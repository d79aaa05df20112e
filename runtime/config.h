// Job specs: loading a *.textproto, applying --set overrides, filling defaults and refusing
// impossible values with the file:line and the field that is wrong.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/job.pb.h"

namespace fjord {

// Parses `text` (protobuf text format of fjord.proto.JobSpec) whose origin is `source_name`
// (a path, used in messages), applies each override "dotted.path=value" in order, makes every
// default explicit (so the resolved spec printed back is complete) and validates the result.
// Errors name the source, line and column, and the field; an override's error names the
// override as written (--set ...).
StatusOr<proto::JobSpec> ParseJobSpec(std::string_view text, const std::string& source_name,
                                      const std::vector<std::string>& overrides);

// Reads the file at `path` and calls ParseJobSpec. A missing or unreadable file is an error that
// names the path.
StatusOr<proto::JobSpec> LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides);

// The resolved spec in text format, every field present (defaults included).
std::string JobSpecToText(const proto::JobSpec& job);

// The sequence length used for training: train.seq_len, or model.seq_len when that is 0.
int TrainSeqLen(const proto::JobSpec& job);

}  // namespace fjord
