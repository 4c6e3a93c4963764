// The sampling weights of a whole row, exp((x - max) / temperature), kLanes floats at a time: the
// pass that dominates sampling without a top-k cut. Compiled three times, like beam/logits_row.h: in
// baseline code (sampling.cpp), for AVX2 + FMA (row_weights_avx2.cpp) and for AVX-512
// (row_weights_avx512.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "beam/logits_row.h"

namespace pyfastseq {

// Writes w[i] = exp((row[i] - max) * inv_t), 0 for a -inf logit, and returns their sum, added in
// double: the draw walks the weights in double, and a float sum of a long tail beside a weight of 1
// would drop the tail (or reach past the walk's end). The row must be NaN-free with a finite maximum
// (the caller checked its log-sum-exp).
template <class Loader>
PYFASTSEQ_INLINE double row_weights(const typename Loader::Bits* row, int64_t n, float inv_t, float* w) {
  const int64_t body = n & ~int64_t{kLanes - 1};
  Floats lane_max = Floats{} - INFINITY;
  for (int64_t i = 0; i < body; i += kLanes) {
    const Floats x = Loader::load_lanes(row + i);
    lane_max = x > lane_max ? x : lane_max;
  }
  float m = -INFINITY;
  for (int j = 0; j < kLanes; ++j) m = lane_max[j] > m ? lane_max[j] : m;
  for (int64_t i = body; i < n; ++i) m = std::max(m, Loader::load(row[i]));
  using Doubles = double __attribute__((vector_size(kLanes * sizeof(double))));
  Doubles lane_sum = {};
  for (int64_t i = 0; i < body; i += kLanes) {
    const Floats x = Loader::load_lanes(row + i);
    // exp_nonpositive floors at 2^-125: a -inf logit must weigh nothing.
    const Floats e = x > Floats{} - INFINITY ? exp_nonpositive((x - m) * inv_t) : Floats{};
    std::memcpy(w + i, &e, sizeof e);
    lane_sum += __builtin_convertvector(e, Doubles);
  }
  double sum = 0.0;
  for (int j = 0; j < kLanes; ++j) sum += lane_sum[j];
  for (int64_t i = body; i < n; ++i) {
    const float x = Loader::load(row[i]);
    w[i] = x > -INFINITY ? exp_nonpositive((x - m) * inv_t) : 0.0f;
    sum += w[i];
  }
  return sum;
}

}  // namespace pyfastseq
