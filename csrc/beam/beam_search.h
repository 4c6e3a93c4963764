// A beam search in progress: the running beams, and per batch item the finished hypotheses
// (transformers' BeamHypotheses / `_update_finished_beams`), advanced one fused step at a time.
//
// The driver (Python) calls the model, hands its logits to step(), and feeds next_tokens() /
// beam_idx() back to the model until step() returns false; results() then holds, per batch item,
// the best hypotheses best first.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "beam/beam.h"
#include "trie/trie_view.h"

namespace pyfastseq {

enum class EarlyStopping : int32_t { kFalse = 0, kTrue = 1, kNever = 2 };

struct BeamConfig {
  int32_t batch_size = 1;
  int32_t num_beams = 1;
  int32_t max_length = 1;      // new tokens
  int32_t min_length = 0;      // new tokens before eos (min_new_tokens); a leaf's token counts
  int32_t num_return_sequences = 1;
  float length_penalty = 1.0f;
  EarlyStopping early_stopping = EarlyStopping::kTrue;
  int32_t eos_id = -1;         // -1: only trie leaves (or max_length) end a hypothesis
  int32_t pad_id = 0;          // fed to dead rows and rows of finished batch items
  bool normalize_allowed = false;
  bool record_token_scores = false;
};

struct Hypothesis {
  float score = 0.0f;          // sum of token log-probs / len ** length_penalty
  bool finished = false;       // false: cut at max_length
  bool filler = false;         // descends from a spare or already-ended beam: never returned
  std::vector<int32_t> tokens;
  std::vector<float> token_scores;
};

class BeamSearchState {
 public:
  // tries: empty (unconstrained), one shared view, or one per batch item; start_nodes: one per item
  // (ignored when unconstrained). The views must outlive the state.
  BeamSearchState(const BeamConfig& config, std::vector<TrieView> tries, std::vector<int32_t> start_nodes);

  // Advances by one token from logits [batch_size * num_beams, vocab]; false once every batch item
  // is done (early stopping or max_length). Lookahead deltas as in BeamStepParams (may be null).
  bool step(const void* logits, int64_t vocab, int64_t row_stride, LogitsDtype dtype,
            const int64_t* delta_offsets, const int32_t* deltas);

  const BeamConfig& config() const { return config_; }
  int32_t num_rows() const { return config_.batch_size * config_.num_beams; }
  int32_t length() const { return length_; }                    // tokens generated so far
  const std::vector<int32_t>& next_tokens() const { return next_tokens_; }
  const std::vector<int32_t>& beam_idx() const { return beam_idx_; }
  const std::vector<int32_t>& nodes() const { return nodes_; }  // -1 dead / done, kSpentNode ended
  const std::vector<int32_t>& sequences() const { return seq_; }  // [rows, width], first length() valid
  const std::vector<std::vector<Hypothesis>>& results() const { return hypotheses_; }

 private:
  void check_open() const;
  bool advance();  // the bookkeeping on the candidate buffers
  bool finishes(int64_t c) const;
  void advance_item(int32_t b);
  void add_hypothesis(int32_t b, int64_t c, bool finished);
  void kill_row(int32_t row);
  void widen();  // doubles the token buffers' width, up to max_length

  // The token buffers' first width: max_length bounds a search without sizing its buffers, which
  // double as the hypotheses grow (max_length = 2**31 - 1 allocates nothing up front).
  static constexpr int32_t kFirstWidth = 64;

  BeamConfig config_;
  std::vector<TrieView> tries_;
  int32_t length_ = 0;
  int32_t width_ = 0;  // columns of seq_ and token_scores_
  std::vector<float> scores_;   // [rows], -inf: dead
  std::vector<int32_t> nodes_;  // [rows]
  std::vector<uint8_t> filler_, next_filler_;  // [rows] the row descends from a spare or ended beam
  std::vector<int32_t> seq_, next_seq_;              // [rows, width_]
  std::vector<float> token_scores_, next_token_scores_;  // same, when recorded
  std::vector<float> next_scores_;
  std::vector<int32_t> next_nodes_, next_tokens_, beam_idx_;
  std::vector<std::vector<Hypothesis>> hypotheses_;  // per item, <= num_beams, best first
  std::vector<uint8_t> done_, improvable_;
  // Candidate buffers for the fused step.
  std::vector<float> cand_score_, cand_logprob_;
  std::vector<int32_t> cand_token_, cand_parent_, cand_node_, cand_count_;
  std::vector<uint8_t> ends_;
  std::vector<std::pair<float, int32_t>> keyed_;
};

}  // namespace pyfastseq
