#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "common/errors.h"
#include "lcs/lcs.h"
#include "trie/trie.h"

namespace py = pybind11;

namespace pyfastseq {
namespace {

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using UInt8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

}  // namespace

void bind_lcs(py::module_& m) {
  py::class_<LcsPattern>(m, "LcsPattern", "The bit-parallel LCS match table of one int32 query, built once.")
      .def(py::init([](Int32Array query) {
             if (query.ndim() != 1) fail("query must be a 1-D array");
             py::gil_scoped_release release;
             return new LcsPattern(query.data(), query.size());
           }),
           py::arg("query"))
      .def_property_readonly("length", &LcsPattern::length)
      .def(
          "lengths",
          [](const LcsPattern& q, Int32Array tokens, Int64Array offsets) {
            if (tokens.ndim() != 1) fail("candidates must be a 1-D token array");
            if (offsets.ndim() != 1 || offsets.size() < 1) fail("offsets must be a 1-D array of length num_candidates + 1");
            Int32Array out(offsets.size() - 1);
            LcsLengthsParams p;
            p.pattern = &q;
            p.tokens = tokens.data();
            p.num_tokens = tokens.size();
            p.offsets = offsets.data();
            p.num_candidates = offsets.size() - 1;
            p.out = out.mutable_data();
            py::gil_scoped_release release;
            run_lcs_lengths(p);
            return out;
          },
          py::arg("tokens"), py::arg("offsets"),
          "LCS of each candidate tokens[offsets[i]:offsets[i+1]] with the query, as int32 [num_candidates].");

  m.def(
      "subtree_heights",
      [](const Trie& trie) {
        UInt8Array out(trie.num_nodes());
        uint8_t* data = out.mutable_data();
        py::gil_scoped_release release;
        run_subtree_heights(trie.view(), data);
        return out;
      },
      py::arg("trie"), "uint8 [num_nodes]: longest path from each node to a leaf, saturated at 255.");

  m.def(
      "lcs_lookahead",
      [](const Trie& trie, UInt8Array heights, const std::vector<const LcsPattern*>& patterns, Int32Array nodes,
         Int32Array generated, Int64Array pattern_of_row, int32_t start_after, int64_t max_nodes, bool applying_only) {
        const int64_t rows = nodes.size();
        if (heights.size() != trie.num_nodes()) fail("heights must hold one entry per trie node");
        if (nodes.ndim() != 1) fail("nodes must be 1-D");
        if (generated.ndim() != 2 || generated.shape(0) != rows) fail("generated must be 2-D [N, steps] with N = len(nodes)");
        if (pattern_of_row.ndim() != 1 || pattern_of_row.size() != rows) fail("batch_index must be 1-D with one entry per row");
        for (const LcsPattern* q : patterns)
          if (q == nullptr) fail("patterns must not hold None");
        Int64Array row_offsets(rows + 1);
        LookaheadParams p;
        p.trie = trie.view();
        p.heights = heights.data();
        p.patterns = patterns.data();
        p.num_patterns = static_cast<int32_t>(patterns.size());
        p.rows = rows;
        p.nodes = nodes.data();
        p.generated = generated.data();
        p.steps = generated.shape(1);
        p.pattern_of_row = pattern_of_row.data();
        p.start_after = start_after;
        p.max_nodes = max_nodes;
        p.row_offsets = row_offsets.data();
        {
          py::gil_scoped_release release;
          lookahead_row_offsets(p, applying_only, row_offsets.mutable_data());
        }
        Int32Array deltas(row_offsets.data()[rows]);
        p.deltas = deltas.mutable_data();
        LookaheadStats stats;
        {
          py::gil_scoped_release release;
          stats = run_lookahead(p);
        }
        return py::make_tuple(row_offsets, deltas, stats.visited, stats.truncated);
      },
      py::arg("trie"), py::arg("heights"), py::arg("patterns"), py::arg("nodes"), py::arg("generated"),
      py::arg("pattern_of_row"), py::arg("start_after"), py::arg("max_nodes"), py::arg("applying_only") = false,
      "(row_offsets int64 [N+1], deltas int32, nodes visited, truncated child searches) of one lookahead call; "
      "applying_only leaves the rows the rule does not touch with empty slices.");
}

}  // namespace pyfastseq
