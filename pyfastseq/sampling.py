"""Random sampling (seed 000's ``random_sample``): :class:`Sampler`, unconstrained or inside a trie.

Each step runs one native kernel with the GIL released: per row the temperature, the top-k cut, the
top-p cut on the top-k-renormalised distribution (the seed's order, DESIGN "Where we deliberately
differ") and one draw from a counter-based generator keyed by ``(seed, row, step)``, so results are
reproducible and do not depend on threading. Python only calls the model once per step.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._backend import _C
from ._validate import as_eos_id, check_step_fn, is_int, pad_id_of
from .search import _DTYPE_CODES, StepFn, _BeamSearchBase, _check_search_size, _host, _positive_int
from .trie import Trie, check_eos_ends_entries

__all__ = ["SampleOutput", "Sampler"]

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class SampleOutput:
    """Per batch item, ``num_samples`` samples in row order.

    ``sequences[b][i]`` holds the generated tokens (the final eos included when one ended the row);
    ``scores[b][i]`` the sum of their log-probabilities under the *model's* distribution
    (``log_softmax`` of the raw logits over the full vocabulary, as beam scores are), not under the
    cut, temperature-scaled distribution they were drawn from, so samples drawn with different
    settings stay comparable; ``finished[b][i]`` is False where the row was cut at ``max_length``.
    """

    sequences: list[list[list[int]]]
    scores: list[list[float]]
    finished: list[list[bool]]


# Called after a step with the rows that just ended and the token each row drew.
EndHook = Callable[[np.ndarray, np.ndarray], None]


class Sampler:
    """Top-k then top-p sampling with a temperature, seeded and batched in native code.

    Args:
        top_k: keep the ``top_k`` largest logits, and every logit equal to the ``top_k``-th, as
            transformers' ``TopKLogitsWarper`` does (0: all).
        top_p: then keep the shortest prefix, in descending order of probability, whose probability
            under the top-k-renormalised distribution reaches ``top_p`` (1.0: no cut; 0.0 keeps the most
            probable token alone, as transformers' ``TopPLogitsWarper`` keeps one). Probabilities
            within 1e-6 of ``top_p`` count as reaching it, so that ``[.5, .3, .15, .05]``
            given as logits keeps ``{0, 1}`` at ``top_p=0.8``. Among tokens tied in probability the
            lower ids come first (transformers' stable ascending sort keeps the higher ones: the
            same mass, other tokens).
        temperature: logits are divided by it before the cuts' probabilities are taken (> 0; the
            top-k set does not depend on it). ``top_k=1`` is greedy argmax, up to ties: a row whose
            largest logit is tied draws among the tied tokens, as transformers' sampling does.
        seed: the generator's key; None draws one from ``torch``'s global generator at each
            :meth:`search`, so ``torch.manual_seed`` makes runs repeatable.
        eos_id: a row ends at its ``min_ends``-th ``eos_id`` (None: rows run to ``max_length``); with a
            trie, None means the trie's eos.
        max_length: new tokens at most (``max_new_tokens``).
        min_ends: how many eos a row picks before it ends (``2`` for ``answer [SEP] question [SEP]``).
        trie: None, a :class:`Trie` or one per batch item: each row draws only among its node's
            children and ends at a leaf or at eos (``min_ends`` must then be 1). With ``max_length``
            at least the trie's depth, every sample is a trie entry.
    """

    def __init__(self, top_k: int = 0, top_p: float = 1.0, temperature: float = 1.0, seed: int | None = None,
                 eos_id: int | None = None, max_length: int = 64, min_ends: int = 1,
                 trie: Trie | Sequence[Trie] | None = None):
        if not is_int(top_k):
            raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
        if not 0 <= top_k <= 2**31 - 1:
            raise ValueError(f"top_k must be >= 0 (0: no top-k cut), got {top_k}")
        self.top_k = int(top_k)
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be a number in [0, 1], got {top_p!r}")
        self.top_p = float(top_p)
        # The kernel divides in float32: a temperature past its largest value would be inf there.
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            0 < temperature <= FLOAT32_MAX
        ):
            raise ValueError(f"temperature must be a number in (0, {FLOAT32_MAX:.4g}] (top_k=1 for greedy), got "
                             f"{temperature!r}")
        self.temperature = float(temperature)
        if seed is not None and not (is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be None or an int in [0, 2**64), got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.max_length = _positive_int(max_length, "max_length")
        self.min_ends = _positive_int(min_ends, "min_ends")
        self.tries = _as_tries(trie)
        if self.tries:
            eos_ids = {t.eos_id for t in self.tries}
            if len(eos_ids) > 1:
                raise ValueError(f"every trie in trie must share one eos_id, got {sorted(eos_ids, key=str)}")
            if eos_id is None:
                eos_id = eos_ids.pop()
            if self.min_ends != 1:
                raise ValueError(f"min_ends must be 1 with a trie (a row ends at a leaf), got {self.min_ends}")
        self.eos_id = as_eos_id(eos_id)
        check_eos_ends_entries(self.tries, self.eos_id, "Sampler")

    def search(self, step_fn: StepFn, batch_size: int, max_length: int | None = None,
               num_samples: int = 1) -> SampleOutput:
        """Sample against ``step_fn(tokens, beam_idx) -> logits`` (DESIGN "Step protocol").

        ``step_fn`` gets ``N = batch_size * num_samples`` rows (the samples of item ``b`` are rows
        ``b * num_samples ...``); ``beam_idx`` is always ``arange(N)``, as samples never swap rows.
        Rows that ended are fed the pad token (eos, else 0) and their logits ignored.
        ``max_length`` overrides the constructor's for this call.
        """
        return self._run(step_fn, batch_size, max_length, num_samples)

    def generate(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_length: int | None = None, num_samples: int = 1, **model_kwargs: Any) -> SampleOutput:
        """Sample from a transformers-style model (decoder-only or encoder-decoder) with its KV
        cache: the prompt runs once per batch item, each step feeds one token per row."""
        from ._generate import model_step_fn

        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a 2-D [batch, length] tensor of token ids")
        num_samples = _positive_int(num_samples, "num_samples")
        with torch.no_grad():
            step_fn = model_step_fn(model, input_ids, attention_mask, num_samples, model_kwargs)
            return self.search(step_fn, input_ids.shape[0], max_length, num_samples)

    def _run(self, step_fn: StepFn, batch_size: int, max_length: int | None, num_samples: int,
             on_end: EndHook | None = None) -> SampleOutput:
        check_step_fn(step_fn)
        batch_size = _positive_int(batch_size, "batch_size")
        num_samples = _positive_int(num_samples, "num_samples")
        max_length = self.max_length if max_length is None else _positive_int(max_length, "max_length")
        if len(self.tries) not in (0, 1, batch_size):
            raise ValueError(
                f"trie holds {len(self.tries)} tries but batch_size is {batch_size}: give one or one per item"
            )
        rows = batch_size * num_samples
        # The int64 token buffer, and the returned lists: a slot and, past id 256, an int object per token.
        _check_search_size(rows, max_length, "batch_size * num_samples", 8 + 40)
        seed = int(torch.randint(0, 2**63 - 1, ())) if self.seed is None else self.seed
        pad = pad_id_of(self.eos_id)
        temperature = np.full(rows, self.temperature, dtype=np.float32)
        natives = [t._native for t in self.tries]
        child_begin = [t._native.arrays()[0] for t in self.tries]  # views: no copy of a large trie
        nodes = np.zeros(rows, dtype=np.int32) if self.tries else None

        # max_length bounds the search without sizing it: the token buffer doubles as the rows grow.
        out = np.full((rows, min(max_length, 64)), pad, dtype=np.int64)
        lengths = np.zeros(rows, dtype=np.int64)
        scores = np.zeros(rows, dtype=np.float64)
        ends = np.zeros(rows, dtype=np.int64)
        active = np.ones(rows, dtype=bool)
        tokens = torch.zeros(rows, 0, dtype=torch.long)
        beam_idx = torch.arange(rows)
        for step in range(max_length):
            logits = _host(_BeamSearchBase._checked_logits(step_fn(tokens, beam_idx), rows, self.tries, self.eos_id,
                                                            "batch_size * num_samples"))
            drawn, logprob, node = _sample_step(logits, temperature, self.top_k, self.top_p, seed, step, active,
                                                nodes, natives, num_samples)
            live = active.copy()
            if step == out.shape[1]:
                out = np.hstack([out, np.full((rows, min(step, max_length - step)), pad, dtype=np.int64)])
            out[live, step] = drawn[live]
            lengths[live] += 1
            scores[live] += logprob[live]
            ends[live] += drawn[live] == self.eos_id
            ended = live & (ends >= self.min_ends)
            if nodes is not None:
                nodes[live] = node[live]
                ended |= live & _is_leaf(child_begin, nodes, num_samples)
            active &= ~ended
            if on_end is not None and ended.any():
                on_end(np.flatnonzero(ended), drawn)
            if not active.any():
                break
            tokens = torch.from_numpy(np.where(active, drawn, pad).astype(np.int64)).unsqueeze(1)
        finished = ~active
        shape = lambda values: [values[b * num_samples:(b + 1) * num_samples] for b in range(batch_size)]
        return SampleOutput(
            sequences=shape([out[r, : lengths[r]].tolist() for r in range(rows)]),
            scores=shape([float(s) for s in scores]),
            finished=shape([bool(f) for f in finished]),
        )


def _sample_step(logits: torch.Tensor, temperature: np.ndarray, top_k: int, top_p: float, seed: int, step: int,
                 active: np.ndarray | None = None, nodes: np.ndarray | None = None, tries: Sequence[Any] = (),
                 rows_per_trie: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The native step alone on checked CPU logits ``[N, V]``: (token, model log-prob, node) per row.
    Used by the search loop and the benchmarks."""
    return _C.sample_step(
        logits.data_ptr(), logits.shape[1], logits.stride(0), _DTYPE_CODES[logits.dtype], logits.shape[0],
        temperature, top_k, top_p, seed, step, None if active is None else active.view(np.uint8), nodes, list(tries),
        rows_per_trie,
    )


def _as_tries(trie: Any) -> list[Trie]:
    if trie is None:
        return []
    tries = [trie] if isinstance(trie, Trie) else list(trie) if isinstance(trie, (list, tuple)) else None
    if not tries or not all(isinstance(t, Trie) for t in tries):
        raise TypeError(f"trie must be None, a pyfastseq.Trie or a non-empty list of them, got {type(trie).__name__}")
    return tries


def _is_leaf(child_begin: list[np.ndarray], nodes: np.ndarray, rows_per_trie: int) -> np.ndarray:
    """Rows whose node has no children, each read in its own trie (one item's rows are contiguous)."""
    if len(child_begin) == 1:
        cb = child_begin[0]
        return cb[nodes + 1] == cb[nodes]
    leaf = np.empty(len(nodes), dtype=bool)
    for item, cb in enumerate(child_begin):
        rows = slice(item * rows_per_trie, (item + 1) * rows_per_trie)
        leaf[rows] = cb[nodes[rows] + 1] == cb[nodes[rows]]
    return leaf
