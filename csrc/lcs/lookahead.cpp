// The lookahead gain of seed 001 over a trie: a depth-first walk of each child's subtree carrying
// the LCS bit row, one word-op group per node, pruned by an exact bound and capped by max_nodes.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "common/errors.h"
#include "common/parallel.h"
#include "lcs/bitrow.h"
#include "lcs/lcs.h"

namespace pyfastseq {

void run_subtree_heights(const TrieView& trie, uint8_t* heights) {
  // Breadth-first numbering puts every child after its parent, so one backward pass suffices.
  for (int32_t n = trie.num_nodes - 1; n >= 0; --n) {
    int32_t h = 0;
    for (uint32_t e = trie.child_begin[n]; e < trie.child_begin[n + 1]; ++e) h = std::max<int32_t>(h, heights[e + 1] + 1);
    heights[n] = static_cast<uint8_t>(std::min(h, 255));
  }
}

void lookahead_row_offsets(const TrieView& trie, const int32_t* nodes, int64_t rows, int64_t* row_offsets) {
  row_offsets[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t n = nodes[r];
    if (n < -1 || n >= trie.num_nodes) fail("nodes[", r, "] must be -1 or a node id in [0, ", trie.num_nodes, "), got ", n);
    row_offsets[r + 1] = row_offsets[r] + (n < 0 ? 0 : trie.num_children(n));
  }
}

namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// A stack of (node, bound, bit row) frames with the rows in one flat word array.
struct Frames {
  std::vector<int32_t> node, bound;
  std::vector<uint64_t> rows;

  void clear() { node.clear(); bound.clear(); rows.clear(); }
  bool empty() const { return node.empty(); }
  void push(int32_t n, int32_t b, const uint64_t* row, int32_t words) {
    node.push_back(n);
    bound.push_back(b);
    rows.insert(rows.end(), row, row + words);
  }
  void append(const Frames& other) {
    node.insert(node.end(), other.node.begin(), other.node.end());
    bound.insert(bound.end(), other.bound.begin(), other.bound.end());
    rows.insert(rows.end(), other.rows.begin(), other.rows.end());
  }
};

struct Scratch {
  Frames stack, hits;
  std::vector<uint64_t> cur, next;
};

// The best LCS over the subtree of `child`, whose bit row is `row`, spending at most `budget` node
// visits below it (decremented). Sets `truncated` when the budget ran out with work left.
template <int kWords, class Rows>
int32_t search_child(const LookaheadParams& p, const Rows& rows, int64_t m, int32_t child, const uint64_t* row,
                     int64_t& budget, bool& truncated, Scratch& sc) {
  const int32_t words = rows.words;
  int32_t best = bitrow::lcs<kWords>(row, words);
  const int32_t ceiling = bitrow::bound<kWords>(row, words, m, p.heights[child]);
  if (best >= ceiling) return best;
  uint64_t* cur = sc.cur.data();
  uint64_t* next = sc.next.data();
  sc.stack.clear();
  sc.stack.push(child, ceiling, row, words);
  while (!sc.stack.empty()) {
    const int32_t v = sc.stack.node.back(), v_bound = sc.stack.bound.back();
    std::copy(sc.stack.rows.end() - words, sc.stack.rows.end(), cur);
    sc.stack.node.pop_back();
    sc.stack.bound.pop_back();
    sc.stack.rows.resize(sc.stack.rows.size() - static_cast<size_t>(words));
    if (v_bound <= best) continue;
    const int32_t v_lcs = bitrow::lcs<kWords>(cur, words);
    // Children that raise the LCS go on top of the stack, so the walk follows matches first and
    // finds a high best early, which prunes more.
    sc.hits.clear();
    for (uint32_t e = p.trie.child_begin[v]; e < p.trie.child_begin[v + 1]; ++e) {
      if (budget == 0) {
        truncated = true;
        return best;
      }
      --budget;
      const int32_t w = static_cast<int32_t>(e) + 1;
      bitrow::advance<kWords>(next, cur, bitrow::match<kWords>(rows, p.trie.child_token[e]), words);
      const int32_t w_lcs = bitrow::lcs<kWords>(next, words);
      if (w_lcs > best) {
        best = w_lcs;
        if (best >= ceiling) return best;
      }
      if (p.heights[w] == 0) continue;
      const int32_t w_bound = bitrow::bound<kWords>(next, words, m, p.heights[w]);
      if (w_bound <= best) continue;
      (w_lcs > v_lcs ? sc.hits : sc.stack).push(w, w_bound, next, words);
    }
    sc.stack.append(sc.hits);
  }
  return best;
}

struct RowJob {
  int64_t row;         // representative row
  int64_t segment_at;  // first generated index of the segment
};

// Deltas of one row's children. `budget` is the row's share of max_nodes.
template <int kWords, class Rows>
void row_deltas(const LookaheadParams& p, const Rows& rows, int64_t m, const RowJob& job, int64_t budget,
                LookaheadStats& stats, Scratch& sc) {
  const int32_t words = rows.words;
  sc.cur.resize(static_cast<size_t>(words));
  sc.next.resize(static_cast<size_t>(words));
  std::vector<uint64_t> base(static_cast<size_t>(words)), child_row(static_cast<size_t>(words));
  bitrow::reset<kWords>(base.data(), words);
  const int32_t* gen = p.generated + job.row * p.steps;
  for (int64_t t = job.segment_at; t < p.steps; ++t) bitrow::advance<kWords>(base.data(), base.data(), bitrow::match<kWords>(rows, gen[t]), words);
  const int32_t base_lcs = bitrow::lcs<kWords>(base.data(), words);

  const int32_t node = p.nodes[job.row];
  const uint32_t lo = p.trie.child_begin[node], hi = p.trie.child_begin[node + 1];
  int32_t* out = p.deltas + p.row_offsets[job.row];
  for (uint32_t e = lo; e < hi; ++e) {
    // Each child gets an equal share of what the earlier children left.
    const int64_t share = budget == kUnlimited ? kUnlimited : budget / (hi - e);
    int64_t left = share;
    bool truncated = false;
    bitrow::advance<kWords>(child_row.data(), base.data(), bitrow::match<kWords>(rows, p.trie.child_token[e]), words);
    const int32_t child = static_cast<int32_t>(e) + 1;
    out[e - lo] = search_child<kWords>(p, rows, m, child, child_row.data(), left, truncated, sc) - base_lcs;
    if (budget != kUnlimited) budget -= share - left;
    stats.visited += share - left;
    stats.truncated += truncated;
  }
}

}  // namespace

LookaheadStats run_lookahead(const LookaheadParams& p) {
  std::fill(p.deltas, p.deltas + p.row_offsets[p.rows], 0);
  // Rows at the same node of the same query share their path, hence their deltas: solve each
  // (query, node) once.
  std::vector<int64_t> order;
  for (int64_t r = 0; r < p.rows; ++r) {
    if (p.pattern_of_row[r] < 0 || p.pattern_of_row[r] >= p.num_patterns)
      fail("batch_index[", r, "] must be in [0, ", p.num_patterns, ") (one query per batch item), got ", p.pattern_of_row[r]);
    if (p.nodes[r] >= 0 && p.trie.num_children(p.nodes[r]) >= 2) order.push_back(r);
  }
  auto key = [&](int64_t r) { return std::make_pair(p.pattern_of_row[r], p.nodes[r]); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });

  std::vector<RowJob> jobs;
  std::vector<int64_t> job_of(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t r = order[i];
    if (i > 0 && key(order[i - 1]) == key(r)) {
      job_of[i] = job_of[i - 1];
      continue;
    }
    job_of[i] = -1;
    const int32_t* gen = p.generated + r * p.steps;
    int64_t at = 0;
    if (p.start_after >= 0) {
      at = std::find(gen, gen + p.steps, p.start_after) - gen + 1;
      if (at > p.steps) continue;  // start_after not decoded yet: the rule does not apply
    }
    job_of[i] = static_cast<int64_t>(jobs.size());
    jobs.push_back({r, at});
  }

  const int64_t njobs = static_cast<int64_t>(jobs.size());
  const int64_t row_budget = p.max_nodes < 0 || njobs == 0 ? kUnlimited : p.max_nodes / njobs;
  std::vector<LookaheadStats> job_stats(static_cast<size_t>(njobs));
  parallel_for(njobs, std::min<int64_t>(row_budget, int64_t{1} << 16), [&](int64_t j) {
    thread_local Scratch sc;
    const LcsPattern& q = *p.patterns[p.pattern_of_row[jobs[j].row]];
    q.visit([&](const auto& rows) {
      switch (rows.words) {
        case 1: return row_deltas<1>(p, rows, q.length(), jobs[j], row_budget, job_stats[j], sc);
        case 2: return row_deltas<2>(p, rows, q.length(), jobs[j], row_budget, job_stats[j], sc);
        default: return row_deltas<0>(p, rows, q.length(), jobs[j], row_budget, job_stats[j], sc);
      }
    });
  });

  for (size_t i = 0; i < order.size(); ++i) {
    if (job_of[i] < 0 || jobs[job_of[i]].row == order[i]) continue;
    const int64_t from = p.row_offsets[jobs[job_of[i]].row], to = p.row_offsets[order[i]];
    std::copy(p.deltas + from, p.deltas + p.row_offsets[jobs[job_of[i]].row + 1], p.deltas + to);
  }
  LookaheadStats total;
  for (const LookaheadStats& s : job_stats) {
    total.visited += s.visited;
    total.truncated += s.truncated;
  }
  return total;
}

}  // namespace pyfastseq
