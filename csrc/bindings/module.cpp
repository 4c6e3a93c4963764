// pyfastseq._C: the CPU kernels. Each kernel family binds itself in csrc/bindings/<family>.cpp.
#include <pybind11/pybind11.h>

#include <cstring>

#include "common/errors.h"

namespace py = pybind11;

namespace pyfastseq {
void bind_assign(py::module_& m);
void bind_beam(py::module_& m);
void bind_build_info(py::module_& m);
void bind_lcs(py::module_& m);
void bind_sampling(py::module_& m);
void bind_trie(py::module_& m);
}  // namespace pyfastseq

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyfastseq CPU kernels (torch-free C++ core). Use the pyfastseq package, not this module.";
  // InvalidArgument -> ValueError, its message decoded leniently: a message may quote a file name
  // that is not UTF-8, which pybind11's own translation would turn into a UnicodeDecodeError.
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const pyfastseq::InvalidArgument& e) {
      PyObject* message = PyUnicode_DecodeUTF8(e.what(), static_cast<Py_ssize_t>(std::strlen(e.what())), "backslashreplace");
      PyErr_SetObject(PyExc_ValueError, message);
      Py_XDECREF(message);
    }
  });
  pyfastseq::bind_assign(m);
  pyfastseq::bind_beam(m);
  pyfastseq::bind_build_info(m);
  pyfastseq::bind_lcs(m);
  pyfastseq::bind_sampling(m);
  pyfastseq::bind_trie(m);
}
