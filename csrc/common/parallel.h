// A parallel loop over [0, n) that runs serially when the work is too small to pay for threads.
#pragma once
#include <cstdint>

namespace pyfastseq {

template <class Body>
void parallel_for(int64_t n, int64_t work_per_item, Body body) {
  const bool parallel = n > 1 && n * work_per_item >= (int64_t{1} << 17);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < n; ++i) body(i);
#else
  (void)parallel;
  for (int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace pyfastseq

namespace pyfastseq {

// parallel_for for items of uneven cost: threads claim `grain` items at a time, so a slow item
// (or a preempted thread) does not leave the other threads idle.
template <class Body>
void parallel_for_dynamic(int64_t n, int64_t work_per_item, int64_t grain, Body body) {
  const bool parallel = n > 1 && n * work_per_item >= (int64_t{1} << 17);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, grain) if (parallel)
  for (int64_t i = 0; i < n; ++i) body(i);
#else
  (void)parallel;
  (void)grain;
  for (int64_t i = 0; i < n; ++i) body(i);
#endif
}

}  // namespace pyfastseq
