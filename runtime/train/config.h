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
//
// Overrides: PATH is resolved through the schema (model.n_layer, train.lr, run_dir, device);
// VALUE is parsed by the field's type (numbers strictly, enums by name, strings either bare and
// taken literally or quoted and unescaped as in text format). Later overrides win.
//
// Error messages (InvalidArgument), one line per problem; all validation problems are reported
// together, a parse or override error stops at once:
//   job.textproto:2:3: Message type "fjord.proto.ModelSpec" has no field named "n_layr". Did you
//       mean "n_layer"? Valid fields in model: n_layer, n_head, n_embd, seq_len, vocab_size (...).
//   --set model.n_layer=abc: model.n_layer takes an integer (int32); "abc" is not one (...); ...
//   job.textproto:4:3: model.n_embd = 100 is not a multiple of model.n_head = 12 (default): ...
//   --set train.lr=0: train.lr = 0 must be a positive finite number ...
//   job.textproto: data.train is empty: ...            (a field left at its default)
// A field another field is compared with is cited with its origin in parentheses:
// "(job.textproto:3:3)", "(--set model.n_head=7)" or "(default)".
StatusOr<proto::JobSpec> ParseJobSpec(std::string_view text, const std::string& source_name,
                                      const std::vector<std::string>& overrides);

// The largest model.vocab_size a job may declare (2^24). Shards above 65,536 ids hold uint32 tokens
// (runtime/data/data.h), so this is a sanity bound, not the shards'.
inline constexpr int kMaxVocabSize = 1 << 24;

// Reads the file at `path` and calls ParseJobSpec with `path` as the source name. A missing file
// is NotFound naming the path; an unreadable one (a directory, no permission) is an error too.
StatusOr<proto::JobSpec> LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides);

// The resolved spec in text format, every field present (defaults included).
std::string JobSpecToText(const proto::JobSpec& job);

// A field whose value differs between two job specs: its dotted path and both values in text
// format (a repeated field as "[a, b]").
struct FieldChange {
  std::string path, before, after;
};

// Every leaf field of `before` and `after` whose values differ, in schema order (descending into
// messages), e.g. {"train.steps", "4", "8"}.
std::vector<FieldChange> JobSpecDifferences(const proto::JobSpec& before, const proto::JobSpec& after);

// The sequence length used for training: train.seq_len, or model.seq_len when that is 0.
int TrainSeqLen(const proto::JobSpec& job);

}  // namespace fjord
