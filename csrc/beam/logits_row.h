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

#ifndef PYFASTSEQ_SCALEF
#define PYFASTSEQ_SCALEF 0
#endif
#ifndef PYFASTSEQ_LANES
#define PYFASTSEQ_LANES 8
#endif
constexpr int kLanes = PYFASTSEQ_LANES;

// kLanes lanes as GCC/Clang vector extensions: the baseline build lowers eight to SSE pairs, the AVX2
// build (logits_row_avx2.cpp) to single ymm instructions, the AVX-512 one (logits_row_avx512.cpp)
// sixteen to zmm instructions. No -ffast-math is needed for the reductions.
typedef float Floats __attribute__((vector_size(4 * PYFASTSEQ_LANES)));
typedef int32_t Ints __attribute__((vector_size(4 * PYFASTSEQ_LANES)));
typedef uint32_t Uints __attribute__((vector_size(4 * PYFASTSEQ_LANES)));
typedef uint16_t Halves __attribute__((vector_size(2 * PYFASTSEQ_LANES)));

template <class Bits>
PYFASTSEQ_INLINE Floats as_floats(Bits bits) {
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

// 2^t for t <= 0: t = k + f with k an integer and |f| <= 1/2, 2^f by a degree-5 minimax polynomial
// (relative error 2.3e-7 in float), times 2^k. Inputs below -125 give ~2^-125, harmless inside a
// sum; NaN stays NaN, which is how row_normaliser finds NaN logits. The AVX-512 builds
// (PYFASTSEQ_SCALEF) round and scale with one instruction each, the others use the 1.5 * 2^23
// rounding trick and build 2^k's bits.
PYFASTSEQ_INLINE Floats exp2_nonpositive(Floats t) {
  const Floats lo = Floats{} - 125.0f;
  t = t < lo ? lo : t;  // also keeps -inf from turning into NaN below
#if PYFASTSEQ_SCALEF
  const Floats k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const Floats shifted = t + 12582912.0f;  // k = round(t) sits in the low mantissa bits
  const Floats k = shifted - 12582912.0f;
#endif
  const Floats f = t - k;
  Floats p = Floats{} + 1.3276471291e-3f;
  p = p * f + 9.6755418926e-3f;
  p = p * f + 5.5507130921e-2f;
  p = p * f + 2.4022120237e-1f;
  p = p * f + 6.9314694405e-1f;
  p = p * f + 1.0000001192f;
#if PYFASTSEQ_SCALEF
  return _mm512_scalef_ps(p, k);
#else
  Uints bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return p * as_floats((bits << 23) + (127u << 23));
#endif
}

constexpr float kLog2e = 1.44269504088896341f;

// exp(x) for x <= 0.
PYFASTSEQ_INLINE Floats exp_nonpositive(Floats x) { return exp2_nonpositive(x * kLog2e); }

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

// Asks for the cache lines of row[0, n) ahead of their use. The exp pass below computes from L1,
// so without this the memory would idle during it and the next block's max pass would wait for it.
// (A prefetch past the row's end is harmless: prefetches never fault.)
template <class Loader, int64_t n>
PYFASTSEQ_INLINE void prefetch_lines(const typename Loader::Bits* row) {
  for (int64_t byte = 0; byte < n * int64_t{sizeof(*row)}; byte += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(row) + byte);
}

// Whether any lane of x is above t.
PYFASTSEQ_INLINE bool any_above(Floats x, float t) {
#if PYFASTSEQ_SCALEF
  return _mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_GT_OQ) != 0;
#else
  const Ints above = x > t;
  int any = 0;
  for (int j = 0; j < kLanes; ++j) any |= above[j];
  return any != 0;
#endif
}

// Writes the lanes of x above t, and their columns (first + lane), to logits[0, kLanes) and
// tokens[0, kLanes), in lane order; returns how many.
PYFASTSEQ_INLINE int append_above(Floats x, int64_t first, float t, float* logits, int32_t* tokens) {
#if PYFASTSEQ_SCALEF
  const __mmask16 above = _mm512_cmp_ps_mask(x, _mm512_set1_ps(t), _CMP_GT_OQ);
  if (above == 0) return 0;
  // Compressing into a register and storing all lanes is fast everywhere; compress-to-memory is not.
  const __m512i columns = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(first)),
                                           _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
  _mm512_storeu_ps(logits, _mm512_maskz_compress_ps(above, x));
  _mm512_storeu_si512(tokens, _mm512_maskz_compress_epi32(above, columns));
  return __builtin_popcount(above);
#else
  if (!any_above(x, t)) return 0;
  int n = 0;
  for (int j = 0; j < kLanes; ++j)
    if (x[j] > t) {
      logits[n] = x[j];
      tokens[n++] = static_cast<int32_t>(first + j);
    }
  return n;
#endif
}

// Appends each row[i] > threshold, i from begin on, and its column to logits[*count, room) and
// tokens[*count, room), in column order, and returns where it stopped: end, or earlier once fewer
// than 4 * kLanes slots are left (the caller makes room and calls again). The scan behind the
// unconstrained step's top-k: once its threshold is high, few logits pass, so four vectors are
// tested at once by their lane-wise max. The row must be NaN-free.
template <class Loader>
PYFASTSEQ_INLINE int64_t collect_above(const typename Loader::Bits* row, int64_t begin, int64_t end, float threshold,
                                       float* logits, int32_t* tokens, int32_t room, int32_t* count) {
  int32_t n = *count;
  int64_t i = begin;
  for (; i + 4 * kLanes <= end && n + 4 * kLanes <= room; i += 4 * kLanes) {
    const Floats x0 = Loader::load_lanes(row + i), x1 = Loader::load_lanes(row + i + kLanes);
    const Floats x2 = Loader::load_lanes(row + i + 2 * kLanes), x3 = Loader::load_lanes(row + i + 3 * kLanes);
    const Floats top01 = x0 > x1 ? x0 : x1, top23 = x2 > x3 ? x2 : x3;
    if (!any_above(top01 > top23 ? top01 : top23, threshold)) continue;
    for (int64_t v = i; v < i + 4 * kLanes; v += kLanes)
      n += append_above(Loader::load_lanes(row + v), v, threshold, logits + n, tokens + n);
  }
  if (i + 4 * kLanes > end && n + 4 * kLanes <= room) {  // the last partial group
    for (; i < end; ++i) {
      const float x = Loader::load(row[i]);
      if (x > threshold) {
        logits[n] = x;
        tokens[n++] = static_cast<int32_t>(i);
      }
    }
  }
  *count = n;
  return i;
}

// Whether any of row[begin, end) is NaN, for the blocks row_normaliser does not sum.
template <class Loader>
PYFASTSEQ_INLINE bool any_nan(const typename Loader::Bits* row, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float x = Loader::load(row[i]);
    if (x != x) return true;
  }
  return false;
}

// log(sum(exp(row))) over the whole row as m + log_sum: returns the row's max m and sets *log_sum to
// log(sum(exp(row - m))) (0 where m is infinite), and *has_nan when any entry is NaN. The two stay
// apart so that a log-prob can be taken as (x - m) - log_sum, exact for x near m however large the
// logits. The row is read from memory once: each block of kBlock logits gets its max, then, while it
// is still in L1, its exp-sum against the running max (the partial sums are rescaled when the max
// rises). A NaN never wins a max comparison; it reaches the sum, and the sum tells. Each pass keeps
// two accumulators, so neither waits on a single chain of dependent max or add instructions.
template <class Loader>
PYFASTSEQ_INLINE float row_normaliser(const typename Loader::Bits* row, int64_t vocab, float* log_sum, bool* has_nan) {
  constexpr int64_t kBlock = 2048;
  const int64_t body = vocab & ~int64_t{kLanes - 1};
  float m = -INFINITY;
  Floats lane_sum = {};
  bool nan = false;
  *log_sum = 0.0f;
  // Raises the running max to `top`, rescaling what was summed against the old one.
  auto raise_max = [&](float top) {
    if (!(top > m)) return;
    if (m != -INFINITY && top != INFINITY) lane_sum *= exp_nonpositive(m - top);
    m = top;
  };
  for (int64_t start = 0; start < body; start += kBlock) {
    const int64_t end = start + kBlock < body ? start + kBlock : body;
    const int64_t pairs_end = start + ((end - start) & ~int64_t{2 * kLanes - 1});
    Floats max0 = Floats{} - INFINITY, max1 = max0;
    for (int64_t i = start; i < pairs_end; i += 2 * kLanes) {
      const Floats x0 = Loader::load_lanes(row + i), x1 = Loader::load_lanes(row + i + kLanes);
      max0 = x0 > max0 ? x0 : max0;
      max1 = x1 > max1 ? x1 : max1;
    }
    if (pairs_end < end) {
      const Floats x = Loader::load_lanes(row + pairs_end);
      max0 = x > max0 ? x : max0;
    }
    raise_max(max_of(max1 > max0 ? max1 : max0));
    if (m == -INFINITY || m == INFINITY) {  // nothing to add yet, or the result is +inf
      nan = nan || any_nan<Loader>(row, start, end);
      continue;
    }
    // x - m first, exact near the max: an FMA of x log2(e) with a rounded m log2(e) would be off by
    // that rounding, a few percent of each term at |m| ~ 1e6 and all of it at 1e8.
    const Floats top = Floats{} + m;
    Floats sum0 = {}, sum1 = {};
    for (int64_t i = start; i < pairs_end; i += 2 * kLanes) {
      prefetch_lines<Loader, 2 * kLanes>(row + i + kBlock);
      sum0 += exp_nonpositive(Loader::load_lanes(row + i) - top);
      sum1 += exp_nonpositive(Loader::load_lanes(row + i + kLanes) - top);
    }
    if (pairs_end < end) sum0 += exp_nonpositive(Loader::load_lanes(row + pairs_end) - top);
    lane_sum += sum0 + sum1;
  }
  float top = -INFINITY;
  for (int64_t i = body; i < vocab; ++i) {
    const float x = Loader::load(row[i]);
    nan |= x != x;
    top = x > top ? x : top;
  }
  raise_max(top);
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += lane_sum[j];
  *has_nan = nan || sum != sum;
  if (*has_nan || m == -INFINITY || m == INFINITY) return m;
  for (int64_t i = body; i < vocab; ++i) sum += exp_nonpositive(Loader::load(row[i]) - m);
  *log_sum = std::log(sum);
  return m;
}

}  // namespace pyfastseq
