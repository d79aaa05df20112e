// UTC timestamps: the text is parsed back with strptime/timegm (independent of the formatter) and
// compared with time(2) taken around the call.
#include "common/time_util.h"

#include <gtest/gtest.h>

#include <ctime>
#include <regex>

namespace fjord {
namespace {

TEST(CommonTime, UtcNowIsRfc3339WithMillisecondsAndNow) {
  const std::time_t before = std::time(nullptr);
  const std::string now = UtcNow();
  const std::time_t after = std::time(nullptr);
  ASSERT_TRUE(std::regex_match(now, std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)"))) << now;
  std::tm tm{};
  const char* rest = ::strptime(now.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  ASSERT_NE(rest, nullptr) << now;
  EXPECT_EQ(std::string(rest).size(), 5u) << now;  // ".mmmZ"
  const std::time_t parsed = ::timegm(&tm);
  EXPECT_GE(parsed, before) << now;
  EXPECT_LE(parsed, after) << now;
}

TEST(CommonTime, FormatUtcOfKnownInstants) {
  using std::chrono::milliseconds;
  using std::chrono::system_clock;
  EXPECT_EQ(FormatUtc(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
  // 2000-02-29T23:59:59.999Z = 951868799 s + 999 ms (a leap day, the last millisecond of it).
  EXPECT_EQ(FormatUtc(system_clock::time_point{milliseconds(951868799999LL)}), "2000-02-29T23:59:59.999Z");
  // Sub-millisecond parts are cut, never rounded up into the next second.
  EXPECT_EQ(FormatUtc(system_clock::time_point{milliseconds(1999)} + std::chrono::microseconds(999)),
            "1970-01-01T00:00:01.999Z");
}

}  // namespace
}  // namespace fjord
