#include "runtime/data/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace fjord {
namespace {

using ::testing::HasSubstr;

TEST(TokenizerByte, NameAndVocabulary) {
  std::unique_ptr<Tokenizer> t = MakeByteTokenizer();
  EXPECT_EQ(t->name(), "byte");
  EXPECT_EQ(t->vocab_size(), 256);
}

TEST(TokenizerByte, EncodesEachByteAsItsUnsignedValue) {
  std::string text;
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  text += "h\xC3\xA9";  // "hé": multi-byte UTF-8 stays bytes
  const std::vector<int32_t> ids = MakeByteTokenizer()->Encode(text);
  ASSERT_EQ(ids.size(), 259u);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ids[b], b);
  EXPECT_EQ(ids[256], 'h');
  EXPECT_EQ(ids[257], 0xC3);
  EXPECT_EQ(ids[258], 0xA9);
}

TEST(TokenizerByte, DecodeInvertsEncodeOnAnyBytes) {
  const std::string text = std::string("line one\nline two\0with a NUL\xff\xfe\0", 31);
  ASSERT_EQ(text.back(), '\0');
  std::unique_ptr<Tokenizer> t = MakeByteTokenizer();
  EXPECT_EQ(t->Decode(t->Encode(text)), text);
  EXPECT_EQ(t->Decode({}), "");
}

TEST(TokenizerByte, OutOfRangeIdsDecodeToReplacementCharacter) {
  const std::string decoded = MakeByteTokenizer()->Decode({'a', -1, 256, 50000, 'b'});
  EXPECT_EQ(decoded,
            "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
            "b");
}

TEST(TokenizerFactory, MakesTheByteTokenizer) {
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeTokenizer("byte");
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t.value()->name(), "byte");
}

TEST(TokenizerFactory, UnknownNameListsTheKnownOnes) {
  StatusOr<std::unique_ptr<Tokenizer>> t = MakeTokenizer("gpt3");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("unknown tokenizer \"gpt3\""));
  EXPECT_THAT(t.status().message(), HasSubstr("known tokenizers: byte"));
}

}  // namespace
}  // namespace fjord
