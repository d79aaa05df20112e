// The CPU op table is complete: every entry points at the fjord::cpu definition.
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <string>

namespace fjord {
namespace {

#define FJORD_EXPECT_CPU_ENTRY(name, ...) EXPECT_EQ(ops.name, &cpu::name) << #name;

TEST(CpuOps, TableHoldsEveryCpuOp) {
  const Ops& ops = CpuOps();
  EXPECT_EQ(std::string(ops.name), "cpu");
  FJORD_OP_LIST(FJORD_EXPECT_CPU_ENTRY)
}

}  // namespace
}  // namespace fjord
