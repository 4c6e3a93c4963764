"""Segment decoding (seed 000): sample a first segment, then beam-search the next, in one decode.

The seed generates ``passage -> answer [SEP] question [SEP]`` with one UniLM: the answer is drawn
at random (several per passage), the question found by beam search given the answer. Here one
:class:`SegmentDecoder` call does both over one KV cache: the sampler runs every row until its
first segment ends; at that moment the row's cache is forked, the token it ended with is fed, and
a beam search continues from exactly that state (its first step gets those logits, one row per
beam). So every second segment is what a separate beam search over
``prompt + first segment`` would decode, while the prompt is encoded once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _generate
from .lookahead import LCSLookahead
from .sampling import SampleOutput, Sampler
from .search import BeamSearch, StepFn, TrieBeamSearch, _positive_int

__all__ = ["SegmentDecoder", "SegmentOutput", "fork_step"]


@dataclass
class SegmentOutput:
    """Per batch item, ``num_samples`` (first segment, second segment) pairs in sample order.

    ``sequences[b][i]``: the whole generated text, first segment then the best second one.
    ``first``: the sampled segments (:class:`SampleOutput`: tokens with the ending eos, model
    log-prob sums, finished). ``second[b][i]``: the searcher's hypotheses for sample ``i``, best
    first, with ``second_scores`` (length-penalised, as :class:`BeamSearchOutput`) and
    ``second_finished``; with the searcher's ``output_token_scores``, ``second_token_scores``
    (as :class:`BeamSearchOutput`'s ``token_scores``), else None.
    """

    sequences: list[list[list[int]]]
    first: SampleOutput
    second: list[list[list[list[int]]]]
    second_scores: list[list[list[float]]]
    second_finished: list[list[list[bool]]]
    second_token_scores: list[list[list[list[float]]]] | None = None


class SegmentDecoder:
    """Sample until the sampler's ``min_ends``-th eos, then beam-search until the searcher's eos.

    Args:
        sampler: a :class:`Sampler` for the first segment (e.g. ``eos_id=[SEP]``, ``top_k=...``).
        searcher: a :class:`BeamSearch` or :class:`TrieBeamSearch` for the second segment; its
            ``max_length`` counts the second segment's tokens. A trie list (one per batch item) and
            a lookahead's per-item queries apply to every sample of their item.

    The step function must be forkable (see :func:`fork_step`): :meth:`UniLM.step_fn` objects and
    the model steps :meth:`generate` builds are. A first segment cut at the sampler's
    ``max_length`` (``first.finished`` False) is still continued by the search.
    """

    def __init__(self, sampler: Sampler, searcher: BeamSearch | TrieBeamSearch):
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a pyfastseq.Sampler, got {type(sampler).__name__}")
        if not isinstance(searcher, (BeamSearch, TrieBeamSearch)):
            raise TypeError(f"searcher must be a pyfastseq.BeamSearch or TrieBeamSearch, got {type(searcher).__name__}")
        self.sampler, self.searcher = sampler, searcher

    def search(self, step_fn: StepFn, batch_size: int, num_samples: int = 1) -> SegmentOutput:
        """Decode ``num_samples`` pairs per batch item against a forkable ``step_fn`` whose rows are
        ``batch_size * num_samples`` (e.g. ``unilm.step_fn(sources, num_beams=num_samples)``)."""
        num_samples = _positive_int(num_samples, "num_samples")
        batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(self.searcher, TrieBeamSearch):
            self.searcher._check_batch(batch_size, "searcher's ")
        rows = batch_size * num_samples
        found: dict[int, tuple[list, list, list, list | None]] = {}

        def continue_rows(ended: np.ndarray, drawn: np.ndarray) -> None:
            # Runs as rows end, before the sampler feeds the main cache anything else: each ended
            # row's cache is copied once per beam and the token it ended with fed to the copies.
            k = self.searcher.num_beams
            index = torch.from_numpy(ended.astype(np.int64)).repeat_interleave(k)
            fork = fork_step(step_fn, index)
            last = torch.from_numpy(drawn[index.numpy()].astype(np.int64)).unsqueeze(1)
            logits = fork(last, torch.arange(len(index)))
            searcher = _for_items(self.searcher, ended // num_samples)
            out = searcher.search(_Continuation(fork, logits), len(ended))
            for j, r in enumerate(ended.tolist()):
                token_scores = None if out.token_scores is None else out.token_scores[j]
                found[r] = (out.sequences[j], out.scores[j], out.finished[j], token_scores)

        first = self.sampler._run(step_fn, batch_size, None, num_samples, continue_rows)
        flat = [seq for item in first.sequences for seq in item]
        cut = np.array([r for r in range(rows) if r not in found], dtype=np.int64)
        if len(cut):
            drawn = np.zeros(rows, dtype=np.int64)
            drawn[cut] = [flat[r][-1] for r in cut]
            continue_rows(cut, drawn)

        per_item = lambda values: [values[b * num_samples:(b + 1) * num_samples] for b in range(batch_size)]
        second = [found[r] for r in range(rows)]
        return SegmentOutput(
            sequences=per_item([flat[r] + (second[r][0][0] if second[r][0] else []) for r in range(rows)]),
            first=first,
            second=per_item([s[0] for s in second]),
            second_scores=per_item([s[1] for s in second]),
            second_finished=per_item([s[2] for s in second]),
            second_token_scores=per_item([s[3] for s in second]) if self.searcher.output_token_scores else None,
        )

    def generate(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 num_samples: int = 1, **model_kwargs: Any) -> SegmentOutput:
        """:meth:`search` with a transformers-style model and its KV cache (prompt encoded once)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a 2-D [batch, length] tensor of token ids")
        num_samples = _positive_int(num_samples, "num_samples")
        with torch.no_grad():
            step_fn = _generate.model_step_fn(model, input_ids, attention_mask, num_samples, model_kwargs)
            return self.search(step_fn, input_ids.shape[0], num_samples)


def _for_items(searcher: BeamSearch | TrieBeamSearch, items: np.ndarray) -> BeamSearch | TrieBeamSearch:
    """``searcher`` for a continuation search whose batch item ``i`` continues the decode's batch item
    ``items[i]``: per-item tries and lookahead queries follow the items."""
    if not isinstance(searcher, TrieBeamSearch):
        return searcher
    lookahead = searcher.lookahead
    # A single-query LCSLookahead ignores batch_index, so it keeps its native path.
    remap_lookahead = lookahead is not None and (not isinstance(lookahead, LCSLookahead) or lookahead.per_item)
    if len(searcher.tries) == 1 and not remap_lookahead:
        return searcher
    searcher = copy.copy(searcher)
    if len(searcher.tries) > 1:
        searcher.tries = [searcher.tries[b] for b in items]
        searcher._start_nodes = [searcher._start_nodes[b] for b in items]
    if remap_lookahead:
        searcher.lookahead = _ItemLookahead(lookahead, torch.from_numpy(items))
    return searcher


class _ItemLookahead:
    """A lookahead seen through a continuation search: its batch item ``i`` is ``items[i]``."""

    def __init__(self, lookahead: Any, items: torch.Tensor):
        self.lookahead, self.items = lookahead, items

    def deltas(self, trie, nodes, generated, batch_index):
        return self.lookahead.deltas(trie, nodes, generated, self.items[batch_index])


class _Continuation:
    """The second segment's step function: its first call returns the logits the fork already
    computed (one row per beam); later calls go to the fork."""

    def __init__(self, step: StepFn, logits: torch.Tensor):
        self.step, self.logits = step, logits

    def __call__(self, tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] == 0:
            return self.logits
        return self.step(tokens, beam_idx)


def fork_step(step: StepFn, index: torch.Tensor) -> StepFn:
    """A copy of a step function in progress whose row ``i`` continues row ``index[i]`` of ``step``
    (rows may repeat or be left out); ``step`` itself is unchanged.

    Step functions take part by defining ``fork(index)``, as :class:`UniLMStep` and the model steps
    of ``generate()`` do.
    """
    if callable(getattr(step, "fork", None)):
        fork = step.fork(index)
        if not callable(fork):
            raise TypeError(f"step_fn.fork must return a step function, got {type(fork).__name__}")
        return fork
    raise TypeError(f"step_fn must define fork(index) to switch strategies mid-decode, got {type(step).__name__}")
