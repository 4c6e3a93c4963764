#include "trie/trie_mask.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/parallel.h"

namespace pyfastseq {
namespace {

// Rows at least this large (bytes) do not fit in cache next to the next row, so their fills use
// non-temporal stores: the mask is pure write traffic, and skipping the read-for-ownership of
// ordinary stores is worth 1.3-1.6x on memory bandwidth.
constexpr int64_t kStreamingRowBytes = 64 * 1024;

template <class Bits>
void fill_span(Bits* begin, Bits* end, Bits fill, bool streaming) {
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

// Fills the gaps between the allowed tokens: touches only masked entries, never saves/restores.
template <class Bits>
void mask_row(Bits* row, int64_t vocab, Bits fill, int32_t node, const TrieView& trie, bool streaming) {
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

template <class Bits>
void mask_rows(const TrieMaskParams& p) {
  auto* logits = static_cast<Bits*>(p.logits);
  const Bits fill = static_cast<Bits>(p.fill_bits);
  const bool streaming = p.vocab * static_cast<int64_t>(sizeof(Bits)) >= kStreamingRowBytes;
  parallel_for(p.rows, p.vocab, [&](int64_t r) {
    mask_row(logits + r * p.row_stride, p.vocab, fill, p.nodes[r], p.trie, streaming);
  });
#if defined(__SSE2__)
  _mm_sfence();  // order the streaming stores before the caller reads the logits
#endif
}

}  // namespace

int64_t run_trie_mask_cpu(const TrieMaskParams& p) {
  for (int64_t r = 0; r < p.rows; ++r)
    if (p.nodes[r] < -1 || p.nodes[r] >= p.trie.num_nodes) return r;
  if (p.elem_bytes == 2) mask_rows<uint16_t>(p); else mask_rows<uint32_t>(p);
  return -1;
}

}  // namespace pyfastseq
