// Trie state recovered from token ids alone, and the constrained copy of a step's scores.
//
// transformers hands a LogitsProcessor only the sequences so far, so a drop-in replacement for
// `prefix_allowed_tokens_fn` must find each row's trie node from its tokens. A walk stops at the
// first token that leaves the trie, so it costs at most depth + 1 lookups per row however long the
// generation runs: no per-row cache (and no beam bookkeeping) is needed.
#pragma once
#include <cstdint>

#include "trie/trie_view.h"

namespace pyfastseq {

struct TrieWalkParams {
  const int64_t* ids = nullptr;  // [rows, >= start + len] token ids, unit stride along a row
  int64_t rows = 0;
  int64_t row_stride = 0;        // in elements
  int64_t start = 0;             // first column of the walk
  int64_t len = 0;               // columns walked
  int32_t* nodes = nullptr;      // [rows] out: node after ids[r, start:start+len], -1 if none
  TrieView trie;
};

// Ids outside [0, 2**31) lie on no path and give -1; nothing is rejected.
void run_trie_walk_cpu(const TrieWalkParams& params);

// dst[r] := -inf everywhere except the children of nodes[r], whose scores come from src[r]. A row
// with no continuation (node -1 or a leaf) keeps every score, as `prefix_allowed_tokens_fn` users
// allow every token there. all_neg_inf[r] := 1 when every score the row kept is -inf (the constraint
// is unsatisfiable there). dst may be src (in place). Values are handled as bits, so fp32/fp16/bf16
// share one code path; one pass writes each dst entry once. Returns -1, or the first row with NaN
// at a child token of its node, having written nothing (a row with no continuation is not checked).
//
// With previous_nodes, dst already holds this function's output for those nodes (same rows, vocab
// and strides, then untouched): a row whose previous node had children is -inf outside them, so
// only those entries are reset and the new children written, O(children) instead of O(vocab).
struct TrieConstrainParams {
  const void* src = nullptr;   // [rows, vocab], unit stride along vocab
  void* dst = nullptr;         // [rows, vocab], unit stride along vocab; == src or disjoint from it
  int64_t rows = 0;
  int64_t vocab = 0;           // must exceed every child token (the caller checks max_token)
  int64_t src_row_stride = 0;  // in elements
  int64_t dst_row_stride = 0;
  int32_t elem_bytes = 4;      // 2 or 4
  uint32_t neg_inf_bits = 0;   // -inf in the logits dtype
  const int32_t* nodes = nullptr;  // [rows], each -1 or a valid node id
  const int32_t* previous_nodes = nullptr;  // [rows] like nodes, or null: dst holds nothing known
  uint8_t* all_neg_inf = nullptr;  // [rows] out
  TrieView trie;
};

int64_t run_trie_constrain_cpu(const TrieConstrainParams& params);

}  // namespace pyfastseq
