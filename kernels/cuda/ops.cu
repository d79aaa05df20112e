// The CUDA backend's op table. Every entry names the fjord::cuda definition of the op, so an op of
// FJORD_OP_LIST without a CUDA twin fails to link wherever the table is used.
#include "kernels/ops.h"

namespace fjord {

#define FJORD_CUDA_OP_ENTRY(name, ...) &cuda::name,
#define FJORD_CUDA_F32_ENTRY(name, ...) &cuda::name<float>,
#define FJORD_CUDA_BF16_ENTRY(name, ...) &cuda::name<bf16>,

const Ops& CudaOps() {
  static const Ops ops = {"cuda",
                          {FJORD_MODEL_OP_LIST(FJORD_CUDA_F32_ENTRY, float)},
                          {FJORD_MODEL_OP_LIST(FJORD_CUDA_BF16_ENTRY, bf16)},
                          FJORD_OP_LIST(FJORD_CUDA_OP_ENTRY)};
  return ops;
}

}  // namespace fjord
