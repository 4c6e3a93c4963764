// CUDA trie mask: a 2-D grid, one row per blockIdx.y, a strip of the vocabulary per block. Each
// thread finds its first allowed token with one binary search over the node's sorted children and
// then walks the child list alongside its columns, so the cost per element is a compare.
#include <cuda_runtime.h>

#include "trie/trie_mask.h"

namespace pyfastseq {
namespace {

constexpr int kThreads = 256;
constexpr int kPerThread = 8;

template <class Bits>
__global__ void trie_mask_kernel(TrieMaskParams p) {
  const int64_t start = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kPerThread;
  if (start >= p.vocab) return;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
  Bits* logits = static_cast<Bits*>(p.logits) + row * p.row_stride;
  const Bits fill = static_cast<Bits>(p.fill_bits);
  const int32_t node = p.nodes[row];
  uint32_t e = 0, end = 0;
  if (node >= 0) {
    e = p.trie.child_begin[node];
    end = p.trie.child_begin[node + 1];
    while (e < end) {  // lower bound of `start` among the children
      const uint32_t mid = e + (end - e) / 2;
      if (p.trie.child_token[mid] < start) e = mid + 1; else end = mid;
    }
    end = p.trie.child_begin[node + 1];
  }
  const int64_t stop = min(start + kPerThread, p.vocab);
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
  const int64_t per_block = int64_t{kThreads} * kPerThread;
  const dim3 grid(static_cast<unsigned>((p.vocab + per_block - 1) / per_block), static_cast<unsigned>(p.rows < 65535 ? p.rows : 65535));
  auto s = static_cast<cudaStream_t>(stream);
  if (p.elem_bytes == 2) trie_mask_kernel<uint16_t><<<grid, kThreads, 0, s>>>(p);
  else trie_mask_kernel<uint32_t><<<grid, kThreads, 0, s>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
