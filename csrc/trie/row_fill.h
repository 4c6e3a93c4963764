// Filling the masked part of a logits row, shared by every CPU kernel that masks by the trie.
#pragma once
#include <algorithm>
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

}  // namespace pyfastseq
