"""Brute-force linear sum assignment for tiny matrices: the readable specification and test oracle.

Enumerates every way to give each row of the shorter side a distinct column, so it is exact and
independent of any augmenting-path argument, and only usable up to about 8 x 8.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["linear_sum_assignment"]


def linear_sum_assignment(cost, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as :func:`pyfastseq.linear_sum_assignment` for a 2-D ``cost``."""
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"expected a matrix (2-D array) for cost, got a {c.ndim}-D array")
    transpose = c.shape[0] > c.shape[1]
    work = -c.T if transpose and maximize else c.T if transpose else -c if maximize else c
    if np.isnan(work).any() or np.isneginf(work).any():
        raise ValueError("cost matrix contains invalid numeric entries")
    rows, cols = work.shape
    best, best_cols = np.inf, None
    for chosen in itertools.permutations(range(cols), rows):
        total = work[np.arange(rows), list(chosen)].sum()
        if total < best:
            best, best_cols = total, chosen
    if rows and best_cols is None:
        raise ValueError("cost matrix is infeasible")
    picked = np.asarray(best_cols if rows else [], dtype=np.int64)
    if not transpose:
        return np.arange(rows, dtype=np.int64), picked
    order = np.argsort(picked)
    return picked[order], order.astype(np.int64)
