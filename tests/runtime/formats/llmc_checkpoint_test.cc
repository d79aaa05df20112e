// llm.c checkpoints. Oracles: files written kind-major by a loop in this test from the format
// description (values that encode their kind and position), bfloat16 rounding computed in double
// from the two neighbouring candidates, and llm.c's own writer (tests/bench/llmc_inputs.py) sliced by
// numpy into our tensors.
#include "runtime/formats/llmc_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/runtime/formats/gpt2_test_model.h"
#include "tests/runtime/formats/test_util.h"

namespace fjord {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing_util::AppendLe;
using testing_util::MakeModel;
using testing_util::ReadBytes;
using testing_util::TestModel;
using testing_util::WriteBytes;

// llm.c's parameter kinds: our name suffix (per layer) or name, and elements per layer.
struct Kind {
  const char* name;
  bool per_layer;
  size_t (*size)(const Gpt2Dims&);
};
const Kind kKinds[] = {
    {"wte.weight", false, [](const Gpt2Dims& d) { return size_t(d.padded_vocab) * d.n_embd; }},
    {"wpe.weight", false, [](const Gpt2Dims& d) { return size_t(d.max_seq_len) * d.n_embd; }},
    {"ln_1.weight", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"ln_1.bias", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"attn.c_attn.weight", true, [](const Gpt2Dims& d) { return size_t(3) * d.n_embd * d.n_embd; }},
    {"attn.c_attn.bias", true, [](const Gpt2Dims& d) { return size_t(3) * d.n_embd; }},
    {"attn.c_proj.weight", true, [](const Gpt2Dims& d) { return size_t(d.n_embd) * d.n_embd; }},
    {"attn.c_proj.bias", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"ln_2.weight", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"ln_2.bias", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"mlp.c_fc.weight", true, [](const Gpt2Dims& d) { return size_t(4) * d.n_embd * d.n_embd; }},
    {"mlp.c_fc.bias", true, [](const Gpt2Dims& d) { return size_t(4) * d.n_embd; }},
    {"mlp.c_proj.weight", true, [](const Gpt2Dims& d) { return size_t(4) * d.n_embd * d.n_embd; }},
    {"mlp.c_proj.bias", true, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"ln_f.weight", false, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
    {"ln_f.bias", false, [](const Gpt2Dims& d) { return size_t(d.n_embd); }},
};

std::string Header(const Gpt2Dims& d, int32_t magic = 20240326, int32_t version = 3) {
  std::string bytes;
  for (int32_t v :
       {magic, version, d.max_seq_len, d.vocab_size, d.n_layer, d.n_head, d.n_embd, d.padded_vocab}) {
    AppendLe(&bytes, v);
  }
  bytes.resize(1024, '\0');
  return bytes;
}

// Element j of kind k's block (all layers together) in the hand-written files.
float Fp32Value(int k, size_t j) { return static_cast<float>(k * 100000 + static_cast<int>(j)); }
uint16_t Bf16Bits(int k, size_t j) { return static_cast<uint16_t>(0x3C00 + (k * 131 + j) % 0x1000); }

// The whole file, written kind-major, independently of the library.
std::string HandWrittenFile(const Gpt2Dims& d, int version) {
  std::string bytes = Header(d, 20240326, version);
  for (int k = 0; k < 16; ++k) {
    const size_t n = kKinds[k].size(d) * (kKinds[k].per_layer ? d.n_layer : 1);
    for (size_t j = 0; j < n; ++j) {
      if (version == 3)
        AppendLe(&bytes, Fp32Value(k, j));
      else
        AppendLe(&bytes, Bf16Bits(k, j));
    }
  }
  return bytes;
}

// Round to nearest even, decided in double between the two bfloat16 neighbours of x.
uint16_t OracleBf16(float x) {
  if (std::isnan(x)) return 0;  // checked separately
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint16_t lo = static_cast<uint16_t>(bits >> 16), hi = static_cast<uint16_t>(lo + 1);
  auto value = [](uint16_t b) {  // the exponent-255 pattern counts as 2^128, as if unbounded
    if ((b & 0x7FFF) == 0x7F80) return std::copysign(std::ldexp(1.0, 128), (b & 0x8000) ? -1.0 : 1.0);
    return static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(b) << 16));
  };
  if ((bits & 0x7FFFFFFF) == 0x7F800000) return lo;  // infinities are exact
  const double dl = std::fabs(static_cast<double>(x) - value(lo)),
               dh = std::fabs(value(hi) - static_cast<double>(x));
  if (dl != dh) return dl < dh ? lo : hi;
  return (lo & 1) ? hi : lo;
}

class LlmcTest : public testing_util::ScratchDirTest {
 protected:
  std::string ReadError(const std::string& path, const TestModel& m) {
    std::vector<float> out(m.params.size());
    const Status s = ReadLlmcCheckpoint(path, m.dims, m.slots, out.data(), out.size());
    EXPECT_FALSE(s.ok());
    return s.message();
  }
};

Gpt2Dims Dims() { return {2, 2, 8, 16, 50, 128}; }

TEST_F(LlmcTest, ReadsAKindMajorFp32FileIntoTheRightTensors) {
  const TestModel m = MakeModel(Dims(), 1);
  const std::string path = Path("model.bin");
  WriteBytes(path, HandWrittenFile(m.dims, 3));
  StatusOr<LlmcHeader> header = ReadLlmcHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().message();
  EXPECT_EQ(header->precision, LlmcPrecision::kFp32);
  EXPECT_EQ(header->dims.n_layer, 2);
  EXPECT_EQ(header->dims.n_head, 2);
  EXPECT_EQ(header->dims.n_embd, 8);
  EXPECT_EQ(header->dims.max_seq_len, 16);
  EXPECT_EQ(header->dims.vocab_size, 50);
  EXPECT_EQ(header->dims.padded_vocab, 128);

  std::vector<float> out(m.params.size(), -1.0f);
  const Status s = ReadLlmcCheckpoint(path, m.dims, m.slots, out.data(), out.size());
  ASSERT_TRUE(s.ok()) << s.message();
  size_t checked = 0;
  for (int k = 0; k < 16; ++k) {
    const size_t per = kKinds[k].size(m.dims);
    for (int l = 0; l < (kKinds[k].per_layer ? 2 : 1); ++l) {
      const std::string name =
          kKinds[k].per_layer ? "h." + std::to_string(l) + "." + kKinds[k].name : kKinds[k].name;
      const float* t = out.data() + m.slot(name).offset;
      for (size_t i = 0; i < per; ++i, ++checked)
        ASSERT_EQ(t[i], Fp32Value(k, l * per + i)) << name << "[" << i << "]";
    }
  }
  size_t total = 0;
  for (const ParamSlot& s : m.slots)
    total += s.shape.size() == 1 ? s.shape[0] : size_t(s.shape[0]) * s.shape[1];
  EXPECT_EQ(checked, total);                                          // every element of every tensor
  EXPECT_EQ(out[m.slot("h.0.attn.c_attn.bias").offset + 24], -1.0f);  // alignment gap untouched
}

TEST_F(LlmcTest, ReadsBf16FilesByExactWidening) {
  const TestModel m = MakeModel(Dims(), 2);
  const std::string path = Path("model_bf16.bin");
  WriteBytes(path, HandWrittenFile(m.dims, 5));
  StatusOr<LlmcHeader> header = ReadLlmcHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().message();
  EXPECT_EQ(header->precision, LlmcPrecision::kBf16);
  std::vector<float> out(m.params.size());
  ASSERT_TRUE(ReadLlmcCheckpoint(path, m.dims, m.slots, out.data(), out.size()).ok());
  for (int k = 0; k < 16; ++k) {
    const size_t per = kKinds[k].size(m.dims);
    for (int l = 0; l < (kKinds[k].per_layer ? 2 : 1); ++l) {
      const std::string name =
          kKinds[k].per_layer ? "h." + std::to_string(l) + "." + kKinds[k].name : kKinds[k].name;
      const float* t = out.data() + m.slot(name).offset;
      for (size_t i = 0; i < per; ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(t[i]), uint32_t{Bf16Bits(k, l * per + i)} << 16)
            << name << "[" << i << "]";
      }
    }
  }
}

TEST_F(LlmcTest, Fp32RoundTripIsBitExactAndMatchesTheHandWrittenLayout) {
  const TestModel m = MakeModel(Dims(), 3);
  const std::string path = Path("rt.bin");
  ASSERT_TRUE(
      WriteLlmcCheckpoint(path, m.dims, m.slots, m.params.data(), m.params.size(), LlmcPrecision::kFp32)
          .ok());
  EXPECT_FALSE(HasTempFiles());
  const std::string bytes = ReadBytes(path);
  EXPECT_EQ(bytes.substr(0, 1024), Header(m.dims));
  // The first kinds in the file: wte (Vp*C), wpe, then ln_1.weight of layer 0 and of layer 1.
  const float* f = reinterpret_cast<const float*>(bytes.data() + 1024);
  EXPECT_EQ(std::memcmp(f, m.at("wte.weight"), 128 * 8 * 4), 0);
  EXPECT_EQ(std::memcmp(f + 128 * 8, m.at("wpe.weight"), 16 * 8 * 4), 0);
  EXPECT_EQ(std::memcmp(f + 144 * 8, m.at("h.0.ln_1.weight"), 8 * 4), 0);
  EXPECT_EQ(std::memcmp(f + 145 * 8, m.at("h.1.ln_1.weight"), 8 * 4), 0);

  std::vector<float> out(m.params.size(), 0.0f);
  ASSERT_TRUE(ReadLlmcCheckpoint(path, m.dims, m.slots, out.data(), out.size()).ok());
  for (const ParamSlot& s : m.slots) {
    size_t n = 1;
    for (int x : s.shape) n *= x;
    ASSERT_EQ(std::memcmp(out.data() + s.offset, m.params.data() + s.offset, n * 4), 0) << s.name;
  }
}

TEST_F(LlmcTest, Bf16WriteRoundsToNearestEven) {
  TestModel m = MakeModel(Dims(), 4);
  // Ties, near-ties, overflow to infinity, subnormals and specials at the start of wte.
  const uint32_t specials[] = {0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0xBF808000, 0x7F7FFFFF,
                               0x00008000, 0x00018000, 0x7F800000, 0xFF800000, 0x80000000, 0x7FC00001};
  float* wte = m.params.data() + m.slot("wte.weight").offset;
  for (size_t i = 0; i < std::size(specials); ++i) wte[i] = std::bit_cast<float>(specials[i]);
  const std::string path = Path("bf16.bin");
  ASSERT_TRUE(
      WriteLlmcCheckpoint(path, m.dims, m.slots, m.params.data(), m.params.size(), LlmcPrecision::kBf16)
          .ok());
  StatusOr<LlmcHeader> header = ReadLlmcHeader(path);
  ASSERT_TRUE(header.ok()) << header.status().message();
  EXPECT_EQ(header->precision, LlmcPrecision::kBf16);

  const std::string bytes = ReadBytes(path);
  const uint16_t* b = reinterpret_cast<const uint16_t*>(bytes.data() + 1024);
  const uint16_t expected_specials[] = {0x3F80, 0x3F82, 0x3F81, 0x3F81, 0xBF80, 0x7F80,
                                        0x0000, 0x0002, 0x7F80, 0xFF80, 0x8000};
  for (size_t i = 0; i < std::size(expected_specials); ++i) EXPECT_EQ(b[i], expected_specials[i]) << i;
  EXPECT_EQ(b[11] & 0x7F80, 0x7F80);  // NaN stays NaN (not infinity)
  EXPECT_NE(b[11] & 0x007F, 0);

  std::vector<float> out(m.params.size());
  ASSERT_TRUE(ReadLlmcCheckpoint(path, m.dims, m.slots, out.data(), out.size()).ok());
  for (const ParamSlot& s : m.slots) {
    size_t n = 1;
    for (int x : s.shape) n *= x;
    for (size_t i = 0; i < n; ++i) {
      const float x = m.params[s.offset + i];
      if (std::isnan(x)) continue;
      ASSERT_EQ(std::bit_cast<uint32_t>(out[s.offset + i]), uint32_t{OracleBf16(x)} << 16)
          << s.name << "[" << i << "]";
    }
  }
}

TEST_F(LlmcTest, RefusesForeignAndCorruptFilesWithTheField) {
  const TestModel m = MakeModel(Dims(), 5);
  const std::string path = Path("bad.bin");
  std::string good = HandWrittenFile(m.dims, 3);

  WriteBytes(path, Header(m.dims, 1234) + good.substr(1024));
  EXPECT_THAT(ReadError(path, m),
              AllOf(HasSubstr("llm.c checkpoint " + path), HasSubstr("magic 1234 is not 20240326"),
                    HasSubstr("not an llm.c model checkpoint")));
  WriteBytes(path, Header(m.dims, 20240520) + good.substr(1024));
  EXPECT_THAT(ReadError(path, m), HasSubstr("this is an llm.c token shard, not a model checkpoint"));
  WriteBytes(path, Header(m.dims, 20240326, 1) + good.substr(1024));
  EXPECT_THAT(ReadError(path, m),
              AllOf(HasSubstr("version 1 is not supported"), HasSubstr("versions 3 (float32) and 5")));
  WriteBytes(path, good.substr(0, good.size() - 4));
  EXPECT_THAT(ReadError(path, m), AllOf(HasSubstr(path), HasSubstr("bytes, but the header's model"),
                                        HasSubstr("truncated or its header is wrong")));
  WriteBytes(path, good.substr(0, 100));
  EXPECT_THAT(ReadError(path, m), HasSubstr("100 bytes, shorter than the 1024-byte header"));
  WriteBytes(path, Header({2, 3, 8, 16, 50, 128}) + good.substr(1024));
  EXPECT_THAT(ReadError(path, m),
              AllOf(HasSubstr("header (maxT, V, L, NH, C, Vp"), HasSubstr("not divisible by n_head 3")));
  WriteBytes(path, Header({0, 2, 8, 16, 50, 128}) + good.substr(1024));
  EXPECT_THAT(ReadError(path, m), AllOf(HasSubstr("header (maxT, V, L, NH, C, Vp"),
                                        HasSubstr("model dimensions must be positive: n_layer 0, n_head 2")));
  WriteBytes(path, Header({1000, 2, 1 << 30, 16, 50, 128}));
  EXPECT_THAT(ReadError(path, m), HasSubstr("needs more than 2^64"));
  EXPECT_THAT(ReadError(Path("none.bin"), m),
              AllOf(HasSubstr("cannot open llm.c checkpoint"), HasSubstr("none.bin")));

  WriteBytes(path, good);
  TestModel wider = MakeModel({2, 2, 16, 16, 50, 128}, 5);
  EXPECT_THAT(ReadError(path, wider),
              AllOf(HasSubstr("cannot read llm.c checkpoint " + path),
                    HasSubstr("header field C (int 6) is 8 but the model being loaded has 16")));
  TestModel longer = MakeModel({2, 2, 8, 32, 50, 128}, 5);
  EXPECT_THAT(ReadError(path, longer), HasSubstr("header field maxT (int 2) is 16"));
}

TEST_F(LlmcTest, WriteRefusesABadLayoutOrDirectoryAndLeavesNothing) {
  const TestModel m = MakeModel(Dims(), 6);
  std::vector<ParamSlot> slots = m.slots;
  slots.erase(slots.begin() + 5);
  Status s = WriteLlmcCheckpoint(Path("x.bin"), m.dims, slots, m.params.data(), m.params.size(),
                                 LlmcPrecision::kFp32);
  EXPECT_THAT(s.message(),
              AllOf(HasSubstr("cannot write llm.c checkpoint"), HasSubstr("is missing from the layout")));
  s = WriteLlmcCheckpoint(Path("no/dir/x.bin"), m.dims, m.slots, m.params.data(), m.params.size(),
                          LlmcPrecision::kBf16);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("no/dir/x.bin"), HasSubstr("directory exists")));
  EXPECT_FALSE(std::filesystem::exists(Path("x.bin")));
  EXPECT_FALSE(HasTempFiles());
}

// llm.c's side: tests/bench/llmc_inputs.py writes a v3 checkpoint as llm.c's train_gpt2.py does;
// numpy slices it kind-major and writes each of our tensors in our order.
constexpr char kPythonSlicer[] = R"PY(
import json, sys
import numpy as np
ckpt, manifest, out = sys.argv[1:4]
h = np.fromfile(ckpt, dtype='<i4', count=256)
assert h[0] == 20240326 and h[1] == 3
T, V, L, NH, C, Vp = (int(x) for x in h[2:8])
p = np.fromfile(ckpt, dtype='<f4', offset=1024)
kinds = [('wte.weight', (Vp, C)), ('wpe.weight', (T, C)), ('ln_1.weight', (L, C)), ('ln_1.bias', (L, C)),
         ('attn.c_attn.weight', (L, 3 * C, C)), ('attn.c_attn.bias', (L, 3 * C)), ('attn.c_proj.weight', (L, C, C)),
         ('attn.c_proj.bias', (L, C)), ('ln_2.weight', (L, C)), ('ln_2.bias', (L, C)),
         ('mlp.c_fc.weight', (L, 4 * C, C)), ('mlp.c_fc.bias', (L, 4 * C)), ('mlp.c_proj.weight', (L, C, 4 * C)),
         ('mlp.c_proj.bias', (L, C)), ('ln_f.weight', (C,)), ('ln_f.bias', (C,))]
blocks, pos = {}, 0
for name, shape in kinds:
    n = int(np.prod(shape))
    blocks[name] = p[pos:pos + n].reshape(shape)
    pos += n
assert pos == p.size
def tensor(name):
    if not name.startswith('h.'):
        return blocks[name]
    _, layer, rest = name.split('.', 2)
    return blocks[rest][int(layer)]
with open(out, 'wb') as f:
    for name in json.load(open(manifest)):
        f.write(np.ascontiguousarray(tensor(name), dtype='<f4').tobytes())
print('sliced', pos, 'parameters')
)PY";

TEST_F(LlmcTest, ReadsWhatLlmcsWriterWrites) {
  const std::optional<std::string> python = testing_util::PythonWithNumpy();
  if (!python) GTEST_SKIP() << "python3 with numpy not found";
  std::string output;
  int rc =
      testing_util::RunCaptured(*python + " " FJORD_SOURCE_DIR "/tests/bench/llmc_inputs.py " + Path("llmc") +
                                    " --layers 2 --heads 2 --embd 16 --seq-len 32 --vocab 100 --tokens 100",
                                Path("writer.log"), &output);
  ASSERT_EQ(rc, 0) << output;
  const std::string ckpt = Path("llmc/gpt2_124M.bin");
  StatusOr<LlmcHeader> header = ReadLlmcHeader(ckpt);
  ASSERT_TRUE(header.ok()) << header.status().message();
  const Gpt2Dims d = header->dims;
  EXPECT_EQ(d.n_layer, 2);
  EXPECT_EQ(d.n_embd, 16);
  EXPECT_EQ(d.vocab_size, 100);
  EXPECT_EQ(d.padded_vocab, 128);
  TestModel m = MakeModel(d, 7);
  std::vector<float> out(m.params.size());
  const Status s = ReadLlmcCheckpoint(ckpt, d, m.slots, out.data(), out.size());
  ASSERT_TRUE(s.ok()) << s.message();

  std::string manifest = "[";
  for (const ParamSlot& slot : m.slots) {
    if (manifest.size() > 1) manifest += ',';
    manifest += JsonQuote(slot.name);
  }
  WriteBytes(Path("manifest.json"), manifest + "]");
  WriteBytes(Path("slice.py"), kPythonSlicer);
  rc = testing_util::RunCaptured(
      *python + " " + Path("slice.py") + " " + ckpt + " " + Path("manifest.json") + " " + Path("ours.f32"),
      Path("slice.log"), &output);
  ASSERT_EQ(rc, 0) << output;
  const std::string expected = ReadBytes(Path("ours.f32"));
  size_t pos = 0;
  double norm = 0;
  for (const ParamSlot& slot : m.slots) {
    size_t n = 1;
    for (int x : slot.shape) n *= x;
    ASSERT_LE(pos + n * 4, expected.size());
    ASSERT_EQ(std::memcmp(expected.data() + pos, out.data() + slot.offset, n * 4), 0) << slot.name;
    for (size_t i = 0; i < n; ++i) norm += double(out[slot.offset + i]) * out[slot.offset + i];
    pos += n * 4;
  }
  EXPECT_EQ(pos, expected.size());
  EXPECT_GT(norm, 0.0);
}

}  // namespace
}  // namespace fjord
