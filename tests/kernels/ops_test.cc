// The CPU op table is complete: every entry points at the fjord::cpu definition, the model ops
// once per storage type (f32 and bf16x), and model<floatX>() picks the table of that type.
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace fjord {
namespace {

#define FJORD_EXPECT_CPU_ENTRY(name, ...) EXPECT_EQ(ops.name, &cpu::name) << #name;
// Each model op's float and bf16 entries are its two instantiations, so they must differ too.
#define FJORD_EXPECT_CPU_MODEL_ENTRIES(name, ...)                                                   \
  EXPECT_EQ(ops.f32.name, &cpu::name<float>) << #name " (f32)";                                     \
  EXPECT_EQ(ops.bf16x.name, &cpu::name<bf16>) << #name " (bf16x)";                                  \
  EXPECT_NE(reinterpret_cast<uintptr_t>(ops.f32.name), reinterpret_cast<uintptr_t>(ops.bf16x.name)) \
      << #name " has one function for both storage types";

TEST(CpuOps, TableHoldsEveryCpuOp) {
  const Ops& ops = CpuOps();
  EXPECT_EQ(std::string(ops.name), "cpu");
  FJORD_OP_LIST(FJORD_EXPECT_CPU_ENTRY)
  FJORD_MODEL_OP_LIST(FJORD_EXPECT_CPU_MODEL_ENTRIES, floatX)
}

TEST(CpuOps, ModelSelectsTheTableOfItsStorageType) {
  const Ops& ops = CpuOps();
  EXPECT_EQ(&ops.model<float>(), &ops.f32);
  EXPECT_EQ(&ops.model<bf16>(), &ops.bf16x);
}

}  // namespace
}  // namespace fjord
