"""A process-wide cap on the memory one call may allocate.

A service that loads tries built elsewhere, or batches whatever its clients send, should see a clear
``MemoryError`` for an oversized request instead of being killed by the kernel's OOM killer. Calls
estimate what they are about to allocate (from token counts, file sizes, batch shapes) before they
allocate it and compare with the cap. No cap is set by default; ``PYFASTSEQ_MEMORY_LIMIT`` sets one
at import (bytes, or with a K/M/G/T suffix in powers of 1024, e.g. ``8G``).
"""

from __future__ import annotations

import os
from typing import Any

from ._validate import is_int

__all__ = ["set_memory_limit", "get_memory_limit", "check_memory"]

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse(text: str) -> int:
    body, unit = (text[:-1], text[-1].upper()) if text and text[-1].upper() in _SUFFIXES else (text, "")
    try:
        value = int(body) * _SUFFIXES[unit]
    except ValueError:
        message = f"PYFASTSEQ_MEMORY_LIMIT must be a byte count such as 2000000000 or 8G, got {text!r}"
        raise ValueError(message) from None
    if value <= 0:
        raise ValueError(f"PYFASTSEQ_MEMORY_LIMIT must be positive, got {text!r}")
    return value


_env = os.environ.get("PYFASTSEQ_MEMORY_LIMIT", "").strip()
_limit: int | None = _parse(_env) if _env else None


def set_memory_limit(nbytes: Any) -> None:
    """Cap the memory a single pyfastseq call may allocate, in bytes; ``None`` removes the cap.

    Checked before the large allocations: building a :class:`Trie` (from the token count), loading
    one (from the file size), a batched :func:`linear_sum_assignment` (``B * m * n``), LCS query
    tables and candidate buffers, the contiguous copy :meth:`Trie.mask_logits` makes of a view
    whose columns are strided, the token buffers of a beam search or sampler (``rows *
    max_length``), :func:`unilm_mask` (``B * L * L``), the PyTorch UniLM attention's ``[B, H, L, L]``
    scores and :class:`CopyPrior`'s parameters. A call
    over the cap raises ``MemoryError`` before allocating.
    """
    global _limit
    if nbytes is not None and not is_int(nbytes):
        raise TypeError(f"nbytes must be an int or None, got {type(nbytes).__name__}")
    if nbytes is not None and nbytes <= 0:
        raise ValueError(f"nbytes must be positive, got {nbytes}")
    _limit = None if nbytes is None else int(nbytes)


def get_memory_limit() -> int | None:
    """The cap set by :func:`set_memory_limit` or ``PYFASTSEQ_MEMORY_LIMIT``, or None."""
    return _limit


def check_memory(nbytes: int, what: str) -> None:
    """Raise ``MemoryError`` when ``what`` would allocate more than the cap."""
    if _limit is not None and nbytes > _limit:
        raise MemoryError(
            f"{what} would need about {nbytes:,} bytes, over the pyfastseq memory limit of {_limit:,} bytes "
            "(pyfastseq.set_memory_limit / PYFASTSEQ_MEMORY_LIMIT)"
        )
