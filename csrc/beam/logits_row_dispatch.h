// Run-time choice between the baseline, AVX2 + FMA and AVX-512 builds of the row passes. Never
// include this from a file compiled for AVX2 or AVX-512: its inline functions must stay baseline code.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "beam/beam.h"
#include "beam/logits_row.h"
#include "beam/logits_row_simd.h"
#include "common/cpu.h"
#include "common/errors.h"

namespace pyfastseq {

// The row passes of one faster build for one logits dtype.
template <class Bits>
struct SimdRowPasses {
  float (*normaliser)(const Bits* row, int64_t n, float* log_sum, bool* nan);
  int64_t (*collect_above)(const Bits* row, int64_t begin, int64_t end, float threshold, float* logits,
                           int32_t* tokens, int32_t room, int32_t* count);
};

// The fastest build this CPU runs for Loader's dtype; null for the baseline one.
template <class Loader>
const SimdRowPasses<typename Loader::Bits>* simd_row_passes() {
#if PYFASTSEQ_AVX2
  using Passes = SimdRowPasses<typename Loader::Bits>;
  auto pick = [](const Passes& avx512, const Passes& avx2) {
    return cpu_has_avx512() ? &avx512 : cpu_has_avx2_fma() ? &avx2 : nullptr;
  };
  if constexpr (std::is_same_v<Loader, Float32Loader>) {
    static constexpr Passes avx512{pyfastseq_normaliser_f32_avx512, pyfastseq_collect_above_f32_avx512};
    static constexpr Passes avx2{pyfastseq_normaliser_f32_avx2, pyfastseq_collect_above_f32_avx2};
    return pick(avx512, avx2);
  } else if constexpr (std::is_same_v<Loader, Float16Loader>) {
    static constexpr Passes avx512{pyfastseq_normaliser_f16_avx512, pyfastseq_collect_above_f16_avx512};
    static constexpr Passes avx2{pyfastseq_normaliser_f16_avx2, pyfastseq_collect_above_f16_avx2};
    return pick(avx512, avx2);
  } else {
    static_assert(std::is_same_v<Loader, BFloat16Loader>);
    static constexpr Passes avx512{pyfastseq_normaliser_bf16_avx512, pyfastseq_collect_above_bf16_avx512};
    static constexpr Passes avx2{pyfastseq_normaliser_bf16_avx2, pyfastseq_collect_above_bf16_avx2};
    return pick(avx512, avx2);
  }
#else
  return nullptr;
#endif
}

// The log-softmax normaliser of a whole logits row (NaN reported through *nan): the one pass over
// every logit that a full-vocabulary normaliser costs.
template <class Loader>
Normaliser full_normaliser(const typename Loader::Bits* row, int64_t n, bool* nan) {
  Normaliser z;
  const auto* simd = simd_row_passes<Loader>();
  z.max = simd ? simd->normaliser(row, n, &z.log_sum, nan) : row_normaliser<Loader>(row, n, &z.log_sum, nan);
  return z;
}

// collect_above (logits_row.h) in the fastest build.
template <class Loader>
int64_t collect_logits_above(const typename Loader::Bits* row, int64_t begin, int64_t end, float threshold,
                             float* logits, int32_t* tokens, int32_t room, int32_t* count) {
  if (const auto* simd = simd_row_passes<Loader>())
    return simd->collect_above(row, begin, end, threshold, logits, tokens, room, count);
  return collect_above<Loader>(row, begin, end, threshold, logits, tokens, room, count);
}

// The best `keep` logits of a NaN-free row and their columns, column `blocked` excluded (-1: none),
// in column order in logits[0, n) and tokens[0, n); returns n, below `keep` only when fewer logits
// lie above `floor`. Ties go to the lower column, or `with_ties` keeps every logit equal to the
// keep-th too. The scan collects logits above a threshold; whenever its buffer fills, and at the end, the
// best `keep` stay and the threshold rises to the worst of them. Columns arrive in ascending order,
// so one that only ties the threshold ranks below it (or, with ties, is collected as well).
template <class Loader>
int32_t top_logits(const typename Loader::Bits* row, int64_t vocab, int32_t keep, int64_t blocked,
                   std::vector<float>& logits, std::vector<int32_t>& tokens, bool with_ties = false,
                   float floor = -INFINITY) {
  int32_t room = keep + 128;  // small enough that the threshold rises early in the row
  logits.resize(room);
  tokens.resize(room);
  thread_local std::vector<float> selection;
  int32_t count = 0;
  float threshold = floor;
  for (int64_t at = 0; at < vocab;) {
    at = collect_logits_above<Loader>(row, at, vocab, threshold, logits.data(), tokens.data(), room, &count);
    int32_t n = 0;
    for (int32_t i = 0; i < count; ++i)
      if (tokens[i] != blocked) {
        logits[n] = logits[i];
        tokens[n++] = tokens[i];
      }
    count = n;
    if (n <= keep) continue;
    selection.assign(logits.begin(), logits.begin() + n);
    std::nth_element(selection.begin(), selection.begin() + (keep - 1), selection.end(), std::greater<float>());
    const float kth = selection[keep - 1];
    int32_t ties = with_ties ? n : keep;  // how many logits equal to the k-th stay: the first ones
    for (int32_t i = 0; i < n; ++i) ties -= logits[i] > kth;
    count = 0;
    for (int32_t i = 0; i < n; ++i)
      if (logits[i] > kth || (logits[i] == kth && ties-- > 0)) {
        logits[count] = logits[i];
        tokens[count++] = tokens[i];
      }
    threshold = with_ties ? std::nextafter(kth, -INFINITY) : kth;
    if (count + 4 * kLanes + 128 > room) {  // ties fill the buffer: collect_above needs 4 vectors' room
      // Doubling keeps the re-selections linear in the row when most of it ties (a finite mask fill).
      // Never past the whole row plus the 4 vectors, nor past int32.
      const int64_t most = std::min<int64_t>(vocab + 4 * kLanes + 128, std::numeric_limits<int32_t>::max());
      room = static_cast<int32_t>(std::min(most, std::max<int64_t>(2 * int64_t{room}, count + 4 * kLanes + 128)));
      logits.resize(room);
      tokens.resize(room);
    }
  }
  return count;
}

// Calls f(Loader{}) with the loader that reads `dtype`; InvalidArgument for an unknown code.
template <class F>
void with_logits_loader(LogitsDtype dtype, F&& f) {
  switch (dtype) {
    case LogitsDtype::kFloat32: return f(Float32Loader{});
    case LogitsDtype::kFloat16: return f(Float16Loader{});
    case LogitsDtype::kBFloat16: return f(BFloat16Loader{});
  }
  fail("logits dtype code ", static_cast<int32_t>(dtype), " is not float32, float16 or bfloat16");
}

}  // namespace pyfastseq
