// The row scans that dominate the solver's time (assign.cpp), as baseline code: the relaxation
// pass of the augmentation's Dijkstra and the two cheapest columns of a row. row_scans_avx2.cpp
// has their AVX2 builds.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace pyfastseq {

// The cheapest (u1 at j1) and second cheapest (u2 at j2) column of a row; j = -1 (u = +inf) while
// unset.
struct CheapestTwo {
  double u1 = std::numeric_limits<double>::infinity(), u2 = u1;
  int64_t j1 = -1, j2 = -1;
};

// take_a ? a : b, by masks: a ?: on doubles compiles to a branch.
inline int64_t pick(bool take_a, int64_t a, int64_t b) {
  const int64_t mask = -static_cast<int64_t>(take_a);
  return (a & mask) | (b & ~mask);
}
inline double pick(bool take_a, double a, double b) {
  int64_t x, y;
  std::memcpy(&x, &a, sizeof x);
  std::memcpy(&y, &b, sizeof y);
  x = pick(take_a, x, y);
  std::memcpy(&a, &x, sizeof a);
  return a;
}

// (u, j) goes before (w, k): cheaper, or as cheap at a lower column.
inline bool before(double u, int64_t j, double w, int64_t k) { return (u < w) | ((u == w) & (j < k)); }

// The two cheapest of two disjoint column sets' two cheapest each.
inline CheapestTwo merge(const CheapestTwo& a, const CheapestTwo& b) {
  const bool a_first = before(a.u1, a.j1, b.u1, b.j1);
  CheapestTwo out;
  out.u1 = pick(a_first, a.u1, b.u1);
  out.j1 = pick(a_first, a.j1, b.j1);
  // The second is the other set's cheapest or the first's own second.
  const double other = pick(a_first, b.u1, a.u1), own = pick(a_first, a.u2, b.u2);
  const int64_t j_other = pick(a_first, b.j1, a.j1), j_own = pick(a_first, a.j2, b.j2);
  const bool other_first = before(other, j_other, own, j_own);
  out.u2 = pick(other_first, other, own);
  out.j2 = pick(other_first, j_other, j_own);
  return out;
}

// A column by its distance and its key: j for a free column, j + cols for an assigned one. The
// nearest is the lowest (d, key), so a free column wins a tie and ends the search at once.
struct Nearest {
  double d;
  double key;
};

inline bool nearer(double d, double key, const Nearest& than) {
  return d < than.d || (d == than.d && key < than.key);
}

// Columns [from, n) of the pass: d[j] = min(d[j], ci[j] - vm[j] - h), path[j] = i where it falls,
// and the nearest of them and `best`. Scanned columns carry vm = -inf and d = +inf, so they neither
// fall (+inf < +inf is false) nor win, and the loop needs no flag test.
inline Nearest relax_columns(const double* ci, const double* vm, const double* key, double h, double* d,
                             int* path, int i, int from, int n, Nearest best) {
  for (int j = from; j < n; ++j) {
    const double dj = ci[j] - vm[j] - h;
    if (dj < d[j]) d[j] = dj, path[j] = i;
    if (nearer(d[j], key[j], best)) best = {d[j], key[j]};
  }
  return best;
}

}  // namespace pyfastseq
