// The operator's inventory of nodes (proto/inventory.proto): parsing and validation, every
// problem at once with its SOURCE:LINE:COLUMN. Part of `fjord launch` (launcher/launch.h).
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "proto/inventory.pb.h"

namespace fjord {

// Parses and validates an inventory (text format of fjord.proto.Inventory, proto/inventory.proto).
// Every problem is reported at once, one line each, with SOURCE:LINE:COLUMN of the field:
// missing or duplicate hostname, duplicate address, a jurisdiction that is not ISO 3166-1 alpha-2,
// a bad site or interface name, slots < 1, and malformed tenant ceilings.
StatusOr<proto::Inventory> ParseInventory(std::string_view text, const std::string& source);
StatusOr<proto::Inventory> LoadInventory(const std::string& path);

}  // namespace fjord
