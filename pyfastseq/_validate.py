"""Argument checks shared by the public API. Messages name the argument and the bad value."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

INT32_MAX = 2**31 - 1


def as_array(values: Any, name: str) -> np.ndarray:
    """``values`` as a NumPy array (a tensor's values on the CPU); a ragged or unconvertible nest is
    reported by argument name rather than by NumPy's own message."""
    if isinstance(values, torch.Tensor):
        check_holds_values(values, name)
        try:
            return values.detach().cpu().numpy()
        except TypeError:  # bfloat16, float8: no NumPy dtype holds them
            raise TypeError(f"{name} must hold numbers NumPy can hold, got dtype {values.dtype}") from None
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TypeError(f"{name} must be a rectangular array-like of numbers ({exc})") from None
    if arr.dtype == np.float64 and isinstance(values, (list, tuple)):
        # Python ints past int64 beside smaller ones come out as floats: keep them as ints (objects),
        # so that a check reports the value rather than a float dtype.
        exact = np.asarray(values, dtype=object)
        if all(is_int(v) for v in exact.flat):
            return exact
    return arr


def native_array(arr: Any, dtype: Any = None) -> np.ndarray:
    """``arr`` as the native code indexes it: C-contiguous and aligned (``np.ascontiguousarray``
    would keep a buffer viewed at an odd byte offset misaligned), in ``dtype`` if given."""
    return np.require(arr, dtype, ("C", "A"))


def check_dense(t: torch.Tensor, name: str) -> None:
    """``TypeError`` unless ``t`` is a dense (strided) tensor, not a sparse or other layout."""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def check_holds_values(t: torch.Tensor, name: str) -> None:
    """``TypeError`` unless ``t`` is dense; ``ValueError`` if it is on the meta device."""
    check_dense(t, name)
    if t.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds no values")


def check_in_place_write(t: torch.Tensor, name: str, advice: str) -> None:
    """``ValueError`` if ``t`` requires grad while autograd records: a native write into it would go
    unrecorded, and the graph's gradient would not match the values. ``advice`` follows the reason."""
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad: {advice}")


def check_step_fn(step_fn: Any) -> None:
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable as step_fn(tokens, beam_idx) -> logits, got {type(step_fn).__name__}")


def check_integer_dtype(dtype: Any, name: str, what: str = "integers") -> None:
    """``TypeError`` unless ``dtype`` (torch's or NumPy's) holds integers; bool does not count."""
    if isinstance(dtype, torch.dtype):
        integer = not (dtype == torch.bool or dtype.is_floating_point or dtype.is_complex)
    else:
        integer = dtype != np.bool_ and np.issubdtype(dtype, np.integer)
    if not integer:
        raise TypeError(f"{name} must hold {what}, got dtype {dtype}")


def as_token_array(values: Any, name: str) -> np.ndarray:
    """A 1-D int32 array of non-negative token ids."""
    if isinstance(values, (str, bytes)):  # NumPy would make it one string element
        raise TypeError(f"{name} must hold integer token ids, not a string")
    arr = as_array(values, name)
    if arr.ndim == 0:  # a lone number, None, a generator: NumPy wraps it as one element
        raise TypeError(f"{name} must be a sequence of integer token ids, got {type(values).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    return _checked_int32(arr, name)


def _checked_int32(arr: np.ndarray, name: str) -> np.ndarray:
    is_int32 = arr.dtype == np.int32  # the common case: one reduction, no dtype queries
    if arr.dtype == object and arr.size and all(is_int(v) for v in arr.flat):
        # Python ints, past int64/uint64 when NumPy itself chose objects (never token ids then).
        outside = next((int(v) for v in arr.flat if not 0 <= v <= INT32_MAX), None)
        if outside is not None:
            raise ValueError(f"{name} holds token id {outside} outside [0, 2**31 - 1]")
        arr = arr.astype(np.int64)
        is_int32 = False
    if not is_int32:
        check_integer_dtype(arr.dtype, name, "integer token ids")
    if arr.size:
        low = arr.min()
        high = INT32_MAX if is_int32 else arr.max()
        if low < 0 or high > INT32_MAX:
            raise ValueError(f"{name} holds token id {int(low if low < 0 else high)} outside [0, 2**31 - 1]")
    return native_array(arr, np.int32)


def flatten_sequences(sequences: Any, offsets: Any, name: str = "sequences") -> tuple[np.ndarray, np.ndarray]:
    """(int32 tokens, int64 offsets) from a list of int sequences, a 2-D array, or tokens + offsets."""
    if offsets is not None:
        offs = as_array(offsets, "offsets")
        if offs.ndim != 1 or offs.size < 1 or not np.issubdtype(offs.dtype, np.integer):
            raise ValueError("offsets must be a 1-D integer array of length num_sequences + 1")
        if offs.dtype == np.uint64 and offs.size and offs.max() > np.iinfo(np.int64).max:
            raise ValueError(f"offsets must lie in the int64 range, got {int(offs.max())}")
        tokens = as_token_array(sequences, name)
        return tokens, native_array(offs, np.int64)
    if isinstance(sequences, torch.Tensor):
        sequences = as_array(sequences, name)
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2:
            raise ValueError(f"{name} as an array must be 2-D [num_sequences, length], got shape {sequences.shape}")
        tokens = _checked_int32(sequences.reshape(-1), name)
        offs = np.arange(sequences.shape[0] + 1, dtype=np.int64) * sequences.shape[1]
        return tokens, offs
    if isinstance(sequences, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of integer sequences, got {type(sequences).__name__}")
    try:
        seqs = [s.tolist() if isinstance(s, (np.ndarray, torch.Tensor)) else s for s in sequences]
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    except TypeError as exc:
        raise TypeError(f"{name} must be an iterable of integer sequences") from exc
    if any(isinstance(s, (str, bytes)) for s in seqs):
        raise TypeError(f"{name} must hold sequences of integer token ids, not strings")
    unordered = next((i for i, s in enumerate(seqs) if isinstance(s, (set, frozenset, dict))), None)
    if unordered is not None:
        raise TypeError(f"{name}[{unordered}] is a {type(seqs[unordered]).__name__}, which has no token order")
    offs = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offs[1:])
    flat = as_array(list(itertools.chain.from_iterable(seqs)), name)
    if flat.size == 0:
        return np.zeros(0, dtype=np.int32), offs
    if flat.ndim != 1:
        raise TypeError(f"{name} must hold flat sequences of integer token ids")
    return _checked_int32(flat, name), offs


def finite_float(value: Any) -> float | None:
    """A real number as a finite float; None for NaN, an infinity, or one beyond float's range."""
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if math.isfinite(result) else None


def is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_eos_id(eos_id: Any) -> int:
    """eos_id as an int in [0, 2**31 - 1], or -1 for None."""
    if eos_id is None:
        return -1
    if not is_int(eos_id):
        raise TypeError(f"eos_id must be an int or None, got {type(eos_id).__name__}")
    if not 0 <= eos_id <= INT32_MAX:
        raise ValueError(f"eos_id must be in [0, 2**31 - 1], got {eos_id}")
    return int(eos_id)


def pad_id_of(eos_id: int) -> int:
    """The token fed to rows with nothing left to decode (dead beams, ended rows, finished items):
    eos, else 0, for an eos id from :func:`as_eos_id`."""
    return max(eos_id, 0)
