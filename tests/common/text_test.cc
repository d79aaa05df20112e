// Lists and hex.
#include "common/text.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fjord {
namespace {

TEST(CommonText, SplitAndJoinLists) {
  EXPECT_EQ(SplitList(" NO, SE,,"), (std::vector<std::string>{"NO", "SE"}));
  EXPECT_EQ(SplitList(""), std::vector<std::string>{});
  EXPECT_EQ(JoinList({}), "none");
  EXPECT_EQ(JoinList({}, "any"), "any");
  EXPECT_EQ(JoinList({"NO", "SE"}), "NO, SE");
}

TEST(CommonText, HexEncodeIsLowerCaseTwoDigitsAByte) {
  const unsigned char bytes[] = {0x00, 0x0f, 0xa0, 0xff};
  EXPECT_EQ(HexEncode(bytes, sizeof(bytes)), "000fa0ff");
  EXPECT_EQ(HexEncode(bytes, 0), "");
}

}  // namespace
}  // namespace fjord
