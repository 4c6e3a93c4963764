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

}  // namespace

LcsPattern::LcsPattern(const int32_t* query, int64_t length)
    : length_(length), words_(static_cast<int32_t>(std::max<int64_t>(1, (length + 63) / 64))) {
  std::vector<std::pair<int32_t, int64_t>> symbols(static_cast<size_t>(length));
  for (int64_t j = 0; j < length; ++j) {
    if (query[j] < 0) fail("query holds a negative token id (", query[j], ")");
    symbols[j] = {query[j], j};
  }
  std::sort(symbols.begin(), symbols.end());
  const int64_t distinct =
      std::unique(symbols.begin(), symbols.end(), [](auto& a, auto& b) { return a.first == b.first; }) -
      symbols.begin();
  if ((distinct + 1) * words_ > kMaxTableWords)
    fail("query is too long (", length, " tokens, ", distinct, " distinct): its LCS match table would exceed 128 MiB");

  // Linear probing at load factor <= 1/4 keeps a miss (the common case: most text tokens are not
  // in the query) to about one probe.
  uint32_t bits = 4;
  while ((int64_t{1} << bits) < 4 * distinct) ++bits;
  shift_ = 32 - bits;
  slot_mask_ = (uint32_t{1} << bits) - 1;
  slot_key_.assign(size_t{1} << bits, -1);
  slot_row_.assign(size_t{1} << bits, 0);
  masks_.assign(static_cast<size_t>((distinct + 1) * words_), 0);
  for (int64_t i = 0; i < distinct; ++i) {
    uint32_t slot = (static_cast<uint32_t>(symbols[i].first) * 0x9E3779B1u) >> shift_;
    while (slot_key_[slot] >= 0) slot = (slot + 1) & slot_mask_;
    slot_key_[slot] = symbols[i].first;
    slot_row_[slot] = static_cast<uint32_t>((i + 1) * words_);
  }
  for (int64_t j = 0; j < length; ++j) masks_[offset_of(query[j]) + (j >> 6)] |= uint64_t{1} << (j & 63);
}

namespace {

template <int kWords>
void lcs_lengths_impl(const LcsLengthsParams& p) {
  const LcsPattern& q = *p.pattern;
  const int32_t words = q.words();
  parallel_for(p.num_candidates, 16 * words, [&](int64_t i) {
    thread_local std::vector<uint64_t> scratch;
    uint64_t fixed[kWords > 0 ? kWords : 1];
    uint64_t* s = fixed;
    if (kWords == 0) {
      scratch.resize(static_cast<size_t>(words));
      s = scratch.data();
    }
    bitrow::reset<kWords>(s, words);
    int32_t any_negative = 0;  // sign bit set by a negative id: checked after the loop, for free
    for (int64_t t = p.offsets[i]; t < p.offsets[i + 1]; ++t) {
      any_negative |= p.tokens[t];
      bitrow::advance<kWords>(s, s, q.row(p.tokens[t]), words);
    }
    p.out[i] = any_negative < 0 ? -1 : bitrow::lcs<kWords>(s, words);
  });
}

}  // namespace

void run_lcs_lengths(const LcsLengthsParams& p) {
  if (p.num_candidates < 0) fail("candidates: negative count");
  if (p.offsets[0] != 0 || p.offsets[p.num_candidates] != p.num_tokens)
    fail("offsets must start at 0 and end at the number of tokens (", p.num_tokens, ")");
  for (int64_t i = 0; i < p.num_candidates; ++i)
    if (p.offsets[i + 1] < p.offsets[i]) fail("offsets must be non-decreasing (offsets[", i + 1, "] < offsets[", i, "])");
  switch (p.pattern->words()) {
    case 1: lcs_lengths_impl<1>(p); break;
    case 2: lcs_lengths_impl<2>(p); break;
    case 3: lcs_lengths_impl<3>(p); break;
    case 4: lcs_lengths_impl<4>(p); break;
    default: lcs_lengths_impl<0>(p); break;
  }
  const int32_t* bad = std::find(p.out, p.out + p.num_candidates, -1);
  if (bad != p.out + p.num_candidates) {
    const int64_t i = bad - p.out;
    const int32_t token = *std::find_if(p.tokens + p.offsets[i], p.tokens + p.offsets[i + 1], [](int32_t t) { return t < 0; });
    fail("candidates[", i, "] holds a negative token id (", token, ")");
  }
}

}  // namespace pyfastseq
