// Fuzzes ParseJson (common/json.h), the parser under safetensors headers, config.json,
// vocab.json and checkpoint manifests. Beyond not crashing, checks what the header promises:
// errors read "SOURCE:LINE:COLUMN: ...", object keys are unique and Find returns them, every
// position is 1-based, and JsonQuote of every decoded string parses back to the same bytes.
#include <cstdint>
#include <string>

#include "common/json.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void Walk(const fjord::JsonValue& v) {
  FJORD_FUZZ_EXPECT(v.line() >= 1 && v.column() >= 1, "position not 1-based");
  FJORD_FUZZ_EXPECT(v.type_name()[0] != '?', "unknown type");
  switch (v.type()) {
    case fjord::JsonValue::Type::kNumber: {
      (void)v.number();
      const std::optional<int64_t> i = v.AsInt64();
      const std::optional<uint64_t> u = v.AsUint64();
      if (i && u && *i >= 0) FJORD_FUZZ_EXPECT(static_cast<uint64_t>(*i) == *u, v.text());
      break;
    }
    case fjord::JsonValue::Type::kString: {
      fjord::StatusOr<fjord::JsonValue> again = fjord::ParseJson(fjord::JsonQuote(v.text()), "quoted");
      FJORD_FUZZ_EXPECT(again.ok() && again->is_string() && again->text() == v.text(),
                        "JsonQuote does not round-trip " + fjord::JsonQuote(v.text()));
      break;
    }
    case fjord::JsonValue::Type::kArray:
      for (const fjord::JsonValue& e : v.array()) Walk(e);
      break;
    case fjord::JsonValue::Type::kObject:
      for (const fjord::JsonValue::Member& m : v.object()) {
        FJORD_FUZZ_EXPECT(v.Find(m.first) == &m.second, "Find misses key " + fjord::JsonQuote(m.first));
        Walk(m.second);
      }
      break;
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fjord::StatusOr<fjord::JsonValue> v = fjord::ParseJson(fjord::fuzz::AsText(data, size), "fuzz.json");
  if (!v.ok()) {
    FJORD_FUZZ_EXPECT(v.status().message().starts_with("fuzz.json:"), v.status().message());
    return 0;
  }
  Walk(*v);
  return 0;
}
