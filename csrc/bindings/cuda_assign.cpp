#include <pybind11/pybind11.h>

#include "assign/assign.h"

namespace py = pybind11;

namespace pyfastseq {
namespace {

AssignParams params_of(uintptr_t cost, int64_t batch, int64_t rows, int64_t cols) {
  AssignParams p;
  p.cost = reinterpret_cast<const double*>(cost);
  p.batch = batch;
  p.rows = rows;
  p.cols = cols;
  return p;
}

}  // namespace

void bind_assign_cuda(py::module_& m) {
  m.def(
      "assign_workspace_bytes",
      [](int64_t batch, int64_t rows, int64_t cols) {
        return assign_cuda_workspace_bytes(params_of(0, batch, rows, cols));
      },
      py::arg("batch"), py::arg("rows"), py::arg("cols"), "Device workspace bytes assign() needs.");
  m.def(
      "assign",
      [](uintptr_t cost, int64_t batch, int64_t rows, int64_t cols, int64_t batch_stride, int64_t row_stride,
         int64_t col_stride, uintptr_t row_lens, uintptr_t col_lens, bool maximize, uintptr_t col_of_row,
         uintptr_t status, uintptr_t workspace, uintptr_t stream) {
        AssignParams p = params_of(cost, batch, rows, cols);
        p.batch_stride = batch_stride;
        p.row_stride = row_stride;
        p.col_stride = col_stride;
        p.row_lens = reinterpret_cast<const int64_t*>(row_lens);
        p.col_lens = reinterpret_cast<const int64_t*>(col_lens);
        p.maximize = maximize;
        p.col_of_row = reinterpret_cast<int64_t*>(col_of_row);
        p.status = reinterpret_cast<int32_t*>(status);
        return run_assign_cuda(p, reinterpret_cast<void*>(workspace), reinterpret_cast<void*>(stream));
      },
      py::arg("cost_ptr"), py::arg("batch"), py::arg("rows"), py::arg("cols"), py::arg("batch_stride"),
      py::arg("row_stride"), py::arg("col_stride"), py::arg("row_lens_ptr"), py::arg("col_lens_ptr"),
      py::arg("maximize"), py::arg("col_of_row_ptr"), py::arg("status_ptr"), py::arg("workspace_ptr"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "Launch the batched assignment kernel on float64 device costs (strides in elements; length\n"
      "pointers 0 for none, else int64 [batch], validated by the caller). Returns the cudaError_t code.");
}

}  // namespace pyfastseq
