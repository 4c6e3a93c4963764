// Filling the masked part of a logits row, shared by every CPU kernel that masks by the trie.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/parallel.h"
#include "trie/trie_view.h"

namespace pyfastseq {

// Rows at least this large (bytes) do not fit in cache next to the next row, so their fills use
// non-temporal stores: masking is pure write traffic, and skipping the read-for-ownership of
// ordinary stores is worth 1.3-1.6x of memory bandwidth.
template <class Bits>
inline bool use_streaming_stores(int64_t vocab) {
  return vocab * static_cast<int64_t>(sizeof(Bits)) >= 64 * 1024;
}

// Orders streaming stores before anything the caller does next; call once after a kernel's rows.
inline void streaming_store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// `begin` must be aligned to sizeof(Bits) (the Python layer copies tensors that are not), or the
// streaming path's alignment loop would step past every 16-byte boundary.
template <class Bits>
inline void fill_span(Bits* begin, Bits* end, Bits fill, bool streaming) {
#if defined(__SSE2__)
  if (streaming && end - begin >= 64) {
    while (reinterpret_cast<uintptr_t>(begin) % 16 != 0) *begin++ = fill;
    uint32_t word = fill;
    if (sizeof(Bits) == 2) word |= word << 16;
    const __m128i pattern = _mm_set1_epi32(static_cast<int>(word));
    constexpr int64_t kPerVector = 16 / sizeof(Bits);
    for (; end - begin >= kPerVector; begin += kPerVector)
      _mm_stream_si128(reinterpret_cast<__m128i*>(begin), pattern);
  }
#else
  (void)streaming;
#endif
  std::fill(begin, end, fill);
}

// Sets every entry of `row` [vocab] that is not a child token of `node` to `fill`, touching only
// those entries (a row with node -1 is filled entirely).
template <class Bits>
inline void fill_outside_children(Bits* row, int64_t vocab, Bits fill, int32_t node, const TrieView& trie,
                                  bool streaming) {
  int64_t next = 0;
  if (node >= 0) {
    for (uint32_t e = trie.child_begin[node]; e < trie.child_begin[node + 1]; ++e) {
      const int64_t token = trie.child_token[e];
      fill_span(row + next, row + token, fill, streaming);
      next = token + 1;
    }
  }
  fill_span(row + next, row + vocab, fill, streaming);
}

// `bits` with the sign bit cleared.
template <class Bits>
inline Bits magnitude(Bits bits) {
  return static_cast<Bits>(bits & (static_cast<Bits>(~Bits{0}) >> 1));
}

// The first row holding NaN at a child token of its node, or -1. Those are the only entries of a row
// that a mask keeps, so a mask checks them, and only them, before it writes anything: a read that is
// small next to the fill except at nodes whose children cover much of the vocabulary (a title trie's
// root). `inf` is +inf's bits in the logits dtype (a NaN's bits, sign aside, exceed them); nodes must
// be -1 or valid ids.
template <class Bits>
int64_t first_row_with_nan_child(const Bits* logits, int64_t rows, int64_t row_stride, const int32_t* nodes,
                                 const TrieView& trie, Bits inf) {
  int64_t children = 0;
  for (int64_t r = 0; r < rows; ++r) children += nodes[r] < 0 ? 0 : trie.num_children(nodes[r]);
  std::vector<uint8_t> has_nan(rows);
  parallel_for(rows, children / std::max<int64_t>(rows, 1), [&](int64_t r) {
    if (nodes[r] < 0) return;
    const Bits* row = logits + r * row_stride;
    const int32_t* tokens = trie.child_token;
    has_nan[r] = std::any_of(tokens + trie.child_begin[nodes[r]], tokens + trie.child_begin[nodes[r] + 1],
                             [&](int32_t token) { return magnitude(row[token]) > inf; });
  });
  const auto first = std::find(has_nan.begin(), has_nan.end(), 1);
  return first == has_nan.end() ? -1 : first - has_nan.begin();
}

}  // namespace pyfastseq
