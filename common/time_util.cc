#include "common/time_util.h"

#include <cstdio>
#include <ctime>

namespace fjord {

std::string FormatUtc(std::chrono::system_clock::time_point t) {
  using std::chrono::system_clock;
  const std::time_t seconds = system_clock::to_time_t(std::chrono::floor<std::chrono::seconds>(t));
  const auto ms =
      std::chrono::floor<std::chrono::milliseconds>(t) - std::chrono::floor<std::chrono::seconds>(t);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms.count()));
  return buf;
}

std::string UtcNow() { return FormatUtc(std::chrono::system_clock::now()); }

}  // namespace fjord
