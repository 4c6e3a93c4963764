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
  TrieView trie;
};

// CPU. Returns -1 on success or the index of the first row whose node is out of range (nothing is
// written then). Children with token >= vocab are the caller's to rule out (Trie::max_token()).
int64_t run_trie_mask_cpu(const TrieMaskParams& params);

// CUDA: every pointer (trie arrays included) is device memory; launched on `stream`, asynchronous.
// Node ids must be validated by the caller. Returns a cudaError_t value (0 on success).
int run_trie_mask_cuda(const TrieMaskParams& params, void* stream);

}  // namespace pyfastseq
