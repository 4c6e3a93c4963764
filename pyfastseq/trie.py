"""The prefix tree that constrains decoding to a catalogue of token sequences (seed 001)."""

from __future__ import annotations

import os
import warnings
import weakref
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from . import _backend
from ._backend import _C
from ._limits import check_memory
from ._validate import (INT32_MAX, as_array, as_eos_id, as_token_array, check_dense, check_holds_values,
                        check_in_place_write, check_integer_dtype, flatten_sequences, is_int, native_array)

__all__ = ["Trie"]


class Trie:
    """An immutable prefix tree over int token sequences, stored natively as a breadth-first CSR.

    Args:
        sequences: an iterable of int sequences, a 2-D int array ``[num_sequences, length]``, or,
            with ``offsets``, a flat int array of all tokens (the fast path for millions of items).
        eos_id: when given, appended to every sequence that does not already end with it, so that a
            sequence which is a prefix of another can still be chosen (it ends with eos).
        offsets: int64 ``[num_sequences + 1]``; sequence ``i`` is ``sequences[offsets[i]:offsets[i+1]]``.

    Duplicates merge, and every stored sequence stays an entry even when it is a prefix of another.
    Token ids must lie in ``[0, 2**31 - 1]``. An empty ``sequences`` raises ``ValueError``: a trie
    with no entry would mask every token. A Trie never changes after construction, so one instance
    can be shared by any number of threads and searches.

    Example:
        >>> trie = Trie([[5, 7], [5, 8, 2], [9]], eos_id=2)
        >>> trie.children(trie.walk([5]))[0].tolist()
        [7, 8]
        >>> trie.contains([5, 8, 2]), trie.contains([5])
        (True, False)
    """

    root = 0

    def __init__(self, sequences: Iterable[Any], eos_id: int | None = None, *, offsets: Any = None):
        tokens, offs = flatten_sequences(sequences, offsets)
        eos = as_eos_id(eos_id)
        check_memory(_build_bytes(tokens.size, offs.size - 1, eos >= 0), f"building a Trie of {tokens.size} tokens")
        self._init(_C.Trie.build(tokens, offs, eos))

    def __deepcopy__(self, memo: dict) -> "Trie":
        # Immutable, so a deep copy (of a searcher that holds the trie, say) shares it, as for a tuple.
        return self

    def _init(self, native: Any) -> None:
        self._native = native
        child_begin, child_token, _ = native.arrays()
        with warnings.catch_warnings():  # the views are read-only; kernels never write them
            warnings.simplefilter("ignore", UserWarning)
            cpu = (torch.from_numpy(child_begin.view(np.int32)), torch.from_numpy(child_token))
        # CSR child offsets (as int32) and tokens per device; CPU ones share the trie's memory.
        self._device_arrays: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {torch.device("cpu"): cpu}
        self._allow_masking_with(cpu)
        self._wide_nodes: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._paths_after: dict[tuple[int, int], list[int] | None] = {}  # _path_continuing_after's answers

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> "Trie":
        """Load a file written by :meth:`save`; with ``mmap`` the arrays are mapped read-only and
        shared by every process that maps the same file. Any defect raises ``ValueError``; files
        of the previous format version load too. A mapped file must not be truncated or rewritten
        in place while the trie lives: the pages are read from it on demand (a truncated mapping
        ends the process with SIGBUS, as any mmap does). Write a new file and rename it over the
        old one instead, as :meth:`save` does."""
        path = _file_path(path)
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0  # the native loader reports a missing or unreadable file by name
        # Mapped or read, the arrays' pages are the trie's working set once it is searched.
        check_memory(size, f"loading the trie file {path!r}")
        trie = cls.__new__(cls)
        trie._init(_C.Trie.load(path, bool(mmap)))
        return trie

    def save(self, path: str | os.PathLike) -> None:
        """Write the versioned binary format that :meth:`load` reads, its header and arrays
        checksummed. The file is written beside ``path`` and renamed over it once complete, so
        processes that map the old file keep reading it, and a failed save leaves it whole."""
        self._native.save(_file_path(path))

    # -- structure ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of distinct stored sequences."""
        return self._native.num_items

    def __repr__(self) -> str:
        eos = "" if self.eos_id is None else f", eos_id={self.eos_id}"
        return f"Trie({len(self)} sequences, {self.num_nodes} nodes, depth {self.depth}{eos})"

    @property
    def num_nodes(self) -> int:
        return self._native.num_nodes

    @property
    def eos_id(self) -> int | None:
        eos = self._native.eos_id
        return None if eos < 0 else eos

    @property
    def depth(self) -> int:
        """Length of the longest stored sequence (eos included)."""
        return self._native.depth

    @property
    def max_token(self) -> int:
        """The largest token id on any edge: logits must have a vocabulary larger than this."""
        return self._native.max_token

    @property
    def nbytes(self) -> int:
        """Bytes held by the CSR arrays."""
        return sum(a.nbytes for a in self._native.arrays())

    # -- lookups -----------------------------------------------------------------------------

    def _path_continuing_after(self, token: int, start: int = 0) -> list[int] | None:
        """A path from the root that passes below node ``start``, ends with ``token`` and has
        children below it, or None: a decode from ``start`` that ends at ``token`` would stop inside
        the entries under such a path. Cached: a search built per request asks again."""
        key = (token, start)
        if key not in self._paths_after:
            self._paths_after[key] = self._find_path_continuing_after(token, start)
        return self._paths_after[key]

    def _find_path_continuing_after(self, token: int, start: int) -> list[int] | None:
        child_begin, child_token, _ = self._native.arrays()
        nodes = np.flatnonzero(child_token == token) + 1  # edge e leads to node e + 1
        inner = nodes[child_begin[nodes + 1] > child_begin[nodes]]
        # Breadth-first numbering: the nodes below `start` at each depth are one id range.
        lo, hi = start, start + 1
        while len(inner) and lo < hi:
            lo, hi = int(child_begin[lo]) + 1, int(child_begin[hi]) + 1
            first = int(np.searchsorted(inner, lo))
            if first < len(inner) and inner[first] < hi:
                return self._path_to(int(inner[first]))
        return None

    def _path_to(self, node: int) -> list[int]:
        """The tokens from the root to ``node``."""
        child_begin, child_token, _ = self._native.arrays()
        path = []
        while node:
            path.append(int(child_token[node - 1]))
            node = int(np.searchsorted(child_begin, node - 1, side="right")) - 1  # the parent
        return path[::-1]

    def walk(self, seq: Any) -> int:
        """Node id after consuming ``seq`` from the root, or -1 if ``seq`` is not a stored prefix."""
        try:
            tokens = as_token_array(seq, "seq")
        except ValueError:
            if as_array(seq, "seq").ndim == 1:  # an id outside [0, 2**31) cannot be on any path
                return -1
            raise
        return self._native.walk(tokens)

    def contains(self, seq: Any) -> bool:
        """True when ``seq`` is a whole stored sequence (with eos, when the trie was built with one)."""
        node = self.walk(seq)
        return node >= 0 and self._native.is_terminal(node)

    def __contains__(self, seq: Any) -> bool:
        return self.contains(seq)

    def is_terminal(self, node: int) -> bool:
        """True when a stored sequence ends at ``node``."""
        return self._native.is_terminal(self._node(node))

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, nodes)``: int32 arrays of the children of ``node``, tokens ascending."""
        return self._native.children(self._node(node))

    def step(self, nodes: Any, tokens: Any) -> Any:
        """Vectorised transition: the child of ``nodes[i]`` via ``tokens[i]``, -1 where absent or
        where ``nodes[i]`` is -1. A torch tensor ``nodes`` gives an int32 torch tensor out, on
        ``nodes``' device; other ``nodes`` (a list or NumPy array) give an int32 NumPy array, whatever
        ``tokens`` is."""
        as_torch = isinstance(nodes, torch.Tensor)
        device = nodes.device if as_torch else None
        node_arr = _as_int32(nodes, "nodes")
        token_arr = _as_int32(tokens, "tokens")
        if node_arr.shape != token_arr.shape:
            raise ValueError(f"nodes and tokens must have the same shape, got {node_arr.shape} and {token_arr.shape}")
        out = self._native.step(node_arr.reshape(-1), token_arr.reshape(-1)).reshape(node_arr.shape)
        return torch.from_numpy(out).to(device) if as_torch else out

    def _has_children(self, nodes: np.ndarray) -> np.ndarray:
        """bool per entry of ``nodes``: a node id with children (-1 and ids past the trie: False)."""
        child_begin = self._native.arrays()[0]
        valid = (nodes >= 0) & (nodes < self.num_nodes)
        node = np.where(valid, nodes, 0)
        return valid & (child_begin[node + 1] > child_begin[node])

    def _walk_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """int32 ``[N]`` on the CPU: the node each row of the 2-D integer tensor ``ids`` reaches from
        the root, -1 where it leaves the trie; one native walk for all rows."""
        # Tensors: data_ptr() costs a tenth of numpy's ctypes.data, which counts at 80 rows.
        ids = _backend.unit_stride_aligned(ids.to(device="cpu", dtype=torch.int64))
        nodes = torch.empty(ids.shape[0], dtype=torch.int32, device="cpu")
        if ids.shape[0]:
            _C.trie_walk(self._native, ids.data_ptr(), ids.shape[0], ids.stride(0), 0, ids.shape[1], nodes.data_ptr())
        return nodes

    def _node(self, node: Any) -> int:
        if isinstance(node, torch.Tensor):
            if node.numel() != 1 or node.device.type == "meta":
                raise TypeError(f"node must be an int or a one-element tensor, got a tensor of shape {tuple(node.shape)} "
                                f"on {node.device}")
            node = node.item()
        if not is_int(node):
            raise TypeError(f"node must be an int, got {type(node).__name__}")
        if not 0 <= node < self.num_nodes:
            raise ValueError(f"node must be a node id in [0, {self.num_nodes}), got {node}")
        return int(node)

    # -- masking -----------------------------------------------------------------------------

    def mask_logits(self, logits: torch.Tensor, nodes: Any, fill: float = float("-inf")) -> torch.Tensor:
        """Set every logit that is not a child token of the row's node to ``fill``, in place.

        Args:
            logits: ``[N, V]`` float32/float16/bfloat16 tensor, CPU or CUDA, any row stride.
            nodes: ``[N]`` node ids; -1 marks a row with no continuation, which is filled entirely.
            fill: the value masked entries get.

        Returns ``logits``. ``V`` must exceed :attr:`max_token`. NaN at a token a row keeps (a child
        of its node) raises ``ValueError`` before anything is written; NaN elsewhere is filled over
        like any other logit. CUDA logits are not read back for that check (it would synchronise the
        stream): their NaNs stay where the mask keeps them.
        """
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
        check_holds_values(logits, "logits")
        if logits.dtype not in _backend.ELEM_BYTES:
            raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
        if logits.dim() != 2:
            raise ValueError(f"logits must be 2-D [N, V], got shape {tuple(logits.shape)}")
        if logits.shape[1] <= self.max_token:
            raise ValueError(
                f"the trie holds token id {self.max_token} but logits has only {logits.shape[1]} columns (vocabulary)"
            )
        if _overlapping(logits):
            raise ValueError(
                f"logits must not be an expanded or self-overlapping view (strides {logits.stride()}): masking "
                "writes in place, and rows sharing memory would mask each other"
            )
        if logits.stride(1) != 1:
            what = "mask_logits on logits with strided columns (a contiguous copy)"
            check_memory(logits.numel() * logits.element_size(), what)
        if isinstance(fill, torch.Tensor) and fill.numel() == 1 and not fill.is_meta \
                or isinstance(fill, np.ndarray) and fill.size == 1:
            fill = fill.item()
        if isinstance(fill, bool) or not isinstance(fill, (int, float, np.integer, np.floating)):
            raise TypeError(f"fill must be a number, got {type(fill).__name__}")
        try:
            fill = float(fill)
        except OverflowError:
            raise ValueError(f"fill must be a number a float can hold, got {fill}") from None
        check_in_place_write(logits, "logits", "mask_logits writes in place and records no gradient. Mask under "
                             "torch.no_grad(), or add a mask made from zeros: logits + "
                             "trie.mask_logits(torch.zeros_like(logits), nodes)")
        node_tensor = _node_tensor(nodes, logits.shape[0], logits.device)
        child_begin, child_token = self._arrays_on(logits.device)
        torch.ops.pyfastseq.trie_mask_(logits, node_tensor, child_begin, child_token, fill)
        return logits

    def _arrays_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The CSR child offsets and tokens as tensors on ``device``, copied there once."""
        arrays = self._device_arrays.get(device)
        if arrays is None:
            arrays = tuple(a.to(device) for a in self._device_arrays[torch.device("cpu")])
            self._device_arrays[device] = arrays
            self._allow_masking_with(arrays)
        return arrays

    def _allow_masking_with(self, arrays: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Let the mask op take ``arrays`` (this trie's, on some device) for as long as they live:
        tied to the tensors, not to the trie, since a copy of the trie shares them."""
        key = _arrays_key(*arrays)
        _MASKABLE[key] = self.max_token
        for array in arrays:
            weakref.finalize(array, _MASKABLE.pop, key, None)

    def _wide_nodes_on(self, device: torch.device, vocab: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """For the CUDA beam step on ``vocab``-wide logits: the nodes with at least ``vocab / 16``
        children (ascending, int32), their children as int32 bitmaps ``[count, words]`` over the
        trie's tokens (bit ``t``: token ``t`` is a child), and ``words``; on ``device``, built once. A
        bitmap is at most half the size of the node's ``child_token`` slice. Such a node has children
        in most 32-byte sectors of a row of 2-byte logits, so reading the whole row against its
        bitmap beats gathering them."""
        cached = self._wide_nodes.get((device, vocab))
        if cached is not None:
            return cached
        begin, tokens = (a.numpy() for a in self._device_arrays[torch.device("cpu")])
        begin = begin.view(np.uint32).astype(np.int64)
        fan = np.diff(begin)
        width = max(self.max_token, 0) + 1
        words = (width + 31) // 32
        wide = np.flatnonzero((fan > 0) & (fan * 16 >= vocab))
        lengths = fan[wide]
        # The edges of the wide nodes, node by node, and the bitmap row each belongs to.
        firsts = np.repeat(begin[wide] - (np.cumsum(lengths) - lengths), lengths)
        edge_tokens = tokens[np.arange(int(lengths.sum())) + firsts].astype(np.int64)
        rows = np.repeat(np.arange(wide.size), lengths)
        bits = np.zeros(wide.size * words, dtype=np.uint32)
        np.bitwise_or.at(bits, rows * words + (edge_tokens >> 5), (1 << (edge_tokens & 31)).astype(np.uint32))
        cached = (torch.from_numpy(wide.astype(np.int32)).to(device),
                  torch.from_numpy(bits.view(np.int32).reshape(wide.size, words)).to(device), words)
        self._wide_nodes[(device, vocab)] = cached
        return cached


def _overlapping(t: torch.Tensor) -> bool:
    """Whether two elements of the 2-D ``t`` may share memory (conservatively: any interleaving of
    rows and columns counts)."""
    rows, cols = t.shape
    (row_stride, col_stride) = t.stride()
    if rows <= 1 or cols <= 1:
        return (rows > 1 and row_stride == 0) or (cols > 1 and col_stride == 0)
    return not (row_stride >= cols * col_stride > 0 or col_stride >= rows * row_stride > 0)


def _build_bytes(num_tokens: int, num_sequences: int, with_eos: bool) -> int:
    """Peak bytes of Trie.build: at most one node per token (plus eos and root), each an offset, a
    token and a terminal flag (grown by doubling); per sequence its length, order, sort key and
    (key, item) pair, and its ranges in this level's and the next level's lists (16 bytes each,
    grown by doubling), which dominate for catalogues of short entries."""
    nodes = num_tokens + (num_sequences if with_eos else 0) + 1
    return 10 * nodes + 84 * num_sequences


def _as_int32(values: Any, name: str) -> np.ndarray:
    arr = as_array(values, name)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.int32)
    check_integer_dtype(arr.dtype, name)
    if arr.size and (arr.min() < -(2**31) or arr.max() > INT32_MAX):
        raise ValueError(f"{name} holds a value outside the int32 range")
    return native_array(arr, np.int32)


def _file_path(path: str | os.PathLike) -> str | bytes:
    path = os.fspath(path)
    if ("\0" if isinstance(path, str) else b"\0") in path:  # the OS would read it as the path's end
        raise ValueError(f"path must not contain a NUL character, got {path!r}")
    if isinstance(path, str) and not path.isascii():
        try:
            path.encode()
        except UnicodeEncodeError:  # a name os.listdir decoded with surrogates: the native side takes its bytes
            return os.fsencode(path)
    return path


_NODE_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _node_tensor(nodes: Any, rows: int, device: torch.device) -> torch.Tensor:
    if isinstance(nodes, torch.Tensor):
        check_dense(nodes, "nodes")
        if nodes.dtype not in _NODE_DTYPES:
            raise TypeError(f"nodes must be an integer tensor (int8/16/32/64 or uint8), got {nodes.dtype}")
        if nodes.device.type == "meta":
            raise ValueError("nodes is on the meta device, which holds no values")
        tensor = nodes
        if tensor.dtype == torch.int64:
            # Without a host sync (so that it traces under torch.compile): ids beyond int32 become
            # INT32_MIN, which the mask's range check rejects, rather than wrapping to a valid node.
            in_range = (tensor >= -(2**31)) & (tensor <= INT32_MAX)
            tensor = torch.where(in_range, tensor, torch.iinfo(torch.int32).min)
    else:
        tensor = torch.from_numpy(_as_int32(nodes, "nodes"))
    if tensor.dim() != 1 or tensor.shape[0] != rows:
        raise ValueError(f"nodes must be 1-D with one node per logits row ({rows}), got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.int32).contiguous()


# The mask kernels trust the CSR arrays they are handed (a node's slice of child_token, each token a
# column), so the op takes only a live Trie's own arrays, known by their memory (never read: no
# device sync), with the trie's largest token: a direct call of torch.ops.pyfastseq.trie_mask_ with
# other tensors, or with logits too narrow for the trie, is an error rather than a wild write.
_MASKABLE: dict[tuple, int] = {}


def _arrays_key(child_begin: torch.Tensor, child_token: torch.Tensor) -> tuple:
    return tuple((t.device, t.dtype, t.data_ptr(), t.shape, t.stride()) for t in (child_begin, child_token))


def _check_mask_op_args(logits: torch.Tensor, nodes: torch.Tensor, child_begin: torch.Tensor,
                        child_token: torch.Tensor) -> None:
    max_token = _MASKABLE.get(_arrays_key(child_begin, child_token))
    if max_token is None:
        raise ValueError("child_begin and child_token must be a Trie's own arrays: mask with Trie.mask_logits")
    if logits.dim() != 2 or logits.dtype not in _backend.ELEM_BYTES or logits.device != child_begin.device:
        raise ValueError(f"logits must be a 2-D float32/float16/bfloat16 tensor on {child_begin.device}")
    if logits.shape[1] <= max_token:
        raise ValueError(f"the trie holds token id {max_token} but logits has only {logits.shape[1]} columns")
    if nodes.dtype != torch.int32 or nodes.shape != logits.shape[:1] or not nodes.is_contiguous() \
            or nodes.device != logits.device:
        raise ValueError(f"nodes must be a contiguous int32 [{logits.shape[0]}] tensor on logits' device")


@torch.library.custom_op("pyfastseq::trie_mask_", mutates_args=("logits",), device_types=("cpu", "cuda"))
def _trie_mask_op(
    logits: torch.Tensor, nodes: torch.Tensor, child_begin: torch.Tensor, child_token: torch.Tensor, fill: float
) -> None:
    _check_mask_op_args(logits, nodes, child_begin, child_token)
    target = _backend.unit_stride_aligned(logits)
    rows, vocab = target.shape
    if rows and vocab:
        num_nodes = child_begin.shape[0] - 1
        if _backend.on_gpu(target):
            bad = (nodes < -1) | (nodes >= num_nodes)
            if bool(bad.any()):
                raise _bad_node(nodes, int(bad.nonzero()[0, 0]), num_nodes)
            launch_trie_mask_cuda(target, nodes, child_begin, child_token, fill)
        else:
            bad_node_row, nan_row = _C.trie_mask(*_mask_args(target, nodes, child_begin, child_token, fill),
                                                 _backend.fill_bits(float("inf"), target.dtype))
            if bad_node_row >= 0:
                raise _bad_node(nodes, bad_node_row, num_nodes)
            if nan_row >= 0:
                raise nan_kept_error("logits", nan_row)
    if target is not logits:
        logits.copy_(target)


def _mask_args(target, nodes, child_begin, child_token, fill: float) -> tuple:
    rows, vocab = target.shape
    return (target.data_ptr(), rows, vocab, target.stride(0), _backend.ELEM_BYTES[target.dtype],
            _backend.fill_bits(fill, target.dtype), nodes.data_ptr(), child_begin.data_ptr(), child_token.data_ptr(),
            child_begin.shape[0] - 1)


def launch_trie_mask_cuda(target: torch.Tensor, nodes: torch.Tensor, child_begin: torch.Tensor,
                          child_token: torch.Tensor, fill: float) -> None:
    """The CUDA trie mask's launch alone, on the current stream: no host sync, so it can be captured
    in a CUDA graph. ``target`` has unit column stride; ``nodes`` (int32, on its device) must already
    be -1 or node ids of the trie whose device arrays are given."""
    with torch.cuda.device(target.device):  # the launch goes to the current GPU
        status = _backend.cuda().trie_mask(*_mask_args(target, nodes, child_begin, child_token, fill),
                                           _backend.stream_of(target))
    if status != 0:
        raise RuntimeError(f"trie mask kernel launch failed (cudaError {status})")


def _bad_node(nodes: torch.Tensor, row: int, num_nodes: int) -> ValueError:
    value = int(nodes[row])
    shown = f"{value} or a value beyond the int32 range" if value == torch.iinfo(torch.int32).min else str(value)
    return ValueError(f"nodes[{row}] must be -1 or a node id in [0, {num_nodes}), got {shown}")


def nan_kept_error(name: str, row: int) -> ValueError:
    """The error for NaN in row ``row`` of the logits ``name`` at a token the trie allows there."""
    return ValueError(f"{name} row {row} holds NaN at a token its trie node allows, where masking would keep it")


@_trie_mask_op.register_fake
def _(logits, nodes, child_begin, child_token, fill):
    return None


def check_eos_ends_entries(tries: Sequence[Trie], eos_id: int | None, decoder: str,
                           starts: Sequence[int] | None = None) -> None:
    """Raise if ``decoder``, which ends a row at ``eos_id`` and decodes each trie from its node in
    ``starts`` (the roots when None), could pick eos inside an entry: no entry continuing past that
    eos could be returned, and the path up to it would be, though it need not be an entry."""
    if eos_id is None or eos_id < 0:
        return
    for i, trie in enumerate(tries):
        path = trie._path_continuing_after(eos_id, 0 if starts is None else starts[i])
        if path is not None:
            raise ValueError(
                f"trie holds eos_id {eos_id} inside an entry: more tokens follow the path {path}. {decoder} ends "
                "a row at eos, so no entry continuing past that eos could ever be returned; keep eos out of the "
                "entries' middle"
            )
