// The CUDA backend's op table. Every entry names the fjord::cuda definition of the op, so an op of
// FJORD_OP_LIST without a CUDA twin fails to link wherever the table is used.
#include "kernels/ops.h"

namespace fjord {

#define FJORD_CUDA_OP_ENTRY(name, ...) &cuda::name,

const Ops& CudaOps() {
  static const Ops ops = {"cuda", FJORD_OP_LIST(FJORD_CUDA_OP_ENTRY)};
  return ops;
}

}  // namespace fjord
