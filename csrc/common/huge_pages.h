// Transparent huge pages for large outputs that are written right after they are allocated.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyfastseq {

// Asks Linux to back the 2 MB-aligned interior of [begin, begin + bytes) with huge pages when it
// first touches them. A fresh output of tens of MB (an [N, V] logits tensor each step) comes from
// its own mmap, and faulting it in 4 kB pages costs several times the writes themselves; with
// `transparent_hugepage` set to "madvise" (the usual default) only advised memory gets 2 MB pages.
// Advice only: where it is refused, or the pages are already there, nothing changes.
inline void advise_huge_pages(void* begin, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t first = reinterpret_cast<uintptr_t>(begin);
  const uintptr_t lo = (first + kHuge - 1) & ~(kHuge - 1), hi = (first + bytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)begin;
  (void)bytes;
#endif
}

}  // namespace pyfastseq
