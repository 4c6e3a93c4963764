#include "beam/beam_search.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/errors.h"

namespace pyfastseq {

BeamSearchState::BeamSearchState(const BeamConfig& config, std::vector<TrieView> tries,
                                 std::vector<int32_t> start_nodes)
    : config_(config), tries_(std::move(tries)), width_(std::min(config.max_length, kFirstWidth)) {
  const int32_t K = config_.num_beams, rows = num_rows();
  if (config_.batch_size < 1 || K < 1 || config_.max_length < 1)
    fail("batch_size, num_beams and max_length must be positive");
  if (!tries_.empty() && tries_.size() != 1 && tries_.size() != static_cast<size_t>(config_.batch_size))
    fail("tries must hold one trie or one per batch item (", config_.batch_size, "), got ", tries_.size());
  if (!tries_.empty() && start_nodes.size() != static_cast<size_t>(config_.batch_size))
    fail("start_nodes must hold one node per batch item");
  // transformers starts the spare beams at -1e9 so that the first step expands one beam; where an
  // item has fewer than 2 * num_beams real candidates their continuations fill the remaining
  // places (and may even fill hypothesis slots, which decides early stopping), so they are kept,
  // flagged as filler: filler hypotheses are never returned.
  scores_.assign(rows, -1.0e9f);
  nodes_.assign(rows, -1);
  filler_.assign(rows, 1);
  for (int32_t b = 0; b < config_.batch_size; ++b) {
    scores_[b * K] = 0.0f;
    filler_[b * K] = 0;
    if (!tries_.empty())
      for (int32_t j = 0; j < K; ++j) nodes_[b * K + j] = start_nodes[b];
  }
  seq_.assign(static_cast<size_t>(rows) * width_, config_.pad_id);
  next_seq_ = seq_;
  if (config_.record_token_scores) {
    token_scores_.assign(seq_.size(), 0.0f);
    next_token_scores_ = token_scores_;
  }
  next_scores_.assign(rows, -INFINITY);
  next_nodes_.assign(rows, -1);
  next_filler_.assign(rows, 0);
  next_tokens_.assign(rows, config_.pad_id);
  ends_.resize(2 * static_cast<size_t>(K));
  beam_idx_.resize(rows);
  for (int32_t r = 0; r < rows; ++r) beam_idx_[r] = r;
  hypotheses_.resize(config_.batch_size);
  done_.assign(config_.batch_size, 0);
  improvable_.assign(config_.batch_size, 1);
  const size_t cands = static_cast<size_t>(config_.batch_size) * 2 * K;
  cand_score_.resize(cands);
  cand_logprob_.resize(cands);
  cand_token_.resize(cands);
  cand_parent_.resize(cands);
  cand_node_.resize(cands);
  cand_count_.resize(config_.batch_size);
}

bool BeamSearchState::step(const void* logits, int64_t vocab, int64_t row_stride, LogitsDtype dtype,
                           const int64_t* delta_offsets, const int32_t* deltas) {
  check_open();
  // min_length as transformers' min_new_tokens: eos comes after min_length tokens at the earliest.
  // An entry without eos ends with the token that reaches its leaf, which counts as one of them.
  const bool eos_blocked = length_ < config_.min_length;
  const bool leaves_blocked = length_ + 1 < config_.min_length;

  BeamStepParams p = beam_step_params(logits, vocab, row_stride, static_cast<int32_t>(dtype), config_.batch_size,
                                      config_.num_beams);
  p.beam_scores = scores_.data();
  if (!tries_.empty()) {
    p.nodes = nodes_.data();
    p.tries = tries_.data();
    p.num_tries = static_cast<int32_t>(tries_.size());
    p.delta_offsets = delta_offsets;
    p.deltas = deltas;
  }
  p.normalize_allowed = config_.normalize_allowed;
  p.eos_id = config_.eos_id;
  p.blocked_token = eos_blocked ? config_.eos_id : -1;
  p.block_leaves = leaves_blocked && !tries_.empty();
  p.cand_score = cand_score_.data();
  p.cand_logprob = cand_logprob_.data();
  p.cand_token = cand_token_.data();
  p.cand_parent = cand_parent_.data();
  p.cand_node = cand_node_.data();
  p.cand_count = cand_count_.data();
  run_beam_step_cpu(p);
  return advance();
}

void BeamSearchState::check_open() const {
  if (length_ >= config_.max_length) fail("the search is already complete");
}

// Copies the first `used` entries of each of `rows` rows `from` wide into rows `to` wide.
template <typename T>
static void widen_rows(std::vector<T>& rows_of, int64_t rows, int32_t from, int32_t to, int32_t used, T fill) {
  std::vector<T> wider(static_cast<size_t>(rows) * to, fill);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(rows_of.begin() + r * from, used, wider.begin() + r * to);
  rows_of.swap(wider);
}

void BeamSearchState::widen() {
  const int32_t width = static_cast<int32_t>(std::min<int64_t>(config_.max_length, 2 * int64_t{width_}));
  const int64_t rows = num_rows();
  widen_rows(seq_, rows, width_, width, length_, config_.pad_id);
  next_seq_.assign(seq_.size(), config_.pad_id);  // every running row is rewritten before it is read
  if (config_.record_token_scores) {
    widen_rows(token_scores_, rows, width_, width, length_, 0.0f);
    next_token_scores_.assign(token_scores_.size(), 0.0f);
  }
  width_ = width;
}

bool BeamSearchState::advance() {
  if (length_ == width_) widen();
  bool any_open = false;
  for (int32_t b = 0; b < config_.batch_size; ++b) {
    if (done_[b]) {
      for (int32_t j = 0; j < config_.num_beams; ++j) kill_row(b * config_.num_beams + j);
    } else {
      advance_item(b);
    }
    any_open |= !done_[b];
  }
  std::swap(scores_, next_scores_);
  std::swap(nodes_, next_nodes_);
  std::swap(filler_, next_filler_);
  std::swap(seq_, next_seq_);
  std::swap(token_scores_, next_token_scores_);
  ++length_;
  return any_open;
}

bool BeamSearchState::finishes(int64_t c) const {
  if (cand_token_[c] == config_.eos_id) return true;
  if (tries_.empty()) return false;
  const TrieView& trie = tries_[tries_.size() == 1 ? 0 : c / (2 * config_.num_beams)];
  return trie.num_children(cand_node_[c]) == 0;
}

// transformers' `_get_running_beams_for_next_iteration`, `_update_finished_beams` and
// `_check_early_stop_heuristic` for one batch item, in its float32 arithmetic.
void BeamSearchState::advance_item(int32_t b) {
  const int32_t K = config_.num_beams, L = length_ + 1;
  const bool at_max = L == config_.max_length;
  const int64_t base = int64_t{b} * 2 * K;
  int32_t count = 0;  // candidates with a finite score (the rest are -inf in transformers)
  while (count < cand_count_[b] && cand_score_[base + count] != -INFINITY) ++count;

  // Candidates that end a hypothesis stay eligible as beams, 1e9 worse: they only run where too
  // few others exist, and then continue with eos only (kSpentNode).
  std::vector<std::pair<float, int32_t>>& keyed = keyed_;
  keyed.clear();
  for (int32_t i = 0; i < count; ++i) {
    const bool ends = finishes(base + i);
    ends_[i] = ends;
    keyed.push_back({(ends || at_max) ? cand_score_[base + i] + -1.0e9f : cand_score_[base + i], i});
    // Only the top num_beams candidates may finish; the others are backups for the beams.
    if ((ends || at_max) && i < K) add_hypothesis(b, base + i, ends);
  }
  const int32_t running = std::min(K, count);
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const std::pair<float, int32_t>& x, const std::pair<float, int32_t>& y) { return x.first > y.first; });
  for (int32_t j = 0; j < running; ++j) {
    const int32_t i = keyed[j].second;
    const int64_t c = base + i;
    const int32_t row = b * K + j, parent = cand_parent_[c];
    const bool spent = ends_[i] || at_max;
    next_scores_[row] = keyed[j].first;
    next_nodes_[row] = tries_.empty() ? -1 : spent ? kSpentNode : cand_node_[c];
    next_filler_[row] = filler_[parent] || spent;
    next_tokens_[row] = cand_token_[c];
    beam_idx_[row] = parent;
    std::copy_n(seq_.begin() + int64_t{parent} * width_, length_, next_seq_.begin() + int64_t{row} * width_);
    next_seq_[int64_t{row} * width_ + length_] = cand_token_[c];
    if (config_.record_token_scores) {
      std::copy_n(token_scores_.begin() + int64_t{parent} * width_, length_,
                  next_token_scores_.begin() + int64_t{row} * width_);
      next_token_scores_[int64_t{row} * width_ + length_] = cand_logprob_[c];
    }
  }
  for (int32_t j = running; j < K; ++j) kill_row(b * K + j);

  // Can a running beam still beat the worst kept hypothesis? With early_stopping="never" and a
  // positive length penalty the best length is max_length, otherwise the current one; an item
  // with a free hypothesis slot compares against -1e9.
  const float lp = config_.length_penalty;
  const bool never = config_.early_stopping == EarlyStopping::kNever;
  const double best_length = (never && lp > 0.0f) ? config_.max_length : L;
  const float best = running ? next_scores_[b * K] / static_cast<float>(std::pow(best_length, lp)) : -INFINITY;
  const std::vector<Hypothesis>& kept = hypotheses_[b];
  const bool full = static_cast<int32_t>(kept.size()) == K;
  const float worst = full ? kept.back().score : -1.0e9f;
  if (!(best > worst)) improvable_[b] = 0;
  // num_beams == 1 is greedy decoding: the first finished hypothesis ends the item.
  const bool stop_when_full = config_.early_stopping == EarlyStopping::kTrue || K == 1;
  done_[b] = !improvable_[b] || (full && stop_when_full) || at_max;
  if (done_[b])
    for (int32_t j = 0; j < K; ++j) kill_row(b * K + j);
}

void BeamSearchState::add_hypothesis(int32_t b, int64_t c, bool finished) {
  const int32_t L = length_ + 1, parent = cand_parent_[c];
  Hypothesis h;
  h.score = cand_score_[c] / static_cast<float>(std::pow(static_cast<double>(L), config_.length_penalty));
  // A hypothesis enters only by beating a free slot's -1e9 placeholder (and so never on a tie).
  if (!(h.score > -1.0e9f)) return;
  h.finished = finished;
  h.filler = filler_[parent] != 0;
  const auto src = seq_.begin() + int64_t{parent} * width_;
  h.tokens.assign(src, src + length_);
  h.tokens.push_back(cand_token_[c]);
  if (config_.record_token_scores) {
    const auto ts = token_scores_.begin() + int64_t{parent} * width_;
    h.token_scores.assign(ts, ts + length_);
    h.token_scores.push_back(cand_logprob_[c]);
  }
  std::vector<Hypothesis>& kept = hypotheses_[b];
  auto at = std::upper_bound(kept.begin(), kept.end(), h.score,
                             [](float s, const Hypothesis& k) { return s > k.score; });
  if (at - kept.begin() >= config_.num_beams) return;
  kept.insert(at, std::move(h));
  if (static_cast<int32_t>(kept.size()) > config_.num_beams) kept.pop_back();
}

void BeamSearchState::kill_row(int32_t row) {
  next_scores_[row] = -INFINITY;
  next_nodes_[row] = -1;
  next_tokens_[row] = config_.pad_id;
  beam_idx_[row] = row;
}

}  // namespace pyfastseq
