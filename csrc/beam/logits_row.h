// Reading one row of fp32/fp16/bf16 logits as float, and its log-sum-exp in two vectorisable passes.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pyfastseq {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

struct Float32Loader {
  using Bits = float;
  static float load(float v) { return v; }
};
struct BFloat16Loader {
  using Bits = uint16_t;
  static float load(uint16_t v) { return bits_to_float(uint32_t{v} << 16); }
};
struct Float16Loader {
  using Bits = uint16_t;
  // Shifting exponent + mantissa into float position and scaling by 2^112 rebiases the exponent
  // and handles subnormals in one multiply; only inf/NaN need fixing up. Branch-free on the
  // common path, so the row loops below still vectorise.
  static float load(uint16_t h) {
    const uint32_t em = h & 0x7fffu;
    float f = bits_to_float(em << 13) * 0x1p112f;
    if (em >= 0x7c00u) f = bits_to_float((em << 13) | 0x7f800000u);
    return bits_to_float(float_to_bits(f) | (uint32_t{h & 0x8000u} << 16));
  }
};

// exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp) without calls or branches, so the compiler
// vectorises the sum below. Inputs below -87 flush to ~1e-38, harmless inside a sum.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
}

// log(sum(exp(row))) over the whole row; sets *has_nan when any entry is NaN.
template <class Loader>
float row_logsumexp(const typename Loader::Bits* row, int64_t vocab, bool* has_nan) {
  float m = -INFINITY;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t i = 0; i < vocab; ++i) {
    const float x = Loader::load(row[i]);
    nan |= (x != x);
    m = x > m ? x : m;
  }
  *has_nan = nan != 0;
  if (nan || m == -INFINITY) return m;
  if (m == INFINITY) return INFINITY;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < vocab; ++i) sum += exp_nonpositive(Loader::load(row[i]) - m);
  return m + std::log(sum);
}

}  // namespace pyfastseq
