// Per-element math shared by the CPU and CUDA backends.
//
// The CPU twin is the oracle for every CUDA op, so the formulas whose rounding matters (GELU and
// its derivative, the AdamW step, exp) are written once here and compiled for both host and device.
// A CUDA test that compares the two backends then checks the kernels' indexing and reductions,
// not two transcriptions of the same formula. Plain C++ sees no CUDA qualifiers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/ops.h"

#if defined(__CUDACC__)
#define FJORD_HOST_DEVICE __host__ __device__
#else
#define FJORD_HOST_DEVICE
#endif

namespace fjord {

// e^x for x in about [-87, 88] (finite inputs outside are clamped, so the result never reaches 0
// or inf), relative error within ~2 ulp; NaN in gives NaN out, so a diverged model still shows up
// in its loss. On the host it is branch-free float arithmetic (Cody-Waite range reduction, a
// degree-6 polynomial, the exponent set through the bit pattern) so that loops over it vectorise;
// glibc's expf does not without -ffast-math. On the device it is expf.
FJORD_HOST_DEVICE inline float Exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x));  // comparisons are false for NaN
#else
  // Ternary clamps and rounding to nearest by adding and subtracting 1.5 * 2^23, rather than
  // fmin/fmax/floor, which GCC does not inline without -ffast-math. The clamps vectorise under
  // -fno-trapping-math (set for the CPU kernels in kernels/CMakeLists.txt); the rounding trick
  // needs IEEE float arithmetic, which this project never relaxes (no -ffast-math). The clamp
  // maps NaN to -87 so the float-to-int conversion below is always defined.
  const float xc = x > -87.0f ? (x < 88.0f ? x : 88.0f) : -87.0f;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(xc / ln 2)
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;            // xc - n ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n as a float bit pattern
  float scale;  // memcpy rather than std::bit_cast: the CUDA sources build as C++17
  std::memcpy(&scale, &bits, sizeof(scale));
  return x == x ? p * scale : x;  // NaN in, NaN out
#endif
}

// GELU, tanh approximation: 0.5 x (1 + tanh(a)), a = sqrt(2/pi) (x + 0.044715 x^3). It is
// evaluated through the identity 0.5 (1 + tanh(a)) = sigmoid(2a) = 1 / (1 + e^(-2a)), which is
// exact in real arithmetic and avoids the cancellation of 1 + tanh(a) for x < 0.
FJORD_HOST_DEVICE inline float GeluForward(float x) {
  constexpr float kScale = 0.7978845608028654f;  // sqrt(2 / pi)
  const float a = kScale * (x + 0.044715f * x * x * x);
  return x / (1.0f + Exp(-2.0f * a));
}

// d GeluForward / dx = s + 0.5 x sech^2(a) a'(x), with s = sigmoid(2a) and
// sech^2(a) = 4 s (1 - s) = 4 s^2 e^(-2a), again free of cancellation.
FJORD_HOST_DEVICE inline float GeluDerivative(float x) {
  constexpr float kScale = 0.7978845608028654f;
  const float a = kScale * (x + 0.044715f * x * x * x);
  const float e = Exp(-2.0f * a);
  const float s = 1.0f / (1.0f + e);
  const float sech2 = 4.0f * s * (s * e);
  return s + 0.5f * x * sech2 * kScale * (1.0f + 3.0f * 0.044715f * x * x);
}

// SiLU, g / (1 + e^-g), and its derivative s (1 + g (1 - s)) with s = sigmoid(g): SwiGLU's gate
// (swiglu_forward / swiglu_backward), the same expression on both backends.
FJORD_HOST_DEVICE inline float Sigmoid(float g) { return 1.0f / (1.0f + Exp(-g)); }
FJORD_HOST_DEVICE inline float SiluForward(float g) { return g * Sigmoid(g); }
FJORD_HOST_DEVICE inline float SiluDerivative(float g) {
  const float s = Sigmoid(g);
  return s * (1.0f + g * (1.0f - s));
}

// The per-step constants of AdamW, computed once per call (not per element) on the host.
struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float inv_bias1;  // 1 / (1 - beta1^t)
  float inv_bias2;  // 1 / (1 - beta2^t)
};

// Bias corrections in double: for beta2 = 0.999 and small t, 1 - beta2^t loses digits in float.
inline AdamWStep MakeAdamWStep(float lr, float beta1, float beta2, float eps, float weight_decay,
                               float grad_scale, int t) {
  return AdamWStep{lr,
                   beta1,
                   beta2,
                   eps,
                   weight_decay,
                   grad_scale,
                   static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta1), t))),
                   static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(beta2), t)))};
}

// One parameter's AdamW update; m and v are updated in place, the new parameter is returned.
FJORD_HOST_DEVICE inline float AdamWElement(const AdamWStep& s, float param, float grad, float& m, float& v) {
  const float g = grad * s.grad_scale;
  m = s.beta1 * m + (1.0f - s.beta1) * g;
  v = s.beta2 * v + (1.0f - s.beta2) * g * g;
  const float m_hat = m * s.inv_bias1;
  const float v_hat = v * s.inv_bias2;
  return param - s.lr * (m_hat / (sqrtf(v_hat) + s.eps) + s.weight_decay * param);
}

// ---- bf16 ------------------------------------------------------------------------------------

// SplitMix64's finaliser: a bijective 64-bit mix, the counter-based random source of stochastic
// rounding (no state, so every element draws independently on any backend and in any order).
FJORD_HOST_DEVICE inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// fp32 -> bf16 bits (see cast_to_bf16 in kernels/ops.h). Adding to the 32-bit pattern and
// truncating rounds the magnitude, for either sign: 0x7fff plus the kept LSB rounds to nearest
// with ties to even; a uniform 16-bit draw rounds up with probability low16 / 2^16.
FJORD_HOST_DEVICE inline uint16_t ToBf16(float x, uint64_t seed, uint64_t i) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  const uint32_t add = seed == 0
                           ? 0x7fffu + ((u >> 16) & 1u)
                           : static_cast<uint32_t>(Mix64(seed ^ Mix64(i + 0x9e3779b97f4a7c15ULL)) & 0xffffu);
  return static_cast<uint16_t>((u + add) >> 16);
}

FJORD_HOST_DEVICE inline float FromBf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// Storage <-> fp32 for code written once over floatX (float or bf16): ToFloat reads a stored value
// exactly; FromFloat<floatX> rounds an fp32 result for storage, to nearest with ties to even.
FJORD_HOST_DEVICE inline float ToFloat(float x) { return x; }
FJORD_HOST_DEVICE inline float ToFloat(bf16 x) { return FromBf16(x.bits); }

template <typename floatX>
FJORD_HOST_DEVICE inline floatX FromFloat(float x);
template <>
FJORD_HOST_DEVICE inline float FromFloat<float>(float x) {
  return x;
}
template <>
FJORD_HOST_DEVICE inline bf16 FromFloat<bf16>(float x) {
  return bf16{ToBf16(x, 0, 0)};
}

}  // namespace fjord
