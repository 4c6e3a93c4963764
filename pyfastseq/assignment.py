"""Linear sum assignment (the Hungarian problem), SciPy's contract plus a batched form (seed 002).

The native solver (``csrc/assign/``) is a shortest augmenting path method with Jonker-Volgenant
initialisation; it returns an optimal assignment, with the same optimal total as
``scipy.optimize.linear_sum_assignment`` on every input SciPy accepts and the same exceptions where
SciPy rejects one. Ties may be broken differently, so the chosen cells can differ where several
assignments share the optimum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _backend
from ._backend import _C
from ._limits import check_memory
from ._validate import INT32_MAX, as_array, check_holds_values, check_integer_dtype, native_array

__all__ = ["linear_sum_assignment"]

# Status codes of the native solver (assign.h: AssignStatus).
_INFEASIBLE, _INVALID = 1, 2
_MESSAGES = {_INFEASIBLE: "cost matrix is infeasible", _INVALID: "cost matrix contains invalid numeric entries"}


def linear_sum_assignment(cost: Any, maximize: bool = False, *, row_lens: Any = None, col_lens: Any = None):
    """Solve the linear sum assignment problem for one cost matrix or a batch of them.

    A cost matrix ``C`` of shape ``[m, n]`` asks for ``k = min(m, n)`` cells, no two in one row or
    column, whose sum is minimal (maximal with ``maximize=True``). ``+inf`` marks a forbidden cell
    (``-inf`` with ``maximize``); NaN, and ``-inf`` (``+inf`` with ``maximize``), are invalid.

    Args:
        cost: ``[m, n]`` or ``[B, m, n]``; a NumPy array, a nested list, or a torch tensor (CPU or,
            batched, CUDA). Any real dtype: bool, int and float are solved in float64, as SciPy does.
        maximize: maximise the total instead of minimising it.
        row_lens, col_lens: batched only, optional ``[B]`` ints: problem ``b`` is the leading
            ``row_lens[b] x col_lens[b]`` block of ``cost[b]`` (padded ragged batches).

    Returns:
        2-D input: ``(row_ind, col_ind)``, int64 NumPy arrays of length ``k`` sorted by row, exactly as
        ``scipy.optimize.linear_sum_assignment`` returns them; ``C[row_ind, col_ind].sum()`` is the
        optimum.

        3-D input: ``col_of_row``, int64 ``[B, m]``: the column assigned to each row, ``-1`` for rows
        left without one (when a problem has more rows than columns, and padding rows past
        ``row_lens``). A NumPy array for NumPy or list input, a tensor on ``cost``'s device for a tensor.

    Raises:
        ValueError: a shape other than 2-D or 3-D ("expected a matrix"), invalid entries ("cost matrix
            contains invalid numeric entries"), no assignment avoiding forbidden cells ("cost matrix
            is infeasible"); batched messages name the problem. Bad ``row_lens``/``col_lens``.
        TypeError: an array or tensor whose dtype cannot be cast safely to float64 (strings, complex,
            objects). Like SciPy, other input converts element by element as ``float()`` does: a
            complex is a ``TypeError``, a ragged nest or a non-numeric string a ``ValueError``, and
            ``None`` becomes NaN (an invalid entry).

    Example (seed 002, CHID): a passage has 3 blanks and 4 candidate idioms; ``logp[i, j]`` is the
    model's log-probability of idiom ``j`` in blank ``i``. Per-blank argmax may use one idiom twice;
    the assignment gives every blank a distinct idiom with the highest total log-probability:

        >>> logp = np.log([[0.6, 0.3, 0.05, 0.05],
        ...                [0.7, 0.1, 0.1, 0.1],
        ...                [0.1, 0.1, 0.2, 0.6]])
        >>> logp.argmax(axis=1).tolist()  # blanks 0 and 1 both pick idiom 0
        [0, 0, 3]
        >>> linear_sum_assignment(logp, maximize=True)[1].tolist()
        [1, 0, 3]
        >>> batch = np.stack([logp, logp[::-1]])  # many passages at once, padded to [B, blanks, idioms]
        >>> linear_sum_assignment(batch, maximize=True, row_lens=[3, 2]).tolist()
        [[1, 0, 3], [3, 0, -1]]
    """
    maximize = bool(maximize)
    if isinstance(cost, torch.Tensor) and cost.dim() == 3:
        return _solve_tensor(cost, maximize, row_lens, col_lens)
    if type(cost) is np.ndarray and cost.dtype == np.float64:
        _check_size(cost.shape)
        matrix = cost
    else:
        matrix = _as_float64(cost)
    # A packed record's field, or a buffer viewed at an odd offset: the solver steps in aligned float64s.
    if not matrix.flags.aligned or any(stride % 8 for stride in matrix.strides):
        matrix = native_array(matrix)
    if matrix.ndim == 3:
        return _solve_batch(matrix, maximize, row_lens, col_lens)
    if matrix.ndim != 2:
        raise ValueError(
            f"expected a matrix (2-D array) or a batch of matrices (3-D array) for cost, got a {matrix.ndim}-D array"
        )
    if row_lens is not None or col_lens is not None:
        raise ValueError("row_lens and col_lens apply to a batched (3-D) cost only")
    row_ind, col_ind, status = _C.assign_matrix(matrix, maximize)
    if status:
        raise ValueError(_MESSAGES[status])  # SciPy's wording, naming the argument
    return row_ind, col_ind


def _as_float64(cost: Any) -> np.ndarray:
    """``cost`` as a float64 array under SciPy's rules: an array casts only safely (no strings,
    complex, objects); anything else converts element by element as ``float()`` does."""
    if isinstance(cost, torch.Tensor):
        check_holds_values(cost, "cost")
        cost = cost.detach().cpu()
        if cost.dtype.is_complex:
            raise TypeError(f"Cannot cast cost from {cost.dtype} to float64 according to the rule 'safe'")
        _check_size(tuple(cost.shape))
        cost = cost.to(torch.float64).numpy()
    if not isinstance(cost, np.ndarray):
        try:
            arr = np.asarray(cost, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"cost must be an array-like of real numbers: {exc}") from None
        _check_size(arr.shape)
        return arr
    arr = as_array(cost, "cost")
    if not np.can_cast(arr.dtype, np.float64, "safe"):
        raise TypeError(
            f"Cannot cast array data of cost from {arr.dtype!r} to dtype('float64') according to the rule 'safe'"
        )
    _check_size(arr.shape)
    return arr.astype(np.float64, copy=False)


def _check_size(shape: tuple) -> None:
    """Cap check for a float64 copy of the costs (cast, or transposed for a tall matrix), the
    solver's per-problem vectors and the output, before any of them is allocated; and the solver's
    bound: it indexes rows and columns with 32-bit ints."""
    if len(shape) >= 2 and max(shape[-2:]) > INT32_MAX:
        raise ValueError(f"cost has {max(shape[-2:])} {'rows' if shape[-2] > INT32_MAX else 'columns'}; "
                         f"linear_sum_assignment solves at most {INT32_MAX} of each")
    cells = int(np.prod(shape, dtype=np.float64))
    rows = int(np.prod(shape[:-1], dtype=np.float64)) if shape else 0
    nbytes = 8 * cells + 48 * rows + 48 * (shape[-1] if shape else 0)
    check_memory(nbytes, f"linear_sum_assignment on cost of shape {shape}")


def _lengths(lens: Any, batch: int, limit: int, name: str) -> np.ndarray | None:
    """Optional per-problem sizes as int64 ``[batch]``, each in ``[0, limit]``."""
    if lens is None:
        return None
    arr = as_array(lens, name)
    check_integer_dtype(arr.dtype, name)
    if arr.shape != (batch,):
        raise ValueError(f"{name} must have shape [{batch}] (one length per problem), got {tuple(arr.shape)}")
    if batch and (arr.min() < 0 or arr.max() > limit):
        b = int(np.flatnonzero((arr < 0) | (arr > limit))[0])
        raise ValueError(f"{name}[{b}] must lie in [0, {limit}], got {int(arr[b])}")
    return native_array(arr, np.int64)


def _raise_for(status: np.ndarray) -> None:
    failed = np.flatnonzero(status)
    if failed.size:
        b = int(failed[0])
        raise ValueError(f"{_MESSAGES[int(status[b])]} (problem {b} of the batch)")


def _solve_batch(cost: np.ndarray, maximize: bool, row_lens: Any, col_lens: Any) -> np.ndarray:
    batch, rows, cols = cost.shape
    row_lens = _lengths(row_lens, batch, rows, "row_lens")
    col_lens = _lengths(col_lens, batch, cols, "col_lens")
    col_of_row, status = _C.assign(cost, maximize, row_lens, col_lens)
    _raise_for(status)
    return col_of_row


def _solve_tensor(cost: torch.Tensor, maximize: bool, row_lens: Any, col_lens: Any) -> torch.Tensor:
    check_holds_values(cost, "cost")
    if cost.dtype.is_complex:
        raise TypeError(f"Cannot cast cost from {cost.dtype} to float64 according to the rule 'safe'")
    batch, rows, cols = cost.shape
    _check_size((batch, rows, cols))
    lens = [
        None if arr is None else torch.from_numpy(arr).to(cost.device)
        for arr in (_lengths(row_lens, batch, rows, "row_lens"), _lengths(col_lens, batch, cols, "col_lens"))
    ]
    col_of_row, status = torch.ops.pyfastseq.assign_batch(cost.detach().to(torch.float64), maximize, *lens)
    _raise_for(status.cpu().numpy())
    return col_of_row


@torch.library.custom_op("pyfastseq::assign_batch", mutates_args=(), device_types=("cpu", "cuda"))
def _assign_batch_op(
    cost: torch.Tensor, maximize: bool, row_lens: torch.Tensor | None, col_lens: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if cost.dtype != torch.float64 or cost.dim() != 3:
        raise TypeError(f"cost must be a 3-D float64 tensor, got {cost.dim()}-D {cost.dtype}")
    batch, rows, cols = cost.shape
    if cost.data_ptr() % cost.element_size():  # a buffer viewed at an odd offset: the solver reads aligned float64s
        cost = cost.clone()
    if not _backend.on_gpu(cost):
        as_numpy = [None if t is None else t.numpy() for t in (row_lens, col_lens)]
        col_of_row, status = _C.assign(cost.numpy(), maximize, *as_numpy)
        return torch.from_numpy(col_of_row), torch.from_numpy(status)
    for name, lens, limit in (("row_lens", row_lens, rows), ("col_lens", col_lens, cols)):
        # The kernel trusts the lengths; the op can be called directly, so they are checked here.
        if lens is not None and (
            lens.shape != (batch,) or lens.dtype != torch.int64 or lens.device != cost.device
            or bool(((lens < 0) | (lens > limit)).any())
        ):
            raise ValueError(f"{name} must be int64 [{batch}] on {cost.device} with entries in [0, {limit}]")
    col_of_row = torch.empty((batch, rows), dtype=torch.int64, device=cost.device)
    status = torch.empty(batch, dtype=torch.int32, device=cost.device)
    cuda = _backend.cuda()
    workspace = torch.empty(cuda.assign_workspace_bytes(batch, rows, cols), dtype=torch.uint8, device=cost.device)
    with torch.cuda.device(cost.device):  # the launch goes to the current GPU
        err = cuda.assign(
            cost.data_ptr(), batch, rows, cols, *cost.stride(),
            0 if row_lens is None else row_lens.data_ptr(), 0 if col_lens is None else col_lens.data_ptr(),
            maximize, col_of_row.data_ptr(), status.data_ptr(), workspace.data_ptr(), _backend.stream_of(cost),
        )
    if err != 0:
        raise RuntimeError(f"assignment kernel launch failed (cudaError {err})")
    return col_of_row, status


@_assign_batch_op.register_fake
def _(cost, maximize, row_lens, col_lens):
    batch, rows, _ = cost.shape
    return cost.new_empty((batch, rows), dtype=torch.int64), cost.new_empty((batch,), dtype=torch.int32)
