// Fuzzes ReadSafetensors (runtime/formats/safetensors.h): the length prefix, the JSON header and the
// tiling of the data buffer by the tensors. ReadSafetensors takes a path, so each input is written
// to a scratch file first. Every tensor of an accepted file must lie inside the file and hold
// prod(shape) elements, and the float dtypes must convert as the importers convert them.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fjord::fuzz::ScratchDir("safetensors") + "/model.safetensors";
  fjord::fuzz::WriteFile(path, fjord::fuzz::AsText(data, size));
  fjord::StatusOr<fjord::Safetensors> st = fjord::ReadSafetensors(path);
  if (!st.ok()) return 0;
  size_t covered = 0;
  for (const fjord::SafetensorsTensor& t : st->tensors()) {
    FJORD_FUZZ_EXPECT(st->Find(t.name) == &t, "Find misses " + t.name);
    const int64_t n = t.num_elements();
    FJORD_FUZZ_EXPECT(n >= 0 && static_cast<size_t>(n) * fjord::DtypeSize(t.dtype) == t.num_bytes,
                      "byte size of " + t.name + " differs from its shape");
    covered += t.num_bytes;
    if (t.dtype == fjord::Dtype::kF32 || t.dtype == fjord::Dtype::kF16 || t.dtype == fjord::Dtype::kBF16) {
      std::vector<float> out(static_cast<size_t>(n));
      FJORD_FUZZ_EXPECT(fjord::TensorToFloat32(t, path, out.data()).ok(), "float tensor did not convert");
    }
  }
  FJORD_FUZZ_EXPECT(covered <= size, "tensors cover more bytes than the file has");
  return 0;
}
