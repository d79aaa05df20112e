// `fjord audit verify`: checks an audit log's hash chain, head and anchors.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/tenancy/audit.h"

namespace CLI {
class App;
}

namespace fjord {

// The anchors that the tenant checkpoints under each of `checkpoints` (a checkpoint, DIR/step_* or
// DIR/checkpoints/step_*) recorded for the log at `path`; with `key_file` ("" = none) each record
// must first match its seal. A checkpoint whose record names another log, anchored an empty log or
// anchors none (written by an older fjord, or without a tenancy context) adds none. NotFound when
// an entry of `checkpoints` holds no tenant checkpoint at all.
StatusOr<std::vector<AuditAnchor>> CheckpointAnchors(const std::string& path,
                                                     const std::vector<std::string>& checkpoints,
                                                     const std::string& key_file);

// `fjord audit verify LOG [--anchor SEQ:HASH]... [--checkpoints DIR]... [--key FILE]`: exit 0 and
// "LOG: ok, N records, head HASH" when the chain, the head and every anchor hold; exit 1 and the
// first broken record (line, seq, event, what is wrong; for an anchor, its source) when they do
// not, or when the log cannot be read; exit 2 for bad arguments (an anchor that is not SEQ:HASH).
// --checkpoints DIR adds the audit head recorded in every tenant checkpoint at DIR, DIR/step_*
// and DIR/checkpoints/step_* (a run directory) whose record names LOG; with --key (the tenant's
// checkpoint key) each record must first match its tenant.seal, so a record edited to agree with
// a rewritten log is refused.
// Added as `audit verify` to `app` (launcher/cli.h).
void AddAuditCommand(CLI::App& app);

}  // namespace fjord
