// The solver's row scans four columns at a time, without branches: which columns fall and which
// is cheapest are unpredictable. Each lane keeps its own result over columns j = lane (mod 4), and
// the lanes are merged at the end.
#include <algorithm>
#include <limits>

#include "assign/row_scans_avx2.h"

#if PYFASTSEQ_AVX2
#pragma GCC target("avx2,fma")
#include <immintrin.h>

using pyfastseq::CheapestTwo;
using pyfastseq::Nearest;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

Nearest pyfastseq_relax_avx2(const double* ci, const double* vm, const double* key, double h, double* d,
                             int* path, int i, int n) {
  const __m256d hv = _mm256_set1_pd(h);
  const __m128i row = _mm_set1_epi32(i);
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  __m256d best_d = _mm256_set1_pd(kInf), best_key = best_d;
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const __m256d dj = _mm256_sub_pd(_mm256_sub_pd(_mm256_loadu_pd(ci + j), _mm256_loadu_pd(vm + j)), hv);
    const __m256d old = _mm256_loadu_pd(d + j);
    const __m256d fell = _mm256_cmp_pd(dj, old, _CMP_LT_OQ);
    const __m256d dn = _mm256_blendv_pd(old, dj, fell);
    _mm256_storeu_pd(d + j, dn);
    // The 64-bit lane masks narrowed to the four 32-bit path entries.
    const __m128i fell32 =
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(fell), low_halves));
    __m128i* p = reinterpret_cast<__m128i*>(path + j);
    _mm_storeu_si128(p, _mm_blendv_epi8(_mm_loadu_si128(p), row, fell32));
    const __m256d k = _mm256_loadu_pd(key + j);
    const __m256d better = _mm256_or_pd(
        _mm256_cmp_pd(dn, best_d, _CMP_LT_OQ),
        _mm256_and_pd(_mm256_cmp_pd(dn, best_d, _CMP_EQ_OQ), _mm256_cmp_pd(k, best_key, _CMP_LT_OQ)));
    best_d = _mm256_blendv_pd(best_d, dn, better);
    best_key = _mm256_blendv_pd(best_key, k, better);
  }
  alignas(32) double lane_d[4], lane_key[4];
  _mm256_store_pd(lane_d, best_d);
  _mm256_store_pd(lane_key, best_key);
  Nearest best{kInf, kInf};
  for (int l = 0; l < 4; ++l)
    if (pyfastseq::nearer(lane_d[l], lane_key[l], best)) best = {lane_d[l], lane_key[l]};
  return pyfastseq::relax_columns(ci, vm, key, h, d, path, i, j, n, best);
}

CheapestTwo pyfastseq_cheapest_two_avx2(const double* ci, const double* v, int n) {
  __m256d u1 = _mm256_set1_pd(kInf), u2 = u1;
  __m256i j1 = _mm256_set1_epi64x(-1), j2 = j1, col = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i four = _mm256_set1_epi64x(4);
  for (int j = 0; j + 4 <= n; j += 4) {
    const __m256d h = _mm256_sub_pd(_mm256_loadu_pd(ci + j), _mm256_loadu_pd(v + j));
    const __m256i first = _mm256_castpd_si256(_mm256_cmp_pd(h, u1, _CMP_LT_OQ));
    const __m256i second = _mm256_castpd_si256(_mm256_cmp_pd(h, u2, _CMP_LT_OQ));
    j2 = _mm256_blendv_epi8(_mm256_blendv_epi8(j2, col, second), j1, first);
    j1 = _mm256_blendv_epi8(j1, col, first);
    u2 = _mm256_min_pd(u2, _mm256_max_pd(u1, h));  // h between u1 and u2, or u1 displaced
    u1 = _mm256_min_pd(u1, h);
    col = _mm256_add_epi64(col, four);
  }
  alignas(32) double lane_u1[4], lane_u2[4];
  alignas(32) int64_t lane_j1[4], lane_j2[4];
  _mm256_store_pd(lane_u1, u1);
  _mm256_store_pd(lane_u2, u2);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane_j1), j1);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane_j2), j2);
  CheapestTwo lanes[4];
  for (int l = 0; l < 4; ++l) lanes[l] = {lane_u1[l], lane_u2[l], lane_j1[l], lane_j2[l]};
  return pyfastseq::merge(pyfastseq::merge(lanes[0], lanes[1]), pyfastseq::merge(lanes[2], lanes[3]));
}

bool pyfastseq_check_costs_avx2(const double* src, int64_t nr, int64_t nc, int64_t rs, double* peak) {
  const __m256d neg_inf = _mm256_set1_pd(-kInf), inf = _mm256_set1_pd(kInf), sign = _mm256_set1_pd(-0.0);
  __m256d above = _mm256_castsi256_pd(_mm256_set1_epi64x(-1)), peaks = _mm256_set1_pd(*peak);
  for (int64_t i = 0; i < nr; ++i) {
    const double* row = src + i * rs;
    for (int64_t j = 0; j + 4 <= nc; j += 4) {
      const __m256d x = _mm256_loadu_pd(row + j);
      above = _mm256_and_pd(above, _mm256_cmp_pd(x, neg_inf, _CMP_GT_OQ));  // false for NaN and -inf
      const __m256d magnitude = _mm256_andnot_pd(sign, x);
      peaks = _mm256_max_pd(peaks, _mm256_and_pd(magnitude, _mm256_cmp_pd(magnitude, inf, _CMP_LT_OQ)));
    }
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, peaks);
  *peak = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
  return _mm256_movemask_pd(above) == 15;
}
#endif
