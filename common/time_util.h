// Wall-clock timestamps for records fjord writes (audit log, leases, manifests, checkpoint tenant
// records): one format everywhere, so they sort as text and any RFC 3339 parser reads them.
#pragma once

#include <chrono>
#include <string>

namespace fjord {

// `t` in UTC as RFC 3339 with milliseconds: "2024-05-01T12:34:56.789Z".
std::string FormatUtc(std::chrono::system_clock::time_point t);

// FormatUtc(now).
std::string UtcNow();

}  // namespace fjord
