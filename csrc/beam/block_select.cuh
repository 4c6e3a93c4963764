// Block-wide selections for the beam step (beam_step.cu): the best k of a row's or a batch item's
// items by order-preserving float keys. A radix select (four 8-bit digit histograms) and a bitonic
// sort of the winners for any k up to 2048; bounded variants that first find a key at or below the
// k-th best (from each thread's best few keys) and select among the items at or above it, staged in
// shared memory. Included by beam_step.cu alone.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace pyfastseq {
namespace beam_kernels {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSlots = 2048;  // num_candidates <= 2 * 1024 beams

// Keys that order like the floats (-0 as +0: equal values tie); 0 is reserved for "not a
// candidate" (no float maps to it).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

constexpr int kStaged = 1024;  // bounded selections: items that pass the bound, kept for the selection

struct TopShared {
  uint32_t key[kMaxSlots];
  int64_t secondary[kMaxSlots];
  int32_t item[kMaxSlots];
  int32_t hist[256];
  int32_t lane_count[32];
  uint32_t staged_key[kStaged];
  int32_t staged_item[kStaged];
  uint32_t thread_max[kThreads];
  int32_t deep[kThreads];  // sorted_lists_top: the lists read past their heads
  int32_t deep_count;
  uint32_t bound;
  int32_t staged;
  int32_t included[kWarps];
  int32_t digit, remaining, equal, greater;
  uint32_t max_key;
  float s[kWarps];
  double ds[kWarps];
  int32_t flag, bad_token;
};

// A block-wide sum (all threads get the result). The warps' sums are added in warp order, never
// in the order the warps happen to finish, so that a row gets the same normaliser on every run and
// equal rows at the same 16-byte alignment get bit-equal ones (ties between them stay ties). How a
// row's columns are shared out depends on its alignment (RowSplit), as in torch's softmax kernels.
template <class T>
__device__ T block_sum(T v, T* warp_sums) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  T total = warp_sums[0];
  for (int w = 1; w < kWarps; ++w) total += warp_sums[w];
  __syncthreads();
  return total;
}

// hist[bin] += 1, one shared atomic per distinct bin in the warp: logits of a row mostly share
// their top key byte, so plain atomics would serialise on one bin.
__device__ __forceinline__ void count_bin(int32_t* hist, uint32_t bin) {
  namespace cg = cooperative_groups;
  const cg::coalesced_group same = cg::labeled_partition(cg::coalesced_threads(), bin);
  if (same.thread_rank() == 0) atomicAdd(&hist[bin], static_cast<int32_t>(same.size()));
}

// Bits that hold every value below n.
__device__ __forceinline__ int bits_below(int64_t n) { return 64 - __clzll(static_cast<unsigned long long>(n)); }

__device__ __forceinline__ float from_order_key(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// The block-wide max of finite-or-infinite floats (all threads get it), through order-preserving keys.
__device__ float block_max(float v, TopShared& sh) {
  uint32_t key = order_key(v);
  for (int o = 16; o > 0; o >>= 1) key = max(key, __shfl_xor_sync(0xffffffffu, key, o));
  if (threadIdx.x == 0) sh.max_key = 0;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) atomicMax(&sh.max_key, key);
  __syncthreads();
  const uint32_t top = sh.max_key;
  __syncthreads();
  return from_order_key(top);
}

// The radix selections' digit searches over sh.hist, by the first warp: lane l sums bins
// [8l, 8l + 8), a ballot finds the lane where the running count reaches the target, and that lane
// scans its eight bins (a single thread scanning all 256 would take most of a selection's time).
constexpr int kBinsPerLane = 256 / 32;

// Lane `lane`'s bins summed, also left in sh.lane_count for the other lanes of the first warp.
__device__ int32_t lane_bins(int lane, TopShared& sh) {
  int32_t own = 0;
  for (int j = 0; j < kBinsPerLane; ++j) own += sh.hist[kBinsPerLane * lane + j];
  sh.lane_count[lane] = own;
  __syncwarp();
  return own;
}

// The largest digit d whose bins d..255 hold at least `remaining` items (0 if none): sh.digit, with
// sh.remaining = remaining less the items above d, and sh.equal = the items at d.
__device__ void digit_from_top(int32_t remaining, TopShared& sh) {
  const int lane = threadIdx.x;
  if (lane >= 32) return;
  const int32_t own = lane_bins(lane, sh);
  int32_t above = 0;  // items in the lanes above this one
  for (int m = lane + 1; m < 32; ++m) above += sh.lane_count[m];
  const unsigned reached = __ballot_sync(0xffffffffu, above + own >= remaining);
  if (lane != (reached ? 31 - __clz(reached) : 0)) return;
  int32_t d = kBinsPerLane * lane + kBinsPerLane - 1;
  for (; d > kBinsPerLane * lane; --d) {
    if (above + sh.hist[d] >= remaining) break;
    above += sh.hist[d];
  }
  sh.digit = d;
  sh.remaining = remaining - above;
  sh.equal = sh.hist[d];
}

// The smallest digit d whose bins 0..d hold at least `need` items (255 if none): sh.digit, with
// sh.remaining = need less the items below d.
__device__ void digit_from_bottom(int32_t need, TopShared& sh) {
  const int lane = threadIdx.x;
  if (lane >= 32) return;
  const int32_t own = lane_bins(lane, sh);
  int32_t below = 0;  // items in the lanes below this one
  for (int m = 0; m < lane; ++m) below += sh.lane_count[m];
  const unsigned reached = __ballot_sync(0xffffffffu, below + own >= need);
  if (lane != (reached ? __ffs(reached) - 1 : 31)) return;
  int32_t d = kBinsPerLane * lane;
  for (; d < kBinsPerLane * lane + kBinsPerLane - 1; ++d) {
    if (below + sh.hist[d] >= need) break;
    below += sh.hist[d];
  }
  sh.digit = d;
  sh.remaining = need - below;
}

// Radix select of the k-th largest key T of `items` (key 0: excluded), k = min(want, included), one
// 8-bit digit at a time from the top: *threshold = T, and `remaining` items with key T complete the
// k, out of `equal` such items. The first histogram also counts the items, which bounds k. Every
// thread of the block must call it; returns k (0: no item, and nothing else is set).
template <class Items>
__device__ int32_t kth_key(const Items& items, int32_t n, int32_t want, TopShared& sh, uint32_t* threshold,
                           int32_t* remaining, int32_t* equal) {
  const int tid = threadIdx.x;
  uint32_t prefix = 0, mask = 0;
  int32_t k = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int j = tid; j < 256; j += kThreads) sh.hist[j] = 0;
    __syncthreads();
    for (int32_t i = tid; i < n; i += kThreads) {
      const uint32_t key = items.key(i);
      if (key != 0 && (key & mask) == prefix) count_bin(sh.hist, (key >> shift) & 255u);
    }
    __syncthreads();
    if (shift == 24) {
      int32_t local = 0;
      for (int j = tid; j < 256; j += kThreads) local += sh.hist[j];
      k = *remaining = min(want, block_sum(local, sh.included));
      if (k == 0) return 0;
    }
    digit_from_top(*remaining, sh);
    __syncthreads();
    prefix |= static_cast<uint32_t>(sh.digit) << shift;
    mask |= 255u << shift;
    *remaining = sh.remaining;
    *equal = sh.equal;
    __syncthreads();
  }
  *threshold = prefix;
  return k;
}

// The best min(want, included) items of `items` (key 0: excluded) into sh.item[0..k), best first:
// key down, then secondary up (unique per item, below 2^secondary_bits). Every thread of the block
// must call it; returns k.
template <class Items>
__device__ int32_t block_top(const Items& items, int32_t n, int32_t want, int secondary_bits, TopShared& sh) {
  const int tid = threadIdx.x;
  uint32_t threshold = 0;
  int32_t remaining = 0, equal = 0;
  const int32_t k = kth_key(items, n, want, sh, &threshold, &remaining, &equal);
  if (k == 0) return 0;

  // Where T is tied beyond the k, the tied items with the `remaining` smallest secondaries: the
  // same radix select on the secondary, from the bottom.
  uint64_t last = UINT64_MAX;  // largest secondary taken among key T
  if (equal > remaining) {
    uint64_t sprefix = 0, smask = 0;
    int32_t need = remaining;
    for (int shift = (secondary_bits + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
      for (int j = tid; j < 256; j += kThreads) sh.hist[j] = 0;
      __syncthreads();
      for (int32_t i = tid; i < n; i += kThreads) {
        if (items.key(i) != threshold) continue;
        const uint64_t sec = static_cast<uint64_t>(items.secondary(i));
        if ((sec & smask) == sprefix) count_bin(sh.hist, static_cast<uint32_t>(sec >> shift) & 255u);
      }
      __syncthreads();
      digit_from_bottom(need, sh);
      __syncthreads();
      sprefix |= static_cast<uint64_t>(sh.digit) << shift;
      smask |= uint64_t{255} << shift;
      need = sh.remaining;
      __syncthreads();
    }
    last = sprefix;
  }

  // Gather the k winners (any order: sorted below).
  if (tid == 0) sh.greater = 0;
  __syncthreads();
  for (int32_t i = tid; i < n; i += kThreads) {
    const uint32_t key = items.key(i);
    if (key < threshold) continue;
    const int64_t sec = items.secondary(i);
    if (key == threshold && static_cast<uint64_t>(sec) > last) continue;
    const int32_t slot = atomicAdd(&sh.greater, 1);
    sh.key[slot] = key;
    sh.secondary[slot] = sec;
    sh.item[slot] = i;
  }
  __syncthreads();

  // Bitonic sort of the k winners (padded to a power of two) by key down, secondary up.
  int32_t size = 1;
  while (size < k) size <<= 1;
  for (int32_t i = k + tid; i < size; i += kThreads) {
    sh.key[i] = 0;
    sh.secondary[i] = INT64_MAX;
    sh.item[i] = -1;
  }
  __syncthreads();
  for (int32_t run = 2; run <= size; run <<= 1) {
    for (int32_t stride = run >> 1; stride > 0; stride >>= 1) {
      for (int32_t t = tid; t < size / 2; t += kThreads) {
        const int32_t i = 2 * stride * (t / stride) + t % stride, j = i + stride;
        const bool j_first = sh.key[j] > sh.key[i] || (sh.key[j] == sh.key[i] && sh.secondary[j] < sh.secondary[i]);
        if (j_first == ((i & run) == 0)) {
          const uint32_t kk = sh.key[i];
          sh.key[i] = sh.key[j];
          sh.key[j] = kk;
          const int64_t ss = sh.secondary[i];
          sh.secondary[i] = sh.secondary[j];
          sh.secondary[j] = ss;
          const int32_t it = sh.item[i];
          sh.item[i] = sh.item[j];
          sh.item[j] = it;
        }
      }
      __syncthreads();
    }
  }
  return k;
}

constexpr int kKept = 8;

// A thread's best kKept items of its share of a row (order key, column), best first, gathered
// while the normaliser pass reads them; key 0 marks an empty place. Whatever the thread did not
// keep ranks at or below its last kept key.
struct ThreadTop {
  uint32_t key[kKept] = {};
  int32_t column[kKept] = {};
  __device__ __forceinline__ void offer(uint32_t k, int32_t t) {
    if (k <= key[kKept - 1]) return;
    key[kKept - 1] = k;
    column[kKept - 1] = t;
#pragma unroll
    for (int j = kKept - 1; j > 0; --j) {  // static indices: the arrays stay in registers
      if (key[j] <= key[j - 1]) break;
      const uint32_t kk = key[j];
      key[j] = key[j - 1];
      key[j - 1] = kk;
      const int32_t tt = column[j];
      column[j] = column[j - 1];
      column[j - 1] = tt;
    }
  }
};

// Items staged in shared memory: their keys, and their indices into the items they came from.
template <class Items>
struct StagedItems {
  const uint32_t* keys;
  const int32_t* index;
  const Items& from;
  __device__ uint32_t key(int32_t j) const { return keys[j]; }
  __device__ int64_t secondary(int32_t j) const { return from.secondary(index[j]); }
};

// A lower bound on the need-th best key of a block's items, from each thread's largest key
// (`mine`, 0 for none) over any partition of them: the need-th largest of those maxima is reached
// by `need` distinct items. 0 when there is none (need > kThreads, or fewer threads saw an item).
// Also empties the staging area. Every thread of the block must call it.
__device__ uint32_t selection_bound(uint32_t mine, int32_t need, TopShared& sh) {
  const int tid = threadIdx.x;
  if (need > kThreads) return 0;
  sh.thread_max[tid] = mine;
  if (tid == 0) {
    sh.bound = 0;
    sh.staged = 0;
  }
  __syncthreads();
  int32_t rank = 0;  // a strict order of the maxima: rank is a permutation of 0..kThreads-1
  for (int j = 0; j < kThreads; ++j) {
    const uint32_t other = sh.thread_max[j];
    rank += other > mine || (other == mine && j < tid);
  }
  if (rank == need - 1) sh.bound = mine;
  __syncthreads();
  return sh.bound;
}

// One shared atomic per group of threads staging together: a warp's items often all pass the bound
// (every child of a small node does), and 32 atomics on one counter would serialise.
__device__ __forceinline__ void stage(uint32_t key, int32_t item, TopShared& sh) {
  namespace cg = cooperative_groups;
  const cg::coalesced_group together = cg::coalesced_threads();
  int32_t first = 0;
  if (together.thread_rank() == 0) first = atomicAdd(&sh.staged, static_cast<int32_t>(together.size()));
  const int32_t slot = together.shfl(first, 0) + static_cast<int32_t>(together.thread_rank());
  if (slot < kStaged) {
    sh.staged_key[slot] = key;
    sh.staged_item[slot] = item;
  }
}

// Up to this many staged items are selected by ranked_top: its n^2 / 32 cycles or so per block
// stay under the ~50 barriers of a radix select and a bitonic sort.
constexpr int32_t kRanked = 320;

// The best min(want, n) of n <= kRanked staged items (keys all nonzero, secondaries unique) into
// sh.item[0..k), best first (key down, then secondary up): each item counts the items that rank
// before it, which is its place. Every thread of the block must call it.
template <class Items>
__device__ int32_t ranked_top(const StagedItems<Items>& items, int32_t n, int32_t want, TopShared& sh) {
  for (int32_t j = threadIdx.x; j < n; j += kThreads) {
    sh.key[j] = items.key(j);
    sh.secondary[j] = items.secondary(j);
  }
  __syncthreads();
  const int32_t k = min(want, n);
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const uint32_t key = sh.key[i];
    const int64_t secondary = sh.secondary[i];
    int32_t before = 0;
    for (int32_t j = 0; j < n; ++j) {  // every lane reads the same j: a broadcast, no bank conflicts
      const uint32_t other = sh.key[j];
      before += other > key || (other == key && sh.secondary[j] < secondary);
    }
    if (before < k) sh.item[before] = i;
  }
  __syncthreads();
  return k;
}

// After every item at or above `bound` was staged: the selection on those in shared memory, or,
// without a bound or with too many of them (ties), on the items themselves.
template <class Items>
__device__ int32_t staged_top(const Items& items, int32_t n, int32_t want, int secondary_bits, uint32_t bound,
                              TopShared& sh) {
  __syncthreads();
  const int32_t staged = sh.staged;
  __syncthreads();
  if (bound != 0 && staged <= kStaged) {
    const StagedItems<Items> on_chip{sh.staged_key, sh.staged_item, items};
    const int32_t k = staged <= kRanked ? ranked_top(on_chip, staged, want, sh)
                                        : block_top(on_chip, staged, want, secondary_bits, sh);
    for (int32_t t = threadIdx.x; t < k; t += kThreads) sh.item[t] = sh.staged_item[sh.item[t]];
    __syncthreads();
    return k;
  }
  return block_top(items, n, want, secondary_bits, sh);
}

// Keys a thread loads before using any in for_each_key.
constexpr int kKeyLoads = 4;

// Calls fn(key, i) for this thread's items (i = threadIdx.x, + kThreads, ...) in order, kKeyLoads
// keys loaded before any is used: an item's key costs one or two loads from global memory, and a
// loop that waited for each in turn would take a memory latency per item (a batch item's merge
// runs over num_beams x 2 num_beams of them in one block).
template <class Items, class Fn>
__device__ __forceinline__ void for_each_key(const Items& items, int32_t n, Fn&& fn) {
  for (int32_t i = threadIdx.x; i < n; i += kKeyLoads * kThreads) {
    uint32_t key[kKeyLoads];
#pragma unroll
    for (int u = 0; u < kKeyLoads; ++u) key[u] = i + u * kThreads < n ? items.key(i + u * kThreads) : 0u;
#pragma unroll
    for (int u = 0; u < kKeyLoads; ++u)
      if (i + u * kThreads < n) fn(key[u], i + u * kThreads);
  }
}

// The kept keys per thread that a selection wider than the block stages for its bound: the first
// ones, so that every thread's fit the staging area.
constexpr int kKeptStaged = kStaged / kThreads;
static_assert(kKeptStaged <= kKept, "a thread stages only keys it kept");

// The widest selection kept_bound bounds: nearer all of the staged keys, most threads would read
// their share again and the items at or above the bound would overflow the staging area, so radix
// passes over the items cost less.
constexpr int32_t kMaxKeptNeed = kThreads * kKeptStaged * 3 / 4;

struct StagedKeys {
  const uint32_t* keys;
  __device__ uint32_t key(int32_t j) const { return keys[j]; }
};

// The need-th largest of the nonzero keys the block's threads pass in (distinct items), by a radix
// select over them staged in shared memory; `fewer` when they are fewer than need. Leaves the
// staging area empty. Every thread of the block must call it.
template <int N>
__device__ uint32_t kth_staged_key(const uint32_t (&keys)[N], int32_t need, uint32_t fewer, TopShared& sh) {
  if (threadIdx.x == 0) sh.staged = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j)
    if (keys[j] != 0) stage(keys[j], 0, sh);
  __syncthreads();
  const int32_t held = sh.staged;
  __syncthreads();  // read by every thread before it is reset below
  uint32_t bound = fewer;
  int32_t remaining = 0, equal = 0;
  if (held >= need) kth_key(StagedKeys{sh.staged_key}, held, need, sh, &bound, &remaining, &equal);
  if (threadIdx.x == 0) sh.staged = 0;
  __syncthreads();
  return bound;
}

// selection_bound from every thread's ThreadTop (keys mapped by final_key). Up to kThreads from
// the threads' best keys; wider selections (beam widths 129-384) from the need-th largest of the
// threads' first kKeptStaged kept keys, which are distinct items too, by a radix select over them
// staged in shared memory. 0 when there is none. Empties the staging area when it returns a bound.
// Every thread of the block must call it.
template <class FinalKey>
__device__ uint32_t kept_bound(const ThreadTop& top, FinalKey final_key, int32_t need, TopShared& sh) {
  if (need <= kThreads) return selection_bound(top.key[0] ? final_key(top.key[0]) : 0u, need, sh);
  if (need > kMaxKeptNeed) return 0;
  uint32_t keys[kKeptStaged];
#pragma unroll
  for (int j = 0; j < kKeptStaged; ++j) keys[j] = top.key[j] ? final_key(top.key[j]) : 0u;
  return kth_staged_key(keys, need, 0u, sh);
}

// After kept_bound gave `bound` (not 0): stages this thread's items at or above it, its kept ones,
// or, when its last kept one is there too (it may have dropped more), all of its items again
// through `reread`.
template <class FinalKey, class Reread>
__device__ void stage_kept(const ThreadTop& top, FinalKey final_key, uint32_t bound, TopShared& sh, Reread&& reread) {
  if (top.key[kKept - 1] != 0 && final_key(top.key[kKept - 1]) >= bound) {
    reread();
    return;
  }
#pragma unroll
  for (int j = 0; j < kKept; ++j)
    if (top.key[j] != 0 && final_key(top.key[j]) >= bound) stage(final_key(top.key[j]), top.column[j], sh);
}

// block_top reading each item's key once, or in a few threads twice, instead of at every radix
// digit: up to kStaged items are all staged in shared memory and selected there; with more, each
// thread keeps its best few keys as it reads its items, those give the selection a bound
// (kept_bound), and the items at or above it (usually a few hundred) are staged and selected.
template <class Items>
__device__ int32_t bounded_top(const Items& items, int32_t n, int32_t want, int secondary_bits, TopShared& sh) {
  const auto same = [](uint32_t key) { return key; };
  const auto stage_from_bound = [&](uint32_t bound) {
    for_each_key(items, n, [&](uint32_t key, int32_t i) {
      if (key >= bound) stage(key, i, sh);
    });
  };
  if (n <= kStaged) {
    if (threadIdx.x == 0) sh.staged = 0;
    __syncthreads();
    stage_from_bound(1);  // every item with a key
    return staged_top(items, n, want, secondary_bits, 1, sh);
  }
  if (want > kMaxKeptNeed) return block_top(items, n, want, secondary_bits, sh);
  ThreadTop top;
  for_each_key(items, n, [&](uint32_t key, int32_t i) {
    if (key > top.key[kKept - 1]) top.offer(key, i);
  });
  const uint32_t bound = kept_bound(top, same, want, sh);
  if (bound != 0) stage_kept(top, same, bound, sh, [&] { stage_from_bound(bound); });
  return staged_top(items, n, want, secondary_bits, bound, sh);
}

}  // namespace beam_kernels
}  // namespace pyfastseq
