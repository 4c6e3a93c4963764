// Operations on one Hyyrö LCS bit row (see lcs.h). A row is `words` uint64 words; kWords > 0 fixes
// the word count at compile time so the loops unroll (1 word covers queries of up to 64 tokens),
// kWords == 0 reads it at run time.
#pragma once
#include <cstdint>

namespace pyfastseq {
namespace bitrow {

template <int kWords>
inline int32_t count(int32_t words) {
  return kWords > 0 ? kWords : words;
}

inline int32_t popcount(uint64_t x) {
#if defined(__x86_64__) && !defined(__POPCNT__)
  // The baseline x86-64 target has no popcnt instruction and the builtin becomes a libgcc call;
  // this SWAR count is a dozen inline operations.
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int32_t>((x * 0x0101010101010101ull) >> 56);
#else
  return __builtin_popcountll(x);
#endif
}

// The match mask words of `token` from a DirectRows / HashedRows lookup (lcs.h); a constant kWords
// makes the row stride a constant.
template <int kWords, class Rows>
inline const uint64_t* match(const Rows& rows, int32_t token) {
  return rows.masks + static_cast<size_t>(count<kWords>(rows.words)) * rows.row(token);
}

// The row of the empty text: every bit set.
template <int kWords>
inline void reset(uint64_t* s, int32_t words) {
  for (int32_t w = 0; w < count<kWords>(words); ++w) s[w] = ~uint64_t{0};
}

// dst = the row after one more text symbol whose match mask is m. dst may alias src. S - u is
// S ^ u because u is a subset of S; only S + u carries across words. Bits above the query length
// stay set: m is zero there, and S ^ u restores whatever the carry clears.
//
// Returns the LCS gain, 0 or 1: the LCS with the whole query grows exactly when a match lands in
// the top run of set bits (above the highest clear bit), whose carry then runs through the set
// bits above the query length and out of the last word.
template <int kWords>
inline int32_t advance(uint64_t* dst, const uint64_t* src, const uint64_t* m, int32_t words) {
  uint64_t carry = 0;
  for (int32_t w = 0; w < count<kWords>(words); ++w) {
    const uint64_t s = src[w], u = s & m[w];
    const uint64_t sum = s + u;
    const uint64_t total = sum + carry;
    carry = static_cast<uint64_t>(sum < s) | static_cast<uint64_t>(total < sum);
    dst[w] = total | (s ^ u);
  }
  return static_cast<int32_t>(carry);
}

// LCS of the text so far with the whole query.
template <int kWords>
inline int32_t lcs(const uint64_t* s, int32_t words) {
  int32_t n = 0;
  for (int32_t w = 0; w < count<kWords>(words); ++w) n += popcount(~s[w]);
  return n;
}

// The largest LCS with the query (length m) that any k more text symbols can reach: the k symbols
// can at best extend the LCS against the prefix Q[:m - k] by k (a longer prefix leaves fewer than k
// query symbols to match). Exact for the row, monotone in k, and never above min(m, lcs + k).
template <int kWords>
inline int32_t bound(const uint64_t* s, int32_t words, int64_t m, int32_t k) {
  if (k >= m) return static_cast<int32_t>(m);
  if (kWords == 1) return k + popcount(~s[0] & ((uint64_t{1} << (m - k)) - 1));
  int64_t bits = m - k;
  int32_t n = k;
  for (int32_t w = 0; w < count<kWords>(words) && bits > 0; ++w, bits -= 64)
    n += popcount(bits >= 64 ? ~s[w] : ~s[w] & ((uint64_t{1} << bits) - 1));
  return n;
}

}  // namespace bitrow
}  // namespace pyfastseq
