// Trie-masked logits: every token that is not a child of a row's trie node is set to `fill`.
//
// The kernel is dtype-agnostic: it only copies the fill value's bit pattern, so one code path serves
// fp32 (elem_bytes 4) and fp16/bf16 (elem_bytes 2). A row whose node is -1 has no continuation and is
// filled entirely.
#pragma once
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
  uint32_t inf_bits = 0;       // CPU: +inf's bits in the logits dtype, to tell NaN
  TrieView trie;
};

// The params from the raw addresses and sizes the Python bindings receive (CPU and CUDA alike).
inline TrieMaskParams trie_mask_params(uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride,
                                       int32_t elem_bytes, uint32_t fill_bits, uintptr_t nodes,
                                       uintptr_t child_begin, uintptr_t child_token, int32_t num_nodes) {
  TrieMaskParams p;
  p.logits = reinterpret_cast<void*>(logits);
  p.rows = rows;
  p.vocab = vocab;
  p.row_stride = row_stride;
  p.elem_bytes = elem_bytes;
  p.fill_bits = fill_bits;
  p.nodes = reinterpret_cast<const int32_t*>(nodes);
  p.trie.child_begin = reinterpret_cast<const uint32_t*>(child_begin);
  p.trie.child_token = reinterpret_cast<const int32_t*>(child_token);
  p.trie.num_nodes = num_nodes;
  return p;
}

// Why run_trie_mask_cpu wrote nothing: the first row whose node is out of range, else the first row
// with NaN at a child token of its node (a NaN the mask would keep); -1 where there is none.
struct TrieMaskRefusal {
  int64_t bad_node_row = -1;
  int64_t nan_row = -1;
};

// CPU. Writes nothing when it refuses a row. Children with token >= vocab are the caller's to rule
// out (Trie::max_token()).
TrieMaskRefusal run_trie_mask_cpu(const TrieMaskParams& params);

// CUDA: every pointer (trie arrays included) is device memory; launched on `stream`, asynchronous.
// Node ids must be validated by the caller. Returns a cudaError_t value (0 on success).
int run_trie_mask_cuda(const TrieMaskParams& params, void* stream);

}  // namespace pyfastseq
