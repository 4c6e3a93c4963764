"""linear_sum_assignment against SciPy (same optimum, same exceptions) and a brute-force reference."""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linear_sum_assignment as scipy_lsa

import pyfastseq as fs
from conftest import torch_device
from pyfastseq.reference.assignment import linear_sum_assignment as brute_force_lsa

pytestmark = pytest.mark.native


def outcome(solver, cost, maximize=False):
    """("ok", optimal total) or (exception type, message) for one solver on one input."""
    try:
        rows, cols = solver(cost, maximize=maximize)
    except (ValueError, TypeError) as exc:
        return type(exc), str(exc)
    matrix = np.asarray(cost, dtype=np.float64)
    assert_valid(matrix, rows, cols)
    return "ok", matrix[rows, cols].sum()


def assert_valid(matrix, rows, cols):
    """A full assignment: min(m, n) cells, rows sorted, no row or column twice, no forbidden cell."""
    assert rows.dtype == np.int64 and cols.dtype == np.int64
    assert len(rows) == len(cols) == min(matrix.shape)
    assert np.all(np.diff(rows) > 0)
    assert len(set(cols.tolist())) == len(cols)


def assert_same_as_scipy(cost, maximize=False):
    ours, theirs = outcome(fs.linear_sum_assignment, cost, maximize), outcome(scipy_lsa, cost, maximize)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "ok":
        assert ours[1] == pytest.approx(theirs[1], rel=1e-12, abs=1e-12)
    else:  # SciPy's message is part of ours
        assert theirs[1].split(" ")[-1] in ours[1]


# -- SciPy's own test cases -------------------------------------------------------------------

# (cost matrix, the cost of the optimal cell in each row): SciPy's small-input cases.
SMALL_CASES = [
    ([[400, 150, 400], [400, 450, 600], [300, 225, 300]], [150, 400, 300]),
    ([[400, 150, 400, 1], [400, 450, 600, 2], [300, 225, 300, 3]], [150, 2, 300]),
    ([[10, 10, 8], [9, 8, 1], [9, 7, 4]], [10, 1, 7]),
    ([[10, 10, 8, 11], [9, 8, 1, 1], [9, 7, 4, 10]], [10, 1, 4]),
    ([[10, np.inf, np.inf], [np.inf, np.inf, 1], [np.inf, 7, np.inf]], [10, 1, 7]),
]


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("case", range(len(SMALL_CASES)))
def test_small_cases__sign(case, sign):
    matrix, expected = SMALL_CASES[case]
    cost = sign * np.array(matrix, dtype=np.float64)
    rows, cols = fs.linear_sum_assignment(cost, maximize=sign == -1)
    np.testing.assert_array_equal(cost[rows, cols], sign * np.array(expected))
    rows, cols = fs.linear_sum_assignment(cost.T, maximize=sign == -1)
    assert_valid(cost.T, rows, cols)
    np.testing.assert_array_equal(np.sort(cost.T[rows, cols]), np.sort(sign * np.array(expected)))


def test_list_bool_int_inputs_match_float():
    identity = np.identity(3)
    expected = fs.linear_sum_assignment(identity)
    for cost in (identity.tolist(), identity.astype(bool), identity.astype(np.int64), identity.astype(np.float32),
                 torch.from_numpy(identity), torch.from_numpy(identity).bool()):
        got = fs.linear_sum_assignment(cost)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(
    "cost",
    [
        [1, 2, 3],
        5,
        np.identity(3).astype(str),
        np.identity(3).astype(complex),
        np.array([[1, None]], dtype=object),
        np.diag([np.nan, 1, 1]),
        np.diag([1, -np.inf, 1]),
        np.diag([1, np.inf, 1]),
        np.array([[np.inf, 1.0], [np.inf, 2.0]]),
        np.array([[np.inf, np.inf, np.inf], [1, 2, 3]]),
        np.zeros((4, 4, 4, 4)),
        # Not arrays: SciPy converts these element by element, as float() does.
        None,
        "ab",
        [[1, 2], [3]],
        [[2**64, 1], [1, 1]],
        [[Fraction(1, 2), 1], [1, Fraction(1, 3)]],
        [[1 + 0j]],
        [["1", "2"], ["0", "5"]],
        [[1, None]],
    ],
    ids=["1d", "scalar", "str", "complex", "object", "nan", "neg_inf", "inf_diag", "inf_column", "inf_row", "4d",
         "none", "list_str", "ragged", "beyond_int64", "fractions", "list_complex", "numeric_strings", "list_none"],
)
@pytest.mark.parametrize("maximize", [False, True])
def test_rejections_match_scipy(cost, maximize):
    ours, theirs = outcome(fs.linear_sum_assignment, cost, maximize), outcome(scipy_lsa, cost, maximize)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] != "ok":
        assert " ".join(theirs[1].split()[:2]) in ours[1], (ours, theirs)  # the same kind of complaint
        assert "cost" in ours[1]  # names the argument
    else:
        assert ours[1] == theirs[1]


@pytest.mark.parametrize("shape", [(0, 0), (2, 0), (0, 3)])
def test_empty(shape):
    rows, cols = fs.linear_sum_assignment(np.empty(shape))
    assert rows.shape == cols.shape == (0,) and rows.dtype == cols.dtype == np.int64


@pytest.mark.parametrize("n", [1, 5, 8, 17, 40])
def test_constant_matrix_ties(n):
    rows, cols = fs.linear_sum_assignment(np.ones((n, n)))
    np.testing.assert_array_equal(rows, np.arange(n))
    np.testing.assert_array_equal(np.sort(cols), np.arange(n))


def test_sparse_inf_matrices_match_scipy():
    # SciPy's cross-check against csgraph, against SciPy itself: ~6% finite cells, many infeasible.
    rng = np.random.default_rng(12342309)
    for _ in range(30):
        cost = np.where(rng.random((60, 60)) < 0.06, rng.integers(1, 100, (60, 60)), np.inf)
        assert_same_as_scipy(cost)


@pytest.mark.parametrize("scale", [1e300, -1e300, 1e-300])
@pytest.mark.parametrize("maximize", [False, True])
def test_extreme_values(scale, maximize):
    rng = np.random.default_rng(3)
    assert_same_as_scipy(rng.integers(-3, 4, (7, 9)) * scale, maximize)
    assert_same_as_scipy(rng.integers(-3, 4, (9, 7)) * scale, maximize)


def test_int64_costs():
    rng = np.random.default_rng(4)
    assert_same_as_scipy(rng.integers(-(2**40), 2**40, (30, 25), dtype=np.int64))


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 17), (120, 120), (50, 200), (200, 50), (300, 301)])
@pytest.mark.parametrize("maximize", [False, True])
def test_random_sizes_match_scipy(shape, maximize):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    assert_same_as_scipy(rng.random(shape), maximize)
    assert_same_as_scipy(rng.integers(0, 5, shape), maximize)  # heavy ties


def test_strided_views():
    rng = np.random.default_rng(5)
    base = rng.random((30, 40))
    for view in (base.T, base[::-1], base[::2, ::3], np.asfortranarray(base)):
        assert_same_as_scipy(view)



def test_costs_off_their_element_alignment():
    # Views of a byte buffer at an odd offset: SciPy takes them; so do the matrix and both batch routes.
    rng = np.random.default_rng(8)
    costs = rng.random((3, 6, 5))
    view = np.frombuffer(bytearray(costs.nbytes + 1), dtype=np.float64, offset=1).reshape(costs.shape)
    view[:] = costs
    assert not view.flags.aligned
    assert_same_as_scipy(view[0])
    expected = fs.linear_sum_assignment(costs)
    np.testing.assert_array_equal(fs.linear_sum_assignment(view), expected)
    tensor = torch.frombuffer(bytearray(costs.nbytes + 1), dtype=torch.float64, offset=1, count=costs.size)
    tensor = tensor.view(costs.shape).copy_(torch.from_numpy(costs))
    np.testing.assert_array_equal(fs.linear_sum_assignment(tensor).numpy(), expected)


def test_float64_fields_of_packed_records():
    # Strides that are not whole float64s (a field of a packed structured array): SciPy takes them.
    rng = np.random.default_rng(6)
    records = np.zeros((7, 9), dtype=[("flag", "u1"), ("cost", "f8")])
    records["cost"] = rng.random((7, 9))
    assert records["cost"].strides[1] % 8
    assert_same_as_scipy(records["cost"])
    assert_same_as_scipy(records["cost"].T)
    batch = np.zeros((3, 4, 5), dtype=[("flag", "u1"), ("cost", "f8")])
    batch["cost"] = rng.random((3, 4, 5))
    np.testing.assert_array_equal(fs.linear_sum_assignment(batch["cost"]),
                                  fs.linear_sum_assignment(np.ascontiguousarray(batch["cost"])))


@pytest.mark.parametrize("shape", [(1, 2**31 + 10), (2**31 + 10, 1), (2, 1, 2**31), (2, 2**31, 3)])
def test_sides_beyond_int32__raise_before_solving(shape):
    # Broadcast views: no memory behind them, but a solver indexing with int would truncate.
    side = "rows" if shape[-2] > 2**31 - 1 else "columns"
    for cost in (np.broadcast_to(1.0, shape), torch.ones(1, dtype=torch.float64).expand(shape)):
        with pytest.raises(ValueError, match=rf"cost has {max(shape[-2:])} {side}; .* at most 2147483647"):
            fs.linear_sum_assignment(cost)
    from pyfastseq import _C

    entry = _C.assign_matrix if len(shape) == 2 else _C.assign
    with pytest.raises(ValueError, match="cost has more than 2147483647 rows or columns"):
        entry(np.broadcast_to(1.0, shape), False)


# -- hypothesis ---------------------------------------------------------------------------------

cells = st.one_of(st.integers(-5, 5).map(float), st.floats(-1e3, 1e3), st.just(np.inf))
tiny_matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=6), elements=cells)
matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=20), elements=cells)


@given(tiny_matrices, st.booleans())
def test_hypothesis_brute_force(cost, maximize):
    cost = -cost if maximize else cost  # keep +inf forbidden under maximize too
    ours, reference = outcome(fs.linear_sum_assignment, cost, maximize), outcome(brute_force_lsa, cost, maximize)
    assert ours[0] == reference[0], (ours, reference)
    if ours[0] == "ok":
        assert ours[1] == pytest.approx(reference[1], rel=1e-12, abs=1e-9)


@given(matrices, st.booleans())
def test_hypothesis_scipy(cost, maximize):
    assert_same_as_scipy(cost, maximize)


# -- batches ------------------------------------------------------------------------------------


def scipy_totals(cost, maximize=False, row_lens=None, col_lens=None):
    totals = []
    for b, matrix in enumerate(cost):
        matrix = matrix[: matrix.shape[0] if row_lens is None else row_lens[b],
                        : matrix.shape[1] if col_lens is None else col_lens[b]]
        rows, cols = scipy_lsa(matrix, maximize=maximize)
        totals.append(matrix[rows, cols].sum())
    return np.array(totals)


def batch_totals(cost, col_of_row):
    """Totals of a [B, m] column-per-row answer, after checking every answer is an assignment."""
    col_of_row = np.asarray(col_of_row)
    totals = []
    for matrix, cols in zip(cost, col_of_row):
        assigned = cols[cols >= 0]
        assert len(set(assigned.tolist())) == len(assigned)
        totals.append(matrix[np.flatnonzero(cols >= 0), assigned].sum())
    return np.array(totals)


@pytest.mark.parametrize("batch__rows__cols", [(1, 1, 1), (64, 4, 10), (50, 10, 10), (20, 16, 16), (9, 17, 30),
                                               (7, 12, 5), (0, 3, 3), (5, 0, 4)])
@pytest.mark.parametrize("maximize", [False, True])
def test_batch_matches_scipy_loop(batch__rows__cols, maximize):
    batch, rows, cols = batch__rows__cols
    cost = np.random.default_rng(batch + rows).random((batch, rows, cols))
    col_of_row = fs.linear_sum_assignment(cost, maximize)
    assert isinstance(col_of_row, np.ndarray) and col_of_row.dtype == np.int64
    assert col_of_row.shape == (batch, rows)
    assert ((col_of_row >= 0).sum(axis=1) == min(rows, cols)).all()
    np.testing.assert_allclose(batch_totals(cost, col_of_row), scipy_totals(cost, maximize), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool])
def test_batch_torch_in_torch_out(dtype):
    cost = (torch.rand(40, 5, 8, dtype=torch.float64) * 10).to(dtype)
    col_of_row = fs.linear_sum_assignment(cost)
    assert isinstance(col_of_row, torch.Tensor) and col_of_row.dtype == torch.int64
    as_float = cost.to(torch.float64).numpy()
    np.testing.assert_allclose(batch_totals(as_float, col_of_row.numpy()), scipy_totals(as_float), rtol=1e-12)


def test_batch_non_contiguous_tensor():
    cost = torch.rand(30, 9, 6, dtype=torch.float64).transpose(1, 2)
    col_of_row = fs.linear_sum_assignment(cost, maximize=True)
    as_numpy = cost.contiguous().numpy()
    np.testing.assert_allclose(batch_totals(as_numpy, col_of_row), scipy_totals(as_numpy, True), rtol=1e-12)


@pytest.mark.parametrize("tensor", [False, True])
def test_ragged_batch(tensor):
    rng = np.random.default_rng(7)
    batch, rows, cols = 60, 8, 11
    cost = rng.random((batch, rows, cols))
    row_lens, col_lens = rng.integers(0, rows + 1, batch), rng.integers(0, cols + 1, batch)
    cost[0, :, :] = np.nan  # padding is never read
    cost[0, :3, :4] = rng.random((3, 4))
    row_lens[0], col_lens[0] = 3, 4
    args = (torch.from_numpy(cost), torch.from_numpy(row_lens), torch.from_numpy(col_lens)) if tensor else (
        cost, row_lens.tolist(), col_lens.tolist())
    col_of_row = np.asarray(fs.linear_sum_assignment(args[0], row_lens=args[1], col_lens=args[2]))
    for b in range(batch):
        assert (col_of_row[b, row_lens[b]:] == -1).all()
        assert (col_of_row[b] < col_lens[b]).all()
        assert (col_of_row[b] >= 0).sum() == min(row_lens[b], col_lens[b])
    np.testing.assert_allclose(batch_totals(cost, col_of_row), scipy_totals(cost, False, row_lens, col_lens),
                               rtol=1e-12)


def test_batch_errors_name_the_problem():
    cost = np.random.default_rng(8).random((5, 3, 3))
    cost[3, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"contains invalid numeric entries \(problem 3"):
        fs.linear_sum_assignment(cost)
    cost[3, 1, 1] = 0
    cost[2, :, 0] = np.inf
    cost[2, :, 1] = np.inf
    with pytest.raises(ValueError, match=r"cost matrix is infeasible \(problem 2"):
        fs.linear_sum_assignment(torch.from_numpy(cost))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(row_lens=[1, 2]), ValueError, r"row_lens must have shape \[3\]"),
        (dict(col_lens=[1, 2, 5]), ValueError, r"col_lens\[2\] must lie in \[0, 4\], got 5"),
        (dict(row_lens=[1, -1, 2]), ValueError, r"row_lens\[1\] must lie in \[0, 2\], got -1"),
        (dict(row_lens=[1.0, 2.0, 1.0]), TypeError, "row_lens must hold integers"),
    ],
)
def test_length_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.linear_sum_assignment(np.zeros((3, 2, 4)), **kwargs)
    with pytest.raises(error, match=match):
        fs.linear_sum_assignment(torch.zeros(3, 2, 4), **kwargs)


@pytest.mark.parametrize("cost, error, match", [
    (torch.zeros(2, 3, 3, dtype=torch.float64, device="meta"), ValueError, "cost is on the meta device"),
    (torch.zeros(3, 3, device="meta"), ValueError, "cost is on the meta device"),
    (torch.eye(3).to_sparse(), TypeError, "cost must be a dense"),
    (torch.eye(3).expand(2, 3, 3).to_sparse(), TypeError, "cost must be a dense"),
])
def test_tensors_that_hold_no_dense_values(cost, error, match):
    with pytest.raises(error, match=match):
        fs.linear_sum_assignment(cost)


def test_lengths_need_a_batch():
    with pytest.raises(ValueError, match="row_lens and col_lens apply to a batched"):
        fs.linear_sum_assignment(np.zeros((2, 2)), row_lens=[2])


def test_native_entry_checks_lengths():
    # The binding re-checks what Python validated: no call can read outside the cost array.
    from pyfastseq import _C

    with pytest.raises(ValueError, match=r"row_lens\[0\] must lie in \[0, 2\]"):
        _C.assign(np.zeros((1, 2, 2)), False, np.array([3]), None)


def test_compiles_with_torch_compile():
    cost = torch.rand(6, 3, 5, dtype=torch.float64)
    compiled = torch.compile(lambda c: torch.ops.pyfastseq.assign_batch(c, False, None, None)[0], fullgraph=True)
    torch.testing.assert_close(compiled(cost), fs.linear_sum_assignment(cost))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), "emulated"])
@pytest.mark.parametrize("batch__rows__cols", [(1000, 10, 10), (300, 4, 10), (100, 40, 33), (3, 70, 100)])
@pytest.mark.parametrize("maximize", [False, True])
def test_cuda_matches_scipy(batch__rows__cols, maximize, device, request):
    batch, rows, cols = batch__rows__cols
    if device == "emulated":  # the same shapes, fewer problems: the emulator runs a warp at a time
        batch = max(3, batch // 20)
    device = torch_device(device, request)
    cost = torch.rand(batch, rows, cols, dtype=torch.float64)
    cost[0, 0, 1:] = -np.inf if maximize else np.inf  # forbidden cells
    cost[2] = torch.randint(0, 3, (rows, cols))  # ties
    row_lens = torch.randint(0, rows + 1, (batch,))
    col_lens = torch.randint(0, cols + 1, (batch,))
    for row_l, col_l in ((None, None), (row_lens, None), (row_lens, col_lens)):
        got = fs.linear_sum_assignment(cost.to(device), maximize, row_lens=row_l, col_lens=col_l)
        assert got.device.type == torch.device(device).type and got.dtype == torch.int64 and got.shape == (batch, rows)
        expected = scipy_totals(cost.numpy(), maximize, *(None if lens is None else lens.numpy() for lens in (row_l, col_l)))
        np.testing.assert_allclose(batch_totals(cost.numpy(), got.cpu().numpy()), expected, rtol=1e-12)
    bad = cost.to(device).float()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"invalid numeric entries \(problem 1"):
        fs.linear_sum_assignment(bad, maximize)


def exact_optimum(matrix, maximize):
    """The optimal total of a small matrix, summed exactly (float64 sums of costs near DBL_MAX overflow)."""
    work = matrix if matrix.shape[0] <= matrix.shape[1] else matrix.T
    totals = (sum(Fraction(work[i, j]) for i, j in enumerate(chosen))
              for chosen in itertools.permutations(range(work.shape[1]), work.shape[0]))
    return max(totals) if maximize else min(totals)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), "emulated"])
@pytest.mark.parametrize("shape", [(12, 4, 5), (12, 5, 4), (2, 3, 20)])  # 20 columns: solved where they lie
@pytest.mark.parametrize("maximize", [False, True])
def test_costs_near_the_float64_limit(device, shape, maximize, request):
    # Finite costs whose differences overflow float64 ([[1e308, 1e308], [-1e308, -1e308]], say): every
    # problem is feasible, and the optimum holds up to the costs' own rounding.
    if device == "cpu":
        assert_same_as_scipy(np.array([[1e308, 1e308], [-1e308, -1e308]]), maximize)
    rng = np.random.default_rng(shape[1])
    costs = rng.choice([1.7e308, -1.7e308, 1e308, -1e308, 5e307, 1.0, 0.0], size=shape)
    costs[1] *= rng.random(shape[1:])
    costs[0, : shape[1] // 2], costs[0, shape[1] // 2 :] = 1e308, -1e308
    tolerance = Fraction(1.7e308) * 1e-15 * sum(shape[1:])
    got = fs.linear_sum_assignment(torch.from_numpy(costs).to(torch_device(device, request)), maximize).cpu().numpy()
    for b, matrix in enumerate(costs):
        best = exact_optimum(matrix, maximize)
        rows = np.flatnonzero(got[b] >= 0)
        assert abs(sum(Fraction(x) for x in matrix[rows, got[b, rows]]) - best) <= tolerance
        if device == "cpu":
            rows, cols = fs.linear_sum_assignment(matrix, maximize)
            assert_valid(matrix, rows, cols)
            assert abs(sum(Fraction(x) for x in matrix[rows, cols]) - best) <= tolerance


def test_docstring_example():
    import doctest

    import pyfastseq.assignment

    assert doctest.testmod(pyfastseq.assignment).failed == 0
