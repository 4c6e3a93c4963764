#include <algorithm>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "beam/beam_search.h"
#include "common/errors.h"
#include "trie/trie.h"

namespace py = pybind11;

namespace pyfastseq {
namespace {

template <class T>
py::array_t<T> copy_of(const T* data, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy_n(data, out.size(), out.mutable_data());
  return out;
}

EarlyStopping early_stopping_of(int32_t code) {
  if (code < 0 || code > 2) fail("early_stopping code must be 0 (False), 1 (True) or 2 (\"never\")");
  return static_cast<EarlyStopping>(code);
}

}  // namespace

void bind_beam(py::module_& m) {
  m.def(
      "beam_step",
      [](uintptr_t logits, int64_t vocab, int64_t row_stride, int32_t dtype, int32_t batch_size, int32_t num_beams,
         py::array_t<float, py::array::c_style | py::array::forcecast> beam_scores,
         std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> nodes,
         const std::vector<const Trie*>& tries, bool normalize_allowed, int32_t eos_id,
         std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> delta_offsets,
         std::optional<py::array_t<int32_t, py::array::c_style | py::array::forcecast>> deltas) {
        const int64_t rows = int64_t{batch_size} * num_beams;
        BeamStepParams p = beam_step_params(reinterpret_cast<const void*>(logits), vocab, row_stride, dtype, batch_size,
                                            num_beams);
        if (beam_scores.size() != rows) fail("beam_scores must hold batch_size * num_beams scores");
        if (nodes && (nodes->size() != rows || tries.empty())) fail("nodes must hold one node per row, with a trie");
        std::vector<TrieView> views;
        for (const Trie* t : tries) views.push_back(t->view());
        const int32_t C = 2 * num_beams;
        py::array_t<float> score({batch_size, C}), logprob({batch_size, C});
        py::array_t<int32_t> token({batch_size, C}), parent({batch_size, C}), node({batch_size, C}), count(batch_size);
        p.beam_scores = beam_scores.data();
        if (nodes) {
          p.nodes = nodes->data();
          p.tries = views.data();
          p.num_tries = static_cast<int32_t>(views.size());
          if (p.num_tries != 1 && p.num_tries != batch_size) fail("tries must hold one trie or one per batch item");
        }
        p.normalize_allowed = normalize_allowed;
        p.eos_id = eos_id;
        if (delta_offsets.has_value() != deltas.has_value()) fail("give both delta_offsets and deltas, or neither");
        if (delta_offsets) {
          if (!nodes) fail("lookahead deltas need a constrained step (nodes)");
          const int64_t* offs = delta_offsets->data();
          if (delta_offsets->size() != rows + 1 || offs[0] != 0 || offs[rows] != deltas->size())
            fail("delta_offsets must hold rows + 1 offsets from 0 to len(deltas)");
          for (int64_t r = 0; r < rows; ++r)
            if (offs[r + 1] < offs[r]) fail("delta_offsets must never decrease");
          p.delta_offsets = offs;
          p.deltas = deltas->data();
        }
        p.cand_score = score.mutable_data();
        p.cand_logprob = logprob.mutable_data();
        p.cand_token = token.mutable_data();
        p.cand_parent = parent.mutable_data();
        p.cand_node = node.mutable_data();
        p.cand_count = count.mutable_data();
        {
          py::gil_scoped_release release;
          run_beam_step_cpu(p);
        }
        return py::make_tuple(score, logprob, token, parent, node, count);
      },
      py::arg("logits_ptr"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"), py::arg("batch_size"),
      py::arg("num_beams"), py::arg("beam_scores"), py::arg("nodes"), py::arg("tries"), py::arg("normalize_allowed"),
      py::arg("eos_id"), py::arg("delta_offsets") = py::none(), py::arg("deltas") = py::none(),
      "The fused step alone: the best 2 * num_beams continuations per batch item, as (score, logprob, token, "
      "parent, node, count) arrays [batch, 2 * num_beams] (count: [batch]). nodes None: unconstrained; "
      "delta_offsets [rows + 1] and deltas: lookahead deltas per row.");

  py::class_<BeamSearchState>(m, "BeamSearchState",
                              "A beam search in progress: feed it each step's logits, read back the tokens.")
      .def(py::init([](int32_t batch_size, int32_t num_beams, int32_t max_length, int32_t min_length,
                       int32_t num_return_sequences, float length_penalty, int32_t early_stopping, int32_t eos_id,
                       int32_t pad_id, bool normalize_allowed, bool record_token_scores,
                       const std::vector<const Trie*>& tries, std::vector<int32_t> start_nodes) {
             BeamConfig c;
             c.batch_size = batch_size;
             c.num_beams = num_beams;
             c.max_length = max_length;
             c.min_length = min_length;
             c.num_return_sequences = num_return_sequences;
             c.length_penalty = length_penalty;
             c.early_stopping = early_stopping_of(early_stopping);
             c.eos_id = eos_id;
             c.pad_id = pad_id;
             c.normalize_allowed = normalize_allowed;
             c.record_token_scores = record_token_scores;
             std::vector<TrieView> views;
             for (const Trie* t : tries) views.push_back(t->view());
             return new BeamSearchState(c, std::move(views), std::move(start_nodes));
           }),
           py::arg("batch_size"), py::arg("num_beams"), py::arg("max_length"), py::arg("min_length"),
           py::arg("num_return_sequences"), py::arg("length_penalty"), py::arg("early_stopping"), py::arg("eos_id"),
           py::arg("pad_id"), py::arg("normalize_allowed"), py::arg("record_token_scores"), py::arg("tries"),
           py::arg("start_nodes"), py::keep_alive<1, 13>(),
           "tries: [] (unconstrained), [trie] or one per batch item; early_stopping 0/1/2 = False/True/'never'.")
      .def(
          "step",
          [](BeamSearchState& s, uintptr_t logits, int64_t vocab, int64_t row_stride, int32_t dtype,
             uintptr_t delta_offsets, uintptr_t deltas) {
            if (dtype < 0 || dtype > 2) fail("logits dtype code must be 0, 1 or 2");
            py::gil_scoped_release release;
            return s.step(reinterpret_cast<const void*>(logits), vocab, row_stride, static_cast<LogitsDtype>(dtype),
                          reinterpret_cast<const int64_t*>(delta_offsets), reinterpret_cast<const int32_t*>(deltas));
          },
          py::arg("logits_ptr"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"),
          py::arg("delta_offsets_ptr"), py::arg("deltas_ptr"),
          "One step from logits [rows, vocab] (dtype 0/1/2 = float32/float16/bfloat16); lookahead pointers or 0. "
          "Returns False once every batch item is done.")
      .def_property_readonly("eos_id", [](const BeamSearchState& s) { return s.config().eos_id; })
      .def_property_readonly("normalize_allowed", [](const BeamSearchState& s) { return s.config().normalize_allowed; })
      .def_property_readonly("length", &BeamSearchState::length)
      .def_property_readonly("next_tokens",
                             [](const BeamSearchState& s) { return copy_of(s.next_tokens().data(), {s.num_rows()}); })
      .def_property_readonly("beam_idx",
                             [](const BeamSearchState& s) { return copy_of(s.beam_idx().data(), {s.num_rows()}); })
      .def_property_readonly("nodes",
                             [](const BeamSearchState& s) {
                               // -1 for rows without a trie node to continue (dead, done or ended).
                               py::array_t<int32_t> out(s.num_rows());
                               std::transform(s.nodes().begin(), s.nodes().end(), out.mutable_data(),
                                              [](int32_t n) { return n < 0 ? -1 : n; });
                               return out;
                             })
      .def_property_readonly("generated",
                             [](const BeamSearchState& s) {
                               // [rows, length]: the tokens each running row has generated so far.
                               const int64_t rows = s.num_rows(), len = s.length();
                               py::array_t<int32_t> out({rows, len});
                               const int64_t width = static_cast<int64_t>(s.sequences().size()) / rows;
                               for (int64_t r = 0; r < rows; ++r)
                                 std::copy_n(s.sequences().begin() + r * width, len, out.mutable_data() + r * len);
                               return out;
                             })
      .def("results",
           [](const BeamSearchState& s, int32_t count) {
             // Per batch item, up to `count` (tokens, score, finished, token_scores), best first; filler
             // hypotheses (only kept where an item ran out of real ones) are left out.
             py::list items;
             for (const auto& kept : s.results()) {
               py::list hyps;
               for (size_t i = 0; i < kept.size() && i < static_cast<size_t>(count); ++i)
                 if (!kept[i].filler)
                   hyps.append(py::make_tuple(py::cast(kept[i].tokens), kept[i].score, kept[i].finished,
                                              py::cast(kept[i].token_scores)));
               items.append(hyps);
             }
             return items;
           },
           py::arg("count"));
}

}  // namespace pyfastseq
