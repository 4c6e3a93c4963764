// CUDA trie mask: a 2-D grid, one row per blockIdx.y, a strip of the vocabulary per block. The mask
// writes only the columns it fills and never reads the logits, so the kernel is its stores: nearly
// every thread has no allowed token among its columns (a node's children are a few hundred tokens
// of a vocabulary of 100k) and writes them with 16-byte stores, each store instruction of a warp
// covering 512 contiguous bytes.
//
// The stores wait for one search per warp and row: the node's children inside the warp's span,
// found by a 32-way search (every lane probes, a ballot narrows the range 32-fold: two dependent
// loads for 256 children, three for 30k). That latency is what bounds the kernel, so each search
// covers 8 KB of the row (sixteen stores per thread) to keep enough stores in flight to fill the
// memory bus (4 KB wrote at 82% of an H200's bandwidth). Spans start on 16-byte boundaries of the row's address, so rows off such a boundary
// (odd vocabularies, column slices) store as fast; a thread whose 16 bytes hold a child, or run off
// either end of the row, goes column by column.
#include <cuda_runtime.h>

#include <cstdint>

#include "trie/trie_mask.h"

namespace pyfastseq {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kChunkBytes = 16;
constexpr int kChunksPerLane = 16;
constexpr int64_t kWarpBytes = int64_t{kWarp} * kChunksPerLane * kChunkBytes;  // a row's bytes per search

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
  constexpr int64_t kPerChunk = kChunkBytes / sizeof(Bits);
  constexpr int64_t kWarpColumns = kWarpBytes / sizeof(Bits);
  const int lane = threadIdx.x % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarp;
  const Bits fill = static_cast<Bits>(p.fill_bits);
  uint32_t word = p.fill_bits;
  if (sizeof(Bits) == 2) word = (word & 0xffffu) * 0x10001u;
  const uint4 fill4 = {word, word, word, word};
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    Bits* logits = static_cast<Bits*>(p.logits) + row * p.row_stride;
    // Column `first` sits on a 16-byte boundary; it is 0 or up to kPerChunk - 1 columns before the row.
    const int64_t first = -static_cast<int64_t>(reinterpret_cast<uintptr_t>(logits) % kChunkBytes / sizeof(Bits));
    const int64_t span_start = first + warp * kWarpColumns;
    if (span_start >= p.vocab) continue;  // the whole warp: the searches below need every lane
    const int64_t span_stop = span_start + kWarpColumns;
    const int32_t node = p.nodes[row];
    uint32_t e = 0, end = 0;  // the span's children: [e, end)
    if (node >= 0) {
      const uint32_t lo = p.trie.child_begin[node], hi = p.trie.child_begin[node + 1];
      e = warp_lower_bound(p.trie.child_token, lo, hi, span_start, lane);
      end = warp_lower_bound(p.trie.child_token, e, hi, span_stop, lane);
    }
    for (int c = 0; c < kChunksPerLane; ++c) {
      const int64_t start = span_start + (int64_t{c} * kWarp + lane) * kPerChunk, stop = start + kPerChunk;
      if (e < end) e = p.trie.lower_bound(e, end, start);
      const bool inside = start >= 0 && stop <= p.vocab;
      if (inside && (e == end || p.trie.child_token[e] >= stop)) {
        *reinterpret_cast<uint4*>(logits + start) = fill4;
        continue;
      }
      for (int64_t col = max(start, int64_t{0}); col < min(stop, p.vocab); ++col) {
        if (e < end && p.trie.child_token[e] == col) {
          ++e;
          continue;
        }
        logits[col] = fill;
      }
    }
  }
}

}  // namespace

int run_trie_mask_cuda(const TrieMaskParams& p, void* stream) {
  if (p.rows == 0 || p.vocab == 0) return 0;
  const int64_t warp_columns = kWarpBytes / p.elem_bytes;
  const int64_t per_block = warp_columns * (kThreads / kWarp);
  // Up to 16 bytes of a row's first span lie before it (alignment): one column less than a chunk.
  const int64_t columns = p.vocab + kChunkBytes / p.elem_bytes - 1;
  const dim3 grid(static_cast<unsigned>((columns + per_block - 1) / per_block),
                  static_cast<unsigned>(p.rows < 65535 ? p.rows : 65535));
  auto s = static_cast<cudaStream_t>(stream);
  if (p.elem_bytes == 2) trie_mask_kernel<uint16_t><<<grid, kThreads, 0, s>>>(p);
  else trie_mask_kernel<uint32_t><<<grid, kThreads, 0, s>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
