// Protobuf text format with positions, on a message type protobuf itself ships (Duration), so the
// test needs none of fjord's schemas.
#include "common/proto_text.h"

#include <gmock/gmock.h>
#include <google/protobuf/duration.pb.h>
#include <gtest/gtest.h>

namespace fjord {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(CommonProtoText, ParsesAndLocatesFields) {
  google::protobuf::Duration d;
  google::protobuf::TextFormat::ParseInfoTree tree;
  ASSERT_TRUE(
      ParseTextProto("# a comment\nseconds: 5\n  nanos: 7\n", "d.textproto", &d, "duration.proto", &tree)
          .ok());
  EXPECT_EQ(d.seconds(), 5);
  EXPECT_EQ(d.nanos(), 7);
  EXPECT_EQ(FieldLocation("d.textproto", &tree, d, "seconds"), "d.textproto:2:1");
  EXPECT_EQ(FieldLocation("d.textproto", &tree, d, "nanos"), "d.textproto:3:3");
  EXPECT_EQ(FieldLocation("d.textproto", nullptr, d, "nanos"), "d.textproto");
  EXPECT_EQ(FieldLocation("d.textproto", &tree, d, "no_such_field"), "d.textproto");
}

TEST(CommonProtoText, ErrorsNameFileLineColumnAndSchema) {
  google::protobuf::Duration d;
  const Status bad_value = ParseTextProto("seconds: 5\nnanos: many\n", "d.textproto", &d, "duration.proto");
  ASSERT_FALSE(bad_value.ok());
  EXPECT_THAT(bad_value.message(), StartsWith("d.textproto:2:8: "));
  EXPECT_THAT(bad_value.message(),
              HasSubstr(". The file is protobuf text format of google.protobuf.Duration (duration.proto)"));
  // An unknown field is reported at its own name, not at the token after it.
  const Status unknown = ParseTextProto("seconds: 5\n  secs: 1\n", "d.textproto", &d, "duration.proto");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.message(), StartsWith("d.textproto:2:3: "));
  EXPECT_THAT(unknown.message(), HasSubstr("has no field named \"secs\""));
}

}  // namespace
}  // namespace fjord
