"""Timing helpers shared by benchmarks that time their peer by hand in the same run."""

from __future__ import annotations

import math
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


def device_time(fn, calls: int = 20) -> float:
    """Seconds of GPU work per call of ``fn``: the durations of the kernels (and copies, fills) it
    launches, summed by the CUDA profiler, after one warm-up. Unlike a timer around the call, host
    time (Python, launch latency) does not count, nor do the gaps it leaves on the GPU; unlike
    graph replay, any call can be measured (autograd's backward, a BlockMask built inside)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    # GPU-side user annotations span kernels and the gaps between them: not GPU work of their own.
    busy_us = sum(e.time_range.elapsed_us() for e in prof.events()
                  if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    if busy_us <= 0:
        raise RuntimeError("the CUDA profiler recorded no GPU activity (CUPTI unavailable?)")
    return busy_us / calls / 1e6


def stat(benchmark, name: str) -> float:
    """The ``benchmark`` fixture's ``name`` statistic (``"min"``, ``"median"``) in seconds; NaN under
    ``--benchmark-disable``, which runs each test once and times nothing."""
    return math.nan if benchmark.stats is None else getattr(benchmark.stats.stats, name)
