#include "trie/trie_walk.h"

#include <algorithm>
#include <cstring>

#include "common/huge_pages.h"
#include "common/parallel.h"
#include "trie/row_fill.h"

namespace pyfastseq {
namespace {

template <class Bits>
int64_t constrain_rows(const TrieConstrainParams& p) {
  const auto* src = static_cast<const Bits*>(p.src);
  auto* dst = static_cast<Bits*>(p.dst);
  const Bits neg_inf = static_cast<Bits>(p.neg_inf_bits);
  const TrieView& trie = p.trie;
  const int64_t nan_row = first_row_with_nan_child(src, p.rows, p.src_row_stride, p.nodes, trie, magnitude(neg_inf));
  if (nan_row >= 0) return nan_row;
  // A dst apart from src is the processor's output, most often just faulted in and zeroed, its
  // lines already cached: ordinary stores are then faster than streaming ones, which would first
  // evict them.
  const bool streaming = p.dst == p.src && use_streaming_stores<Bits>(p.vocab);
  parallel_for(p.rows, p.vocab, [&](int64_t r) {
    const Bits* in = src + r * p.src_row_stride;
    Bits* out = dst + r * p.dst_row_stride;
    const int32_t node = p.nodes[r];
    if (node < 0 || trie.num_children(node) == 0) {
      p.all_neg_inf[r] = std::all_of(in, in + p.vocab, [&](Bits v) { return v == neg_inf; });
      if (out != in) std::memcpy(out, in, static_cast<size_t>(p.vocab) * sizeof(Bits));
      return;
    }
    const int32_t before = p.previous_nodes ? p.previous_nodes[r] : -1;
    const bool sparse = before >= 0 && trie.num_children(before) > 0;
    if (sparse && before != node) {
      for (uint32_t e = trie.child_begin[before]; e < trie.child_begin[before + 1]; ++e)
        out[trie.child_token[e]] = neg_inf;
    }
    bool unsatisfiable = true;
    for (uint32_t e = trie.child_begin[node]; e < trie.child_begin[node + 1]; ++e) {
      const Bits v = in[trie.child_token[e]];
      out[trie.child_token[e]] = v;
      unsatisfiable = unsatisfiable && v == neg_inf;
    }
    p.all_neg_inf[r] = unsatisfiable;
    if (!sparse) fill_outside_children(out, p.vocab, neg_inf, node, trie, streaming);
  });
  streaming_store_fence();
  return -1;
}

}  // namespace

void run_trie_walk_cpu(const TrieWalkParams& p) {
  const TrieView& trie = p.trie;
  parallel_for(p.rows, p.len, [&](int64_t r) {
    const int64_t* row = p.ids + r * p.row_stride + p.start;
    int32_t node = 0;
    for (int64_t i = 0; i < p.len && node >= 0; ++i)
      node = (row[i] < 0 || row[i] > INT32_MAX) ? -1 : trie.child(node, static_cast<int32_t>(row[i]));
    p.nodes[r] = node;
  });
}

int64_t run_trie_constrain_cpu(const TrieConstrainParams& p) {
  // A separate dst written in full is the processor's output, most often a new tensor.
  if (p.dst != p.src && !p.previous_nodes && p.rows > 0)
    advise_huge_pages(p.dst, static_cast<size_t>((p.rows - 1) * p.dst_row_stride + p.vocab) * p.elem_bytes);
  return p.elem_bytes == 2 ? constrain_rows<uint16_t>(p) : constrain_rows<uint32_t>(p);
}

}  // namespace pyfastseq
