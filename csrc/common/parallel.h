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
