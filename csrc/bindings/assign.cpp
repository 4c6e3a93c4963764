#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "assign/assign.h"
#include "common/errors.h"

namespace py = pybind11;

namespace pyfastseq {
namespace {

using LenArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The optional per-problem lengths as int64 [batch], each in [0, limit]; `keep` owns the converted
// array for as long as the returned pointer is used.
const int64_t* lens_of(const py::object& lens, int64_t batch, int64_t limit, const char* name, LenArray& keep) {
  if (lens.is_none()) return nullptr;
  keep = lens.cast<LenArray>();
  if (keep.ndim() != 1 || keep.shape(0) != batch) fail(name, " must have shape [", batch, "]");
  const int64_t* data = keep.data();
  for (int64_t b = 0; b < batch; ++b)
    if (data[b] < 0 || data[b] > limit) fail(name, "[", b, "] must lie in [0, ", limit, "], got ", data[b]);
  return data;
}

// Pointer, shape and strides (in elements) of a float64 [rows, cols] or [batch, rows, cols] array.
AssignParams params_of(const py::array_t<double>& cost, int ndim, bool maximize) {
  if (cost.ndim() != ndim) fail("cost must be a ", ndim, "-D float64 array");
  for (int d = 0; d < ndim; ++d)
    if (cost.strides(d) % static_cast<py::ssize_t>(sizeof(double)) != 0) fail("cost strides must be multiples of 8 bytes");
  const int first = ndim - 2;
  AssignParams p;
  p.cost = cost.data();
  p.batch = ndim == 3 ? cost.shape(0) : 1;
  p.batch_stride = ndim == 3 ? cost.strides(0) / 8 : 0;
  p.rows = cost.shape(first);
  p.cols = cost.shape(first + 1);
  // The solver indexes rows and columns with int.
  constexpr int64_t kMaxSide = std::numeric_limits<int32_t>::max();
  if (p.rows > kMaxSide || p.cols > kMaxSide) fail("cost has more than ", kMaxSide, " rows or columns");
  p.row_stride = cost.strides(first) / 8;
  p.col_stride = cost.strides(first + 1) / 8;
  p.maximize = maximize;
  return p;
}

}  // namespace

void bind_assign(py::module_& m) {
  m.def(
      "assign",
      [](py::array_t<double> cost, bool maximize, py::object row_lens, py::object col_lens) {
        AssignParams p = params_of(cost, 3, maximize);
        LenArray row_keep, col_keep;
        p.row_lens = lens_of(row_lens, p.batch, p.rows, "row_lens", row_keep);
        p.col_lens = lens_of(col_lens, p.batch, p.cols, "col_lens", col_keep);
        py::array_t<int64_t> col_of_row({p.batch, p.rows});
        py::array_t<int32_t> status(p.batch);
        p.col_of_row = col_of_row.mutable_data();
        p.status = status.mutable_data();
        {
          py::gil_scoped_release release;
          run_assign_cpu(p);
        }
        return py::make_tuple(col_of_row, status);
      },
      py::arg("cost"), py::arg("maximize"), py::arg("row_lens") = py::none(), py::arg("col_lens") = py::none(),
      "Solve a batch of assignment problems. cost: float64 [batch, rows, cols], any strides; row_lens and\n"
      "col_lens: optional int64 [batch]. Returns (col_of_row int64 [batch, rows] with -1 for unassigned\n"
      "rows, status int32 [batch]: 0 ok, 1 infeasible, 2 NaN or -inf entries).");
  m.def(
      "assign_matrix",
      [](py::array_t<double> cost, bool maximize) {
        AssignParams p = params_of(cost, 2, maximize);
        std::vector<int64_t> col_of_row(static_cast<size_t>(p.rows));
        int32_t status = kAssignOk;
        p.col_of_row = col_of_row.data();
        p.status = &status;
        {
          py::gil_scoped_release release;
          run_assign_cpu(p);
        }
        const int64_t k = status == kAssignOk ? std::min(p.rows, p.cols) : 0;
        py::array_t<int64_t> row_ind(k), col_ind(k);
        int64_t* rows = row_ind.mutable_data();
        int64_t* cols = col_ind.mutable_data();
        for (int64_t i = 0, out = 0; out < k; ++i)
          if (col_of_row[i] >= 0) rows[out] = i, cols[out++] = col_of_row[i];
        return py::make_tuple(row_ind, col_ind, status);
      },
      py::arg("cost"), py::arg("maximize"),
      "Solve one float64 [rows, cols] problem (any strides). Returns (row_ind, col_ind, status) with\n"
      "SciPy's index arrays (empty unless status is 0).");
}

}  // namespace pyfastseq
