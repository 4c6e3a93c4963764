// Linear sum assignment (the Hungarian problem): for a cost matrix C [m, n], choose min(m, n) cells,
// at most one per row and per column, minimising (or maximising) their sum. Seed 002 uses it to give
// CHID's blanks distinct idioms; users solve thousands of tiny problems per call, and large ones.
//
// The solver is a shortest augmenting path method with Jonker-Volgenant initialisation:
//   R. Jonker, A. Volgenant, "A shortest augmenting path algorithm for dense and sparse linear
//   assignment problems", Computing 38 (1987) 325-340: column reduction, reduction transfer and
//   augmenting row reduction assign most rows cheaply, Dijkstra-like augmentation finishes the rest.
//   D. F. Crouse, "On implementing 2D rectangular assignment algorithms", IEEE Trans. Aerospace and
//   Electronic Systems 52(4) (2016) 1679-1696: the rectangular case (dual prices of unassigned columns
//   stay zero) and +inf as a forbidden cell, as in SciPy's linear_sum_assignment.
// Both give the exact optimum. The semantics mirror SciPy: a tall matrix is solved transposed,
// `maximize` negates the costs, NaN and -inf (after negation) are invalid, and a problem in which
// every full assignment uses a +inf cell is infeasible.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PYFASTSEQ_HOST_DEVICE __host__ __device__
#else
#define PYFASTSEQ_HOST_DEVICE
#endif

namespace pyfastseq {

enum AssignStatus : int32_t { kAssignOk = 0, kAssignInfeasible = 1, kAssignInvalid = 2 };

// A batch of B cost matrices, element (b, i, j) at cost[b * batch_stride + i * row_stride + j *
// col_stride] (strides in elements, any sign). Problem b uses the leading
// row_lens[b] x col_lens[b] block (the full rows x cols when the pointer is null).
struct AssignParams {
  const double* cost = nullptr;
  int64_t batch = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 1;
  const int64_t* row_lens = nullptr;  // [batch] or null; each in [0, rows]
  const int64_t* col_lens = nullptr;  // [batch] or null; each in [0, cols]
  bool maximize = false;
  int64_t* col_of_row = nullptr;      // out [batch, rows]: the column assigned to each row, -1 for none
  int32_t* status = nullptr;          // out [batch]: an AssignStatus per problem
};

// The power of two an nr x nc problem's costs are solved at, given their largest finite magnitude
// `peak`: 1 unless the costs come so near DBL_MAX that the solver's path lengths and prices (sums
// of up to nr + nc costs and differences of them) could overflow to inf, and a feasible problem
// read as infeasible. A power of two rounds nothing (short of the subnormal range), so the scaled
// problem has the same optimum.
inline PYFASTSEQ_HOST_DEVICE double cost_scale(double peak, int64_t nr, int64_t nc) {
  const double headroom = 8.0 * static_cast<double>(nr + nc);
  if (!(peak * headroom > DBL_MAX)) return 1.0;  // the common case, without a division (inf counts as past)
  const double bound = DBL_MAX / headroom;
  int exponent;
  frexp(peak / bound, &exponent);  // peak / bound < 2^exponent
  return ldexp(1.0, -exponent);
}

// CPU, problems in parallel. Lengths must be validated by the caller. Returns the number of
// problems whose status is not kAssignOk.
int64_t run_assign_cpu(const AssignParams& params);

// CUDA, one warp per problem; every pointer is device memory and `workspace` holds
// assign_cuda_workspace_bytes(params) bytes. Launched on `stream`, asynchronous. Returns a
// cudaError_t value (0 on success).
int64_t assign_cuda_workspace_bytes(const AssignParams& params);
int run_assign_cuda(const AssignParams& params, void* workspace, void* stream);

}  // namespace pyfastseq
