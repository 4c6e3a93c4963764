"""Timing helpers shared by benchmarks that time their peer by hand in the same run."""

from __future__ import annotations

import time


def best_time(fn, rounds: int) -> float:
    """The fastest of ``rounds`` runs after one warm-up: on a shared machine the minimum is the
    stable estimate."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
