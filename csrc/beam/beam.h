// The fused beam step: from one step's logits, the running beam scores and (optionally) trie nodes,
// the best 2*num_beams continuations of every batch item.
//
// Per row it computes the log-softmax normaliser in one pass over the logits (max, then sum of
// exp), and in the constrained case reads only the row's allowed children (the trie node's edge
// range): no vocabulary-wide mask is ever built. Each row keeps its own best `num_candidates`
// children (partial sort); a batch item then merges its beams' lists by accumulated score, which is
// exactly the top-k over beams x vocabulary that transformers takes (masked entries are -inf there).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/errors.h"
#include "trie/trie_view.h"

namespace pyfastseq {

constexpr int32_t kSpentNode = -2;

// A log-softmax normaliser, log(sum(exp(x))), kept as max + log_sum with max the largest x, so that
// a log-prob is (x - max) - log_sum, as torch's log_softmax takes it: exact to float rounding for x
// near the max however large the logits, where x - (max + log_sum) loses the bits of log_sum that
// the rounded sum drops (all of them at |max| ~ 1e8). max is -inf when every x is, +inf when one is
// (log_sum 0 in both).
struct Normaliser {
  float max = -INFINITY;
  float log_sum = 0.0f;
  PYFASTSEQ_HD float logprob(float x) const { return (x - max) - log_sum; }
  PYFASTSEQ_HD float logsumexp() const { return max + log_sum; }
};

enum class LogitsDtype : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct BeamStepParams {
  const void* logits = nullptr;  // [rows, vocab], unit stride along vocab
  int64_t vocab = 0;
  int64_t row_stride = 0;        // in elements
  LogitsDtype dtype = LogitsDtype::kFloat32;
  int32_t batch_size = 0;
  int32_t num_beams = 0;         // rows = batch_size * num_beams
  int32_t num_candidates = 0;    // kept per batch item (2 * num_beams)
  const float* beam_scores = nullptr;  // [rows] running scores; -inf marks a dead row (skipped)

  // Constrained search: nodes[r] is row r's trie node; tries has 1 view (shared) or batch_size.
  // A row at kSpentNode holds a hypothesis that already ended: as with transformers'
  // prefix_allowed_tokens_fn past the end of an entry, its only continuation is eos_id (none if -1).
  const int32_t* nodes = nullptr;      // null: unconstrained, every token of the vocabulary
  const TrieView* tries = nullptr;
  int32_t num_tries = 0;
  bool normalize_allowed = false;      // log-softmax over the allowed children, not the vocabulary
  int32_t eos_id = -1;

  // min_length: continuations that would finish a hypothesis are dropped. A constrained batch item
  // whose live rows are left with no allowed token of finite log-prob (so also by -inf logits) gets
  // every allowed token of those rows at log-prob 0, eos and leaves included, as transformers'
  // PrefixConstrainedLogitsProcessor does.
  int32_t blocked_token = -1;          // the eos id while finishing is blocked, else -1
  bool block_leaves = false;           // also drop children that are trie leaves

  // Lookahead (constrained only, may be null): row r's children get deltas[delta_offsets[r] + i]
  // in ascending token order; where some delta > 0 and the row has more than one child, the
  // children's full-vocabulary probabilities become p^(1/(delta+1)), renormalised over the children
  // to the mass they had (to 1 with normalize_allowed). An empty slice leaves the row unchanged.
  const int64_t* delta_offsets = nullptr;  // [rows + 1]
  const int32_t* deltas = nullptr;

  // CUDA only (may be null): one per trie, the bitmaps of its widest nodes' children. Rows at
  // those nodes take them when nothing needs each child's edge (normalize "full", no lookahead
  // deltas, no block_leaves).
  const WideNodes* wide = nullptr;

  // CUDA only (may be null): a step that finds *halted != kNoBeamStepError (an earlier step failed)
  // does nothing.
  const unsigned long long* halted = nullptr;

  // Outputs, [batch_size * num_candidates] each, every item's list sorted best first.
  float* cand_score = nullptr;     // beam score + token log-prob
  float* cand_logprob = nullptr;   // the token log-prob the beam added
  int32_t* cand_token = nullptr;
  int32_t* cand_parent = nullptr;  // the row the candidate continues
  int32_t* cand_node = nullptr;    // its trie node (-1 when unconstrained)
  int32_t* cand_count = nullptr;   // [batch_size] candidates found (< num_candidates near the trie's ends)
};

// The fields every step takes from its logits: [batch_size * num_beams, vocab] rows of `dtype_code`
// (a LogitsDtype) at row_stride, 2 * num_beams candidates kept. Throws InvalidArgument for an unknown
// dtype code or a non-positive batch_size / num_beams.
// Inline: the CUDA module's bindings use it without linking the CPU core.
inline BeamStepParams beam_step_params(const void* logits, int64_t vocab, int64_t row_stride, int32_t dtype_code,
                                       int32_t batch_size, int32_t num_beams) {
  if (dtype_code < 0 || dtype_code > 2) fail("logits dtype code must be 0, 1 or 2");
  if (batch_size < 1 || num_beams < 1) fail("batch_size and num_beams must be positive");
  BeamStepParams p;
  p.logits = logits;
  p.vocab = vocab;
  p.row_stride = row_stride;
  p.dtype = static_cast<LogitsDtype>(dtype_code);
  p.batch_size = batch_size;
  p.num_beams = num_beams;
  p.num_candidates = 2 * num_beams;
  return p;
}

// Throws InvalidArgument naming the row for NaN or +inf logits, a live row whose node is out of range or
// has no children, a child token >= vocab, or lookahead deltas that do not match the children.
void run_beam_step_cpu(const BeamStepParams& params);

// The CUDA step (beam_step.cu). Every pointer in params is device memory, p.tries included (an array
// of num_tries views), lookahead deltas included. Row errors are not thrown but recorded on the
// device, so the launch needs no synchronisation: *error (set to kNoBeamStepError before the
// launch, e.g. by memset 0xff) ends as the smallest row * 256 + code of a failing row, with the
// code's detail (node, token or delta) in the workspace's int32 [rows] array at byte offset
// beam_step_error_detail_offset.
constexpr unsigned long long kNoBeamStepError = ~0ull;
enum class BeamStepError : int32_t {
  kNaN = 1,
  kBadNode = 2,
  kNoChildren = 3,
  kTokenOutOfVocab = 4,
  kDeltaCount = 5,     // detail: the slice's length
  kNegativeDelta = 6,  // detail: the first negative delta
  kInfinite = 7,       // a +inf logit: no log-prob of the row is defined
};

// The workspace must be zeroed before its first launch (it holds counters that every launch leaves
// at zero again), and a launch must not run concurrently with another on the same workspace.
size_t beam_step_cuda_workspace_bytes(int64_t rows, int32_t num_candidates);
size_t beam_step_error_detail_offset(int64_t rows, int32_t num_candidates);
// Launches the step's kernel on `stream`; returns the cudaError_t of the launch.
int run_beam_step_cuda(const BeamStepParams& params, void* workspace, unsigned long long* error, void* stream);

}  // namespace pyfastseq
