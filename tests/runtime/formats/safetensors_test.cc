// safetensors reader and writer. Oracles: files assembled byte by byte in the test from the
// format description (runtime/formats/safetensors.h), the writer's bytes decoded by hand, and tensor
// values chosen by the test. Every refusal checks that the message names the file, the tensor
// and the rule.
#include "runtime/formats/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::AppendLe;
using testing_util::ReadBytes;
using testing_util::WriteBytes;

class SafetensorsTest : public testing_util::ScratchDirTest {
 protected:
  // A file from a header text and data bytes, built by hand.
  std::string Build(const std::string& header, const std::string& data) {
    std::string bytes;
    AppendLe<uint64_t>(&bytes, header.size());
    bytes += header + data;
    const std::string path = Path("hand.safetensors");
    WriteBytes(path, bytes);
    return path;
  }

  std::string ReadError(const std::string& path) {
    StatusOr<Safetensors> st = ReadSafetensors(path);
    EXPECT_FALSE(st.ok());
    return st.ok() ? "" : st.status().message();
  }
};

TEST_F(SafetensorsTest, RoundTripKeepsNamesShapesDtypesBytesAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-40f};
  const std::vector<uint16_t> b = {0x3F80, 0xC000, 0x7F80};
  const std::vector<int64_t> c = {INT64_MIN, 7};
  const std::vector<SafetensorsTensorRef> refs = {{"layer.a", Dtype::kF32, {2, 3}, a.data()},
                                                  {"b", Dtype::kBF16, {3}, b.data()},
                                                  {"empty", Dtype::kF32, {0, 4}, nullptr},
                                                  {"c", Dtype::kI64, {1, 1, 2}, c.data()}};
  const std::string path = Path("x.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, refs, {{"format", "pt"}, {"note", "quote \" and ø"}}).ok());
  EXPECT_FALSE(HasTempFiles());

  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  ASSERT_EQ(st->tensors().size(), 4u);
  for (const SafetensorsTensorRef& ref : refs) {
    const SafetensorsTensor* t = st->Find(ref.name);
    ASSERT_NE(t, nullptr) << ref.name;
    EXPECT_EQ(t->dtype, ref.dtype);
    EXPECT_EQ(t->shape, ref.shape);
    ASSERT_EQ(t->num_bytes, static_cast<size_t>(t->num_elements()) * DtypeSize(ref.dtype));
    if (t->num_bytes > 0) {
      EXPECT_EQ(std::memcmp(t->data, ref.data, t->num_bytes), 0) << ref.name;
    }
  }
  EXPECT_EQ(st->metadata().at("format"), "pt");
  EXPECT_EQ(st->metadata().at("note"), "quote \" and ø");
  EXPECT_EQ(st->Find("nope"), nullptr);
}

// Decodes the writer's output by hand: length prefix, space padding to 8 bytes, offsets in
// write order, then the raw little-endian data.
TEST_F(SafetensorsTest, WriterBytesFollowTheFormat) {
  const std::vector<float> a = {1.0f, 2.0f, 3.0f};
  const std::vector<uint8_t> b = {9, 8};
  const std::string path = Path("w.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"a", Dtype::kF32, {3}, a.data()}, {"b", Dtype::kU8, {2}, b.data()}}).ok());
  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  ASSERT_EQ(bytes.size(), 8 + n + 12 + 2);
  std::string header = bytes.substr(8, n);
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  header.resize(last + 1);
  EXPECT_EQ(
      header,
      R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"U8","shape":[2],"data_offsets":[12,14]}})");
  float back[3];
  std::memcpy(back, bytes.data() + 8 + n, 12);
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[2], 3.0f);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 12]), 9);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 13]), 8);
}

TEST_F(SafetensorsTest, ReadsAHandBuiltFileWithPaddingAndOutOfOrderEntries) {
  std::string data;
  AppendLe<uint8_t>(&data, 7);
  AppendLe<float>(&data, 0.5f);  // unaligned on purpose: readers must copy, not cast
  const std::string path = Build(
      "{\"z\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [1, 5]},\n"
      " \"y\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}   ",
      data);
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  ASSERT_EQ(st->tensors().size(), 2u);
  EXPECT_EQ(st->tensors()[0].name, "y");  // data order
  EXPECT_EQ(st->tensors()[1].name, "z");
  float z;
  ASSERT_TRUE(TensorToFloat32(*st->Find("z"), path, &z).ok());
  EXPECT_EQ(z, 0.5f);
  EXPECT_EQ(st->Find("z")->num_elements(), 1);
}

// Found while writing tests/fuzz/fuzz_safetensors, confirmed with it under UBSan: the dimensions of an empty
// tensor are bounded only through its byte count, 0, so num_elements() multiplied past int64.
TEST_F(SafetensorsTest, EmptyTensorWithHugeDimensionsHasZeroElements) {
  const std::string path =
      Build(R"({"e": {"dtype": "U8", "shape": [4294967296, 2147483648, 0], "data_offsets": [0, 0]}})", "");
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  EXPECT_EQ(st->Find("e")->num_elements(), 0);
  EXPECT_EQ(st->Find("e")->num_bytes, 0u);
}

TEST_F(SafetensorsTest, ConvertsHalfAndBfloat16ExactlyToFloat32) {
  // F16 bit patterns and their exact values (IEEE binary16).
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x8000, 0x7C00, 0xFC00, 0x3555};
  const std::vector<float> f16_values = {
      1.0f,  -2.0f,    65504.0f,  std::ldexp(1.0f, -24), 1023 * std::ldexp(1.0f, -24),
      -0.0f, INFINITY, -INFINITY, 0.333251953125f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0x4049, 0xFF80, 0x0001};
  const std::string path = Path("h.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(path, {{"h", Dtype::kF16, {9}, f16.data()}, {"b", Dtype::kBF16, {4}, bf16.data()}})
          .ok());
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  std::vector<float> out(9);
  ASSERT_TRUE(TensorToFloat32(*st->Find("h"), path, out.data()).ok());
  for (size_t i = 0; i < f16.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(f16_values[i]))
        << "f16 0x" << std::hex << f16[i];
  }
  ASSERT_TRUE(TensorToFloat32(*st->Find("b"), path, out.data()).ok());
  for (size_t i = 0; i < bf16.size(); ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), uint32_t{bf16[i]} << 16);
  // NaN stays NaN.
  const uint16_t nan16 = 0x7E00;
  ASSERT_TRUE(WriteSafetensors(path, {{"n", Dtype::kF16, {1}, &nan16}}).ok());
  st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(TensorToFloat32(st->tensors()[0], path, out.data()).ok());
  EXPECT_TRUE(std::isnan(out[0]));
}

// Found by tests/fuzz/fuzz_safetensors (UBSan): converting an empty F32 tensor passed the caller's null
// `out` (an empty vector's data()) to memcpy, which is undefined even for 0 bytes.
TEST_F(SafetensorsTest, ConvertsEmptyTensorsWithoutTouchingTheOutput) {
  const std::string path = Build(R"({"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},)"
                                 R"( "h": {"dtype": "F16", "shape": [0], "data_offsets": [0, 0]}})",
                                 "");
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok()) << st.status().message();
  for (const SafetensorsTensor& t : st->tensors()) {
    EXPECT_EQ(t.num_elements(), 0);
    EXPECT_TRUE(TensorToFloat32(t, path, nullptr).ok()) << t.name;
  }
}

TEST_F(SafetensorsTest, ConversionRefusesNonFloatDtypes) {
  const int64_t v = 3;
  const std::string path = Path("i.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"ids", Dtype::kI64, {1}, &v}}).ok());
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok());
  float out;
  const Status s = TensorToFloat32(st->tensors()[0], path, &out);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(path), HasSubstr("tensor \"ids\""), HasSubstr("dtype I64"),
                                 HasSubstr("only F32, F16 and BF16")));
}

TEST_F(SafetensorsTest, RefusesShortFileAndOversizedHeaderLength) {
  const std::string p1 = Path("short.safetensors");
  WriteBytes(p1, "abc");
  EXPECT_THAT(ReadError(p1),
              AllOf(HasSubstr(p1), HasSubstr("3 bytes, shorter than the 8-byte header length")));
  std::string bytes;
  AppendLe<uint64_t>(&bytes, 100);
  bytes += "{}";
  WriteBytes(p1, bytes);
  EXPECT_THAT(ReadError(p1), AllOf(HasSubstr(p1), HasSubstr("header length 100 exceeds the 2 bytes")));
  bytes.clear();
  AppendLe<uint64_t>(&bytes, uint64_t{1} << 40);
  WriteBytes(p1, bytes);
  EXPECT_THAT(ReadError(p1), HasSubstr("exceeds the format's limit"));
  EXPECT_THAT(ReadError(Path("missing.safetensors")),
              AllOf(HasSubstr("cannot open"), HasSubstr("missing.safetensors")));
}

TEST_F(SafetensorsTest, RefusesMalformedHeaders) {
  EXPECT_THAT(
      ReadError(Build("{\"a\": {\"dtype\": \"F32\",\n \"shape\": [1] \"data_offsets\": [0, 4]}}", "1234")),
      AllOf(HasSubstr("hand.safetensors header:2:15"), HasSubstr("expected ',' or '}'")));
  EXPECT_THAT(ReadError(Build("[1, 2]", "")),
              HasSubstr("the header is a JSON array, not an object of tensors"));
  EXPECT_THAT(ReadError(Build(R"({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", "1234")),
              AllOf(HasSubstr("tensor \"a\": unknown dtype \"F33\""), HasSubstr("known dtypes: BOOL, U8")));
  EXPECT_THAT(ReadError(Build(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "1234")),
              AllOf(HasSubstr("tensor \"a\""), HasSubstr("shape must be an array of non-negative integers")));
  EXPECT_THAT(ReadError(Build(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", "1234")),
              AllOf(HasSubstr("tensor \"a\""), HasSubstr("data_offsets must be [begin, end]")));
  EXPECT_THAT(ReadError(Build(R"({"a": {"dtype": "F32", "shape": [1]}})", "")),
              AllOf(HasSubstr("tensor \"a\": missing data_offsets")));
  EXPECT_THAT(
      ReadError(Build(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", "1234")),
      AllOf(HasSubstr("tensor \"a\": unknown field \"x\"")));
  EXPECT_THAT(ReadError(Build(R"({"a": 5})", "")), HasSubstr("tensor \"a\" is a number, not an object"));
  EXPECT_THAT(ReadError(Build(R"({"__metadata__": {"k": 1}})", "")),
              AllOf(HasSubstr("__metadata__: value of \"k\" is a number"),
                    HasSubstr("metadata values must be strings")));
}

TEST_F(SafetensorsTest, RefusesOffsetsOutOfRangeWrongSizesGapsOverlapsAndTrailingBytes) {
  const std::string tensor_a = R"("a": {"dtype": "F32", "shape": [1], "data_offsets": )";
  EXPECT_THAT(
      ReadError(Build("{" + tensor_a + "[0, 8]}}", "1234")),
      AllOf(HasSubstr("hand.safetensors: tensor \"a\": data_offsets [0, 8] are not a range inside the 4 data "
                      "bytes")));
  EXPECT_THAT(ReadError(Build("{" + tensor_a + "[4, 0]}}", "1234")), HasSubstr("are not a range"));
  EXPECT_THAT(ReadError(Build(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", "1234")),
              AllOf(HasSubstr("tensor \"a\": data_offsets span 4 bytes but shape [2] of F32 needs 8")));
  const std::string b_at = R"("b": {"dtype": "U8", "shape": [1], "data_offsets": )";
  EXPECT_THAT(ReadError(Build("{" + tensor_a + "[0, 4]}, " + b_at + "[5, 6]}}", "123456")),
              AllOf(HasSubstr("tensor \"b\" starts at data offset 5 but tensor \"a\" ends at 4"),
                    HasSubstr("contiguous without gaps")));
  EXPECT_THAT(ReadError(Build("{" + tensor_a + "[0, 4]}, " + b_at + "[3, 4]}}", "1234")),
              AllOf(HasSubstr("tensor \"b\" starts at data offset 3 but tensor \"a\" ends at 4"),
                    HasSubstr("non-overlapping")));
  EXPECT_THAT(ReadError(Build("{" + b_at + "[1, 2]}}", "12")),
              AllOf(HasSubstr("tensor \"b\" starts at data offset 1 but the start of the data ends at 0")));
  EXPECT_THAT(ReadError(Build("{" + tensor_a + "[0, 4]}}", "12345")),
              AllOf(HasSubstr("the tensors cover 4 of the 5 data bytes"), HasSubstr("trailing bytes")));
}

TEST_F(SafetensorsTest, WriterRefusesBadTensorsAndLeavesNoFile) {
  const float x = 1.0f;
  const std::string path = Path("bad.safetensors");
  auto error = [&](const std::vector<SafetensorsTensorRef>& refs) {
    const Status s = WriteSafetensors(path, refs);
    EXPECT_FALSE(s.ok());
    EXPECT_FALSE(std::filesystem::exists(path));
    return s.message();
  };
  EXPECT_THAT(error({{"a", Dtype::kF32, {1}, &x}, {"a", Dtype::kF32, {1}, &x}}),
              AllOf(HasSubstr(path), HasSubstr("tensor \"a\" appears twice")));
  EXPECT_THAT(error({{"__metadata__", Dtype::kF32, {1}, &x}}), HasSubstr("reserved for metadata"));
  EXPECT_THAT(error({{"", Dtype::kF32, {1}, &x}}), HasSubstr("empty name"));
  EXPECT_THAT(error({{"n", Dtype::kF32, {2, -1}, &x}}),
              AllOf(HasSubstr("tensor \"n\": shape [2, -1]"), HasSubstr("negative dimension")));
  EXPECT_THAT(error({{"d", Dtype::kF32, {1}, nullptr}}), HasSubstr("tensor \"d\": data is null"));
  const Status s = WriteSafetensors(Path("no/such/dir/x.safetensors"), {{"a", Dtype::kF32, {1}, &x}});
  EXPECT_THAT(s.message(), AllOf(HasSubstr("no/such/dir/x.safetensors"), HasSubstr("directory exists")));
}

TEST_F(SafetensorsTest, RewriteReplacesTheFileAtomically) {
  const float one = 1.0f, two = 2.0f;
  const std::string path = Path("r.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"v", Dtype::kF32, {1}, &one}}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"w", Dtype::kF32, {1}, &two}}).ok());
  StatusOr<Safetensors> st = ReadSafetensors(path);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(st->tensors().size(), 1u);
  EXPECT_EQ(st->tensors()[0].name, "w");
  EXPECT_FALSE(HasTempFiles());
}

TEST(SafetensorsDtype, NamesAndSizesMatchTheFormat) {
  EXPECT_EQ(DtypeName(Dtype::kBF16), "BF16");
  EXPECT_EQ(DtypeName(Dtype::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(DtypeSize(Dtype::kF64), 8u);
  EXPECT_EQ(DtypeSize(Dtype::kF16), 2u);
  EXPECT_EQ(ParseDtype("I32"), Dtype::kI32);
  EXPECT_FALSE(ParseDtype("f32").has_value());
}

}  // namespace
}  // namespace fjord
