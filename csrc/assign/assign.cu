// CUDA linear sum assignment for batches: one warp per problem. Each warp runs the shortest
// augmenting path method of Crouse 2016 (SciPy's) without initialisation: the per-row Dijkstra's
// column relaxation and minimum search are spread over the 32 lanes (lane l owns columns l, l + 32,
// ...), the dual updates too, and lane 0 flips the augmenting path. Costs are read in place through
// their strides (transposed for tall problems); the solver state lives in a global workspace.
#include <cuda_runtime.h>

#include <cmath>

#include "assign/assign.h"

namespace pyfastseq {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

// Per-problem workspace for up to k = max(rows, cols) columns: 3 double, 3 int and 2 bool arrays,
// the total rounded up to 8 bytes so that every problem's doubles stay aligned.
__host__ __device__ inline int64_t problem_bytes(int64_t k) { return 3 * 8 * k + (3 * 4 * k + 2 * k + 7) / 8 * 8; }

struct ProblemState {
  double *u, *v, *cost_to;  // cost_to: shortest path length to each column
  int *path, *row4col, *col4row;
  bool *scanned_row, *scanned_col;
};

__device__ ProblemState state_at(void* workspace, int64_t b, int64_t k) {
  char* base = static_cast<char*>(workspace) + b * problem_bytes(k);
  ProblemState s;
  s.u = reinterpret_cast<double*>(base);
  s.v = s.u + k;
  s.cost_to = s.v + k;
  s.path = reinterpret_cast<int*>(s.cost_to + k);
  s.row4col = s.path + k;
  s.col4row = s.row4col + k;
  s.scanned_row = reinterpret_cast<bool*>(s.col4row + k);
  s.scanned_col = s.scanned_row + k;
  return s;
}

// Keeps the better of two (length, free column, index) candidates: shorter first, then a free
// column (it ends the path), then the lower index.
__device__ void keep_better(double& len, int& is_free, int& col, double len2, int free2, int col2) {
  const bool better = len2 < len || (len2 == len && (free2 > is_free || (free2 == is_free && col2 < col)));
  if (better) len = len2, is_free = free2, col = col2;
}

__global__ void assign_kernel(AssignParams p, void* workspace) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (b >= p.batch) return;
  int64_t* out = p.col_of_row + b * p.rows;
  for (int64_t i = lane; i < p.rows; i += 32) out[i] = -1;
  const int64_t m = p.row_lens ? p.row_lens[b] : p.rows;
  const int64_t n = p.col_lens ? p.col_lens[b] : p.cols;
  if (m == 0 || n == 0) {
    if (lane == 0) p.status[b] = kAssignOk;
    return;
  }
  const bool transpose = n < m;
  const int nr = static_cast<int>(transpose ? n : m), nc = static_cast<int>(transpose ? m : n);
  const int64_t rs = transpose ? p.col_stride : p.row_stride, cs = transpose ? p.row_stride : p.col_stride;
  const double* src = p.cost + b * p.batch_stride;
  double factor = p.maximize ? -1.0 : 1.0;  // the sign, then times cost_scale
  auto cost = [&](int i, int j) { return factor * src[i * rs + j * cs]; };

  bool invalid = false;
  double peak = 0;
  for (int64_t e = lane; e < static_cast<int64_t>(nr) * nc; e += 32) {
    const double x = cost(static_cast<int>(e / nc), static_cast<int>(e % nc));
    invalid |= isnan(x) || x == -INFINITY;
    if (fabs(x) < INFINITY) peak = fmax(peak, fabs(x));
  }
  if (__any_sync(kFull, invalid)) {
    if (lane == 0) p.status[b] = kAssignInvalid;
    return;
  }
  for (int offset = 16; offset > 0; offset /= 2) peak = fmax(peak, __shfl_xor_sync(kFull, peak, offset));
  factor *= cost_scale(peak, nr, nc);

  const int64_t k = p.rows > p.cols ? p.rows : p.cols;
  ProblemState s = state_at(workspace, b, k);
  for (int j = lane; j < nc; j += 32) s.v[j] = 0, s.row4col[j] = -1;
  for (int i = lane; i < nr; i += 32) s.u[i] = 0, s.col4row[i] = -1;
  __syncwarp();

  for (int cur = 0; cur < nr; ++cur) {
    for (int j = lane; j < nc; j += 32) s.cost_to[j] = INFINITY, s.scanned_col[j] = false;
    for (int i = lane; i < nr; i += 32) s.scanned_row[i] = false;
    __syncwarp();
    double min_val = 0;
    int i = cur, sink = -1;
    while (sink < 0) {
      if (lane == 0) s.scanned_row[i] = true;
      double best = INFINITY;
      int best_free = 0, best_col = nc;
      for (int j = lane; j < nc; j += 32) {
        if (s.scanned_col[j]) continue;
        const double r = min_val + cost(i, j) - s.u[i] - s.v[j];
        if (r < s.cost_to[j]) s.path[j] = i, s.cost_to[j] = r;
        keep_better(best, best_free, best_col, s.cost_to[j], s.row4col[j] < 0, j);
      }
      for (int offset = 16; offset > 0; offset /= 2)
        keep_better(best, best_free, best_col, __shfl_xor_sync(kFull, best, offset),
                    __shfl_xor_sync(kFull, best_free, offset), __shfl_xor_sync(kFull, best_col, offset));
      if (best == INFINITY) {
        if (lane == 0) p.status[b] = kAssignInfeasible;
        return;
      }
      min_val = best;
      if (lane == 0) s.scanned_col[best_col] = true;
      __syncwarp();
      if (best_free) sink = best_col;
      else i = s.row4col[best_col];
    }
    // Dual update (u for the scanned rows, v for the scanned columns), then flip the path.
    for (int r = lane; r < nr; r += 32)
      if (s.scanned_row[r]) s.u[r] += r == cur ? min_val : min_val - s.cost_to[s.col4row[r]];
    for (int j = lane; j < nc; j += 32)
      if (s.scanned_col[j]) s.v[j] -= min_val - s.cost_to[j];
    __syncwarp();
    if (lane == 0) {
      for (int j = sink;;) {
        const int r = s.path[j];
        s.row4col[j] = r;
        const int prev = s.col4row[r];
        s.col4row[r] = j;
        j = prev;
        if (r == cur) break;
      }
    }
    __syncwarp();
  }
  for (int r = lane; r < nr; r += 32) {
    if (transpose) out[s.col4row[r]] = r;
    else out[r] = s.col4row[r];
  }
  if (lane == 0) p.status[b] = kAssignOk;
}

}  // namespace

int64_t assign_cuda_workspace_bytes(const AssignParams& p) {
  return p.batch * problem_bytes(p.rows > p.cols ? p.rows : p.cols);
}

int run_assign_cuda(const AssignParams& p, void* workspace, void* stream) {
  if (p.batch == 0) return 0;
  // The warps' int32 strided loops (j += 32) must not wrap past the last column.
  if ((p.rows > p.cols ? p.rows : p.cols) > INT32_MAX - 32) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t blocks = (p.batch + kWarpsPerBlock - 1) / kWarpsPerBlock;
  assign_kernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      p, workspace);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace pyfastseq
