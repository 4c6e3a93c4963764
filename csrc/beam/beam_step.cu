// CUDA beam step: the same candidates as run_beam_step_cpu, in one launch and no host sync.
//
// 1. One block per row: the log-softmax normaliser in one online (max, sum-exp) pass over the row
//    (skipped under normalize_allowed, which reads only the children), then the row's best
//    num_candidates tokens: the whole vocabulary (unconstrained) or the trie node's children,
//    gathered through the CSR arrays, reshaped by the row's lookahead deltas if it has any.
//    Selection is a radix select on order-preserving float keys (four 8-bit digit histograms)
//    followed by a bitonic sort of the at most 2048 winners, so any beam width up to 1024 takes the
//    same path. Dense rows (beam widths up to 128) are read once: while the normaliser pass reads
//    them each thread keeps its best eight logits, which bound the selection and are its candidates,
//    and only a thread that may have dropped more reads its share again. Nodes whose children are a
//    sixteenth of the vocabulary or more are read the same way, as a bitmap over the row
//    (Trie._wide_nodes_on), and nothing is gathered; other nodes with over 1024 children bound the
//    selection from one pass over their children.
// 2. Per batch item, by the block that finishes the item's last row: the same selection over its
//    beams' lists by accumulated score. The lists are sorted, so their first entries bound it.
//
// Ordering matches the CPU step exactly: higher value first, ties to the lower token (rows) and to
// the lower (beam, token) (items); a tie at the k-th place is settled by a second radix select on
// that secondary order.
#include <cuda_runtime.h>

#include <cstdint>

#include "beam/beam.h"
#include "beam/block_select.cuh"
#include "beam/row_pass.cuh"

namespace pyfastseq {
namespace {

using namespace beam_kernels;  // the selections and the row pass this file's kernel is made of

struct Pool {
  float* logprob;    // [rows, C]
  int32_t* token;    // [rows, C]
  int32_t* node;     // [rows, C]
  int32_t* count;    // [rows]
  int32_t* detail;   // [rows] error detail
  int32_t* arrived;  // [batch] the item's rows done in this launch; zero between launches
};

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

Pool pool_of(void* workspace, int64_t rows, int32_t c) {
  char* base = static_cast<char*>(workspace);
  const size_t entries = static_cast<size_t>(rows) * c;
  Pool p;
  p.logprob = reinterpret_cast<float*>(base);
  base += align_up(entries * sizeof(float));
  p.token = reinterpret_cast<int32_t*>(base);
  base += align_up(entries * sizeof(int32_t));
  p.node = reinterpret_cast<int32_t*>(base);
  base += align_up(entries * sizeof(int32_t));
  p.count = reinterpret_cast<int32_t*>(base);
  p.detail = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) + beam_step_error_detail_offset(rows, c));
  p.arrived = p.detail + align_up(rows * sizeof(int32_t)) / sizeof(int32_t);
  return p;
}

__device__ __forceinline__ void record_error(unsigned long long* error, Pool pool, int64_t row, BeamStepError code,
                                             int32_t detail) {
  pool.detail[row] = detail;
  atomicMin(error, static_cast<unsigned long long>(row) * 256u + static_cast<unsigned>(code));
}

// Whether z leaves every log-prob defined: no NaN logit (a NaN max on the device) and no +inf one.
__device__ __forceinline__ bool normaliser_defined(const Normaliser& z) { return z.max == z.max && z.max != INFINITY; }

// Records a normaliser that leaves no log-prob defined (NaN logits, or a +inf one) as row r's error;
// whether it was one.
__device__ __forceinline__ bool normaliser_failed(const Normaliser& z, unsigned long long* error, Pool pool,
                                                  int64_t r) {
  if (normaliser_defined(z)) return false;
  if (threadIdx.x == 0)
    record_error(error, pool, r, z.max == z.max ? BeamStepError::kInfinite : BeamStepError::kNaN, 0);
  return true;
}

// Reports the first of a node's n children, in token order, that is out of the vocabulary or whose
// logit is NaN or +inf, as row r's error (the CPU step's order of checks); whether there was one.
template <class Bits>
__device__ bool reported_bad_child(const BeamStepParams& p, int64_t r, const Bits* logits, const TrieView& trie,
                                   uint32_t lo, int32_t n, Pool pool, unsigned long long* error, TopShared& sh) {
  if (threadIdx.x == 0) sh.bad_token = INT32_MAX;  // here: the index of the first bad child
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const int32_t token = trie.child_token[lo + i];
    const float x = token < p.vocab ? to_float(logits[token]) : 0.0f;
    if (token >= p.vocab || x != x || x == INFINITY) atomicMin(&sh.bad_token, i);
  }
  __syncthreads();
  const int32_t first = sh.bad_token;
  __syncthreads();
  if (first == INT32_MAX) return false;
  if (threadIdx.x == 0) {
    const int32_t token = trie.child_token[lo + first];
    if (token >= p.vocab) {
      record_error(error, pool, r, BeamStepError::kTokenOutOfVocab, token);
    } else {
      const float x = to_float(logits[token]);
      record_error(error, pool, r, x != x ? BeamStepError::kNaN : BeamStepError::kInfinite, 0);
    }
  }
  return true;
}

template <class Bits>
struct ChildRow {
  const Bits* logits;
  TrieView trie;
  uint32_t lo;
  Normaliser z;
  int32_t blocked;
  bool block_leaves;
  // Lookahead (null: none): p^(1/(delta+1)) renormalised to the children's log-mass `mass`, as
  // reshaped.logprob(logprob / (delta + 1)) + mass.
  const int32_t* deltas;
  Normaliser reshaped;
  float mass;
  __device__ int32_t token(int32_t i) const { return trie.child_token[lo + i]; }
  __device__ float value(int32_t i) const {
    const float logprob = z.logprob(to_float(logits[token(i)]));
    return deltas ? reshaped.logprob(logprob / static_cast<float>(deltas[i] + 1)) + mass : logprob;
  }
  __device__ uint32_t key(int32_t i) const {
    if (token(i) == blocked) return 0u;
    if (block_leaves && trie.num_children(static_cast<int32_t>(lo + i) + 1) == 0) return 0u;
    return order_key(value(i));
  }
  __device__ int64_t secondary(int32_t i) const { return i; }
};

// A wide node's children as items over the vocabulary: token t is one when its bit is set.
// Values, keys and order are ChildRow's (children ascend by token, so token order is child order).
template <class Bits>
struct BitmapRow {
  const Bits* logits;
  const uint32_t* bits;
  int64_t limit;
  Normaliser z;
  int32_t blocked;
  __device__ float value(int32_t t) const { return z.logprob(to_float(logits[t])); }
  // -inf children enter, as gathered ones do.
  __device__ bool eligible(int64_t t, float) const {
    return t < limit && ((bits[t >> 5] >> (t & 31)) & 1u) && t != blocked;
  }
  __device__ uint32_t key_of(int64_t t, float x) const { return eligible(t, x) ? order_key(z.logprob(x)) : 0u; }
  __device__ uint32_t key(int32_t t) const { return eligible(t, 0.0f) ? order_key(value(t)) : 0u; }
  __device__ int64_t secondary(int32_t t) const { return t; }
};

// A constrained "full" row at a wide node: the normaliser pass also keeps each thread's best
// allowed logits, so the children are never gathered and the row is read about once. Returns the
// candidates found, written to out_*.
template <class Bits>
__device__ int32_t wide_node_top(const BeamStepParams& p, int64_t r, const Bits* logits, const TrieView& trie,
                                 uint32_t lo, uint32_t hi, const uint32_t* bits, int64_t words, Pool pool,
                                 unsigned long long* error, TopShared& sh, float* out_logprob, int32_t* out_token,
                                 int32_t* out_node) {
  BitmapRow<Bits> items{logits, bits, words * 32, Normaliser{}, p.blocked_token};
  KeepBest<BitmapRow<Bits>> seen{items};
  const Normaliser z = row_normaliser(logits, p.vocab, sh, seen);
  // A NaN or +inf logit: reported as the CPU step reports it, the first bad child before the row.
  if (!normaliser_defined(z)) {
    if (!reported_bad_child(p, r, logits, trie, lo, static_cast<int32_t>(hi - lo), pool, error, sh))
      normaliser_failed(z, error, pool, r);
    return 0;
  }
  if (z.max == -INFINITY) return 0;
  items.z = z;
  // (x - max) - log_sum rounds monotonically in x, so the kept logits' keys map to the items' keys.
  const auto final_key = [&](uint32_t raw) { return order_key(z.logprob(from_order_key(raw))); };
  const int32_t k = kept_top(items, logits, p.vocab, p.num_candidates, seen.top, final_key, sh);
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t token = sh.item[t];
    out_logprob[t] = items.value(token);
    out_token[t] = token;
    out_node[t] = static_cast<int32_t>(trie.lower_bound(lo, hi, token)) + 1;
  }
  return k;
}

// The normaliser of a node's n children's value(i), summed in double as on the CPU.
template <class Children>
__device__ Normaliser children_normaliser(const Children& children, int32_t n, TopShared& sh) {
  float m = -INFINITY;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) m = fmaxf(m, children.value(i));
  const float M = block_max(m, sh);
  if (!isfinite(M)) return {M, 0.0f};
  double sum = 0.0;
  for (int32_t i = threadIdx.x; i < n; i += kThreads) sum += exp(static_cast<double>(children.value(i) - M));
  return {M, static_cast<float>(log(block_sum(sum, sh.ds)))};
}

// Row r's lookahead deltas when they reshape it (a slice of one delta per child with some delta > 0
// and more than one child), else null. A slice of another length, or a negative delta, records the
// error and sets *failed. Every thread of the block must call it.
__device__ const int32_t* row_deltas(const BeamStepParams& p, int64_t r, int32_t n, Pool pool,
                                     unsigned long long* error, TopShared& sh, bool* failed) {
  *failed = false;
  if (!p.delta_offsets) return nullptr;
  const int64_t begin = p.delta_offsets[r], count = p.delta_offsets[r + 1] - begin;
  if (count == 0) return nullptr;
  if (count != n) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kDeltaCount, static_cast<int32_t>(count));
    *failed = true;
    return nullptr;
  }
  if (threadIdx.x == 0) {
    sh.flag = 0;
    sh.bad_token = INT32_MAX;  // here: the first child with a negative delta
  }
  __syncthreads();
  for (int32_t i = threadIdx.x; i < n; i += kThreads) {
    const int32_t d = p.deltas[begin + i];
    if (d < 0) atomicMin(&sh.bad_token, i);
    if (d > 0) sh.flag = 1;
  }
  __syncthreads();
  const bool any_positive = sh.flag != 0;
  const int32_t first_negative = sh.bad_token;
  __syncthreads();
  if (first_negative != INT32_MAX) {
    if (threadIdx.x == 0)
      record_error(error, pool, r, BeamStepError::kNegativeDelta, p.deltas[begin + first_negative]);
    *failed = true;
    return nullptr;
  }
  // The seed's rule acts only where there is a choice to reshape.
  return any_positive && n > 1 ? p.deltas + begin : nullptr;
}

// Row blockIdx.x's candidates into the pool, best first. Returns false, having done nothing, when an
// earlier launch failed (*p.halted).
template <class Bits>
__device__ bool row_candidates(const BeamStepParams& p, Pool pool, unsigned long long* error, TopShared& sh) {
  const int64_t r = blockIdx.x;
  // The row's first loads go out together, ahead of any branch on them: each is a round trip to
  // memory, and a row at a small node costs a chain of a few more (its children, their logits).
  const unsigned long long halted = p.halted ? *p.halted : kNoBeamStepError;
  const float beam_score = p.beam_scores[r];
  const int64_t trie_index = p.num_tries == 1 ? 0 : r / p.num_beams;
  const int32_t node = p.nodes ? p.nodes[r] : 0;
  const TrieView trie = p.nodes ? p.tries[trie_index] : TrieView{};
  if (halted != kNoBeamStepError) return false;  // written by an earlier launch: no block races it
  const int32_t C = p.num_candidates;
  float* out_logprob = pool.logprob + r * C;
  int32_t* out_token = pool.token + r * C;
  int32_t* out_node = pool.node + r * C;
  if (threadIdx.x == 0) pool.count[r] = 0;
  if (beam_score == -INFINITY) return true;
  const Bits* logits = static_cast<const Bits*>(p.logits) + r * p.row_stride;

  if (!p.nodes) {
    const DenseRow<Bits> items{logits, p.blocked_token};
    KeepBest<DenseRow<Bits>> seen{items};
    const Normaliser z = row_normaliser(logits, p.vocab, sh, seen);
    if (normaliser_failed(z, error, pool, r) || z.max == -INFINITY) return true;  // -inf: no token can follow
    const int32_t k = kept_top(items, logits, p.vocab, C, seen.top, [](uint32_t raw) { return raw; }, sh);
    for (int32_t t = threadIdx.x; t < k; t += kThreads) {
      out_logprob[t] = z.logprob(items.value(sh.item[t]));
      out_token[t] = sh.item[t];
      out_node[t] = -1;
    }
    if (threadIdx.x == 0) pool.count[r] = k;
    return true;
  }

  if (node == kSpentNode) {
    // An ended hypothesis continues with eos alone (and has no children for lookahead deltas).
    if (p.delta_offsets && p.delta_offsets[r + 1] != p.delta_offsets[r]) {
      if (threadIdx.x == 0)
        record_error(error, pool, r, BeamStepError::kDeltaCount,
                     static_cast<int32_t>(p.delta_offsets[r + 1] - p.delta_offsets[r]));
      return true;
    }
    if (p.eos_id < 0 || p.eos_id >= p.vocab || p.eos_id == p.blocked_token) return true;
    float logprob = 0.0f;
    if (!p.normalize_allowed) {
      const Normaliser z = row_normaliser(logits, p.vocab, sh);
      if (normaliser_failed(z, error, pool, r) || z.max == -INFINITY) return true;
      logprob = z.logprob(to_float(logits[p.eos_id]));
    }
    if (threadIdx.x == 0) {
      out_logprob[0] = logprob;
      out_token[0] = p.eos_id;
      out_node[0] = kSpentNode;
      pool.count[r] = 1;
    }
    return true;
  }
  if (node < 0 || node >= trie.num_nodes) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kBadNode, node);
    return true;
  }
  const uint32_t lo = trie.child_begin[node], hi = trie.child_begin[node + 1];
  if (lo == hi) {
    if (threadIdx.x == 0) record_error(error, pool, r, BeamStepError::kNoChildren, node);
    return true;
  }
  const int32_t n = static_cast<int32_t>(hi - lo);

  // Nodes with a bitmap (Trie._wide_nodes_on) are read through it when each child's own edge is
  // not needed.
  const bool no_deltas = !p.delta_offsets || p.delta_offsets[r + 1] == p.delta_offsets[r];
  if (p.wide && !p.normalize_allowed && !p.block_leaves && no_deltas && trie.child_token[hi - 1] < p.vocab) {
    const WideNodes wide = p.wide[trie_index];
    if (const uint32_t* bits = wide.children_of(node)) {
      const int32_t k = wide_node_top(p, r, logits, trie, lo, hi, bits, wide.words, pool, error, sh, out_logprob,
                                      out_token, out_node);
      if (threadIdx.x == 0) pool.count[r] = k;
      return true;
    }
  }

  if (reported_bad_child(p, r, logits, trie, lo, n, pool, error, sh)) return true;

  bool failed;
  const int32_t* deltas = row_deltas(p, r, n, pool, error, sh, &failed);
  if (failed) return true;
  // The normaliser (0, 0) leaves values as they are: the children's own is taken over their logits.
  const Normaliser identity{0.0f, 0.0f};
  ChildRow<Bits> items{logits, trie, lo, identity, p.blocked_token, p.block_leaves, nullptr, identity, 0.0f};
  const Normaliser z =
      p.normalize_allowed && !deltas ? children_normaliser(items, n, sh) : row_normaliser(logits, p.vocab, sh);
  // Every logit the normaliser covers is -inf: no child can follow (rather than -inf - -inf = NaN,
  // which would rank first on the device), as on the CPU.
  if (normaliser_failed(z, error, pool, r) || z.max == -INFINITY) return true;
  items.z = z;
  if (deltas) {
    // The children keep the mass they had: 1 under normalize_allowed, their share of the row under
    // "full" (so all-zero deltas would be the identity), as on the CPU.
    const float mass = p.normalize_allowed ? 0.0f : children_normaliser(items, n, sh).logsumexp();
    items.deltas = deltas;
    const Normaliser reshaped = children_normaliser(items, n, sh);
    if (reshaped.max == -INFINITY) return true;  // every child impossible: no mass to reshape, none follows
    items.reshaped = reshaped;
    items.mass = mass;
  }
  const int32_t k = bounded_top(items, n, C, bits_below(n), sh);
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t i = sh.item[t];
    out_logprob[t] = items.value(i);
    out_token[t] = items.token(i);
    out_node[t] = static_cast<int32_t>(lo + i) + 1;
  }
  if (threadIdx.x == 0) pool.count[r] = k;
  return true;
}

// A batch item's candidates: entry i of beam j's list is item j * C + i. Other blocks of this launch
// wrote the lists (and the nodes and the error), so the merge reads them with __ldcg, from L2 past
// the SM's L1: L1 is not coherent between SMs, and a line of them may sit there from an earlier read.
struct ItemLists {
  const float* beam_scores;  // the item's K rows
  const float* logprob;
  const int32_t* token;
  const int32_t* count;
  int32_t C;
  __device__ float score(int32_t e) const { return beam_scores[e / C] + __ldcg(logprob + e); }
  __device__ uint32_t key(int32_t e) const { return e % C < __ldcg(count + e / C) ? order_key(score(e)) : 0u; }
  __device__ int64_t secondary(int32_t e) const {
    return (static_cast<int64_t>(e / C) << 32) | static_cast<uint32_t>(__ldcg(token + e));
  }
};

// The entries of some of an item's lists past their first `skip`: entry i is entry skip + i % rest
// of list lists[i / rest].
struct ListTails {
  const ItemLists& items;
  const int32_t* lists;
  int32_t skip, rest;
  __device__ int32_t entry(int32_t i) const { return lists[i / rest] * items.C + skip + i % rest; }
  __device__ uint32_t key(int32_t i) const { return items.key(entry(i)); }
};

// bounded_top over a batch item's lists when they are at most one per thread. Each list is sorted
// best first (as its row's block writes it, and beam score + logprob keeps it), so a list's first few
// entries are its best keys and give the selection a bound without reading the rest; only the
// lists whose heads all pass the bound ("deep" ones, usually a few) are read further, by the
// whole block. Every thread of the block must call it.
__device__ int32_t sorted_lists_top(const ItemLists& items, int32_t lists, int32_t want, int secondary_bits,
                                    TopShared& sh) {
  const int tid = threadIdx.x;
  const int32_t C = items.C;
  const int32_t head = min(kKept, min(kStaged / lists, C));  // every list's head fits the staging area
  uint32_t key[kKept], last = 0;  // last: the key of the head's last entry
  int32_t count = 0;
  if (tid < lists) count = __ldcg(items.count + tid);
#pragma unroll
  for (int i = 0; i < kKept; ++i) {
    key[i] = tid < lists && i < head && i < count ? items.key(tid * C + i) : 0u;
    if (i == head - 1) last = key[i];  // static indices: the keys stay in registers
  }
  if (tid == 0) sh.deep_count = 0;  // ordered before its use by kth_staged_key's barriers
  // With fewer heads than wanted, every entry counts: the bound is the least key.
  const uint32_t bound = kth_staged_key(key, want, 1u, sh);
#pragma unroll
  for (int i = 0; i < kKept; ++i)
    if (key[i] >= bound) stage(key[i], tid * C + i, sh);  // key 0 (none) is below every bound
  if (count > head && last >= bound) sh.deep[atomicAdd(&sh.deep_count, 1)] = tid;
  __syncthreads();
  const ListTails tails{items, sh.deep, head, C - head};
  for_each_key(tails, sh.deep_count * tails.rest, [&](uint32_t k, int32_t i) {
    if (k >= bound) stage(k, tails.entry(i), sh);
  });
  return staged_top(items, lists * C, want, secondary_bits, bound, sh);
}

// transformers' PrefixConstrainedLogitsProcessor where no beam of item b has an allowed token with a
// finite log-prob: each live beam's allowed tokens at log-prob 0, the beams by score (ties to the
// lower beam), each with its children in token order, eos alone for an ended hypothesis, as the CPU
// step's force_allowed. The threads rank the beams; thread 0 writes the candidates (a rare path).
__device__ void force_allowed(const BeamStepParams& p, int64_t b, TopShared& sh) {
  const int64_t first = b * p.num_beams;
  const int32_t K = p.num_beams, C = p.num_candidates;
  const float* scores = p.beam_scores + first;
  for (int32_t j = threadIdx.x; j < K; j += kThreads) {
    const float s = scores[j];
    if (s == -INFINITY) continue;
    int32_t rank = 0;  // dead beams (-inf) never rank above a live one
    for (int32_t i = 0; i < K; ++i) rank += scores[i] > s || (scores[i] == s && i < j);
    sh.item[rank] = j;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  const TrieView trie = p.tries[p.num_tries == 1 ? 0 : b];
  int32_t live = 0;
  for (int32_t j = 0; j < K; ++j) live += scores[j] != -INFINITY;
  int32_t n = 0;
  const auto emit = [&](int32_t j, int32_t token, int32_t node) {
    const int64_t o = b * C + n++;
    p.cand_score[o] = scores[j];
    p.cand_logprob[o] = 0.0f;
    p.cand_token[o] = token;
    p.cand_parent[o] = static_cast<int32_t>(first + j);
    p.cand_node[o] = node;
  };
  for (int32_t q = 0; q < live && n < C; ++q) {
    const int32_t j = sh.item[q];
    const int32_t node = p.nodes[first + j];
    if (node == kSpentNode) {
      if (p.eos_id >= 0 && p.eos_id < p.vocab) emit(j, p.eos_id, kSpentNode);
      continue;
    }
    for (uint32_t e = trie.child_begin[node]; e < trie.child_begin[node + 1] && n < C; ++e)
      emit(j, trie.child_token[e], static_cast<int32_t>(e) + 1);
  }
  p.cand_count[b] = n;
}

// Batch item b's candidates from its rows' lists.
__device__ void merge_item(const BeamStepParams& p, Pool pool, int64_t b, TopShared& sh) {
  const int64_t first = b * p.num_beams;
  const int32_t C = p.num_candidates;
  const ItemLists items{p.beam_scores + first, pool.logprob + first * C, pool.token + first * C, pool.count + first, C};
  const int32_t n = p.num_beams * C;
  const int secondary_bits = 32 + bits_below(p.num_beams);
  const int32_t k = p.num_beams <= kThreads ? sorted_lists_top(items, p.num_beams, C, secondary_bits, sh)
                                            : bounded_top(items, n, C, secondary_bits, sh);
  if (p.nodes && (k == 0 || items.score(sh.item[0]) == -INFINITY)) {
    __syncthreads();  // every thread has read sh.item[0]
    force_allowed(p, b, sh);
    return;
  }
  for (int32_t t = threadIdx.x; t < k; t += kThreads) {
    const int32_t e = sh.item[t];
    const int64_t o = b * C + t;
    p.cand_score[o] = items.score(e);
    p.cand_logprob[o] = __ldcg(items.logprob + e);
    p.cand_token[o] = __ldcg(items.token + e);
    p.cand_parent[o] = static_cast<int32_t>(first + e / C);
    p.cand_node[o] = __ldcg(pool.node + first * C + e);
  }
  if (threadIdx.x == 0) p.cand_count[b] = k;
}

// One block per row; the block that finishes an item's last row also merges the item, so that the
// step is one launch and an item's merge overlaps other items' rows. Each row's block announces its
// list on the item's arrival count after a fence; the block that completes the count resets it
// for the next launch. Three blocks per SM, so 80 registers: the sm_90 build spills a few hundred
// bytes, none of it in the loops of the dense pass or of the sums, and a few words an iteration in
// the wide-node pass's loop.
template <class Bits>
__global__ void __launch_bounds__(kThreads, 3) beam_step_kernel(BeamStepParams p, Pool pool, unsigned long long* error) {
  __shared__ TopShared sh;
  // Every block arrives, halted or not, so that the counts end at zero whatever happened.
  const bool ran = row_candidates<Bits>(p, pool, error, sh);
  const int64_t b = blockIdx.x / p.num_beams;
  __threadfence();  // this thread's writes to the row's list, before the arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    const bool last = atomicAdd(&pool.arrived[b], 1) == p.num_beams - 1;
    __threadfence();  // the other rows' lists, after their arrivals
    if (last) pool.arrived[b] = 0;
    // A failed row makes the whole step an error: skip the work (the host raises).
    sh.flag = last && ran && __ldcg(error) == kNoBeamStepError;
  }
  __syncthreads();
  if (sh.flag) merge_item(p, pool, b, sh);
}

}  // namespace

size_t beam_step_cuda_workspace_bytes(int64_t rows, int32_t num_candidates) {
  const size_t entries = static_cast<size_t>(rows) * num_candidates;
  return align_up(entries * sizeof(float)) + 2 * align_up(entries * sizeof(int32_t)) +
         3 * align_up(rows * sizeof(int32_t));
}

size_t beam_step_error_detail_offset(int64_t rows, int32_t num_candidates) {
  const size_t entries = static_cast<size_t>(rows) * num_candidates;
  return align_up(entries * sizeof(float)) + 2 * align_up(entries * sizeof(int32_t)) + align_up(rows * sizeof(int32_t));
}

int run_beam_step_cuda(const BeamStepParams& p, void* workspace, unsigned long long* error, void* stream) {
  if (p.num_candidates < 1 || p.num_candidates > kMaxSlots) return static_cast<int>(cudaErrorInvalidValue);
  // The blocks' int32 strided loops (i += kKeyLoads * kThreads at most) must not wrap past the last column.
  if (p.vocab > INT32_MAX - kKeyLoads * kThreads) return static_cast<int>(cudaErrorInvalidValue);
  if (int64_t{p.num_beams} * p.num_candidates >= INT32_MAX) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t rows = int64_t{p.batch_size} * p.num_beams;
  if (rows == 0) return 0;
  const Pool pool = pool_of(workspace, rows, p.num_candidates);
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks = static_cast<unsigned>(rows);
  switch (p.dtype) {
    case LogitsDtype::kFloat32: beam_step_kernel<float><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
    case LogitsDtype::kFloat16: beam_step_kernel<Half><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
    case LogitsDtype::kBFloat16: beam_step_kernel<BHalf><<<blocks, kThreads, 0, s>>>(p, pool, error); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
