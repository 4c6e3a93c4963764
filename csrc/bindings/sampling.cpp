#include <optional>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/errors.h"
#include "sampling/sampling.h"
#include "trie/trie.h"

namespace py = pybind11;

namespace pyfastseq {

void bind_sampling(py::module_& m) {
  using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
  using Ints = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
  using Flags = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
  m.def(
      "sample_step",
      [](uintptr_t logits, int64_t vocab, int64_t row_stride, int32_t dtype, int64_t rows, Floats temperature,
         int32_t top_k, float top_p, uint64_t seed, int64_t step, std::optional<Flags> active,
         std::optional<Ints> nodes, const std::vector<const Trie*>& tries, int64_t rows_per_trie) {
        if (dtype < 0 || dtype > 2) fail("logits dtype code must be 0, 1 or 2");
        if (rows < 0 || vocab < 1) fail("rows must be >= 0 and vocab >= 1");
        if (temperature.size() != rows) fail("temperature must hold one value per row");
        if (active && active->size() != rows) fail("active must hold one flag per row");
        if (nodes && (nodes->size() != rows || tries.empty())) fail("nodes must hold one node per row, with a trie");
        if (rows_per_trie < 1) fail("rows_per_trie must be >= 1");
        std::vector<TrieView> views;
        for (const Trie* t : tries) views.push_back(t->view());
        if (nodes && views.size() != 1 && static_cast<int64_t>(views.size()) * rows_per_trie != rows)
          fail("tries must hold one trie or one per group of rows_per_trie rows");
        py::array_t<int32_t> token(rows), node(rows);
        py::array_t<float> logprob(rows);
        SampleStepParams p;
        p.logits = reinterpret_cast<const void*>(logits);
        p.vocab = vocab;
        p.row_stride = row_stride;
        p.dtype = static_cast<LogitsDtype>(dtype);
        p.rows = rows;
        p.temperature = temperature.data();
        p.top_k = top_k;
        p.top_p = top_p;
        p.seed = seed;
        p.step = step;
        p.active = active ? active->data() : nullptr;
        if (nodes) {
          p.nodes = nodes->data();
          p.tries = views.data();
          p.num_tries = static_cast<int32_t>(views.size());
          p.rows_per_trie = rows_per_trie;
        }
        p.token = token.mutable_data();
        p.logprob = logprob.mutable_data();
        p.node = node.mutable_data();
        {
          py::gil_scoped_release release;
          run_sample_step_cpu(p);
        }
        return py::make_tuple(token, logprob, node);
      },
      py::arg("logits_ptr"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"), py::arg("rows"),
      py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("seed"), py::arg("step"), py::arg("active"),
      py::arg("nodes"), py::arg("tries"), py::arg("rows_per_trie"),
      "One sampling step: (token, logprob, node) arrays [rows]; logprob is the full-vocabulary log-softmax of the "
      "drawn token; inactive rows give token -1. nodes None: unconstrained.");
}

}  // namespace pyfastseq
