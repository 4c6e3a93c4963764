// The device search's bookkeeping: BeamSearchState::advance (beam_search.cpp) for every batch item
// at once, one block per item. The block reads the item's candidates into shared memory and marks
// the ones that end their hypotheses, with the item's kept hypotheses; thread 0 makes the item's
// decisions on those in shared memory (they are sequential by nature: each hypothesis insert
// depends on the last, and there are at most 2 * num_beams candidates, so a chain of dependent
// global loads per insert would dominate); the block then writes the hypotheses back and copies the
// token histories the decisions imply.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "beam/beam.h"
#include "beam/beam_select.h"

namespace pyfastseq {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxBeams = 1024;
constexpr float kEnded = -1.0e9f;  // transformers' penalty on beams that already ended

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

template <typename T>
__device__ __forceinline__ T* at(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

struct Half {  // one parity's running beams
  float* scores;
  int32_t* nodes;
  uint8_t* filler;
  int32_t* seq;
  float* token_scores;
};

__device__ Half half_of(const BeamSelectParams& p, int32_t h) {
  const DeviceBeamLayout& l = p.layout;
  return {at<float>(p.state, l.scores[h]), at<int32_t>(p.state, l.nodes[h]), at<uint8_t>(p.state, l.filler[h]),
          at<int32_t>(p.state, l.seq[h]), at<float>(p.state, l.token_scores[h])};
}

struct Shared {
  float score[2 * kMaxBeams];     // candidate i's score
  uint8_t spent[2 * kMaxBeams];   // candidate i ends its hypothesis (eos, trie leaf or max_length)
  uint8_t finishes[2 * kMaxBeams];  // ... by eos or at a trie leaf
  uint8_t parent_filler[2 * kMaxBeams];  // candidate i's parent is a filler beam
  int32_t hyp_order[kMaxBeams];   // the kept hypotheses' slots, best first (hyp_count of them)
  float hyp_score[kMaxBeams];     // each slot's score
  int32_t hyp_count;
  int32_t run_cand[kMaxBeams];    // candidate each running row takes
  float run_score[kMaxBeams];     // its running score (1e9 worse when it ended)
  int32_t slot_cand[kMaxBeams];   // the candidate whose tokens a hypothesis slot takes, -1 none
  int32_t count;                  // candidates with a finite score: a prefix of them
  int32_t running;
  bool done;
};

// transformers' `_update_finished_beams` insert for candidate i (BeamSearchState::add_hypothesis).
// The candidates come best first, so each one's place is after the last one's: the search for it
// starts at `from`. Returns where the next one's starts: after this one's place, or K when this one
// was not kept (no worse one can be).
__device__ int32_t add_hypothesis(const BeamSelectParams& p, Shared& sh, int32_t b, int32_t i, bool finished,
                                  float penalty, int32_t from) {
  const int32_t K = p.num_beams;
  const float score = sh.score[i] / penalty;
  if (!(score > kEnded)) return from;  // not a hypothesis at all
  const int32_t kept = sh.hyp_count;
  int32_t pos = from;  // upper bound: after every kept score >= this one
  while (pos < kept && !(score > sh.hyp_score[sh.hyp_order[pos]])) ++pos;
  if (pos >= K) return K;
  const int32_t slot = kept < K ? kept : sh.hyp_order[K - 1];  // a free slot, else the evicted worst
  const int32_t n = kept < K ? kept + 1 : K;
  for (int32_t q = n - 1; q > pos; --q) sh.hyp_order[q] = sh.hyp_order[q - 1];
  sh.hyp_order[pos] = slot;
  sh.hyp_count = n;
  sh.hyp_score[slot] = score;
  const int64_t at_slot = int64_t{b} * K + slot;
  at<int32_t>(p.state, p.layout.hyp_length)[at_slot] = p.length + 1;
  at<uint8_t>(p.state, p.layout.hyp_finished)[at_slot] = finished;
  at<uint8_t>(p.state, p.layout.hyp_filler)[at_slot] = sh.parent_filler[i];
  sh.slot_cand[slot] = i;
  return pos + 1;
}

// The item's candidates (sh.score, sh.spent, sh.finishes, sh.parent_filler, sh.count) and kept
// hypotheses (sh.hyp_*) into shared memory, by the whole block.
__device__ void read_candidates(const BeamSelectParams& p, const Half& cur, Shared& sh, int32_t b) {
  const int32_t K = p.num_beams;
  const int64_t base = int64_t{b} * 2 * K;
  if (threadIdx.x == 0) {
    sh.count = p.cand_count[b];
    sh.hyp_count = at<int32_t>(p.state, p.layout.hyp_count)[b];
  }
  for (int32_t s = threadIdx.x; s < K; s += kThreads) {
    sh.hyp_order[s] = at<int32_t>(p.state, p.layout.hyp_order)[int64_t{b} * K + s];
    sh.hyp_score[s] = at<float>(p.state, p.layout.hyp_score)[int64_t{b} * K + s];
  }
  __syncthreads();
  for (int32_t i = threadIdx.x; i < p.cand_count[b]; i += kThreads)
    if (p.cand_score[base + i] == -INFINITY) atomicMin(&sh.count, i);
  __syncthreads();
  const bool at_max = p.length + 1 == p.max_length;
  const TrieView* trie = p.tries ? p.tries + (p.num_tries == 1 ? 0 : b) : nullptr;
  for (int32_t i = threadIdx.x; i < sh.count; i += kThreads) {
    const int32_t node = p.cand_node[base + i];
    const bool leaf = trie && node >= 0 && node < trie->num_nodes && trie->num_children(node) == 0;
    const bool finishes = p.cand_token[base + i] == p.eos_id || leaf;
    sh.score[i] = p.cand_score[base + i];
    sh.finishes[i] = finishes;
    sh.spent[i] = finishes || at_max;
    sh.parent_filler[i] = cur.filler[p.cand_parent[base + i]];
  }
}

// Thread 0: the item's running rows (sh.run_*), hypotheses and done flag.
__device__ void decide(const BeamSelectParams& p, Shared& sh, int32_t b) {
  const int32_t K = p.num_beams, L = p.length + 1;
  const bool at_max = L == p.max_length;
  uint8_t* done = at<uint8_t>(p.state, p.layout.done) + b;
  sh.running = 0;
  sh.done = *done;
  if (sh.done) return;

  const int32_t count = sh.count;
  const float* penalty = at<float>(p.state, p.layout.penalty);
  // Loaded once: each insert stores to global memory, so the compiler would reload it for each.
  const float finished_penalty = penalty[L];
  // Only the top num_beams candidates may finish; the others are backups for the beams.
  for (int32_t i = 0, from = 0; i < min(count, K) && from < K; ++i)
    if (sh.spent[i]) from = add_hypothesis(p, sh, b, i, sh.finishes[i], finished_penalty, from);

  // The running beams: the candidates stably sorted by score, spent ones 1e9 worse. Both groups are
  // already in score order, so the sort is a merge (ties to the earlier candidate).
  const int32_t running = min(K, count);
  int32_t a = 0, e = 0;  // the next candidate that is not / is spent
  for (int32_t j = 0; j < running; ++j) {
    while (a < count && sh.spent[a]) ++a;
    while (e < count && !sh.spent[e]) ++e;
    const float key_a = a < count ? sh.score[a] : -INFINITY;
    const float key_e = e < count ? sh.score[e] + kEnded : -INFINITY;
    const bool take_a = a < count && (e >= count || key_a > key_e || (key_a == key_e && a < e));
    const int32_t i = take_a ? a++ : e++;
    sh.run_cand[j] = i;
    sh.run_score[j] = take_a ? key_a : key_e;
  }
  sh.running = running;

  // transformers' `_check_early_stop_heuristic` (see BeamSearchState::advance_item).
  const float lp = p.length_penalty;
  const bool never = p.early_stopping == 2;
  const float best = running ? sh.run_score[0] / penalty[(never && lp > 0.0f) ? p.max_length : L] : -INFINITY;
  const bool full = sh.hyp_count == K;
  const float worst = full ? sh.hyp_score[sh.hyp_order[K - 1]] : kEnded;
  uint8_t* improvable = at<uint8_t>(p.state, p.layout.improvable) + b;
  if (!(best > worst)) *improvable = 0;
  const bool stop_when_full = p.early_stopping == 1 || K == 1;
  sh.done = !*improvable || (full && stop_when_full) || at_max;
  *done = sh.done;
}

__global__ void __launch_bounds__(kThreads) beam_select_kernel(BeamSelectParams p) {
  __shared__ Shared sh;
  if (*p.error != kNoBeamStepError) {
    // The step failed: the state stays as it was, and later steps skip their work, so that the
    // error word and its detail keep what this step recorded until the host reads them.
    if (blockIdx.x == 0 && threadIdx.x == 0)
      *reinterpret_cast<unsigned long long*>(p.state + p.layout.halted) = *p.error;
    return;
  }
  const int32_t b = blockIdx.x, K = p.num_beams, L = p.length + 1, W = p.max_length;
  const int64_t base = int64_t{b} * 2 * K;
  const Half cur = half_of(p, p.parity), next = half_of(p, 1 - p.parity);
  for (int32_t s = threadIdx.x; s < K; s += kThreads) sh.slot_cand[s] = -1;
  read_candidates(p, cur, sh, b);
  __syncthreads();
  if (threadIdx.x == 0) decide(p, sh, b);
  __syncthreads();
  if (threadIdx.x == 0) at<int32_t>(p.state, p.layout.hyp_count)[b] = sh.hyp_count;
  for (int32_t s = threadIdx.x; s < K; s += kThreads) {
    at<int32_t>(p.state, p.layout.hyp_order)[int64_t{b} * K + s] = sh.hyp_order[s];
    at<float>(p.state, p.layout.hyp_score)[int64_t{b} * K + s] = sh.hyp_score[s];
  }

  // Hypotheses added this step: the parent's tokens, then the candidate's.
  int32_t* hyp_tokens = at<int32_t>(p.state, p.layout.hyp_tokens) + int64_t{b} * K * W;
  float* hyp_token_scores = at<float>(p.state, p.layout.hyp_token_scores) + int64_t{b} * K * W;
  // 64-bit positions: K * L need not fit in int32 (max_length is bounded only by the memory cap).
  for (int64_t t = threadIdx.x; t < int64_t{K} * L; t += kThreads) {
    const int32_t slot = static_cast<int32_t>(t / L), pos = static_cast<int32_t>(t % L), i = sh.slot_cand[slot];
    if (i < 0) continue;
    const int64_t parent = p.cand_parent[base + i], to = int64_t{slot} * W + pos, from = parent * W + pos;
    hyp_tokens[to] = pos < L - 1 ? cur.seq[from] : p.cand_token[base + i];
    if (p.record_token_scores) hyp_token_scores[to] = pos < L - 1 ? cur.token_scores[from] : p.cand_logprob[base + i];
  }

  // The running rows; the rest (all of them once the item is done) are dead and fed the pad token.
  int64_t* next_tokens = at<int64_t>(p.state, p.layout.next_tokens);
  int64_t* beam_idx = at<int64_t>(p.state, p.layout.beam_idx);
  const int32_t running = sh.done ? 0 : sh.running;
  for (int64_t t = threadIdx.x; t < int64_t{running} * L; t += kThreads) {
    const int32_t j = static_cast<int32_t>(t / L), pos = static_cast<int32_t>(t % L), i = sh.run_cand[j];
    const int64_t parent = p.cand_parent[base + i], to = (int64_t{b} * K + j) * W + pos, from = parent * W + pos;
    next.seq[to] = pos < L - 1 ? cur.seq[from] : p.cand_token[base + i];
    if (p.record_token_scores) next.token_scores[to] = pos < L - 1 ? cur.token_scores[from] : p.cand_logprob[base + i];
  }
  for (int32_t j = threadIdx.x; j < K; j += kThreads) {
    const int32_t row = b * K + j;
    if (j < running) {
      const int32_t i = sh.run_cand[j], parent = p.cand_parent[base + i];
      const bool spent = sh.spent[i];
      next.scores[row] = sh.run_score[j];
      next.nodes[row] = !p.tries ? -1 : spent ? kSpentNode : p.cand_node[base + i];
      next.filler[row] = cur.filler[parent] || spent;
      next_tokens[row] = p.cand_token[base + i];
      beam_idx[row] = parent;
    } else {
      next.scores[row] = -INFINITY;
      next.nodes[row] = -1;
      next.filler[row] = 0;
      next_tokens[row] = p.pad_id;
      beam_idx[row] = row;
    }
  }
}

}  // namespace

DeviceBeamLayout device_beam_layout(int32_t batch_size, int32_t num_beams, int32_t max_length,
                                    bool record_token_scores) {
  const size_t rows = static_cast<size_t>(batch_size) * num_beams, width = static_cast<size_t>(max_length);
  const size_t slots = rows;  // num_beams hypothesis slots per batch item
  DeviceBeamLayout l{};
  size_t end = 0;
  auto take = [&end](size_t bytes) {
    const size_t at = end;
    end += align_up(bytes);
    return at;
  };
  for (int h = 0; h < 2; ++h) {
    l.scores[h] = take(rows * sizeof(float));
    l.nodes[h] = take(rows * sizeof(int32_t));
    l.filler[h] = take(rows);
    l.seq[h] = take(rows * width * sizeof(int32_t));
    l.token_scores[h] = take(record_token_scores ? rows * width * sizeof(float) : 0);
  }
  l.next_tokens = take(rows * sizeof(int64_t));
  l.beam_idx = take(rows * sizeof(int64_t));
  l.penalty = take((width + 1) * sizeof(float));
  l.done = take(static_cast<size_t>(batch_size));
  l.improvable = take(static_cast<size_t>(batch_size));
  l.hyp_count = take(static_cast<size_t>(batch_size) * sizeof(int32_t));
  l.hyp_order = take(slots * sizeof(int32_t));
  l.hyp_score = take(slots * sizeof(float));
  l.hyp_length = take(slots * sizeof(int32_t));
  l.hyp_finished = take(slots);
  l.hyp_filler = take(slots);
  l.hyp_tokens = take(slots * width * sizeof(int32_t));
  l.hyp_token_scores = take(record_token_scores ? slots * width * sizeof(float) : 0);
  l.halted = take(sizeof(unsigned long long));
  l.bytes = end;
  return l;
}

int run_beam_select_cuda(const BeamSelectParams& p, void* stream) {
  if (p.batch_size < 1 || p.num_beams < 1 || p.num_beams > kMaxBeams || p.length < 0 || p.length >= p.max_length ||
      p.parity < 0 || p.parity > 1 || !p.state || !p.error)
    return static_cast<int>(cudaErrorInvalidValue);
  beam_select_kernel<<<static_cast<unsigned>(p.batch_size), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
