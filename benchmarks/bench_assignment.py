"""Linear sum assignment: pyfastseq vs. a SciPy loop and lapx, in the same run.

Cases: CHID-like batches of tiny problems (10k x 10x10, 10k x 4x10) and single large matrices
(2000x2000, 1000x2000), uniform random float64 costs. Every solver's optimal totals are checked
against SciPy's before it is timed. Ratios (peer median / ours) go to benchmarks/README.md:

    PYTHONPATH=$PWD pytest benchmarks/bench_assignment.py --benchmark-json=assign.json
    python benchmarks/bench_assignment.py assign.json      # prints the ratio table

OMP_NUM_THREADS=1 runs both batch solvers (pyfastseq's OpenMP loop, lapx's worker pool) on one
thread: per-core efficiency, and steadier figures on a busy machine.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import pyfastseq as fs

scipy_optimize = pytest.importorskip("scipy.optimize")
try:
    import lap
except ImportError:  # lapx is optional: its rows are skipped
    lap = None

# lapx's batch threads follow OMP_NUM_THREADS like pyfastseq's (0: all cores, lapx's default).
LAPX_THREADS = int(os.environ.get("OMP_NUM_THREADS", "0"))

CASES = {
    "10k x 10x10": (10_000, 10, 10),
    "10k x 4x10": (10_000, 4, 10),
    "2000x2000": (1, 2000, 2000),
    "1000x2000": (1, 1000, 2000),
}


def costs(case: str) -> np.ndarray:
    return np.random.default_rng(0).random(CASES[case])


def ours(cost):
    return fs.linear_sum_assignment(cost[0]) if cost.shape[0] == 1 else fs.linear_sum_assignment(cost)


def scipy_loop(cost):
    return [scipy_optimize.linear_sum_assignment(c) for c in cost]


def lapx(cost):
    if cost.shape[0] == 1:  # lapjvh: lapx's fastest single-matrix solver
        return lap.lapjvh(cost[0], extend_cost=True, return_cost=False)
    return lap.lapjvr_batch(cost, extend_cost=True, return_cost=False, n_threads=LAPX_THREADS)


def totals(solver: str, cost: np.ndarray, out) -> np.ndarray:
    """Each problem's total from a solver's raw output (converted outside the timed call)."""
    if cost.shape[0] == 1 and solver != "scipy":
        out = [out]
    elif solver == "pyfastseq":
        out = [(np.arange(cost.shape[1]), cols) for cols in out]
    elif solver == "lapx":
        out = list(zip(*out))
    return np.array([c[rows, cols].sum() for c, (rows, cols) in zip(cost, out)])


SOLVERS = {"pyfastseq": ours, "scipy": scipy_loop, "lapx": lapx}


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", list(CASES))
def test_assignment(benchmark, case, solver):
    if solver == "lapx" and lap is None:
        pytest.skip("lapx is not installed")
    cost = costs(case)
    run = SOLVERS[solver]
    expected = totals("scipy", cost, scipy_loop(cost))
    np.testing.assert_allclose(totals(solver, cost, run(cost)), expected, rtol=1e-9)
    benchmark.group = case
    benchmark.extra_info.update(case=case, solver=solver, batch=cost.shape[0], shape=list(cost.shape[1:]),
                                dtype="float64", threads=os.environ.get("OMP_NUM_THREADS", "all"))
    rounds = 3 if solver == "scipy" or cost.shape[0] == 1 else 10
    benchmark.pedantic(run, args=(cost,), rounds=rounds, warmup_rounds=1)


def ratio_table(path: str) -> str:
    """Markdown rows: case, peer, threads, median and best-round ratios (peer / pyfastseq), our median."""
    stats: dict[tuple[str, str], dict] = {}
    threads = "all"
    for bench in json.load(open(path))["benchmarks"]:
        info = bench["extra_info"]
        stats[info["case"], info["solver"]] = bench["stats"]
        threads = info.get("threads", threads)
    lines = []
    for case in CASES:
        mine = stats.get((case, "pyfastseq"))
        for peer in ("scipy", "lapx"):
            if mine and (case, peer) in stats:
                theirs = stats[case, peer]
                lines.append(
                    f"| {case} | {peer} | {threads} | {theirs['median'] / mine['median']:.1f}x | "
                    f"{theirs['min'] / mine['min']:.1f}x | {mine['median'] * 1e3:.2f} ms |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    print(ratio_table(sys.argv[1]))
