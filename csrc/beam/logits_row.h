// Reading one row of fp32/fp16/bf16 logits as float, and its log-sum-exp in two vectorisable passes.
// The passes work on kLanes floats at a time: 8 by default, PYFASTSEQ_LANES where a build for a
// wider instruction set defines it before the include.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // the lane vectors never cross a non-inlined call
#endif

// Everything here is inlined into the row loops (and compiled once more for AVX2).
#if defined(__GNUC__)
#define PYFASTSEQ_INLINE inline __attribute__((always_inline))
#else
#define PYFASTSEQ_INLINE inline
#endif

namespace pyfastseq {

PYFASTSEQ_INLINE float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
PYFASTSEQ_INLINE uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

#ifndef PYFASTSEQ_LANES
#define PYFASTSEQ_LANES 8
#endif
constexpr int kLanes = PYFASTSEQ_LANES;

// kLanes lanes as GCC/Clang vector extensions: the baseline build lowers eight to SSE pairs, the AVX2
// build (logits_row_avx2.cpp) to single ymm instructions, the AVX-512 one (logits_row_avx512.cpp)
// sixteen to zmm instructions. No -ffast-math is needed for the reductions.
typedef float Floats __attribute__((vector_size(4 * PYFASTSEQ_LANES)));
typedef int32_t Ints __attribute__((vector_size(4 * PYFASTSEQ_LANES)));
typedef uint16_t Halves __attribute__((vector_size(2 * PYFASTSEQ_LANES)));

PYFASTSEQ_INLINE Floats as_floats(Ints bits) {
  Floats f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
PYFASTSEQ_INLINE Ints widen(const uint16_t* p) {
  Halves h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, Ints);
}

struct Float32Loader {
  using Bits = float;
  static PYFASTSEQ_INLINE float load(float v) { return v; }
  static PYFASTSEQ_INLINE Floats load_lanes(const float* p) {
    Floats v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
};
struct BFloat16Loader {
  using Bits = uint16_t;
  static PYFASTSEQ_INLINE float load(uint16_t v) { return bits_to_float(uint32_t{v} << 16); }
  static PYFASTSEQ_INLINE Floats load_lanes(const uint16_t* p) { return as_floats(widen(p) << 16); }
};
struct Float16Loader {
  using Bits = uint16_t;
  // Shifting exponent + mantissa into float position and scaling by 2^112 rebiases the exponent
  // and handles subnormals in one multiply; only inf/NaN need fixing up. Branch-free on the
  // common path, so the row loops below still vectorise.
  static PYFASTSEQ_INLINE float load(uint16_t h) {
    const uint32_t em = h & 0x7fffu;
    float f = bits_to_float(em << 13) * 0x1p112f;
    if (em >= 0x7c00u) f = bits_to_float((em << 13) | 0x7f800000u);
    return bits_to_float(float_to_bits(f) | (uint32_t{h & 0x8000u} << 16));
  }
  static PYFASTSEQ_INLINE Floats load_lanes(const uint16_t* p) {
    const Ints h = widen(p), em = h & 0x7fff;
    const Floats f = as_floats(em << 13) * 0x1p112f;
    Ints bits;
    std::memcpy(&bits, &f, sizeof bits);
    bits = em >= 0x7c00 ? ((em << 13) | 0x7f800000) : bits;
    return as_floats(bits | ((h & 0x8000) << 16));
  }
};

// exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp): Cody-Waite reduction to 2^k * e^r. Inputs
// below -87 flush to ~1e-38, harmless inside a sum.
PYFASTSEQ_INLINE Floats exp_nonpositive(Floats x) {
  const Floats lo = Floats{} - 87.0f;
  x = x < lo ? lo : x;
  const Floats k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const Floats r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  Floats p = Floats{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Ints bits = (__builtin_convertvector(k, Ints) + 127) << 23;
  return p * as_floats(bits);
}

PYFASTSEQ_INLINE float exp_nonpositive(float x) {
  Floats v = {};
  v[0] = x;
  return exp_nonpositive(v)[0];
}

PYFASTSEQ_INLINE float max_of(Floats lane_max) {
  float m = -INFINITY;
  for (int j = 0; j < kLanes; ++j) m = lane_max[j] > m ? lane_max[j] : m;
  return m;
}

// log(sum(exp(row))) over the whole row; sets *has_nan when any entry is NaN. The row is read from
// memory once: each block of kBlock logits gets its max, then, while it is still in L1, its exp-sum
// against the running max (the partial sums are rescaled when the max rises).
template <class Loader>
PYFASTSEQ_INLINE float row_logsumexp(const typename Loader::Bits* row, int64_t vocab, bool* has_nan) {
  constexpr int64_t kBlock = 2048;
  const int64_t body = vocab & ~int64_t{kLanes - 1};
  float m = -INFINITY;
  Floats lane_sum = {};
  Ints lane_nan = {};
  // Raises the running max to `top`, rescaling what was summed against the old one.
  auto raise_max = [&](float top) {
    if (!(top > m)) return;
    if (m != -INFINITY && top != INFINITY) lane_sum *= exp_nonpositive(m - top);
    m = top;
  };
  for (int64_t start = 0; start < body; start += kBlock) {
    const int64_t end = start + kBlock < body ? start + kBlock : body;
    Floats lane_max = Floats{} - INFINITY;
    for (int64_t i = start; i < end; i += kLanes) {
      const Floats x = Loader::load_lanes(row + i);
      lane_nan |= x != x;
      lane_max = x > lane_max ? x : lane_max;
    }
    raise_max(max_of(lane_max));
    if (m == -INFINITY || m == INFINITY) continue;  // nothing to add yet, or the result is +inf
    for (int64_t i = start; i < end; i += kLanes) lane_sum += exp_nonpositive(Loader::load_lanes(row + i) - m);
  }
  bool nan = false;
  for (int j = 0; j < kLanes; ++j) nan |= lane_nan[j] != 0;
  float top = -INFINITY;
  for (int64_t i = body; i < vocab; ++i) {
    const float x = Loader::load(row[i]);
    nan |= x != x;
    top = x > top ? x : top;
  }
  raise_max(top);
  *has_nan = nan;
  if (nan || m == -INFINITY) return m;
  if (m == INFINITY) return INFINITY;
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += lane_sum[j];
  for (int64_t i = body; i < vocab; ++i) sum += exp_nonpositive(Loader::load(row[i]) - m);
  return m + std::log(sum);
}

}  // namespace pyfastseq
