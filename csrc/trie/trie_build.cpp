// Trie construction: a most-significant-token-first partition, one breadth-first level at a time.
//
// Every node owns a contiguous range of item indices that share its prefix. Sorting a range by the
// token at the node's depth splits it into the node's children in ascending token order; items that
// end at this depth sort first and make the node terminal. Processing nodes in id order and handing
// out child ids in creation order yields exactly the breadth-first numbering of trie_view.h, so the
// CSR arrays are written append-only and no pointer-based tree is ever built.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "common/errors.h"
#include "common/parallel.h"
#include "trie/trie.h"

namespace pyfastseq {
namespace {

struct ItemRange {
  int64_t begin, end;  // into the item order array
};

}  // namespace

std::unique_ptr<Trie> Trie::build(const int32_t* tokens, int64_t num_tokens, const int64_t* offsets,
                                  int64_t num_sequences, int32_t eos_id) {
  if (num_sequences <= 0) fail("sequences is empty: a trie needs at least one sequence");
  if (num_sequences > std::numeric_limits<int32_t>::max()) fail("sequences: too many sequences");
  if (offsets[0] != 0 || offsets[num_sequences] != num_tokens)
    fail("offsets must start at 0 and end at the number of tokens (", num_tokens, ")");
  for (int64_t i = 0; i < num_sequences; ++i) {
    if (offsets[i + 1] < offsets[i]) fail("offsets must be non-decreasing (offsets[", i + 1, "] < offsets[", i, "])");
    if (offsets[i + 1] == offsets[i] && eos_id < 0)
      fail("sequences[", i, "] is empty (an empty entry needs eos_id)");
  }
  for (int64_t t = 0; t < num_tokens; ++t)
    if (tokens[t] < 0) fail("sequences hold a negative token id (", tokens[t], ")");

  // Item i reads as its tokens followed by eos_id when it does not already end with it.
  std::vector<int32_t> length(num_sequences);
  int64_t total = 0;
  for (int64_t i = 0; i < num_sequences; ++i) {
    const int64_t raw = offsets[i + 1] - offsets[i];
    const bool append = eos_id >= 0 && (raw == 0 || tokens[offsets[i + 1] - 1] != eos_id);
    if (raw + append > std::numeric_limits<int32_t>::max()) fail("sequences[", i, "] is too long");
    length[i] = static_cast<int32_t>(raw + append);
    total += length[i];
  }
  if (total + 1 > std::numeric_limits<int32_t>::max()) fail("sequences: more than 2^31 - 1 trie nodes");
  auto token_at = [&](int32_t item, int32_t depth) -> int32_t {
    if (depth >= length[item]) return -1;  // ended: sorts first
    const int64_t pos = offsets[item] + depth;
    return pos < offsets[item + 1] ? tokens[pos] : eos_id;
  };

  std::unique_ptr<Trie> trie(new Trie());
  trie->eos_id_ = eos_id;
  std::vector<int32_t> order(num_sequences);
  std::iota(order.begin(), order.end(), 0);
  std::vector<uint32_t>& child_begin = trie->child_begin_;
  std::vector<int32_t>& child_token = trie->child_token_;
  std::vector<uint8_t> terminal;
  int32_t max_token = -1;
  child_begin.reserve(static_cast<size_t>(total) + 2);
  child_token.reserve(static_cast<size_t>(total));

  std::vector<ItemRange> level{{0, num_sequences}}, next;
  int64_t live = num_sequences;  // items in level's ranges
  int32_t depth = 0;
  // key[i]: item i's token at the current depth. Filled by one sequential pass per level, so the
  // per-range lookups below hit this compact column instead of scattered reads of the token buffer;
  // once most items have ended, only the live ones are filled, so that a few long entries among
  // many short ones cost their own tokens rather than a pass over every item per level.
  std::vector<int32_t> key(num_sequences);
  std::vector<std::pair<int32_t, int32_t>> keyed;  // (token at depth, item) for one range
  while (!level.empty()) {
    if (live * 4 >= num_sequences) {
      parallel_for(num_sequences, 1, [&](int64_t i) { key[i] = token_at(static_cast<int32_t>(i), depth); });
    } else {
      for (const ItemRange& range : level)
        for (int64_t k = range.begin; k < range.end; ++k) key[order[k]] = token_at(order[k], depth);
    }
    next.clear();
    live = 0;
    for (const ItemRange& range : level) {
      child_begin.push_back(static_cast<uint32_t>(child_token.size()));
      bool is_terminal = false;
      if (range.end - range.begin == 1) {  // a lone item: the common case deep in a catalogue
        const int32_t token = key[order[range.begin]];
        if (token < 0) {
          is_terminal = true;
        } else {
          child_token.push_back(token);
          max_token = std::max(max_token, token);
          next.push_back(range);
          ++live;
        }
      } else {
        keyed.clear();
        for (int64_t k = range.begin; k < range.end; ++k) keyed.emplace_back(key[order[k]], order[k]);
        std::sort(keyed.begin(), keyed.end());
        for (size_t k = 0; k < keyed.size(); ++k) order[range.begin + static_cast<int64_t>(k)] = keyed[k].second;
        size_t k = 0;
        while (k < keyed.size()) {
          size_t run_end = k;
          while (run_end < keyed.size() && keyed[run_end].first == keyed[k].first) ++run_end;
          if (keyed[k].first < 0) {
            is_terminal = true;
          } else {
            child_token.push_back(keyed[k].first);
            max_token = std::max(max_token, keyed[k].first);
            next.push_back({range.begin + static_cast<int64_t>(k), range.begin + static_cast<int64_t>(run_end)});
            live += static_cast<int64_t>(run_end - k);
          }
          k = run_end;
        }
      }
      terminal.push_back(is_terminal);
      trie->num_items_ += is_terminal;
    }
    std::swap(level, next);
    ++depth;
  }
  trie->max_token_ = max_token;
  child_begin.push_back(static_cast<uint32_t>(child_token.size()));
  child_begin.shrink_to_fit();
  child_token.shrink_to_fit();

  const int32_t num_nodes = static_cast<int32_t>(terminal.size());
  trie->terminal_.assign((static_cast<size_t>(num_nodes) + 63) / 64, 0);
  for (int32_t n = 0; n < num_nodes; ++n)
    if (terminal[n]) trie->terminal_[n >> 6] |= uint64_t{1} << (n & 63);
  trie->depth_ = depth - 1;
  trie->set_views(child_begin.data(), child_token.data(), trie->terminal_.data(), num_nodes);
  return trie;
}

void Trie::set_views(const uint32_t* child_begin, const int32_t* child_token, const uint64_t* terminal,
                     int32_t num_nodes) {
  view_.child_begin = child_begin;
  view_.child_token = child_token;
  view_.terminal = terminal;
  view_.num_nodes = num_nodes;
}

int32_t Trie::walk(const int32_t* seq, int64_t len) const {
  int32_t node = 0;
  for (int64_t i = 0; i < len && node >= 0; ++i) node = view_.child(node, seq[i]);
  return node;
}

}  // namespace pyfastseq
