// Text helpers: comma-separated lists as users write them on command lines and in messages, and
// bytes as hex.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fjord {

// "NO,SE" -> {"NO", "SE"}; empty items and surrounding spaces dropped.
std::vector<std::string> SplitList(std::string_view list);

// {"NO", "SE"} -> "NO, SE"; an empty list -> `empty`.
std::string JoinList(const std::vector<std::string>& items, const std::string& empty = "none");

// `size` bytes at `data` as lower-case hex, two digits a byte.
std::string HexEncode(const void* data, size_t size);

// Appends `cp` (<= U+10FFFF) to *out in UTF-8.
void AppendUtf8Char(char32_t cp, std::string* out);

// A byte count for messages: "1.50 GiB"; SIZE_MAX (a saturated size) as "more than 2^64 bytes".
std::string GiBText(size_t bytes);
// "1610612736 bytes (1.50 GiB)"; SIZE_MAX as "more than 2^64 bytes".
std::string BytesText(size_t bytes);

}  // namespace fjord
