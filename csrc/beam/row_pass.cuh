// The beam step's pass over a row of logits (beam_step.cu): 16-byte loads, several in flight per
// thread, an online (max, sum of exp) normaliser, and a watch that keeps each thread's best logits
// as they stream by, so that a dense row's candidates come from one read of the row. Included by
// beam_step.cu alone.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "beam/beam.h"
#include "beam/block_select.cuh"

namespace pyfastseq {
namespace beam_kernels {

__device__ __forceinline__ float to_float(float v) { return v; }
struct Half { uint16_t bits; };
struct BHalf { uint16_t bits; };
__device__ __forceinline__ float to_float(Half v) { return __half2float(__ushort_as_half(v.bits)); }
__device__ __forceinline__ float to_float(BHalf v) { return __uint_as_float(uint32_t{v.bits} << 16); }

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

// The row's normaliser in one online pass of 16-byte loads; its max is NaN when the row holds one.
// `watch` sees every value this thread reads, with its column.
template <class Bits, class Watch = NoWatch>
__device__ Normaliser row_normaliser(const Bits* row, int64_t vocab, TopShared& sh, Watch&& watch = NoWatch{}) {
  LseAndWatch<std::remove_reference_t<Watch>> visit{OnlineLse{}, watch};
  constexpr bool watched = !std::is_same_v<std::remove_reference_t<Watch>, NoWatch>;
  read_own_share<watched ? kWatchedRowLoads : kRowLoads>(row, vocab, visit);
  const OnlineLse& acc = visit.acc;
  // Combine (m, s) across the block: the block max, then the rescaled sums.
  const float M = block_max(acc.m, sh);
  const bool any_nan = __syncthreads_or(acc.saw_nan()) != 0;
  if (any_nan) return {NAN, 0.0f};
  if (M == -INFINITY || M == INFINITY) return {M, 0.0f};
  const float part = acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - M);
  return {M, logf(block_sum(part, sh.s))};
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

}  // namespace beam_kernels
}  // namespace pyfastseq
