#include "trie/trie_mask.h"

#include "common/parallel.h"
#include "trie/row_fill.h"

namespace pyfastseq {
namespace {

template <class Bits>
void mask_rows(const TrieMaskParams& p) {
  auto* logits = static_cast<Bits*>(p.logits);
  const Bits fill = static_cast<Bits>(p.fill_bits);
  const bool streaming = use_streaming_stores<Bits>(p.vocab);
  parallel_for(p.rows, p.vocab, [&](int64_t r) {
    fill_outside_children(logits + r * p.row_stride, p.vocab, fill, p.nodes[r], p.trie, streaming);
  });
  streaming_store_fence();
}

}  // namespace

int64_t run_trie_mask_cpu(const TrieMaskParams& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    if (p.nodes[r] < -1 || p.nodes[r] >= p.trie.num_nodes) return r;
  if (p.elem_bytes == 2) mask_rows<uint16_t>(p); else mask_rows<uint32_t>(p);
  return -1;
}

}  // namespace pyfastseq
