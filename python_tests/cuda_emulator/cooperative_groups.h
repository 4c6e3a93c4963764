// The cooperative groups the kernels use, for the CPU emulator (emulator.h). coalesced_threads() is
// the calling thread alone: on a GPU with independent thread scheduling that is one of the groups it
// may return, so a kernel must already be correct with it.
#pragma once

namespace cooperative_groups {

struct coalesced_group {
  unsigned thread_rank() const { return 0; }
  unsigned size() const { return 1; }
  template <class T>
  T shfl(T value, unsigned) const { return value; }
};

inline coalesced_group coalesced_threads() { return {}; }

template <class Label>
coalesced_group labeled_partition(const coalesced_group& group, Label) {
  return group;
}

}  // namespace cooperative_groups
