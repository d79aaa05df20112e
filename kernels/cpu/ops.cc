#include "kernels/ops.h"

namespace fjord {

#define FJORD_CPU_OP_ENTRY(name, ...) &cpu::name,

const Ops& CpuOps() {
  static const Ops ops = {"cpu", FJORD_OP_LIST(FJORD_CPU_OP_ENTRY)};
  return ops;
}

}  // namespace fjord
