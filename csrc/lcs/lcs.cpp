// The match table and the batched LCS of many candidates against one query.
#include <algorithm>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "common/parallel.h"
#include "lcs/bitrow.h"
#include "lcs/lcs.h"

namespace pyfastseq {

namespace {

// The table costs (distinct symbols + 1) x words x 8 bytes, quadratic in the query length; this cap
// (128 MiB) admits any query of up to ~32k tokens.
constexpr int64_t kMaxTableWords = int64_t{1} << 24;
// Direct indexing while the byte index stays within 128 KiB.
constexpr int32_t kDirectLimit = 1 << 17;

}  // namespace

LcsPattern::LcsPattern(const int32_t* query, int64_t length)
    : length_(length), words_(static_cast<int32_t>(std::max<int64_t>(1, (length + 63) / 64))) {
  for (int64_t j = 0; j < length; ++j)
    if (query[j] < 0) fail("query holds a negative token id (", query[j], ")");
  std::vector<int32_t> symbols(query, query + length);
  std::sort(symbols.begin(), symbols.end());
  symbols.erase(std::unique(symbols.begin(), symbols.end()), symbols.end());
  const int64_t distinct = static_cast<int64_t>(symbols.size());
  if ((distinct + 1) * words_ > kMaxTableWords)
    fail("query is too long (", length, " tokens, ", distinct, " distinct): its LCS match table would exceed 128 MiB");

  // Symbol i (in sorted order) owns row i + 1.
  if (distinct < 256 && (symbols.empty() || symbols.back() < kDirectLimit)) {
    direct_.assign(symbols.empty() ? 1 : static_cast<size_t>(symbols.back()) + 2, 0);
    for (int64_t i = 0; i < distinct; ++i) direct_[symbols[i]] = static_cast<uint8_t>(i + 1);
  } else {
    build_cuckoo(symbols);
  }
  masks_.assign(static_cast<size_t>((distinct + 1) * words_), 0);
  visit([&](const auto& rows) {
    for (int64_t j = 0; j < length; ++j)
      masks_[static_cast<size_t>(words_) * rows.row(query[j]) + (j >> 6)] |= uint64_t{1} << (j & 63);
  });
}

void LcsPattern::build_cuckoo(const std::vector<int32_t>& symbols) {
  // At load factor <= 1/4 cuckoo insertion practically always succeeds; on a failure, draw new
  // multipliers, and grow the table after a few.
  const int64_t distinct = static_cast<int64_t>(symbols.size());
  uint32_t bits = 4;
  while ((int64_t{1} << bits) < 4 * distinct) ++bits;
  for (uint64_t attempt = 0;; ++attempt) {
    if (attempt > 0 && attempt % 4 == 0) ++bits;
    uint64_t z = (attempt + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64: deterministic multipliers
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    mul_a_ = static_cast<uint32_t>(z) | 1u;
    mul_b_ = static_cast<uint32_t>(z >> 32) | 1u;
    shift_ = 32 - bits;
    slots_.assign(size_t{1} << bits, CuckooSlot{});
    const HashedRows rows{slots_.data(), mul_a_, mul_b_, shift_, nullptr, words_};
    bool placed = true;
    for (int64_t i = 0; i < distinct && placed; ++i)
      placed = insert(rows, CuckooSlot{symbols[i], static_cast<uint32_t>(i + 1)});
    if (placed) return;
  }
}

bool LcsPattern::insert(const HashedRows& rows, CuckooSlot slot) {
  if (slots_[rows.slot_b(slot.key)].key < 0) {
    slots_[rows.slot_b(slot.key)] = slot;
    return true;
  }
  uint32_t pos = rows.slot_a(slot.key);
  for (int kick = 0; kick < 128; ++kick) {
    std::swap(slot, slots_[pos]);
    if (slot.key < 0) return true;
    pos = rows.slot_a(slot.key) == pos ? rows.slot_b(slot.key) : rows.slot_a(slot.key);  // its other slot
  }
  return false;
}

namespace {

// LCS of candidates [first, end), one at a time. kWords as in bitrow.h.
template <int kWords, class Rows>
void lcs_block(const LcsLengthsParams& p, const Rows& rows, int64_t first, int64_t end) {
  uint64_t fixed[kWords > 0 ? kWords : 1];
  std::vector<uint64_t> dynamic(kWords > 0 ? 0 : static_cast<size_t>(rows.words));
  uint64_t* s = kWords > 0 ? fixed : dynamic.data();
  for (int64_t i = first; i < end; ++i) {
    bitrow::reset<kWords>(s, rows.words);
    // Candidates are short (a handful of tokens): unrolling trims the loop's share of each step.
#pragma GCC unroll 4
    for (int64_t t = p.offsets[i]; t < p.offsets[i + 1]; ++t)
      bitrow::advance<kWords>(s, s, bitrow::match<kWords>(rows, p.tokens[t]), rows.words);
    p.out[i] = bitrow::lcs<kWords>(s, rows.words);
  }
}

template <int kWords, class Rows>
void lcs_lengths_impl(const LcsLengthsParams& p, const Rows& rows, std::vector<uint8_t>& negative) {
  constexpr int64_t kBlock = 256;  // candidates per parallel task
  // A token-word costs ~1 ns; threads start past ~32k of them (a few tens of microseconds), where
  // waking an idle worker is already the smaller cost.
  const int64_t blocks = static_cast<int64_t>(negative.size());
  const int64_t work_per_block = blocks == 0 ? 0 : p.num_tokens * rows.words * 4 / blocks;
  parallel_for(blocks, work_per_block, [&](int64_t b) {
    const int64_t first = b * kBlock, end = std::min(p.num_candidates, first + kBlock);
    int32_t any = 0;  // sign bit set by a negative id
    for (int64_t t = p.offsets[first]; t < p.offsets[end]; ++t) any |= p.tokens[t];
    negative[b] = any < 0;
    lcs_block<kWords>(p, rows, first, end);
  });
}

}  // namespace

void run_lcs_lengths(const LcsLengthsParams& p) {
  if (p.num_candidates < 0) fail("candidates: negative count");
  if (p.offsets[0] != 0 || p.offsets[p.num_candidates] != p.num_tokens)
    fail("offsets must start at 0 and end at the number of tokens (", p.num_tokens, ")");
  for (int64_t i = 0; i < p.num_candidates; ++i)
    if (p.offsets[i + 1] < p.offsets[i]) fail("offsets must be non-decreasing (offsets[", i + 1, "] < offsets[", i, "])");
  // Each block also reports whether it saw a negative id; the kernel itself maps one to the zero
  // row, so the check costs one pass over cached tokens instead of a separate scan in Python.
  std::vector<uint8_t> negative(static_cast<size_t>((p.num_candidates + 255) / 256));
  p.pattern->visit([&](const auto& rows) {
    switch (rows.words) {
      case 1: return lcs_lengths_impl<1>(p, rows, negative);
      case 2: return lcs_lengths_impl<2>(p, rows, negative);
      case 3: return lcs_lengths_impl<3>(p, rows, negative);
      case 4: return lcs_lengths_impl<4>(p, rows, negative);
      default: return lcs_lengths_impl<0>(p, rows, negative);
    }
  });
  if (std::find(negative.begin(), negative.end(), 1) == negative.end()) return;
  const int64_t t = std::find_if(p.tokens, p.tokens + p.num_tokens, [](int32_t x) { return x < 0; }) - p.tokens;
  const int64_t i = std::upper_bound(p.offsets, p.offsets + p.num_candidates + 1, t) - p.offsets - 1;
  fail("candidates[", i, "] holds a negative token id (", p.tokens[t], ")");
}

}  // namespace pyfastseq
