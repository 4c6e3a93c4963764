// CUDA trie mask: a 2-D grid, one row per blockIdx.y, a strip of the vocabulary per block, 32
// contiguous bytes of the row per thread. The mask writes only the columns it fills and never reads
// the logits, so the kernel is its stores: a thread with no allowed token among its columns (nearly
// all of them: a node's children are a few hundred tokens of a vocabulary of 100k) writes its 32
// bytes as two 16-byte stores. Each warp first finds the node's children inside its span with a
// 32-way search (every lane probes, a ballot narrows the range 32-fold: two dependent loads for 256
// children, three for 30k); only threads whose columns hold a child search further and go column by
// column.
#include <cuda_runtime.h>

#include <cstdint>

#include "trie/trie_mask.h"

namespace pyfastseq {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kBytesPerThread = 32;

// The first index in [lo, hi) whose token is >= key (hi if none); every lane of the warp calls it
// with the same arguments.
__device__ uint32_t warp_lower_bound(const int32_t* tokens, uint32_t lo, uint32_t hi, int64_t key, int lane) {
  while (lo < hi) {
    const uint32_t step = (hi - lo + kWarp - 1) / kWarp;
    const uint32_t probe = lo + lane * step;
    const bool below = probe < hi && tokens[probe] < key;
    const int count = __popc(__ballot_sync(0xffffffffu, below));  // the probes below key: a prefix
    if (count == 0) return lo;
    const uint32_t last = lo + (count - 1) * step;  // the answer lies after it, up to the next probe
    hi = min(hi, last + step);
    lo = last + 1;
  }
  return lo;
}

template <class Bits>
__global__ void trie_mask_kernel(TrieMaskParams p) {
  constexpr int kPerThread = kBytesPerThread / sizeof(Bits);
  const int lane = threadIdx.x % kWarp;
  const int64_t warp_start = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x - lane) * kPerThread;
  if (warp_start >= p.vocab) return;  // the whole warp: the searches below need every lane
  const int64_t start = warp_start + lane * kPerThread;
  const int64_t stop = min(start + kPerThread, p.vocab);
  const Bits fill = static_cast<Bits>(p.fill_bits);
  uint32_t word = p.fill_bits;
  if (sizeof(Bits) == 2) word = (word & 0xffffu) * 0x10001u;
  const uint4 fill4 = {word, word, word, word};
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    Bits* logits = static_cast<Bits*>(p.logits) + row * p.row_stride;
    const int32_t node = p.nodes[row];
    uint32_t e = 0, end = 0;  // the children among this thread's columns start at e; none at end or after
    if (node >= 0) {
      const uint32_t first = p.trie.child_begin[node], last = p.trie.child_begin[node + 1];
      e = warp_lower_bound(p.trie.child_token, first, last, warp_start, lane);
      end = warp_lower_bound(p.trie.child_token, e, last, warp_start + int64_t{kWarp} * kPerThread, lane);
      if (e < end) e = p.trie.lower_bound(e, end, start);
    }
    if (start >= p.vocab) continue;
    Bits* out = logits + start;
    const bool none_allowed = e == end || p.trie.child_token[e] >= stop;
    if (none_allowed && stop - start == kPerThread && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
      reinterpret_cast<uint4*>(out)[0] = fill4;
      reinterpret_cast<uint4*>(out)[1] = fill4;
      continue;
    }
    for (int64_t col = start; col < stop; ++col) {
      if (e < end && p.trie.child_token[e] == col) {
        ++e;
        continue;
      }
      logits[col] = fill;
    }
  }
}

}  // namespace

int run_trie_mask_cuda(const TrieMaskParams& p, void* stream) {
  if (p.rows == 0 || p.vocab == 0) return 0;
  const int64_t per_thread = kBytesPerThread / p.elem_bytes;
  const int64_t per_block = kThreads * per_thread;
  const dim3 grid(static_cast<unsigned>((p.vocab + per_block - 1) / per_block),
                  static_cast<unsigned>(p.rows < 65535 ? p.rows : 65535));
  auto s = static_cast<cudaStream_t>(stream);
  if (p.elem_bytes == 2) trie_mask_kernel<uint16_t><<<grid, kThreads, 0, s>>>(p);
  else trie_mask_kernel<uint32_t><<<grid, kThreads, 0, s>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
