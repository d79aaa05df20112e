// Protobuf text format files (job specs, inventories, node identities, manifests) read with errors
// that name the file, line and column, and the schema to look up.
#pragma once

#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

#include <string>
#include <string_view>

#include "common/status.h"

namespace fjord {

// Parses protobuf text format `text` (from `source`, a path) into `out`, recording field locations
// in `tree` when given. Errors read "SOURCE:LINE:COLUMN: what protobuf said. The file is protobuf
// text format of <message type> (<schema>)".
Status ParseTextProto(std::string_view text, const std::string& source, google::protobuf::Message* out,
                      const std::string& schema, google::protobuf::TextFormat::ParseInfoTree* tree = nullptr);

// "SOURCE:LINE:COLUMN" of field `name` (element `index` of a repeated field, else -1) as recorded
// in `tree`; just SOURCE when unknown.
std::string FieldLocation(const std::string& source, const google::protobuf::TextFormat::ParseInfoTree* tree,
                          const google::protobuf::Message& message, const std::string& name, int index = -1);

}  // namespace fjord
