// Longest common subsequence (LCS) of token sequences, and the lookahead gain of seed 001.
//
// Bit-parallel LCS after H. Hyyrö, "Bit-parallel LCS-length computation revisited" (AWOCA 2004):
// the DP row of a text against a query Q of m symbols is kept as an m-bit vector S (bit j cleared
// where the row steps up at Q[j]); each text symbol c updates it with
//     u = S & M[c];  S = (S + u) | (S - u)
// where M[c] marks the positions of c in Q, and LCS = popcount(~S). Queries longer than 64 symbols
// use ceil(m / 64) words with the carry of S + u propagated upwards (S - u never borrows: u is a
// subset of S). The prefix counts of ~S are the LCS against every prefix of Q, which gives the
// exact upper bound the lookahead prunes with (lookahead.cpp).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "trie/trie_view.h"

namespace pyfastseq {

// Token -> mask row lookups: plain views over an LcsPattern's tables (see LcsPattern::visit);
// bitrow::match turns a row index into its mask words. A token absent from the query gets row 0,
// all zero. Whether a text token is in the query is unpredictable, so neither lookup branches on it.

// A byte row index by token id: a clamp and two loads.
struct DirectRows {
  const uint8_t* index;  // [last + 1], index[last] = 0
  uint32_t last;
  const uint64_t* masks;
  int32_t words;
  // Ids past the largest query symbol, and negative ids (huge as unsigned), land on index[last].
  uint32_t row(int32_t token) const { return index[std::min(static_cast<uint32_t>(token), last)]; }
};

struct CuckooSlot {
  int32_t key = -1;    // -1: empty (query tokens are non-negative)
  uint32_t index = 0;  // mask row; 0 is the all-zero row
};

// A two-choice cuckoo hash over the distinct query symbols, for any non-negative int32 id: both
// candidate slots are read and the match is selected with masks (a ?: here compiles to a branch).
struct HashedRows {
  const CuckooSlot* slots;
  uint32_t mul_a, mul_b, shift;
  const uint64_t* masks;
  int32_t words;
  uint32_t slot_a(int32_t token) const { return (static_cast<uint32_t>(token) * mul_a) >> shift; }
  uint32_t slot_b(int32_t token) const { return (static_cast<uint32_t>(token) * mul_b) >> shift; }
  uint32_t row(int32_t token) const {
    const CuckooSlot a = slots[slot_a(token)], b = slots[slot_b(token)];
    const uint32_t in_a = 0u - static_cast<uint32_t>(a.key == token), in_b = 0u - static_cast<uint32_t>(b.key == token);
    return (a.index & in_a) | (b.index & in_b);
  }
};

// The match table of one query, built once: token -> bit mask of its positions in the query. Direct
// indexing for queries of at most 255 distinct ids, all below 2^17 (any usual vocabulary: the byte
// index of a 21k vocabulary fits in L1), the cuckoo hash otherwise: longer queries spend more
// per token on their words than on the lookup. Immutable, shareable across threads.
class LcsPattern {
 public:
  LcsPattern(const int32_t* query, int64_t length);

  int64_t length() const { return length_; }
  int32_t words() const { return words_; }  // max(1, ceil(length / 64))
  // Calls f(rows) with this pattern's lookup, so that kernels compile once per lookup kind and
  // their inner loops carry no dispatch.
  template <class F>
  auto visit(F&& f) const {
    if (!direct_.empty())
      return f(DirectRows{direct_.data(), static_cast<uint32_t>(direct_.size() - 1), masks_.data(), words_});
    return f(HashedRows{slots_.data(), mul_a_, mul_b_, shift_, masks_.data(), words_});
  }

 private:
  void build_cuckoo(const std::vector<int32_t>& symbols);
  bool insert(const HashedRows& rows, CuckooSlot slot);

  int64_t length_;
  int32_t words_;
  std::vector<uint8_t> direct_;  // row by token id, when used; the last entry is 0
  uint32_t mul_a_ = 0, mul_b_ = 0, shift_ = 0;
  std::vector<CuckooSlot> slots_;
  std::vector<uint64_t> masks_;  // row 0 is all zero, then one row of `words` per distinct symbol
};

// LCS of every candidate against one query: candidate i is tokens[offsets[i] : offsets[i + 1]].
struct LcsLengthsParams {
  const LcsPattern* pattern = nullptr;
  const int32_t* tokens = nullptr;
  int64_t num_tokens = 0;
  const int64_t* offsets = nullptr;  // [num_candidates + 1], validated by run_lcs_lengths
  int64_t num_candidates = 0;
  int32_t* out = nullptr;            // [num_candidates]
};
// Parallel over candidates. Throws InvalidArgument on malformed offsets or a negative token id.
void run_lcs_lengths(const LcsLengthsParams& p);

// One lookahead call (seed 001). For every row r with node nodes[r] >= 0 and at least two children,
// and (when start_after >= 0) with start_after among its generated tokens, and every child c of that
// node in token order:
//     deltas[row_offsets[r] + k] = max over stored sequences P through c of LCS(seg(P), Q) - LCS(seg(prefix), Q)
// where seg() drops everything up to and including the first start_after, and Q is the row's query.
// Other rows get zeros. Because LCS never decreases when a sequence is extended, the maximum over
// stored sequences equals the maximum over every node of c's subtree, found by a walk that updates
// the bit row once per node and skips subtrees whose bound cannot beat the best.
struct LookaheadParams {
  TrieView trie;
  const uint8_t* heights = nullptr;           // [num_nodes] from run_subtree_heights
  const LcsPattern* const* patterns = nullptr;
  int32_t num_patterns = 0;
  int64_t rows = 0;
  const int32_t* nodes = nullptr;             // [rows], -1 = dead row
  const int32_t* generated = nullptr;         // [rows, steps] row-major: the path of each row
  int64_t steps = 0;
  const int64_t* pattern_of_row = nullptr;    // [rows] index into patterns
  int32_t start_after = -1;                   // -1: the segment is the whole row
  // Nodes below the children that one call may visit (< 0: unlimited). Shared over the distinct
  // (query, node) rows by water-filling: a row whose whole subtree fits in an equal share of what
  // is left gets all of it (smallest first), the others split the remainder evenly. A row walks
  // its children's subtrees one level at a time and stops before a level that would exceed its
  // share; its deltas then count completions cut at the last level walked: a lower bound of the
  // exact delta, never below the gain of the child token itself.
  int64_t max_nodes = -1;
  const int64_t* row_offsets = nullptr;       // [rows + 1] from lookahead_row_offsets
  int32_t* deltas = nullptr;                  // [row_offsets[rows]]
};

struct LookaheadStats {
  int64_t visited = 0;    // nodes below the children whose bit row was computed
  int64_t truncated = 0;  // children whose search max_nodes cut short
};

// row_offsets[r + 1] - row_offsets[r] = number of children of nodes[r] (0 for -1), from p.trie,
// p.nodes and p.rows. With applying_only, also 0 for every row the rule leaves alone (fewer than two
// children, start_after not decoded yet): the compact layout the beam step reads, where an empty
// slice means "unchanged". Throws InvalidArgument for a node outside [-1, num_nodes).
void lookahead_row_offsets(const LookaheadParams& p, bool applying_only, int64_t* row_offsets);
// Throws InvalidArgument for a pattern index outside [0, num_patterns).
LookaheadStats run_lookahead(const LookaheadParams& p);

// heights[n] = length of the longest path from node n down to a leaf, saturated at
// kSaturatedHeight, which stands for "that many or more" (one byte a node keeps the walk's
// heights in cache).
constexpr int32_t kSaturatedHeight = 255;
void run_subtree_heights(const TrieView& trie, uint8_t* heights);

}  // namespace pyfastseq
