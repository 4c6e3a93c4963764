#include "trie/trie_mask.h"

#include "common/parallel.h"
#include "trie/row_fill.h"

namespace pyfastseq {
namespace {

// Returns the first row with NaN at a child token (nothing written), else -1.
template <class Bits>
int64_t mask_rows(const TrieMaskParams& p) {
  auto* logits = static_cast<Bits*>(p.logits);
  const int64_t nan_row =
      first_row_with_nan_child(logits, p.rows, p.row_stride, p.nodes, p.trie, static_cast<Bits>(p.inf_bits));
  if (nan_row >= 0) return nan_row;
  const Bits fill = static_cast<Bits>(p.fill_bits);
  const bool streaming = use_streaming_stores<Bits>(p.vocab);
  parallel_for(p.rows, p.vocab, [&](int64_t r) {
    fill_outside_children(logits + r * p.row_stride, p.vocab, fill, p.nodes[r], p.trie, streaming);
  });
  streaming_store_fence();
  return -1;
}

}  // namespace

TrieMaskRefusal run_trie_mask_cpu(const TrieMaskParams& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    if (p.nodes[r] < -1 || p.nodes[r] >= p.trie.num_nodes) return {r, -1};
  return {-1, p.elem_bytes == 2 ? mask_rows<uint16_t>(p) : mask_rows<uint32_t>(p)};
}

}  // namespace pyfastseq
