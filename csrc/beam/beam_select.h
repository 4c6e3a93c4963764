// A beam search kept on the GPU: BeamSearchState (beam_search.h) with its running beams, token
// histories and finished hypotheses in one device buffer, advanced by a kernel from the CUDA step's
// candidates. A decode loop then never waits for the host: the model reads next_tokens / beam_idx
// where the kernel wrote them.
//
// The bookkeeping is BeamSearchState::advance_item operation for operation (the same float32
// arithmetic, the same stable order, the same hypothesis slots), so both give identical outputs.
#pragma once
#include <cstddef>
#include <cstdint>

#include "trie/trie_view.h"

namespace pyfastseq {

// Byte offsets into the state buffer. Arrays marked [2] are double-buffered: a step reads half
// `parity` and writes half 1 - parity.
struct DeviceBeamLayout {
  size_t scores[2];        // float [rows]: running scores, -inf dead (what the CUDA step reads)
  size_t nodes[2];         // int32 [rows]: trie nodes, -1 dead, kSpentNode ended
  size_t filler[2];        // uint8 [rows]: descends from a spare or ended beam
  size_t seq[2];           // int32 [rows, max_length]: tokens so far
  size_t token_scores[2];  // float [rows, max_length] (record_token_scores only)
  size_t next_tokens;      // int64 [rows]: what the model is fed next
  size_t beam_idx;         // int64 [rows]: the row each row continues
  size_t penalty;          // float [max_length + 1]: float(L ** length_penalty), filled by the host
  size_t done;             // uint8 [batch]
  size_t improvable;       // uint8 [batch]
  size_t hyp_count;        // int32 [batch]: hypotheses kept (<= num_beams)
  size_t hyp_order;        // int32 [batch, num_beams]: their slots, best first
  size_t hyp_score;        // float [batch, num_beams] by slot
  size_t hyp_length;       // int32 [batch, num_beams]
  size_t hyp_finished;     // uint8 [batch, num_beams]
  size_t hyp_filler;       // uint8 [batch, num_beams]
  size_t hyp_tokens;       // int32 [batch, num_beams, max_length]
  size_t hyp_token_scores; // float [batch, num_beams, max_length] (record_token_scores only)
  size_t halted;           // uint64: the error word of a failed step (kNoBeamStepError until one
                           // fails), which every later step's kernels then skip on
  size_t bytes;
};

DeviceBeamLayout device_beam_layout(int32_t batch_size, int32_t num_beams, int32_t max_length,
                                    bool record_token_scores);

struct BeamSelectParams {
  int32_t batch_size = 0;
  int32_t num_beams = 0;
  int32_t max_length = 0;
  int32_t length = 0;            // tokens generated before this step
  int32_t early_stopping = 1;    // EarlyStopping
  float length_penalty = 1.0f;
  int32_t eos_id = -1;
  int32_t pad_id = 0;
  bool record_token_scores = false;
  const TrieView* tries = nullptr;  // device views, null when unconstrained
  int32_t num_tries = 0;
  // The CUDA step's outputs for the current beams ([batch, 2 * num_beams] each, count [batch]) and
  // its error word: a failed step leaves the state as it was.
  const float* cand_score = nullptr;
  const float* cand_logprob = nullptr;
  const int32_t* cand_token = nullptr;
  const int32_t* cand_parent = nullptr;
  const int32_t* cand_node = nullptr;
  const int32_t* cand_count = nullptr;
  const unsigned long long* error = nullptr;
  char* state = nullptr;
  DeviceBeamLayout layout{};
  int32_t parity = 0;
};

// Launches one block per batch item on `stream`; returns the cudaError_t of the launch.
int run_beam_select_cuda(const BeamSelectParams& params, void* stream);

}  // namespace pyfastseq
