#include <algorithm>
#include <cfloat>
#include <cmath>
#include <type_traits>
#include <vector>

#include "beam/logits_row.h"
#include "beam/logits_row_dispatch.h"
#include "common/cpu.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "sampling/row_weights.h"
#include "sampling/row_weights_simd.h"
#include "sampling/sampling.h"

namespace pyfastseq {
namespace {

template <class Loader>
double weights_of(const typename Loader::Bits* row, int64_t n, float inv_t, float* w) {
#if PYFASTSEQ_AVX2
  if (cpu_has_avx512()) {
    if constexpr (std::is_same_v<Loader, Float32Loader>) return pyfastseq_row_weights_f32_avx512(row, n, inv_t, w);
    if constexpr (std::is_same_v<Loader, Float16Loader>) return pyfastseq_row_weights_f16_avx512(row, n, inv_t, w);
    if constexpr (std::is_same_v<Loader, BFloat16Loader>) return pyfastseq_row_weights_bf16_avx512(row, n, inv_t, w);
  }
  if (cpu_has_avx2_fma()) {
    if constexpr (std::is_same_v<Loader, Float32Loader>) return pyfastseq_row_weights_f32_avx2(row, n, inv_t, w);
    if constexpr (std::is_same_v<Loader, Float16Loader>) return pyfastseq_row_weights_f16_avx2(row, n, inv_t, w);
    if constexpr (std::is_same_v<Loader, BFloat16Loader>) return pyfastseq_row_weights_bf16_avx2(row, n, inv_t, w);
  }
#endif
  return row_weights<Loader>(row, n, inv_t, w);
}

// splitmix64's finaliser: a bijection whose outputs pass BigCrush as a counter-based generator.
inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The uniform in [0, 1) that row `row` draws at `step`.
double sample_uniform(uint64_t seed, int64_t row, int64_t step) {
  const uint64_t bits = mix(mix(mix(seed) ^ static_cast<uint64_t>(row)) ^ static_cast<uint64_t>(step));
  return static_cast<double>(bits >> 11) * 0x1p-53;
}

struct Cand {
  float x;  // the raw logit
  int32_t token;
  int32_t node;
};

// Higher logit first, then the lower token id, so ties cut deterministically.
inline bool better(const Cand& a, const Cand& b) { return a.x > b.x || (a.x == b.x && a.token < b.token); }

// top_p is compared with an allowance of 1e-6: probabilities handed in as logits (the
// seed's [.5, .3, .15, .05] with top_p=.8) reach p only up to float rounding.
constexpr double kTopPSlack = 1e-6;

enum class RowStatus : int32_t { kOk, kNaN, kNoFinite, kBadNode, kNoChildren, kTokenOutOfVocab };

struct RowResult {
  RowStatus status = RowStatus::kOk;
  int64_t detail = 0;
};

template <class Loader>
class SampleKernel {
 public:
  using Bits = typename Loader::Bits;

  explicit SampleKernel(const SampleStepParams& p) : p_(p) {}

  RowResult row(int64_t r) const {
    p_.token[r] = -1;
    p_.logprob[r] = 0.0f;
    p_.node[r] = -1;
    if (p_.active && !p_.active[r]) return {};
    const Bits* logits = static_cast<const Bits*>(p_.logits) + r * p_.row_stride;
    bool nan = false;
    const Normaliser z = full_normaliser<Loader>(logits, p_.vocab, &nan);
    if (nan) return {RowStatus::kNaN, 0};
    if (!std::isfinite(z.max)) return {RowStatus::kNoFinite, 0};

    // A temperature so small that 1 / t overflows (or is flushed to 0) is greedy: capping 1 / t
    // keeps (max - max) / t at 0 rather than 0 * inf = NaN.
    const float inv_t = std::min(1.0f / p_.temperature[r], FLT_MAX);
    std::vector<Cand>& cands = scratch();
    if (!p_.nodes && (p_.top_k == 0 || p_.top_k >= p_.vocab)) {
      // No cut but top-p over the whole vocabulary: weights for every token in one vector pass.
      std::vector<float>& w = weights();
      w.resize(p_.vocab);
      const double total = weights_of<Loader>(logits, p_.vocab, inv_t, w.data());
      if (p_.top_p >= 1.0f) return finish(r, logits, z, draw_from_weights(r, w, total), -1);
      return finish(r, logits, z, draw_top_p_of_row(r, logits, w, total, cands), -1);
    }
    if (p_.nodes) {
      const RowResult gathered = gather_children(r, logits, cands);
      if (gathered.status != RowStatus::kOk) return gathered;
      if (p_.top_k > 0 && p_.top_k < static_cast<int64_t>(cands.size())) {
        std::partial_sort(cands.begin(), cands.begin() + p_.top_k, cands.end(), better);
        const float kth = cands[p_.top_k - 1].x;  // its ties stay too
        const auto end = std::partition(cands.begin() + p_.top_k, cands.end(), [&](const Cand& c) { return c.x == kth; });
        cands.resize(end - cands.begin());
      }
    } else {
      top_k_of_row(logits, zero_weight_below(z.max, inv_t), cands);
    }
    float m = -INFINITY;
    for (const Cand& c : cands) m = std::max(m, c.x);
    if (m == -INFINITY) return {RowStatus::kNoFinite, 0};
    auto weight = [&](const Cand& c) { return std::exp((static_cast<double>(c.x) - m) * inv_t); };
    double total = 0.0;
    for (const Cand& c : cands) total += weight(c);
    const Cand& pick = draw_from(r, cands, weight, total);
    return finish(r, logits, z, pick.token, pick.node);
  }

 private:
  RowResult finish(int64_t r, const Bits* logits, const Normaliser& z, int32_t token, int32_t node) const {
    p_.token[r] = token;
    p_.logprob[r] = z.logprob(Loader::load(logits[token]));
    p_.node[r] = node;
    return {};
  }

  RowResult gather_children(int64_t r, const Bits* logits, std::vector<Cand>& cands) const {
    const TrieView& trie = p_.tries[p_.num_tries == 1 ? 0 : r / p_.rows_per_trie];
    const int32_t node = p_.nodes[r];
    if (node < 0 || node >= trie.num_nodes) return {RowStatus::kBadNode, node};
    const uint32_t lo = trie.child_begin[node], hi = trie.child_begin[node + 1];
    if (lo == hi) return {RowStatus::kNoChildren, node};
    cands.resize(hi - lo);
    for (uint32_t e = lo; e < hi; ++e) {
      const int32_t token = trie.child_token[e];
      if (token >= p_.vocab) return {RowStatus::kTokenOutOfVocab, token};
      cands[e - lo] = {Loader::load(logits[token]), token, static_cast<int32_t>(e) + 1};
    }
    return {};
  }

  // A logit at or below this weighs exactly 0 in the draw, exp((x - max) * inv_t) in double, which
  // underflows below -745: the floor lies 760 / inv_t below the row's max, and a float step lower
  // still, which covers its rounding and keeps the max above it when every logit is equal. Such
  // logits never need collecting: a row masked with a finite fill (-1e9) would otherwise tie its
  // whole masked rest with a k-th logit.
  float zero_weight_below(float row_max, float inv_t) const {
    const double floor = row_max - 760.0 / inv_t;
    return floor < -FLT_MAX ? -INFINITY : std::nextafter(static_cast<float>(floor), -INFINITY);
  }

  // The top_k logits of the row and every logit equal to the top_k-th, as transformers'
  // TopKLogitsWarper keeps, less those that weigh nothing (at or below `floor`, -inf always).
  void top_k_of_row(const Bits* logits, float floor, std::vector<Cand>& cands) const {
    thread_local std::vector<float> values;
    thread_local std::vector<int32_t> tokens;
    const int32_t n = top_logits<Loader>(logits, p_.vocab, static_cast<int32_t>(p_.top_k), -1, values, tokens,
                                         /*with_ties=*/true, floor);
    cands.resize(n);
    for (int32_t i = 0; i < n; ++i) {
      cands[i].x = values[i];
      cands[i].token = tokens[i];
      cands[i].node = -1;
    }
  }

  // Inverse-CDF draw over the whole row's weights.
  int32_t draw_from_weights(int64_t r, const std::vector<float>& w, double total) const {
    const double target = sample_uniform(p_.seed, r, p_.step) * total;
    double acc = 0.0;
    int32_t last = 0;
    for (int64_t t = 0; t < p_.vocab; ++t) {
      if (w[t] <= 0.0f) continue;
      acc += w[t];
      last = static_cast<int32_t>(t);
      if (target < acc) break;
    }
    return last;
  }

  // Top-p over the whole vocabulary without sorting it: the weights' mass is binned by float
  // exponent and top three mantissa bits (8 bins per octave, weights lie in (0, 1]); every bin
  // heavier than the one where the descending cumulative mass reaches p is kept whole, and only
  // that bin's tokens are sorted to place the cut.
  int32_t draw_top_p_of_row(int64_t r, const Bits* logits, const std::vector<float>& w, double total,
                            std::vector<Cand>& boundary) const {
    constexpr int kBins = 1024;
    auto bin = [](float v) { return std::min(static_cast<int>(float_to_bits(v) >> 20), kBins - 1); };
    // Four histograms filled in turn, so that a run of weights in one bin is not one chain of
    // dependent read-modify-writes; summed into the first.
    constexpr int kWays = 4;
    std::vector<double>& mass = bins();
    mass.assign(kWays * kBins, 0.0);
    int64_t i = 0;
    for (; i + kWays <= p_.vocab; i += kWays)
      for (int j = 0; j < kWays; ++j) mass[j * kBins + bin(w[i + j])] += w[i + j];
    for (; i < p_.vocab; ++i) mass[bin(w[i])] += w[i];
    for (int b = 0; b < kBins; ++b)
      for (int j = 1; j < kWays; ++j) mass[b] += mass[j * kBins + b];
    const double goal = (static_cast<double>(p_.top_p) - kTopPSlack) * total;
    int lightest = 0;  // the lowest bin with a weight: the cut goes no lower, so it holds a token
    while (mass[lightest] == 0.0) ++lightest;
    double kept_mass = 0.0;
    int cut = kBins - 1;
    // Empty bins are passed even when the goal is already met (top_p within the slack of 0), so
    // the cut's bin holds at least the heaviest weight.
    for (; cut > lightest && (mass[cut] == 0.0 || kept_mass + mass[cut] < goal); --cut) kept_mass += mass[cut];
    // Bins follow the weights' bits, so a bin is a range of weights: the cut's is [at_cut, above_cut).
    const float at_cut = bits_to_float(static_cast<uint32_t>(cut) << 20);
    const float above_cut = bits_to_float(static_cast<uint32_t>(cut + 1) << 20);
    boundary.clear();
    for (int64_t t = 0; t < p_.vocab; ++t)
      if (w[t] >= at_cut && w[t] < above_cut)
        boundary.push_back({Loader::load(logits[t]), static_cast<int32_t>(t), -1});
    std::sort(boundary.begin(), boundary.end(), better);
    size_t kept = 0;
    while (kept < boundary.size() && (kept == 0 || kept_mass < goal)) kept_mass += w[boundary[kept++].token];

    const double target = sample_uniform(p_.seed, r, p_.step) * kept_mass;
    double acc = 0.0;
    for (int64_t t = 0; t < p_.vocab; ++t) {
      if (w[t] < above_cut) continue;
      acc += w[t];
      if (target < acc) return static_cast<int32_t>(t);
    }
    for (size_t i = 0; i + 1 < kept; ++i) {
      acc += w[boundary[i].token];
      if (target < acc) return boundary[i].token;
    }
    return boundary[kept - 1].token;
  }

  // The top-p cut on the (already top-k) candidates of total weight `total`, then the draw.
  template <class Weight>
  const Cand& draw_from(int64_t r, std::vector<Cand>& cands, const Weight& weight, double total) const {
    size_t kept = cands.size();
    if (p_.top_p < 1.0f) kept = top_p_prefix(cands, weight, total, &total);
    const double target = sample_uniform(p_.seed, r, p_.step) * total;
    double acc = 0.0;
    for (size_t i = 0; i + 1 < kept; ++i) {
      acc += weight(cands[i]);
      if (target < acc) return cands[i];
    }
    return cands[kept - 1];
  }

  // Sorts the head of `cands` best first until its mass reaches top_p of `total`; returns its
  // length and sets *kept_mass. The head grows geometrically, so a long flat tail is never sorted.
  template <class Weight>
  size_t top_p_prefix(std::vector<Cand>& cands, const Weight& weight, double total, double* kept_mass) const {
    const double goal = (static_cast<double>(p_.top_p) - kTopPSlack) * total;
    double cum = 0.0;
    size_t sorted = 0, head = 64;
    while (true) {
      head = std::min(head, cands.size());
      if (head < cands.size()) std::nth_element(cands.begin() + sorted, cands.begin() + head, cands.end(), better);
      std::sort(cands.begin() + sorted, cands.begin() + head, better);
      for (; sorted < head; ++sorted) {
        cum += weight(cands[sorted]);
        if (cum >= goal) {
          *kept_mass = cum;
          return sorted + 1;
        }
      }
      if (head == cands.size()) break;
      head *= 4;
    }
    *kept_mass = cum;
    return cands.size();
  }

  static std::vector<Cand>& scratch() {
    thread_local std::vector<Cand> buffer;
    return buffer;
  }
  static std::vector<double>& bins() {
    thread_local std::vector<double> buffer;
    return buffer;
  }
  static std::vector<float>& weights() {
    thread_local std::vector<float> buffer;
    return buffer;
  }

  const SampleStepParams& p_;
};

[[noreturn]] void report(int64_t row, const RowResult& e, const SampleStepParams& p) {
  switch (e.status) {
    case RowStatus::kNaN: fail("logits row ", row, " contains NaN");
    case RowStatus::kNoFinite:
      fail("logits row ", row, " has no finite logit among its allowed tokens (all -inf, or +inf present)");
    case RowStatus::kBadNode: fail("row ", row, " is live but its trie node ", e.detail, " is out of range");
    case RowStatus::kNoChildren:
      fail("row ", row, " is live at trie node ", e.detail,
           ", which has no children: the trie does not cover this decoding state");
    case RowStatus::kTokenOutOfVocab:
      fail("the trie holds token id ", e.detail, " but logits has only ", p.vocab, " columns (vocabulary)");
    case RowStatus::kOk: break;
  }
  fail("internal error in the sampling step");
}

template <class Loader>
void step(const SampleStepParams& p) {
  std::vector<RowResult> results(p.rows);
  const SampleKernel<Loader> kernel(p);
  parallel_for(p.rows, p.vocab, [&](int64_t r) { results[r] = kernel.row(r); });
  for (int64_t r = 0; r < p.rows; ++r)
    if (results[r].status != RowStatus::kOk) report(r, results[r], p);
}

}  // namespace

void run_sample_step_cpu(const SampleStepParams& p) {
  with_logits_loader(p.dtype, [&](auto loader) { step<decltype(loader)>(p); });
}

}  // namespace pyfastseq
