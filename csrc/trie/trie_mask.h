// Trie-masked logits: every token that is not a child of a row's trie node is set to `fill`.
//
// The kernel is dtype-agnostic: it only copies the fill value's bit pattern, so one code path serves
// fp32 (elem_bytes 4) and fp16/bf16 (elem_bytes 2). A row whose node is -1 has no continuation and is
// filled entirely.
#pragma once
#include <algorithm>
#include <cstdint>

#include "trie/trie_view.h"

namespace pyfastseq {

struct TrieMaskParams {
  void* logits = nullptr;      // [rows, vocab], unit stride along vocab
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;      // in elements
  int32_t elem_bytes = 4;      // 2 or 4
  uint32_t fill_bits = 0;      // the fill value's bits in the logits dtype
  const int32_t* nodes = nullptr;  // [rows], each -1 or a node id
  TrieView trie;
};

// Sets every entry of `row` [vocab] that is not a child token of `node` to `fill`, touching only
// those entries (a row with node -1 is filled entirely). Shared by every CPU kernel that masks.
template <class Bits>
inline void fill_outside_children(Bits* row, int64_t vocab, Bits fill, int32_t node, const TrieView& trie) {
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

// CPU. Returns -1 on success or the index of the first row whose node is out of range (nothing is
// written then). Children with token >= vocab are the caller's to rule out (Trie::max_token()).
int64_t run_trie_mask_cpu(const TrieMaskParams& params);

// CUDA: every pointer (trie arrays included) is device memory; launched on `stream`, asynchronous.
// Node ids must be validated by the caller. Returns a cudaError_t value (0 on success).
int run_trie_mask_cuda(const TrieMaskParams& params, void* stream);

}  // namespace pyfastseq
