"""The copy prior of seed 003: bias the output towards tokens that occur in the source.

Most words of a title occur in its article. Per source, chi in {0, 1}^V marks the vocabulary ids
that occur in it; a scale-and-shift layer with trainable s, t in R^V turns it into a prior that is
averaged with the model's logits before the softmax::

    y <- (y + s * chi + t) / 2

It speeds up convergence and steadies the output (seed 003). The module works in training (its
parameters get gradients) and as a logits hook in decoding: :meth:`CopyPrior.as_logits_processor`
for transformers' ``generate()``, :meth:`CopyPrior.wrap_step_fn` for pyfastseq's step protocol.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import torch
from torch import nn

from ._limits import check_memory
from ._validate import INT32_MAX, check_holds_values, check_integer_dtype, check_step_fn

__all__ = ["CopyPrior"]

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CopyPrior(nn.Module):
    """``forward(logits, source_ids) = (logits + s * chi(source_ids) + t) / 2``.

    Args:
        vocab_size: V, the width of the logits.
        pad_id: source positions holding this id are padding (not part of chi); ``source_mask``
            given to a call takes precedence.

    ``s`` starts at 1 and ``t`` at 0 (the seed's layer learns ``log s`` from 0, i.e. the same start).
    """

    def __init__(self, vocab_size: int, pad_id: int | None = None):
        super().__init__()
        if (isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral)
                or not 1 <= vocab_size <= INT32_MAX + 1):
            raise ValueError(f"vocab_size must be an int in [1, 2**31], got {vocab_size!r}")
        if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, numbers.Integral)):
            raise TypeError(f"pad_id must be an int or None, got {type(pad_id).__name__}")
        if pad_id is not None and not -(2**63) <= pad_id < 2**63:
            raise ValueError(f"pad_id must lie in the int64 range, got {pad_id}")
        vocab_size, pad_id = int(vocab_size), None if pad_id is None else int(pad_id)
        check_memory(2 * vocab_size * torch.finfo(torch.get_default_dtype()).bits // 8,
                     f"CopyPrior's s and t over a vocabulary of {vocab_size}")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.s = nn.Parameter(torch.ones(vocab_size))
        self.t = nn.Parameter(torch.zeros(vocab_size))

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, pad_id={self.pad_id}"

    def indicator(self, source_ids: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """chi: float ``[B, V]``, 1 where the vocabulary id occurs among the (unmasked) ``source_ids [B, S]``."""
        if not isinstance(source_ids, torch.Tensor) or source_ids.dim() != 2:
            raise ValueError(f"source_ids must be a 2-D tensor [B, S], got {_shape(source_ids)}")
        check_integer_dtype(source_ids.dtype, "source_ids", "integer token ids")
        check_holds_values(source_ids, "source_ids")
        if source_ids.dtype == torch.uint64:  # ids past int64 read as negative through an int64 view
            beyond = source_ids.view(torch.int64)
            if bool((beyond < 0).any()):
                raise ValueError(f"source_ids holds token id {int(beyond[beyond < 0][0]) + 2**64} outside "
                                 f"[0, {self.vocab_size})")
        # int64 throughout: torch has few ops for uint16/32/64, and a pad_id beyond a narrower dtype's
        # range must match nothing rather than wrap onto a real id.
        source_ids = source_ids.long()
        if source_mask is None:
            keep = torch.ones_like(source_ids, dtype=torch.bool) if self.pad_id is None else source_ids != self.pad_id
        else:
            if not isinstance(source_mask, torch.Tensor) or source_mask.shape != source_ids.shape:
                raise ValueError(f"source_mask must be a tensor of source_ids' shape {tuple(source_ids.shape)}, "
                                 f"got {_shape(source_mask)}")
            check_holds_values(source_mask, "source_mask")
            keep = source_mask.to(device=source_ids.device, dtype=torch.bool)
        bad = keep & ((source_ids < 0) | (source_ids >= self.vocab_size))
        if bool(bad.any()):
            raise ValueError(f"source_ids holds token id {int(source_ids[bad][0])} outside [0, {self.vocab_size})")
        ids = torch.where(keep, source_ids, 0)
        chi = torch.zeros((ids.shape[0], self.vocab_size), dtype=self.s.dtype, device=ids.device)
        # amax, not a plain scatter: a padding position and a real one may name the same id.
        return chi.scatter_reduce_(1, ids, keep.to(chi.dtype), reduce="amax")

    def prior(self, source_ids: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``s * chi + t``: float ``[B, V]``."""
        return self.s * self.indicator(source_ids, source_mask) + self.t

    def forward(self, logits: torch.Tensor, source_ids: torch.Tensor,
                source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``logits [B, V]`` or ``[B, T, V]`` (one source per batch row) -> ``(logits + s*chi + t) / 2``."""
        _check_logits(logits, "logits", self.vocab_size)
        return _average(logits, self.prior(source_ids, source_mask))

    def as_logits_processor(self, source_ids: torch.Tensor,
                            source_mask: torch.Tensor | None = None) -> "CopyPriorLogitsProcessor":
        """A transformers logits processor applying the prior during ``generate()``.

        ``source_ids [B, S]`` are the sources of the ``B`` batch items; ``generate()``'s
        ``N = B * num_beams`` (or ``* num_return_sequences``) rows are batch-major, so row ``r`` uses
        source ``r // (N // B)``.
        """
        return CopyPriorLogitsProcessor(self, self._decoding_prior(source_ids, source_mask))

    def wrap_step_fn(self, step_fn: StepFn, source_ids: torch.Tensor,
                     source_mask: torch.Tensor | None = None) -> StepFn:
        """``step_fn(tokens, beam_idx) -> logits`` biased by the prior, for pyfastseq's searchers.

        Rows start batch-major (``N // B`` rows per source) at every search's first call (``tokens``
        ``[N, 0]``), and each row follows ``beam_idx`` to the row it continues, so the source of every
        row stays right however the search reorders them, search after search.
        """
        check_step_fn(step_fn)
        prior = self._decoding_prior(source_ids, source_mask)
        row_source: list[torch.Tensor] = []

        def biased_step(tokens: torch.Tensor, beam_idx: torch.Tensor) -> torch.Tensor:
            logits = step_fn(tokens, beam_idx)
            _check_logits(logits, "logits", self.vocab_size)
            if tokens.shape[1] == 0 or not row_source:
                row_source[:] = [_row_sources(logits.shape[0], prior.shape[0], logits.device)]
            else:
                row_source[0] = row_source[0][_beam_rows(beam_idx, row_source[0], logits.shape[0])]
            return _average(logits, prior.to(logits.device)[row_source[0]])

        return biased_step

    def _decoding_prior(self, source_ids: torch.Tensor, source_mask: torch.Tensor | None) -> torch.Tensor:
        prior = self.prior(source_ids, source_mask).detach()
        if prior.shape[0] == 0:
            raise ValueError("source_ids must hold at least one source to decode with, got 0 rows")
        return prior


class CopyPriorLogitsProcessor:
    """``(input_ids [N, cur_len], scores [N, V]) -> log_softmax((scores + prior) / 2)``.

    transformers' beam search hands processors log-probabilities and sums what they return, so the
    result is renormalised: ``log_softmax`` ignores the per-row shift between logits and
    log-probabilities, so greedy, sampling and beam search all decode the seed's distribution
    ``softmax((y + s*chi + t) / 2)``.
    """

    def __init__(self, module: CopyPrior, prior: torch.Tensor):
        self.module = module
        self.prior = prior

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _check_logits(scores, "scores", self.module.vocab_size)
        rows = _row_sources(scores.shape[0], self.prior.shape[0], scores.device)
        biased = _average(scores, self.prior.to(scores.device)[rows])
        # At least float32: half-precision log_softmax loses the small log-probs beam search sums.
        return torch.log_softmax(biased.to(torch.promote_types(biased.dtype, torch.float32)), dim=-1).to(scores.dtype)


def _check_logits(logits: Any, name: str, vocab_size: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() not in (2, 3) or logits.shape[-1] != vocab_size:
        raise ValueError(f"{name} must be [B, {vocab_size}] or [B, T, {vocab_size}], got {_shape(logits)}")
    if not logits.is_floating_point():  # (integer logits + prior) / 2 would come out as a float anyway
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    check_holds_values(logits, name)


def _average(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``(logits + prior) / 2`` of checked logits."""
    if logits.shape[0] != prior.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but source_ids has {prior.shape[0]}")
    if logits.dim() == 3:
        prior = prior[:, None, :]
    return (logits + prior.to(logits.dtype)) / 2


def _row_sources(rows: int, sources: int, device: torch.device) -> torch.Tensor:
    if rows % sources:
        raise ValueError(f"{rows} logits rows cannot be split evenly over {sources} sources")
    return torch.arange(rows, device=device) // (rows // sources)


def _beam_rows(beam_idx: Any, row_source: torch.Tensor, rows: int) -> torch.Tensor:
    """``beam_idx`` as an index into ``row_source`` (the previous call's rows), on its device; it must
    name the previous row of each of this call's ``rows`` logits rows."""
    if not isinstance(beam_idx, torch.Tensor) or beam_idx.dim() != 1:
        raise ValueError(f"beam_idx must be a 1-D tensor, got {_shape(beam_idx)}")
    check_integer_dtype(beam_idx.dtype, "beam_idx", "integer row indices")
    check_holds_values(beam_idx, "beam_idx")
    if len(beam_idx) != rows:
        raise ValueError(f"beam_idx must hold one entry per logits row ({rows}), got {len(beam_idx)}")
    # Checked on the CPU only: on a GPU, reading the range would make every step wait for the search's kernels.
    if beam_idx.device.type == "cpu" and len(beam_idx):
        low, high = int(beam_idx.min()), int(beam_idx.max())
        if low < 0 or high >= len(row_source):
            raise ValueError(f"beam_idx must index the previous call's {len(row_source)} rows, "
                             f"got values in [{low}, {high}]")
    return beam_idx.to(row_source.device).long()


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
