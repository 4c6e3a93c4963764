"""Beam search over a trie of allowed sequences (:class:`TrieBeamSearch`) or the whole vocabulary
(:class:`BeamSearch`), with the exact semantics of transformers' beam search.

Each step runs one fused native kernel (log-softmax normaliser, allowed children, top ``2 * num_beams``
per batch item, finished-hypothesis bookkeeping) with the GIL released; Python only calls the model
once per step. With CUDA logits the search runs on the GPU, state included (``_cuda_search``). See
``DESIGN.md`` ("Step protocol", "Semantics").
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import _backend
from ._backend import _C
from ._cuda_search import DTYPE_CODES as _DTYPE_CODES
from ._cuda_search import MAX_BEAMS, CudaStep, DeviceSearch, has_cuda_module
from ._limits import check_memory
from ._validate import (INT32_MAX, as_array, as_eos_id, as_token_array, check_step_fn, finite_float, is_int, native_array,
                        pad_id_of)
from .lookahead import LCSLookahead
from .trie import Trie, check_eos_ends_entries

__all__ = ["BeamSearch", "BeamSearchOutput", "TrieBeamSearch"]

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_CANDIDATE_NAMES = ("score", "logprob", "token", "parent", "node", "count")
_EARLY_STOPPING_CODES = {False: 0, True: 1, "never": 2}


@dataclass
class BeamSearchOutput:
    """Per batch item, up to ``num_return_sequences`` hypotheses, best first.

    ``sequences[b][i]`` holds the generated tokens only (no prompt, prefix or decoder start token),
    the final eos included when one was picked. ``scores[b][i]`` is the sum of the token log-probs
    divided by ``len ** length_penalty``; ``finished[b][i]`` is False where the hypothesis was cut at
    ``max_length``; ``token_scores[b][i]`` (with ``output_token_scores=True``) the log-prob each token
    added.

    A batch item lists fewer hypotheses (possibly none) when:
    - the trie allows fewer distinct continuations, or ``min_length`` rules out its shorter entries
      (while some beam of the item can go on: see ``min_length`` in :class:`TrieBeamSearch`);
    - the logits rule some out: a continuation whose logit is -inf scores -inf, and a beam whose
      allowed tokens are all at -inf under ``normalize="allowed"`` (or whose whole row is -inf)
      goes on with nothing, like a dead one, rather than with NaN scores (unless no beam of its
      item has a finite one);
    - filler hypotheses took the slots. Where an item has fewer than ``num_beams`` live
      continuations, transformers' beam search fills the beams with copies penalised by -1e9, and
      those can finish and fill hypothesis slots; with ``early_stopping=True`` a full set of
      ``num_beams`` finished hypotheses ends the item. This search does the same, so that it stops
      where transformers does, but never returns a filler;
    - no length-penalised score beat -1e9, transformers' placeholder for a free slot (possible only
      with an extreme negative ``length_penalty``).
    """

    sequences: list[list[list[int]]]
    scores: list[list[float]]
    finished: list[list[bool]]
    token_scores: list[list[list[float]]] | None = None


class _BeamSearchBase:
    def __init__(self, *, num_beams, max_length, length_penalty, early_stopping, num_return_sequences,
                 min_length, output_token_scores):
        self.num_beams = _positive_int(num_beams, "num_beams")
        self.max_length = _positive_int(max_length, "max_length")
        if not is_int(min_length) or min_length < 0:
            raise ValueError(f"min_length must be a non-negative int, got {min_length!r}")
        if min_length > self.max_length:
            raise ValueError(f"min_length ({min_length}) must not exceed max_length ({self.max_length})")
        self.min_length = int(min_length)
        real = isinstance(length_penalty, numbers.Real) and not isinstance(length_penalty, bool)
        self.length_penalty = finite_float(length_penalty) if real else None
        if self.length_penalty is None:
            raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
        if isinstance(early_stopping, np.bool_):
            early_stopping = bool(early_stopping)
        if not any(early_stopping is key or (isinstance(key, str) and early_stopping == key) for key in _EARLY_STOPPING_CODES):
            raise ValueError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
        self.early_stopping = early_stopping
        self.num_return_sequences = _positive_int(num_return_sequences, "num_return_sequences")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences ({self.num_return_sequences}) must not exceed num_beams ({self.num_beams})"
            )
        self.output_token_scores = bool(output_token_scores)

    @property
    def early_stopping_code(self) -> int:
        return _EARLY_STOPPING_CODES[self.early_stopping]

    # -- the model-agnostic loop -------------------------------------------------------------

    def search(self, step_fn: StepFn, batch_size: int) -> BeamSearchOutput:
        """Run the search against ``step_fn(tokens, beam_idx) -> logits`` (DESIGN "Step protocol").

        ``step_fn`` gets ``N = batch_size * num_beams`` rows at every call: ``tokens`` int64
        ``[N, 1]`` (``[N, 0]`` at the first call) and ``beam_idx`` int64 ``[N]``, the previous row each
        row continues (reorder any cache with it; ``arange(N)`` at the first call). It returns
        ``[N, V]`` float32/float16/bfloat16 logits (CPU or CUDA). Rows of finished batch items and
        dead beams are fed the pad token (eos, else 0); their logits are ignored.

        When the first call returns CUDA logits, the whole search runs on that GPU: ``tokens`` and
        ``beam_idx`` of later calls are on it too, and no step waits for the host (the search may
        call ``step_fn`` once more after the last step that matters; that call's logits are
        ignored). The search's kernels run on the GPU's current stream: logits made on another
        stream must be ready on it (``torch.cuda.current_stream().wait_stream(s)``) when
        ``step_fn`` returns. A lookahead's deltas are computed on the CPU from each step's trie
        nodes and tokens (copied there, not the logits) while the GPU runs the model's step. The CPU
        search's token buffers grow with its hypotheses, as transformers' do, so a huge
        ``max_length`` costs nothing when eos comes early (a memory cap, :func:`pyfastseq.set_memory_limit`,
        still counts the whole ``[rows, max_length]``); the GPU search's are ``[rows, max_length]`` from
        the start (fixed shapes, so that a step can be captured in a CUDA graph). With
        more than 1,024 beams or a build without the CUDA module, every step runs on the CPU with
        CPU ``tokens`` and ``beam_idx``, and CUDA logits are copied there.
        """
        check_step_fn(step_fn)
        batch_size = _positive_int(batch_size, "batch_size")
        tries, start_nodes, eos_id, normalize_allowed = self._start(batch_size)
        rows = batch_size * self.num_beams
        # Two generations of tokens (and of their log-probs) per row, and the hypotheses' copies.
        _check_search_size(rows, self.max_length, "batch_size * num_beams", 12 + 8 * self.output_token_scores)

        def checked(logits):
            return self._checked_logits(logits, rows, tries, eos_id)

        logits = checked(step_fn(torch.zeros(rows, 0, dtype=torch.long), torch.arange(rows)))
        if self._on_device(logits):
            search = DeviceSearch(self, logits, batch_size, tries, start_nodes, normalize_allowed, eos_id)
            return self._output(search.run(step_fn, logits, checked))
        state = _C.BeamSearchState(
            batch_size, self.num_beams, self.max_length, self.min_length, self.num_return_sequences,
            self.length_penalty, self.early_stopping_code, eos_id, pad_id_of(eos_id),
            normalize_allowed, self.output_token_scores, [t._native for t in tries], start_nodes,
        )
        while True:
            logits = _host(logits)
            delta_offsets, deltas = self._lookahead_deltas(state.nodes, state.generated, tries, batch_size)
            more = state.step(
                logits.data_ptr(), logits.shape[1], logits.stride(0), _DTYPE_CODES[logits.dtype],
                0 if delta_offsets is None else delta_offsets.ctypes.data,
                0 if deltas is None else deltas.ctypes.data,
            )
            if not more:
                return self._output(state.results(self.num_return_sequences))
            logits = checked(step_fn(torch.from_numpy(state.next_tokens).long().unsqueeze(1),
                                     torch.from_numpy(state.beam_idx).long()))

    def generate(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **model_kwargs: Any) -> BeamSearchOutput:
        """Beam search with a transformers-style model (decoder-only or encoder-decoder).

        The prompt (decoder-only) or source (encoder-decoder) runs once; every later step feeds one
        token per row and reorders the model's KV cache by ``beam_idx``. Constraints and lengths
        apply to the generated tokens only. Encoder-decoder models start the decoder from
        ``decoder_start_token_id`` (pass ``decoder_start_token_id=`` to override). ``model_kwargs``
        go to the first forward call (the encoder for encoder-decoder models) and must be named by that
        forward, as transformers checks; a decoder-only model's ``token_type_ids`` go on with every new
        token taking its row's last segment. Without ``attention_mask``, the pad token is masked where
        the prompts hold it (and it is not an eos token), as transformers infers it; an encoder-decoder's
        source too, as transformers 4.x does (5.x leaves source pads unmasked: pass ``attention_mask``
        to choose). A decoder-only prompt's positions count its real tokens, so left padding decodes
        as transformers does; after right padding the new tokens continue from the last real token's
        position, where transformers (which warns against right padding) restarts them near 0. No
        gradients are kept, for the encoder or the prompt either.
        """
        from ._generate import model_step_fn

        with torch.no_grad():  # the encoder and the prompt too: no graph is kept for them
            step_fn = model_step_fn(model, input_ids, attention_mask, self.num_beams, model_kwargs)
            return self.search(step_fn, input_ids.shape[0])

    # -- hooks and helpers -------------------------------------------------------------------

    def _start(self, batch_size: int):
        """(tries, start node per batch item, eos id, normalize_allowed) of a search."""
        raise NotImplementedError

    def _lookahead_deltas(self, nodes, generated, tries, batch_size):
        """(row_offsets, deltas) of a step from the rows' int32 nodes (-1: nothing to continue) and
        generated tokens, host arrays; (None, None) without a lookahead."""
        return None, None

    def _uses_lookahead(self) -> bool:
        return False

    def _on_device(self, logits: torch.Tensor) -> bool:
        """Whether this step runs on the logits' GPU (else they are copied to the CPU, as a build
        without the CUDA module has to)."""
        return _backend.on_gpu(logits) and self.num_beams <= MAX_BEAMS and has_cuda_module()

    @staticmethod
    def _checked_logits(logits: Any, rows: int, tries: Sequence[Trie], eos_id: int = -1,
                        rows_name: str = "batch_size * num_beams") -> torch.Tensor:
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"step_fn must return a torch.Tensor of logits, got {type(logits).__name__}")
        if logits.layout != torch.strided:
            raise TypeError(f"logits returned by step_fn must be a dense (strided) tensor, got layout {logits.layout}")
        if logits.dtype not in _DTYPE_CODES:
            raise TypeError(f"logits returned by step_fn must be float32, float16 or bfloat16, got {logits.dtype}")
        if logits.device.type == "meta":
            raise ValueError("logits returned by step_fn are on the meta device, which holds no values")
        if logits.dim() != 2 or logits.shape[0] != rows:
            raise ValueError(
                f"logits returned by step_fn must have shape [{rows_name} = {rows}, vocab], "
                f"got {tuple(logits.shape)}"
            )
        if logits.shape[1] == 0:
            raise ValueError("logits returned by step_fn have an empty vocabulary dimension")
        if eos_id >= logits.shape[1]:
            raise ValueError(f"eos_id is {eos_id} but logits has only {logits.shape[1]} columns (vocabulary)")
        for trie in tries:
            if trie.max_token >= logits.shape[1]:
                raise ValueError(
                    f"the trie holds token id {trie.max_token} but logits has only {logits.shape[1]} columns (vocabulary)"
                )
        return _backend.unit_stride_aligned(logits.detach())

    def _output(self, results) -> BeamSearchOutput:
        """From per batch item (tokens, score, finished, token_scores) tuples, best first."""
        return BeamSearchOutput(
            sequences=[[list(h[0]) for h in item] for item in results],
            scores=[[float(h[1]) for h in item] for item in results],
            finished=[[bool(h[2]) for h in item] for item in results],
            token_scores=[[list(h[3]) for h in item] for item in results] if self.output_token_scores else None,
        )


class TrieBeamSearch(_BeamSearchBase):
    """Beam search whose outputs are constrained to the sequences of a :class:`Trie`.

    Args:
        trie: a :class:`Trie`, or a list with one Trie per batch item. A hypothesis finishes when it
            picks the trie's eos (build the trie with ``eos_id`` so that an entry may be a prefix of
            another) or reaches a leaf.
        num_beams, max_length, length_penalty, early_stopping, num_return_sequences: as in
            transformers' ``generate``; ``max_length`` counts new tokens (``max_new_tokens``) and
            ``early_stopping`` is True, False or ``"never"``.
        lookahead: None, or an object with ``deltas(trie, nodes, generated, batch_index) ->
            (row_offsets, deltas)`` (e.g. ``LCSLookahead``), called once per step (once per batch item
            when ``trie`` is a list) with CPU tensors: ``nodes`` int32 ``[N]`` (-1 for rows with nothing
            to continue), ``generated`` int32 ``[N, len(prefix) + t]`` (each row's path from the trie's
            root: ``prefix``, then the ``t`` tokens it generated) and ``batch_index`` int64 ``[N]``. Row r's children (ascending token order) get
            ``deltas[row_offsets[r]:row_offsets[r+1]]``; where some delta is positive and the row has
            more than one child, their full-vocabulary probabilities become ``p ** (1 / (delta + 1))``
            renormalised over the children to the mass the children had: 1 with
            ``normalize="allowed"`` (the seed's rule), their share of the vocabulary with ``"full"``,
            so that the row's scores stay on transformers' scale and all-zero deltas would change
            nothing. Rows with every delta 0, or an empty slice, keep their plain log-probs (so
            ``normalize`` still applies there), matching "delta 0 leaves the distribution unchanged".
        normalize: ``"full"`` (log-softmax over the vocabulary, as transformers with
            ``prefix_allowed_tokens_fn``) or ``"allowed"`` (over the node's children; skips the pass
            over the vocabulary).
        min_length: transformers' ``min_new_tokens``: eos is blocked until ``min_length`` tokens
            have been generated; an entry of a trie built without eos, which ends with the token
            that reaches its leaf, needs ``min_length`` tokens counting that one. Where no live beam
            of a batch item has an allowed token with a finite log-prob (the block leaves each able
            only to end, or the logits put every allowed token at -inf), every live beam's allowed
            tokens, eos and leaves included, get log-prob 0, as transformers'
            ``PrefixConstrainedLogitsProcessor`` does: the item then ends with entries shorter than
            ``min_length``, as transformers returns them. (transformers asks the question of every
            row, a dead beam's too; where the model itself puts -inf on tokens, a dead beam that
            left the trie can keep a finite eos there and hold the forcing off, and its item may
            end with fillers only where this search forces and finishes an entry.)
        prefix: tokens consumed from the trie's root before decoding (e.g. a decoder start token that
            the trie entries begin with); the generated tokens continue from that node.
        output_token_scores: also return the log-prob each token added.

    Ties are broken by the lower (beam, token), the flat order of transformers' ``topk`` over beams x
    vocabulary; ``torch.topk`` leaves the order of exact ties unspecified. The ties that matter are
    among filler beams (see :class:`BeamSearchOutput`): in float32, -1e9 plus a log-prob above
    about -32 rounds to -1e9 itself, so a filler's continuations tie, and which of them runs on can
    decide whether fillers finish first and end the search early. Outputs can then differ from
    transformers' where an item has fewer than ``num_beams`` live continuations.

    A trie built without ``eos_id`` has no eos to pick: a row that reaches a leaf finishes there, and
    nothing fills its place. If its entries end with the model's eos token, build it with that
    ``eos_id`` instead: transformers keeps a finished beam running as a -1e9 filler that picks eos
    again and fills a hypothesis slot, which with ``early_stopping=True`` can end its search
    earlier, and the search follows that only when it knows the eos.
    """

    def __init__(self, trie: Trie | Sequence[Trie], num_beams: int = 4, max_length: int = 64,
                 length_penalty: float = 1.0, early_stopping: bool | str = True, num_return_sequences: int = 1,
                 lookahead: Any = None, normalize: str = "full", *, min_length: int = 0,
                 prefix: Sequence[int] | None = None, output_token_scores: bool = False):
        super().__init__(num_beams=num_beams, max_length=max_length, length_penalty=length_penalty,
                         early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                         min_length=min_length, output_token_scores=output_token_scores)
        self.tries = [trie] if isinstance(trie, Trie) else list(trie) if isinstance(trie, (list, tuple)) else None
        if not self.tries or not all(isinstance(t, Trie) for t in self.tries):
            raise TypeError(f"trie must be a pyfastseq.Trie or a non-empty list of them, got {type(trie).__name__}")
        eos_ids = {t.eos_id for t in self.tries}
        if len(eos_ids) > 1:
            raise ValueError(f"every trie in trie must share one eos_id, got {sorted(eos_ids, key=str)}")
        self.eos_id = eos_ids.pop()
        if normalize not in ("full", "allowed"):
            raise ValueError(f'normalize must be "full" or "allowed", got {normalize!r}')
        self.normalize = normalize
        if lookahead is not None and (isinstance(lookahead, type) or not callable(getattr(lookahead, "deltas", None))):
            raise TypeError("lookahead must be None or an object with a deltas(trie, nodes, generated, batch_index) "
                            f"method, got {lookahead!r:.60}")
        self.lookahead = lookahead
        self.prefix = as_token_array([] if prefix is None else prefix, "prefix")
        self._start_nodes = [self._start_node(t) for t in self.tries]
        check_eos_ends_entries(self.tries, self.eos_id, "TrieBeamSearch", self._start_nodes)

    def _start_node(self, trie: Trie) -> int:
        node = trie.walk(self.prefix)
        if node < 0:
            raise ValueError(f"prefix {self.prefix.tolist()} is not a path from the root of the trie")
        if len(trie.children(node)[0]) == 0:
            raise ValueError(f"prefix {self.prefix.tolist()} leads to a trie leaf: nothing is left to decode")
        return node

    def _check_batch(self, batch_size: int, owner: str = "") -> None:
        """Per-item tries and lookahead queries must be one per batch item; ``owner`` (e.g.
        ``"searcher's "``) opens the messages."""
        if len(self.tries) not in (1, batch_size):
            raise ValueError(f"{owner}trie holds {len(self.tries)} tries but batch_size is {batch_size}: give one or "
                             "one per item")
        if isinstance(self.lookahead, LCSLookahead) and self.lookahead.per_item and len(self.lookahead.queries) != batch_size:
            raise ValueError(f"{owner}lookahead holds {len(self.lookahead.queries)} queries (one per batch item) but "
                             f"batch_size is {batch_size}")

    def _start(self, batch_size: int):
        self._check_batch(batch_size)
        starts = self._start_nodes * batch_size if len(self.tries) == 1 else self._start_nodes
        return self.tries, starts, as_eos_id(self.eos_id), self.normalize == "allowed"

    def _uses_lookahead(self) -> bool:
        return self.lookahead is not None

    def _lookahead_deltas(self, nodes, generated, tries, batch_size):
        if self.lookahead is None:
            return None, None
        if len(self.prefix):
            path = np.empty((len(generated), len(self.prefix) + generated.shape[1]), dtype=np.int32)
            path[:, : len(self.prefix)] = self.prefix
            path[:, len(self.prefix):] = generated
            generated = path
        k = self.num_beams
        if isinstance(self.lookahead, LCSLookahead):
            # The native lookahead takes the state's arrays as they are and leaves the rows the rule
            # does not touch with empty slices; its output needs no checking.
            def call(trie, nodes, generated, batch_index):
                return self.lookahead._step_deltas(trie, nodes, generated, batch_index)
            batch_index = np.arange(batch_size * k, dtype=np.int64) // k
        else:
            def call(trie, nodes, generated, batch_index):
                return _checked_deltas(self.lookahead.deltas(trie, nodes, generated, batch_index), len(nodes))
            nodes, generated = torch.from_numpy(nodes), torch.from_numpy(generated)
            batch_index = torch.arange(batch_size * k) // k
        if len(tries) == 1:
            return call(tries[0], nodes, generated, batch_index)
        offsets, parts, total = [np.zeros(1, dtype=np.int64)], [], 0
        for b, trie in enumerate(tries):
            rows = slice(b * k, (b + 1) * k)
            offs, deltas = call(trie, nodes[rows], generated[rows], batch_index[rows])
            offsets.append(offs[1:] + total)
            parts.append(deltas)
            total += len(deltas)
        return np.concatenate(offsets), native_array(np.concatenate(parts), np.int32)


class BeamSearch(_BeamSearchBase):
    """Unconstrained beam search over the full vocabulary, identical to transformers' beam search.

    ``eos_id`` (or None: hypotheses run to ``max_length``) ends a hypothesis; the other arguments are
    as in :class:`TrieBeamSearch`.
    """

    def __init__(self, eos_id: int | None, num_beams: int = 4, max_length: int = 64, length_penalty: float = 1.0,
                 early_stopping: bool | str = True, num_return_sequences: int = 1, *, min_length: int = 0,
                 output_token_scores: bool = False):
        super().__init__(num_beams=num_beams, max_length=max_length, length_penalty=length_penalty,
                         early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                         min_length=min_length, output_token_scores=output_token_scores)
        self.eos_id = as_eos_id(eos_id)

    def _start(self, batch_size: int):
        return [], [], self.eos_id, False


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an int in [1, 2**31 - 1], the range of the native core's counts."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > INT32_MAX:
        raise ValueError(f"{name} must be at most 2**31 - 1, got {value}")
    return int(value)


def _check_search_size(rows: int, max_length: int, what: str, bytes_per_token: int) -> None:
    """Checks ``rows`` (``batch_size * num_beams`` or ``* num_samples``) against the native core's
    int32 row indices, and the ``[rows, max_length]`` buffers of ``bytes_per_token`` bytes per token
    that the search keeps against the memory cap, before anything is allocated."""
    if rows > INT32_MAX:
        raise ValueError(f"{what} must be at most 2**31 - 1 rows, got {rows:,}")
    check_memory(rows * max_length * bytes_per_token, f"a search of {rows:,} rows ({what}) x max_length {max_length:,}")


def _checked_deltas(result: Any, rows: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        row_offsets, deltas = result
    except (TypeError, ValueError) as exc:
        raise TypeError("lookahead.deltas must return (row_offsets, deltas)") from exc
    offs = as_array(row_offsets, "lookahead.deltas row_offsets")
    vals = as_array(deltas, "lookahead.deltas deltas")
    if offs.ndim != 1 or offs.shape[0] != rows + 1 or not np.issubdtype(offs.dtype, np.integer):
        raise ValueError(f"lookahead.deltas row_offsets must be 1-D integers of length {rows + 1}, got shape {offs.shape}")
    if vals.ndim != 1 or (vals.size and not np.issubdtype(vals.dtype, np.integer)):
        raise ValueError(f"lookahead.deltas deltas must be a 1-D integer array, got shape {vals.shape}")
    if offs[0] != 0 or offs[-1] != vals.shape[0] or np.any(np.diff(offs) < 0):
        raise ValueError("lookahead.deltas row_offsets must start at 0, never decrease and end at len(deltas)")
    if vals.size and (vals.max() > INT32_MAX or vals.min() < -INT32_MAX - 1):
        beyond = int(vals.max()) if vals.max() > INT32_MAX else int(vals.min())
        raise ValueError(f"lookahead.deltas gave a delta of {beyond}, beyond the int32 range")
    return native_array(offs, np.int64), native_array(vals, np.int32)


def _beam_step(logits: torch.Tensor, beam_scores: torch.Tensor, num_beams: int, trie: Trie | None = None,
               nodes: torch.Tensor | None = None, normalize: str = "full",
               deltas: tuple[Any, Any] | None = None) -> dict[str, torch.Tensor]:
    """The fused step alone (no hypothesis bookkeeping): per batch item the best ``2 * num_beams``
    continuations of ``[batch * num_beams, V]`` logits, best first, with lookahead ``deltas``
    (``(row_offsets, deltas)``) if given. Used by benchmarks and tests."""
    rows = beam_scores.shape[0]
    logits = _host(_BeamSearchBase._checked_logits(logits, rows, [] if trie is None else [trie]))
    offsets, values = (None, None) if deltas is None else (np.asarray(d) for d in deltas)
    arrays = _C.beam_step(
        logits.data_ptr(), logits.shape[1], logits.stride(0), _DTYPE_CODES[logits.dtype], rows // num_beams, num_beams,
        beam_scores.float().numpy(), None if nodes is None else nodes.int().numpy(),
        [] if trie is None else [trie._native], normalize == "allowed", as_eos_id(None if trie is None else trie.eos_id),
        offsets, values,
    )
    return {name: torch.from_numpy(a) for name, a in zip(_CANDIDATE_NAMES, arrays)}


def _beam_step_cuda(logits: torch.Tensor, beam_scores: torch.Tensor, num_beams: int, trie: Trie | None = None,
                    nodes: torch.Tensor | None = None, normalize: str = "full",
                    deltas: tuple[Any, Any] | None = None) -> dict[str, torch.Tensor]:
    """:func:`_beam_step` on CUDA logits with the CUDA kernel; the candidates come back as CPU tensors."""
    rows = beam_scores.shape[0]
    logits = _BeamSearchBase._checked_logits(logits, rows, [] if trie is None else [trie])
    tries = [] if trie is None or nodes is None else [trie]
    step = CudaStep(logits, rows // num_beams, num_beams, tries, normalize == "allowed",
                    as_eos_id(None if trie is None else trie.eos_id))
    step.launch(logits, beam_scores.detach().float().cpu().numpy(),
                None if nodes is None else nodes.detach().int().cpu().numpy(),
                deltas=None if deltas is None else step.upload_deltas(*_checked_deltas(deltas, rows)))
    return {name: torch.from_numpy(np.array(a)) for name, a in zip(_CANDIDATE_NAMES, step.read(logits.shape[1]))}


def _host(logits: torch.Tensor) -> torch.Tensor:
    return logits if logits.device.type == "cpu" else logits.cpu()
