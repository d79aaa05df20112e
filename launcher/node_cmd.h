// `fjord node init` and `fjord node show`: the operator's side of the node identity that the rank
// gate reads (runtime/tenancy/tenancy.h, docs/SOVEREIGNTY.md "Node identity").
#pragma once

#include <string>
#include <vector>

#include "runtime/tenancy/tenancy.h"

namespace CLI {
class App;
}

namespace fjord {

// `node init --jurisdiction CC --site S [--hostname H] [--force] [--root DIR]` (root only): writes
// FJORD_SYSCONFDIR/node.textproto (DIR/FJORD_SYSCONFDIR/... with --root) root-owned 0644 in the
// schema of proto NodeIdentity, atomically; refuses an existing file without --force, a jurisdiction
// that is not an ISO 3166-1 alpha-2 code and a site that is not a site name (exit 2), and a caller
// that is not root (exit 1). Prints the file it wrote, and any reason the rank gate would still
// refuse it.
// `node show [--root DIR]`: the identity this node presents to the rank gate and every reason the
// gate would refuse it (InspectNodeIdentity: the gate's own checks) or that weakens it
// (NodeTrustWarnings); exit 0 when the gate accepts it, 1 when it refuses.
// --root DIR (a test root, for tests that must not touch /etc/fjord) is a test override: refused
// unless the node settings allow test overrides, and named in what it writes and prints. The rank
// gate never reads a test root.
void AddNodeCommand(CLI::App& app);

// The lines `node show` prints for `inspection` (also the detail of `fjord doctor`'s identity row):
// what the identity says, then "refused: ..." per problem and "warning: ..." per warning.
std::vector<std::string> DescribeNodeInspection(const NodeInspection& inspection,
                                                const std::vector<std::string>& warnings);

}  // namespace fjord
