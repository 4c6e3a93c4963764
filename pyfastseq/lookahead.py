"""Longest common subsequence of token sequences, and the LCS "lookahead" rescoring of seed 001.

The LCS is the bit-parallel algorithm of Hyyrö (2004) on int32 token ids of any size; the lookahead
walks the trie below each allowed next token carrying the LCS bit row, so every trie node costs one
word-op group and no string is ever enumerated.
"""

from __future__ import annotations

import numbers
import threading
import weakref
from typing import Any

import numpy as np
import torch

from ._backend import _C
from ._limits import check_memory
from ._validate import INT32_MAX, as_array, as_token_array, check_integer_dtype, flatten_sequences, is_int, native_array
from .trie import Trie

__all__ = ["LCSLookahead", "lcs_length", "lcs_lengths"]


# The largest match table a query may have: about 32k tokens when all of them are distinct.
MAX_MATCH_TABLE_BYTES = 128 << 20


def lcs_length(a: Any, b: Any) -> int:
    """Length of the longest common subsequence of two int token sequences. The shorter one's
    match table (``ceil(m / 64)`` words per distinct token) may take up to 128 MiB: a sequence of
    up to about 32k distinct tokens; a longer one raises ``ValueError`` naming it.

    Example:
        >>> lcs_length([1, 2, 3, 4], [2, 4, 5])
        2
    """
    a_arr, b_arr = as_token_array(a, "a"), as_token_array(b, "b")
    # The bit row spans the shorter sequence.
    short, text, name = (a_arr, b_arr, "a") if len(a_arr) <= len(b_arr) else (b_arr, a_arr, "b")
    return int(_pattern(short, name).lengths(text, np.array([0, len(text)], dtype=np.int64))[0])


def lcs_lengths(query: Any, candidates: Any, offsets: Any = None) -> np.ndarray:
    """LCS length of ``query`` with every candidate, as ``np.ndarray[int32]``.

    Args:
        query: one int token sequence; its match table is built once (at most 128 MiB: up to
            about 32k distinct tokens).
        candidates: a list of int sequences, a 2-D int array (one candidate per row), or, with
            ``offsets``, a flat int32 array of all candidate tokens (the fast path: no copy).
        offsets: int64 ``[num_candidates + 1]``, starting at 0 and ending at ``len(candidates)``;
            candidate ``i`` is ``candidates[offsets[i]:offsets[i + 1]]``.

    Runs in parallel over candidates with the GIL released. Token ids lie in ``[0, 2**31 - 1]``.

    Example:
        >>> lcs_lengths([1, 2, 3], [[1, 3], [4], [3, 2, 1]]).tolist()
        [2, 0, 1]
    """
    pattern = _pattern(as_token_array(query, "query"), "query")
    if offsets is not None and _is_int32_vector(candidates):
        # Fast path: the kernel itself rejects negative ids, so a flat int32 buffer is not scanned here.
        tokens = native_array(as_array(candidates, "candidates"))
        offs = _int_array(offsets, "offsets", np.int64, ndim=1)
        if offs.size < 1:
            raise ValueError("offsets must be a 1-D integer array of length num_candidates + 1")
    else:
        tokens, offs = flatten_sequences(candidates, offsets, "candidates")
    check_memory(4 * offs.size, f"lcs_lengths over {offs.size - 1} candidates")
    return pattern.lengths(tokens, offs)


class LCSLookahead:
    """Seed 001's lookahead: reward each allowed next token by how much of the question the best
    catalogue entry below it can still cover. Pass it to ``TrieBeamSearch(lookahead=...)``.

    For a row whose decoded tokens (its trie path) are ``P<t`` and an allowed next token ``c``::

        Δ(c) = max over stored sequences P through c of LCS(seg(P), Q) − LCS(seg(P<t), Q)

    where ``Q`` is the row's query and ``seg`` keeps what follows the first ``start_after`` (the
    whole sequence when ``start_after`` is None). A "stored sequence through c" is a complete trie
    entry whose path passes through ``c``, including everything after the current segment (e.g. the
    object after the predicate) and its eos token when the trie was built with ``eos_id``; tokens
    absent from ``Q`` (eos included, unless the query holds it) never add to the LCS, and since an
    LCS never shrinks when a sequence is extended, the maximum is reached at a leaf. The beam then
    reshapes ``p_c ← p_c^(1/(Δ(c)+1))`` over the allowed tokens (see
    :func:`pyfastseq.reference.lcs.lookahead_reshape`).

    As in the seed, rows with fewer than two allowed tokens, and rows whose generated tokens do not
    yet hold ``start_after``, get Δ = 0 for every child.

    Args:
        query_tokens: one int sequence (the same question for every batch item), or a list of int
            sequences / a 2-D array, one query per batch item. Special tokens count only if included.
        start_after: token id that opens the segment (e.g. the [SEP] that ends the subject), or None.
        max_nodes: cap on the trie nodes one :meth:`deltas` call may visit below the children, to
            bound a call's time on a large trie where ``start_after`` does not confine the walks (at
            a 1M-title trie's root, 100_000 keeps a call near 1 ms); None, the default, walks
            whatever the exact Δ needs. It is shared over the distinct (query, node) rows of the call by
            water-filling: a row whose whole subtree fits in an equal share of what is left gets
            all of it, and the others split the remainder evenly. A row walks its children's
            subtrees one trie level at a time and stops before a level that would exceed its share;
            its Δ then counts completions cut at the last level walked: a lower bound of the exact
            Δ, never below the gain of the child token itself (``max_nodes=0`` gives exactly that
            one-token gain). :attr:`last_truncated` counts the children whose walk was cut, and
            :attr:`last_visited` the nodes visited.

    The walk prunes every subtree whose bound (the LCS already reached against the query prefix
    that ``h`` more tokens can still extend, ``h`` the subtree height) cannot beat the best found,
    and rows at the same node with the same query are solved once.
    """

    def __init__(self, query_tokens: Any, start_after: int | None = None, max_nodes: int | None = None):
        self.queries, self.per_item = _as_queries(query_tokens)
        self._patterns = _patterns(self.queries, "query_tokens")
        self.start_after = _optional_int(start_after, "start_after", INT32_MAX)
        self.max_nodes = _optional_int(max_nodes, "max_nodes", 2**63 - 1)
        self._heights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Per-thread, so that threads sharing one lookahead each read the counts of their own call.
        self._last = threading.local()

    def __repr__(self) -> str:
        queries = f"{len(self.queries)} queries" if self.per_item else f"query of {len(self.queries[0])} tokens"
        return f"LCSLookahead({queries}, start_after={self.start_after}, max_nodes={self.max_nodes})"

    @property
    def last_visited(self) -> int:
        """Nodes visited below the children by this thread's last :meth:`deltas` call."""
        return getattr(self._last, "visited", 0)

    @property
    def last_truncated(self) -> int:
        """Children whose walk this thread's last :meth:`deltas` call cut short."""
        return getattr(self._last, "truncated", 0)

    def deltas(self, trie: Trie, nodes: Any, generated: Any, batch_index: Any = None) -> tuple[Any, Any]:
        """Δ for every child of every row's node.

        Args:
            trie: the :class:`~pyfastseq.Trie` being decoded.
            nodes: ``[N]`` trie node of each row; -1 marks a dead row (no children).
            generated: ``[N, t]`` tokens each row generated so far: exactly its path from the root
                (``ValueError`` otherwise, for every row whose node has children).
            batch_index: ``[N]`` batch item of each row, selecting its query; may be None with a
                single query.

        Returns:
            ``(row_offsets, deltas)``: int64 ``[N + 1]`` and int32 ``[row_offsets[-1]]``; row ``r``'s
            slice ``deltas[row_offsets[r]:row_offsets[r + 1]]`` holds one Δ per child of
            ``nodes[r]``, in the order of ``trie.children(nodes[r])`` (ascending token). Torch
            tensors when ``nodes`` is one (on its device), NumPy arrays otherwise.
        """
        if not isinstance(trie, Trie):
            raise TypeError(f"trie must be a pyfastseq.Trie, got {type(trie).__name__}")
        device = nodes.device if isinstance(nodes, torch.Tensor) else None
        node_arr = _int_array(nodes, "nodes", np.int32, ndim=1)
        rows = node_arr.shape[0]
        gen = _int_array(generated, "generated", np.int32, ndim=2)
        if gen.shape[0] != rows:
            raise ValueError(f"generated must have one row per node ({rows}), got shape {tuple(gen.shape)}")
        if batch_index is None:
            if self.per_item:
                raise ValueError("batch_index is required when LCSLookahead holds one query per batch item")
            pattern_of_row = np.zeros(rows, dtype=np.int64)
        else:
            pattern_of_row = _int_array(batch_index, "batch_index", np.int64, ndim=1)
            if pattern_of_row.shape[0] != rows:
                raise ValueError(f"batch_index must have one entry per row ({rows}), got shape {pattern_of_row.shape}")
            if not self.per_item:
                pattern_of_row = np.zeros(rows, dtype=np.int64)
        _check_paths(trie, node_arr, gen)
        row_offsets, deltas = self._native_deltas(trie, node_arr, gen, pattern_of_row, applying_only=False)
        if device is None:
            return row_offsets, deltas
        return torch.from_numpy(row_offsets).to(device), torch.from_numpy(deltas).to(device)

    def _step_deltas(self, trie: Trie, nodes: np.ndarray, generated: np.ndarray,
                     batch_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`deltas` for the beam step, from its own int32/int64 arrays: rows the rule leaves
        alone get empty slices instead of zeros."""
        pattern_of_row = batch_index if self.per_item else np.zeros(len(nodes), dtype=np.int64)
        return self._native_deltas(trie, nodes, generated, pattern_of_row, applying_only=True)

    def _native_deltas(self, trie, nodes, generated, pattern_of_row, applying_only):
        heights = self._heights.get(trie)
        if heights is None:
            heights = self._heights[trie] = _C.subtree_heights(trie._native)
        start_after = -1 if self.start_after is None else self.start_after
        max_nodes = -1 if self.max_nodes is None else self.max_nodes
        row_offsets, deltas, self._last.visited, self._last.truncated = _C.lcs_lookahead(
            trie._native, heights, self._patterns, nodes, generated, pattern_of_row, start_after, max_nodes,
            applying_only,
        )
        return row_offsets, deltas


def _check_paths(trie: Trie, nodes: np.ndarray, generated: np.ndarray) -> None:
    """Every row with a child to choose must stand where its generated tokens lead from the root
    (Δ compares the path so far with the completions below the node)."""
    rows = np.flatnonzero(trie._has_children(nodes))  # the native call reports ids out of range
    if not len(rows):
        return
    reached = trie._walk_rows(torch.from_numpy(generated[rows])).numpy()
    wrong = np.flatnonzero(reached != nodes[rows])
    if len(wrong):
        r = rows[wrong[0]]
        raise ValueError(f"generated[{r}] leads from the root to trie node {reached[wrong[0]]}, not to nodes[{r}] = "
                         f"{nodes[r]}: each row's generated tokens must be its path to its node")


def _pattern(query: np.ndarray, name: str) -> Any:
    """The native match table of ``query``, checked against the memory cap first."""
    return _patterns([query], name)[0]


def _patterns(queries: list[np.ndarray], name: str) -> list[Any]:
    """The native match tables of ``queries``, their bytes together checked against the memory cap."""
    tokens = sum(len(q) for q in queries)
    what = (f"the LCS match table of {name} ({tokens} tokens)" if len(queries) == 1 else
            f"the LCS match tables of {name} ({len(queries)} queries, {tokens} tokens)")
    check_memory(sum(_table_bytes(q, name) for q in queries), what)
    return [_C.LcsPattern(q) for q in queries]


def _table_bytes(query: np.ndarray, name: str) -> int:
    """The bytes of ``query``'s match table: one ceil(m / 64)-word mask per distinct token, so a long
    query of distinct tokens costs m^2 / 8 bytes (small ones are taken at their bound, m + 1 masks)."""
    words = -(-len(query) // 64)
    bound = 8 * words * (len(query) + 1)
    if bound <= 1 << 20:  # small tables skip counting the distinct tokens
        return bound
    distinct = len(np.unique(query))
    table_bytes = 8 * words * (distinct + 1)
    if table_bytes > MAX_MATCH_TABLE_BYTES:  # the native bound, checked here to name the argument
        raise ValueError(f"{name} is too long ({len(query)} tokens, {distinct} distinct): its LCS match "
                         f"table would exceed {MAX_MATCH_TABLE_BYTES >> 20} MiB")
    return table_bytes


def _is_int32_vector(values: Any) -> bool:
    if isinstance(values, torch.Tensor):
        return values.dtype == torch.int32 and values.dim() == 1
    return isinstance(values, np.ndarray) and values.dtype == np.int32 and values.ndim == 1


def _int_array(values: Any, name: str, dtype: Any, ndim: int) -> np.ndarray:
    arr = as_array(values, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.dtype == dtype:
        return native_array(arr)
    if arr.size:  # an empty list is NumPy's float64
        check_integer_dtype(arr.dtype, name)
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise ValueError(f"{name} holds a value outside the {np.dtype(dtype).name} range")
    return native_array(arr, dtype)


def _as_queries(query_tokens: Any) -> tuple[list[np.ndarray], bool]:
    """(queries, one per batch item?) from one int sequence or a list/2-D array of them."""
    if isinstance(query_tokens, (torch.Tensor, np.ndarray)):
        arr = as_array(query_tokens, "query_tokens")
        if arr.ndim == 2:
            return [as_token_array(row, f"query_tokens[{i}]") for i, row in enumerate(arr)], True
        return [as_token_array(arr, "query_tokens")], False
    if isinstance(query_tokens, (str, bytes)):
        return [as_token_array(query_tokens, "query_tokens")], False
    if isinstance(query_tokens, (set, frozenset, dict)) or not hasattr(query_tokens, "__iter__"):
        raise TypeError(f"query_tokens must be a sequence of token ids or a list of them, got "
                        f"{type(query_tokens).__name__}")
    items = list(query_tokens)
    # A list of sequences is one query per batch item; a list holding any scalar (0-d tensors and
    # arrays too, as list(ids_tensor) gives) is one query.
    if items and not any(isinstance(q, (numbers.Number, np.generic)) or getattr(q, "ndim", None) == 0 for q in items):
        return [as_token_array(q, f"query_tokens[{i}]") for i, q in enumerate(items)], True
    return [as_token_array(items, "query_tokens")], False


def _optional_int(value: Any, name: str, high: int) -> int | None:
    if value is None:
        return None
    if not is_int(value):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value}")
    return int(value)
