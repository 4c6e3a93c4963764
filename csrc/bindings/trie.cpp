#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/errors.h"
#include "trie/trie.h"
#include "trie/trie_mask.h"
#include "trie/trie_walk.h"

namespace py = pybind11;

namespace pyfastseq {
namespace {

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// A read-only numpy view of trie memory that keeps the trie alive.
template <class T>
py::array view_of(const T* data, int64_t size, py::handle owner) {
  py::array out(py::dtype::of<T>(), {size}, {static_cast<int64_t>(sizeof(T))}, data, owner);
  py::detail::array_proxy(out.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return out;
}

void check_node(const Trie& trie, int64_t node, const char* name) {
  if (node < 0 || node >= trie.num_nodes())
    fail(name, " must be a node id in [0, ", trie.num_nodes(), "), got ", node);
}

}  // namespace

void bind_trie(py::module_& m) {
  py::class_<Trie>(m, "Trie", "Immutable breadth-first CSR prefix tree over int32 token sequences.")
      .def_static(
          "build",
          [](Int32Array tokens, Int64Array offsets, int32_t eos_id) {
            if (offsets.ndim() != 1 || offsets.size() < 1) fail("offsets must be a 1-D array of length num_sequences + 1");
            if (tokens.ndim() != 1) fail("tokens must be a 1-D array");
            py::gil_scoped_release release;
            return Trie::build(tokens.data(), tokens.size(), offsets.data(), offsets.size() - 1, eos_id);
          },
          py::arg("tokens"), py::arg("offsets"), py::arg("eos_id"),
          "Build from a flat int32 token buffer and int64 offsets [num_sequences + 1]; eos_id -1 for none.")
      .def_static(
          "load",
          [](const std::string& path, bool mmap) {
            py::gil_scoped_release release;
            return Trie::load(path, mmap);
          },
          py::arg("path"), py::arg("mmap"))
      .def("save", &Trie::save, py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_nodes", &Trie::num_nodes)
      .def_property_readonly("num_items", &Trie::num_items)
      .def_property_readonly("eos_id", &Trie::eos_id)
      .def_property_readonly("max_token", &Trie::max_token)
      .def_property_readonly("depth", &Trie::depth)
      .def_property_readonly("memory_mapped", &Trie::memory_mapped)
      .def("walk", [](const Trie& t, Int32Array seq) { return t.walk(seq.data(), seq.size()); }, py::arg("seq"))
      .def("is_terminal",
           [](const Trie& t, int64_t node) {
             check_node(t, node, "node");
             return t.view().is_terminal(static_cast<int32_t>(node));
           },
           py::arg("node"))
      .def("children",
           [](const Trie& t, int64_t node) {
             check_node(t, node, "node");
             const TrieView& v = t.view();
             const uint32_t lo = v.child_begin[node], hi = v.child_begin[node + 1];
             Int32Array tokens(hi - lo), nodes(hi - lo);
             for (uint32_t e = lo; e < hi; ++e) {
               tokens.mutable_data()[e - lo] = v.child_token[e];
               nodes.mutable_data()[e - lo] = static_cast<int32_t>(e) + 1;
             }
             return py::make_tuple(tokens, nodes);
           },
           py::arg("node"))
      .def("step",
           [](const Trie& t, Int32Array nodes, Int32Array tokens) {
             if (nodes.size() != tokens.size()) fail("nodes and tokens must have the same length");
             Int32Array out(nodes.size());
             const int32_t* n = nodes.data();
             const int32_t* tok = tokens.data();
             int32_t* o = out.mutable_data();
             const int64_t size = nodes.size();
             py::gil_scoped_release release;
             for (int64_t i = 0; i < size; ++i) {
               if (n[i] < -1 || n[i] >= t.num_nodes())
                 fail("nodes[", i, "] must be -1 or a node id in [0, ", t.num_nodes(), "), got ", n[i]);
               if (tok[i] < 0) fail("tokens[", i, "] is negative (", tok[i], ")");
               o[i] = n[i] < 0 ? -1 : t.view().child(n[i], tok[i]);
             }
             return out;
           },
           py::arg("nodes"), py::arg("tokens"))
      .def("arrays",
           [](py::object self) {
             const Trie& t = self.cast<const Trie&>();
             const TrieView& v = t.view();
             return py::make_tuple(view_of(v.child_begin, int64_t{v.num_nodes} + 1, self),
                                   view_of(v.child_token, int64_t{v.num_nodes} - 1, self),
                                   view_of(v.terminal, (int64_t{v.num_nodes} + 63) / 64, self));
           },
           "(child_begin, child_token, terminal): read-only views of the CSR arrays.");

  m.def(
      "trie_mask",
      [](uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, int32_t elem_bytes,
         uint32_t fill_bits, uintptr_t nodes, uintptr_t child_begin, uintptr_t child_token, int32_t num_nodes,
         uint32_t inf_bits) {
        TrieMaskParams p = trie_mask_params(logits, rows, vocab, row_stride, elem_bytes, fill_bits, nodes,
                                           child_begin, child_token, num_nodes);
        p.inf_bits = inf_bits;
        TrieMaskRefusal refusal;
        {
          py::gil_scoped_release release;
          refusal = run_trie_mask_cpu(p);
        }
        return std::make_pair(refusal.bad_node_row, refusal.nan_row);
      },
      py::arg("logits_ptr"), py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("elem_bytes"),
      py::arg("fill_bits"), py::arg("nodes_ptr"), py::arg("child_begin_ptr"), py::arg("child_token_ptr"),
      py::arg("num_nodes"), py::arg("inf_bits"),
      "Mask [rows, vocab] logits in place, unless it returns a row other than -1 in (bad_node_row, nan_row): the "
      "first row whose node is out of range, else the first with NaN at a child token (inf_bits: +inf's bits).");

  m.def(
      "trie_walk",
      [](const Trie& t, uintptr_t ids, int64_t rows, int64_t row_stride, int64_t start, int64_t len, uintptr_t nodes) {
        TrieWalkParams p;
        p.ids = reinterpret_cast<const int64_t*>(ids);
        p.rows = rows;
        p.row_stride = row_stride;
        p.start = start;
        p.len = len;
        p.nodes = reinterpret_cast<int32_t*>(nodes);
        p.trie = t.view();
        py::gil_scoped_release release;
        run_trie_walk_cpu(p);
      },
      py::arg("trie"), py::arg("ids_ptr"), py::arg("rows"), py::arg("row_stride"), py::arg("start"), py::arg("len"),
      py::arg("nodes_ptr"),
      "Node of every row after its int64 ids[start:start+len] (-1 when it leaves the trie).");
  m.def(
      "trie_constrain",
      [](const Trie& t, uintptr_t src, uintptr_t dst, int64_t rows, int64_t vocab, int64_t src_row_stride,
         int64_t dst_row_stride, int32_t elem_bytes, uint32_t neg_inf_bits, uintptr_t nodes, uintptr_t all_neg_inf,
         uintptr_t previous_nodes) {
        if (vocab <= t.max_token()) fail("vocab (", vocab, ") must exceed the trie's largest token ", t.max_token());
        TrieConstrainParams p;
        p.src = reinterpret_cast<const void*>(src);
        p.dst = reinterpret_cast<void*>(dst);
        p.rows = rows;
        p.vocab = vocab;
        p.src_row_stride = src_row_stride;
        p.dst_row_stride = dst_row_stride;
        p.elem_bytes = elem_bytes;
        p.neg_inf_bits = neg_inf_bits;
        p.nodes = reinterpret_cast<const int32_t*>(nodes);
        p.all_neg_inf = reinterpret_cast<uint8_t*>(all_neg_inf);
        p.previous_nodes = reinterpret_cast<const int32_t*>(previous_nodes);
        p.trie = t.view();
        if (p.previous_nodes && dst == src) fail("previous_nodes needs a dst apart from src");
        py::gil_scoped_release release;
        for (const int32_t* ids : {p.nodes, p.previous_nodes}) {
          for (int64_t r = 0; ids && r < rows; ++r)
            if (ids[r] < -1 || ids[r] >= t.num_nodes())
              fail(ids == p.nodes ? "nodes[" : "previous_nodes[", r, "] must be -1 or a node id in [0, ",
                   t.num_nodes(), "), got ", ids[r]);
        }
        return run_trie_constrain_cpu(p);
      },
      py::arg("trie"), py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("rows"), py::arg("vocab"),
      py::arg("src_row_stride"), py::arg("dst_row_stride"), py::arg("elem_bytes"), py::arg("neg_inf_bits"),
      py::arg("nodes_ptr"), py::arg("all_neg_inf_ptr"), py::arg("previous_nodes_ptr") = 0,
      "Write each row's allowed scores (all where it has no continuation) and -inf elsewhere into dst (may be "
      "src); with previous_nodes_ptr, dst holds the output for those nodes and only what changed is rewritten. "
      "Returns -1, or the first row with NaN at a child token of its node, having written nothing.");
}

}  // namespace pyfastseq
