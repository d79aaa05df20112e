#include "kernels/ops.h"

namespace fjord {

#define FJORD_CPU_OP_ENTRY(name, ...) &cpu::name,
#define FJORD_CPU_F32_ENTRY(name, ...) &cpu::name<float>,
#define FJORD_CPU_BF16_ENTRY(name, ...) &cpu::name<bf16>,

const Ops& CpuOps() {
  static const Ops ops = {"cpu",
                          {FJORD_MODEL_OP_LIST(FJORD_CPU_F32_ENTRY, float)},
                          {FJORD_MODEL_OP_LIST(FJORD_CPU_BF16_ENTRY, bf16)},
                          FJORD_OP_LIST(FJORD_CPU_OP_ENTRY)};
  return ops;
}

}  // namespace fjord
