"""transformers integration: a trie-constrained ``LogitsProcessor`` for ``model.generate()``.

Importing this module imports transformers; ``import pyfastseq`` alone does not.
"""

from __future__ import annotations

import threading
from typing import Union

import numpy as np
import torch
from transformers import LogitsProcessor

from . import _backend
from ._backend import _C
from ._validate import check_holds_values, check_in_place_write, check_integer_dtype, is_int
from .trie import Trie, _overlapping, nan_kept_error

__all__ = ["TrieLogitsProcessor"]

PromptLen = Union[int, str, None]


class TrieLogitsProcessor(LogitsProcessor):
    """Constrain ``generate()`` to a :class:`~pyfastseq.Trie`, replacing ``prefix_allowed_tokens_fn``.

    ``model.generate(..., logits_processor=[TrieLogitsProcessor(trie, prompt_len="auto", num_beams=k)])``
    returns the same sequences and scores as ``prefix_allowed_tokens_fn=lambda b, ids:
    dict_trie.children(ids[prompt_len:]) or all_tokens`` (transformers' ``PrefixConstrainedLogitsProcessor``)
    without a Python call per row: each call finds every row's trie node in one native walk and copies
    the allowed scores in one native pass.

    Args:
        trie: the :class:`~pyfastseq.Trie` of allowed continuations. Build it with ``eos_id`` set to the
            model's eos token so that a stored sequence can finish even where it is a prefix of another.
        prompt_len: where the constrained part of each row starts in ``input_ids``:

            - ``None``: at column 0, so the trie's entries include whatever ``input_ids`` starts with
              (GENRE-style tries for encoder-decoders begin with ``decoder_start_token_id``).
            - an int: a fixed prompt length (with left padding every row of a batch has the same one);
              ``input_ids`` narrower than it raise ``ValueError``.
            - ``"auto"``: the width of ``input_ids`` at the first call of a generation. For a
              decoder-only model that is the prompt; for an encoder-decoder it is the one
              ``decoder_start_token_id`` column, so the trie holds the target tokens only. A call starts
              a new generation when its width is not one more than the previous call's, when its row
              count or prompt columns changed, when a batch item's first row does not extend one
              of the previous call's rows of that item (as a beam extends its parent; with
              ``num_beams=1``, when a row extends none of the previous call's rows), or, with
              ``num_beams=1``, when every row holds the trie's ``eos_id`` past the prompt (greedy
              search and sampling stop once every row has ended; build the trie with the model's
              eos). So one processor serves successive ``generate()`` calls, most outputs fed back
              as prompts included; one that extends the previous generation's last rows by a token
              cannot be told from that generation's next step (a beam search's best sequence that
              ran to the last step, or a ``generate()`` cut by ``max_new_tokens``): :meth:`reset`
              between them, or pass an int. This follows greedy, sampling and beam search, which
              grow ``input_ids`` one column per call; with assisted decoding pass an int.
        num_beams: the ``num_beams`` given to ``generate()``. Like ``PrefixConstrainedLogitsProcessor`` it
            groups the rows of one batch item for the unsatisfiable fallback below. ``"auto"`` follows a
            beam search whether or not it is given (left at 1, any row may be any earlier row's child).
        inplace: write into ``scores`` instead of a new tensor. Saves allocating (and, above ~32 MB,
            page-faulting in, on Linux in 2 MB pages) an ``[N, V]`` tensor per step: 5x faster at
            800 x 32k fp32. Safe in beam search, whose processors get fresh log-probabilities; not
            with ``output_logits=True`` in greedy/sampling, where transformers keeps the very tensor
            it hands the processors. ``scores`` whose elements share memory (an expanded view) raise
            ``ValueError``.
        reuse_output: return an alias of one of the processor's own ``[N, V]`` buffers, rewritten
            only where the allowed sets changed: each row's previous children go back to -inf and
            its new children are copied, O(children) per row instead of O(V) (800 x 32k fp32:
            0.25-0.45 ms against 4.6 ms in place and 15-18 ms for a new tensor). A buffer is
            rewritten only once nothing else holds its storage: transformers' beam search drops each
            step's scores before the next, so one buffer serves it; greedy and sampling hold one
            step's, so two take turns; with ``output_scores=True`` greedy keeps them all and every
            step gets a new one. It is rewritten in part only if torch's version counter says that
            nothing wrote into it since; otherwise in full. Writes that bypass the output's version
            counter are not seen: through ``.data``, numpy (``.numpy()``), DLPack, another tensor
            made on its storage (``set_``, ``frombuffer``) or the storage itself. Ignored for CUDA
            scores, which get a new tensor per step. Not with ``inplace``.

    Rows transformers hands over that have no continuation (finished rows padded after eos, filler
    beams that left the trie, a row standing on a leaf) keep all their scores: the "if no match, allow
    all tokens" idiom of transformers' own ``prefix_allowed_tokens_fn`` example, where
    ``PrefixConstrainedLogitsProcessor`` would raise on the empty list. Such rows never outrank a
    live beam (their running score is already -inf or -1e9) and greedy/sampling pads them anyway.
    As in ``PrefixConstrainedLogitsProcessor``, when every allowed score of every row of a batch item
    is -inf (an earlier processor masked them, e.g. ``min_new_tokens`` hiding eos), those rows get
    0 on their allowed tokens and -inf elsewhere, so the constraint still holds.

    NaN at a score the processor keeps on a row with a continuation (a child of the row's node)
    raises ``ValueError`` before anything is written, ``scores`` unchanged with ``inplace``; NaN
    elsewhere is replaced by -inf, and rows without a continuation are handed back as they are. CUDA
    scores are not read back for that check (it would synchronise the stream).

    Scores are float32, float16 or bfloat16, on CPU or CUDA. Processors passed to ``generate()`` run
    after its built-in ones, while ``PrefixConstrainedLogitsProcessor`` runs before
    ``forced_bos_token_id`` / ``forced_eos_token_id`` / ``suppress_tokens``: outputs match when those
    are unset, or when the trie agrees with them (BART checkpoints that force a bos first need that
    bos at the start of every entry).
    """

    def __init__(self, trie: Trie, prompt_len: PromptLen = None, num_beams: int = 1, inplace: bool = False,
                 reuse_output: bool = False):
        if not isinstance(trie, Trie):
            raise TypeError(f"trie must be a pyfastseq.Trie, got {type(trie).__name__}")
        if not (prompt_len is None or isinstance(prompt_len, str) or is_int(prompt_len)):
            raise TypeError(f"prompt_len must be None, 'auto' or an int >= 0, got {type(prompt_len).__name__}")
        if not (prompt_len is None or prompt_len == "auto" or is_int(prompt_len) and prompt_len >= 0):
            raise ValueError(f"prompt_len must be None, 'auto' or an int >= 0, got {prompt_len!r}")
        if not is_int(num_beams):
            raise TypeError(f"num_beams must be an int >= 1, got {type(num_beams).__name__}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
        self.trie = trie
        self.prompt_len = prompt_len
        self.num_beams = int(num_beams)
        if inplace and reuse_output:
            raise ValueError("inplace and reuse_output exclude each other: pick one")
        self.inplace = bool(inplace)
        self.reuse_output = bool(reuse_output)
        self.reset()

    def reset(self) -> None:
        """Forget the prompt that ``prompt_len="auto"`` took from the current generation, and drop the
        ``reuse_output`` buffers."""
        self._outputs = _OutputPool()
        self._auto_start: int | None = None
        self._last_len = -1
        self._prompt: np.ndarray | None = None
        self._row_hashes: np.ndarray | None = None  # of the last call's rows past the prompt

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``input_ids [N, cur_len]``, ``scores [N, V]`` -> constrained scores ``[N, V]``."""
        self._check(input_ids, scores)
        nodes = self._walk(input_ids, commit=True)
        if scores.device.type == "cpu":
            out, unsatisfiable = self._constrain_cpu(scores, nodes)
        else:
            out, unsatisfiable = self._constrain_torch(scores, nodes.numpy())
        if unsatisfiable.any():
            self._force_allowed(out, nodes.numpy(), unsatisfiable)
        if self.reuse_output and scores.device.type == "cpu":
            return self._outputs.give(out, nodes, self.trie)
        return out

    def nodes(self, input_ids: torch.Tensor) -> np.ndarray:
        """int32 ``[N]``: each row's trie node after its constrained part (-1 where it left the trie).
        A read: with ``prompt_len="auto"`` it finds the prompt as a call would, and leaves the
        processor's view of the generation as it was (a stopping criterion may call it)."""
        _check_ids(input_ids)
        return self._walk(input_ids, commit=False).numpy()

    def _walk(self, input_ids: torch.Tensor, commit: bool) -> torch.Tensor:
        return self.trie._walk_rows(input_ids[:, self._start(input_ids, commit):])

    def _start(self, input_ids: torch.Tensor, commit: bool) -> int:
        """The first constrained column; with ``commit``, ``input_ids`` becomes the generation's last step."""
        rows, cur_len = input_ids.shape
        if self.prompt_len != "auto":
            if self.prompt_len and self.prompt_len > cur_len:
                raise ValueError(f"prompt_len={self.prompt_len} but input_ids has only {cur_len} columns: the "
                                 "prompt is part of input_ids")
            return self.prompt_len or 0
        # NumPy: these arrays are small, and a torch op's own cost would be most of the time.
        ids, start = input_ids.cpu().numpy(), self._auto_start
        same_prompt = start is not None and rows == self._prompt.shape[0] and np.array_equal(ids[:, :start], self._prompt)
        next_step = same_prompt and cur_len == self._last_len + 1 and self._continues(ids[:, start:])
        # A read of the rows the last call was given (after it, as a stopping criterion sees them).
        last_step = same_prompt and not commit and cur_len == self._last_len \
            and np.array_equal(_row_hashes(ids[:, start:]), self._row_hashes)
        new = not (next_step or last_step)
        if new:
            start = cur_len
        if commit:
            if new:
                self._auto_start, self._prompt = start, ids.copy()
            self._last_len = cur_len
            self._row_hashes = _row_hashes(ids[:, start:])
        return start

    def _continues(self, generated: np.ndarray) -> bool:
        """Whether rows whose tokens past the prompt are ``generated`` can be the next step of the
        last call's rows. Each row of a step continues a row of the step before in its batch item
        (greedy and sampling: the same row; beam search: its parent, which without num_beams may be
        any row); and greedy and sampling stop once every row holds eos."""
        rows, eos = generated.shape[0], self.trie.eos_id
        if not rows:
            return True
        if self.num_beams == 1 and eos is not None and (generated == eos).any(axis=1).all():
            return False
        if self.num_beams == 1:
            # Any row of the last call may be the parent: a beam search given no num_beams reorders rows.
            return bool(np.isin(_row_hashes(generated[:, :-1]), self._row_hashes).all())
        # Each item's first row, by hashes (equal rows hash equal, so a real next step always
        # passes): a prompt repeats one sequence over its item's beams, so one row tells as much.
        group = self.num_beams if rows % self.num_beams == 0 else rows
        first_parents = _row_hashes(generated[::group, :-1])
        return bool((self._row_hashes.reshape(-1, group) == first_parents[:, None]).any(axis=1).all())

    def _check(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        _check_ids(input_ids)
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"scores must be a 2-D tensor [N, V], got {type(scores).__name__}")
        if scores.dim() != 2 or scores.shape[0] != input_ids.shape[0]:
            raise ValueError(f"scores must be a 2-D tensor [N, V] with N = {input_ids.shape[0]}, got {_shape(scores)}")
        check_holds_values(scores, "scores")
        if scores.dtype not in _backend.ELEM_BYTES:
            raise TypeError(f"scores must be float32, float16 or bfloat16, got {scores.dtype}")
        if self.inplace and _overlapping(scores):
            raise ValueError(f"scores must not be an expanded or self-overlapping view with inplace=True (strides "
                             f"{scores.stride()}): masking writes in place, and elements sharing memory would "
                             "overwrite each other")
        if self.inplace:
            check_in_place_write(scores, "scores", "inplace=True writes into it and records no gradient. Call "
                                 "under torch.no_grad(), as generate() does, or leave inplace off")
        if scores.shape[1] <= self.trie.max_token:
            raise ValueError(f"the trie holds token id {self.trie.max_token} but scores has only "
                             f"{scores.shape[1]} columns (vocabulary)")
        if scores.shape[0] % self.num_beams:
            raise ValueError(f"scores has {scores.shape[0]} rows, not a multiple of num_beams={self.num_beams}")

    def _constrain_cpu(self, scores: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        src = _backend.unit_stride_aligned(scores)
        previous = None
        if self.inplace:
            out = src
        elif self.reuse_output:
            out, previous = self._outputs.take(src, self.trie)
        else:
            out = torch.empty_like(src, memory_format=torch.contiguous_format)
        all_neg_inf = torch.ones(len(nodes), dtype=torch.bool, device="cpu")
        if out.numel():
            nan_row = _C.trie_constrain(self.trie._native, src.data_ptr(), out.data_ptr(), out.shape[0], out.shape[1],
                                        src.stride(0), out.stride(0), _backend.ELEM_BYTES[out.dtype],
                                        _backend.fill_bits(float("-inf"), out.dtype), nodes.data_ptr(),
                                        all_neg_inf.data_ptr(), 0 if previous is None else previous.data_ptr())
            if nan_row >= 0:
                raise nan_kept_error("scores", nan_row)
        if self.inplace and out is not scores:
            out = scores.copy_(out)
        return out, all_neg_inf.numpy()

    def _constrain_torch(self, scores: torch.Tensor, nodes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        # Off the CPU the walk stays native (a few ids per row come back to the host); the masking is
        # the device kernel of Trie.mask_logits.
        open_rows = torch.from_numpy(self.trie._has_children(nodes)).to(scores.device)
        src = scores.detach()  # the result records no gradient, as on the CPU
        out = torch.where(open_rows[:, None], self.trie.mask_logits(src.clone(), torch.from_numpy(nodes)), src)
        if self.inplace:
            out = scores.copy_(out)
        return out, out.amax(dim=1).isneginf().cpu().numpy()

    def _force_allowed(self, out: torch.Tensor, nodes: np.ndarray, unsatisfiable: np.ndarray) -> None:
        """Rows of batch items where no row has a finite allowed score: 0 on allowed, -inf elsewhere."""
        items = unsatisfiable.reshape(-1, self.num_beams).all(axis=1)
        rows = np.flatnonzero(np.repeat(items, self.num_beams))
        if not len(rows):
            return
        forced = torch.zeros((len(rows), out.shape[1]), dtype=out.dtype, device=out.device)
        masked = self.trie._has_children(nodes[rows])  # rows without a continuation allow every token
        if masked.any():
            forced[masked] = self.trie.mask_logits(forced[masked], torch.from_numpy(nodes[rows][masked]))
        out[torch.from_numpy(rows).to(out.device)] = forced


class _OutputPool:
    """``reuse_output``'s buffers, most recently used first.

    A buffer is handed out as an alias, so that whoever keeps the output holds a reference to the
    buffer's storage: it is free again when the pool's own tensor is the storage's only holder. The
    lock makes finding a free buffer and taking it one step, for processors shared by threads.
    """

    SIZE = 2  # greedy and sampling still hold the previous step's scores when they call again

    def __init__(self):
        self.entries: list[_Output] = []
        self.lock = threading.Lock()

    def take(self, like: torch.Tensor, trie: Trie) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A free buffer shaped like ``like`` and the nodes of ``trie`` it holds the output for (None
        when that is unknown: a new buffer, one written to since, or one written for another trie)."""
        with self.lock:
            for i, entry in enumerate(self.entries):
                if entry.fits(like) and _only_holder(entry.buffer):
                    del self.entries[i]
                    return entry.buffer, entry.nodes if entry.unchanged(trie) else None
        with torch.inference_mode(False):  # inference tensors have no version counter
            return torch.empty(like.shape, dtype=like.dtype, device="cpu"), None

    def give(self, buffer: torch.Tensor, nodes: torch.Tensor, trie: Trie) -> torch.Tensor:
        """Keep ``buffer``, now the output for ``nodes`` of ``trie``, and return an alias of it
        (``detach``: a tensor of its own on the same storage and version counter)."""
        alias = buffer.detach()  # before the buffer is back in the pool, where it would look free
        with self.lock:
            self.entries.insert(0, _Output(buffer, nodes, trie))
            del self.entries[self.SIZE:]
        return alias


class _Output:
    """A pool buffer with what it was last written as: the output for ``nodes`` of ``trie``, at the
    buffer's version, address and size then."""

    __slots__ = ("buffer", "nodes", "trie", "version", "address", "nbytes")

    def __init__(self, buffer: torch.Tensor, nodes: torch.Tensor, trie: Trie):
        self.buffer, self.nodes, self.trie = buffer, nodes, trie
        self.version = buffer._version
        self.address, self.nbytes = buffer.data_ptr(), buffer.untyped_storage().nbytes()

    def fits(self, like: torch.Tensor) -> bool:
        """Shaped like ``like``, and its memory still there (a storage can be resized in place)."""
        return (self.buffer.shape == like.shape and self.buffer.dtype == like.dtype
                and self.buffer.data_ptr() == self.address and self.buffer.untyped_storage().nbytes() == self.nbytes)

    def unchanged(self, trie: Trie) -> bool:
        return self.trie is trie and self.buffer._version == self.version


def _storage_holders(tensor: torch.Tensor) -> int:
    """References to ``tensor``'s storage, as torch counts them (the storage object asked included)."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


try:  # what a tensor alone on its storage gives: a private API, so read rather than assumed
    _ALONE = _storage_holders(torch.empty(1))
except (AttributeError, RuntimeError):
    _ALONE = None


def _only_holder(buffer: torch.Tensor) -> bool:
    """Whether ``buffer`` is the only tensor on its storage; never where torch cannot say."""
    return _ALONE is not None and _storage_holders(buffer) == _ALONE


def _check_ids(input_ids: object) -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a 2-D tensor [N, cur_len], got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a 2-D tensor [N, cur_len], got shape {tuple(input_ids.shape)}")
    check_integer_dtype(input_ids.dtype, "input_ids", "integer token ids")
    check_holds_values(input_ids, "input_ids")


_HASH_WEIGHTS = np.random.default_rng(0).integers(-2**62, 2**62, size=64)


def _row_hashes(ids: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: a hash of each row of ``ids`` (a weighted sum, wrapping around)."""
    global _HASH_WEIGHTS
    weights = _HASH_WEIGHTS  # this call's own reference: another thread may grow the table meanwhile
    if ids.shape[1] > len(weights):  # one weight per column, as many as the longest row needs
        # The same seed: a longer table starts with the shorter one's weights, so hashes keep.
        weights = _HASH_WEIGHTS = np.random.default_rng(0).integers(-2**62, 2**62, size=2 * ids.shape[1])
    return (ids.astype(np.int64, copy=False) * weights[:ids.shape[1]]).sum(axis=1)


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
