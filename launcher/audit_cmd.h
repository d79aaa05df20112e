// `fjord audit verify`: checks an audit log's hash chain, head and anchors.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace fjord {

inline constexpr char kAuditUsage[] =
    "fjord audit verify LOG [--anchor SEQ:HASH]... [--checkpoints DIR]... [--key FILE]";
inline constexpr char kAuditSummary[] =
    "check an audit log's hash chain, head and anchors (SEQ:HASH as launch prints them, and the heads "
    "the tenant checkpoints under DIR recorded); report the first broken record";
const std::vector<std::string>& AuditValueFlags();  // --anchor, --checkpoints (may repeat), --key

// `fjord audit verify LOG [--anchor SEQ:HASH]... [--checkpoints DIR]... [--key FILE]`: exit 0 and
// "LOG: ok, N records, head HASH" when the chain, the head and every anchor hold; exit 1 and the
// first broken record (line, seq, event, what is wrong; for an anchor, its source) when they do
// not, or when the log cannot be read; exit 2 for bad arguments (an anchor that is not SEQ:HASH).
// --checkpoints DIR adds the audit head recorded in every tenant checkpoint at DIR, DIR/step_*
// and DIR/checkpoints/step_* (a run directory) whose record names LOG; with --key (the tenant's
// checkpoint key) each record must first match its tenant.seal, so a record edited to agree with
// a rewritten log is refused.
int RunAuditCommand(const std::vector<std::string>& positional,
                    const std::multimap<std::string, std::string>& flags);

}  // namespace fjord
