// CPU linear sum assignment: Jonker-Volgenant initialisation + shortest augmenting paths (see
// assign.h). The solver sees a minimising, wide (rows <= cols) matrix with unit column stride: the
// input itself when it already is one, else a copy (negated for maximize, transposed when tall).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "assign/assign.h"
#include "assign/row_scans.h"
#include "assign/row_scans_avx2.h"
#include "common/cpu.h"
#include "common/parallel.h"

namespace pyfastseq {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Problems up to this size keep their working matrix and state on the stack: for them allocation
// and setup would cost more than the solve.
constexpr int kTiny = 16;
constexpr int kLanesFrom = 6;  // see cheapest_two

// Solver state for a wide problem with nr <= nc; the caller owns the memory.
struct Work {
  const double* c;    // [nr, nc], row i at c + i * ld, unit column stride; finite or +inf entries
  int64_t ld;
  int nr, nc;
  int* col4row;       // [nr]
  int* row4col;       // [nc]
  double* v;          // [nc] column prices
  double* d;          // [nc] path lengths (+inf once scanned); argmin rows (tiny column reduction)
  double* vm;         // [nc] prices, -inf once scanned (augment)
  double* key;        // [nc] j for a free column, j + nc for an assigned one (augment)
  double* dist;       // [nc] path lengths in scan order (augment)
  int* path;          // [nc] predecessor row on the shortest path
  int* mark;          // [nc] per-row match counts (column reduction)
  int* cols;          // [nc] argmin rows (column reduction), columns in scan order (augment)
  int* free_rows;     // [nr]

  const double* row(int i) const { return c + i * ld; }
};

#if defined(__SSE2__)
// Per 64-bit lane: mask ? a : b.
inline __m128i lane_select(__m128i mask, __m128i a, __m128i b) {
  return _mm_or_si128(_mm_and_si128(mask, a), _mm_andnot_si128(mask, b));
}
#endif

// The two cheapest columns of row ci under prices v. Tiny rows (from kLanesFrom columns) are scanned
// two columns at a time without branches: which column is cheapest is unpredictable, and a ?: on
// doubles compiles to a branch; below kLanesFrom merging the lanes costs more than it saves. Long
// rows take four lanes where the CPU has AVX2; on the baseline build their minima settle after a
// few columns and well-predicted branches beat a two-lane select chain.
#if defined(__SSE2__)
// The two cheapest of the first n & ~1 columns, scanned in two lanes (even and odd columns). Kept
// out of line: inlined, it crowds the registers of the plain loops around it.
__attribute__((noinline)) CheapestTwo cheapest_two_lanes(const double* ci, const double* v, int n) {
  __m128d lane_u1 = _mm_set1_pd(kInf), lane_u2 = lane_u1;
  __m128i lane_j1 = _mm_set1_epi64x(-1), lane_j2 = lane_j1, col = _mm_set_epi64x(1, 0);
  for (int j = 0; j + 2 <= n; j += 2) {
    const __m128d h = _mm_sub_pd(_mm_loadu_pd(ci + j), _mm_loadu_pd(v + j));
    const __m128i first = _mm_castpd_si128(_mm_cmplt_pd(h, lane_u1));
    const __m128i second = _mm_castpd_si128(_mm_cmplt_pd(h, lane_u2));
    lane_j2 = lane_select(first, lane_j1, lane_select(second, col, lane_j2));
    lane_j1 = lane_select(first, col, lane_j1);
    lane_u2 = _mm_min_pd(lane_u2, _mm_max_pd(lane_u1, h));  // h between u1 and u2, or u1 displaced
    lane_u1 = _mm_min_pd(lane_u1, h);
    col = _mm_add_epi64(col, _mm_set1_epi64x(2));
  }
  alignas(16) double u1[2], u2[2];
  alignas(16) int64_t j1[2], j2[2];
  _mm_store_pd(u1, lane_u1);
  _mm_store_pd(u2, lane_u2);
  _mm_store_si128(reinterpret_cast<__m128i*>(j1), lane_j1);
  _mm_store_si128(reinterpret_cast<__m128i*>(j2), lane_j2);
  return merge({u1[0], u2[0], j1[0], j2[0]}, {u1[1], u2[1], j1[1], j2[1]});
}
#endif

void cheapest_two(const double* ci, const double* v, int n, double& u1_out, int& j1_out, double& u2_out, int& j2_out) {
  CheapestTwo best;
  int j = 0;
#if PYFASTSEQ_AVX2
  if (n > kTiny && cpu_has_avx2_fma()) {
    best = pyfastseq_cheapest_two_avx2(ci, v, n);
    j = n & ~3;
  }
#endif
#if defined(__SSE2__)
  if (n >= kLanesFrom && n <= kTiny) {
    best = cheapest_two_lanes(ci, v, n);
    j = n & ~1;
  }
#endif
  // The rest one column at a time, in locals the compiler keeps in registers. A later column never
  // wins a tie, as the merge order requires.
  double u1 = best.u1, u2 = best.u2;
  int64_t j1 = best.j1, j2 = best.j2;
  if (n <= kTiny) {
    for (; j < n; ++j) {
      const double h = ci[j] - v[j];
      const bool first = h < u1, second = h < u2;
      u2 = first ? u1 : (second ? h : u2);
      j2 = first ? j1 : (second ? j : j2);
      u1 = first ? h : u1;
      j1 = first ? j : j1;
    }
  } else {
    for (; j < n; ++j) {
      const double h = ci[j] - v[j];
      if (h < u2) {
        if (h < u1) {
          u2 = u1, j2 = j1;
          u1 = h, j1 = j;
        } else {
          u2 = h, j2 = j;
        }
      }
    }
  }
  u1_out = u1, u2_out = u2;
  j1_out = static_cast<int>(j1), j2_out = static_cast<int>(j2);
}

// Column minima (into v, preset to +inf) and their first rows (into cols) of a tiny matrix. Which row
// holds a minimum is unpredictable, so the updates are selects rather than branches; the rows are
// kept as doubles in `d` (unused until the augmentation) so that one mask selects both.
void column_minima_tiny(Work& w) {
  const int n = w.nc;
  double* arg = w.d;
  std::fill(arg, arg + n, -1.0);
  for (int i = 0; i < w.nr; ++i) {
    const double* ci = w.row(i);
    int j = 0;
#if defined(__SSE2__)
    const __m128d row = _mm_set1_pd(i);
    for (; j + 2 <= n; j += 2) {
      const __m128d c = _mm_loadu_pd(ci + j), v = _mm_loadu_pd(w.v + j);
      const __m128d lower = _mm_cmplt_pd(c, v);
      _mm_storeu_pd(arg + j, _mm_or_pd(_mm_and_pd(lower, row), _mm_andnot_pd(lower, _mm_loadu_pd(arg + j))));
      _mm_storeu_pd(w.v + j, _mm_min_pd(c, v));
    }
#endif
    for (; j < n; ++j) {
      arg[j] = ci[j] < w.v[j] ? i : arg[j];
      w.v[j] = std::min(ci[j], w.v[j]);
    }
  }
  for (int j = 0; j < n; ++j) w.cols[j] = static_cast<int>(arg[j]);
}

// Square problems: each column's price is its minimum and the column goes to its argmin row when
// that row is still free; a row that got exactly one column transfers its slack to that column's
// price (reduction transfer). Returns the number of free rows, or -1 for a column of +inf only.
int column_reduction(Work& w) {
  const int n = w.nc;
  // Column minima and their first rows, scanned row by row for unit stride.
  std::fill(w.v, w.v + n, kInf);
  if (n <= kTiny) {
    column_minima_tiny(w);
  } else {
    std::fill(w.cols, w.cols + n, -1);
    for (int i = 0; i < w.nr; ++i) {
      const double* ci = w.row(i);
      for (int j = 0; j < n; ++j) {
        const bool lower = ci[j] < w.v[j];
        w.v[j] = lower ? ci[j] : w.v[j];
        w.cols[j] = lower ? i : w.cols[j];
      }
    }
  }
  // Whether a column's argmin row is still free is unpredictable: integer selects, no branches.
  std::fill(w.col4row, w.col4row + w.nr, -1);
  for (int j = n - 1; j >= 0; --j) {
    const int arg = w.cols[j];
    if (arg < 0) return -1;
    const bool first = w.col4row[arg] < 0;
    w.col4row[arg] = first ? j : w.col4row[arg];
    w.row4col[j] = first ? arg : -1;
    w.mark[arg] = first ? 1 : w.mark[arg] + 1;
  }
  int num_free = 0;
  for (int i = 0; i < w.nr; ++i) {
    w.free_rows[num_free] = i;
    num_free += w.col4row[i] < 0;
  }
  for (int i = 0; i < w.nr; ++i) {
    const int j1 = w.col4row[i];
    if (j1 < 0 || w.mark[i] != 1) continue;
    const double* ci = w.row(i);
    double slack = kInf;
    for (int j = 0; j < j1; ++j) slack = std::min(slack, ci[j] - w.v[j]);
    for (int j = j1 + 1; j < n; ++j) slack = std::min(slack, ci[j] - w.v[j]);
    if (slack < kInf) w.v[j1] = ci[j1] - slack;
  }
  return num_free;
}


// Augmenting row reduction: a free row takes its cheapest column and lowers that column's price to
// its second-cheapest, evicting the previous owner, which is then retried. Prices only fall and no
// column is ever released, so unassigned columns keep price 0 as the rectangular case needs.
int augmenting_row_reduction(Work& w, int num_free) {
  const int n = w.nc;
  int current = 0, new_free = 0;
  int64_t steps = 0;
  // Eviction chains can grow long on large problems; past a few steps per free row the
  // augmentation is cheaper, so the remaining rows go there.
  const int64_t max_steps = static_cast<int64_t>(num_free) * 8;
  while (current < num_free) {
    const int i = w.free_rows[current++];
    if (++steps > max_steps) {
      w.free_rows[new_free++] = i;
      continue;
    }
    const double* ci = w.row(i);
    double u1, u2;
    int j1, j2;
    cheapest_two(ci, w.v, n, u1, j1, u2, j2);
    if (u2 == kInf) {  // at most one finite cell: leave the row to the augmentation
      w.free_rows[new_free++] = i;
      continue;
    }
    int i0 = w.row4col[j1];
    const bool strict = u1 < u2;
    if (strict) {
      w.v[j1] -= u2 - u1;
    } else if (i0 >= 0) {
      j1 = j2;
      i0 = w.row4col[j2];
    }
    w.col4row[i] = j1;
    w.row4col[j1] = i;
    if (i0 >= 0) {
      w.col4row[i0] = -1;
      if (strict) w.free_rows[--current] = i0;
      else w.free_rows[new_free++] = i0;
    }
  }
  return new_free;
}

// One Dijkstra step: relaxes the columns through row i entered at distance h (see relax.h).
Nearest relax(const Work& w, int i, double h) {
#if PYFASTSEQ_AVX2
  if (cpu_has_avx2_fma()) return pyfastseq_relax_avx2(w.row(i), w.vm, w.key, h, w.d, w.path, i, w.nc);
#endif
  return relax_columns(w.row(i), w.vm, w.key, h, w.d, w.path, i, 0, w.nc, {kInf, kInf});
}

// Dijkstra from free row f over reduced costs c[i][j] - v[j] until the nearest column is free; then
// reprices the scanned columns and flips the path. Each step relaxes through the newly reached row
// in column order, so the row streams from memory, and finds the next column in the same pass.
// Returns false when no free column is reachable through finite cells (the problem is infeasible).
bool augment(Work& w, int f) {
  const int n = w.nc;
  std::copy(w.v, w.v + n, w.vm);
  std::fill(w.d, w.d + n, kInf);
  Nearest near = relax(w, f, 0.0);
  int scanned = 0, sink;
  for (;;) {
    if (near.d == kInf) return false;
    sink = static_cast<int>(near.key < n ? near.key : near.key - n);
    w.dist[scanned] = near.d;
    w.cols[scanned++] = sink;
    w.d[sink] = kInf;
    w.vm[sink] = -kInf;
    const int i = w.row4col[sink];
    if (i < 0) break;  // the nearest column is free: the path ends there
    near = relax(w, i, w.row(i)[sink] - w.v[sink] - near.d);
  }
  // Scanned columns before the sink get cheaper by how much closer than the sink they were.
  const double mind = w.dist[scanned - 1];
  for (int k = 0; k < scanned - 1; ++k) w.v[w.cols[k]] += w.dist[k] - mind;
  w.key[sink] = sink + n;
  for (int j = sink;;) {
    const int i = w.path[j];
    w.row4col[j] = i;
    std::swap(j, w.col4row[i]);
    if (i == f) break;
  }
  return true;
}

AssignStatus solve(Work& w) {
  std::fill(w.row4col, w.row4col + w.nc, -1);
  std::fill(w.v, w.v + w.nc, 0.0);
  int num_free;
  if (w.nr == w.nc) {
    num_free = column_reduction(w);
    if (num_free < 0) return kAssignInfeasible;
  } else {  // wide: prices start at 0, the value every unassigned column must keep
    std::fill(w.col4row, w.col4row + w.nr, -1);
    for (int i = 0; i < w.nr; ++i) w.free_rows[i] = i;
    num_free = w.nr;
  }
  for (int pass = 0; pass < 2 && num_free > 0; ++pass) num_free = augmenting_row_reduction(w, num_free);
  if (num_free == 0) return kAssignOk;
  for (int j = 0; j < w.nc; ++j) w.key[j] = w.row4col[j] < 0 ? j : j + w.nc;
  for (int k = 0; k < num_free; ++k)
    if (!augment(w, w.free_rows[k])) return kAssignInfeasible;
  return kAssignOk;
}

#if defined(__SSE2__)
// The running maximum of `peak` and the finite magnitudes among x's two lanes (NaN and inf add 0).
inline __m128d max_finite_magnitude(__m128d peak, __m128d x) {
  const __m128d magnitude = _mm_andnot_pd(_mm_set1_pd(-0.0), x);
  return _mm_max_pd(peak, _mm_and_pd(magnitude, _mm_cmplt_pd(magnitude, _mm_set1_pd(kInf))));
}

inline double horizontal_max(__m128d x) { return std::max(_mm_cvtsd_f64(x), _mm_cvtsd_f64(_mm_unpackhi_pd(x, x))); }
#endif

inline double max_finite_magnitude(double peak, double x) {
  const double magnitude = std::fabs(x);
  return magnitude < kInf && magnitude > peak ? magnitude : peak;
}

// Copies scale * src [nr, nc] (strides rs, cs) into dst, row-major; false when a product is NaN or
// -inf. Raises `peak` to the largest finite magnitude copied where that is kOrdinary or more (below,
// cost_scale is 1 for any problem size, so `peak` is left as it is).
bool load(const double* src, int64_t nr, int64_t nc, int64_t rs, int64_t cs, double scale, double* dst, double& peak) {
  // The copy checks each product against +-kOrdinary, so most of the copies, tiny problems, pay
  // one more compare per pair of columns; a copy with any product outside is checked again exactly.
  constexpr double kOrdinary = 0x1p988;  // * 8 * (nr + nc) <= 2^1023: no overflow for any size
  bool ordinary = true;
#if defined(__SSE2__)
  __m128d inside = _mm_castsi128_pd(_mm_set1_epi64x(-1));
  const __m128d above = _mm_set1_pd(-kOrdinary), below = _mm_set1_pd(kOrdinary), by = _mm_set1_pd(scale);
#endif
  for (int64_t i = 0; i < nr; ++i) {
    const double* row = src + i * rs;
    int64_t j = 0;
#if defined(__SSE2__)
    if (cs == 1) {  // the common layout: two columns per instruction
      for (; j + 2 <= nc; j += 2) {
        const __m128d x = _mm_mul_pd(by, _mm_loadu_pd(row + j));
        inside = _mm_and_pd(inside, _mm_and_pd(_mm_cmpgt_pd(x, above), _mm_cmplt_pd(x, below)));
        _mm_storeu_pd(dst + i * nc + j, x);
      }
    }
#endif
    for (; j < nc; ++j) {
      const double x = scale * row[j * cs];
      ordinary &= x > -kOrdinary && x < kOrdinary;  // false for NaN too
      dst[i * nc + j] = x;
    }
  }
#if defined(__SSE2__)
  ordinary &= _mm_movemask_pd(inside) == 3;
#endif
  if (ordinary) return true;
  bool valid = true;
  for (int64_t k = 0; k < nr * nc; ++k) {
    valid &= dst[k] > -kInf;  // false for NaN and -inf alone
    peak = max_finite_magnitude(peak, dst[k]);
  }
  return valid;
}

// Whether no entry of src [nr, nc] (row stride rs, unit column stride) is NaN or -inf; raises `peak`
// to the largest finite magnitude. A pass over the whole matrix, so it runs at memory speed: four
// columns per instruction with AVX2, else two, no branch per entry.
bool all_valid(const double* src, int64_t nr, int64_t nc, int64_t rs, double& peak) {
  bool valid = true;
  int64_t body = 0;  // columns the vector pass checks
#if PYFASTSEQ_AVX2
  if (cpu_has_avx2_fma()) {  // four columns per instruction: the extra work for the peak stays hidden
    body = nc & ~int64_t{3};
    valid = pyfastseq_check_costs_avx2(src, nr, nc, rs, &peak);
  }
#endif
#if defined(__SSE2__)
  if (body == 0) {
    body = nc & ~int64_t{1};
    __m128d above = _mm_castsi128_pd(_mm_set1_epi64x(-1)), peaks = _mm_set1_pd(peak);
    const __m128d neg_inf = _mm_set1_pd(-kInf);
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < body; j += 2) {
        const __m128d x = _mm_loadu_pd(src + i * rs + j);
        above = _mm_and_pd(above, _mm_cmpgt_pd(x, neg_inf));
        peaks = max_finite_magnitude(peaks, x);
      }
    }
    valid = _mm_movemask_pd(above) == 3;
    peak = horizontal_max(peaks);
  }
#endif
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = body; j < nc; ++j) {
      const double x = src[i * rs + j];
      valid &= x > -kInf;  // false for NaN and -inf alone
      peak = max_finite_magnitude(peak, x);
    }
  }
  return valid;
}

AssignStatus solve_one(const AssignParams& p, int64_t b, int64_t* col_of_row) {
  const int64_t m = p.row_lens ? p.row_lens[b] : p.rows;
  const int64_t n = p.col_lens ? p.col_lens[b] : p.cols;
  std::fill(col_of_row, col_of_row + p.rows, -1);
  if (m == 0 || n == 0) return kAssignOk;
  const bool transpose = n < m;
  const int nr = static_cast<int>(transpose ? n : m), nc = static_cast<int>(transpose ? m : n);

  const double* src = p.cost + b * p.batch_stride;
  const int64_t rs = transpose ? p.col_stride : p.row_stride, cs = transpose ? p.row_stride : p.col_stride;
  // A large minimising problem with unit column stride is solved where it lies (a copy would cost
  // as much as the whole solve of a wide problem); tiny ones are copied next to their state.
  bool in_place = nc > kTiny && !p.maximize && cs == 1;
  int64_t copy_size = in_place ? 0 : static_cast<int64_t>(nr) * nc;

  double stack_doubles[kTiny * kTiny + 5 * kTiny];
  int stack_ints[4 * kTiny + 2 * kTiny];
  double* doubles = stack_doubles;
  int* ints = stack_ints;
  std::unique_ptr<double[]> heap_doubles;  // left uninitialised: every entry is written before use
  std::unique_ptr<int[]> heap_ints;
  if (nc > kTiny) {
    heap_doubles.reset(new double[copy_size + 5 * static_cast<int64_t>(nc)]);
    heap_ints.reset(new int[4 * static_cast<size_t>(nc) + 2 * static_cast<size_t>(nr)]);
    doubles = heap_doubles.get();
    ints = heap_ints.get();
  }
  const double sign = p.maximize ? -1.0 : 1.0;
  double peak = 0;
  const bool valid = in_place ? all_valid(src, nr, nc, rs, peak) : load(src, nr, nc, rs, cs, sign, doubles, peak);
  if (!valid) return kAssignInvalid;
  const double scale = cost_scale(peak, nr, nc);
  if (scale != 1.0) {  // costs near DBL_MAX: solved on a scaled copy
    if (in_place) {
      in_place = false;
      copy_size = static_cast<int64_t>(nr) * nc;
      heap_doubles.reset(new double[copy_size + 5 * static_cast<int64_t>(nc)]);
      doubles = heap_doubles.get();
    }
    load(src, nr, nc, rs, cs, sign * scale, doubles, peak);
  }
  Work w;
  w.c = in_place ? src : doubles;
  w.ld = in_place ? rs : nc;
  w.nr = nr;
  w.nc = nc;
  w.v = doubles + copy_size;
  w.d = w.v + nc;
  w.vm = w.d + nc;
  w.key = w.vm + nc;
  w.dist = w.key + nc;
  w.row4col = ints;
  w.path = ints + nc;
  w.mark = ints + 2 * nc;
  w.cols = ints + 3 * nc;
  w.col4row = ints + 4 * nc;
  w.free_rows = w.col4row + nr;
  const AssignStatus status = solve(w);
  if (status != kAssignOk) return status;
  for (int i = 0; i < nr; ++i) {
    if (transpose) col_of_row[w.col4row[i]] = i;
    else col_of_row[i] = w.col4row[i];
  }
  return kAssignOk;
}

}  // namespace

int64_t run_assign_cpu(const AssignParams& p) {
  if (p.batch == 1) {  // no thread team for a single matrix
    p.status[0] = solve_one(p, 0, p.col_of_row);
    return p.status[0] != kAssignOk;
  }
  // Problems differ in cost (augmenting paths vary); small chunks keep both threads busy.
  const int64_t work = std::max<int64_t>(1, p.rows * p.cols);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / work);
  parallel_for_dynamic(p.batch, work, grain, [&](int64_t b) {
    p.status[b] = solve_one(p, b, p.col_of_row + b * p.rows);
  });
  int64_t failed = 0;
  for (int64_t b = 0; b < p.batch; ++b) failed += p.status[b] != kAssignOk;
  return failed;
}

}  // namespace pyfastseq
