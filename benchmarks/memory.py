"""Peak memory of one call: the resident set sampled while it runs, so native allocations count too
(tracemalloc sees only Python's)."""

import ctypes
import gc
import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
_LIBC = ctypes.CDLL("libc.so.6")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), bytes)``: the call's result and its peak resident set above the
    resident set before it, sampled every half millisecond (native kernels release the GIL). Freed
    heap is handed back to the system first, or the call would reuse it unseen."""
    gc.collect()
    _LIBC.malloc_trim(0)
    base = peak = _rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn(*args, **kwargs)
    finally:
        done.set()
        sampler.join()
    return result, max(peak, _rss()) - base
