// The sampling weights of a whole row, exp((x - max) / temperature), in eight-float lanes: the
// pass that dominates sampling without a top-k cut. Compiled twice, like beam/logits_row.h: in
// baseline code (sampling.cpp) and for AVX2 + FMA (row_weights_avx2.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "beam/logits_row.h"

namespace pyfastseq {

// Writes w[i] = exp((row[i] - max) * inv_t) and returns their sum. The row must be NaN-free with
// a finite maximum (the caller checked its log-sum-exp).
template <class Loader>
PYFASTSEQ_INLINE double row_weights(const typename Loader::Bits* row, int64_t n, float inv_t, float* w) {
  const int64_t body = n & ~int64_t{7};
  Floats8 m8 = Floats8{} - INFINITY;
  for (int64_t i = 0; i < body; i += 8) {
    const Floats8 x = Loader::load8(row + i);
    m8 = x > m8 ? x : m8;
  }
  float m = -INFINITY;
  for (int j = 0; j < 8; ++j) m = m8[j] > m ? m8[j] : m;
  for (int64_t i = body; i < n; ++i) m = std::max(m, Loader::load(row[i]));
  Floats8 sum8 = {};
  for (int64_t i = 0; i < body; i += 8) {
    const Floats8 e = exp_nonpositive((Loader::load8(row + i) - m) * inv_t);
    std::memcpy(w + i, &e, sizeof e);
    sum8 += e;
  }
  double sum = 0.0;
  for (int j = 0; j < 8; ++j) sum += sum8[j];
  for (int64_t i = body; i < n; ++i) {
    w[i] = exp_nonpositive((Loader::load(row[i]) - m) * inv_t);
    sum += w[i];
  }
  return sum;
}

}  // namespace pyfastseq
