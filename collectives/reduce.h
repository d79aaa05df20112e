// Element-wise reductions of host buffers for the collectives, and the bf16 / f16 conversions
// they use.
//
// Design: one function reduces two operands into an output that may alias either operand
// exactly, so the ring reduces a received chunk into the user's buffer in place and the tree
// combines partner data without copies. Reductions are elementwise (no loop-carried state), so
// the loops vectorize even with that aliasing. bf16 and f16 go through float and round back to
// nearest-even after each step; f16 uses the F16C instructions where the build targets them,
// with a bit-exact scalar twin for the tails and for other machines. kAvg reduces as a sum;
// the caller divides once at the end (FinishAverage), so every rank divides the same sum.
#pragma once

#include <cstddef>
#include <cstdint>

#include "collectives/communicator.h"
#include "common/status.h"

namespace fjord {

// InvalidArgument for the pairs the collectives refuse (kAvg on kU8), else OK.
Status CheckReduction(DataType dtype, ReduceOp op);

// out[i] = a[i] op b[i] for i < count. out may be a or b (exactly), not partly overlap them.
// kAvg reduces as kSum. The pair must pass CheckReduction.
void ReduceBuffers(void* out, const void* a, const void* b, size_t count, DataType dtype, ReduceOp op);

// buf[i] = buf[i] / world_size: in float rounded once to the dtype (f32, bf16, f16), truncating
// integer division (i32). No-op for world_size 1.
void FinishAverage(void* buf, size_t count, DataType dtype, int world_size);

float Bf16ToFloat(uint16_t bits);
uint16_t FloatToBf16(float value);  // round to nearest even; NaN stays NaN (quiet)
float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);  // round to nearest even, overflow to inf; NaN stays NaN (quiet)

// Writes the integer v as one element of `dtype` at dst: floats by conversion (exact for the
// small integers the tests and the bench use), i32 and u8 modulo 2^32 and 2^8. Used to build
// inputs and expected results whose reductions are exactly predictable.
void StoreInteger(DataType dtype, int64_t v, void* dst);

}  // namespace fjord
