// pyfastseq._cuda: the CUDA kernels, loaded lazily by pyfastseq._backend when a tensor is on a GPU.
// Every function takes device pointers and a cudaStream_t as integers and launches asynchronously.
#include <pybind11/pybind11.h>

#include "trie/trie_mask.h"

namespace py = pybind11;

namespace pyfastseq {
void bind_assign_cuda(py::module_& m);
void bind_beam_cuda(py::module_& m);
}  // namespace pyfastseq

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyfastseq CUDA kernels. Use the pyfastseq package, not this module.";
  m.attr("architectures") = PYFASTSEQ_CUDA_ARCHITECTURES;
  m.def(
      "trie_mask",
      [](uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, int32_t elem_bytes,
         uint32_t fill_bits, uintptr_t nodes, uintptr_t child_begin, uintptr_t child_token,
         int32_t num_nodes, uintptr_t stream) {
        const pyfastseq::TrieMaskParams p = pyfastseq::trie_mask_params(logits, rows, vocab, row_stride, elem_bytes, fill_bits, nodes,
                                                 child_begin, child_token, num_nodes);
        py::gil_scoped_release release;
        return pyfastseq::run_trie_mask_cuda(p, reinterpret_cast<void*>(stream));
      },
      py::arg("logits_ptr"), py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("elem_bytes"),
      py::arg("fill_bits"), py::arg("nodes_ptr"), py::arg("child_begin_ptr"), py::arg("child_token_ptr"),
      py::arg("num_nodes"), py::arg("stream"),
      "Launch the trie mask kernel; returns the cudaError_t code of the launch.");
  pyfastseq::bind_assign_cuda(m);
  pyfastseq::bind_beam_cuda(m);
}
