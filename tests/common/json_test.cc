// The JSON subset the interchange formats rely on. Oracles are literal documents with known
// values and positions.
#include "common/json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace fjord {
namespace {

using ::testing::HasSubstr;

JsonValue ParseOk(const std::string& text) {
  StatusOr<JsonValue> v = ParseJson(text, "doc.json");
  EXPECT_TRUE(v.ok()) << v.status().message();
  return v.ok() ? v.value() : JsonValue();
}

std::string ParseError(const std::string& text) {
  StatusOr<JsonValue> v = ParseJson(text, "doc.json");
  EXPECT_FALSE(v.ok()) << "parsed: " << text;
  return v.ok() ? "" : v.status().message();
}

TEST(Json, ParsesValuesAndKeepsMemberOrderAndPositions) {
  const JsonValue v = ParseOk("{\n  \"b\": [1, -2.5e3, true, false, null],\n  \"a\": {\"x\": \"y\"}\n}");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.object().size(), 2u);
  EXPECT_EQ(v.object()[0].first, "b");  // file order, not sorted
  EXPECT_EQ(v.object()[1].first, "a");
  const JsonValue& b = *v.Find("b");
  ASSERT_EQ(b.array().size(), 5u);
  EXPECT_EQ(b.line(), 2);
  EXPECT_EQ(b.column(), 8);
  EXPECT_EQ(b.array()[0].AsInt64(), 1);
  EXPECT_DOUBLE_EQ(b.array()[1].number(), -2500.0);
  EXPECT_FALSE(b.array()[1].AsInt64().has_value());
  EXPECT_TRUE(b.array()[2].is_bool() && b.array()[2].bool_value());
  EXPECT_TRUE(b.array()[3].is_bool() && !b.array()[3].bool_value());
  EXPECT_TRUE(b.array()[4].is_null());
  EXPECT_EQ(v.Find("a")->Find("x")->text(), "y");
  EXPECT_EQ(v.Find("a")->line(), 3);
  EXPECT_EQ(v.Find("missing"), nullptr);
}

TEST(Json, IntegersConvertExactlyAt64Bits) {
  const JsonValue v =
      ParseOk("[18446744073709551615, 9223372036854775807, -9223372036854775808, 18446744073709551616]");
  EXPECT_EQ(v.array()[0].AsUint64(), 18446744073709551615ull);
  EXPECT_FALSE(v.array()[0].AsInt64().has_value());
  EXPECT_EQ(v.array()[1].AsInt64(), INT64_MAX);
  EXPECT_EQ(v.array()[2].AsInt64(), INT64_MIN);
  EXPECT_FALSE(v.array()[2].AsUint64().has_value());
  EXPECT_FALSE(v.array()[3].AsUint64().has_value());  // out of range, not wrapped
}

TEST(Json, DecodesEscapesIncludingSurrogatePairs) {
  const JsonValue v = ParseOk(R"(["a\"b\\c\/d\n\t", "\u0120the", "\u00f8", "\ud83c\udf0a", "\u20ac"])");
  EXPECT_EQ(v.array()[0].text(), "a\"b\\c/d\n\t");
  EXPECT_EQ(v.array()[1].text(), "\xC4\xA0the");  // U+0120, GPT-2's space marker
  EXPECT_EQ(v.array()[2].text(), "\xC3\xB8");
  EXPECT_EQ(v.array()[3].text(), "\xF0\x9F\x8C\x8A");  // U+1F30A
  EXPECT_EQ(v.array()[4].text(), "\xE2\x82\xAC");
}

TEST(Json, QuoteRoundTripsThroughTheParser) {
  const std::string s =
      std::string("quote\" backslash\\ newline\n tab\t ctrl\x01 nul") + std::string(1, '\0') + "ø";
  EXPECT_EQ(JsonQuote("a\"b"), "\"a\\\"b\"");
  EXPECT_EQ(JsonQuote(std::string(1, '\x1f')), "\"\\u001f\"");
  EXPECT_EQ(ParseOk(JsonQuote(s)).text(), s);
}

TEST(Json, ErrorsNameSourceLineAndColumn) {
  EXPECT_THAT(ParseError("{\n  \"a\": 1,\n  \"a\": 2\n}"), HasSubstr("doc.json:3:3: duplicate key \"a\""));
  EXPECT_THAT(ParseError("{\"a\": 1} x"), HasSubstr("doc.json:1:10: unexpected text after the JSON value"));
  EXPECT_THAT(ParseError("{\"a\" 1}"), HasSubstr("doc.json:1:6: expected ':'"));
  EXPECT_THAT(ParseError("[1, 2"), HasSubstr("expected ',' or ']'"));
  EXPECT_THAT(ParseError("\"abc"), HasSubstr("unterminated string"));
  EXPECT_THAT(ParseError("[01]"), HasSubstr("leading zero"));
  EXPECT_THAT(ParseError("[tru]"), HasSubstr("invalid literal"));
  EXPECT_THAT(ParseError("\"\\x\""), HasSubstr("invalid escape"));
  EXPECT_THAT(ParseError("\"\\udc00\""), HasSubstr("unpaired low surrogate"));
  EXPECT_THAT(ParseError("\"\\ud800x\""), HasSubstr("high surrogate not followed"));
  EXPECT_THAT(ParseError("\"a\nb\""), HasSubstr("control character in string"));
  EXPECT_THAT(ParseError(""), HasSubstr("unexpected end of text"));
  EXPECT_THAT(ParseError(std::string(65, '[') + std::string(65, ']')), HasSubstr("nesting deeper than 64"));
}

}  // namespace
}  // namespace fjord

namespace fjord {
namespace {

TEST(Json, QuoteListQuotesEachItemWithoutSpaces) {
  EXPECT_EQ(JsonQuoteList(std::vector<std::string>{}), "[]");
  EXPECT_EQ(JsonQuoteList(std::vector<std::string>{"NO", "a\"b"}), "[\"NO\",\"a\\\"b\"]");
  const StatusOr<JsonValue> parsed = ParseJson(JsonQuoteList(std::vector<std::string>{"x\ny", ""}), "list");
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  ASSERT_EQ(parsed->array().size(), 2u);
  EXPECT_EQ(parsed->array()[0].text(), "x\ny");
  EXPECT_EQ(parsed->array()[1].text(), "");
}

}  // namespace
}  // namespace fjord
