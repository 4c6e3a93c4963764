#include <cstddef>

#include <string>
#include <utility>

#include <pybind11/pybind11.h>

#include "beam/beam.h"
#include "beam/beam_select.h"
#include "common/errors.h"

namespace py = pybind11;

namespace pyfastseq {

// Python packs the device trie views as int64 [num_tries, 4] rows (child_begin, child_token,
// terminal, num_nodes): that is TrieView's layout on every 64-bit little-endian target we build for.
static_assert(sizeof(TrieView) == 32 && offsetof(TrieView, child_begin) == 0 && offsetof(TrieView, child_token) == 8 &&
                  offsetof(TrieView, terminal) == 16 && offsetof(TrieView, num_nodes) == 24,
              "TrieView layout changed: update the packing in pyfastseq/_cuda_search.py");
// And their wide nodes as int64 [num_tries, 4] rows (node, bits, count, words).
static_assert(sizeof(WideNodes) == 32 && offsetof(WideNodes, node) == 0 && offsetof(WideNodes, bits) == 8 &&
                  offsetof(WideNodes, count) == 16 && offsetof(WideNodes, words) == 24,
              "WideNodes layout changed: update the packing in pyfastseq/_cuda_search.py");

void bind_beam_cuda(py::module_& m) {
  m.def(
      "beam_step_workspace_bytes",
      [](int64_t rows, int32_t num_candidates) { return beam_step_cuda_workspace_bytes(rows, num_candidates); },
      py::arg("rows"), py::arg("num_candidates"), "Device workspace bytes beam_step() needs.");
  m.def(
      "beam_step_error_detail_offset",
      [](int64_t rows, int32_t num_candidates) { return beam_step_error_detail_offset(rows, num_candidates); },
      py::arg("rows"), py::arg("num_candidates"),
      "Byte offset in the workspace of the int32 [rows] error details.");
  m.def(
      "beam_step",
      [](uintptr_t logits, int64_t vocab, int64_t row_stride, int32_t dtype, int32_t batch_size, int32_t num_beams,
         uintptr_t beam_scores, uintptr_t nodes, uintptr_t tries, int32_t num_tries, bool normalize_allowed,
         int32_t eos_id, int32_t blocked_token, bool block_leaves, uintptr_t cand_score, uintptr_t cand_logprob,
         uintptr_t cand_token, uintptr_t cand_parent, uintptr_t cand_node, uintptr_t cand_count, uintptr_t error,
         uintptr_t workspace, uintptr_t stream, uintptr_t delta_offsets, uintptr_t deltas, uintptr_t halted,
         uintptr_t wide) {
        BeamStepParams p = beam_step_params(reinterpret_cast<const void*>(logits), vocab, row_stride, dtype, batch_size,
                                            num_beams);
        if (num_beams > 1024) fail("num_beams must be in 1..1024 on the GPU");
        if (nodes && num_tries != 1 && num_tries != batch_size) fail("tries must hold one trie or one per batch item");
        p.beam_scores = reinterpret_cast<const float*>(beam_scores);
        p.nodes = reinterpret_cast<const int32_t*>(nodes);
        p.tries = reinterpret_cast<const TrieView*>(tries);
        p.num_tries = num_tries;
        p.wide = reinterpret_cast<const WideNodes*>(wide);
        p.normalize_allowed = normalize_allowed;
        p.eos_id = eos_id;
        p.blocked_token = blocked_token;
        p.block_leaves = block_leaves;
        if (delta_offsets && !nodes) fail("lookahead deltas need a constrained step (nodes_ptr)");
        p.delta_offsets = reinterpret_cast<const int64_t*>(delta_offsets);
        p.deltas = reinterpret_cast<const int32_t*>(deltas);
        p.halted = reinterpret_cast<const unsigned long long*>(halted);
        p.cand_score = reinterpret_cast<float*>(cand_score);
        p.cand_logprob = reinterpret_cast<float*>(cand_logprob);
        p.cand_token = reinterpret_cast<int32_t*>(cand_token);
        p.cand_parent = reinterpret_cast<int32_t*>(cand_parent);
        p.cand_node = reinterpret_cast<int32_t*>(cand_node);
        p.cand_count = reinterpret_cast<int32_t*>(cand_count);
        py::gil_scoped_release release;
        return run_beam_step_cuda(p, reinterpret_cast<void*>(workspace), reinterpret_cast<unsigned long long*>(error),
                                  reinterpret_cast<void*>(stream));
      },
      py::arg("logits_ptr"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"), py::arg("batch_size"),
      py::arg("num_beams"), py::arg("beam_scores_ptr"), py::arg("nodes_ptr"), py::arg("tries_ptr"), py::arg("num_tries"),
      py::arg("normalize_allowed"), py::arg("eos_id"), py::arg("blocked_token"), py::arg("block_leaves"),
      py::arg("cand_score_ptr"), py::arg("cand_logprob_ptr"), py::arg("cand_token_ptr"), py::arg("cand_parent_ptr"),
      py::arg("cand_node_ptr"), py::arg("cand_count_ptr"), py::arg("error_ptr"), py::arg("workspace_ptr"),
      py::arg("stream"), py::arg("delta_offsets_ptr") = 0, py::arg("deltas_ptr") = 0, py::arg("halted_ptr") = 0,
      py::arg("wide_ptr") = 0,
      "Launch the fused beam step on device pointers (nodes_ptr 0: unconstrained; tries_ptr: int64 [num_tries, 4]\n"
      "device views; delta_offsets_ptr: 0, or int64 [rows + 1] offsets into int32 lookahead deltas;\n"
      "halted_ptr: 0, or a uint64 that skips the step unless all ones; wide_ptr: 0, or int64 [num_tries, 4]\n"
      "wide-node bitmaps per trie; workspace_ptr: beam_step_workspace_bytes bytes, zeroed before its\n"
      "first launch, each launch leaving them so).\n"
      "*error_ptr (uint64, preset to all ones) ends as row * 256 + code of the first failing row.\n"
      "Returns the cudaError_t code of the launch.");
  m.def(
      "beam_state_layout",
      [](int32_t batch_size, int32_t num_beams, int32_t max_length, bool record_token_scores) {
        const DeviceBeamLayout l = device_beam_layout(batch_size, num_beams, max_length, record_token_scores);
        py::dict out;
        for (int h = 0; h < 2; ++h) {
          const std::string half = std::to_string(h);
          out[("scores" + half).c_str()] = l.scores[h];
          out[("nodes" + half).c_str()] = l.nodes[h];
          out[("filler" + half).c_str()] = l.filler[h];
          out[("seq" + half).c_str()] = l.seq[h];
          out[("token_scores" + half).c_str()] = l.token_scores[h];
        }
        const std::pair<const char*, size_t> fields[] = {
            {"next_tokens", l.next_tokens}, {"beam_idx", l.beam_idx},     {"penalty", l.penalty},
            {"done", l.done},               {"improvable", l.improvable}, {"hyp_count", l.hyp_count},
            {"hyp_order", l.hyp_order},     {"hyp_score", l.hyp_score},   {"hyp_length", l.hyp_length},
            {"hyp_finished", l.hyp_finished}, {"hyp_filler", l.hyp_filler}, {"hyp_tokens", l.hyp_tokens},
            {"hyp_token_scores", l.hyp_token_scores}, {"halted", l.halted}, {"bytes", l.bytes}};
        for (const auto& [name, offset] : fields) out[name] = offset;
        return out;
      },
      py::arg("batch_size"), py::arg("num_beams"), py::arg("max_length"), py::arg("record_token_scores"),
      "Byte offsets of the device search state's arrays (beam/beam_select.h; suffix 0/1: the two halves), and its\n"
      "size in bytes.");
  m.def(
      "beam_select",
      [](int32_t batch_size, int32_t num_beams, int32_t max_length, int32_t length, int32_t early_stopping,
         float length_penalty, int32_t eos_id, int32_t pad_id, bool record_token_scores, uintptr_t tries,
         int32_t num_tries, uintptr_t cand_score, uintptr_t cand_logprob, uintptr_t cand_token, uintptr_t cand_parent,
         uintptr_t cand_node, uintptr_t cand_count, uintptr_t error, uintptr_t state, int32_t parity,
         uintptr_t stream) {
        if (batch_size < 1 || num_beams < 1 || num_beams > 1024 || max_length < 1)
          fail("batch_size, max_length and num_beams (1..1024) must be positive");
        if (length < 0 || length >= max_length) fail("length must be in [0, max_length)");
        if (early_stopping < 0 || early_stopping > 2) fail("early_stopping code must be 0, 1 or 2");
        if (tries && num_tries != 1 && num_tries != batch_size) fail("tries must hold one trie or one per batch item");
        BeamSelectParams p;
        p.batch_size = batch_size;
        p.num_beams = num_beams;
        p.max_length = max_length;
        p.length = length;
        p.early_stopping = early_stopping;
        p.length_penalty = length_penalty;
        p.eos_id = eos_id;
        p.pad_id = pad_id;
        p.record_token_scores = record_token_scores;
        p.tries = reinterpret_cast<const TrieView*>(tries);
        p.num_tries = num_tries;
        p.cand_score = reinterpret_cast<const float*>(cand_score);
        p.cand_logprob = reinterpret_cast<const float*>(cand_logprob);
        p.cand_token = reinterpret_cast<const int32_t*>(cand_token);
        p.cand_parent = reinterpret_cast<const int32_t*>(cand_parent);
        p.cand_node = reinterpret_cast<const int32_t*>(cand_node);
        p.cand_count = reinterpret_cast<const int32_t*>(cand_count);
        p.error = reinterpret_cast<const unsigned long long*>(error);
        p.state = reinterpret_cast<char*>(state);
        p.layout = device_beam_layout(batch_size, num_beams, max_length, record_token_scores);
        p.parity = parity;
        py::gil_scoped_release release;
        return run_beam_select_cuda(p, reinterpret_cast<void*>(stream));
      },
      py::arg("batch_size"), py::arg("num_beams"), py::arg("max_length"), py::arg("length"), py::arg("early_stopping"),
      py::arg("length_penalty"), py::arg("eos_id"), py::arg("pad_id"), py::arg("record_token_scores"),
      py::arg("tries_ptr"), py::arg("num_tries"), py::arg("cand_score_ptr"), py::arg("cand_logprob_ptr"),
      py::arg("cand_token_ptr"), py::arg("cand_parent_ptr"), py::arg("cand_node_ptr"), py::arg("cand_count_ptr"),
      py::arg("error_ptr"), py::arg("state_ptr"), py::arg("parity"), py::arg("stream"),
      "Advance the device search state (half `parity` -> 1 - parity) by one step from beam_step()'s candidates\n"
      "and error word. Returns the cudaError_t code of the launch.");
}

}  // namespace pyfastseq
