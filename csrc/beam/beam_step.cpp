#include <algorithm>
#include <cmath>
#include <vector>

#include "beam/beam.h"
#include "beam/logits_row.h"
#include "beam/logits_row_dispatch.h"
#include "common/errors.h"
#include "common/parallel.h"

namespace pyfastseq {
namespace {

// Moves the best `keep` of [first, last) by `order` to its front. Where the range is much longer
// than `keep` (a title trie's root has tens of thousands of children) a partial sort's heap rejects
// nearly every element with one comparison; otherwise selection is linear where the heap would pay
// a log factor on most elements (a semantic-ID node: 256 children, 2K = 128 kept at 64 beams).
template <class It, class Order>
void select_best(It first, It last, int64_t keep, Order order) {
  if (last - first > 16 * keep) {
    std::partial_sort(first, first + keep, last, order);
  } else {
    std::nth_element(first, first + keep, last, order);
  }
}

struct RowCandidate {
  float logprob;
  int32_t token;
  int32_t node;
};

// Better first: higher log-prob, then the lower token id (torch.topk's flat-index order on ties).
inline bool better(const RowCandidate& a, const RowCandidate& b) {
  return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
}

enum class RowStatus : int32_t { kOk, kNaN, kInfinite, kBadNode, kNoChildren, kTokenOutOfVocab, kDeltaCount, kNegativeDelta };

struct RowResult {
  RowStatus status = RowStatus::kOk;
  int64_t detail = 0;
};

// A normaliser that leaves no log-prob defined: NaN logits, or a +inf one (every log-prob would be
// -inf or NaN).
inline RowResult normaliser_status(bool nan, float max) {
  if (nan) return {RowStatus::kNaN, 0};
  if (max == INFINITY) return {RowStatus::kInfinite, 0};
  return {};
}

template <class Loader>
class StepKernel {
 public:
  using Bits = typename Loader::Bits;

  StepKernel(const BeamStepParams& p, std::vector<RowCandidate>& pool, std::vector<int32_t>& pool_count)
      : p_(p), pool_(pool), pool_count_(pool_count) {}

  // Fills row r's slice of the pool with its best children, in no particular order.
  RowResult row(int64_t r) const {
    RowCandidate* out = pool_.data() + r * p_.num_candidates;
    pool_count_[r] = 0;
    if (p_.beam_scores[r] == -INFINITY) return {};
    const Bits* logits = static_cast<const Bits*>(p_.logits) + r * p_.row_stride;
    return p_.nodes ? constrained_row(r, logits, out) : full_row(r, logits, out);
  }

 private:
  RowResult full_row(int64_t r, const Bits* logits, RowCandidate* out) const {
    bool nan = false;
    const Normaliser z = full_normaliser<Loader>(logits, p_.vocab, &nan);
    if (const RowResult bad = normaliser_status(nan, z.max); bad.status != RowStatus::kOk) return bad;
    if (z.max == -INFINITY) return {};  // every logit -inf: no token can follow
    thread_local std::vector<float> values;
    thread_local std::vector<int32_t> tokens;
    const int32_t keep = static_cast<int32_t>(std::min<int64_t>(p_.num_candidates, p_.vocab));
    const int32_t count = top_logits<Loader>(logits, p_.vocab, keep, p_.blocked_token, values, tokens);
    for (int32_t i = 0; i < count; ++i) out[i] = {z.logprob(values[i]), tokens[i], -1};
    pool_count_[r] = count;
    return {};
  }

  RowResult constrained_row(int64_t r, const Bits* logits, RowCandidate* out) const {
    const TrieView& trie = p_.tries[p_.num_tries == 1 ? 0 : r / p_.num_beams];
    const int32_t node = p_.nodes[r];
    if (node == kSpentNode) return spent_row(r, logits, out);
    if (node < 0 || node >= trie.num_nodes) return {RowStatus::kBadNode, node};
    const uint32_t lo = trie.child_begin[node], hi = trie.child_begin[node + 1];
    if (lo == hi) return {RowStatus::kNoChildren, node};
    const int64_t n = hi - lo;

    std::vector<RowCandidate>& kids = scratch_candidates();
    kids.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      const int32_t token = trie.child_token[lo + i];
      if (token >= p_.vocab) return {RowStatus::kTokenOutOfVocab, token};
      const float x = Loader::load(logits[token]);
      if (const RowResult bad = normaliser_status(x != x, x); bad.status != RowStatus::kOk) return bad;
      kids[i] = {x, token, static_cast<int32_t>(lo + i) + 1};
    }

    const int32_t* deltas = nullptr;
    if (p_.delta_offsets && p_.delta_offsets[r + 1] != p_.delta_offsets[r]) {
      const int64_t begin = p_.delta_offsets[r], count = p_.delta_offsets[r + 1] - begin;
      if (count != n) return {RowStatus::kDeltaCount, count};
      bool any_positive = false;
      for (int64_t i = 0; i < n; ++i) {
        if (p_.deltas[begin + i] < 0) return {RowStatus::kNegativeDelta, p_.deltas[begin + i]};
        any_positive |= p_.deltas[begin + i] > 0;
      }
      // The seed's rule acts only where there is a choice to reshape.
      if (any_positive && n > 1) deltas = p_.deltas + begin;
    }

    Normaliser z;
    if (p_.normalize_allowed && !deltas) {
      z = children_normaliser(kids);
    } else {
      bool nan = false;
      z = full_normaliser<Loader>(logits, p_.vocab, &nan);
      if (const RowResult bad = normaliser_status(nan, z.max); bad.status != RowStatus::kOk) return bad;
    }
    // Every logit the normaliser covers is -inf: no child can follow (rather than -inf - -inf = NaN).
    if (z.max == -INFINITY) return {};
    for (RowCandidate& c : kids) c.logprob = z.logprob(c.logprob);
    if (deltas) {
      // p^(1/(delta+1)) renormalised over the children to the mass they had (pyfastseq.reference.lcs.
      // lookahead_reshape): the seed's rule under normalize="allowed" (mass 1), and under "full" the
      // row keeps its total, so all-zero deltas are exactly the identity.
      const float mass = p_.normalize_allowed ? 0.0f : children_normaliser(kids).logsumexp();
      for (int64_t i = 0; i < n; ++i) kids[i].logprob /= static_cast<float>(deltas[i] + 1);
      const Normaliser reshaped = children_normaliser(kids);
      if (reshaped.max == -INFINITY) return {};  // every child impossible: no mass to reshape, none follows
      for (RowCandidate& c : kids) c.logprob = reshaped.logprob(c.logprob) + mass;
    }

    if (p_.blocked_token >= 0 || p_.block_leaves) {
      auto blocked = [&](const RowCandidate& c) {
        return c.token == p_.blocked_token || (p_.block_leaves && trie.num_children(c.node) == 0);
      };
      kids.erase(std::remove_if(kids.begin(), kids.end(), blocked), kids.end());
    }
    // The row's best `keep`, in no particular order: merge_item ranks the item's candidates itself.
    const int64_t keep = std::min<int64_t>(p_.num_candidates, static_cast<int64_t>(kids.size()));
    select_best(kids.begin(), kids.end(), keep, better);
    std::copy_n(kids.begin(), keep, out);
    pool_count_[r] = static_cast<int32_t>(keep);
    return {};
  }

  RowResult spent_row(int64_t r, const Bits* logits, RowCandidate* out) const {
    if (p_.delta_offsets && p_.delta_offsets[r + 1] != p_.delta_offsets[r])
      return {RowStatus::kDeltaCount, p_.delta_offsets[r + 1] - p_.delta_offsets[r]};
    if (p_.eos_id < 0 || p_.eos_id >= p_.vocab || p_.eos_id == p_.blocked_token) return {};
    float logprob = 0.0f;  // eos is the only allowed token
    if (!p_.normalize_allowed) {
      bool nan = false;
      const Normaliser z = full_normaliser<Loader>(logits, p_.vocab, &nan);
      if (const RowResult bad = normaliser_status(nan, z.max); bad.status != RowStatus::kOk) return bad;
      if (z.max == -INFINITY) return {};
      logprob = z.logprob(Loader::load(logits[p_.eos_id]));
    }
    out[0] = {logprob, p_.eos_id, kSpentNode};
    pool_count_[r] = 1;
    return {};
  }

  // The normaliser of the children's values, summed in double.
  static Normaliser children_normaliser(const std::vector<RowCandidate>& kids) {
    Normaliser z;
    for (const RowCandidate& c : kids) z.max = std::max(z.max, c.logprob);
    if (!std::isfinite(z.max)) return z;
    double sum = 0.0;
    for (const RowCandidate& c : kids) sum += std::exp(static_cast<double>(c.logprob - z.max));
    z.log_sum = static_cast<float>(std::log(sum));
    return z;
  }

  static std::vector<RowCandidate>& scratch_candidates() {
    thread_local std::vector<RowCandidate> buffer;
    return buffer;
  }

  const BeamStepParams& p_;
  std::vector<RowCandidate>& pool_;
  std::vector<int32_t>& pool_count_;
};

struct ItemCandidate {
  float score;
  int32_t pool_index;  // row * num_candidates + i
  int32_t row;
  int32_t token;
};

// Per batch item: the best num_candidates of its beams' lists by accumulated score. Ties go to the
// lower (beam, token), the flat beams x vocabulary order transformers' topk sees.
void merge_item(const BeamStepParams& p, const std::vector<RowCandidate>& pool,
                const std::vector<int32_t>& pool_count, int64_t b) {
  std::vector<ItemCandidate> all;
  all.reserve(static_cast<size_t>(p.num_beams) * p.num_candidates);
  for (int64_t r = b * p.num_beams; r < (b + 1) * p.num_beams; ++r)
    for (int32_t i = 0; i < pool_count[r]; ++i) {
      const RowCandidate& c = pool[r * p.num_candidates + i];
      all.push_back({p.beam_scores[r] + c.logprob, static_cast<int32_t>(r * p.num_candidates + i),
                     static_cast<int32_t>(r), c.token});
    }
  auto order = [](const ItemCandidate& a, const ItemCandidate& c) {
    if (a.score != c.score) return a.score > c.score;
    return a.row != c.row ? a.row < c.row : a.token < c.token;
  };
  const int64_t keep = std::min<int64_t>(p.num_candidates, static_cast<int64_t>(all.size()));
  select_best(all.begin(), all.end(), keep, order);
  std::sort(all.begin(), all.begin() + keep, order);
  for (int64_t i = 0; i < keep; ++i) {
    const int64_t o = b * p.num_candidates + i;
    const RowCandidate& c = pool[all[i].pool_index];
    p.cand_score[o] = all[i].score;
    p.cand_logprob[o] = c.logprob;
    p.cand_token[o] = c.token;
    p.cand_parent[o] = all[i].row;
    p.cand_node[o] = c.node;
  }
  p.cand_count[b] = static_cast<int32_t>(keep);
}

// transformers' PrefixConstrainedLogitsProcessor where no beam of item b has an allowed token with a
// finite log-prob (min_length blocks every way to end, or the model gives them all -inf): each live
// beam's allowed tokens, eos and leaves included, at log-prob 0. So the candidates are the beams by
// score (ties to the lower beam), each with its children in token order, eos alone for an ended
// hypothesis. The nodes were checked by the row pass.
void force_allowed(const BeamStepParams& p, int64_t b) {
  const TrieView& trie = p.tries[p.num_tries == 1 ? 0 : b];
  const int64_t first = b * p.num_beams;
  std::vector<int64_t> beams;
  for (int64_t r = first; r < first + p.num_beams; ++r)
    if (p.beam_scores[r] != -INFINITY) beams.push_back(r);
  std::stable_sort(beams.begin(), beams.end(),
                   [&](int64_t x, int64_t y) { return p.beam_scores[x] > p.beam_scores[y]; });
  int32_t n = 0;
  const auto emit = [&](int64_t r, int32_t token, int32_t node) {
    const int64_t o = b * p.num_candidates + n++;
    p.cand_score[o] = p.beam_scores[r];
    p.cand_logprob[o] = 0.0f;
    p.cand_token[o] = token;
    p.cand_parent[o] = static_cast<int32_t>(r);
    p.cand_node[o] = node;
  };
  for (const int64_t r : beams) {
    const int32_t node = p.nodes[r];
    if (node == kSpentNode) {
      if (p.eos_id >= 0 && p.eos_id < p.vocab && n < p.num_candidates) emit(r, p.eos_id, kSpentNode);
      continue;
    }
    for (uint32_t e = trie.child_begin[node]; e < trie.child_begin[node + 1] && n < p.num_candidates; ++e)
      emit(r, trie.child_token[e], static_cast<int32_t>(e) + 1);
  }
  p.cand_count[b] = n;
}

[[noreturn]] void report(int64_t row, const RowResult& e, const BeamStepParams& p) {
  switch (e.status) {
    case RowStatus::kNaN: fail("logits row ", row, " contains NaN");
    case RowStatus::kInfinite: fail("logits row ", row, " contains +inf");
    case RowStatus::kBadNode:
      fail("row ", row, " is a live beam but its trie node ", e.detail, " is out of range");
    case RowStatus::kNoChildren:
      fail("row ", row, " is a live beam at trie node ", e.detail,
           ", which has no children: the trie does not cover this decoding state (check the prefix / "
           "decoder start, and that the trie was built for this search)");
    case RowStatus::kTokenOutOfVocab:
      fail("the trie holds token id ", e.detail, " but logits has only ", p.vocab, " columns (vocabulary)");
    case RowStatus::kDeltaCount:
      fail("lookahead.deltas gave ", e.detail, " deltas for row ", row, ", which must be none (the row unchanged) or one per child of its node");
    case RowStatus::kNegativeDelta:
      fail("lookahead.deltas gave a negative delta (", e.detail, ") for row ", row);
    case RowStatus::kOk: break;
  }
  fail("internal error in the beam step");
}

// Logits a row reads: its children alone when normalised over them, else the whole vocabulary.
// Threads only pay off for large steps (and cost dearly on a busy machine), so this is estimated.
int64_t average_row_work(const BeamStepParams& p, int64_t rows) {
  if (!p.nodes || !p.normalize_allowed || p.delta_offsets) return p.vocab;
  int64_t total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const TrieView& trie = p.tries[p.num_tries == 1 ? 0 : r / p.num_beams];
    const int32_t node = p.nodes[r];
    if (p.beam_scores[r] != -INFINITY && node >= 0 && node < trie.num_nodes) total += trie.num_children(node);
  }
  return total / rows + 1;
}

template <class Loader>
void step(const BeamStepParams& p) {
  const int64_t rows = int64_t{p.batch_size} * p.num_beams;
  std::vector<RowCandidate> pool(static_cast<size_t>(rows) * p.num_candidates);
  std::vector<int32_t> pool_count(rows, 0);
  std::vector<RowResult> results(rows);
  const StepKernel<Loader> kernel(p, pool, pool_count);
  // Exceptions cannot leave a parallel region: rows record a status, reported in row order after.
  parallel_for(rows, average_row_work(p, rows), [&](int64_t r) { results[r] = kernel.row(r); });
  for (int64_t r = 0; r < rows; ++r)
    if (results[r].status != RowStatus::kOk) report(r, results[r], p);
  parallel_for(p.batch_size, int64_t{p.num_beams} * p.num_candidates * 16,
               [&](int64_t b) { merge_item(p, pool, pool_count, b); });
  if (p.nodes)
    for (int64_t b = 0; b < p.batch_size; ++b)
      if (p.cand_count[b] == 0 || p.cand_score[b * p.num_candidates] == -INFINITY) force_allowed(p, b);
}

}  // namespace

void run_beam_step_cpu(const BeamStepParams& p) {
  with_logits_loader(p.dtype, [&](auto loader) { step<decltype(loader)>(p); });
}

}  // namespace pyfastseq
