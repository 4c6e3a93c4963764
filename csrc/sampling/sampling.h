// The batched sampling step (seed 000's random_sample): from one step's logits, one token per row
// drawn from the temperature-scaled distribution cut by top-k, then by top-p.
//
// Order and cut follow the seed (DESIGN "Where we deliberately differ"): the top_k largest logits
// are kept first; on their renormalised distribution, top-p keeps the shortest prefix in
// descending order whose probability reaches top_p. A trie restricts a row to its node's children
// (read directly, no vocabulary-wide mask), after which the same cuts apply among the children.
//
// Each row draws one uniform from a counter-based generator keyed by (seed, row, step), so a draw
// depends neither on the thread that made it nor on the other rows.
#pragma once
#include <cstdint>

#include "beam/beam.h"  // LogitsDtype
#include "trie/trie_view.h"

namespace pyfastseq {

struct SampleStepParams {
  const void* logits = nullptr;  // [rows, vocab], unit stride along vocab
  int64_t vocab = 0;
  int64_t row_stride = 0;        // in elements
  LogitsDtype dtype = LogitsDtype::kFloat32;
  int64_t rows = 0;

  const float* temperature = nullptr;  // [rows], each > 0
  int32_t top_k = 0;                   // 0: no top-k cut
  float top_p = 1.0f;                  // in (0, 1]; 1: no top-p cut
  uint64_t seed = 0;
  int64_t step = 0;                    // the decoding step, part of the generator's key
  const uint8_t* active = nullptr;     // [rows] or null (all); inactive rows draw nothing (token -1)

  // Constrained sampling: nodes[r] is row r's trie node; tries has 1 view (shared) or one per
  // group of rows_per_trie consecutive rows.
  const int32_t* nodes = nullptr;  // null: unconstrained
  const TrieView* tries = nullptr;
  int32_t num_tries = 0;
  int64_t rows_per_trie = 1;

  // Outputs, [rows] each.
  int32_t* token = nullptr;
  float* logprob = nullptr;  // log_softmax(logits)[token] over the full vocabulary, temperature 1
  int32_t* node = nullptr;   // the child node reached (-1 when unconstrained or inactive)
};

// Throws InvalidArgument naming the row for NaN logits, a node out of range or without children,
// or a child token >= vocab.
void run_sample_step_cpu(const SampleStepParams& params);

}  // namespace pyfastseq
