// Job specs: defaults made explicit (checked against the schema's descriptor), round trips through
// text, --set precedence, and every refusal's message: where, which field, what to do.
#include "runtime/train/config.h"

#include <gmock/gmock.h>
#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fjord {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kSource[] = "job.textproto";
constexpr char kMinimal[] = "data { train: \"data/train_*.bin\" }\n";

StatusOr<proto::JobSpec> Parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return ParseJobSpec(text, kSource, overrides);
}

// Compares every singular scalar field of `message` with its descriptor default, except `skip`.
void ExpectDefaults(const pb::Message& message, const std::string& prefix, const std::string& skip) {
  const pb::Descriptor* d = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    const std::string path = prefix + f->name();
    SCOPED_TRACE(path);
    if (f->is_repeated()) {  // lists (residency) have no default to make explicit: they start empty
      EXPECT_EQ(r->FieldSize(message, f), 0);
      continue;
    }
    EXPECT_TRUE(r->HasField(message, f)) << path << " is not explicit";
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        ExpectDefaults(r->GetMessage(message, f), path + ".", skip);
        break;
      case pb::FieldDescriptor::CPPTYPE_INT32:
        EXPECT_EQ(r->GetInt32(message, f), f->default_value_int32());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        EXPECT_EQ(r->GetUInt64(message, f), f->default_value_uint64());
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        EXPECT_EQ(r->GetFloat(message, f), f->default_value_float());
        break;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        EXPECT_EQ(r->GetDouble(message, f), f->default_value_double());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        EXPECT_EQ(r->GetBool(message, f), f->default_value_bool());
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        EXPECT_EQ(r->GetEnumValue(message, f), f->default_value_enum()->number());
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        if (path != skip) {
          EXPECT_EQ(r->GetString(message, f), f->default_value_string());
        }
        break;
      default:
        ADD_FAILURE() << path << ": the test does not know this field type; extend it";
        break;
    }
  }
}

int CountScalarFields(const pb::Descriptor* d) {
  int n = 0;
  for (int i = 0; i < d->field_count(); ++i) {
    const pb::FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) continue;  // an empty list prints nothing
    n += f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE ? CountScalarFields(f->message_type()) : 1;
  }
  return n;
}

TEST(ConfigParse, DefaultsAreExplicitAndEqualTheSchemaDefaults) {
  StatusOr<proto::JobSpec> job = Parse(kMinimal);
  ASSERT_TRUE(job.ok()) << job.status().message();
  ExpectDefaults(job.value(), "", "data.train");
  EXPECT_EQ(job->data().train(), "data/train_*.bin");
  // Spot checks against the numbers written in proto/job.proto (GPT-2 124M).
  EXPECT_EQ(job->model().n_layer(), 12);
  EXPECT_EQ(job->model().vocab_size(), 50257);
  EXPECT_FLOAT_EQ(job->train().lr(), 3e-4f);
  EXPECT_EQ(job->train().seed(), 1337u);
  EXPECT_EQ(job->run_dir(), "runs/default");
  EXPECT_EQ(job->device(), proto::AUTO);
}

TEST(ConfigParse, PrintedSpecListsEveryField) {
  StatusOr<proto::JobSpec> job = Parse(kMinimal);
  ASSERT_TRUE(job.ok()) << job.status().message();
  const std::string text = JobSpecToText(job.value());
  int value_lines = 0;
  for (size_t at = text.find(": "); at != std::string::npos; at = text.find(": ", at + 1)) ++value_lines;
  EXPECT_EQ(value_lines, CountScalarFields(proto::JobSpec::descriptor())) << text;
  EXPECT_THAT(text, HasSubstr("n_embd: 768"));
  EXPECT_THAT(text, HasSubstr("val: \"\""));
  EXPECT_THAT(text, HasSubstr("device: AUTO"));
}

TEST(ConfigParse, RoundTripsThroughText) {
  const std::string text =
      "model { n_layer: 2 n_head: 4 n_embd: 64 seq_len: 128 vocab_size: 256 dtype: BF16 }\n"
      "train { micro_batch: 3 steps: 7 lr: 0.001 min_lr: 0.0001 seq_len: 64 eval_every: 5 beta2: 0.99 }\n"
      "data { train: \"a/train_*.bin\" val: \"a/val_*.bin\" }\n"
      "run_dir: \"runs/x\"\n"
      "device: CPU\n";
  StatusOr<proto::JobSpec> first = Parse(text);
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_EQ(first->model().n_head(), 4);
  EXPECT_EQ(first->model().dtype(), proto::ModelSpec::BF16);
  EXPECT_FLOAT_EQ(first->train().lr(), 0.001f);
  EXPECT_FLOAT_EQ(first->train().beta2(), 0.99f);
  EXPECT_EQ(first->data().val(), "a/val_*.bin");
  EXPECT_EQ(first->device(), proto::CPU);
  EXPECT_EQ(first->train().grad_accum(), 1);  // untouched: the default

  const std::string printed = JobSpecToText(first.value());
  StatusOr<proto::JobSpec> second = ParseJobSpec(printed, "printed", {});
  ASSERT_TRUE(second.ok()) << second.status().message();
  EXPECT_TRUE(pb::util::MessageDifferencer::Equals(first.value(), second.value())) << printed;
  EXPECT_EQ(JobSpecToText(second.value()), printed);
}

TEST(ConfigParse, TenancyFieldsParseAndRoundTrip) {
  const std::string text =
      "data { train: \"data/train_*.bin\" allow_unmanifested: true }\n"
      "tenant { id: \"acme\" }\n"
      "residency { allowed_jurisdictions: [\"NO\", \"SE\"] allowed_sites: \"osl1\" }\n";
  StatusOr<proto::JobSpec> job = Parse(text);
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->tenant().id(), "acme");
  ASSERT_EQ(job->residency().allowed_jurisdictions_size(), 2);
  EXPECT_EQ(job->residency().allowed_jurisdictions(1), "SE");
  EXPECT_TRUE(job->data().allow_unmanifested());
  EXPECT_EQ(job->audit_log(), "");
  StatusOr<proto::JobSpec> again = ParseJobSpec(JobSpecToText(job.value()), "printed", {});
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_TRUE(pb::util::MessageDifferencer::Equals(job.value(), again.value()));
  // A job without a tenant block has tenancy off and stays valid.
  StatusOr<proto::JobSpec> plain = Parse(kMinimal, {"tenant.id="});
  ASSERT_TRUE(plain.ok()) << plain.status().message();
  EXPECT_EQ(plain->tenant().id(), "");
}

TEST(ConfigParse, TrainSeqLenFallsBackToTheModel) {
  StatusOr<proto::JobSpec> job = Parse(std::string(kMinimal) + "model { seq_len: 256 }");
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(TrainSeqLen(job.value()), 256);
  job = Parse(std::string(kMinimal) + "model { seq_len: 256 } train { seq_len: 100 }");
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(TrainSeqLen(job.value()), 100);
}

TEST(ConfigParse, ReportsEveryValidationErrorAtOnce) {
  StatusOr<proto::JobSpec> job = Parse("model { n_layer: 0 }\ntrain { steps: -1 }\n");
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(), HasSubstr("job.textproto:1:9: model.n_layer = 0"));
  EXPECT_THAT(job.status().message(), HasSubstr("job.textproto:2:9: train.steps = -1"));
  EXPECT_THAT(job.status().message(), HasSubstr("data.train is empty"));
}

TEST(ConfigOverride, LaterOverridesWinOverEarlierOnesAndTheFile) {
  StatusOr<proto::JobSpec> job = Parse(std::string(kMinimal) + "model { n_layer: 4 }\n",
                                       {"model.n_layer=2", "train.steps=9", "model.n_layer=3"});
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->model().n_layer(), 3);
  EXPECT_EQ(job->train().steps(), 9);
  EXPECT_EQ(job->model().n_head(), 12);  // untouched
}

TEST(ConfigOverride, ParsesValuesByFieldType) {
  StatusOr<proto::JobSpec> job =
      Parse(kMinimal, {"data.val=v/val_*.bin", "run_dir=\"runs/with space\"", "device=CUDA", "train.lr=2e-3",
                       "train.seed=18446744073709551615"});
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->data().val(), "v/val_*.bin");
  EXPECT_EQ(job->run_dir(), "runs/with space");
  EXPECT_EQ(job->device(), proto::CUDA);
  EXPECT_FLOAT_EQ(job->train().lr(), 2e-3f);
  EXPECT_EQ(job->train().seed(), 18446744073709551615ull);
}

TEST(ConfigOverride, CanSetAFieldTheFileLacks) {
  // The data block comes only from --set: overrides make sub-messages as needed.
  StatusOr<proto::JobSpec> job = Parse("", {"data.train=d/*.bin"});
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->data().train(), "d/*.bin");
}

// Enum values in any case, in the file and in --set, parse as the schema's spelling does; the
// oracle is the same spec written in upper case. A string value that spells an enum is left alone.
TEST(ConfigParse, EnumValuesAreCaseInsensitive) {
  const std::string data = "data { train: \"t/*.bin\" val: \"bf16\" }  # dtype: bf16 in a comment\n";
  const std::string upper = data + "model { dtype: BF16 attention: SIMT }\ndevice: CPU\n";
  StatusOr<proto::JobSpec> expected = Parse(upper);
  ASSERT_TRUE(expected.ok()) << expected.status().message();
  StatusOr<proto::JobSpec> lower = Parse(data + "model { dtype: bf16 attention: Simt }\ndevice: cpu\n");
  ASSERT_TRUE(lower.ok()) << lower.status().message();
  EXPECT_EQ(lower->SerializeAsString(), expected->SerializeAsString());
  EXPECT_EQ(lower->data().val(), "bf16");
  StatusOr<proto::JobSpec> set = Parse(data, {"model.dtype=bf16", "model.attention=simt", "device=Cpu"});
  ASSERT_TRUE(set.ok()) << set.status().message();
  EXPECT_EQ(set->SerializeAsString(), expected->SerializeAsString());
  // A value that is no enum value in any case is still refused with the choices.
  StatusOr<proto::JobSpec> wrong = Parse(std::string(kMinimal) + "model { dtype: bf17 }\n");
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(),
              HasSubstr("job.textproto:2:16: Unknown enumeration value of \"bf17\""));
  EXPECT_THAT(wrong.status().message(), HasSubstr("Use one of: DTYPE_AUTO, FP32, BF16"));
}

// A block left open is named with the line it opened on, whether the parser meets the next section
// or the end of the file.
TEST(ConfigParse, AMissingBraceSaysWhichBlockAndWhere) {
  StatusOr<proto::JobSpec> job =
      Parse("model { n_layer: 2\n# no brace\ntrain { steps: 3 }\n" + std::string(kMinimal));
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(), HasSubstr("job.textproto:3:1:"));
  EXPECT_THAT(
      job.status().message(),
      HasSubstr("A '}' seems to be missing: \"model {\" opened at line 1 is not closed before line 3"));
  job = Parse(std::string(kMinimal) + "train {\n  steps: 3\n  parallel { zero_stage: 1 }\n");
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(), HasSubstr("\"train {\" opened at line 2"));
  job = Parse(std::string(kMinimal) + "train {\n  steps: 3\n");
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(), HasSubstr("\"train {\" opened at line 2 is not closed before line 4"));
  // A misspelt field inside a closed block still gets the spelling hint, not the brace one.
  job = Parse(std::string(kMinimal) + "model { n_layers: 2 }\n");
  ASSERT_FALSE(job.ok());
  EXPECT_THAT(job.status().message(), HasSubstr("Did you mean \"n_layer\"?"));
}

// The differences JobSpecDifferences reports, against fields set one by one.
TEST(ConfigParse, JobSpecDifferencesNamesEachChangedField) {
  StatusOr<proto::JobSpec> a = Parse(kMinimal);
  StatusOr<proto::JobSpec> b = Parse(kMinimal, {"train.steps=7", "model.dtype=BF16", "run_dir=elsewhere"});
  ASSERT_TRUE(a.ok() && b.ok());
  const std::vector<FieldChange> changes = JobSpecDifferences(*a, *b);
  std::vector<std::string> text;
  for (const FieldChange& c : changes) text.push_back(c.path + ": " + c.before + " -> " + c.after);
  EXPECT_THAT(text,
              ::testing::UnorderedElementsAre("train.steps: " + std::to_string(a->train().steps()) + " -> 7",
                                              "model.dtype: DTYPE_AUTO -> BF16",
                                              "run_dir: \"" + a->run_dir() + "\" -> \"elsewhere\""));
  EXPECT_TRUE(JobSpecDifferences(*a, *a).empty());
}

TEST(ConfigLoad, MissingFileIsNotFoundAndNamesThePath) {
  const std::string path = ::testing::TempDir() + "/no_such_dir_fjord/job.textproto";
  StatusOr<proto::JobSpec> job = LoadJobSpec(path, {});
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(job.status().message(), HasSubstr(path));
  EXPECT_THAT(job.status().message(), HasSubstr("no such file"));
}

TEST(ConfigLoad, ReadsTheFileAndReportsItsPath) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("fjord_config_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "job.textproto").string();
  {
    std::ofstream out(path);
    out << "# comment\nmodel {\n  n_layer: 0\n}\n" << kMinimal;
  }
  StatusOr<proto::JobSpec> bad = LoadJobSpec(path, {});
  {
    std::ofstream out(path);
    out << "model {\n  n_layer: 3\n}\n" << kMinimal;
  }
  StatusOr<proto::JobSpec> good = LoadJobSpec(path, {"train.steps=5"});
  fs::remove_all(dir);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), StartsWith(path + ":3:3: model.n_layer = 0"));
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_EQ(good->model().n_layer(), 3);
  EXPECT_EQ(good->train().steps(), 5);
}

// One refusal: the input and the substrings its message must hold (location, field, hint).
struct Refusal {
  std::string name;
  std::string text;
  std::vector<std::string> overrides;
  std::vector<std::string> expected;
};

std::ostream& operator<<(std::ostream& os, const Refusal& r) { return os << r.name; }

// A job whose only deviation from kMinimal is `field: value` inside `block`, on line 2, column 3.
std::string InBlock(const std::string& block, const std::string& field, const std::string& value) {
  return block + " {\n  " + field + ": " + value + "\n}\n" + kMinimal;
}

class ConfigRefusal : public ::testing::TestWithParam<Refusal> {};

TEST_P(ConfigRefusal, MessageSaysWhereWhatAndWhatToDo) {
  const Refusal& r = GetParam();
  StatusOr<proto::JobSpec> job = Parse(r.text, r.overrides);
  ASSERT_FALSE(job.ok()) << "accepted:\n" << r.text;
  EXPECT_EQ(job.status().code(), StatusCode::kInvalidArgument);
  for (const std::string& s : r.expected) EXPECT_THAT(job.status().message(), HasSubstr(s));
}

const char kAt[] = "job.textproto:2:3: ";

INSTANTIATE_TEST_SUITE_P(
    Parse, ConfigRefusal,
    ::testing::Values(Refusal{"UnknownField",
                              InBlock("model", "n_layr", "2"),
                              {},
                              {kAt, "no field named \"n_layr\"", "Did you mean \"n_layer\"?",
                               "Valid fields in model: n_layer, n_head, n_embd, seq_len, vocab_size"}},
                      Refusal{"UnknownTopLevelField",
                              std::string("steps: 3\n") + kMinimal,
                              {},
                              {"job.textproto:1:1: ", "no field named \"steps\"",
                               "Valid fields at the top level: model, train, data, run_dir, device"}},
                      Refusal{"WrongType",
                              InBlock("model", "n_layer", "abc"),
                              {},
                              {"job.textproto:2:12: ", "Expected integer, got: abc",
                               "n_layer takes an integer (int32)"}},
                      Refusal{"StringForFloat",
                              InBlock("train", "lr", "\"fast\""),
                              {},
                              {"job.textproto:2:7: ", "Expected double", "lr takes a number (float)"}},
                      Refusal{"UnknownEnum",
                              std::string("device: GPU\n") + kMinimal,
                              {},
                              {"job.textproto:1:9: ", "Unknown enumeration value of \"GPU\"",
                               "Use one of: AUTO, CPU, CUDA"}},
                      Refusal{"UnknownDtype",
                              InBlock("model", "dtype", "FP16"),
                              {},
                              {"job.textproto:2:", "Unknown enumeration value of \"FP16\"",
                               "Use one of: DTYPE_AUTO, FP32, BF16"}},
                      Refusal{"RepeatedField",
                              "model {\n  n_layer: 1\n  n_layer: 2\n}\n",
                              {},
                              {"job.textproto:3:", "\"n_layer\" is specified multiple times",
                               "Each field may appear once"}},
                      Refusal{"Unclosed",
                              "model {\n  n_layer: 1\n",
                              {},
                              {"job.textproto:3:1: ", "protobuf text format", "proto/job.proto"}}),
    [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Override, ConfigRefusal,
    ::testing::Values(
        Refusal{"NoEquals",
                kMinimal,
                {"train.steps"},
                {"--set train.steps: expected PATH=VALUE", "--set train.steps=20"}},
        Refusal{"UnknownLeaf",
                kMinimal,
                {"model.n_layr=2"},
                {"--set model.n_layr=2: ", "model has no field \"n_layr\"", "Did you mean \"n_layer\"?",
                 "n_layer, n_head, n_embd, seq_len, vocab_size"}},
        Refusal{"UnknownTop",
                kMinimal,
                {"modl.n_layer=2"},
                {"--set modl.n_layer=2: ", "the job spec has no field \"modl\"", "Did you mean \"model\"?",
                 "model, train, data, run_dir, device"}},
        Refusal{"EndsAtMessage",
                kMinimal,
                {"model=2"},
                {"--set model=2: ", "model is a message", "e.g. --set model.n_layer=12",
                 "n_layer, n_head, n_embd, seq_len, vocab_size"}},
        Refusal{
            "PathThroughScalar",
            kMinimal,
            {"run_dir.x=2"},
            {"--set run_dir.x=2: ", "run_dir is a string field, not a message", "write --set run_dir=VALUE"}},
        Refusal{"NotAnInteger",
                kMinimal,
                {"model.n_layer=abc"},
                {"--set model.n_layer=abc: ", "model.n_layer takes an integer (int32); \"abc\" is not one",
                 "write it like --set model.n_layer=12"}},
        Refusal{
            "IntegerOutOfRange",
            kMinimal,
            {"model.n_layer=99999999999"},
            {"--set model.n_layer=99999999999: ", "model.n_layer takes an integer (int32)", "out of range"}},
        Refusal{"NegativeUnsigned",
                kMinimal,
                {"train.seed=-1"},
                {"--set train.seed=-1: ", "train.seed takes a non-negative integer (uint64)",
                 "write it like --set train.seed=1337"}},
        Refusal{"NotANumber",
                kMinimal,
                {"train.lr=fast"},
                {"--set train.lr=fast: ", "train.lr takes a number (float)",
                 "write it like --set train.lr=0.0003"}},
        Refusal{
            "UnknownEnum",
            kMinimal,
            {"device=GPU"},
            {"--set device=GPU: ", "device takes one of AUTO, CPU, CUDA", "write it like --set device=AUTO"}},
        Refusal{"TextFormatInjection",
                kMinimal,
                {"model.n_layer=2 } train { steps: 5"},
                {"--set model.n_layer=2 } train { steps: 5: ", "model.n_layer takes an integer"}},
        Refusal{
            "UnterminatedQuote",
            kMinimal,
            {"run_dir=\"runs/x"},
            {"--set run_dir=\"runs/x: ", "run_dir takes a string", "quote the whole value or none of it"}},
        Refusal{"ValidationNamesTheOverride",
                kMinimal,
                {"model.n_layer=5", "model.n_layer=0"},
                {"--set model.n_layer=0: model.n_layer = 0 must be at least 1",
                 "set model.n_layer to 1 or more"}},
        Refusal{"SecondFieldNamesItsOverride",
                InBlock("model", "n_embd", "96"),
                {"model.n_head=7"},
                {"job.textproto:2:3: model.n_embd = 96 is not a multiple of model.n_head = 7 (--set "
                 "model.n_head=7)",
                 "e.g. 91 or 98"}}),
    [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

INSTANTIATE_TEST_SUITE_P(
    Validate, ConfigRefusal,
    ::testing::Values(
        Refusal{"NLayer",
                InBlock("model", "n_layer", "0"),
                {},
                {kAt, "model.n_layer = 0 must be at least 1", "set model.n_layer to 1 or more"}},
        Refusal{"NHead",
                InBlock("model", "n_head", "0"),
                {},
                {kAt, "model.n_head = 0 must be at least 1", "set model.n_head to 1 or more"}},
        Refusal{"NEmbd",
                InBlock("model", "n_embd", "-8"),
                {},
                {kAt, "model.n_embd = -8 must be at least 1", "positive multiple of model.n_head"}},
        Refusal{"NEmbdNotMultiple",
                InBlock("model", "n_embd", "100"),
                {},
                {kAt, "model.n_embd = 100 is not a multiple of model.n_head = 12 (default)",
                 "pick model.n_embd as a multiple of model.n_head, e.g. 96 or 108"}},
        Refusal{
            "NEmbdBelowNHead",
            "model {\n  n_embd: 5\n  n_head: 8\n}\n" + std::string(kMinimal),
            {},
            {kAt, "model.n_embd = 5 is not a multiple of model.n_head = 8 (job.textproto:3:3)", "e.g. 8,"}},
        Refusal{"ModelSeqLen",
                InBlock("model", "seq_len", "0"),
                {},
                {kAt, "model.seq_len = 0 must be at least 1", "set model.seq_len"}},
        Refusal{"VocabTooSmall",
                InBlock("model", "vocab_size", "1"),
                {},
                {kAt, "model.vocab_size = 1 is outside [2, 16777216]", "a model needs at least 2 tokens",
                 "set model.vocab_size to the tokenizer's size"}},
        Refusal{"VocabTooLarge",
                InBlock("model", "vocab_size", "16777217"),
                {},
                {kAt, "model.vocab_size = 16777217 is outside [2, 16777216]", "set model.vocab_size"}},
        Refusal{"MicroBatch",
                InBlock("train", "micro_batch", "0"),
                {},
                {kAt, "train.micro_batch = 0 must be at least 1", "set train.micro_batch to 1 or more"}},
        Refusal{"GradAccum",
                InBlock("train", "grad_accum", "0"),
                {},
                {kAt, "train.grad_accum = 0 must be at least 1", "set train.grad_accum to 1 or more"}},
        Refusal{"Steps",
                InBlock("train", "steps", "-1"),
                {},
                {kAt, "train.steps = -1 is negative", "set train.steps to 0 or more"}},
        Refusal{"LrZero",
                InBlock("train", "lr", "0"),
                {},
                {kAt, "train.lr = 0 must be a positive finite number", "set train.lr, e.g. 3e-4"}},
        Refusal{"LrInfinite",
                InBlock("train", "lr", "inf"),
                {},
                {kAt, "train.lr = inf must be a positive finite number", "set train.lr"}},
        Refusal{"LrNan",
                InBlock("train", "lr", "nan"),
                {},
                {kAt, "train.lr = nan must be a positive finite number"}},
        Refusal{"MinLrNegative",
                InBlock("train", "min_lr", "-0.5"),
                {},
                {kAt, "train.min_lr = -0.5 must be a finite number >= 0", "between 0 and train.lr"}},
        Refusal{"MinLrAboveLr",
                InBlock("train", "min_lr", "0.01"),
                {},
                {kAt, "train.min_lr = 0.01 is above train.lr = 0.0003 (default)",
                 "set train.min_lr between 0 and train.lr, or raise train.lr"}},
        Refusal{"Warmup",
                InBlock("train", "warmup_steps", "-2"),
                {},
                {kAt, "train.warmup_steps = -2 is negative", "set train.warmup_steps to 0"}},
        Refusal{"WeightDecay",
                InBlock("train", "weight_decay", "-0.1"),
                {},
                {kAt, "train.weight_decay = -0.1 must be a finite number >= 0", "set train.weight_decay"}},
        Refusal{"GradClip",
                InBlock("train", "grad_clip", "-1"),
                {},
                {kAt, "train.grad_clip = -1 must be a finite number >= 0", "0 disables clipping"}},
        Refusal{"EvalEvery",
                InBlock("train", "eval_every", "-1"),
                {},
                {kAt, "train.eval_every = -1 is negative", "set train.eval_every to 0"}},
        Refusal{"EvalBatches",
                InBlock("train", "eval_batches", "0"),
                {},
                {kAt, "train.eval_batches = 0 must be at least 1", "set train.eval_batches to 1 or more"}},
        Refusal{"TrainSeqLenNegative",
                InBlock("train", "seq_len", "-1"),
                {},
                {kAt, "train.seq_len = -1 is negative", "set train.seq_len to 0"}},
        Refusal{"TrainSeqLenOverModel",
                "train {\n  seq_len: 512\n}\nmodel { seq_len: 256 }\n" + std::string(kMinimal),
                {},
                {kAt, "train.seq_len = 512 is over model.seq_len = 256 (job.textproto:4:9)",
                 "a model cannot attend beyond its positions; lower train.seq_len or raise model.seq_len"}},
        Refusal{"Beta1One",
                InBlock("train", "beta1", "1"),
                {},
                {kAt, "train.beta1 = 1 is outside [0, 1)", "set train.beta1, e.g. 0.9"}},
        Refusal{"Beta1Negative",
                InBlock("train", "beta1", "-0.1"),
                {},
                {kAt, "train.beta1 = -0.1 is outside [0, 1)", "set train.beta1"}},
        Refusal{"Beta2",
                InBlock("train", "beta2", "1.5"),
                {},
                {kAt, "train.beta2 = 1.5 is outside [0, 1)", "set train.beta2, e.g. 0.95"}},
        Refusal{"Eps",
                InBlock("train", "eps", "0"),
                {},
                {kAt, "train.eps = 0 must be a positive finite number", "set train.eps, e.g. 1e-8"}},
        Refusal{"Threads",
                InBlock("train", "threads", "-1"),
                {},
                {kAt, "train.threads = -1 is negative", "set train.threads to 0"}},
        Refusal{"LogEvery",
                InBlock("train", "log_every", "0"),
                {},
                {kAt, "train.log_every = 0 must be at least 1", "set train.log_every to 1 or more"}},
        Refusal{"PeakTflopsNegative",
                InBlock("train", "peak_tflops", "-1"),
                {},
                {kAt, "train.peak_tflops = -1 must be a finite number >= 0", "or 0 to look it up"}},
        Refusal{"GlobalBatchNegative",
                InBlock("train", "global_batch", "-4"),
                {},
                {kAt, "train.global_batch = -4 is negative", "set train.global_batch to 0"}},
        Refusal{"GlobalBatchNotMultipleOfMicroBatch",
                InBlock("train", "global_batch", "10"),
                {},
                {kAt, "train.global_batch = 10 is not a multiple of train.micro_batch = 4 (default)",
                 "pick a multiple of train.micro_batch"}},
        Refusal{"BucketMbZero",
                InBlock("parallel", "bucket_mb", "0"),
                {},
                {kAt, "parallel.bucket_mb = 0 must be a positive number of MiB", "e.g. 25"}},
        Refusal{"ZeroStageFour",
                InBlock("parallel", "zero_stage", "4"),
                {},
                {kAt, "parallel.zero_stage = 4 must be 0 (plain data-parallel), 1 (ZeRO-1", "2 (ZeRO-2",
                 "or 3 (ZeRO-3"}},
        Refusal{"ZeroStageNegative",
                InBlock("parallel", "zero_stage", "-1"),
                {},
                {kAt, "parallel.zero_stage = -1 must be 0 (plain data-parallel), 1", "or 3 (ZeRO-3"}},
        Refusal{"AlgoUnknown",
                InBlock("parallel", "algo", "\"fast\""),
                {},
                {kAt, "parallel.algo = \"fast\" is not one of auto, mpi, ring, tree"}},
        Refusal{"CommTimeoutZero",
                InBlock("parallel", "comm_timeout", "0"),
                {},
                {kAt, "parallel.comm_timeout = 0 must be a positive number of seconds"}},
        Refusal{"CommTimeoutBelowOneMillisecond",
                InBlock("parallel", "comm_timeout", "0.0004"),
                {},
                {kAt,
                 "parallel.comm_timeout = 0.0004 is less than the communicator's resolution of 0.001 seconds",
                 "set parallel.comm_timeout, e.g. 300"}},
        Refusal{"StragglerEveryStepsNegative",
                InBlock("parallel", "straggler_every_steps", "-1"),
                {},
                {kAt,
                 "parallel.straggler_every_steps = -1 must be 0 (no straggler report) or a number of steps"}},
        Refusal{"StragglerFactorNotAboveOne",
                InBlock("parallel", "straggler_factor", "1"),
                {},
                {kAt, "parallel.straggler_factor = 1 must be a finite number above 1"}},
        Refusal{"DataTrainMissing",
                "",
                {},
                {"job.textproto: data.train is empty: give the token shards to train on, e.g. "
                 "data { train: \"data/train_*.bin\" } (fjord prep writes them)"}},
        Refusal{"DataTrainEmptyString",
                "data {\n  train: \"\"\n}\n",
                {},
                {"job.textproto:2:3: data.train is empty"}},
        Refusal{"DataValNeededForEval",
                InBlock("train", "eval_every", "5"),
                {},
                {"job.textproto: data.val is empty but train.eval_every = 5 (job.textproto:2:3)",
                 "data { val: \"data/val_*.bin\" }", "or set train.eval_every to 0"}},
        Refusal{"RunDir",
                std::string("run_dir: \"\"\n") + kMinimal,
                {},
                {"job.textproto:1:1: run_dir is empty", "set it, e.g. run_dir: \"runs/my_job\""}},
        Refusal{"TenantIdInvalid",
                "tenant {\n  id: \"Acme Corp\"\n}\nresidency { allowed_jurisdictions: \"NO\" }\n" +
                    std::string(kMinimal),
                {},
                {kAt, "tenant.id = \"Acme Corp\" is not a tenant id", "lower-case letters, digits",
                 "e.g. \"acme\""}},
        Refusal{"TenantWithoutResidency",
                InBlock("tenant", "id", "\"acme\""),
                {},
                {kAt, "tenant.id = \"acme\" has no residency",
                 "add residency { allowed_jurisdictions: \"NO\" } with the ISO 3166-1 alpha-2 codes"}},
        Refusal{"ResidencyWithoutTenant",
                InBlock("residency", "allowed_jurisdictions", "\"NO\""),
                {},
                {kAt, "residency is set but tenant.id is empty",
                 "add tenant { id: \"...\" } or remove the residency"}},
        Refusal{"JurisdictionLowerCase",
                "residency {\n  allowed_jurisdictions: \"no\"\n}\ntenant { id: \"acme\" }\n" +
                    std::string(kMinimal),
                {},
                {kAt, "residency.allowed_jurisdictions \"no\" is not upper case; write \"NO\""}},
        Refusal{"JurisdictionNotIso",
                "tenant { id: \"acme\" }\nresidency {\n  allowed_jurisdictions: \"NO\"\n  "
                "allowed_jurisdictions: \"XK\"\n}\n" +
                    std::string(kMinimal),
                {},
                {"job.textproto:4:3: ",
                 "residency.allowed_jurisdictions \"XK\" is not an ISO 3166-1 alpha-2 country code"}},
        Refusal{"JurisdictionThreeLetters",
                "residency {\n  allowed_jurisdictions: \"NOR\"\n}\ntenant { id: \"acme\" }\n" +
                    std::string(kMinimal),
                {},
                {kAt, "\"NOR\" has 3 letters", "\"NO\" for Norway"}},
        Refusal{"SiteInvalid",
                "residency {\n  allowed_sites: \"oslo 1\"\n  allowed_jurisdictions: \"NO\"\n}\ntenant { id: "
                "\"acme\" }\n" +
                    std::string(kMinimal),
                {},
                {kAt, "residency.allowed_sites \"oslo 1\" is not a site name"}},
        Refusal{"ResidencyCannotBeSetOnTheCommandLine",
                std::string("tenant { id: \"acme\" }\n") + kMinimal,
                {"residency.allowed_jurisdictions=SE"},
                {"--set residency.allowed_jurisdictions=SE: ", "is a repeated field",
                 "edit the job file instead"}},
        Refusal{"DefaultNamedAsDefault",
                kMinimal,
                {"model.n_head=7"},
                {"job.textproto: model.n_embd = 768 (default) is not a multiple of model.n_head = 7 "
                 "(--set model.n_head=7)"}}),
    [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

}  // namespace
}  // namespace fjord

namespace fjord {
namespace {

// model.arch LLAMA: a valid job, then each Llama field's refusal naming the field, where it was
// set and what to do; and GPT-2 jobs refusing a Llama field set to anything but its default.
constexpr char kLlama[] =
    "model {\n  arch: LLAMA\n  n_layer: 2\n  n_head: 8\n  n_kv_head: 2\n  n_embd: 256\n  intermediate_size: "
    "688\n"
    "  rope_theta: 500000\n  rope_scaling { rope_type: LLAMA3 }\n}\n"
    "data { train: \"data/train_*.bin\" }\n";

TEST(ConfigLlama, AValidLlamaJobParsesAndGpt2JobsKeepTheDefaults) {
  StatusOr<proto::JobSpec> job = Parse(kLlama);
  ASSERT_TRUE(job.ok()) << job.status().message();
  EXPECT_EQ(job->model().arch(), proto::ModelSpec::LLAMA);
  EXPECT_EQ(job->model().n_kv_head(), 2);
  // The printed spec of a GPT-2 job holds the Llama fields at their defaults and parses back.
  StatusOr<proto::JobSpec> gpt2 = Parse(kMinimal);
  ASSERT_TRUE(gpt2.ok());
  StatusOr<proto::JobSpec> again = ParseJobSpec(JobSpecToText(*gpt2), "printed", {});
  ASSERT_TRUE(again.ok()) << again.status().message();
}

class LlamaRefusal : public ::testing::TestWithParam<Refusal> {};

TEST_P(LlamaRefusal, NamesTheFieldAndWhatToDo) {
  const Refusal& r = GetParam();
  StatusOr<proto::JobSpec> job = Parse(r.text, r.overrides);
  ASSERT_FALSE(job.ok()) << "accepted: " << r.name;
  EXPECT_EQ(job.status().code(), StatusCode::kInvalidArgument);
  for (const std::string& s : r.expected) EXPECT_THAT(job.status().message(), HasSubstr(s));
}

INSTANTIATE_TEST_SUITE_P(
    Validate, LlamaRefusal,
    ::testing::Values(
        Refusal{"KvHeadsDoNotDivide",
                kLlama,
                {"model.n_kv_head=3"},
                {"--set model.n_kv_head=3: model.n_kv_head = 3 does not divide model.n_head = 8",
                 "pick a divisor of model.n_head, e.g. 4"}},
        Refusal{"NegativeKvHeads", kLlama, {"model.n_kv_head=-1"}, {"model.n_kv_head = -1 is negative"}},
        Refusal{"NoIntermediateSize",
                kLlama,
                {"model.intermediate_size=0"},
                {"model.intermediate_size = 0 must be at least 1 for model.arch LLAMA",
                 "set model.intermediate_size"}},
        Refusal{"OddHeadSize",
                kLlama,
                {"model.n_embd=72"},  // 72 / 8 = 9
                {"model.n_embd = 72 gives an odd head size n_embd / n_head = 9",
                 "rotary embeddings rotate pairs of channels"}},
        Refusal{"Epsilon",
                kLlama,
                {"model.rms_norm_eps=0"},
                {"model.rms_norm_eps = 0 must be a positive finite"}},
        Refusal{"Theta",
                kLlama,
                {"model.rope_theta=1"},
                {"model.rope_theta = 1 must be a finite number above 1"}},
        Refusal{"ScalingFactor",
                kLlama,
                {"model.rope_scaling.factor=0.5"},
                {"model.rope_scaling.factor = 0.5 must be a finite number >= 1"}},
        Refusal{"ScalingBand",
                kLlama,
                {"model.rope_scaling.low_freq_factor=4"},
                {"model.rope_scaling.low_freq_factor = 4", "0 < low_freq_factor < high_freq_factor"}},
        Refusal{"ScalingContext",
                kLlama,
                {"model.rope_scaling.original_max_position_embeddings=0"},
                {"model.rope_scaling.original_max_position_embeddings = 0 must be at least 1"}},
        Refusal{"LlamaFieldOnGpt2",
                InBlock("model", "n_kv_head", "2"),
                {},
                {"job.textproto:2:3: model.n_kv_head = 2 applies to the Llama family only",
                 "model.arch = GPT2 (default)", "set model.arch to LLAMA or remove model.n_kv_head"}},
        Refusal{
            "RopeOnGpt2",
            kMinimal,
            {"model.rope_theta=500000"},
            {"--set model.rope_theta=500000: model.rope_theta = 500000 applies to the Llama family only"}}),
    [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

}  // namespace
}  // namespace fjord
