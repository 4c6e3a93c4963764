// CUDA beam step: the same candidates as run_beam_step_cpu, in one launch and no host sync.
//
// 1. One block per row: the log-softmax normaliser in one online (max, sum-exp) pass over the row
//    (skipped under normalize_allowed, which reads only the children), then the row's best
//    num_candidates tokens: the whole vocabulary (unconstrained) or the trie node's children,
//    gathered through the CSR arrays, reshaped by the row's lookahead deltas if it has any.
//    Selection is a radix select on order-preserving float keys (four 8-bit digit histograms)
//    followed by a bitonic sort of the at most 2048 winners, so any beam width up to 1024 takes the
//    same path. Dense rows (beam widths up to 128) are read once: while the normaliser pass reads
//    them each thread keeps its best eight logits, which bound the selection and are its candidates,
//    and only a thread that may have dropped more reads its share again. Nodes whose children are a
//    sixteenth of the vocabulary or more are read the same way, as a bitmap over the row
//    (Trie._wide_nodes_on), and nothing is gathered; other nodes with over 1024 children bound the
//    selection from one pass over their children.
// 2. Per batch item, by the block that finishes the item's last row: the same selection over its
//    beams' lists by accumulated score. The lists are sorted, so their first entries bound it.
//
// Ordering matches the CPU step exactly: higher value first, ties to the lower token (rows) and to
// the lower (beam, token) (items); a tie at the k-th place is settled by a second radix select on
// that secondary order.
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "beam/beam.h"

namespace pyfastseq {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSlots = 2048;  // num_candidates <= 2 * 1024 beams

struct Pool {
  float* logprob;   // [rows, C]
  int32_t* token;   // [rows, C]
  int32_t* node;    // [rows, C]
  int32_t* count;    // [rows]
  int32_t* detail;   // [rows] error detail
  int32_t* arrived;  // [batch] the item's rows done in this launch; zero between launches
};

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

Pool pool_of(void* workspace, int64_t rows, int32_t c) {
  char* base = static_cast<char*>(workspace);
  const size_t entries = static_cast<size_t>(rows) * c;
  Pool p;
  p.logprob = reinterpret_cast<float*>(base);
  base += align_up(entries * sizeof(float));
  p.token = reinterpret_cast<int32_t*>(base);
  base += align_up(entries * sizeof(int32_t));
  p.node = reinterpret_cast<int32_t*>(base);
  base += align_up(entries * sizeof(int32_t));
  p.count = reinterpret_cast<int32_t*>(base);
  p.detail = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + beam_step_error_detail_offset(rows, c));
  p.arrived = p.detail + align_up(rows * sizeof(int32_t)) / sizeof(int32_t);
  return p;
}

// A load from L2, past the SM's L1: for lists other blocks of this launch wrote (L1 is not
// coherent between SMs, and a line of them may sit there from an earlier read).
template <class T>
__device__ __forceinline__ T load_cg(const T* p) { return __ldcg(p); }

__device__ __forceinline__ float to_float(float v) { return v; }
struct Half { uint16_t bits; };
struct BHalf { uint16_t bits; };
__device__ __forceinline__ float to_float(Half v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ float to_float(BHalf v) { return __uint_as_float(uint32_t{v.bits} << 16); }

// Keys that order like the floats (-0 as +0: equal values tie); 0 is reserved for "not a
// candidate" (no float maps to it).
__device__ __forceinline__ uint32_t order_key(float v) {
  const uint32_t b = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ void record_error(unsigned long long* error, Pool pool, int64_t row, BeamStepError code,
                                             int32_t detail) {
  pool.detail[row] = detail;
  atomicMin(error, static_cast<unsigned long long>(row) * 256u + static_cast<unsigned>(code));
}

// Records a normaliser that leaves no log-prob defined (NaN logits, or a +inf one) as row r's error;
// whether it was one.
__device__ __forceinline__ bool normaliser_failed(float lse, unsigned long long* error, Pool pool, int64_t r) {
  if (lse == lse && lse != INFINITY) return false;
  if (threadIdx.x == 0) record_error(error, pool, r, lse == lse ? BeamStepError::kInfinite : BeamStepError::kNaN, 0);
  return true;
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

// 2^x, results below the normal range flushed to zero: one MUFU.EX2, where exp2f adds a rescale
// for them. The sums it feeds hold their maximum's own term, 1, so a flushed term changes nothing.
// (The emulator's exp2f does not flush: the CPU tests cannot tell the two apart.)
__device__ __forceinline__ float exp2_ftz(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

// A running (max, sum of exp(x - max)) over one thread's share of a row.
struct OnlineLse {
  static constexpr float kLog2e = 1.4426950408889634f;
  float m = -INFINITY, s = 0.0f;
  bool nan = false;  // a NaN seen while m was infinite; with m finite, a NaN makes s NaN

  // A few values at a time: one rescale per group. exp(d) is taken as exp2(d log2(e)). Returns
  // the group's largest value (NaNs aside), which the row's watch reuses.
  template <int N>
  __device__ __forceinline__ float add(const float (&x)[N]) {
    float top = x[0];
#pragma unroll
    for (int j = 1; j < N; ++j) top = fmaxf(top, x[j]);
    if (top > m) {
      s = m == -INFINITY ? 0.0f : s * exp2_ftz((m - top) * kLog2e);
      m = top;
    }
    if (m == -INFINITY || m == INFINITY) {  // nothing to sum yet / the result is +inf anyway
#pragma unroll
      for (int j = 0; j < N; ++j) nan |= x[j] != x[j];
      return top;
    }
    // x - m first (exact near the max, whose own term is then exactly 1): an FMA of x log2(e) with
    // a rounded m log2(e) would be off by that rounding, which overflows the sum at |m| ~ 1e10
    // (logits masked with -1e10 or the dtype's lowest value).
#pragma unroll
    for (int j = 0; j < N; ++j) s += exp2_ftz((x[j] - m) * kLog2e);
    return top;
  }

  __device__ bool saw_nan() const { return nan || s != s; }
};

// 16-byte words of a row as floats.
__device__ __forceinline__ void unpack(uint4 w, float (&x)[4], const float*) {
  x[0] = __uint_as_float(w.x), x[1] = __uint_as_float(w.y), x[2] = __uint_as_float(w.z), x[3] = __uint_as_float(w.w);
}
__device__ __forceinline__ void unpack(uint4 w, float (&x)[8], const Half*) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    x[2 * j] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[j] & 0xffffu)));
    x[2 * j + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[j] >> 16)));
  }
}
__device__ __forceinline__ void unpack(uint4 w, float (&x)[8], const BHalf*) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) x[2 * j] = __uint_as_float(words[j] << 16), x[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
}

// How a block's threads share a row: a scalar head up to 16-byte alignment, whole 16-byte words,
// and a scalar tail, each strided over the threads.
template <class Bits>
struct RowSplit {
  static constexpr int kPer = 16 / sizeof(Bits);
  int64_t head, words, tail;
  __device__ RowSplit(const Bits* row, int64_t vocab) {
    const int64_t misaligned = static_cast<int64_t>((16 - reinterpret_cast<uintptr_t>(row) % 16) % 16 / sizeof(Bits));
    head = misaligned < vocab ? misaligned : vocab;
    words = (vocab - head) / kPer;
    tail = head + words * kPer;
  }
};

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

// Watches the normaliser pass for kept_top: each item of `items` (a row's columns) that can be a
// candidate is offered to the thread's ThreadTop, keyed by its logit. A group whose largest value
// ranks below the thread's kept ones, nearly every group, costs one comparison.
template <class Items>
struct KeepBest {
  const Items& items;
  ThreadTop top;
  template <int N>
  __device__ __forceinline__ void add(const float (&x)[N], int64_t first, float group_top) {
    if (order_key(group_top) <= top.key[kKept - 1]) return;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      // The key first: eligible() may read a bitmap.
      const uint32_t key = order_key(x[j]);
      if (key > top.key[kKept - 1] && items.eligible(first + j, x[j])) top.offer(key, static_cast<int32_t>(first + j));
    }
  }
};

struct NoWatch {
  template <int N>
  __device__ __forceinline__ void add(const float (&)[N], int64_t, float) {}
};

// 16-byte loads in flight per thread on a row pass: a block reads a whole row alone, and when the
// rows are fewer than the SMs its loads in flight are all of an SM's. A watch that keeps the best
// logits needs registers for them, and takes half as many.
constexpr int kRowLoads = 8;
constexpr int kWatchedRowLoads = 4;

// Calls visit.add(x, first) over this thread's share of a row, in column order (x: the values of
// columns first, first + 1, ...): a scalar head up to 16-byte alignment, 16-byte words strided over
// the block, and a scalar tail. Loads go out before any value is used: the head and the tail (under
// 16 bytes each, so one column per thread at most) with the first words, and the words Loads at a
// time, the last group predicated, so that a row costs ceil(words / (Loads * threads)) round trips
// to memory.
template <int Loads, class Bits, class Visit>
__device__ void read_own_share(const Bits* row, int64_t vocab, Visit& visit) {
  constexpr int kPer = RowSplit<Bits>::kPer;
  const RowSplit<Bits> split(row, vocab);
  const int64_t head_column = threadIdx.x, tail_column = split.tail + threadIdx.x;
  bool head_pending = head_column < split.head;
  const bool has_tail = tail_column < vocab;
  const float head[1] = {head_pending ? to_float(row[head_column]) : 0.0f};
  const float tail[1] = {has_tail ? to_float(row[tail_column]) : 0.0f};
  const uint4* body = reinterpret_cast<const uint4*>(row + split.head);
  for (int64_t j = threadIdx.x; j < split.words; j += Loads * kThreads) {
    uint4 w[Loads];
#pragma unroll
    for (int u = 0; u < Loads; ++u)
      if (j + u * kThreads < split.words) w[u] = body[j + u * kThreads];
    if (head_pending) {
      visit.add(head, head_column);
      head_pending = false;
    }
#pragma unroll
    for (int u = 0; u < Loads; ++u) {
      if (j + u * kThreads >= split.words) break;
      float x[kPer];
      unpack(w[u], x, static_cast<const Bits*>(nullptr));
      visit.add(x, split.head + (j + u * kThreads) * kPer);
    }
  }
  if (head_pending) visit.add(head, head_column);
  if (has_tail) visit.add(tail, tail_column);
}

template <class Watch>
struct LseAndWatch {
  OnlineLse acc;
  Watch& watch;
  template <int N>
  __device__ __forceinline__ void add(const float (&x)[N], int64_t first) {
    watch.add(x, first, acc.add(x));
  }
};

// log(sum(exp(row))) in one online pass of 16-byte loads; NaN when the row holds one. `watch`
// sees every value this thread reads, with its column.
template <class Bits, class Watch = NoWatch>
__device__ float row_logsumexp(const Bits* row, int64_t vocab, TopShared& sh, Watch&& watch = NoWatch{}) {
  LseAndWatch<std::remove_reference_t<Watch>> visit{OnlineLse{}, watch};
  constexpr bool watched = !std::is_same_v<std::remove_reference_t<Watch>, NoWatch>;
  read_own_share<watched ? kWatchedRowLoads : kRowLoads>(row, vocab, visit);
  const OnlineLse& acc = visit.acc;
  // Combine (m, s) across the block: the block max, then the rescaled sums.
  const float M = block_max(acc.m, sh);
  const bool any_nan = __syncthreads_or(acc.saw_nan()) != 0;
  if (any_nan) return NAN;
  if (M == -INFINITY || M == INFINITY) return M;
  const float part = acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - M);
  return M + logf(block_sum(part, sh.s));
}

// A row's items: the vocabulary (unconstrained) or a node's children, ranked by value(i).
template <class Bits>
struct DenseRow {
  const Bits* logits;
  int32_t blocked;
  __device__ float value(int32_t i) const { return to_float(logits[i]); }
  // -inf logits never enter (the CPU heap only admits values above -inf).
  __device__ bool eligible(int64_t i, float x) const { return i != blocked && x != -INFINITY; }
  // Column t's key from its logit x.
  __device__ uint32_t key_of(int64_t t, float x) const { return eligible(t, x) ? order_key(x) : 0u; }
  __device__ uint32_t key(int32_t i) const { return key_of(i, to_float(logits[i])); }
  __device__ int64_t secondary(int32_t i) const { return i; }
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

// selection_bound from every thread's ThreadTop (keys mapped by final_key). Up to kThreads from
// the threads' best keys; wider selections (beam widths 129-384) from the need-th largest of the
// threads' first kKeptStaged kept keys, which are distinct items too, by a radix select over them
// staged in shared memory. 0 when there is none. Empties the staging area when it returns a bound.
// Every thread of the block must call it.
template <class FinalKey>
__device__ uint32_t kept_bound(const ThreadTop& top, FinalKey final_key, int32_t need, TopShared& sh) {
  if (need <= kThreads) return selection_bound(top.key[0] ? final_key(top.key[0]) : 0u, need, sh);
  if (need > kMaxKeptNeed) return 0;
  if (threadIdx.x == 0) sh.staged = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kKeptStaged; ++j)
    if (top.key[j] != 0) stage(final_key(top.key[j]), 0, sh);
  __syncthreads();
  const int32_t kept = sh.staged;
  __syncthreads();  // read by every thread before it is reset below
  uint32_t bound = 0;
  int32_t remaining = 0, equal = 0;
  if (kept >= need) kth_key(StagedKeys{sh.staged_key}, kept, need, sh, &bound, &remaining, &equal);
  if (threadIdx.x == 0) sh.staged = 0;
  __syncthreads();
  return bound;
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

// Stages each column whose key (from its logit, Items::key_of) is at or above `bound`.
template <class Items>
struct StageFrom {
  const Items& items;
  uint32_t bound;
  TopShared& sh;
  template <int N>
  __device__ __forceinline__ void add(const float (&x)[N], int64_t first) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const uint32_t key = items.key_of(first + j, x[j]);
      if (key >= bound) stage(key, static_cast<int32_t>(first + j), sh);
    }
  }
};

// bounded_top for a row (items indexed by column) whose normaliser pass gave each thread its
// ThreadTop, with keys that final_key maps monotonically to the items' keys: the row is read once,
// and again by the threads that may have dropped items at or above the bound. Eight kept logits
// make such a thread rare: at 152k columns and 2K = 128, about 0.6 of a thread's ~600 logits pass
// the bound on average, so its eighth best does with odds of about 1 in 3 million (its fourth
// best, with 1 in 200: most blocks would have one and wait for it). A reread goes with as many
// loads in flight as a pass that only sums.
template <class Bits, class Items, class FinalKey>
__device__ int32_t kept_top(const Items& items, const Bits* row, int64_t vocab, int32_t want, const ThreadTop& top,
                            FinalKey final_key, TopShared& sh) {
  const uint32_t bound = kept_bound(top, final_key, want, sh);
  if (bound != 0)
    stage_kept(top, final_key, bound, sh, [&] {
      StageFrom<Items> visit{items, bound, sh};
      read_own_share<kRowLoads>(row, vocab, visit);
    });
  return staged_top(items, static_cast<int32_t>(vocab), want, bits_below(vocab), bound, sh);
}

template <class Bits>
struct ChildRow {
  const Bits* logits;
  TrieView trie;
  uint32_t lo;
  float lse;
  int32_t blocked;
  bool block_leaves;
  // Lookahead (null: none): p^(1/(delta+1)) renormalised, as (logprob / (delta + 1)) + shift.
  const int32_t* deltas;
  float shift;
  __device__ int32_t token(int32_t i) const { return trie.child_token[lo + i]; }
  __device__ float value(int32_t i) const {
    const float logprob = to_float(logits[token(i)]) - lse;
    return deltas ? logprob / static_cast<float>(deltas[i] + 1) + shift : logprob;
  }
  __device__ uint32_t key(int32_t i) const {
    if (token(i) == blocked) return 0u;
    if (block_leaves && trie.num_children(static_cast<int32_t>(lo + i) + 1) == 0) return 0u;
    return order_key(value(i));
  }
  __device__ int64_t secondary(int32_t i) const { return i; }
};

// A wide node's children as items over the vocabulary: token t is one when its bit is set.
// Values, keys and order are ChildRow's (children ascend by token, so token order is child order).
template <class Bits>
struct BitmapRow {
  const Bits* logits;
  const uint32_t* bits;
  int64_t limit;
  float lse;
  int32_t blocked;
  __device__ float value(int32_t t) const { return to_float(logits[t]) - lse; }
  // -inf children enter, as gathered ones do.
  __device__ bool eligible(int64_t t, float) const {
    return t < limit && ((bits[t >> 5] >> (t & 31)) & 1u) && t != blocked;
  }
  __device__ uint32_t key_of(int64_t t, float x) const { return eligible(t, x) ? order_key(x - lse) : 0u; }
  __device__ uint32_t key(int32_t t) const { return eligible(t, 0.0f) ? order_key(value(t)) : 0u; }
  __device__ int64_t secondary(int32_t t) const { return t; }
};

// A constrained "full" row at a wide node: the normaliser pass also keeps each thread's best
// allowed logits, so the children are never gathered and the row is read about once. Returns the
// candidates found, written to out_*.
template <class Bits>
__device__ int32_t wide_node_top(const BeamStepParams& p, int64_t r, const Bits* logits, const TrieView& trie,
                                 uint32_t lo, uint32_t hi, const uint32_t* bits, int64_t words, Pool pool,
                                 unsigned long long* error, TopShared& sh, float* out_logprob, int32_t* out_token,
                                 int32_t* out_node) {
  BitmapRow<Bits> items{logits, bits, words * 32, 0.0f, p.blocked_token};
  KeepBest<BitmapRow<Bits>> seen{items};
  const float lse = row_logsumexp(logits, p.vocab, sh, seen);
  if (normaliser_failed(lse, error, pool, r) || lse == -INFINITY) return 0;
  items.lse = lse;
  // x - lse rounds monotonically in x, so the kept logits' keys map to the items' keys.
  const auto final_key = [&](uint32_t raw) { return order_key(from_order_key(raw) - lse); };
  const int32_t k = kept_top(items, logits, p.vocab, p.num_candidates, seen.top, final_key, sh);
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t token = sh.item[t];
    out_logprob[t] = items.value(token);
    out_token[t] = token;
    out_node[t] = static_cast<int32_t>(trie.lower_bound(lo, hi, token)) + 1;
  }
  return k;
}

// log(sum(exp(value(i)))) over a node's n children, summed in double as on the CPU.
template <class Children>
__device__ float children_logsumexp(const Children& children, int32_t n, TopShared& sh) {
  float m = -INFINITY;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) m = fmaxf(m, children.value(i));
  const float M = block_max(m, sh);
  if (!isfinite(M)) return M;
  double sum = 0.0;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) sum += exp(static_cast<double>(children.value(i) - M));
  return M + static_cast<float>(log(block_sum(sum, sh.ds)));
}

// Row r's lookahead deltas when they reshape it (a slice of one delta per child with some delta > 0
// and more than one child), else null. A slice of another length, or a negative delta, records the
// error and sets *failed. Every thread of the block must call it.
__device__ const int32_t* row_deltas(const BeamStepParams& p, int64_t r, int32_t n, Pool pool,
                                     unsigned long long* error, TopShared& sh, bool* failed) {
  *failed = false;
  if (!p.delta_offsets) return nullptr;
  const int64_t begin = p.delta_offsets[r], count = p.delta_offsets[r + 1] - begin;
  if (count == 0) return nullptr;
  if (count != n) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kDeltaCount, static_cast<int32_t>(count));
    *failed = true;
    return nullptr;
  }
  if (threadIdx.x == 0) {
    sh.flag = 0;
    sh.bad_token = INT32_MAX;  // here: the first child with a negative delta
  }
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const int32_t d = p.deltas[begin + i];
    if (d < 0) atomicMin(&sh.bad_token, i);
    if (d > 0) sh.flag = 1;
  }
  __syncthreads();
  const bool any_positive = sh.flag != 0;
  const int32_t first_negative = sh.bad_token;
  __syncthreads();
  if (first_negative != INT32_MAX) {
    if (threadIdx.x == 0)
      record_error(error, pool, r, BeamStepError::kNegativeDelta, p.deltas[begin + first_negative]);
    *failed = true;
    return nullptr;
  }
  // The seed's rule acts only where there is a choice to reshape.
  return any_positive && n > 1 ? p.deltas + begin : nullptr;
}

// Row blockIdx.x's candidates into the pool, best first. Returns false, having done nothing, when an
// earlier launch failed (*p.halted).
template <class Bits>
__device__ bool row_candidates(const BeamStepParams& p, Pool pool, unsigned long long* error, TopShared& sh) {
  const int64_t r = blockIdx.x;
  // The row's first loads go out together, ahead of any branch on them: each is a round trip to
  // memory, and a row at a small node costs a chain of a few more (its children, their logits).
  const unsigned long long halted = p.halted ? *p.halted : kNoBeamStepError;
  const float beam_score = p.beam_scores[r];
  const int64_t trie_index = p.num_tries == 1 ? 0 : r / p.num_beams;
  const int32_t node = p.nodes ? p.nodes[r] : 0;
  const TrieView trie = p.nodes ? p.tries[trie_index] : TrieView{};
  if (halted != kNoBeamStepError) return false;  // written by an earlier launch: no block races it
  const int32_t C = p.num_candidates;
  float* out_logprob = pool.logprob + r * C;
  int32_t* out_token = pool.token + r * C;
  int32_t* out_node = pool.node + r * C;
  if (threadIdx.x == 0) pool.count[r] = 0;
  if (beam_score == -INFINITY) return true;
  const Bits* logits = static_cast<const Bits*>(p.logits) + r * p.row_stride;

  if (!p.nodes) {
    const DenseRow<Bits> items{logits, p.blocked_token};
    KeepBest<DenseRow<Bits>> seen{items};
    const float lse = row_logsumexp(logits, p.vocab, sh, seen);
    if (normaliser_failed(lse, error, pool, r) || lse == -INFINITY) return true;  // -inf: no token can follow
    const int32_t k = kept_top(items, logits, p.vocab, C, seen.top, [](uint32_t raw) { return raw; }, sh);
    for (int32_t t = threadIdx.x; t < k; t += kThreads) {
      out_logprob[t] = items.value(sh.item[t]) - lse;
      out_token[t] = sh.item[t];
      out_node[t] = -1;
    }
    if (threadIdx.x == 0) pool.count[r] = k;
    return true;
  }

  if (node == kSpentNode) {
    // An ended hypothesis continues with eos alone (and has no children for lookahead deltas).
    if (p.delta_offsets && p.delta_offsets[r + 1] != p.delta_offsets[r]) {
      if (threadIdx.x == 0)
        record_error(error, pool, r, BeamStepError::kDeltaCount,
                     static_cast<int32_t>(p.delta_offsets[r + 1] - p.delta_offsets[r]));
      return true;
    }
    if (p.eos_id < 0 || p.eos_id >= p.vocab || p.eos_id == p.blocked_token) return true;
    float logprob = 0.0f;
    if (!p.normalize_allowed) {
      const float lse = row_logsumexp(logits, p.vocab, sh);
      if (normaliser_failed(lse, error, pool, r) || lse == -INFINITY) return true;
      logprob = to_float(logits[p.eos_id]) - lse;
    }
    if (threadIdx.x == 0) {
      out_logprob[0] = logprob;
      out_token[0] = p.eos_id;
      out_node[0] = kSpentNode;
      pool.count[r] = 1;
    }
    return true;
  }
  if (node < 0 || node >= trie.num_nodes) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kBadNode, node);
    return true;
  }
  const uint32_t lo = trie.child_begin[node], hi = trie.child_begin[node + 1];
  if (lo == hi) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kNoChildren, node);
    return true;
  }
  const int32_t n = static_cast<int32_t>(hi - lo);

  // Nodes with a bitmap (Trie._wide_nodes_on) are read through it when each child's own edge is
  // not needed.
  const bool no_deltas = !p.delta_offsets || p.delta_offsets[r + 1] == p.delta_offsets[r];
  if (p.wide && !p.normalize_allowed && !p.block_leaves && no_deltas && trie.child_token[hi - 1] < p.vocab) {
    const WideNodes wide = p.wide[trie_index];
    if (const uint32_t* bits = wide.children_of(node)) {
      const int32_t k = wide_node_top(p, r, logits, trie, lo, hi, bits, wide.words, pool, error, sh, out_logprob,
                                      out_token, out_node);
      if (threadIdx.x == 0) pool.count[r] = k;
      return true;
    }
  }

  // Children in token order: a NaN or +inf among the in-vocabulary ones comes before any token >= vocab.
  if (threadIdx.x == 0) {
    sh.flag = 0;
    sh.bad_token = INT32_MAX;
  }
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const int32_t token = trie.child_token[lo + i];
    if (token >= p.vocab) {
      atomicMin(&sh.bad_token, token);
    } else {
      const float x = to_float(logits[token]);
      if (x != x || x == INFINITY) atomicMax(&sh.flag, x != x ? 2 : 1);
    }
  }
  __syncthreads();
  const int32_t child_flag = sh.flag;  // 2: a NaN child, else 1: a +inf one
  const int32_t bad_token = sh.bad_token;
  __syncthreads();
  if (child_flag != 0 || bad_token != INT32_MAX) {
    if (threadIdx.x == 0) {
      if (child_flag == 2) record_error(error, pool, r, BeamStepError::kNaN, 0);
      else if (child_flag == 1) record_error(error, pool, r, BeamStepError::kInfinite, 0);
      else record_error(error, pool, r, BeamStepError::kTokenOutOfVocab, bad_token);
    }
    return true;
  }

  bool failed;
  const int32_t* deltas = row_deltas(p, r, n, pool, error, sh, &failed);
  if (failed) return true;
  ChildRow<Bits> items{logits, trie, lo, 0.0f, p.blocked_token, p.block_leaves, nullptr, 0.0f};
  const float lse = p.normalize_allowed && !deltas ? children_logsumexp(items, n, sh) : row_logsumexp(logits, p.vocab, sh);
  // Every logit the normaliser covers is -inf: no child can follow (rather than -inf - -inf = NaN,
  // which would rank first on the device), as on the CPU.
  if (normaliser_failed(lse, error, pool, r) || lse == -INFINITY) return true;
  items.lse = lse;
  if (deltas) {
    // The children keep the mass they had: 1 under normalize_allowed, their share of the row under
    // "full" (so all-zero deltas would be the identity), as on the CPU.
    const float mass = p.normalize_allowed ? 0.0f : children_logsumexp(items, n, sh);
    items.deltas = deltas;
    const float reshaped = children_logsumexp(items, n, sh);
    if (reshaped == -INFINITY) return true;  // every child impossible: no mass to reshape, none follows
    items.shift = mass - reshaped;
  }
  const int32_t k = bounded_top(items, n, C, bits_below(n), sh);
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t i = sh.item[t];
    out_logprob[t] = items.value(i);
    out_token[t] = items.token(i);
    out_node[t] = static_cast<int32_t>(lo + i) + 1;
  }
  if (threadIdx.x == 0) pool.count[r] = k;
  return true;
}

// A batch item's candidates: entry i of beam j's list is item j * C + i.
struct ItemLists {
  const float* beam_scores;  // the item's K rows
  const float* logprob;
  const int32_t* token;
  const int32_t* count;
  int32_t C;
  __device__ float score(int32_t e) const { return beam_scores[e / C] + load_cg(logprob + e); }
  __device__ uint32_t key(int32_t e) const { return e % C < load_cg(count + e / C) ? order_key(score(e)) : 0u; }
  __device__ int64_t secondary(int32_t e) const {
    return (static_cast<int64_t>(e / C) << 32) | static_cast<uint32_t>(load_cg(token + e));
  }
};

// The entries of some of an item's lists past their first `skip`: entry i is entry skip + i % rest
// of list lists[i / rest].
struct ListTails {
  const ItemLists& items;
  const int32_t* lists;
  int32_t skip, rest;
  __device__ int32_t entry(int32_t i) const { return lists[i / rest] * items.C + skip + i % rest; }
  __device__ uint32_t key(int32_t i) const { return items.key(entry(i)); }
};

// bounded_top over a batch item's lists when they are at most one per thread. Each list is sorted
// best first (the rows kernel's order, and beam score + logprob keeps it), so a list's first few
// entries are its best keys and give the selection a bound without reading the rest; only the
// lists whose heads all pass the bound ("deep" ones, usually a few) are read further, by the
// whole block. Every thread of the block must call it.
__device__ int32_t sorted_lists_top(const ItemLists& items, int32_t lists, int32_t want, int secondary_bits,
                                    TopShared& sh) {
  const int tid = threadIdx.x;
  const int32_t C = items.C;
  const int32_t head = min(kKept, min(kStaged / lists, C));  // every list's head fits the staging area
  uint32_t key[kKept], last = 0;  // last: the key of the head's last entry
  int32_t count = 0;
  if (tid < lists) count = load_cg(items.count + tid);
#pragma unroll
  for (int i = 0; i < kKept; ++i) {
    key[i] = tid < lists && i < head && i < count ? items.key(tid * C + i) : 0u;
    if (i == head - 1) last = key[i];  // static indices: the keys stay in registers
  }
  if (tid == 0) sh.staged = 0;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kKept; ++i)
    if (key[i] != 0) stage(key[i], 0, sh);
  __syncthreads();
  const int32_t kept = sh.staged;
  __syncthreads();
  // With fewer heads than wanted, every entry counts: the bound is the least key.
  uint32_t bound = 1;
  int32_t remaining = 0, equal = 0;
  if (kept >= want) kth_key(StagedKeys{sh.staged_key}, kept, want, sh, &bound, &remaining, &equal);
  if (tid == 0) {
    sh.staged = 0;
    sh.deep_count = 0;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kKept; ++i)
    if (key[i] >= bound) stage(key[i], tid * C + i, sh);  // key 0 (none) is below every bound
  if (count > head && last >= bound) sh.deep[atomicAdd(&sh.deep_count, 1)] = tid;
  __syncthreads();
  const ListTails tails{items, sh.deep, head, C - head};
  for_each_key(tails, sh.deep_count * tails.rest, [&](uint32_t k, int32_t i) {
    if (k >= bound) stage(k, tails.entry(i), sh);
  });
  return staged_top(items, lists * C, want, secondary_bits, bound, sh);
}

// Batch item b's candidates from its rows' lists.
__device__ void merge_item(const BeamStepParams& p, Pool pool, int64_t b, TopShared& sh) {
  const int64_t first = b * p.num_beams;
  const int32_t C = p.num_candidates;
  const ItemLists items{p.beam_scores + first, pool.logprob + first * C, pool.token + first * C, pool.count + first, C};
  const int32_t n = p.num_beams * C;
  const int secondary_bits = 32 + bits_below(p.num_beams);
  const int32_t k = p.num_beams <= kThreads ? sorted_lists_top(items, p.num_beams, C, secondary_bits, sh)
                                            : bounded_top(items, n, C, secondary_bits, sh);
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t e = sh.item[t];
    const int64_t o = b * C + t;
    p.cand_score[o] = items.score(e);
    p.cand_logprob[o] = load_cg(items.logprob + e);
    p.cand_token[o] = load_cg(items.token + e);
    p.cand_parent[o] = static_cast<int32_t>(first + e / C);
    p.cand_node[o] = load_cg(pool.node + first * C + e);
  }
  if (threadIdx.x == 0) p.cand_count[b] = k;
}

// One block per row; the block that finishes an item's last row also merges the item, so that the
// step is one launch and an item's merge overlaps other items' rows. Each row's block announces its
// list on the item's arrival count after a fence; the block that completes the count resets it
// for the next launch. Three blocks per SM, so 80 registers: the sm_90 build spills a few hundred
// bytes, none of it in the loops of the dense pass or of the sums, and a few words an iteration in
// the wide-node pass's loop.
template <class Bits>
__global__ void __launch_bounds__(kThreads, 3) beam_step_kernel(BeamStepParams p, Pool pool, unsigned long long* error) {
  __shared__ TopShared sh;
  // Every block arrives, halted or not, so that the counts end at zero whatever happened.
  const bool ran = row_candidates<Bits>(p, pool, error, sh);
  const int64_t b = blockIdx.x / p.num_beams;
  __threadfence();  // this thread's writes to the row's list, before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool last = atomicAdd(&pool.arrived[b], 1) == p.num_beams - 1;
    __threadfence();  // the other rows' lists, after their arrivals
    if (last) pool.arrived[b] = 0;
    // A failed row makes the whole step an error: skip the work (the host raises).
    sh.flag = last && ran && load_cg(error) == kNoBeamStepError;
  }
  __syncthreads();
  if (sh.flag) merge_item(p, pool, b, sh);
}

}  // namespace

size_t beam_step_cuda_workspace_bytes(int64_t rows, int32_t num_candidates) {
  const size_t entries = static_cast<size_t>(rows) * num_candidates;
  return align_up(entries * sizeof(float)) + 2 * align_up(entries * sizeof(int32_t)) +
         3 * align_up(rows * sizeof(int32_t));
}

size_t beam_step_error_detail_offset(int64_t rows, int32_t num_candidates) {
  const size_t entries = static_cast<size_t>(rows) * num_candidates;
  return align_up(entries * sizeof(float)) + 2 * align_up(entries * sizeof(int32_t)) + align_up(rows * sizeof(int32_t));
}

int run_beam_step_cuda(const BeamStepParams& p, void* workspace, unsigned long long* error, void* stream) {
  if (p.num_candidates < 1 || p.num_candidates > kMaxSlots) return static_cast<int>(cudaErrorInvalidValue);
  if (p.vocab >= INT32_MAX) return static_cast<int>(cudaErrorInvalidValue);
  if (int64_t{p.num_beams} * p.num_candidates >= INT32_MAX) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t rows = int64_t{p.batch_size} * p.num_beams;
  if (rows == 0) return 0;
  const Pool pool = pool_of(workspace, rows, p.num_candidates);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>(rows);
  switch (p.dtype) {
    case LogitsDtype::kFloat32: beam_step_kernel<float><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
    case LogitsDtype::kFloat16: beam_step_kernel<Half><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
    case LogitsDtype::kBFloat16: beam_step_kernel<BHalf><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
