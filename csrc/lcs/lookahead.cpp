// The lookahead gain of seed 001 over a trie: a level-by-level walk of the children's subtrees
// carrying the LCS bit row, one word-op group per node, pruned by an exact bound and capped by
// max_nodes.
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
    heights[n] = static_cast<uint8_t>(std::min(h, kSaturatedHeight));
  }
}

namespace {

// Where row r's segment starts (the index after its first start_after; 0 without one), or -1 when
// the rule leaves the row alone: dead, fewer than two children, or start_after not decoded yet.
int64_t segment_start(const LookaheadParams& p, int64_t r) {
  if (p.nodes[r] < 0 || p.trie.num_children(p.nodes[r]) < 2) return -1;
  if (p.start_after < 0) return 0;
  const int32_t* gen = p.generated + r * p.steps;
  const int64_t at = std::find(gen, gen + p.steps, p.start_after) - gen + 1;
  return at > p.steps ? -1 : at;
}

}  // namespace

void lookahead_row_offsets(const LookaheadParams& p, bool applying_only, int64_t* row_offsets) {
  row_offsets[0] = 0;
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t n = p.nodes[r];
    if (n < -1 || n >= p.trie.num_nodes) fail("nodes[", r, "] must be -1 or a node id in [0, ", p.trie.num_nodes, "), got ", n);
    const bool empty = n < 0 || (applying_only && segment_start(p, r) < 0);
    row_offsets[r + 1] = row_offsets[r] + (empty ? 0 : p.trie.num_children(n));
  }
}

namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// One level of the walk: the live nodes, the row child each descends from, its LCS and bound, and
// its bit row.
struct Level {
  std::vector<int32_t> node, child, lcs, bound;
  std::vector<uint64_t> rows;

  void clear() {
    node.clear();
    child.clear();
    lcs.clear();
    bound.clear();
    rows.clear();
  }
  size_t size() const { return node.size(); }
  void reserve(size_t n, int32_t words) {
    node.reserve(n);
    child.reserve(n);
    lcs.reserve(n);
    bound.reserve(n);
    rows.reserve(n * static_cast<size_t>(words));
  }
  template <int kWords>
  void push(int32_t n, int32_t c, int32_t l, int32_t b, const uint64_t* row, int32_t words) {
    node.push_back(n);
    child.push_back(c);
    lcs.push_back(l);
    bound.push_back(b);
    for (int32_t w = 0; w < bitrow::count<kWords>(words); ++w) rows.push_back(row[w]);
  }
};

struct RowJob {
  int64_t row;         // representative row
  int64_t segment_at;  // first generated index of the segment
};

// The bound of a node with LCS l, bit row `row` and subtree height h, when it can beat `best`;
// otherwise 0. min(m, l + h) settles most nodes before the exact bound's popcount. A saturated
// height stands for any height: as many more symbols as the query has bound the gain.
template <int kWords>
int32_t bound_above(const uint64_t* row, int32_t words, int64_t m, int32_t l, int32_t h, int32_t best) {
  if (h == kSaturatedHeight) h = static_cast<int32_t>(std::clamp<int64_t>(m, h, std::numeric_limits<int32_t>::max()));
  if (h == 0 || l + h <= best || m <= best) return 0;
  const int32_t b = bitrow::bound<kWords>(row, words, m, h);
  return b > best ? b : 0;
}

// Deltas of one row's children, walking all their subtrees one trie level at a time. Breadth-first
// numbering stores each level of a subtree as one id range, so every level streams through the
// CSR arrays in order. A node is expanded only while its bound beats the best of its row child;
// `budget` (the row's share of max_nodes) stops the walk before a level that would exceed it.
template <int kWords, class Rows>
void row_deltas(const LookaheadParams& p, const Rows& rows, int64_t m, const RowJob& job, int64_t budget,
                LookaheadStats& stats) {
  const TrieView& t = p.trie;
  const int32_t words = rows.words;
  std::vector<uint64_t> base(static_cast<size_t>(words)), row(static_cast<size_t>(words));
  bitrow::reset<kWords>(base.data(), words);
  const int32_t* gen = p.generated + job.row * p.steps;
  int32_t base_lcs = 0;
  for (int64_t i = job.segment_at; i < p.steps; ++i)
    base_lcs += bitrow::advance<kWords>(base.data(), base.data(), bitrow::match<kWords>(rows, gen[i]), words);

  // Level one: the row's children themselves, always evaluated.
  const int32_t node = p.nodes[job.row];
  const uint32_t first_edge = t.child_begin[node], num_children = t.child_begin[node + 1] - first_edge;
  std::vector<int32_t> best(num_children);
  Level level, next;
  level.reserve(num_children, words);
  for (uint32_t c = 0; c < num_children; ++c) {
    const int32_t w = static_cast<int32_t>(first_edge + c) + 1;
    const uint64_t* m_row = bitrow::match<kWords>(rows, t.child_token[first_edge + c]);
    const int32_t l = base_lcs + bitrow::advance<kWords>(row.data(), base.data(), m_row, words);
    best[c] = l;
    const int32_t b = bound_above<kWords>(row.data(), words, m, l, p.heights[w], l);
    if (b > 0) level.push<kWords>(w, static_cast<int32_t>(c), l, b, row.data(), words);
  }

  while (level.size() > 0) {
    int64_t planned = 0;
    for (size_t i = 0; i < level.size(); ++i) {
      if (level.bound[i] <= best[level.child[i]]) continue;
      const int32_t v = level.node[i];
      planned += t.num_children(v);
      // The trie rarely fits in cache: start fetching what the expansion below will read.
      __builtin_prefetch(t.child_token + t.child_begin[v]);
      __builtin_prefetch(p.heights + t.child_begin[v] + 1);
      __builtin_prefetch(t.child_begin + t.child_begin[v] + 1);
    }
    if (planned > budget) break;
    next.clear();
    next.reserve(static_cast<size_t>(planned), words);
    int64_t visited = 0;
    for (size_t i = 0; i < level.size(); ++i) {
      const int32_t c = level.child[i];
      int32_t top = best[c];
      if (level.bound[i] <= top) continue;  // best rose since this node was queued
      const uint64_t* parent = level.rows.data() + i * static_cast<size_t>(words);
      const int32_t v = level.node[i], v_lcs = level.lcs[i];
      const uint32_t lo = t.child_begin[v], hi = t.child_begin[v + 1];
      for (uint32_t e = lo; e < hi; ++e) {
        const int32_t w = static_cast<int32_t>(e) + 1;
        const int32_t l = v_lcs + bitrow::advance<kWords>(row.data(), parent, bitrow::match<kWords>(rows, t.child_token[e]), words);
        top = std::max(top, l);
        const int32_t b = bound_above<kWords>(row.data(), words, m, l, p.heights[w], top);
        if (b > 0) next.push<kWords>(w, c, l, b, row.data(), words);
      }
      best[c] = top;
      visited += hi - lo;
    }
    if (budget != kUnlimited) budget -= visited;
    stats.visited += visited;
    std::swap(level, next);
  }

  int32_t* out = p.deltas + p.row_offsets[job.row];
  for (uint32_t c = 0; c < num_children; ++c) out[c] = best[c] - base_lcs;
  // Children with live nodes still queued were cut short by the budget. Queued nodes stay ordered by
  // row child (each level is built in the order of the one before).
  int32_t last = -1;
  for (size_t i = 0; i < level.size(); ++i) {
    const int32_t c = level.child[i];
    if (level.bound[i] > best[c] && c != last) {
      ++stats.truncated;
      last = c;
    }
  }
}

// Nodes strictly below the children of `node` (pruning aside, what its walk would visit): each level
// of a subtree is one id range, so this costs one step per level.
int64_t nodes_below_children(const TrieView& t, int32_t node) {
  int64_t count = 0;
  uint32_t lo = t.child_begin[node] + 1, hi = t.child_begin[node + 1];  // the children's ids
  while (lo <= hi) {
    const uint32_t next_lo = t.child_begin[lo] + 1, next_hi = t.child_begin[hi + 1];
    if (next_lo > next_hi) break;
    count += next_hi - next_lo + 1;
    lo = next_lo;
    hi = next_hi;
  }
  return count;
}

// Each row's share of max_nodes, by water-filling over `need`: rows whose whole walk fits in an
// equal share of what is left get what they need, smallest first, and the rest split the remainder
// evenly.
std::vector<int64_t> share_budget(int64_t max_nodes, const std::vector<int64_t>& need) {
  std::vector<int64_t> budget(need.size(), kUnlimited);
  if (max_nodes < 0) return budget;
  std::vector<size_t> order(need.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return need[a] < need[b]; });
  int64_t left = max_nodes;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t j = order[k];
    budget[j] = std::min(need[j], left / static_cast<int64_t>(order.size() - k));
    left -= budget[j];
  }
  return budget;
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
    if (p.nodes[r] >= 0 && p.trie.num_children(p.nodes[r]) >= 2 && p.row_offsets[r + 1] > p.row_offsets[r])
      order.push_back(r);
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
    const int64_t at = segment_start(p, r);
    if (at < 0) continue;
    job_of[i] = static_cast<int64_t>(jobs.size());
    jobs.push_back({r, at});
  }

  const int64_t njobs = static_cast<int64_t>(jobs.size());
  std::vector<int64_t> need(jobs.size());
  int64_t total_need = 0;
  for (size_t j = 0; j < jobs.size(); ++j) {
    need[j] = nodes_below_children(p.trie, p.nodes[jobs[j].row]);
    total_need += need[j];
  }
  const std::vector<int64_t> budget = share_budget(p.max_nodes, need);
  const int64_t work = std::min(total_need, p.max_nodes < 0 ? total_need : p.max_nodes);
  std::vector<LookaheadStats> job_stats(static_cast<size_t>(njobs));
  // Between beam steps the trie is out of cache and a node costs a memory access (~0.1 us): threads
  // start at walks of ~8k nodes, where waking a worker is already the smaller cost.
  parallel_for_dynamic(njobs, njobs == 0 ? 0 : work * 16 / njobs, 1, [&](int64_t j) {
    const LcsPattern& q = *p.patterns[p.pattern_of_row[jobs[j].row]];
    q.visit([&](const auto& rows) {
      switch (rows.words) {
        case 1: return row_deltas<1>(p, rows, q.length(), jobs[j], budget[j], job_stats[j]);
        case 2: return row_deltas<2>(p, rows, q.length(), jobs[j], budget[j], job_stats[j]);
        default: return row_deltas<0>(p, rows, q.length(), jobs[j], budget[j], job_stats[j]);
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
