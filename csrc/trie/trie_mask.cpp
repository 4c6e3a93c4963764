#include "trie/trie_mask.h"

#include <algorithm>

#include "common/parallel.h"

namespace pyfastseq {
namespace {

// Fills the gaps between the allowed tokens: touches only masked entries, never saves/restores.
template <class Bits>
void mask_row(Bits* row, int64_t vocab, Bits fill, int32_t node, const TrieView& trie) {
  if (node < 0) {
    std::fill_n(row, vocab, fill);
    return;
  }
  int64_t next = 0;
  for (uint32_t e = trie.child_begin[node]; e < trie.child_begin[node + 1]; ++e) {
    const int64_t token = trie.child_token[e];
    std::fill(row + next, row + token, fill);
    next = token + 1;
  }
  std::fill(row + next, row + vocab, fill);
}

template <class Bits>
void mask_rows(const TrieMaskParams& p) {
  auto* logits = static_cast<Bits*>(p.logits);
  const Bits fill = static_cast<Bits>(p.fill_bits);
  parallel_for(p.rows, p.vocab, [&](int64_t r) {
    mask_row(logits + r * p.row_stride, p.vocab, fill, p.nodes[r], p.trie);
  });
}

}  // namespace

int64_t run_trie_mask_cpu(const TrieMaskParams& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    if (p.nodes[r] < -1 || p.nodes[r] >= p.trie.num_nodes) return r;
  if (p.elem_bytes == 2) mask_rows<uint16_t>(p); else mask_rows<uint32_t>(p);
  return -1;
}

}  // namespace pyfastseq
